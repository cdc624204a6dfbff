"""Blockstore throughput and GC time (slow; run with ``pytest -m slow -s tests/blockstore/test_store_bench.py``).

- ``put_many`` of 1 GiB in 1 MiB blocks (sha2-256 CID per chunk included),
  ``sync=True`` and ``sync=False``, through the store directly (64 blocks a
  call) and through ``BatchWriter`` (8 concurrent callers, one block a call),
  against the raw baseline: ``hashlib.sha256`` per chunk + raw py-lmdb puts,
  64 a transaction, map preallocated.
- GC of 100k small unpinned blocks (and 100k more pinned ones left alone).

Each configuration runs ``ROUNDS`` times, interleaved, after an ``os.sync()``
(so one run's dirty pages do not slow the next); the best and the median are
printed. The assertions only catch gross regressions.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import lmdb
import pytest
import trio
from pinfold.blockstore.cid import make_cid
from pinfold.blockstore.lmdbstore import LmdbBlockStore
from pinfold.blockstore.writer import BatchWriter

pytestmark = pytest.mark.slow

MiB = 1024 * 1024
GiB = 1024 * MiB
BLOCK = MiB
COUNT = GiB // BLOCK
BATCH = 64
ROUNDS = 3
_BASE = os.urandom(BLOCK)


def chunks() -> Iterator[bytes]:
    """1 GiB of distinct 1 MiB chunks."""
    for i in range(COUNT):
        yield i.to_bytes(8, "big") + _BASE[8:]


def rate(seconds: float) -> float:
    """MiB/s for 1 GiB in ``seconds``."""
    return GiB / MiB / seconds


def baseline(path: Path, *, sync: bool) -> float:
    env = lmdb.open(str(path), map_size=2 * GiB, sync=sync, max_dbs=2)
    db = env.open_db(b"blocks")
    started = time.perf_counter()
    batch = []
    for data in chunks():
        batch.append((b"\x12\x20" + hashlib.sha256(data).digest(), data))
        if len(batch) == BATCH:
            with env.begin(write=True, db=db) as txn:
                for key, value in batch:
                    txn.put(key, value)
            batch = []
    env.close()
    return time.perf_counter() - started


def store_direct(path: Path, *, sync: bool) -> float:
    with LmdbBlockStore(path, max_size_bytes=4 * GiB, sync=sync) as store:
        started = time.perf_counter()
        batch = []
        for data in chunks():
            batch.append((make_cid(data), data))
            if len(batch) == BATCH:
                store.put_many(batch)
                batch = []
        seconds = time.perf_counter() - started
        assert store.stat().bytes == GiB
    return seconds


def store_writer(path: Path, *, sync: bool) -> float:
    with LmdbBlockStore(path, max_size_bytes=4 * GiB, sync=sync) as store:
        writer = BatchWriter(store)

        async def main() -> float:
            source = iter(chunks())
            async with trio.open_nursery() as nursery:
                await nursery.start(writer.run)
                started = time.perf_counter()

                async def lane() -> None:
                    for data in source:
                        cid = make_cid(data)
                        await writer.put_many([(cid, data)])

                async with trio.open_nursery() as lanes:
                    for _ in range(8):
                        lanes.start_soon(lane)
                nursery.cancel_scope.cancel()
                return time.perf_counter() - started

        seconds = trio.run(main)
        stats = writer.statistics()
        assert store.stat().bytes == GiB
        assert stats.batches < stats.requests
    return seconds


@pytest.mark.parametrize("sync", [True, False], ids=["sync", "nosync"])
def test_put_throughput_1gib(tmp_path: Path, sync: bool) -> None:
    runs = {
        "baseline: sha256 + raw lmdb, 64 a txn": baseline,
        "LmdbBlockStore.put_many, 64 a call": store_direct,
        "BatchWriter, 8 callers x 1 block": store_writer,
    }
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(ROUNDS):
        for name, fn in runs.items():
            path = tmp_path / "store"
            os.sync()
            seconds[name].append(fn(path, sync=sync))
            shutil.rmtree(path)
    print(f"\n1 GiB in 1 MiB blocks, sync={sync}, best / median of {ROUNDS}:")
    best = {}
    for name, times in seconds.items():
        best[name] = rate(min(times))
        print(f"  {name:<40} {best[name]:6.0f} / {rate(statistics.median(times)):6.0f} MiB/s")
    base, direct, writer = best.values()
    print(f"  store/baseline {direct / base:.2f}, writer/baseline {writer / base:.2f}")
    assert direct > 0.5 * base and writer > 0.5 * base


def test_gc_100k_small_blocks(tmp_path: Path) -> None:
    with LmdbBlockStore(tmp_path, max_size_bytes=GiB, sync=True) as store:
        loose = [(make_cid(b"loose%d" % i), b"loose%d" % i) for i in range(100_000)]
        kept = [(make_cid(b"kept%d" % i), b"kept%d" % i) for i in range(100_000)]
        for i in range(0, 100_000, 10_000):
            store.put_many(loose[i : i + 10_000])
            store.put_many(kept[i : i + 10_000])
            root = kept[i][0]
            store.pin_add(root, recursive=True, blocks=[c for c, _ in kept[i : i + 10_000]])
        result = store.gc()
        print(f"\nGC freed {result.blocks_freed} of 200k small blocks (100k pinned) in "
              f"{result.seconds:.2f} s ({result.blocks_freed / result.seconds:,.0f} blocks/s)")
        assert result.blocks_freed == 100_000
        assert store.stat().blocks == 100_000
        again = store.gc()
        print(f"GC pass with nothing to free over 100k pinned blocks: {again.seconds:.2f} s")
        assert again.blocks_freed == 0
