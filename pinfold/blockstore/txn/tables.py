"""What both stores' tables share: the reserved table names, ``DbHandle`` for
named tables, ``StoreStatistics``, and key helpers (``check_db_name``,
``raw_cid``, ``block_matches_key``).

Imports ``cid``; no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from pinfold.blockstore.cid import CID, verify_block
from pinfold.blockstore.errors import BlockCorrupt, InvalidCID

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
