"""``MemoryBlockStore``: the in-memory block store for tests.

Same API and semantics as ``LmdbBlockStore`` (both pass
``tests/support/blockstore_conformance.py``): blocks keyed by multihash, pins with
per-block reference counts, GC protection, GC, verify, named tables and
``read(fn)``/``write(fn)`` transactions, so the batch writer and upper layers
can run on it. Differences: nothing is persisted, and a running write
transaction makes readers on other threads wait (one lock guards all tables;
writes are applied in place and undone from a log if ``fn`` raises).
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from pinfold.blockstore.errors import StoreClosed, StoreFull
from pinfold.blockstore.store import StoreStat
from pinfold.blockstore.txn import DbHandle, StoreTxn, TxnBlockStore, check_db_name

__all__ = ["MemoryBlockStore"]

T = TypeVar("T")
_MISSING = object()


class _MemoryTxn(StoreTxn):
    """A transaction on the store's dicts; writes log their undo step."""

    def __init__(self, store: MemoryBlockStore, *, writable: bool) -> None:
        super().__init__(writable=writable, clock=store._clock)
        self._s = store
        self._undo: list[Callable[[], None]] = []

    def _set(self, table: dict, key: bytes, value: object) -> None:
        old = table.get(key, _MISSING)
        self._undo.append(lambda: _restore(table, key, old))
        if value is _MISSING:
            table.pop(key, None)
        else:
            table[key] = value

    def rollback(self) -> None:
        while self._undo:
            self._undo.pop()()

    # blocks
    def _get_block(self, key: bytes) -> bytes | None:
        return self._s._blocks.get(key)

    def _put_block(self, key: bytes, data: bytes | memoryview) -> bool:
        s = self._s
        if key in s._blocks:
            return False
        if s._max_size is not None and s._bytes + len(data) > s._max_size:
            raise StoreFull(
                f"memory blockstore is full: {s._bytes} + {len(data)} bytes "
                f"exceeds max_size_bytes={s._max_size}"
            )
        self._set(s._blocks, key, bytes(data))
        self._add_bytes(len(data))
        return True

    def _del_block(self, key: bytes) -> int | None:
        data = self._s._blocks.get(key)
        if data is None:
            return None
        self._set(self._s._blocks, key, _MISSING)
        self._add_bytes(-len(data))
        return len(data)

    def _add_bytes(self, delta: int) -> None:
        s = self._s
        s._bytes += delta
        self._undo.append(lambda: setattr(s, "_bytes", s._bytes - delta))

    def _block_keys(self, after: bytes | None) -> Iterator[bytes]:
        return _keys_after(self._s._blocks, after)

    # refcounts
    def _get_refcount(self, key: bytes) -> int:
        return self._s._refcounts.get(key, 0)

    def _set_refcount(self, key: bytes, count: int) -> None:
        if count < 0:
            raise ValueError(f"refcount of {key.hex()} would be negative")
        self._set(self._s._refcounts, key, count if count else _MISSING)

    def _refcount_items(self) -> Iterator[tuple[bytes, int]]:
        return iter(list(self._s._refcounts.items()))

    # pins
    def _get_pin(self, root_key: bytes) -> bytes | None:
        return self._s._pins.get(root_key)

    def _put_pin(self, root_key: bytes, record: bytes) -> None:
        self._set(self._s._pins, root_key, record)

    def _del_pin(self, root_key: bytes) -> None:
        self._set(self._s._pins, root_key, _MISSING)
        self._set(self._s._pin_blocks, root_key, _MISSING)

    def _pin_items(self, after: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        pins = self._s._pins
        return ((k, pins[k]) for k in _keys_after(pins, after))

    def _pin_block_keys(self, root_key: bytes) -> list[bytes]:
        return sorted(self._s._pin_blocks.get(root_key, ()))

    def _update_pin_blocks(
        self, root_key: bytes, add: Iterable[bytes], remove: Iterable[bytes]
    ) -> None:
        held = set(self._s._pin_blocks.get(root_key, ()))
        held.difference_update(remove)
        held.update(add)
        self._set(self._s._pin_blocks, root_key, frozenset(held) if held else _MISSING)

    def _pin_block_items(self) -> Iterator[tuple[bytes, bytes]]:
        for root_key, keys in list(self._s._pin_blocks.items()):
            for key in sorted(keys):
                yield root_key, key

    # counters
    def _get_counter(self, name: bytes) -> int:
        return self._s._counters.get(name, 0)

    def _set_counter(self, name: bytes, value: int) -> None:
        self._set(self._s._counters, name, value)

    # named tables
    def _table(self, db: DbHandle) -> dict[bytes, bytes]:
        table = self._s._dbs.get(db.name)
        if table is None:
            raise ValueError(f"database {db.name!r} is not open in this store")
        return table

    def db_get(self, db: DbHandle, key: bytes) -> bytes | None:
        return self._table(db).get(key)

    def db_put(self, db: DbHandle, key: bytes, value: bytes) -> None:
        self._check_writable()
        self._set(self._table(db), bytes(key), bytes(value))

    def db_delete(self, db: DbHandle, key: bytes) -> bool:
        self._check_writable()
        table = self._table(db)
        if key not in table:
            return False
        self._set(table, key, _MISSING)
        return True

    def db_items(
        self, db: DbHandle, *, start: bytes = b"", stop: bytes | None = None
    ) -> Iterator[tuple[bytes, bytes]]:
        table = self._table(db)
        for key in sorted(table):
            if key < start:
                continue
            if stop is not None and key >= stop:
                return
            yield key, table[key]


def _restore(table: dict, key: bytes, old: object) -> None:
    if old is _MISSING:
        table.pop(key, None)
    else:
        table[key] = old


def _keys_after(table: dict[bytes, object], after: bytes | None) -> Iterator[bytes]:
    keys = sorted(table)
    start = 0 if after is None else bisect.bisect_right(keys, after)
    return iter(keys[start:])


class MemoryBlockStore(TxnBlockStore):
    """A block store in dicts, for tests.

    Args:
        max_size_bytes: total block bytes allowed before puts raise
            ``StoreFull`` (None = unbounded).
        clock: source of pin ``created_at`` times, unix seconds.
    """

    def __init__(
        self, *, max_size_bytes: int | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        super().__init__(clock=clock)
        if max_size_bytes is not None and max_size_bytes < 0:
            raise ValueError(f"max_size_bytes must be >= 0, got {max_size_bytes}")
        self._max_size = max_size_bytes
        self._lock = threading.RLock()
        self._current: _MemoryTxn | None = None  # the running write transaction
        self._closed = False
        self._blocks: dict[bytes, bytes] = {}
        self._bytes = 0
        self._refcounts: dict[bytes, int] = {}
        self._pins: dict[bytes, bytes] = {}
        self._pin_blocks: dict[bytes, frozenset[bytes]] = {}
        self._dbs: dict[bytes, dict[bytes, bytes]] = {}
        self._counters: dict[bytes, int] = {}

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed("the memory blockstore is closed")

    def _read(self, fn: Callable[[StoreTxn], T]) -> T:
        with self._lock:
            self._check_open()
            if self._current is not None:  # inside write(fn) on this thread: join it
                return fn(self._current)
            return fn(_MemoryTxn(self, writable=False))

    def _write(
        self, fn: Callable[[StoreTxn], T], *, freeing: bool = False, size_hint: int = 0
    ) -> T:
        with self._lock:
            self._check_open()
            if self._current is not None:  # inside write(fn) on this thread: join it
                return fn(self._current)
            txn = self._current = _MemoryTxn(self, writable=True)
            try:
                result = fn(txn)
            except BaseException as exc:
                txn.rollback()
                self._rollbacks += 1
                if isinstance(exc, StoreFull):
                    self._store_full += 1
                raise
            finally:
                txn.writable = False
                self._current = None
            self._commits += 1
            return result

    def open_db(self, name: bytes) -> DbHandle:
        """Open (creating if needed) the named table ``name`` (see ``check_db_name``)."""
        check_db_name(name)
        with self._lock:
            self._check_open()
            self._dbs.setdefault(name, {})
        return DbHandle(name=name)

    def stat(self) -> StoreStat:
        """Counts of blocks and bytes; ``max_size_bytes`` is 0 when unbounded."""
        with self._lock:
            self._check_open()
            return StoreStat(
                blocks=len(self._blocks), bytes=self._bytes, max_size_bytes=self._max_size or 0
            )

    def close(self) -> None:
        """Mark the store closed; later calls raise ``StoreClosed``. Idempotent."""
        with self._lock:
            self._closed = True
