"""The replication layer's tables in the blockstore's LMDB environment (DESIGN.md "Blockstore").

Four named tables, opened with ``store.open_db`` so their writes go through
the store's single writer and commit in its transactions:

- ``repl_pinset``: pin key (binary CIDv1) -> ``pinset.encode_entry`` (pins and
  tombstones; compacted tombstones are deleted);
- ``repl_local``: pin key -> this node's own record of the pin,
  msgpack ``[state code, attempts, error, staged, retry_at]`` (``LocalRecord``);
- ``repl_holdings``: owner peer ID + ``0x00`` + pin key -> one state-code byte
  (other peers' states as last applied);
- ``repl_meta``: ``hlc`` (the clock's last timestamp), ``watermark``,
  ``epoch``/``version`` (this node's state log), ``health`` (the peer stats:
  ``HealthView.to_bytes``, with every peer's availability estimate p_i), and
  ``known:<owner>`` -> ``[epoch, version]`` applied of each owner's log.

``load`` reads everything back (in pages of short read transactions);
``commit`` writes a ``Pending`` batch in one write transaction.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import msgpack
from pinfold.blockstore.txn import DbHandle, StoreTxn, TxnBlockStore

from pinfold.replication.errors import PinsetDecodeError
from pinfold.replication.pinset import Entry, decode_entry, encode_entry, msgpack_unpack
from pinfold.replication.states import CODE_STATES, STATE_CODES
from pinfold.replication.types import PinState

__all__ = ["Loaded", "LocalRecord", "Pending", "ReplicationDB"]

T = TypeVar("T")
Submit = Callable[[Callable[[StoreTxn], Any]], Awaitable[Any]]

_PAGE: Final = 20_000
_SEP: Final = b"\x00"


@dataclass(slots=True)
class LocalRecord:
    """This node's bookkeeping of one pin, beyond its state.

    Attributes:
        attempts: failed pin attempts in a row (reset when pinned).
        error: the last failure, for ``pin ls``/``pin status``.
        staged: an origin copy is pinned locally (the DAG was added here) until
            enough holders have it.
        retry_at: wall-clock seconds after which a pin_error may be retried.
    """

    attempts: int = 0
    error: str = ""
    staged: bool = False
    retry_at: float | None = None

    def empty(self) -> bool:
        """True when the record holds nothing worth keeping."""
        return not (self.attempts or self.error or self.staged)


@dataclass(slots=True)
class Pending:
    """Writes gathered between two commits (the newest value of a key wins).

    Attributes:
        pins: pin key -> entry to store, or None to delete the row.
        local: pin key -> ``(state, record)``, or None to delete.
        holdings: ``(owner, pin key)`` -> state (``remote`` deletes the row).
        resets: owners whose rows are all deleted before ``holdings`` is written.
        meta: key -> value, or None to delete.
    """

    pins: dict[bytes, Entry | None] = field(default_factory=dict)
    local: dict[bytes, tuple[PinState, LocalRecord] | None] = field(default_factory=dict)
    holdings: dict[tuple[str, bytes], PinState] = field(default_factory=dict)
    resets: set[str] = field(default_factory=set)
    meta: dict[bytes, bytes | None] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.pins or self.local or self.holdings or self.resets or self.meta)

    def reset_owner(self, owner: str) -> None:
        """Forget every stored state of ``owner`` (a reset from its log)."""
        self.resets.add(owner)
        for key in [k for k in self.holdings if k[0] == owner]:
            del self.holdings[key]

    def absorb(self, newer: Pending) -> None:
        """Merge ``newer`` (gathered after this one) into this batch."""
        self.pins.update(newer.pins)
        self.local.update(newer.local)
        for owner in newer.resets:
            self.reset_owner(owner)
        self.holdings.update(newer.holdings)
        self.meta.update(newer.meta)


@dataclass(slots=True)
class Loaded:
    """Everything ``ReplicationDB.load`` found (empty for a new node)."""

    entries: list[Entry] = field(default_factory=list)
    local: dict[bytes, tuple[PinState, LocalRecord]] = field(default_factory=dict)
    holdings: dict[str, dict[bytes, PinState]] = field(default_factory=dict)
    known: dict[str, tuple[int, int]] = field(default_factory=dict)
    meta: dict[bytes, bytes] = field(default_factory=dict)

    def meta_int(self, key: bytes, default: int = 0) -> int:
        """A meta value stored as a big-endian integer."""
        v = self.meta.get(key)
        return default if v is None else int.from_bytes(v, "big")


def encode_local(state: PinState, rec: LocalRecord) -> bytes:
    """A ``repl_local`` row value."""
    return msgpack.packb([STATE_CODES[state], rec.attempts, rec.error, rec.staged, rec.retry_at],
                         use_bin_type=True)


def decode_local(data: bytes) -> tuple[PinState, LocalRecord]:
    """Decode a ``repl_local`` row value.

    Raises:
        PinsetDecodeError: malformed.
    """
    obj = msgpack_unpack(data, "local pin")
    if type(obj) is not list or len(obj) != 5:
        raise PinsetDecodeError("local pin: expected [state, attempts, error, staged, retry_at]")
    code, attempts, error, staged, retry_at = obj
    st = CODE_STATES.get(code) if type(code) is int else None
    if (st is None or type(attempts) is not int or attempts < 0 or type(error) is not str
            or type(staged) is not bool
            or not (retry_at is None or type(retry_at) in (int, float))):
        raise PinsetDecodeError(f"local pin: bad fields {obj!r}")
    return st, LocalRecord(attempts=attempts, error=error, staged=staged,
                           retry_at=None if retry_at is None else float(retry_at))


def int_bytes(n: int) -> bytes:
    """A non-negative integer as 8 big-endian bytes (meta values)."""
    return n.to_bytes(8, "big")


class ReplicationDB:
    """The replication tables of one store.

    Args:
        store: the node's block store (LMDB or memory); tables are opened here,
            so build this before any transaction runs.
        submit: runs ``fn(txn)`` in the store's single writer and returns its
            result (``BatchWriter.submit``; tests may wrap ``store.write``).
    """

    def __init__(self, store: TxnBlockStore, submit: Submit) -> None:
        self._store = store
        self._submit = submit
        self.pins: DbHandle = store.open_db(b"repl_pinset")
        self.local: DbHandle = store.open_db(b"repl_local")
        self.holdings: DbHandle = store.open_db(b"repl_holdings")
        self.meta: DbHandle = store.open_db(b"repl_meta")
        self.commits = 0

    def _pages(self, db: DbHandle) -> list[tuple[bytes, bytes]]:
        out: list[tuple[bytes, bytes]] = []
        start = b""
        while True:
            def page(t: StoreTxn, start: bytes = start) -> list[tuple[bytes, bytes]]:
                rows = []
                for k, v in t.db_items(db, start=start):
                    rows.append((bytes(k), bytes(v)))
                    if len(rows) >= _PAGE:
                        break
                return rows

            rows = self._store.read(page)
            out.extend(rows)
            if len(rows) < _PAGE:
                return out
            start = rows[-1][0] + b"\x00"

    def load(self) -> Loaded:
        """Read every table (blocking: call from a worker thread at start).

        Raises:
            PinsetDecodeError: a row does not decode (the message names the table).
        """
        out = Loaded()
        for k, v in self._pages(self.pins):
            try:
                out.entries.append(decode_entry(v))
            except PinsetDecodeError as exc:
                raise PinsetDecodeError(f"repl_pinset row {k.hex()}: {exc}") from exc
        for k, v in self._pages(self.local):
            out.local[k] = decode_local(v)
        for k, v in self._pages(self.holdings):
            owner, sep, cid = k.partition(_SEP)
            st = CODE_STATES.get(v[0]) if len(v) == 1 else None
            if not sep or st is None:
                raise PinsetDecodeError(f"repl_holdings row {k.hex()}: malformed")
            out.holdings.setdefault(owner.decode(), {})[cid] = st
        for k, v in self._pages(self.meta):
            if k.startswith(b"known:"):
                obj = msgpack_unpack(v, "known")
                if type(obj) is not list or len(obj) != 2:
                    raise PinsetDecodeError(f"repl_meta {k!r}: expected [epoch, version]")
                out.known[k[6:].decode()] = (int(obj[0]), int(obj[1]))
            else:
                out.meta[k] = v
        return out

    async def commit(self, p: Pending) -> None:
        """Write a batch in one transaction.

        Raises:
            StoreFull: no room (nothing of the batch is written).

        Cancellation: the batch may or may not commit (``BatchWriter.submit``).
        """
        pins, local, holdings, resets, meta = p.pins, p.local, p.holdings, p.resets, p.meta

        def write(t: StoreTxn) -> None:
            for owner in resets:
                prefix = owner.encode() + _SEP
                stop = owner.encode() + b"\x01"
                doomed = [bytes(k) for k, _ in t.db_items(self.holdings, start=prefix, stop=stop)]
                for k in doomed:
                    t.db_delete(self.holdings, k)
            for cid, e in pins.items():
                if e is None:
                    t.db_delete(self.pins, cid)
                else:
                    t.db_put(self.pins, cid, encode_entry(e))
            for cid, item in local.items():
                if item is None:
                    t.db_delete(self.local, cid)
                else:
                    t.db_put(self.local, cid, encode_local(*item))
            for (owner, cid), st in holdings.items():
                key = owner.encode() + _SEP + cid
                if st is PinState.REMOTE:
                    t.db_delete(self.holdings, key)
                else:
                    t.db_put(self.holdings, key, bytes((STATE_CODES[st],)))
            for k, v in meta.items():
                if v is None:
                    t.db_delete(self.meta, k)
                else:
                    t.db_put(self.meta, k, v)

        await self._submit(write)
        self.commits += 1


def known_key(owner: str) -> bytes:
    """The ``repl_meta`` key of an owner's applied ``(epoch, version)``."""
    return b"known:" + owner.encode()


def known_value(epoch: int, version: int) -> bytes:
    """The ``repl_meta`` value of an owner's applied ``(epoch, version)``."""
    return msgpack.packb([epoch, version])
