"""Issue 14, figure 2: a `pin add` of a 1 GiB file from three pinfold holders against
the same from one holder, in the same run (five real daemons on 127.0.0.1: three
holders, one fetcher connected to one holder, one connected to all three).

Prints the ratio of the speeds (target >= 1.0 on a 2-core machine, where the
senders share the receiver's cores) and the receiving daemon's CPU seconds per
GiB for both. ``BENCH_SIZE`` overrides the size.
Run alone: ``.venv/bin/python -m tools.bench.holders_bench``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tools.bench.fetchkit import (  # noqa: E402
    Figure,
    add,
    address,
    bench_size,
    bitswap_counter,
    connect,
    daemons,
    make_file,
    row,
    size_text,
    timed_pin_add,
)


def measure(size: int | None = None) -> list[Figure]:
    size = size or bench_size()
    with daemons(["h0", "h1", "h2", "one", "three"]) as (h0, h1, h2, one, three):
        path = make_file(h0.home.parent / "file.bin", size)
        cid = ""
        for h in (h0, h1, h2):
            cid = add(h, path)
        addrs = [address(h) for h in (h0, h1, h2)]
        connect(one, addrs[:1])
        connect(three, addrs)
        single = timed_pin_add(one, cid, size)
        multi = timed_pin_add(three, cid, size)
        dups = bitswap_counter(three, "duplicate_blocks")
    ratio = multi.mb_s / single.mb_s
    return [Figure(
        what=f"`pin add` {size_text(size)} from three holders",
        figure=f"{multi.mb_s:,.0f} MB/s; receiver {multi.cpu_per_gib:.2f} CPU-s/GiB; "
               f"{dups:.0f} duplicate blocks",
        baseline=f"one holder: {single.mb_s:,.0f} MB/s; receiver "
                 f"{single.cpu_per_gib:.2f} CPU-s/GiB",
        ratio=f"{ratio:.2f}x one holder",
        target=">= 1.0x", met=ratio >= 1.0)]


def run() -> Iterator[tuple[str, ...]]:
    for fig in measure():
        yield row(fig)


if __name__ == "__main__":
    for r in run():
        print(" | ".join(r), flush=True)
