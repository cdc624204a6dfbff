"""`make bench`: the issue-14 table (``tools/bench/issue14.py``: fetch speed, holders,
Kubo, DONT_HAVE, channel), the issue-15 figures (fsspec reads, gateway) and big
folders (``ls``/``get`` of 4,096 files), each figure against a baseline measured in the same
run, in about 10 minutes. ``run.py all`` (``make bench-all``) adds the earlier
sections (add/cat, Bitswap blocks, replication: tens of minutes); ``run.py NAME``
runs the sections whose module contains NAME. Targets are printed next to the
figures; a miss is reported, not hidden (benchmarks never fail the build).
"""

from __future__ import annotations

import importlib
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

DEFAULT = [
    ("fetching at the speed of the wire (issue 14)", "tools.bench.issue14"),
    ("fsspec: random 4 KiB reads through pinfold:// (issue 15)", "tools.bench.fsspec_bench"),
    ("gateway: HTTP GET and CAR vs the CLI (issue 15)", "tools.bench.gateway_bench"),
    ("big folders: ls and get of 4,096 files vs ls -l and cp -r", "tools.bench.bigdir_bench"),
]
SECTIONS = [
    *DEFAULT,
    ("single node: add/cat (issue 2)", "tools.bench.node_bench"),
    ("bitswap: raw stream vs Bitswap vs Helia (issue 3)", "tools.bench.bitswap_bench"),
    ("replication: repair and scale (issue 4)", "tools.bench.replication_bench"),
    ("channel: raw Noise+Yamux stream, stock vs fast (issue 14)", "tools.bench.channel_bench"),
    ("names: resolve in a large book (issue 16)", "tools.bench.names_bench"),
    ("names: a new version moves only what changed (issue 16)",
     "tools.bench.names_delta_bench"),
]


def main() -> int:
    only = sys.argv[1:]
    for title, module in SECTIONS:
        if only == ["all"]:
            pass
        elif only and not any(o in module for o in only):
            continue
        elif not only and (title, module) not in DEFAULT:
            continue
        print(f"\n== {title}", flush=True)
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            print(f"   (not available: {exc})")
            continue
        t0 = time.perf_counter()
        try:
            for row in mod.run():
                print("   " + " | ".join(row), flush=True)
        except Exception:
            traceback.print_exc()
            print("   (failed: see the traceback above)")
        print(f"   [{time.perf_counter() - t0:.0f} s]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
