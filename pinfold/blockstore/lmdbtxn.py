"""``LmdbTxn``: a ``StoreTxn`` over one py-lmdb transaction, the table
primitives on LMDB's named databases (tables in ``txn``).

Imports lmdb and ``txn``."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

import lmdb

from pinfold.blockstore.txn import DbHandle, StoreTxn


class StoreTables(Protocol):
    """What a transaction takes from its ``LmdbBlockStore``: the clock and the table handles."""

    _clock: Callable[[], float]
    _db_blocks: Any
    _db_refcounts: Any
    _db_pins: Any
    _db_pin_blocks: Any
    _db_meta: Any


def u64(n: int) -> bytes:
    """``n`` as 8 bytes big-endian (refcounts and counters in ``meta``)."""
    return n.to_bytes(8, "big")


class LmdbTxn(StoreTxn):
    """A ``StoreTxn`` over one py-lmdb transaction (opened with ``buffers=True``).

    Attributes:
        raw: the ``lmdb.Transaction``, for upper layers that need cursors.
    """

    def __init__(self, store: StoreTables, raw: lmdb.Transaction, *, writable: bool) -> None:
        super().__init__(writable=writable, clock=store._clock)
        self.raw = raw
        self._blocks = store._db_blocks
        self._refcounts = store._db_refcounts
        self._pins = store._db_pins
        self._pin_blocks = store._db_pin_blocks
        self._meta = store._db_meta
        self.bytes_delta = 0

    # blocks
    def _get_block(self, key: bytes) -> memoryview | None:
        return self.raw.get(key, db=self._blocks)

    def _put_block(self, key: bytes, data: bytes | memoryview) -> bool:
        if self.raw.put(key, data, db=self._blocks, overwrite=False):
            self.bytes_delta += len(data)
            return True
        return False

    def _del_block(self, key: bytes) -> int | None:
        data = self.raw.get(key, db=self._blocks)
        if data is None:
            return None
        size = len(data)
        self.raw.delete(key, db=self._blocks)
        self.bytes_delta -= size
        return size

    def _iter_after(
        self, db: object, after: bytes | None, *, values: bool = True
    ) -> Iterator[tuple[memoryview, memoryview]] | Iterator[memoryview]:
        """Iterate ``db`` from the first key strictly after ``after`` (all if None)."""
        cursor = self.raw.cursor(db=db)
        found = cursor.first() if after is None else cursor.set_range(after)
        if found and after is not None and cursor.key() == after:
            found = cursor.next()
        return cursor.iternext(keys=True, values=values) if found else iter(())

    def _block_keys(self, after: bytes | None) -> Iterator[bytes]:
        return map(bytes, self._iter_after(self._blocks, after, values=False))

    # refcounts
    def _get_refcount(self, key: bytes) -> int:
        raw = self.raw.get(key, db=self._refcounts)
        return 0 if raw is None else int.from_bytes(raw, "big")

    def _set_refcount(self, key: bytes, count: int) -> None:
        if count < 0:
            raise ValueError(f"refcount of {key.hex()} would be negative")
        if count:
            self.raw.put(key, u64(count), db=self._refcounts)
        else:
            self.raw.delete(key, db=self._refcounts)

    def _refcount_items(self) -> Iterator[tuple[bytes, int]]:
        for key, raw in self.raw.cursor(db=self._refcounts).iternext():
            yield bytes(key), int.from_bytes(raw, "big")

    # pins
    def _get_pin(self, root_key: bytes) -> memoryview | None:
        return self.raw.get(root_key, db=self._pins)

    def _put_pin(self, root_key: bytes, record: bytes) -> None:
        self.raw.put(root_key, record, db=self._pins)

    def _del_pin(self, root_key: bytes) -> None:
        self.raw.delete(root_key, db=self._pins)
        self.raw.delete(root_key, db=self._pin_blocks)  # all duplicates

    def _pin_items(self, after: bytes | None) -> Iterator[tuple[bytes, memoryview]]:
        for key, value in self._iter_after(self._pins, after):
            yield bytes(key), value

    def _pin_block_keys(self, root_key: bytes) -> list[bytes]:
        cursor = self.raw.cursor(db=self._pin_blocks)
        if not cursor.set_key(root_key):
            return []
        return [bytes(v) for v in cursor.iternext_dup()]

    def _update_pin_blocks(
        self, root_key: bytes, add: Iterable[bytes], remove: Iterable[bytes]
    ) -> None:
        for key in remove:
            self.raw.delete(root_key, key, db=self._pin_blocks)
        for key in add:
            self.raw.put(root_key, key, db=self._pin_blocks, dupdata=True)

    def _pin_block_items(self) -> Iterator[tuple[bytes, bytes]]:
        for root_key, key in self.raw.cursor(db=self._pin_blocks).iternext():
            yield bytes(root_key), bytes(key)

    # counters
    def _get_counter(self, name: bytes) -> int:
        raw = self.raw.get(name, db=self._meta)
        return 0 if raw is None else int.from_bytes(raw, "big", signed=True)

    def _set_counter(self, name: bytes, value: int) -> None:
        self.raw.put(name, value.to_bytes(8, "big", signed=True), db=self._meta)

    # named tables
    def db_get(self, db: DbHandle, key: bytes) -> bytes | None:
        value = self.raw.get(key, db=db.native)
        return None if value is None else bytes(value)

    def db_put(self, db: DbHandle, key: bytes, value: bytes) -> None:
        self._check_writable()
        self.raw.put(key, value, db=db.native)

    def db_delete(self, db: DbHandle, key: bytes) -> bool:
        self._check_writable()
        return self.raw.delete(key, db=db.native)

    def db_items(
        self, db: DbHandle, *, start: bytes = b"", stop: bytes | None = None
    ) -> Iterator[tuple[bytes, bytes]]:
        cursor = self.raw.cursor(db=db.native)
        if not cursor.set_range(start):
            return
        for key, value in cursor.iternext():
            key = bytes(key)
            if stop is not None and key >= stop:
                return
            yield key, bytes(value)
