"""Issue 14, figure 1: a `pin add` of a 1 GiB file from one pinfold holder (two real
daemons on 127.0.0.1), against a Helia 7 peer fetching (``cat``) the same file from
another Helia peer in the same run.

Prints MB/s and the receiving daemon's CPU seconds (user + system) per GiB.
Targets: >= 200 MB/s and >= 2.5x Helia. ``BENCH_SIZE`` overrides the size.
Run alone: ``.venv/bin/python -m tools.bench.fetch_one_bench``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tools.bench.fetchkit import (  # noqa: E402
    Fetch,
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


async def _helia(size: int, tmp: Path) -> float:
    from tests.support.helia import helia_peer

    path = make_file(tmp / "file.bin", size)
    async with helia_peer() as a, helia_peer() as b:
        cid = (await a.request("add", path=str(path), timeout_s=900))["cid"]
        await b.request("dial", addr=a.addrs[0])
        t0 = time.perf_counter()
        res = await b.request("cat", cid=cid, timeout_ms=1_800_000, timeout_s=1800)
        dt = time.perf_counter() - t0
    if res["size"] != size:
        raise RuntimeError(f"helia cat returned {res['size']} bytes, expected {size}")
    return dt


def helia_to_helia(size: int) -> float | str:
    """Seconds for Helia to fetch ``size`` bytes from Helia, or why it cannot run here."""
    import tempfile

    from tests.support.helia import skip_reason

    reason = skip_reason()
    if reason is not None:
        return reason
    with tempfile.TemporaryDirectory(prefix="pinfold-bench-helia-") as d:
        return trio.run(_helia, size, Path(d))


def measure(size: int | None = None) -> list[Figure]:
    size = size or bench_size()
    ours = pinfold_one_holder(size)
    helia = helia_to_helia(size)
    what = f"`pin add` {size_text(size)} from one pinfold holder"
    fig = f"{ours.mb_s:,.0f} MB/s; receiver {ours.cpu_per_gib:.2f} CPU-s/GiB"
    if isinstance(helia, str):
        return [Figure(what=what, figure=fig, baseline=f"Helia -> Helia: skipped ({helia})",
                       ratio="", target=">= 200 MB/s", met=ours.mb_s >= 200)]
    helia_mbs = size / 1e6 / helia
    ratio = ours.mb_s / helia_mbs
    return [Figure(what=what, figure=fig,
                   baseline=f"Helia -> Helia `cat`, same size: {helia_mbs:,.0f} MB/s",
                   ratio=f"{ratio:.2f}x Helia", target=">= 200 MB/s and >= 2.5x Helia",
                   met=ours.mb_s >= 200 and ratio >= 2.5)]


def run() -> Iterator[tuple[str, ...]]:
    for fig in measure():
        yield row(fig)


if __name__ == "__main__":
    for r in run():
        print(" | ".join(r), flush=True)
