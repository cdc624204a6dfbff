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

Parts: ``tables`` (names, handles, key helpers), ``ops`` (``StoreTxn``) and
``api`` (``TxnBlockStore``); this module re-exports their names.
"""

from __future__ import annotations

from pinfold.blockstore.txn.api import TxnBlockStore
from pinfold.blockstore.txn.ops import StoreTxn
from pinfold.blockstore.txn.tables import (
    RESERVED_DBS,
    DbHandle,
    StoreStatistics,
    block_matches_key,
    check_db_name,
    raw_cid,
)

__all__ = [
    "RESERVED_DBS",
    "DbHandle",
    "StoreStatistics",
    "StoreTxn",
    "TxnBlockStore",
    "block_matches_key",
    "check_db_name",
    "raw_cid",
]
