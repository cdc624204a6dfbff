"""Issue 14, figure 2: a `pin add` from three pinfold holders against the same from
one holder, in the same run (real daemons on 127.0.0.1: three holders; per round a
fresh fetcher connected to one holder, a fresh one connected to all three, and one
connected to all three with ``bitswap.spread_holders`` (every holder at once: the
policy before holder admission), for comparison).

Prints the median ratio of the speeds over ``BENCH_ROUNDS`` rounds (default 1; the
fetches of a round run in an order rotated each round, so load on the machine hits
all alike; target >= 1.0 on a 2-core machine, where the senders share the
receiver's cores), each round's ratio, and the receiving daemon's CPU seconds per
GiB. Each fetch also prints to stderr what it cost: the senders' CPU seconds per
GiB (and each holder's CPU seconds), blocks and messages per holder, messages
received, duplicates and the holder-admission decisions (``held``: probes not
started for want of headroom). ``BENCH_SIZE`` overrides the size (default 1 GiB).
Run alone: ``.venv/bin/python -m tools.bench.holders_bench``.
"""

from __future__ import annotations

import os
import statistics
import sys
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.support.daemon import DaemonProcess, metric  # noqa: E402
from tools.bench.fetchkit import (  # noqa: E402
    GiB,
    Fetch,
    Figure,
    add,
    address,
    bench_size,
    bitswap_counter,
    connect,
    cpu_seconds,
    daemons,
    make_file,
    row,
    size_text,
    timed_pin_add,
)


def rounds() -> int:
    """``BENCH_ROUNDS`` from the environment (default 1).

    Raises:
        ValueError: not a positive integer (names the variable and the value).
    """
    text = os.environ.get("BENCH_ROUNDS", "1").strip()
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"BENCH_ROUNDS: expected a positive integer, got {text!r}")
    return int(text)


SPREAD = "[bitswap]\nspread_holders = true\n"


def _sent(holders: list[DaemonProcess]) -> list[float]:
    return [bitswap_counter(h, "blocks_sent") for h in holders]


def _heard(holders: list[DaemonProcess]) -> list[float]:
    return [bitswap_counter(h, "messages_received") for h in holders]


def _fetch(holders: list[DaemonProcess], addrs: list[str], cid: str, size: int, name: str,
           config: str = "") -> tuple[Fetch, float]:
    """A timed ``pin add`` by a fresh daemon connected to ``addrs``; with the
    duplicate blocks it received. Prints to stderr what it cost: the senders'
    CPU seconds per GiB, blocks per holder, messages received, admission decisions."""
    with daemons([name], config=config) as (node,):
        connect(node, addrs)
        sent0, heard0 = _sent(holders), _heard(holders)
        cpu0 = [cpu_seconds(h.pid) for h in holders]
        fetch = timed_pin_add(node, cid, size)
        each = [cpu_seconds(h.pid) - c for h, c in zip(holders, cpu0, strict=True)]
        senders = sum(each)
        sent = [s - s0 for s, s0 in zip(_sent(holders), sent0, strict=True)]
        heard = [int(s - s0) for s, s0 in zip(_heard(holders), heard0, strict=True)]
        dups = bitswap_counter(node, "duplicate_blocks")
        msgs = bitswap_counter(node, "messages_received")
        decisions = {d: int(metric(node, "pinfold_bitswap_holder_decisions_total", decision=d))
                     for d in ("admitted", "kept", "dropped", "trials", "demoted", "held")}
        print(f"   {name}: {fetch.mb_s:,.0f} MB/s, receiver {fetch.cpu_per_gib:.2f} "
              f"senders {senders * GiB / size:.2f} CPU-s/GiB {[round(c, 1) for c in each]} s; blocks per holder "
              f"{[int(x) for x in sent]}; messages to them {heard}, from them {msgs:.0f}; "
              f"{dups:.0f} duplicates; "
              f"{ {k: v for k, v in decisions.items() if v} }", file=sys.stderr, flush=True)
        return fetch, dups


def measure(size: int | None = None, n_rounds: int | None = None) -> list[Figure]:
    size = size or bench_size()
    n_rounds = n_rounds or rounds()
    got: dict[str, list[Fetch]] = {"one": [], "three": [], "spread": []}
    dups = 0.0
    with daemons(["h0", "h1", "h2"]) as (h0, h1, h2):
        path = make_file(h0.home.parent / "file.bin", size)
        cid = ""
        for h in (h0, h1, h2):
            cid = add(h, path)
        path.unlink()
        addrs = [address(h) for h in (h0, h1, h2)]
        runs = [("one", addrs[:1], ""), ("three", addrs, ""), ("spread", addrs, SPREAD)]
        for r in range(n_rounds):
            for name, peers, config in runs[r % 3:] + runs[:r % 3]:
                fetch, d = _fetch([h0, h1, h2], peers, cid, size, name, config)
                got[name].append(fetch)
                if name == "three":
                    dups += d

    def ratios(name: str) -> list[float]:
        return [m.mb_s / s.mb_s for s, m in zip(got["one"], got[name], strict=True)]

    def text(name: str) -> str:
        fs = got[name]
        return (f"{statistics.median(f.mb_s for f in fs):,.0f} MB/s; receiver "
                f"{statistics.median(f.cpu_per_gib for f in fs):.2f} CPU-s/GiB")

    ratio = statistics.median(ratios("three"))
    spread = statistics.median(ratios("spread"))
    per_round = ", ".join(f"{r:.2f}" for r in ratios("three"))
    return [Figure(
        what=f"`pin add` {size_text(size)} from three holders ({n_rounds} rounds)",
        figure=f"{text('three')}; {dups:.0f} duplicate blocks",
        baseline=f"one holder: {text('one')}; every holder at once: {text('spread')}, "
                 f"{spread:.2f}x one holder",
        ratio=f"{ratio:.2f}x one holder (rounds: {per_round})",
        target=">= 1.0x", met=ratio >= 1.0)]


def run() -> Iterator[tuple[str, ...]]:
    for fig in measure():
        yield row(fig)


if __name__ == "__main__":
    for r in run():
        print(" | ".join(r), flush=True)
