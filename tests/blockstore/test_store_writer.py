"""``BatchWriter``: batching, per-request errors, cancellation, shutdown."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing
from pinfold.blockstore.cid import MAX_BLOCK_SIZE, make_cid
from pinfold.blockstore.errors import BlockTooLarge, PinError, StoreClosed, StoreFull
from pinfold.blockstore.lmdbstore import LmdbBlockStore
from pinfold.blockstore.memory import MemoryBlockStore
from pinfold.blockstore.writer import BatchWriter

from tests.support.blockstore_conformance import block

MiB = 1024 * 1024


@pytest.fixture
def store(tmp_path: Path):
    with LmdbBlockStore(tmp_path / "store", max_size_bytes=64 * MiB, initial_map_bytes=MiB) as s:
        yield s


async def wait_queued(writer: BatchWriter, n: int) -> None:
    """Wait until ``n`` requests are queued (callers park before the writer runs)."""
    with trio.fail_after(10):
        while writer.statistics().queue_length < n:
            await trio.testing.wait_all_tasks_blocked()


@pytest.fixture
async def running(store: LmdbBlockStore) -> AsyncIterator[BatchWriter]:
    writer = BatchWriter(store)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        yield writer
        nursery.cancel_scope.cancel()


async def test_concurrent_put_many_share_few_transactions(store: LmdbBlockStore) -> None:
    writer = BatchWriter(store, max_batch_requests=64)
    blocks = [block(i, size=1000) for i in range(200)]
    results: dict[int, int] = {}

    async def put(i: int) -> None:
        results[i] = await writer.put_many([blocks[i]])

    commits_before = store.statistics().commits
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        async with trio.open_nursery() as callers:
            for i in range(200):
                callers.start_soon(put, i)
        nursery.cancel_scope.cancel()
    assert results == {i: 1000 for i in range(200)}
    assert all(store.has(c) for c, _ in blocks)
    stats = writer.statistics()
    assert stats.requests == 200 and stats.bytes_written == 200 * 1000
    # 200 callers, at most 64 a batch: a handful of transactions, not 200
    assert stats.batches <= 8, stats
    assert stats.largest_batch == 64
    assert store.statistics().commits - commits_before == stats.batches


async def test_batch_bounded_by_bytes(store: LmdbBlockStore) -> None:
    writer = BatchWriter(store, max_batch_requests=100, max_batch_bytes=3 * 100_000)
    blocks = [block(i, size=100_000) for i in range(10)]
    async with trio.open_nursery() as nursery:
        for b in blocks:
            nursery.start_soon(writer.put_many, [b])
        await wait_queued(writer, 10)
        await nursery.start(writer.run)
        with trio.fail_after(10):
            while writer.statistics().requests < 10:
                await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    stats = writer.statistics()
    assert stats.largest_batch == 3 and stats.batches == 4  # 3 + 3 + 3 + 1


async def test_failing_request_fails_alone(store: LmdbBlockStore) -> None:
    writer = BatchWriter(store)
    good = [block(i) for i in range(5)]
    missing = block(99)[0]
    outcomes: dict[str, object] = {}

    async def put(i: int) -> None:
        outcomes[f"put{i}"] = await writer.put_many([good[i]])

    async def bad_pin() -> None:
        try:
            await writer.submit(lambda t: t.pin_add(missing, recursive=False))
        except PinError as exc:
            outcomes["pin"] = exc

    async with trio.open_nursery() as nursery:
        for i in range(2):
            nursery.start_soon(put, i)
        nursery.start_soon(bad_pin)
        for i in range(2, 5):
            nursery.start_soon(put, i)
        await wait_queued(writer, 6)
        await nursery.start(writer.run)
        with trio.fail_after(10):
            while len(outcomes) < 6:
                await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert isinstance(outcomes.pop("pin"), PinError)
    assert outcomes == {f"put{i}": 100 for i in range(5)}
    assert all(store.has(c) for c, _ in good)
    stats = writer.statistics()
    assert stats.batches == 1 and stats.failed_batches == 1 and stats.requests == 6


async def test_store_full_hits_only_the_oversized_request(tmp_path: Path) -> None:
    with LmdbBlockStore(tmp_path / "s", max_size_bytes=4 * MiB, initial_map_bytes=MiB) as store:
        writer = BatchWriter(store)
        small = [block(i, size=10_000) for i in range(4)]
        huge = [block(1000 + i, size=MAX_BLOCK_SIZE) for i in range(3)]  # 6 MiB > 4 MiB
        outcomes: dict[str, object] = {}

        async def put(name: str, blocks: list) -> None:
            try:
                outcomes[name] = await writer.put_many(blocks)
            except StoreFull as exc:
                outcomes[name] = exc

        async with trio.open_nursery() as nursery:
            nursery.start_soon(put, "a", small[:2])
            nursery.start_soon(put, "huge", huge)
            nursery.start_soon(put, "b", small[2:])
            await wait_queued(writer, 3)
            await nursery.start(writer.run)
            with trio.fail_after(30):
                while len(outcomes) < 3:
                    await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        assert isinstance(outcomes["huge"], StoreFull)
        assert outcomes["a"] == outcomes["b"] == 20_000
        assert all(store.has(c) for c, _ in small)
        assert not any(store.has(c) for c, _ in huge)
        assert store.verify().corrupt == ()


async def test_too_large_block_refused_before_queueing(running: BatchWriter) -> None:
    big = b"x" * (MAX_BLOCK_SIZE + 1)
    with pytest.raises(BlockTooLarge):
        await running.put_many([(make_cid(big), big)])
    assert running.statistics().requests == 0


async def test_submit_pin_in_batch(running: BatchWriter, store: LmdbBlockStore) -> None:
    blocks = [block(i) for i in range(3)]
    cids = [c for c, _ in blocks]
    await running.put_many(blocks)
    rec = await running.submit(lambda t: t.pin_add(cids[0], recursive=True, blocks=cids))
    assert rec.blocks == 3 and store.refcount(cids[2]) == 1
    # store methods called inside the function join the batch's transaction
    removed = await running.submit(lambda _t: store.pin_rm(cids[0]))
    assert removed.cid == cids[0] and store.refcount(cids[2]) == 0
    assert store.check_refcounts() == {}


async def test_cancelled_while_queued_never_runs(store: LmdbBlockStore) -> None:
    writer = BatchWriter(store)
    ran: list[int] = []

    def fn(txn) -> None:
        ran.append(1)
        txn.put_many([block(1)])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.submit, fn)
        await wait_queued(writer, 1)
        nursery.cancel_scope.cancel()  # cancels the waiting caller
    assert writer.statistics().queue_length == 0
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        assert await writer.put_many([block(2)]) == 100
        nursery.cancel_scope.cancel()
    assert ran == [] and not store.has(block(1)[0])


async def test_cancelled_while_running_commits_whole(store: LmdbBlockStore) -> None:
    writer = BatchWriter(store)
    entered = trio.Event()
    release = threading.Event()
    blocks = [block(i) for i in range(10)]
    token = trio.lowlevel.current_trio_token()

    def slow(txn) -> int:
        written = txn.put_many(blocks[:5])
        trio.from_thread.run_sync(entered.set, trio_token=token)
        release.wait(10)
        return written + txn.put_many(blocks[5:])

    caller_cancelled = False

    async def caller(scope_box: list) -> None:
        nonlocal caller_cancelled
        with trio.CancelScope() as scope:
            scope_box.append(scope)
            await writer.submit(slow)
        caller_cancelled = scope.cancelled_caught

    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        box: list = []
        nursery.start_soon(caller, box)
        with trio.fail_after(10):
            await entered.wait()
        box[0].cancel()
        await trio.testing.wait_all_tasks_blocked()
        release.set()
        # the next request is served after the cancelled one committed
        assert await writer.put_many([block(50)]) == 100
        nursery.cancel_scope.cancel()
    assert caller_cancelled
    assert all(store.has(c) for c, _ in blocks), "the taken request committed whole"


async def test_stopped_writer_fails_waiting_and_new_callers() -> None:
    store = MemoryBlockStore()
    writer = BatchWriter(store)
    errors: list[BaseException] = []

    async def put() -> None:
        try:
            await writer.put_many([block(1)])
        except StoreClosed as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(put)
        await wait_queued(writer, 1)
        with trio.CancelScope() as scope:
            scope.cancel()
            await writer.run()  # cancelled at once: the queued request gets StoreClosed
    assert len(errors) == 1
    with pytest.raises(StoreClosed):
        await writer.put_many([block(2)])
    with pytest.raises(RuntimeError):
        await writer.run()
    assert not store.has(block(1)[0])


async def test_gc_during_adds_never_loses_protected_blocks(store: LmdbBlockStore) -> None:
    """Adds register blocks before writing them; a GC racing them frees only loose blocks."""
    writer = BatchWriter(store)
    stop = threading.Event()
    gc_freed = []

    def gc_loop() -> None:
        while not stop.is_set():
            gc_freed.append(store.gc(batch=8).blocks_freed)

    roots = []

    async def add(n: int) -> None:
        blocks = [block(n * 100 + i, size=2000) for i in range(20)]
        with store.protect() as guard:
            for i in range(0, 20, 5):
                part = blocks[i : i + 5]
                guard.add_many(c for c, _ in part)
                await writer.put_many(part)
            cids = [c for c, _ in blocks]
            await writer.submit(lambda t: t.pin_add(cids[0], recursive=True, blocks=cids))
        roots.append(cids[0])

    loose = [block(90_000 + i) for i in range(50)]
    store.put_many(loose)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        nursery.start_soon(trio.to_thread.run_sync, gc_loop)
        async with trio.open_nursery() as adders:
            for n in range(10):
                adders.start_soon(add, n)
        stop.set()
        nursery.cancel_scope.cancel()
    assert len(roots) == 10 and len(gc_freed) >= 1
    for root in roots:
        rec = store.pin_get(root)
        assert rec is not None and rec.blocks == 20
    assert store.stat().blocks - len(store.recount()) == sum(store.has(c) for c, _ in loose)
    assert store.gc().blocks_freed + sum(gc_freed) == 50
    assert store.stat().blocks == 200 and store.check_refcounts() == {}
    assert store.verify().corrupt == ()


async def test_blocks_given_as_views_into_one_message_are_stored_whole_and_survive_a_failed_batch(
        tmp_path: Path) -> None:
    """Received blocks reach the writer as read-only views into their message (no
    copy); what commits is their bytes, kept after the message is gone, and a later
    batch that fails (StoreFull) loses nothing committed before it."""
    with LmdbBlockStore(tmp_path / "s", max_size_bytes=4 * MiB, initial_map_bytes=MiB) as store:
        writer = BatchWriter(store)
        blocks = [block(i, size=100_000) for i in range(6)]
        message = b"".join(d for _, d in blocks)  # one received message holding them all
        view = memoryview(message)
        views = [(c, view[i * 100_000:(i + 1) * 100_000]) for i, (c, _) in enumerate(blocks)]
        huge = [block(1000 + i, size=MAX_BLOCK_SIZE) for i in range(3)]
        outcomes: dict[str, object] = {}

        async def put(name: str, items: list) -> None:
            try:
                outcomes[name] = await writer.put_many(items)
            except StoreFull as exc:
                outcomes[name] = exc

        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            await put("first", views[:3])
            nursery.start_soon(put, "huge", huge)
            nursery.start_soon(put, "second", views[3:])
            with trio.fail_after(30):
                while len(outcomes) < 3:
                    await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        del view, views, message
        assert outcomes["first"] == outcomes["second"] == 300_000
        assert isinstance(outcomes["huge"], StoreFull)
        assert [store.get(c) for c, _ in blocks] == [d for _, d in blocks]
        assert not any(store.has(c) for c, _ in huge)
        assert store.verify().corrupt == ()
