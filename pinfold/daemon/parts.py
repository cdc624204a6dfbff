"""The narrow interfaces the daemon's parts are handed (STYLE.md 3).

``Node`` composes the parts; each part gets only what it uses, typed by one of
these Protocols, so no part imports ``Node`` (the import-linter contract
``acyclic_siblings`` holds without exceptions). Imports only the lower layers
and the libp2p peer ID type.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

from libp2p.peer.id import ID
from pinfold.blockstore.cid import CID
from pinfold.blockstore.lmdbstore import LmdbBlockStore
from pinfold.blockstore.pins import Protection
from pinfold.config import Config

from pinfold.daemon.home import Home

__all__ = ["Exchange", "FetchResult", "Handler", "ReloadTarget", "Supervised"]

#: An RPC method: takes the server's ``Call``, returns the final (msgpack-able) result.
Handler = Callable[[Any], Any]


class FetchResult(Protocol):
    """What a DAG fetch reports (Bitswap's ``FetchStats``)."""

    @property
    def fetched_bytes(self) -> int: ...


class Exchange(Protocol):
    """Reads blocks this node lacks from peers (``daemon/network.py``'s ``Network``).

    Blocks it fetches are verified and stored; the store is the only place
    they are read back from.
    """

    async def get_block(self, cid: CID, *, timeout_s: float | None = None,
                        wait_for_peers: bool = False) -> bytes:
        """One block from connected peers (``timeout_s``: seconds without progress,
        None: the configured default; ``wait_for_peers``: with no peer connected,
        wait for one instead of failing at once). Raises ``BlockNotFound``
        (``FetchTimeout``)."""
        ...

    async def ensure_dag(self, root: CID, *, protection: Protection | None = None,
                         peers: Iterable[ID] | None = None,
                         on_visit: Callable[[CID], None] | None = None,
                         on_fetched: Callable[[CID, int], None] | None = None,
                         timeout_s: float | None = None) -> FetchResult:
        """Fetch every missing block of ``root``'s DAG (from ``peers`` when given),
        adding each to ``protection`` as it is stored; ``on_visit`` is called once
        with each block of the DAG (identity CIDs excepted), local or fetched,
        and ``on_fetched`` with ``(cid, size in bytes)`` just before the visit of
        a block fetched from a peer; ``timeout_s`` as ``get_block``."""
        ...

    def fetch_blocks(self, cids: list[CID], *, timeout_s: float | None = None
                     ) -> AsyncIterator[Any]:
        """Want ``cids`` from peers; yields as they arrive (prefetching)."""
        ...

    def blocks_added(self, cids: list[CID]) -> None:
        """Blocks were stored outside the exchange: serve peers waiting for them."""
        ...

    def refused_wants(self) -> int:
        """Wants dropped from peers not allowed to fetch (``bitswap.serve``)."""
        ...


class ReloadTarget(Protocol):
    """What a config reload reads and changes (``service.reload_node``)."""

    config: Config

    @property
    def home(self) -> Home: ...

    def apply_config(self, config: Config) -> None: ...


class Supervised(ReloadTarget, Protocol):
    """A running node as the service supervisor sees it (``service.supervise``)."""

    @property
    def store(self) -> LmdbBlockStore | None: ...

    @property
    def socket_path(self) -> Path: ...

    def request_stop(self) -> None: ...
