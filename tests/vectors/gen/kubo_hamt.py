"""Write ../kubo_hamt.json: the CIDs real Kubo v0.22 gives folders around and far
above its 256 KiB HAMT-sharding threshold.

Run from the repository root with the project's virtual environment (``make install``
puts PyPI ``kubo-python`` 0.1.5 there: Kubo v0.22 built as a cgo shared library)::

    .venv/bin/python tests/vectors/gen/kubo_hamt.py

Kubo runs in its own process through ``tests/support/kubo.py``; its ``add`` is the
library's ``AddFile(repo, path, onlyHash=true)``, i.e. ``ipfs add -r --only-hash``
with Kubo's defaults (CIDv0, 256 KiB chunks, dag-pb leaves, sharding threshold
256 KiB on the sum of name bytes + CID bytes of a folder's links, fanout 256).
The folders are described as runs of numbered files (``tests/support/hamt_folders.py``)
so the JSON stays small; every sub-folder is also added on its own to record its CID.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from tests.support import hamt_folders  # noqa: E402
from tests.support.kubo import kubo_peer  # noqa: E402

# 4096 names of 30 bytes with a CIDv0 (34 bytes) each: 4096 * 64 = 262144 = 256 KiB.
_T = {"dir": "", "prefix": "kubo-hamt-threshold-", "width": 4, "suffix": "-a.txt"}

CASES = [
    {"name": "one_byte_under_threshold", "runs": [
        {**_T, "count": 4095},
        {**_T, "start": 4095, "count": 1, "suffix": "b.txt"},  # 29 bytes: total 262143
    ]},
    {"name": "exactly_at_threshold", "runs": [{**_T, "count": 4096}]},  # 262144
    {"name": "one_byte_over_threshold", "runs": [
        {**_T, "count": 4095},
        {**_T, "start": 4095, "count": 1, "suffix": "-ab.txt"},  # 31 bytes: total 262145
    ]},
    # 30 bytes but 18 characters each: the estimate counts UTF-8 bytes.
    {"name": "utf8_names_at_threshold", "runs": [
        {"dir": "", "prefix": "hamt-\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9-",
         "width": 4, "suffix": ".txt", "count": 4096},
    ]},
    # A sharded folder (four shard levels) inside a basic one, next to small folders.
    {"name": "nested_25000_files", "runs": [
        {"dir": "", "prefix": "README", "count": 1, "suffix": ".md"},
        {"dir": "docs", "prefix": "note-", "width": 1, "count": 3, "suffix": ".md"},
        {"dir": "many", "prefix": "file-", "width": 5, "count": 25000, "suffix": ".txt"},
    ]},
]


def main() -> None:
    scratch = Path(tempfile.mkdtemp(prefix="kubo-hamt-"))
    out = {"generator": "Kubo v0.22 (boxo v0.11.0) via PyPI kubo-python 0.1.5, "
                        "AddFile onlyHash (ipfs add -r --only-hash, CIDv0)",
           "cases": []}
    with kubo_peer(scratch / "repo") as kubo:
        for case in CASES:
            folder = scratch / case["name"]
            folder.mkdir()
            count = hamt_folders.build(folder, case)
            dirs = sorted({r["dir"] for r in case["runs"]})
            cids = {}
            for d in dirs:
                t0 = time.monotonic()
                cids[d] = kubo.request("add", path=str(folder / d if d else folder),
                                       only_hash=True, timeout_s=600)["cid"]
                print(f"{case['name']}/{d}: {cids[d]} ({time.monotonic() - t0:.1f} s)",
                      file=sys.stderr)
            out["cases"].append({**case, "files": count,
                                 "estimates": hamt_folders.estimates(case),
                                 "root": cids[""], "dirs": cids})
    dest = ROOT / "tests" / "vectors" / "kubo_hamt.json"
    dest.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    print(dest)


if __name__ == "__main__":
    main()
