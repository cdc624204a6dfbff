"""``TxnBlockStore``: the public store API (the ``BlockStore`` protocol plus
pins, GC protection, GC and verify) built on each store's ``_read(fn)`` and
``_write(fn)``.

Imports ``ops`` and ``tables``; no I/O of its own."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Self, TypeVar

from pinfold.blockstore.cid import CID, check_block_size
from pinfold.blockstore.errors import StoreFull
from pinfold.blockstore.pins import GcResult, PinRecord, Protection, ProtectionSet, VerifyResult
from pinfold.blockstore.store import StoreStat
from pinfold.blockstore.txn.ops import StoreTxn
from pinfold.blockstore.txn.tables import _PAGE, DbHandle, StoreStatistics, raw_cid

T = TypeVar("T")


class TxnBlockStore(ABC):
    """The public store API, built on ``_read(fn)`` and ``_write(fn)``.

    Implements the ``BlockStore`` protocol (``store.py``) plus local pins with
    per-block reference counts, GC protection, GC and verify. Methods are
    synchronous and thread-safe; writes run one at a time on the calling
    thread. Iterators read in pages of short transactions, so they see a
    consistent view per page, not across the whole iteration.

    Store calls made on the thread running a ``write(fn)`` (from inside
    ``fn``) join that transaction: they see its writes and commit or roll back
    with it, so ``write(lambda t: store.pin_add(...))`` is one transaction.
    """

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self.protections = ProtectionSet()
        self._clock = clock
        self._commits = 0
        self._rollbacks = 0
        self._map_resizes = 0
        self._store_full = 0

    def statistics(self) -> StoreStatistics:
        """Write-transaction counters (for metrics and tests)."""
        return StoreStatistics(
            commits=self._commits,
            rollbacks=self._rollbacks,
            map_resizes=self._map_resizes,
            store_full=self._store_full,
        )

    # ---- what each store provides ------------------------------------------

    @abstractmethod
    def _read(self, fn: Callable[[StoreTxn], T]) -> T:
        """Run ``fn`` in a short read transaction."""

    @abstractmethod
    def _write(
        self, fn: Callable[[StoreTxn], T], *, freeing: bool = False, size_hint: int = 0
    ) -> T:
        """Run ``fn`` in the single write transaction and commit.

        ``freeing`` marks writes that free space (deletes, unpins, GC): they may
        use the store's reserve beyond the point where puts get ``StoreFull``.
        ``size_hint`` is about how many bytes ``fn`` writes (0: unknown).
        """

    @abstractmethod
    def open_db(self, name: bytes) -> DbHandle:
        """Open (creating if needed) a named table for an upper layer."""

    @abstractmethod
    def stat(self) -> StoreStat:
        """Counts of blocks and bytes."""

    @abstractmethod
    def close(self) -> None:
        """Release the store; idempotent."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- transactions ------------------------------------------------------

    def read(self, fn: Callable[[StoreTxn], T]) -> T:
        """Run ``fn(txn)`` in a read transaction (a consistent snapshot) and return its result.

        Keep ``fn`` short: a map resize waits for running read transactions.
        Writing from inside ``fn`` raises ``RuntimeError``.
        """
        return self._read(fn)

    def write(self, fn: Callable[[StoreTxn], T], *, size_hint: int = 0) -> T:
        """Run ``fn(txn)`` in one write transaction, commit, and return its result.

        All of ``fn``'s writes commit together or not at all. ``fn`` may be run
        again on a fresh transaction after the map grew, so it must have no
        effect outside ``txn``. ``size_hint`` (bytes ``fn`` is about to write,
        0 if unknown) lets the LMDB store grow its map before the transaction
        instead of aborting and redoing it.

        Raises:
            StoreFull: the writes do not fit under ``max_size_bytes`` (rolled back).
            Exception: whatever ``fn`` raises (rolled back).
        """
        return self._write(fn, size_hint=size_hint)

    # ---- BlockStore protocol ---------------------------------------------------

    def has(self, cid: CID) -> bool:
        """True if the block is stored (identity CIDs: always)."""
        return self._read(lambda t: t.has(cid))

    def get(self, cid: CID) -> bytes:
        """The block's bytes. Raises ``BlockNotFound``."""
        return self._read(lambda t: t.get(cid))

    def get_size(self, cid: CID) -> int:
        """The block's size in bytes. Raises ``BlockNotFound``."""
        return self._read(lambda t: t.get_size(cid))

    def read_each(
        self, cids: Sequence[CID], fn: Callable[[CID, bytes | memoryview], T]
    ) -> list[T | None]:
        """``fn(cid, block)`` for each of ``cids`` in one read transaction, in order;
        ``None`` where the block is not stored.

        ``block`` may be a view into the store, valid only while ``fn`` runs:
        ``fn`` copies or decodes what it keeps. One transaction instead of one
        per block, for readers that look at many small blocks (a directory's
        entries). Keep batches to a few thousand blocks: a map resize waits
        for the transaction. Whatever ``fn`` raises propagates.
        """
        def each(t: StoreTxn) -> list[T | None]:
            out: list[T | None] = []
            for cid in cids:
                data = t.view(cid)
                out.append(None if data is None else fn(cid, data))
            return out

        return self._read(each)

    def put_many(self, blocks: Iterable[tuple[CID, bytes | memoryview]]) -> int:
        """Store blocks in one transaction; all or none are committed.

        The caller vouches that each block hashes to its CID. Identity CIDs are
        not stored.

        Returns:
            Bytes newly written (blocks already present count 0).

        Raises:
            BlockTooLarge: a block exceeds 2 MiB.
            StoreFull: the blocks do not fit under ``max_size_bytes``.
        """
        items = list(blocks)
        nbytes = 0
        for _, data in items:
            check_block_size(len(data))
            nbytes += len(data)
        return self._write(lambda t: t.put_many(items), size_hint=nbytes)

    def delete(self, cid: CID) -> bool:
        """Remove a block; True if it was there. Pins are not consulted."""
        return self._write(lambda t: t.delete(cid), freeing=True)

    def iter_keys(self) -> Iterator[bytes]:
        """Every stored block's multihash key, in key order (read in pages)."""
        after = None
        while True:
            page = self._read(lambda t, after=after: t._keys_page(after, _PAGE))
            yield from page
            if len(page) < _PAGE:
                return
            after = page[-1]

    # ---- pins ----------------------------------------------------------------

    def pin_add(
        self,
        root: CID,
        *,
        recursive: bool,
        blocks: Iterable[CID] = (),
        name: str = "",
        metadata: Mapping[str, str] | None = None,
        owner: str = "local",
    ) -> PinRecord:
        """Pin ``root`` in one write transaction (see :meth:`StoreTxn.pin_add`).

        Raises:
            PinError: a block is missing (named in the message), or a direct pin
                over the owner's recursive pin; nothing changes.
            ValueError: a direct pin given other blocks, bad name, metadata or owner.
            StoreFull: the pin's bookkeeping does not fit.
        """
        block_list = list(blocks)
        now = self._clock()
        return self._write(
            lambda t: t.pin_add(
                root, recursive=recursive, blocks=block_list, name=name, metadata=metadata,
                now=now, owner=owner,
            )
        )

    def pin_rm(self, root: CID, *, owner: str = "local") -> PinRecord:
        """Release ``owner``'s hold of ``root`` in one write transaction
        (see :meth:`StoreTxn.pin_rm`). Raises ``NotPinned``."""
        return self._write(lambda t: t.pin_rm(root, owner=owner), freeing=True)

    def pin_presence(self, root: CID) -> tuple[int, int] | None:
        """``(present, held)`` blocks of ``root``'s pin, or None when not pinned.

        The pin is complete when both are equal. Costs one lookup per held block.
        """
        return self._read(lambda t: t.pin_presence(root))

    def pin_ls_presence(self) -> Iterator[tuple[PinRecord, int]]:
        """Every pin with how many of its ``record.blocks`` blocks are in the store,
        in root-multihash order (read in pages; one lookup per held block)."""
        after = None
        while True:

            def page_of(t: StoreTxn, after: bytes | None = after) -> list[tuple[bytes, PinRecord,
                                                                                  int]]:
                return [(k, rec, t._presence(k)[0]) for k, rec in t._pins_page(after, _PAGE)]

            page = self._read(page_of)
            for _, record, present in page:
                yield record, present
            if len(page) < _PAGE:
                return
            after = page[-1][0]

    def incomplete_pins(self) -> list[tuple[PinRecord, int]]:
        """Pins missing some of the blocks they hold: ``[(record, blocks present)]``."""
        return [(rec, n) for rec, n in self.pin_ls_presence() if n < rec.blocks]

    def pin_get(self, root: CID) -> PinRecord | None:
        """The pin of ``root``, or None."""
        return self._read(lambda t: t.pin_get(root))

    def pin_ls(self) -> Iterator[PinRecord]:
        """Every pin, in root-multihash order (read in pages)."""
        after = None
        while True:
            page = self._read(lambda t, after=after: t._pins_page(after, _PAGE))
            for _, record in page:
                yield record
            if len(page) < _PAGE:
                return
            after = page[-1][0]

    def refcount(self, cid_or_key: CID | bytes) -> int:
        """How many pins hold the block (0 if none)."""
        return self._read(lambda t: t.refcount(cid_or_key))

    def pin_counts(self) -> dict[str, int]:
        """Number of pins by mode, ``{"recursive": n, "direct": m}`` (O(1), for metrics)."""
        return self._read(lambda t: t.pin_counts())

    def recount(self) -> dict[bytes, int]:
        """Reference counts recomputed from ``pin_blocks`` (one read transaction).

        Returns:
            ``{block key: number of pins holding it}`` for keys held at least once.
        """

        def count(t: StoreTxn) -> dict[bytes, int]:
            counts: dict[bytes, int] = {}
            for _, key in t._pin_block_items():
                counts[key] = counts.get(key, 0) + 1
            return counts

        return self._read(count)

    def check_refcounts(self) -> dict[bytes, tuple[int, int]]:
        """Compare stored reference counts with a recount from ``pin_blocks``.

        Both are read in one transaction, so the comparison is consistent.

        Returns:
            ``{key: (stored, recounted)}`` for every key where they differ;
            empty when the counts are right.
        """

        def compare(t: StoreTxn) -> dict[bytes, tuple[int, int]]:
            expected: dict[bytes, int] = {}
            for _, key in t._pin_block_items():
                expected[key] = expected.get(key, 0) + 1
            stored = dict(t._refcount_items())
            return {
                key: (stored.get(key, 0), expected.get(key, 0))
                for key in stored.keys() | expected.keys()
                if stored.get(key, 0) != expected.get(key, 0)
            }

        return self._read(compare)

    # ---- GC protection, GC, verify ---------------------------------------------

    def protect(self) -> Protection:
        """A GC protection handle (a context manager); see ``pins.Protection``."""
        return self.protections.protect()

    def gc(self, *, batch: int = 1024) -> GcResult:
        """Delete every block with reference count 0 that no protection holds.

        Candidates are found in short read transactions and deleted in write
        transactions of at most ``batch`` blocks, each re-checking reference
        count and protection, so pins and adds proceed between batches. No DAG
        is walked and no lock is held across the pass. If a batch cannot
        commit for lack of space (a full map), it is split and retried down to
        single blocks.

        Args:
            batch: most blocks deleted per write transaction (>= 1).

        Returns:
            Blocks and bytes freed, and the pass's wall time in seconds.

        Raises:
            ValueError: ``batch`` < 1.
            StoreFull: even a single-block delete could not commit.
        """
        if batch < 1:
            raise ValueError(f"gc batch must be >= 1, got {batch}")
        started = time.perf_counter()
        blocks = freed = 0
        after = None
        while True:
            candidates, last = self._read(
                lambda t, after=after: t._gc_candidates(after, batch, self.protections)
            )
            if candidates:
                b, n = self._gc_delete(candidates)
                blocks += b
                freed += n
            if last is None:
                break
            after = last
        return GcResult(
            blocks_freed=blocks, bytes_freed=freed, seconds=time.perf_counter() - started
        )

    def _gc_delete(self, keys: list[bytes]) -> tuple[int, int]:
        try:
            return self._write(lambda t: t._gc_delete(keys, self.protections), freeing=True)
        except StoreFull:
            if len(keys) == 1:
                raise
            half = len(keys) // 2
            b1, n1 = self._gc_delete(keys[:half])
            b2, n2 = self._gc_delete(keys[half:])
            return b1 + b2, n1 + n2

    def verify(self, *, drop: bool = False) -> VerifyResult:
        """Re-hash every block against its multihash key.

        Reads in short transactions of at most 64 blocks / 64 MiB. With
        ``drop``, corrupt blocks are then deleted in one write transaction
        (their pins keep their reference counts: the daemon re-fetches them).

        Returns:
            Blocks checked, the corrupt blocks (as raw CIDv1s), and how many
            were dropped.
        """
        checked = 0
        corrupt: list[bytes] = []
        after = None
        while True:
            n, bad, last = self._read(lambda t, after=after: t._verify_page(after))
            checked += n
            corrupt.extend(bad)
            if last is None:
                break
            after = last
        dropped = 0
        if drop and corrupt:

            def drop_corrupt(t: StoreTxn) -> int:
                return sum(t._del_block(key) is not None for key in corrupt)

            dropped = self._write(drop_corrupt, freeing=True)
        return VerifyResult(
            checked=checked,
            corrupt=tuple(raw_cid(key) for key in corrupt),
            dropped=dropped,
        )
