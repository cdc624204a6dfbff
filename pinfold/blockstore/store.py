"""The ``BlockStore`` protocol: what every block store implements.

Implementations: ``pinfold.blockstore.memory.MemoryBlockStore`` (tests) and
``pinfold.blockstore.lmdbstore.LmdbBlockStore`` (the daemon). Both pass the
conformance suite ``tests/support/blockstore_conformance.py::check_blockstore``.

Blocks are keyed by multihash (``cid.cid_key``), so a CIDv0 and a CIDv1 of the
same bytes name one entry. The methods are synchronous and thread-safe; the
daemon calls writes from one writer task through ``trio.to_thread`` (STYLE.md 5).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from pinfold.blockstore.cid import CID


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreStat:
    """Counts for ``repo stat`` and metrics.

    Attributes:
        blocks: number of blocks stored.
        bytes: total size of their data, bytes.
        map_used_bytes: bytes of the LMDB map in use (0 for memory stores).
        map_size_bytes: current LMDB map size, bytes (0 for memory stores).
        max_size_bytes: the configured ceiling the map may grow to, bytes (0 = none).
    """

    blocks: int
    bytes: int
    map_used_bytes: int = 0
    map_size_bytes: int = 0
    max_size_bytes: int = 0


@runtime_checkable
class BlockStore(Protocol):
    """Content-addressed block storage; decides nothing about what to keep."""

    def has(self, cid: CID) -> bool:
        """True if the block is stored."""
        ...

    def get(self, cid: CID) -> bytes:
        """The block's bytes. Raises ``BlockNotFound``."""
        ...

    def get_size(self, cid: CID) -> int:
        """The block's size in bytes. Raises ``BlockNotFound``."""
        ...

    def put_many(self, blocks: Iterable[tuple[CID, bytes]]) -> int:
        """Store blocks in one transaction; all or none are committed.

        The caller vouches that each block hashes to its CID (it made the CID or
        verified it). Returns the number of bytes newly written (blocks already
        present count 0). Raises ``BlockTooLarge`` (> 2 MiB) or ``StoreFull``.
        """
        ...

    def delete(self, cid: CID) -> bool:
        """Remove a block; True if it was there. Pins are not consulted here."""
        ...

    def iter_keys(self) -> Iterator[bytes]:
        """Every stored block's multihash key, in key order."""
        ...

    def stat(self) -> StoreStat:
        """Counts of blocks and bytes."""
        ...
