"""``ApiNode``: the narrow interface the RPC handlers (``api.py``) use of the
node (``node.py``'s ``Node`` provides it), so ``api`` never imports ``node``.

Imports the blockstore types, config, metrics and the node parts' types.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from pinfold.blockstore.cid import CID
from pinfold.blockstore.lmdbstore import LmdbBlockStore
from pinfold.blockstore.pins import PinRecord, Protection
from pinfold.blockstore.writer import BatchWriter
from pinfold.config import Config
from pinfold.daemon.cluster import ClusterPin
from pinfold.daemon.metrics import Metrics
from pinfold.daemon.parts import Handler
from pinfold.daemon.pinning import LocalPin, Pinned

__all__ = ["ApiNode"]


class ApiNode(Protocol):
    """What the RPC methods use of the node (``daemon/node.py``'s ``Node``)."""

    config: Config
    metrics: Metrics

    @property
    def store(self) -> LmdbBlockStore: ...

    @property
    def writer(self) -> BatchWriter: ...

    def identity_info(self) -> dict[str, Any]: ...

    def request_stop(self) -> None: ...

    def extra_handlers(self) -> dict[str, Handler]: ...

    def has_block(self, cid: CID) -> bool: ...

    def blocks_added(self, cids: list[CID]) -> None: ...

    async def get_block(self, cid: CID, *, timeout_s: float | None = None,
                        wait_for_peers: bool = False) -> bytes: ...

    def received(self) -> tuple[int, int, dict[str, int]]: ...

    def sent_by_peer(self) -> dict[str, int]: ...

    def prefetcher(self, *, timeout_s: float | None = None
                   ) -> AbstractAsyncContextManager[Callable[[list[CID]], list[CID]]]: ...

    def read_local(self, cids: Sequence[CID],
                   fn: Callable[[CID, bytes | memoryview], Any]) -> list[Any]: ...

    async def ensure_dag(self, root: CID, *, protection: Protection | None = None) -> None: ...

    def check_pin_request(self, *, rmin: int | None = None, rmax: int | None = None,
                          availability: float | None = None, **_: object) -> None: ...

    async def pin(self, cid: CID, *, recursive: bool = True, name: str = "",
                  fetch: bool = True, rmin: int | None = None, rmax: int | None = None,
                  availability: float | None = None, expire_at: float | None = None,
                  metadata: dict[str, str] | None = None, timeout_s: float | None = None,
                  on_visit: Callable[[CID], None] | None = None,
                  on_fetched: Callable[[CID, int], None] | None = None
                  ) -> Pinned | ClusterPin: ...

    async def unpin(self, cid: CID) -> PinRecord | bytes: ...

    def pin_list(self, state: str | None) -> AsyncIterator[LocalPin | ClusterPin]: ...

    async def pin_status(self, cid: CID) -> dict[str, Any]: ...

    async def wait_pin_change(self, timeout_s: float) -> None: ...

    async def repo_stat(self) -> dict[str, Any]: ...

    async def gc(self) -> dict[str, Any]: ...

    async def verify(self, *, heal: bool = False) -> dict[str, Any]: ...
