"""Issue 14, figure 4: how long `pinfold cat` of a CID that nobody has takes to fail
when every connected peer answers DONT_HAVE (three real daemons on 127.0.0.1: the
fetcher and two peers without the block).

The figure is the wall time of the ``cat`` call through the Python client (the
daemon's answer), and of the whole ``pinfold cat`` process; the baseline is
``pinfold id`` as a process in the same run (what a CLI start-up costs on this
machine). Target: the daemon's error in < 1 s.
Run alone: ``.venv/bin/python -m tools.bench.dont_have_bench``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from pinfold.blockstore.cid import RAW, make_cid  # noqa: E402
from tests.support.daemon import run_cli  # noqa: E402
from tools.bench.fetchkit import Figure, address, connect, daemons, row  # noqa: E402


def measure() -> list[Figure]:
    cid = str(make_cid(os.urandom(64), RAW))
    with daemons(["fetcher", "p1", "p2"]) as (fetcher, p1, p2):
        connect(fetcher, [address(p1), address(p2)])
        t0 = time.perf_counter()
        run_cli(fetcher.home, "id")
        id_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        proc = run_cli(fetcher.home, "cat", cid, check=False, timeout=120)
        cli_s = time.perf_counter() - t0
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        t0 = time.perf_counter()
        try:
            with fetcher.client() as c:
                for _ in c.cat(cid):
                    pass
            call_s = float("nan")
        except Exception:  # noqa: BLE001 - the error is the point
            call_s = time.perf_counter() - t0
    if proc.returncode == 0:
        raise RuntimeError(f"pinfold cat {cid} succeeded for a CID nobody has")
    return [Figure(
        what="`pinfold cat` of a CID both peers answer DONT_HAVE for",
        figure=f"error after {call_s:.2f} s (`pinfold cat` process: {cli_s:.2f} s): "
               f"{err[-1] if err else '(no message)'}",
        baseline=f"`pinfold id` as a process: {id_s:.2f} s",
        ratio="", target="< 1 s", met=call_s < 1.0)]


def run() -> Iterator[tuple[str, ...]]:
    for fig in measure():
        yield row(fig)


if __name__ == "__main__":
    for r in run():
        print(" | ".join(r), flush=True)
