"""A new version of a folder in which one file changed moves about that file's
bytes to another node, not the whole folder (issue 16; the full-size figure is
``tools/bench/names_delta_bench.py``).

Two real daemons in one cluster: ``a`` pushes v1 of 6 files of 256 KiB, ``b``
pulls it; one file is rewritten, ``a`` pushes v2, ``b`` pulls again. ``b``'s
Bitswap receives the whole folder for v1 and, for v2, the changed file plus a
few KiB of directory and record blocks.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from tests.support.daemon import DaemonProcess
from tools.bench.names_delta_bench import NAME, _pair, _push_pull

KiB = 1024
FILE = 256 * KiB


def _digests(root: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.iterdir())}


def test_a_version_with_one_changed_file_moves_about_that_file(tmp_path: Path) -> None:
    src = tmp_path / "folder"
    src.mkdir()
    for i in range(6):
        (src / f"part-{i}.bin").write_bytes(os.urandom(FILE))
    with _pair(tmp_path) as (a, b):
        assert isinstance(a, DaemonProcess)
        v1, _ = _push_pull(a, b, src, tmp_path / "v1", 1)
        assert _digests(tmp_path / "v1") == _digests(src)
        (src / "part-0.bin").write_bytes(os.urandom(FILE))
        v2, _ = _push_pull(a, b, src, tmp_path / "v2", 2)
        assert _digests(tmp_path / "v2") == _digests(src)
        with b.client() as cb:
            assert [v["version"] for v in cb.versions(NAME)["versions"]] == [2, 1]
    assert v1 >= 6 * FILE
    assert FILE <= v2 <= FILE + 64 * KiB, f"v2 moved {v2} bytes for a {FILE}-byte change"
