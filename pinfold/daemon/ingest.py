"""Writing an upload's blocks: ``BlockSink`` and undoing a failed upload.

``add``, ``add_dir`` and ``dag import`` hand their blocks to a ``BlockSink``,
which commits them through the store's one writer in large batches, a few in
flight, each block protected from GC until the pin that follows. A request
that fails removes the blocks it newly stored (``undo_on_failure``). Imports
only the blockstore and trio.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import trio
from pinfold.blockstore.cid import CID, cid_key, is_identity
from pinfold.blockstore.lmdbstore import LmdbBlockStore
from pinfold.blockstore.pins import Protection
from pinfold.blockstore.txn import StoreTxn
from pinfold.blockstore.writer import BatchWriter

__all__ = ["SINK_BATCH_BYTES", "SINK_INFLIGHT", "BlockSink", "discard_created",
           "undo_on_failure"]

log = logging.getLogger("pinfold.api")

#: Bytes of blocks gathered before one write is handed to the writer, and how
#: many such writes may be in flight: the add pipeline overlaps receiving and
#: hashing with LMDB commits while bounding memory to about BATCH x INFLIGHT.
SINK_BATCH_BYTES = 8 * 1024 * 1024
SINK_INFLIGHT = 3


class BlockSink:
    """Hands blocks to the batched writer in large batches, a few in flight.

    ``put`` returns as soon as the blocks are queued (bounded by SINK_INFLIGHT
    pending writes); ``flush`` waits until every queued block is committed.
    Every block is registered with ``protection`` first, so GC cannot delete it
    between its commit and the pin that follows. The blocks a write newly
    stored (absent before it) are appended to ``created``, so a request that
    fails can remove them (``discard_created``); ``on_stored`` is told every
    committed batch's CIDs (the exchange serves peers waiting for them).
    """

    def __init__(self, writer: BatchWriter, nursery: trio.Nursery, protection: Protection,
                 created: list[CID] | None = None, *,
                 on_stored: Callable[[list[CID]], None] = lambda cids: None) -> None:
        self._writer = writer
        self._on_stored = on_stored
        self._nursery = nursery
        self._protection = protection
        self.created: list[CID] = created if created is not None else []
        self._batch: list[tuple[CID, bytes]] = []
        self._batch_bytes = 0
        self._slots = trio.Semaphore(SINK_INFLIGHT)
        self.blocks = 0
        self.bytes = 0

    async def put(self, blocks: list[tuple[CID, bytes]]) -> None:
        for cid, data in blocks:
            if is_identity(cid):
                continue
            self._protection.add(cid)
            self._batch.append((cid, data))
            self._batch_bytes += len(data)
            self.blocks += 1
            self.bytes += len(data)
        if self._batch_bytes >= SINK_BATCH_BYTES:
            await self._submit()

    async def _submit(self) -> None:
        if not self._batch:
            return
        batch, self._batch, self._batch_bytes = self._batch, [], 0
        await self._slots.acquire()

        async def write() -> None:
            try:
                # Shielded, so a failing or cancelled request still learns which blocks
                # this batch created (at most SINK_BATCH_BYTES of one write to wait for).
                with trio.CancelScope(shield=True):
                    new = await self._writer.submit(
                        lambda t: _put_new(t, batch), nbytes=sum(len(d) for _, d in batch))
                self.created.extend(new)
                self._on_stored([cid for cid, _ in batch])
            finally:
                self._slots.release()

        self._nursery.start_soon(write)

    async def flush(self) -> None:
        await self._submit()
        for _ in range(SINK_INFLIGHT):
            await self._slots.acquire()
        for _ in range(SINK_INFLIGHT):
            self._slots.release()


def _put_new(txn: StoreTxn, batch: list[tuple[CID, bytes]]) -> list[CID]:
    """Store ``batch`` in ``txn``; return the CIDs that were not stored before."""
    new = [cid for cid, _ in batch if not txn.has(cid)]
    txn.put_many(batch)
    return new


async def discard_created(store: LmdbBlockStore, writer: BatchWriter, created: list[CID]) -> int:
    """Delete blocks a failed request stored, unless a pin or a live protection
    (another add, a fetch) holds them by now; returns how many were deleted.

    Checked inside the writer's transaction, as GC checks, so a block another
    request registered first is kept. Shielded from cancellation; never raises
    (what cannot be deleted now stays for GC).
    """
    if not created:
        return 0
    protections = store.protections

    def drop(txn: StoreTxn) -> int:
        return sum(1 for cid in created if txn.refcount(cid) == 0
                   and not protections.is_protected(cid_key(cid)) and txn.delete(cid))

    try:
        with trio.CancelScope(shield=True):
            return await writer.submit(drop)
    except Exception as exc:  # noqa: BLE001 - the request's own error is what matters
        log.warning("could not remove %d blocks of a failed request (GC will): %s",
                    len(created), exc)
        return 0


@asynccontextmanager
async def undo_on_failure(store: LmdbBlockStore, writer: BatchWriter
                          ) -> AsyncIterator[list[CID]]:
    """A list for ``BlockSink(created=...)``: if the block raises (an error, a cancel),
    the blocks it newly stored are removed again (``discard_created``), so a failed
    add or CAR import leaves the store as it found it."""
    created: list[CID] = []
    try:
        yield created
    except BaseException:
        await discard_created(store, writer, created)
        raise
