"""Crash safety: a writer process killed with SIGKILL at seeded random moments.

A child process runs the daemon's write path (``BatchWriter``: protected adds,
``put_many`` then ``pin_add``, some unpins, GC in a thread) on a real LMDB
store and prints each operation once its transaction committed. The parent
kills it (SIGKILL) after a seeded random number of lines, reopens the store and
checks: every pin reported committed is there with all its blocks intact,
every unpin reported committed is gone, ``verify`` is clean and the reference
counts equal a recount from ``pin_blocks``. Then the next round continues on
the same store, alternating ``sync=True`` and ``sync=False`` (a process crash
loses nothing in either mode).
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
from pathlib import Path

from pinfold.blockstore.cid import make_cid
from pinfold.blockstore.lmdbstore import LmdbBlockStore

MiB = 1024 * 1024
ROUNDS = 6

CHILD = r"""
import random, sys
import trio
from pinfold.blockstore.cid import make_cid
from pinfold.blockstore.lmdbstore import LmdbBlockStore
from pinfold.blockstore.writer import BatchWriter

def batch_blocks(batch_id):
    rng = random.Random(batch_id)
    datas = [rng.randbytes(rng.randint(1, 300_000)) for _ in range(rng.randint(1, 12))]
    return [(make_cid(d), d) for d in datas]

async def main(path, first, sync):
    store = LmdbBlockStore(path, max_size_bytes=1 << 30, initial_map_bytes=1 << 20, sync=sync)
    writer = BatchWriter(store, max_batch_requests=8)

    async def adder(lane):
        rng = random.Random(first + lane)
        mine = []
        for n in range(10_000):
            batch_id = first + lane * 10_000 + n
            blocks = batch_blocks(batch_id)
            cids = [c for c, _ in blocks]
            with store.protect() as guard:
                guard.add_many(cids)
                await writer.put_many(blocks)
                await writer.submit(lambda t: t.pin_add(cids[0], recursive=True, blocks=cids))
            print("P", batch_id, flush=True)
            mine.append(batch_id)
            if len(mine) > 2 and rng.random() < 0.3:
                victim = mine.pop(rng.randrange(len(mine) - 1))
                root = batch_blocks(victim)[0][0]
                print("u", victim, flush=True)
                await writer.submit(lambda t: t.pin_rm(root))
                print("U", victim, flush=True)

    async def collector():
        while True:
            await trio.to_thread.run_sync(lambda: store.gc(batch=16))
            await trio.sleep(0)

    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        nursery.start_soon(collector)
        async with trio.open_nursery() as adders:
            for lane in range(4):
                adders.start_soon(adder, lane)

trio.run(main, sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1")
"""


def batch_blocks(batch_id: int) -> list[tuple]:
    rng = random.Random(batch_id)
    datas = [rng.randbytes(rng.randint(1, 300_000)) for _ in range(rng.randint(1, 12))]
    return [(make_cid(d), d) for d in datas]


def run_and_kill(path: Path, first: int, sync: bool, lines_before_kill: int) -> list[str]:
    """Start the child, read ``lines_before_kill`` lines, SIGKILL it; return the lines read."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), str(first), "1" if sync else "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        while len(lines) < lines_before_kill:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.split())
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err
    assert len(lines) == lines_before_kill, err
    return lines


def test_sigkill_at_random_moments_loses_nothing_committed(tmp_path: Path) -> None:
    rng = random.Random(20261129)
    pinned: set[int] = set()  # pins reported committed and not (being) unpinned
    unpinned: set[int] = set()  # unpins reported committed
    in_doubt: set[int] = set()  # unpins started but not reported when killed
    for round_no in range(ROUNDS):
        sync = round_no % 2 == 0
        lines = run_and_kill(
            tmp_path, first=(round_no + 1) * 1_000_000, sync=sync,
            lines_before_kill=rng.randint(3, 30),
        )
        started_unpins = set()
        for kind, batch in lines:
            batch_id = int(batch)
            if kind == "P":
                pinned.add(batch_id)
            elif kind == "u":
                started_unpins.add(batch_id)
                pinned.discard(batch_id)
            elif kind == "U":
                started_unpins.discard(batch_id)
                unpinned.add(batch_id)
        in_doubt |= started_unpins

        with LmdbBlockStore(tmp_path, max_size_bytes=1 << 30) as store:  # no StoreLocked
            for batch_id in pinned:
                blocks = batch_blocks(batch_id)
                rec = store.pin_get(blocks[0][0])
                assert rec is not None, f"round {round_no}: committed pin {batch_id} lost"
                assert rec.blocks == len({c for c, _ in blocks})
                for cid, data in blocks:
                    assert store.get(cid) == data
            for batch_id in unpinned:
                assert store.pin_get(batch_blocks(batch_id)[0][0]) is None
            result = store.verify()
            assert result.corrupt == (), f"round {round_no}: corrupt blocks {result.corrupt}"
            assert store.check_refcounts() == {}, f"round {round_no}: refcounts differ"
            # besides those: pins whose unpin was cut short, and at most one
            # unreported pin per adder lane (4) per round
            pins_now = sum(store.pin_counts().values())
            assert len(pinned) <= pins_now <= len(pinned) + len(in_doubt) + 4 * (round_no + 1)
            # what no pin holds is garbage after the crash; GC keeps every pinned block
            store.gc()
            for batch_id in pinned:
                assert all(store.has(c) for c, _ in batch_blocks(batch_id))
    assert len(pinned) + len(unpinned) >= ROUNDS
