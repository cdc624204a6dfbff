"""One Noise + Yamux stream between two processes on 127.0.0.1: py-libp2p's stock
channel against pinfold's fast channel (``node.fast_channel``), in the same run.

``run()`` (called by ``make bench`` through tools/bench/run.py) yields a row per
channel (median MB/s and receiver CPU seconds per GiB over the runs) and a row of
the median of the per-run ratios. Runs alternate stock and fast, so a load
change on the (shared) machine hits both about equally; the figures are still
noisy when other work runs.

Each run starts a sender process (a host serving N MiB on one stream in 4 MiB
writes) and a receiver process (a host that dials it, reads the stream to its
end in 1 MiB reads and reports wall time and its own CPU time, user + system,
for the transfer). Both ends use the same channel.

Run alone: ``.venv/bin/python tools/bench/run.py channel_bench``
(``PINFOLD_BENCH_CHANNEL_MIB``, default 256; ``PINFOLD_BENCH_REPS``, default 5).
Processes (spawned): ``python -m tools.bench.channel_bench send|receive ...``.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024
GiB = 1024 * MiB
PROTOCOL = "/pinfold-bench/channel/1"
CHANNELS = {"stock": False, "fast": True}


def _host(channel: str):
    from tests.support.bitswap import new_host

    return new_host(fast_channel=CHANNELS[channel])


async def _send(channel: str, n_mib: int) -> None:
    host = _host(channel)
    payload = os.urandom(4 * MiB)

    async def handler(stream) -> None:
        left = n_mib * MiB
        while left:
            chunk = payload[: min(left, len(payload))]
            await stream.write(chunk)
            left -= len(chunk)
        await stream.close()

    host.set_stream_handler(PROTOCOL, handler)
    async with trio.open_nursery() as nursery:
        await nursery.start(host.run)
        print(host.addrs()[0], flush=True)
        await trio.to_thread.run_sync(sys.stdin.read)  # until the parent closes our stdin
        nursery.cancel_scope.cancel()


def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


async def _receive(channel: str, addr: str) -> dict[str, float]:
    host = _host(channel)
    async with trio.open_nursery() as nursery:
        await nursery.start(host.run)
        peer = await host.connect(addr)
        cpu0, t0 = _cpu_s(), time.perf_counter()
        stream = await host.new_stream(peer, [PROTOCOL])
        got = 0
        try:
            while True:
                data = await stream.read(MiB)
                if not data:
                    break
                got += len(data)
        except Exception as exc:  # noqa: BLE001 - StreamEOF ends the transfer
            if type(exc).__name__ != "StreamEOF":
                raise
        wall, cpu = time.perf_counter() - t0, _cpu_s() - cpu0
        nursery.cancel_scope.cancel()
    return {"bytes": got, "wall_s": wall, "cpu_s": cpu}


def measure(channel: str, n_mib: int) -> dict[str, float]:
    """One transfer of ``n_mib`` MiB over ``channel`` ("stock" or "fast"), sender
    and receiver in their own processes.

    Returns:
        ``{"mb_s": MB/s (10^6 bytes), "cpu_s_per_gib": receiver CPU s/GiB}``.

    Raises:
        RuntimeError: a process failed, or the receiver got the wrong byte count.
    """
    sender = subprocess.Popen(
        [sys.executable, "-m", "tools.bench.channel_bench", "send", channel, str(n_mib)],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert sender.stdout is not None
        addr = sender.stdout.readline().strip()
        if not addr:
            raise RuntimeError(f"the {channel} sender did not start")
        out = subprocess.run(
            [sys.executable, "-m", "tools.bench.channel_bench", "receive", channel, addr],
            cwd=ROOT, capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            raise RuntimeError(f"the {channel} receiver failed: {out.stderr.strip()[-2000:]}")
        res = json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        try:
            assert sender.stdin is not None
            sender.stdin.close()
            sender.wait(timeout=10)
        except Exception:  # noqa: BLE001 - make sure it is gone
            sender.kill()
            sender.wait()
    if res["bytes"] != n_mib * MiB:
        raise RuntimeError(f"the {channel} receiver got {res['bytes']} bytes, expected {n_mib * MiB}")
    return {"mb_s": res["bytes"] / res["wall_s"] / 1e6, "cpu_s_per_gib": res["cpu_s"] / (res["bytes"] / GiB)}


def run(n_mib: int | None = None, reps: int | None = None) -> Iterator[tuple[str, ...]]:
    """Rows for ``make bench``: medians over ``reps`` alternating stock/fast runs."""
    n_mib = n_mib or int(os.environ.get("PINFOLD_BENCH_CHANNEL_MIB", "256"))
    reps = reps or int(os.environ.get("PINFOLD_BENCH_REPS", "5"))
    runs: dict[str, list[dict[str, float]]] = {"stock": [], "fast": []}
    for _ in range(reps):
        for channel in runs:
            runs[channel].append(measure(channel, n_mib))
    for channel, label in (("stock", "py-libp2p stock channel"), ("fast", "pinfold fast channel")):
        rs = runs[channel]
        yield (f"raw Noise+Yamux stream, {label}", f"{n_mib} MiB x {reps}",
               f"median {statistics.median(r['mb_s'] for r in rs):.0f} MB/s",
               f"receiver {statistics.median(r['cpu_s_per_gib'] for r in rs):.2f} CPU-s/GiB",
               "runs " + "/".join(f"{r['mb_s']:.0f}" for r in rs))
    speed = [f["mb_s"] / s["mb_s"] for s, f in zip(runs["stock"], runs["fast"], strict=True)]
    cpu = [s["cpu_s_per_gib"] / f["cpu_s_per_gib"] for s, f in zip(runs["stock"], runs["fast"], strict=True)]
    yield ("raw Noise+Yamux stream, fast / stock", "same run",
           f"median {statistics.median(speed):.2f}x MB/s",
           f"{statistics.median(cpu):.2f}x less receiver CPU per GiB",
           "ratios " + "/".join(f"{x:.2f}" for x in speed),
           "(shared machine: noisy)")


def main(argv: list[str]) -> int:
    if argv[:1] == ["send"]:
        trio.run(_send, argv[1], int(argv[2]))
    elif argv[:1] == ["receive"]:
        print(json.dumps(trio.run(_receive, argv[1], argv[2])), flush=True)
    else:
        for row in run(int(argv[0]) if argv else None):
            print("   " + " | ".join(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main(sys.argv[1:]))
