"""`make bench`: the issue-14 table (moving models at the speed of the wire).

One script per figure, each measuring its baseline in the same run:

* ``fetch_one_bench``: 1 GiB `pin add` from one pinfold holder vs Helia -> Helia
  (Helia fetches 256 MiB, ``BENCH_HELIA_SIZE``, within 300 s);
* ``holders_bench``: three holders vs one (receiver CPU-s/GiB for both);
* ``kubo_bench``: the model file from Kubo vs from pinfold (duplicate blocks),
  and vs Kubo fetching it from the same Kubo;
* ``dont_have_bench``: a CID every peer answers DONT_HAVE for (seconds to error);
* ``channel_bench``: the raw Noise+Yamux stream, py-libp2p's stock channel vs ours.

Prints each figure as it is measured, then the whole table in Markdown (the
README's form). A figure that fails prints its error and the rest still run;
nothing here fails the build. ``BENCH_SIZE`` (default 1G) sets the file size of
the first two; ``PINFOLD_BENCH_REPS`` the channel runs (default 3 here).
Run alone: ``.venv/bin/python tools/bench/run.py issue14``.
"""

from __future__ import annotations

import importlib
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tools.bench.fetchkit import Figure, row  # noqa: E402

FIGURES = ["fetch_one_bench", "holders_bench", "kubo_bench", "dont_have_bench"]


def _channel() -> list[Figure]:
    from tools.bench import channel_bench

    n_mib = int(os.environ.get("PINFOLD_BENCH_CHANNEL_MIB", "256"))
    reps = int(os.environ.get("PINFOLD_BENCH_REPS", "3"))
    stock, fast = [], []
    for _ in range(reps):  # alternating, so a load change hits both
        stock.append(channel_bench.measure("stock", n_mib))
        fast.append(channel_bench.measure("fast", n_mib))
    ratio = statistics.median(f["mb_s"] / s["mb_s"] for s, f in zip(stock, fast, strict=True))

    def text(rs: list[dict[str, float]]) -> str:
        return (f"{statistics.median(r['mb_s'] for r in rs):,.0f} MB/s; receiver "
                f"{statistics.median(r['cpu_s_per_gib'] for r in rs):.2f} CPU-s/GiB")

    return [Figure(what=f"raw Noise+Yamux stream, {n_mib} MiB, median of {reps}",
                   figure=f"fast channel: {text(fast)}",
                   baseline=f"py-libp2p stock channel: {text(stock)}",
                   ratio=f"{ratio:.2f}x stock", target="faster than stock", met=ratio > 1.0)]


def measure_all() -> Iterator[Figure | tuple[str, str]]:
    """Each figure as it is measured, or ``(name, error)`` for one that failed."""
    for name in [*FIGURES, "channel_bench"]:
        t0 = time.perf_counter()
        try:
            if name == "channel_bench":
                figs = _channel()
            else:
                figs = importlib.import_module(f"tools.bench.{name}").measure()
        except Exception as exc:  # noqa: BLE001 - one figure failing leaves the rest
            traceback.print_exc()
            yield (name, f"failed: {type(exc).__name__}: {exc}")
            continue
        for fig in figs:
            yield fig
        print(f"   [{name}: {time.perf_counter() - t0:.0f} s]", flush=True)


def markdown(figs: list[Figure]) -> str:
    """The table as Markdown, with the date, machine and load average."""
    load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    head = (f"{time.strftime('%Y-%m-%d', time.gmtime())}, {platform.machine()}, "
            f"{os.cpu_count()} cores, load average {load} at the end\n\n"
            "| what | pinfold | baseline (same run) | ratio | target |\n|---|---|---|---|---|")
    lines = [head]
    for f in figs:
        verdict = "" if f.met is None else (" ok" if f.met else " **missed**")
        lines.append(f"| {f.what} | {f.figure} | {f.baseline} | {f.ratio} | {f.target}{verdict} |")
    return "\n".join(lines)


def run() -> Iterator[tuple[str, ...]]:
    figs: list[Figure] = []
    for item in measure_all():
        if isinstance(item, Figure):
            figs.append(item)
            yield row(item)
        else:
            yield item
    print("\n" + markdown(figs), flush=True)


if __name__ == "__main__":
    for r in run():
        print(" | ".join(r), flush=True)
