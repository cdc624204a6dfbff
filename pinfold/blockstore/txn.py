"""Store transactions and the store logic shared by the memory and LMDB stores.

Both stores keep the same five tables (DESIGN.md "Blockstore"):

- ``blocks``: multihash key -> block bytes;
- ``refcounts``: multihash key -> how many pins hold the block (absent = 0);
- ``pins``: root multihash key -> msgpack :class:`~.pins.PinRecord`;
- ``pin_blocks``: root key -> the distinct block keys the pin holds (a set);
- ``meta``: store bookkeeping;

plus named tables that upper layers open with ``open_db`` (the replication
layer's pinset and peer stats), so their writes share the store's single
writer and its transactions.

:class:`StoreTxn` is one transaction. Each store implements its small set of
table primitives (``_get_block``, ``_set_refcount``, ...); the block, pin and
GC operations above them are written once, here. :class:`TxnBlockStore` builds
the public store API (the ``BlockStore`` protocol of ``store.py`` plus pins,
GC protection, GC and verify) on two entry points each store provides:
``_read(fn)`` runs ``fn(txn)`` in a short read transaction and ``_write(fn)``
in the one write transaction allowed at a time.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Final, Self, TypeVar

from pinfold.blockstore.cid import CID, check_block_size, cid_key, identity_data, is_identity, verify_block
from pinfold.blockstore.errors import BlockCorrupt, BlockNotFound, InvalidCID, NotPinned, PinError, StoreFull
from pinfold.blockstore.pins import (
    PIN_OWNERS,
    GcResult,
    PinRecord,
    Protection,
    ProtectionSet,
    VerifyResult,
    held_keys,
    key_of,
    strongest,
)
from pinfold.blockstore.store import StoreStat

__all__ = [
    "RESERVED_DBS",
    "DbHandle",
    "StoreStatistics",
    "StoreTxn",
    "TxnBlockStore",
    "check_db_name",
]

T = TypeVar("T")

#: Names of the store's own tables; ``open_db`` refuses them.
RESERVED_DBS: Final = frozenset({b"blocks", b"refcounts", b"pins", b"pin_blocks", b"meta"})
_MAX_DB_NAME: Final = 64
#: Keys per read transaction when paging through a table (keeps read
#: transactions short, so a map resize never waits long for readers).
_PAGE: Final = 1024
#: Bounds of one ``verify`` read transaction: blocks and bytes re-hashed.
_VERIFY_PAGE_BLOCKS: Final = 64
_VERIFY_PAGE_BYTES: Final = 64 * 1024 * 1024
#: ``meta`` counters of pins by mode.
_PIN_COUNTER: Final = {"recursive": b"pins_recursive", "direct": b"pins_direct"}


@dataclass(frozen=True, slots=True, kw_only=True)
class DbHandle:
    """A named table opened with ``open_db``; pass it to ``txn.db_get`` and friends.

    Attributes:
        name: the table's name.
    """

    name: bytes
    native: object = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreStatistics:
    """Counters of a store's write transactions since it was opened.

    Attributes:
        commits: write transactions committed.
        rollbacks: write transactions rolled back (``fn`` raised, or ``StoreFull``).
        map_resizes: times the LMDB map grew (0 for memory stores).
        store_full: writes refused with ``StoreFull``.
    """

    commits: int
    rollbacks: int
    map_resizes: int
    store_full: int


def check_db_name(name: bytes) -> bytes:
    """Validate a name for ``open_db``.

    Raises:
        ValueError: not bytes, empty, longer than 64 bytes, or one of the
            store's own tables (``RESERVED_DBS``).
    """
    if not isinstance(name, bytes) or not name or len(name) > _MAX_DB_NAME:
        raise ValueError(f"database name must be 1..{_MAX_DB_NAME} bytes, got {name!r}")
    if name in RESERVED_DBS:
        raise ValueError(f"database name {name!r} is reserved for the blockstore")
    return name


def raw_cid(key: bytes) -> CID:
    """A CIDv1 with the raw codec naming the block stored under multihash ``key``."""
    return CID("base32", 1, "raw", key)


def block_matches_key(key: bytes, data: bytes | memoryview) -> bool:
    """True if ``data`` hashes to the multihash ``key`` (``cid.verify_block``).

    A key naming a hash function pinfold cannot compute counts as a mismatch.
    """
    try:
        verify_block(raw_cid(key), data)
    except (BlockCorrupt, InvalidCID, KeyError, ValueError):
        return False
    return True


class StoreTxn(ABC):
    """One transaction on a block store, handed to ``fn`` by ``read(fn)``/``write(fn)``.

    A transaction is only valid inside the ``fn`` it was handed to. Write
    operations raise ``RuntimeError`` in a read transaction. If ``fn`` raises,
    the whole transaction is rolled back. ``write(fn)`` may run ``fn`` again on
    a fresh transaction after growing the LMDB map, so ``fn`` must have no
    effect outside the transaction it is given.

    The block and pin operations mirror the store's methods of the same name
    (see :class:`TxnBlockStore`); ``db_get``/``db_put``/``db_delete``/``db_items``
    reach the tables opened with ``open_db``.
    """

    def __init__(self, *, writable: bool, clock: Callable[[], float] = time.time) -> None:
        self.writable = writable
        self._clock = clock

    # ---- table primitives, one set per store --------------------------------

    @abstractmethod
    def _get_block(self, key: bytes) -> bytes | memoryview | None:
        """The block's data (a view valid until the next write), or None."""

    @abstractmethod
    def _put_block(self, key: bytes, data: bytes | memoryview) -> bool:
        """Store a block unless present; True if it was written."""

    @abstractmethod
    def _del_block(self, key: bytes) -> int | None:
        """Delete a block; its size in bytes, or None if it was absent."""

    @abstractmethod
    def _block_keys(self, after: bytes | None) -> Iterator[bytes]:
        """Block keys in key order, strictly after ``after``."""

    @abstractmethod
    def _get_refcount(self, key: bytes) -> int:
        """The block's reference count (0 when absent)."""

    @abstractmethod
    def _set_refcount(self, key: bytes, count: int) -> None:
        """Set the reference count; 0 removes the row."""

    @abstractmethod
    def _refcount_items(self) -> Iterator[tuple[bytes, int]]:
        """Every (key, count) row."""

    @abstractmethod
    def _get_pin(self, root_key: bytes) -> bytes | memoryview | None:
        """The stored pin record of a root, or None."""

    @abstractmethod
    def _put_pin(self, root_key: bytes, record: bytes) -> None:
        """Store a pin record."""

    @abstractmethod
    def _del_pin(self, root_key: bytes) -> None:
        """Delete a pin record and its ``pin_blocks`` set."""

    @abstractmethod
    def _pin_items(self, after: bytes | None) -> Iterator[tuple[bytes, bytes | memoryview]]:
        """(root key, record) in key order, strictly after ``after``."""

    @abstractmethod
    def _pin_block_keys(self, root_key: bytes) -> list[bytes]:
        """The distinct block keys a pin holds."""

    @abstractmethod
    def _update_pin_blocks(
        self, root_key: bytes, add: Iterable[bytes], remove: Iterable[bytes]
    ) -> None:
        """Add and remove keys of a pin's ``pin_blocks`` set."""

    @abstractmethod
    def _pin_block_items(self) -> Iterator[tuple[bytes, bytes]]:
        """Every (root key, block key) pair of ``pin_blocks``."""

    @abstractmethod
    def _get_counter(self, name: bytes) -> int:
        """A ``meta`` counter (0 when absent)."""

    @abstractmethod
    def _set_counter(self, name: bytes, value: int) -> None:
        """Set a ``meta`` counter."""

    def _add_counter(self, name: bytes, delta: int) -> None:
        self._set_counter(name, self._get_counter(name) + delta)

    # ---- the named-table seam ----------------------------------------------

    @abstractmethod
    def db_get(self, db: DbHandle, key: bytes) -> bytes | None:
        """The value of ``key`` in a table opened with ``open_db``, or None."""

    @abstractmethod
    def db_put(self, db: DbHandle, key: bytes, value: bytes) -> None:
        """Set ``key`` to ``value`` (write transactions only)."""

    @abstractmethod
    def db_delete(self, db: DbHandle, key: bytes) -> bool:
        """Delete ``key``; True if it was there (write transactions only)."""

    @abstractmethod
    def db_items(
        self, db: DbHandle, *, start: bytes = b"", stop: bytes | None = None
    ) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) pairs with ``start <= key < stop``, in key order.

        The iterator is valid only inside this transaction.
        """

    # ---- block operations ----------------------------------------------------

    def _check_writable(self) -> None:
        if not self.writable:
            raise RuntimeError("write operation in a read-only transaction")

    def has(self, cid: CID) -> bool:
        """True if the block is stored (identity CIDs: always)."""
        if is_identity(cid):
            return True
        return self._get_block(cid_key(cid)) is not None

    def get(self, cid: CID) -> bytes:
        """The block's bytes. Raises ``BlockNotFound``."""
        if is_identity(cid):
            return identity_data(cid)
        data = self._get_block(cid_key(cid))
        if data is None:
            raise BlockNotFound(cid)
        return bytes(data)

    def get_size(self, cid: CID) -> int:
        """The block's size in bytes. Raises ``BlockNotFound``."""
        if is_identity(cid):
            return len(identity_data(cid))
        data = self._get_block(cid_key(cid))
        if data is None:
            raise BlockNotFound(cid)
        return len(data)

    def put_many(self, blocks: Iterable[tuple[CID, bytes | memoryview]]) -> int:
        """Store blocks (caller vouches each hashes to its CID); identity CIDs are skipped.

        Returns:
            Bytes newly written (blocks already present count 0).

        Raises:
            BlockTooLarge: a block exceeds 2 MiB (the transaction is rolled back).
        """
        self._check_writable()
        written = 0
        for cid, data in blocks:
            check_block_size(len(data))
            if is_identity(cid):
                continue
            if self._put_block(cid_key(cid), data):
                written += len(data)
        return written

    def delete(self, cid: CID) -> bool:
        """Remove a block; True if it was there. Pins are not consulted."""
        self._check_writable()
        if is_identity(cid):
            return False
        return self._del_block(cid_key(cid)) is not None

    # ---- pins ------------------------------------------------------------

    def refcount(self, cid_or_key: CID | bytes) -> int:
        """How many pins hold the block (0 if none)."""
        return self._get_refcount(key_of(cid_or_key))

    def pin_get(self, root: CID) -> PinRecord | None:
        """The pin of ``root`` (any CID spelling of the same multihash), or None."""
        raw = self._get_pin(cid_key(root))
        return None if raw is None else PinRecord.from_msgpack(raw)

    def pin_add(
        self,
        root: CID,
        *,
        recursive: bool,
        blocks: Iterable[CID] = (),
        name: str = "",
        metadata: Mapping[str, str] | None = None,
        now: float | None = None,
        owner: str = "local",
    ) -> PinRecord:
        """Pin ``root`` for ``owner``: record the hold and count one reference on each
        distinct block the pin holds.

        A root has one pin record holding the blocks of its strongest hold
        (``PinRecord.holds``), so a pin may be strengthened, never silently
        weakened:

        - recursive over a direct hold (any owner): upgraded; the DAG's blocks
          are counted.
        - direct over the same owner's recursive hold: refused (as Kubo's
          "already pinned recursively"); unpin first.
        - direct over another owner's recursive hold: recorded as that owner's
          hold; the DAG stays held while the recursive hold lasts.
        - the same mode again: ``name`` (when not empty) and ``metadata`` are
          updated; the blocks held do not change.

        Reference counts move by the difference of the block sets (never
        double counting); ``created_at`` keeps its first value. ``name`` and
        ``metadata`` of a ``"cluster"`` hold are recorded only while no local
        hold names the pin.

        Args:
            root: the root CID.
            recursive: True: hold ``root`` and ``blocks`` (the DAG); False: hold
                the root block only.
            blocks: the DAG's block CIDs from the caller's walk (the root may be
                included; duplicates and identity CIDs are ignored).
            name: label, at most 1024 characters ("" keeps the current name).
            metadata: str -> str labels.
            now: creation time, unix seconds (default: the store's clock).
            owner: who holds the pin, one of ``PIN_OWNERS``.

        Returns:
            The stored record.

        Raises:
            PinError: a block the pin must hold is not in the store (the first
                one missing is named), or a direct pin over the same owner's
                recursive pin; the transaction is rolled back.
            ValueError: a direct pin given other blocks, a bad name, metadata or owner.
        """
        self._check_writable()
        if owner not in PIN_OWNERS:
            raise ValueError(f"pin owner must be one of {', '.join(PIN_OWNERS)}, got {owner!r}")
        mode = "recursive" if recursive else "direct"
        held = held_keys(root, recursive=recursive, blocks=blocks)
        root_key = cid_key(root)
        old_raw = self._get_pin(root_key)
        old = None if old_raw is None else PinRecord.from_msgpack(old_raw)
        holds = dict(old.holds) if old else {}
        if holds.get(owner) == "recursive" and not recursive:
            raise PinError(f"{root} is already pinned recursively; unpin it first to pin "
                           "only its root block")
        holds[owner] = mode
        effective = strongest(holds.values())
        old_keys = set(self._pin_block_keys(root_key)) if old else set()
        if recursive or effective == "direct":
            new_keys = [key for key, _ in held]
            for key, cid in held:
                if self._get_block(key) is None:
                    raise PinError(f"cannot pin {root}: block {cid} is not in the store")
        else:  # a direct hold beside a recursive one: the DAG stays as held
            new_keys = list(old_keys)
        if old is not None and set(new_keys) == old_keys:
            total = old.bytes  # the size when pinned, even if a block went missing since
        else:
            total = sum(len(self._get_block(key) or b"") for key in new_keys)
        keep_label = old is not None and owner != "local" and "local" in holds
        record = PinRecord(
            cid=old.cid if keep_label else root,
            mode=effective,
            name=old.name if keep_label or (old is not None and not name) else name,
            blocks=len(new_keys),
            bytes=total,
            created_at=old.created_at if old else (self._clock() if now is None else now),
            metadata=old.metadata if keep_label else metadata,
            holds=holds,
        )
        self._move_refs(root_key, old_keys, set(new_keys))
        self._put_pin(root_key, record.to_msgpack())
        self._count_mode(old, record)
        return record

    def _move_refs(self, root_key: bytes, old_keys: set[bytes], new_keys: set[bytes], *,
                   keep_set: bool = True) -> None:
        """Count a reference on keys entering the pin's set and drop one on keys leaving
        it; with ``keep_set=False`` the ``pin_blocks`` set is left to ``_del_pin``."""
        added, removed = new_keys - old_keys, old_keys - new_keys
        for key in added:
            self._set_refcount(key, self._get_refcount(key) + 1)
        for key in removed:
            count = self._get_refcount(key)
            if count <= 0:
                raise PinError(f"refcount underflow on block {key.hex()} of pin {root_key.hex()}")
            self._set_refcount(key, count - 1)
        if keep_set and (added or removed):
            self._update_pin_blocks(root_key, sorted(added), sorted(removed))

    def _count_mode(self, old: PinRecord | None, new: PinRecord | None) -> None:
        """Keep the pins-by-mode counters right across one record change."""
        if old is not None and (new is None or old.mode != new.mode):
            self._add_counter(_PIN_COUNTER[old.mode], -1)
        if new is not None and (old is None or old.mode != new.mode):
            self._add_counter(_PIN_COUNTER[new.mode], 1)

    def pin_rm(self, root: CID, *, owner: str = "local") -> PinRecord:
        """Release ``owner``'s hold of ``root``.

        When no other owner holds it, the record goes and one reference on each
        block it held is dropped. When another owner's hold remains, the pin
        keeps the blocks of the strongest remaining hold: releasing a recursive
        hold beside a direct one drops the references of every block but the
        root; releasing a direct hold beside a recursive one drops none.

        Returns:
            The record as it was before the release.

        Raises:
            NotPinned: ``root`` has no pin, or none held by ``owner`` (the
                message says who holds it).
            ValueError: an unknown owner.
        """
        self._check_writable()
        if owner not in PIN_OWNERS:
            raise ValueError(f"pin owner must be one of {', '.join(PIN_OWNERS)}, got {owner!r}")
        root_key = cid_key(root)
        raw = self._get_pin(root_key)
        if raw is None:
            raise NotPinned(f"not pinned: {root}")
        record = PinRecord.from_msgpack(raw)
        if owner not in record.holds:
            others = " and ".join(sorted(record.holds))
            raise NotPinned(f"{root} is not pinned {'here' if owner == 'local' else 'by ' + owner}"
                            f" (it is held by the {others} pin only)")
        holds = {o: m for o, m in record.holds.items() if o != owner}
        old_keys = set(self._pin_block_keys(root_key))
        if not holds:
            self._move_refs(root_key, old_keys, set(), keep_set=False)
            self._del_pin(root_key)
            self._count_mode(record, None)
            return record
        effective = strongest(holds.values())
        new_keys = old_keys if effective == "recursive" else old_keys & {root_key}
        self._move_refs(root_key, old_keys, new_keys)
        size = record.bytes if new_keys == old_keys else sum(
            len(self._get_block(key) or b"") for key in new_keys)
        left = PinRecord(
            cid=record.cid, mode=effective, name=record.name, blocks=len(new_keys), bytes=size,
            created_at=record.created_at, metadata=record.metadata, holds=holds)
        self._put_pin(root_key, left.to_msgpack())
        self._count_mode(record, left)
        return record

    def pin_presence(self, root: CID) -> tuple[int, int] | None:
        """How many of the blocks ``root``'s pin holds are in the store.

        Returns:
            ``(present, held)`` block counts (equal when the pin is complete),
            or None when ``root`` has no pin.
        """
        root_key = cid_key(root)
        if self._get_pin(root_key) is None:
            return None
        return self._presence(root_key)

    def _presence(self, root_key: bytes) -> tuple[int, int]:
        keys = self._pin_block_keys(root_key)
        return sum(self._get_block(k) is not None for k in keys), len(keys)

    def pin_counts(self) -> dict[str, int]:
        """Number of pins by mode: ``{"recursive": n, "direct": m}``."""
        return {mode: self._get_counter(name) for mode, name in _PIN_COUNTER.items()}

    # ---- pages for the store's iterators, GC and verify ---------------------

    def _keys_page(self, after: bytes | None, limit: int) -> list[bytes]:
        out = []
        for key in self._block_keys(after):
            out.append(key)
            if len(out) >= limit:
                break
        return out

    def _pins_page(self, after: bytes | None, limit: int) -> list[tuple[bytes, PinRecord]]:
        out = []
        for root_key, raw in self._pin_items(after):
            out.append((root_key, PinRecord.from_msgpack(raw)))
            if len(out) >= limit:
                break
        return out

    def _gc_candidates(
        self, after: bytes | None, limit: int, protections: ProtectionSet
    ) -> tuple[list[bytes], bytes | None]:
        """Up to ``limit`` unreferenced, unprotected keys among the next ``_PAGE`` scanned.

        Returns ``(candidates, last key scanned)``; the last key is None when
        the scan reached the end of the table.
        """
        candidates: list[bytes] = []
        last = None
        for scanned, key in enumerate(self._block_keys(after), start=1):
            last = key
            if self._get_refcount(key) == 0 and not protections.is_protected(key):
                candidates.append(key)
            if len(candidates) >= limit or scanned >= max(limit, _PAGE):
                return candidates, last
        return candidates, None

    def _gc_delete(self, keys: Iterable[bytes], protections: ProtectionSet) -> tuple[int, int]:
        """Delete the keys still unreferenced and unprotected; (blocks, bytes) freed."""
        self._check_writable()
        blocks = freed = 0
        for key in keys:
            if self._get_refcount(key) == 0 and not protections.is_protected(key):
                size = self._del_block(key)
                if size is not None:
                    blocks += 1
                    freed += size
        return blocks, freed

    def _verify_page(self, after: bytes | None) -> tuple[int, list[bytes], bytes | None]:
        """Re-hash the next blocks; (checked, corrupt keys, last key or None at the end)."""
        checked = nbytes = 0
        corrupt: list[bytes] = []
        for key in self._block_keys(after):
            data = self._get_block(key)
            if data is None:  # pragma: no cover - keys come from this transaction
                continue
            checked += 1
            nbytes += len(data)
            if not block_matches_key(key, data):
                corrupt.append(key)
            if checked >= _VERIFY_PAGE_BLOCKS or nbytes >= _VERIFY_PAGE_BYTES:
                return checked, corrupt, key
        return checked, corrupt, None


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
