"""A full store (``blockstore.max_size_bytes``) or a full disk, met by a real daemon.

The add that does not fit fails with one line that says what is full, how full
and what to do; the daemon stays up, serves what it committed, and takes new
writes again once room is made, without a restart.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pinfold.client import RpcError

from tests.support.daemon import DaemonProcess, cli_json, run_cli

MiB = 1024 * 1024


def _file(path: Path, size: int, seed: int) -> Path:
    path.write_bytes(random.Random(seed).randbytes(size))
    return path


def _assert_one_clear_line(res: subprocess.CompletedProcess[bytes], *needles: str) -> str:
    err = res.stderr.decode()
    assert res.returncode != 0, err
    assert len(err.strip().splitlines()) == 1, err
    for bad in ("ExceptionGroup", "Trio", "nursery", "Traceback", "lmdb", "Input/output"):
        assert bad not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def test_full_store_fails_the_add_in_one_line_keeps_serving_and_recovers_after_gc(
        tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path, "full", config="[blockstore]\nmax_size_bytes = 16777216\n")
    kept = _file(tmp_path / "kept", 4 * MiB, 1)
    big = _file(tmp_path / "big", 30 * MiB, 2)
    later = _file(tmp_path / "later", 6 * MiB, 3)
    with d:
        cid = cli_json(d.home, "add", "--pin", str(kept))["cid"]

        res = run_cli(d.home, "add", str(big), check=False)
        _assert_one_clear_line(res, "blockstore full", "blockstore.max_size_bytes = 16.0 MiB",
                               "pinfold repo gc")
        with d.client() as c, pytest.raises(RpcError) as info:
            c.add(str(big))
        assert info.value.code == "store_full"

        assert d.proc is not None and d.proc.poll() is None, d.log()
        assert run_cli(d.home, "cat", cid).stdout == kept.read_bytes()
        assert any(p["cid"] == cid for p in _pins(d.home))

        # Room made while the daemon runs: a new add succeeds, no restart.
        run_cli(d.home, "pin", "rm", cid)
        run_cli(d.home, "repo", "gc")
        new = cli_json(d.home, "add", str(later))["cid"]
        assert run_cli(d.home, "cat", new).stdout == later.read_bytes()
        assert cli_json(d.home, "repo", "verify")["corrupt"] == []
    assert "blockstore full" in d.log()


def _pins(home: Path) -> list[dict]:
    out = run_cli(home, "--json", "pin", "ls").stdout.decode()
    return [json.loads(line) for line in out.splitlines() if line.strip()]


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB tmpfs mounted in ``tmp_path`` (skips where mounting is not permitted)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m,mode=0700", "tmpfs",
                          str(mnt)], check=False, capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip() or res.returncode}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True)


def test_full_disk_fails_the_add_in_one_line_keeps_serving_and_recovers_when_space_returns(
        tmp_path: Path, small_tmpfs: Path) -> None:
    d = DaemonProcess(small_tmpfs, "disk")
    d.log_path = tmp_path / "disk.log"  # the log must not fill the disk under test
    kept = _file(tmp_path / "kept", 4 * MiB, 1)
    big = _file(tmp_path / "big", 30 * MiB, 2)
    later = _file(tmp_path / "later", 6 * MiB, 3)
    filler = small_tmpfs / "filler"
    filler.write_bytes(bytes(8 * MiB))
    with d:
        cid = cli_json(d.home, "add", "--pin", str(kept))["cid"]

        res = run_cli(d.home, "add", str(big), check=False)
        _assert_one_clear_line(res, "disk full", str(d.home / "store"), "free of 24.0 MiB",
                               "pinfold repo gc")
        with d.client() as c, pytest.raises(RpcError) as info:
            c.add(str(big))
        assert info.value.code == "store_full"

        assert d.proc is not None and d.proc.poll() is None, d.log()
        assert run_cli(d.home, "cat", cid).stdout == kept.read_bytes()
        assert any(p["cid"] == cid for p in _pins(d.home))

        # With the disk still full, the daemon stops cleanly and starts again.
        assert d.stop() == 0, d.log()
        d.start()
        assert run_cli(d.home, "cat", cid).stdout == kept.read_bytes()

        # Space returns while the daemon runs: the next add succeeds, no restart.
        os.unlink(filler)
        new = cli_json(d.home, "add", str(later))["cid"]
        assert run_cli(d.home, "cat", new).stdout == later.read_bytes()
        assert run_cli(d.home, "cat", cid).stdout == kept.read_bytes()
        assert cli_json(d.home, "repo", "verify")["corrupt"] == []
    assert "disk full" in d.log()
