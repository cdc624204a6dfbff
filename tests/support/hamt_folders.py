"""Folders large enough to make Kubo HAMT-shard a directory, described as data.

A case (one entry of ``tests/vectors/kubo_hamt.json``) lists *runs* of files::

    {"dir": "many", "prefix": "file-", "width": 5, "suffix": ".txt",
     "start": 0, "count": 25000}

Run ``r`` holds ``count`` files named ``prefix + f"{i:0{width}d}" + suffix``
(the number left out when ``width`` is 0) for ``i`` in ``start .. start+count-1``,
in folder ``dir`` ("" = the top). Each file holds its own name and a newline,
so every file is one small chunk. The generator (``tests/vectors/gen/kubo_hamt.py``)
and the tests build the same folders with ``build``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any


def files(case: dict[str, Any]) -> Iterator[tuple[str, bytes]]:
    """``(relative path, content bytes)`` of every file of ``case``."""
    for run in case["runs"]:
        width = run.get("width", 0)
        for i in range(run.get("start", 0), run.get("start", 0) + run["count"]):
            name = run["prefix"] + (f"{i:0{width}d}" if width else "") + run.get("suffix", "")
            rel = f"{run['dir']}/{name}" if run["dir"] else name
            yield rel, (name + "\n").encode()


def build(root: Path, case: dict[str, Any]) -> int:
    """Create the folder of ``case`` under ``root`` (which must exist); returns the file count."""
    n = 0
    made: set[str] = set()
    for rel, data in files(case):
        parent = rel.rpartition("/")[0]
        if parent not in made:
            (root / parent).mkdir(parents=True, exist_ok=True)
            made.add(parent)
        (root / rel).write_bytes(data)
        n += 1
    return n


def estimates(case: dict[str, Any], cid_bytes: int = 34) -> dict[str, int]:
    """Kubo's size estimate of each folder holding files directly: the sum over its
    entries of name bytes (UTF-8) plus ``cid_bytes`` (34 for a CIDv0)."""
    out: dict[str, int] = {}
    for rel, _ in files(case):
        parent, _, name = rel.rpartition("/")
        out[parent] = out.get(parent, 0) + len(name.encode()) + cid_bytes
    return out
