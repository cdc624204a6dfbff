"""``BatchWriter``: the one trio task that writes to the block store.

STYLE.md 5 (after iroh-blobs' ``store/fs/meta.rs``): a sync costs the same
for one write or a thousand, so writes are batched. Callers queue requests
(``put_many`` blocks, or any ``submit(fn)`` run inside the transaction, such as
a pin); the writer drains up to a batch bound (64 requests / 64 MiB by
default), runs the whole batch in ONE ``trio.to_thread.run_sync`` call inside
ONE write transaction, commits once, and wakes each caller with its own
result. A request that arrives while a batch is in the thread joins the next
batch, so under load batches fill up by themselves and an idle writer adds no
latency.

If a batch fails (one request raises, or one oversized request makes it
``StoreFull``), the transaction is rolled back and the batch's requests are
re-run one by one, each in its own transaction, so only the failing request
gets the error.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

import trio

from pinfold.blockstore.cid import CID, check_block_size
from pinfold.blockstore.errors import StoreClosed
from pinfold.blockstore.txn import StoreTxn, TxnBlockStore

__all__ = ["BatchWriter", "WriterStatistics"]

T = TypeVar("T")
MiB: Final = 1024 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class WriterStatistics:
    """Counters of a ``BatchWriter`` since it was created.

    Attributes:
        batches: write transactions attempted for whole batches.
        requests: requests finished (committed or failed).
        bytes_written: declared bytes of committed requests (``put_many``: the
            blocks' sizes; ``submit``: its ``nbytes``), bytes.
        queue_length: requests waiting for the next batch.
        failed_batches: batches rolled back and re-run one request at a time.
        largest_batch: most requests in one batch.
    """

    batches: int
    requests: int
    bytes_written: int
    queue_length: int
    failed_batches: int
    largest_batch: int


class _Request(Generic[T]):
    """One queued write; its outcome is set by the worker thread, read after ``done``."""

    __slots__ = ("done", "error", "finished", "fn", "nbytes", "taken", "value")

    def __init__(self, fn: Callable[[StoreTxn], T], nbytes: int) -> None:
        self.fn = fn
        self.nbytes = nbytes
        self.done = trio.Event()
        self.taken = False
        self.finished = False
        self.value: T | None = None
        self.error: BaseException | None = None


class BatchWriter:
    """The store's single writer as a trio service.

    Args:
        store: the block store (``LmdbBlockStore`` or ``MemoryBlockStore``).
        max_batch_requests: most requests in one transaction (>= 1).
        max_batch_bytes: most declared bytes in one transaction; a single
            larger request still runs, alone (>= 1).

    Raises:
        ValueError: a bound < 1.
    """

    def __init__(
        self,
        store: TxnBlockStore,
        *,
        max_batch_requests: int = 64,
        max_batch_bytes: int = 64 * MiB,
    ) -> None:
        if max_batch_requests < 1 or max_batch_bytes < 1:
            raise ValueError(
                f"batch bounds must be >= 1, got max_batch_requests={max_batch_requests} "
                f"max_batch_bytes={max_batch_bytes}"
            )
        self._store = store
        self._max_requests = max_batch_requests
        self._max_bytes = max_batch_bytes
        self._queue: deque[_Request[Any]] = deque()
        self._wakeup = trio.Event()
        self._running = False
        self._stopped = False
        self._batches = 0
        self._requests = 0
        self._bytes = 0
        self._failed_batches = 0
        self._largest = 0

    def statistics(self) -> WriterStatistics:
        """The writer's counters now."""
        return WriterStatistics(
            batches=self._batches,
            requests=self._requests,
            bytes_written=self._bytes,
            queue_length=len(self._queue),
            failed_batches=self._failed_batches,
            largest_batch=self._largest,
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve write requests until cancelled (start it with ``nursery.start``).

        Cancellation waits for the batch in the thread to finish (its callers
        get their results), then fails every request still queued with
        ``StoreClosed``; later calls raise ``StoreClosed`` at once.

        Raises:
            RuntimeError: ``run`` is already running, or ran before.
        """
        if self._running or self._stopped:
            raise RuntimeError("BatchWriter.run can only run once")
        self._running = True
        batch: list[_Request[Any]] = []
        task_status.started()
        try:
            while True:
                while not self._queue:
                    await self._wakeup.wait()
                    self._wakeup = trio.Event()
                batch = self._take_batch()
                # abandon_on_cancel=False: a cancel waits for the commit, so
                # every caller in the batch learns its real outcome.
                await trio.to_thread.run_sync(self._run_batch, batch)
                for req in batch:
                    req.done.set()
                batch = []
        finally:
            self._running = False
            self._stopped = True
            closed = StoreClosed("the block store's batch writer has stopped")
            for req in [*batch, *self._queue]:
                if not req.finished:
                    req.error = closed
                req.done.set()
            self._queue.clear()

    def _take_batch(self) -> list[_Request[Any]]:
        batch: list[_Request[Any]] = []
        nbytes = 0
        while self._queue and len(batch) < self._max_requests:
            req = self._queue[0]
            if batch and nbytes + req.nbytes > self._max_bytes:
                break
            self._queue.popleft()
            req.taken = True
            batch.append(req)
            nbytes += req.nbytes
        self._largest = max(self._largest, len(batch))
        return batch

    def _run_batch(self, batch: list[_Request[Any]]) -> None:
        """In the worker thread: the batch in one transaction, else one by one."""
        self._batches += 1
        try:
            values = self._store.write(
                lambda txn: [req.fn(txn) for req in batch],
                size_hint=sum(req.nbytes for req in batch),
            )
        except Exception as exc:  # noqa: BLE001 - the error belongs to a caller, not to us
            if len(batch) == 1:
                self._finish(batch[0], error=exc)
                return
            self._failed_batches += 1
            for req in batch:
                try:
                    value = self._store.write(req.fn, size_hint=req.nbytes)
                except Exception as exc1:  # noqa: BLE001 - handed to its caller
                    self._finish(req, error=exc1)
                else:
                    self._finish(req, value=value)
            return
        for req, value in zip(batch, values, strict=True):
            self._finish(req, value=value)

    def _finish(
        self, req: _Request[Any], *, value: object = None, error: BaseException | None = None
    ) -> None:
        req.value, req.error = value, error
        req.finished = True
        self._requests += 1
        if error is None:
            self._bytes += req.nbytes

    async def submit(self, fn: Callable[[StoreTxn], T], *, nbytes: int = 0) -> T:
        """Run ``fn(txn)`` inside the next batch's write transaction; return its result.

        ``fn`` runs in a worker thread, may run more than once (see
        ``TxnBlockStore.write``) and must not touch anything but ``txn``.

        Args:
            fn: the write, e.g. ``lambda t: t.pin_add(root, recursive=True, blocks=cids)``.
            nbytes: bytes the request writes, for the batch's byte bound.

        Returns:
            What ``fn`` returned, once its transaction committed.

        Raises:
            StoreClosed: the writer is not going to run the request.
            Exception: what ``fn`` raised, or ``StoreFull``; nothing of the
                request was committed.

        Cancellation: a request still queued is withdrawn and never runs. One
        already taken into a batch runs to its end in the worker thread and
        commits (or fails) with its batch; only the caller stops waiting, so it
        cannot tell which. Either way the store stays consistent: every
        request commits whole or not at all. A caller that must know should
        re-check (``put_many`` and ``pin_add`` are idempotent).
        """
        if self._stopped:
            raise StoreClosed("the block store's batch writer has stopped")
        if nbytes < 0:
            raise ValueError(f"nbytes must be >= 0, got {nbytes}")
        req: _Request[T] = _Request(fn, nbytes)
        self._queue.append(req)
        self._wakeup.set()
        try:
            await req.done.wait()
        except BaseException:
            if not req.taken:
                self._queue.remove(req)
            raise
        if req.error is not None:
            raise req.error
        return req.value  # type: ignore[return-value]

    async def put_many(self, blocks: Iterable[tuple[CID, bytes | memoryview]]) -> int:
        """Store blocks in the next batch; all of this call's blocks or none commit.

        The caller vouches that each block hashes to its CID. Oversized blocks
        are refused before queueing.

        Returns:
            Bytes newly written (blocks already present count 0).

        Raises:
            BlockTooLarge: a block exceeds 2 MiB (nothing queued).
            StoreFull: the blocks do not fit (nothing of this call committed).
            StoreClosed: the writer stopped.

        Cancellation: as :meth:`submit`.
        """
        items = list(blocks)
        nbytes = 0
        for _, data in items:
            check_block_size(len(data))
            nbytes += len(data)
        return await self.submit(lambda txn: txn.put_many(items), nbytes=nbytes)
