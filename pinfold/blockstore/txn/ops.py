"""``StoreTxn``: one store transaction. Each store implements the table
primitives (``_get_block``, ``_set_refcount``, ...); the block, pin and
refcount operations and the GC and verify pages above them are written once,
here.

Imports ``cid``, ``pins``, ``errors`` and ``tables``; no I/O."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping

from pinfold.blockstore.cid import CID, check_block_size, cid_key, identity_data, is_identity
from pinfold.blockstore.errors import BlockNotFound, NotPinned, PinError
from pinfold.blockstore.pins import PIN_OWNERS, PinRecord, ProtectionSet, held_keys, key_of, strongest
from pinfold.blockstore.txn.tables import (
    _PAGE,
    _PIN_COUNTER,
    _VERIFY_PAGE_BLOCKS,
    _VERIFY_PAGE_BYTES,
    DbHandle,
    block_matches_key,
)

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

    def view(self, cid: CID) -> bytes | memoryview | None:
        """The block's bytes without a copy (a view into the store, valid only
        inside this transaction), or ``None`` when it is not stored; identity
        CIDs give their inline data."""
        if is_identity(cid):
            return identity_data(cid)
        return self._get_block(cid_key(cid))

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
