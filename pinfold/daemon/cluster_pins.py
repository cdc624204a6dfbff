"""``NodePins``: the replication manager's ``LocalPins`` over this node's store.

Fetch a DAG by Bitswap (from the holders first) and pin it for the owner
"cluster", unpin, keep an origin copy, report completeness, capacity and the
bytes a fetch running now has reached (``fetching_bytes``, for ``--wait``). Every
pin goes through ``Pinner.pin`` (``daemon/pinning.py``), the node's one pin
path. Imports the blockstore, replication's types and errors, and the pinner.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

import trio
from libp2p.peer.id import ID
from pinfold.blockstore.cid import CID, parse_cid
from pinfold.blockstore.errors import BlockNotFound, NotPinned
from pinfold.blockstore.lmdbstore import LmdbBlockStore
from pinfold.replication.errors import describe
from pinfold.replication.transport import FetchFailed
from pinfold.replication.types import PinMode

from pinfold.daemon.pinning import Pinner

__all__ = ["NodePins"]


class NodePins:
    """The manager's ``LocalPins`` over a node's store, writer and Bitswap.

    Args:
        pinner: the node's pin path.
        store: the node's store (read: pin records, presence, size).
        connected: the peers connected now (fetch sources must be among them).
        capacity_bytes: the bytes this node offers the cluster, read at each call
            (``replication.capacity_bytes``, else ``blockstore.max_size_bytes``).
    """

    def __init__(self, pinner: Pinner, store: LmdbBlockStore, *,
                 connected: Callable[[], Collection[ID]],
                 capacity_bytes: Callable[[], int]) -> None:
        self.pinner = pinner
        self.store = store
        self._connected = connected
        self._capacity_bytes = capacity_bytes
        self._fetching: dict[bytes, int] = {}  # pin key -> DAG bytes reached so far

    def fetching_bytes(self, cid: bytes) -> int | None:
        """Block bytes of ``cid``'s DAG the fetch running now has reached (local blocks
        and fetched ones), None when no fetch of it runs here."""
        return self._fetching.get(cid)

    @staticmethod
    def _cid(key: bytes) -> CID:
        return parse_cid(key)

    async def pin(self, cid: bytes, *, mode: PinMode, sources: Sequence[str]) -> int:
        root = self._cid(cid)
        providers: list[ID] | None = None
        if sources:
            connected = set(self._connected())
            providers = [p for p in (ID.from_base58(s) for s in sources) if p in connected]
            providers = providers or None
        held = self.store.pin_get(root)
        if mode is PinMode.DIRECT and held is not None and \
                held.holds.get("cluster") == "recursive":
            return 0  # already held more strongly; a pin is never weakened
        fetched_size = 0

        def on_fetched(_: CID, size: int) -> None:
            nonlocal fetched_size
            fetched_size = size

        def on_visit(c: CID) -> None:
            # A fetched block's size came with it; a local one's is read.
            nonlocal fetched_size
            size, fetched_size = fetched_size, 0
            if not size:
                try:
                    size = self.store.get_size(c)
                except BlockNotFound:
                    return
            self._fetching[cid] = self._fetching.get(cid, 0) + size

        self._fetching[cid] = 0
        try:
            done = await self.pinner.pin(root, recursive=mode is PinMode.RECURSIVE,
                                         name="cluster", providers=providers, owner="cluster",
                                         on_visit=on_visit, on_fetched=on_fetched)
        except trio.Cancelled:
            raise
        except Exception as exc:
            raise FetchFailed(f"{root}: {describe(exc)}") from exc
        finally:
            self._fetching.pop(cid, None)
        return done.fetched_bytes

    async def unpin(self, cid: bytes) -> None:
        """Release the cluster's hold only: a local pin of the same CID keeps its blocks."""
        try:
            await self.pinner.unpin(self._cid(cid), owner="cluster")
        except NotPinned:
            pass

    async def stage(self, cid: bytes) -> int | None:
        """Hold a complete local DAG for the cluster (beside any local pin of it)."""
        root = self._cid(cid)
        held = self.store.pin_get(root)
        if not self.store.has(root) or (held is not None and "cluster" in held.holds):
            return None  # not here, or already held by the cluster
        try:
            done = await self.pinner.pin(root, recursive=True, name="cluster (origin copy)",
                                         fetch=False, local_only=True, owner="cluster")
        except BlockNotFound:
            return None
        return int(done.record.bytes)

    def has_pin(self, cid: bytes) -> bool:
        """True when the cluster holds ``cid`` here and every block it holds is present."""
        return self.holds_complete(cid) is True

    def holds_complete(self, cid: bytes) -> bool | None:
        """Whether the cluster's local pin of ``cid`` has all its blocks (None: no such pin)."""
        root = self._cid(cid)
        rec = self.store.pin_get(root)
        if rec is None or "cluster" not in rec.holds:
            return None
        presence = self.store.pin_presence(root)
        return presence is not None and presence[0] == presence[1]

    def capacity(self) -> tuple[int, int]:
        cap = self._capacity_bytes()
        used = self.store.stat().bytes
        return cap, max(0, cap - used)
