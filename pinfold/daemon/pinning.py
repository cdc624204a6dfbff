"""Local blocks and local pins: reading a block (store, then peers) and the one
path from "pin this" to the new pin state.

``Blocks`` reads blocks: from the store, else from the ``Exchange`` (peers)
when the node has one. ``Pinner.pin`` is the only function that pins in the
local store, for every caller (``pin add``, ``add``, ``dag import``, the
replication manager's ``LocalPins``, ``recover``): it fetches what is missing,
walks the DAG once to list its blocks, and commits the blocks' refcounts and
the pin record in one write transaction. It returns a typed ``Pinned``; RPC
shapes are built only by the RPC handlers. Imports the blockstore and
``daemon.parts``.
"""

from __future__ import annotations

import time
from functools import partial
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from libp2p.peer.id import ID
from pinfold.blockstore import dag as dagmod
from pinfold.blockstore.cid import CID, identity_data, is_identity
from pinfold.blockstore.errors import BlockNotFound
from pinfold.blockstore.lmdbstore import LmdbBlockStore
from pinfold.blockstore.pins import PinRecord
from pinfold.blockstore.writer import BatchWriter

from pinfold.daemon.parts import Exchange

__all__ = ["Blocks", "LocalPin", "Pinned", "Pinner"]


class Blocks:
    """Block reads of one node: the store first, then peers (when ``exchange`` is set)."""

    def __init__(self, store: LmdbBlockStore, exchange: Exchange | None) -> None:
        self.store = store
        self.exchange = exchange

    def has(self, cid: CID) -> bool:
        """True if the block is local (identity CIDs always are)."""
        return is_identity(cid) or self.store.has(cid)

    async def get(self, cid: CID, *, timeout_s: float | None = None,
                  wait_for_peers: bool = False) -> bytes:
        """The block's bytes, from the store or from peers (``timeout_s``: seconds
        without progress before a fetch fails; None: the configured default;
        ``wait_for_peers`` as ``Exchange.get_block``).

        Raises:
            BlockNotFound: not local and no exchange, or a ``FetchTimeout``
                subclass when no peer had it in time.
        """
        if is_identity(cid):
            return identity_data(cid)
        try:
            return self.store.get(cid)
        except BlockNotFound:
            if self.exchange is None:
                raise
        return await self.exchange.get_block(cid, timeout_s=timeout_s,
                                             wait_for_peers=wait_for_peers)

    async def get_local(self, cid: CID) -> bytes:
        """The block's bytes from the store only. Raises ``BlockNotFound``."""
        if is_identity(cid):
            return identity_data(cid)
        return self.store.get(cid)


@dataclass(frozen=True, slots=True, kw_only=True)
class Pinned:
    """The outcome of ``Pinner.pin``.

    Attributes:
        record: the pin's record after the commit (all its owners' holds).
        fetched_bytes: block bytes fetched from peers for this pin.
    """

    record: PinRecord
    fetched_bytes: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalPin:
    """A local pin as listed: its record and how many of its blocks are present.

    Attributes:
        record: the pin record.
        present: blocks of ``record.blocks`` in the store (None: not checked).
    """

    record: PinRecord
    present: int | None = None

    @property
    def state(self) -> str:
        """``incomplete`` when blocks are missing, else ``pinned``."""
        if self.present is not None and self.present < self.record.blocks:
            return "incomplete"
        return "pinned"


class Pinner:
    """Pins and unpins in the local store, for an owner ("local": the user,
    "cluster": the replication manager)."""

    def __init__(self, blocks: Blocks, writer: BatchWriter) -> None:
        self.blocks = blocks
        self.writer = writer

    async def pin(self, cid: CID, *, recursive: bool = True, name: str = "",
                  fetch: bool = True, local_only: bool = False,
                  expire_at: float | None = None, metadata: Mapping[str, object] | None = None,
                  providers: Iterable[ID] | None = None, owner: str = "local",
                  timeout_s: float | None = None,
                  on_visit: Callable[[CID], None] | None = None,
                  on_fetched: Callable[[CID, int], None] | None = None) -> Pinned:
        """Pin ``cid`` for ``owner``: its blocks' refcounts and the pin record in one
        transaction, fetching missing blocks first (from ``providers`` when given).

        The DAG is walked once: by the fetch when there is one (it reads local
        blocks and wants missing ones), else from the store; every block walked
        is protected from GC until the commit. The store never weakens a pin (``StoreTxn.pin_add``):
        a direct pin over the owner's recursive pin is refused, a recursive pin
        over a direct one upgrades it, and one owner's hold never drops blocks
        another's keeps.

        Args:
            fetch: fetch the whole DAG from peers first (recursive pins).
            local_only: never ask peers, even for one block (an origin copy).
            expire_at: unix seconds, kept in the metadata as ``expire_at``.
            timeout_s: seconds a fetch may make no progress (None: the default).
            on_visit: called with each block of the DAG as the walk reaches it
                (a transfer's progress).
            on_fetched: called with ``(cid, size in bytes)`` of each block fetched
                from a peer, just before its ``on_visit`` (local blocks get none).

        Raises:
            BlockNotFound: a block of the DAG is missing and cannot be fetched.
            PinError: a direct pin over the owner's recursive pin.
            StoreFull: no room to fetch the DAG.
        """
        store = self.blocks.store
        exchange = None if local_only else self.blocks.exchange
        get = self.blocks.get_local if local_only else partial(self.blocks.get, timeout_s=timeout_s)
        fetched = 0
        with store.protect() as protection:
            blocks: list[CID] = []

            def visit(c: CID) -> None:
                protection.add(c)
                blocks.append(c)
                if on_visit is not None:
                    on_visit(c)

            if recursive and fetch and exchange is not None:
                # The fetch walks the DAG (local blocks read, missing ones wanted) and
                # reports every block it reaches: that walk is the only one.
                stats = await exchange.ensure_dag(
                    cid, protection=protection, peers=list(providers) if providers else None,
                    on_visit=visit, on_fetched=on_fetched, timeout_s=timeout_s)
                fetched = int(stats.fetched_bytes)
            elif recursive:
                async for c in dagmod.walk(get, cid, has_block=self.blocks.has):
                    visit(c)
            else:
                await get(cid)
                blocks = []
                visit(cid)
            meta = {str(k): str(v) for k, v in (metadata or {}).items()}
            if expire_at is not None:
                meta["expire_at"] = repr(float(expire_at))
            now = time.time()
            rec = await self.writer.submit(
                lambda t: t.pin_add(cid, recursive=recursive, blocks=blocks, name=name or "",
                                    metadata=meta or None, now=now, owner=owner))
        return Pinned(record=rec, fetched_bytes=fetched)

    async def unpin(self, cid: CID, *, owner: str = "local") -> PinRecord:
        """Release ``owner``'s pin of ``cid``; blocks another owner's hold keeps stay
        held. Returns the record as it was. Raises ``NotPinned`` (none held by ``owner``)."""
        return await self.writer.submit(lambda t: t.pin_rm(cid, owner=owner))
