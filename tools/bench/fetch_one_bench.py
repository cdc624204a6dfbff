"""Issue 14, figure 1: a `pin add` of a 1 GiB file from one pinfold holder (two real
daemons on 127.0.0.1), against a Helia 7 peer fetching (``cat``) the same file from
another Helia peer in the same run.

Prints MB/s and the receiving daemon's CPU seconds (user + system) per GiB.
Targets: >= 200 MB/s and >= 2.5x Helia. ``BENCH_SIZE`` overrides the size.
Helia fetches at most ``BENCH_HELIA_SIZE`` (default 256M; Helia holds the whole
file in memory to add it) within ``BENCH_HELIA_TIMEOUT_S`` (default 300 s); the
ratio compares MB/s. A Helia fetch that does not finish in time is reported
with the rate it stayed under.
Run alone: ``.venv/bin/python -m tools.bench.fetch_one_bench``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tools.bench.fetchkit import (  # noqa: E402
    Fetch,
    MiB,
    Figure,
    add,
    address,
    bench_size,
    connect,
    daemons,
    make_file,
    row,
    size_text,
    timed_pin_add,
)


def pinfold_one_holder(size: int) -> Fetch:
    """``pin add`` of ``size`` random bytes from one holder."""
    with daemons(["holder", "fetcher"]) as (holder, fetcher):
        path = make_file(holder.home.parent / "file.bin", size)
        cid = add(holder, path)
        connect(fetcher, [address(holder)])
        return timed_pin_add(fetcher, cid, size)


async def _helia(size: int, tmp: Path, timeout_s: float) -> float | None:
    from tests.support.helia import helia_peer

    path = make_file(tmp / "file.bin", size)
    async with helia_peer() as a, helia_peer() as b:
        cid = (await a.request("add", path=str(path), timeout_s=900))["cid"]
        await b.request("dial", addr=a.addrs[0])
        t0 = time.perf_counter()
        with trio.move_on_after(timeout_s):
            res = await b.request("cat", cid=cid, timeout_ms=int(timeout_s * 1000) + 60_000,
                                  timeout_s=timeout_s + 60)
            dt = time.perf_counter() - t0
            if res["size"] != size:
                raise RuntimeError(f"helia cat returned {res['size']} bytes, expected {size}")
            return dt
    return None


def helia_to_helia(size: int, timeout_s: float) -> float | None | str:
    """Seconds for Helia to fetch ``size`` bytes from Helia; None when it did not
    finish within ``timeout_s``; or why it cannot run here."""
    import tempfile

    from tests.support.helia import skip_reason

    reason = skip_reason()
    if reason is not None:
        return reason
    with tempfile.TemporaryDirectory(prefix="pinfold-bench-helia-") as d:
        return trio.run(_helia, size, Path(d), timeout_s)


def measure(size: int | None = None) -> list[Figure]:
    size = size or bench_size()
    helia_size = min(size, bench_size(256 * MiB, "BENCH_HELIA_SIZE"))
    timeout_s = float(os.environ.get("BENCH_HELIA_TIMEOUT_S", "300"))
    ours = pinfold_one_holder(size)
    helia = helia_to_helia(helia_size, timeout_s)
    what = f"`pin add` {size_text(size)} from one pinfold holder"
    fig = f"{ours.mb_s:,.0f} MB/s; receiver {ours.cpu_per_gib:.2f} CPU-s/GiB"
    target = ">= 200 MB/s and >= 2.5x Helia"
    if isinstance(helia, str):
        return [Figure(what=what, figure=fig, baseline=f"Helia -> Helia: skipped ({helia})",
                       ratio="", target=">= 200 MB/s", met=ours.mb_s >= 200)]
    if helia is None:
        bound = helia_size / 1e6 / timeout_s
        return [Figure(what=what, figure=fig,
                       baseline=f"Helia -> Helia `cat` of {size_text(helia_size)}: not done "
                                f"in {timeout_s:.0f} s (< {bound:,.1f} MB/s)",
                       ratio=f"> {ours.mb_s / bound:.1f}x Helia", target=target,
                       met=ours.mb_s >= 200 and ours.mb_s / bound >= 2.5)]
    helia_mbs = helia_size / 1e6 / helia
    ratio = ours.mb_s / helia_mbs
    return [Figure(what=what, figure=fig,
                   baseline=f"Helia -> Helia `cat` of {size_text(helia_size)}: "
                            f"{helia_mbs:,.0f} MB/s",
                   ratio=f"{ratio:.2f}x Helia", target=target,
                   met=ours.mb_s >= 200 and ratio >= 2.5)]


def run() -> Iterator[tuple[str, ...]]:
    for fig in measure():
        yield row(fig)


if __name__ == "__main__":
    for r in run():
        print(" | ".join(r), flush=True)
