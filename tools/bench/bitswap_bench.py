"""Bitswap throughput between two processes on 127.0.0.1, against a raw stream baseline.

``run()`` (called by ``make bench`` through tools/bench/run.py) yields rows:

* raw: one py-libp2p Noise + Yamux stream carrying N MiB (the ceiling);
* bitswap: pinfold fetching N x 1 MiB raw blocks (hashed, checked, stored in a
  dict store) from a pinfold peer in another process, with the ratio to raw
  (targets: >= 0.7 of raw and >= 200 MB/s);
* helia: a Helia 7 peer fetching (``cat``) a file added on another Helia peer,
  when Node and tests/interop/node_modules are present.

Run alone: ``.venv/bin/python -m tools.bench.bitswap_bench [MiB]``.
Server side (spawned): ``python -m tools.bench.bitswap_bench serve-raw|serve-bitswap N``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024
RAW_PROTOCOL = "/pinfold-bench/raw/1"


def _blocks(n: int):
    from tests.support.bitswap import raw_blocks

    return raw_blocks(n, MiB, seed=42)


async def _serve(kind: str, n: int) -> None:
    from pinfold.daemon.p2p.bitswap import Bitswap

    from tests.support.bitswap import DictStore, new_host

    host = new_host()
    async with trio.open_nursery() as nursery:
        if kind == "raw":
            # 4 MiB writes, the size of a full Bitswap message
            payload = os.urandom(4 * MiB)

            async def handler(stream):
                for _ in range(n // 4):
                    await stream.write(payload)
                if n % 4:
                    await stream.write(payload[: (n % 4) * MiB])
                await stream.close()

            host.set_stream_handler(RAW_PROTOCOL, handler)
            await nursery.start(host.run)
        else:
            store = DictStore()
            store.add(_blocks(n))
            bs = Bitswap(host, store, store.put_many)
            await nursery.start(host.run)
            await nursery.start(bs.run)
        print(host.addrs()[0], flush=True)
        # serve until the parent closes our stdin
        await trio.to_thread.run_sync(sys.stdin.read)
        nursery.cancel_scope.cancel()


def _spawn(kind: str, n: int) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tools.bench.bitswap_bench", f"serve-{kind}", str(n)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    addr = proc.stdout.readline().strip()
    if not addr:
        proc.kill()
        raise RuntimeError(f"bench server ({kind}) did not start")
    return proc, addr


def _stop(proc: subprocess.Popen) -> None:
    try:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=10)
    except Exception:  # noqa: BLE001 - make sure it is gone
        proc.kill()
        proc.wait()


async def _fetch_raw(addr: str, n: int) -> float:
    from tests.support.bitswap import new_host

    host = new_host()
    async with trio.open_nursery() as nursery:
        await nursery.start(host.run)
        peer = await host.connect(addr)
        start = time.perf_counter()
        stream = await host.new_stream(peer, [RAW_PROTOCOL])
        got = 0
        try:
            while True:
                data = await stream.read(MiB)
                if not data:
                    break
                got += len(data)
        except Exception:  # noqa: BLE001 - StreamEOF ends the transfer
            pass
        elapsed = time.perf_counter() - start
        nursery.cancel_scope.cancel()
    if got != n * MiB:
        raise RuntimeError(f"raw stream delivered {got} bytes, expected {n * MiB}")
    return elapsed


async def _fetch_bitswap(addr: str, n: int) -> float:
    from pinfold.daemon.p2p.bitswap import Bitswap

    from tests.support.bitswap import DictStore, new_host

    cids = [c for c, _ in _blocks(n)]
    host = new_host()
    store = DictStore()
    bs = Bitswap(host, store, store.put_many)
    async with trio.open_nursery() as nursery:
        await nursery.start(host.run)
        await nursery.start(bs.run)
        await host.connect(addr)
        start = time.perf_counter()
        got = 0
        async for _cid, data in bs.fetch_blocks(cids, timeout_s=30):
            got += len(data)
        elapsed = time.perf_counter() - start
        nursery.cancel_scope.cancel()
    if got != n * MiB:
        raise RuntimeError(f"bitswap delivered {got} bytes, expected {n * MiB}")
    return elapsed


def measure(kind: str, n: int) -> float:
    """Seconds to move ``n`` MiB from a server process, by ``kind`` ("raw" or "bitswap")."""
    proc, addr = _spawn(kind, n)
    try:
        fn = _fetch_raw if kind == "raw" else _fetch_bitswap
        return trio.run(fn, addr, n)
    finally:
        _stop(proc)


async def _helia_to_helia(n: int) -> float | None:
    from tests.support.helia import helia_peer, skip_reason

    if skip_reason() is not None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.bin"
        path.write_bytes(os.urandom(n * MiB))
        async with helia_peer() as a, helia_peer() as b:
            cid = (await a.request("add", path=str(path), timeout_s=300))["cid"]
            await b.request("dial", addr=a.addrs[0])
            start = time.perf_counter()
            res = await b.request("cat", cid=cid, timeout_ms=600_000, timeout_s=600)
            elapsed = time.perf_counter() - start
    if res["size"] != n * MiB:
        raise RuntimeError("helia cat returned the wrong size")
    return elapsed


def run(n: int | None = None, reps: int | None = None) -> Iterator[tuple[str, ...]]:
    """Rows for ``make bench``: best of ``reps`` alternating runs (the machine is shared)."""
    n = n or int(os.environ.get("PINFOLD_BENCH_BITSWAP_MIB", "256"))
    reps = reps or int(os.environ.get("PINFOLD_BENCH_REPS", "3"))
    mb = n * MiB / 1e6
    raw_runs, bs_runs = [], []
    for _ in range(reps):
        raw_runs.append(measure("raw", n))
        bs_runs.append(measure("bitswap", n))
    raw_s, bs_s = min(raw_runs), min(bs_runs)

    def spread(runs: list[float]) -> str:
        return "/".join(f"{mb / r:.0f}" for r in runs)

    yield ("raw Noise+Yamux stream (4 MiB writes)", f"{n} MiB", f"best {mb / raw_s:.0f} MB/s",
           f"runs {spread(raw_runs)}")
    ratio = raw_s / bs_s
    ok = "ok" if ratio >= 0.7 and mb / bs_s >= 200 else "MISS"
    yield (
        "bitswap fetch_blocks (1 MiB blocks)",
        f"{n} MiB",
        f"best {mb / bs_s:.0f} MB/s",
        f"runs {spread(bs_runs)}",
        f"{ratio:.2f} of raw",
        f"target >= 0.7 of raw and >= 200 MB/s: {ok}",
    )
    hn = min(n, 64)
    h_s = trio.run(_helia_to_helia, hn)
    if h_s is None:
        yield ("helia -> helia", "skipped (node or tests/interop/node_modules missing)")
    else:
        yield ("helia -> helia cat", f"{hn} MiB", f"{hn * MiB / 1e6 / h_s:.0f} MB/s")


def _main(argv: list[str]) -> int:
    sys.path.insert(0, str(ROOT))
    if argv and argv[0].startswith("serve-"):
        trio.run(_serve, argv[0].removeprefix("serve-"), int(argv[1]))
        return 0
    n = int(argv[0]) if argv else None
    for row in run(n):
        print(" | ".join(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
