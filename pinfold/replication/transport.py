"""How the replication manager reaches the network and the local store (STYLE.md 3).

The manager (``manager.py``) decides; it reaches everything outside itself
through two small protocols, so it never imports libp2p, trio's networking or
LMDB:

- ``Transport``: the cluster's channels - gossip to every cluster peer
  (``publish``; inbound messages arrive at ``ClusterHandler.on_message``) and
  request/response sessions with one peer (``open_session``; the peer's
  ``ClusterHandler.answer`` replies) for ``/pinfold/sync/1``. The transport
  authenticates: the ``peer_id`` it passes with a message is the verified
  author, and it drops messages from peers outside ``cluster.trusted_peers``.
  The real one is ``pinfold.daemon.cluster_transport.LibP2PTransport``.
- ``LocalPins``: the local node's pins - fetch a DAG (by Bitswap, from the
  given holders) and pin it with block refcounts, unpin, keep an origin copy.
  The real one is ``pinfold.daemon.cluster_pins.NodePins``.

``MemoryHub``/``MemoryTransport`` and ``MemoryPins`` are the in-memory
implementations the tests drive (links can be cut; fetches take simulated
time, fail on demand and record their concurrency).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import trio

from pinfold.replication.errors import ReplicationError
from pinfold.replication.types import PinMode

__all__ = [
    "ClusterHandler",
    "FetchFailed",
    "LocalPins",
    "MemoryHub",
    "MemoryPins",
    "MemoryTransport",
    "SyncSession",
    "Transport",
    "TransportError",
]


class TransportError(ReplicationError):
    """A peer could not be reached, or a session with it broke (timeout, reset, bad frame)."""

    code = "transport_error"


class FetchFailed(ReplicationError):
    """A DAG could not be fetched or pinned locally (``LocalPins.pin``); the message says why."""

    code = "fetch_failed"


class ClusterHandler(Protocol):
    """What the transport calls on the manager. All calls are synchronous and quick."""

    def on_message(self, peer_id: str, kind: str, body: bytes) -> None:
        """A gossip message of ``kind`` from its verified author ``peer_id``."""
        ...

    def on_peer(self, peer_id: str, connected: bool) -> None:
        """A peer connected, or lost its last connection."""
        ...

    def answer(self, peer_id: str, request: bytes) -> bytes:
        """The response to one ``/pinfold/sync/1`` request from ``peer_id``.

        Raises:
            PinsetDecodeError, InvalidPin: a malformed request (the transport
                resets the session).
        """
        ...


class SyncSession(Protocol):
    """One request/response session with one peer."""

    async def ask(self, request: bytes) -> bytes:
        """Send a request, return the response.

        Raises:
            TransportError: the peer went away, or did not answer in time.
        """
        ...

    async def aclose(self) -> None:
        """End the session (idempotent)."""
        ...


class Transport(Protocol):
    """The cluster's network, as the manager sees it."""

    @property
    def peer_id(self) -> str:
        """This node's peer ID."""
        ...

    def attach(self, handler: ClusterHandler) -> None:
        """Deliver inbound messages, peer events and sync requests to ``handler``."""
        ...

    async def publish(self, kind: str, body: bytes) -> None:
        """Gossip a message to every cluster peer (best effort: anti-entropy repairs losses)."""
        ...

    async def open_session(self, peer_id: str) -> SyncSession:
        """Open a ``/pinfold/sync/1`` session.

        Raises:
            TransportError: not connected, or the peer does not speak the protocol.
        """
        ...

    def connected(self) -> list[str]:
        """Peer IDs connected now."""
        ...

    def addresses(self) -> tuple[str, ...]:
        """This node's listen multiaddrs (with ``/p2p/``), for heartbeats."""
        ...

    def note_addresses(self, peer_id: str, addresses: Sequence[str]) -> None:
        """Addresses a cluster peer announced; the transport keeps it connected."""
        ...


class LocalPins(Protocol):
    """The local node's pins (fetch + refcounted pin, unpin)."""

    async def pin(self, cid: bytes, *, mode: PinMode, sources: Sequence[str]) -> int:
        """Fetch the DAG of ``cid`` (from ``sources`` first) and pin it locally.

        Args:
            cid: pin key (binary CIDv1).
            mode: recursive (the whole DAG) or direct (the root block).
            sources: peer IDs that hold it; empty = any connected peer.

        Returns:
            Bytes fetched from peers (0 when everything was local).

        Raises:
            FetchFailed: not every block arrived, or the pin could not be stored.

        Cancellation leaves no pin behind unless the pin had committed; the
        caller unpins after cancelling.
        """
        ...

    async def unpin(self, cid: bytes) -> None:
        """Release the local pin of ``cid`` (none is fine); GC reclaims the blocks."""
        ...

    async def stage(self, cid: bytes) -> int | None:
        """Pin a DAG that is complete locally (an origin copy) without fetching.

        Returns:
            The DAG's size in bytes, or None when a block is missing locally.
        """
        ...

    def has_pin(self, cid: bytes) -> bool:
        """True when the local store holds a pin of ``cid`` (blocking; called from a thread)."""
        ...

    def capacity(self) -> tuple[int, int]:
        """``(capacity_bytes, free_bytes)`` offered to the cluster."""
        ...


# ----------------------------------------------------------------- in memory


class MemoryHub:
    """A set of in-memory transports with links that tests can cut and restore.

    Every pair of attached transports is linked unless ``cut``. Gossip is
    delivered to directly linked peers only (no relaying); ``drop`` silences a
    kind of message.
    """

    def __init__(self) -> None:
        self.nodes: dict[str, MemoryTransport] = {}
        self._cut: set[frozenset[str]] = set()
        self.dropped_kinds: set[str] = set()
        self.sent: list[tuple[str, str, int]] = []

    def transport(self, peer_id: str) -> MemoryTransport:
        """A new transport for ``peer_id`` on this hub."""
        t = MemoryTransport(self, peer_id)
        self.nodes[peer_id] = t
        return t

    def linked(self, a: str, b: str) -> bool:
        """True when ``a`` and ``b`` are both up and not cut apart."""
        return (a != b and a in self.nodes and b in self.nodes and self.nodes[a].up
                and self.nodes[b].up and frozenset((a, b)) not in self._cut)

    def cut(self, a: str, b: str) -> None:
        """Break the link between ``a`` and ``b`` (both see a disconnect)."""
        key = frozenset((a, b))
        if key not in self._cut:
            was = self.linked(a, b)
            self._cut.add(key)
            if was:
                self._notify(a, b, False)

    def heal(self, a: str, b: str) -> None:
        """Restore the link between ``a`` and ``b`` (both see a connect)."""
        key = frozenset((a, b))
        if key in self._cut:
            self._cut.discard(key)
            if self.linked(a, b):
                self._notify(a, b, True)

    def set_up(self, peer_id: str, up: bool) -> None:
        """Take a node off the network (``up=False``) or bring it back."""
        t = self.nodes[peer_id]
        if t.up == up:
            return
        before = [q for q in self.nodes if self.linked(peer_id, q)]
        t.up = up
        after = [q for q in self.nodes if self.linked(peer_id, q)]
        for q in set(before) ^ set(after):
            self._notify(peer_id, q, up)

    def _notify(self, a: str, b: str, connected: bool) -> None:
        for x, y in ((a, b), (b, a)):
            h = self.nodes[x].handler
            if h is not None:
                h.on_peer(y, connected)


class _MemorySession:
    def __init__(self, hub: MemoryHub, me: str, peer: str) -> None:
        self._hub, self._me, self._peer = hub, me, peer
        self._closed = False

    async def ask(self, request: bytes) -> bytes:
        await trio.lowlevel.checkpoint()
        if self._closed or not self._hub.linked(self._me, self._peer):
            raise TransportError(f"session with {self._peer} is broken")
        handler = self._hub.nodes[self._peer].handler
        if handler is None:
            raise TransportError(f"{self._peer} does not serve sync")
        return handler.answer(self._me, request)

    async def aclose(self) -> None:
        self._closed = True


class MemoryTransport:
    """One node's end of a ``MemoryHub`` (implements ``Transport``)."""

    def __init__(self, hub: MemoryHub, peer_id: str) -> None:
        self._hub = hub
        self._peer_id = peer_id
        self.handler: ClusterHandler | None = None
        self.up = True
        self.noted: dict[str, tuple[str, ...]] = {}

    @property
    def peer_id(self) -> str:
        return self._peer_id

    def attach(self, handler: ClusterHandler) -> None:
        self.handler = handler

    async def publish(self, kind: str, body: bytes) -> None:
        await trio.lowlevel.checkpoint()
        if not self.up or kind in self._hub.dropped_kinds:
            return
        self._hub.sent.append((self._peer_id, kind, len(body)))
        for q, t in list(self._hub.nodes.items()):
            if t.handler is not None and self._hub.linked(self._peer_id, q):
                t.handler.on_message(self._peer_id, kind, body)

    async def open_session(self, peer_id: str) -> _MemorySession:
        await trio.lowlevel.checkpoint()
        if not self._hub.linked(self._peer_id, peer_id):
            raise TransportError(f"not connected to {peer_id}")
        return _MemorySession(self._hub, self._peer_id, peer_id)

    def connected(self) -> list[str]:
        return [q for q in self._hub.nodes if self._hub.linked(self._peer_id, q)]

    def addresses(self) -> tuple[str, ...]:
        return (f"/memory/{self._peer_id}",)

    def note_addresses(self, peer_id: str, addresses: Sequence[str]) -> None:
        self.noted[peer_id] = tuple(addresses)


@dataclass(slots=True)
class MemoryPins:
    """In-memory ``LocalPins``: fetches take ``fetch_s`` simulated seconds.

    Attributes:
        fetch_s: seconds a pin's fetch takes (``trio.sleep``; use a MockClock).
        size_bytes: the size reported for every DAG, bytes.
        capacity_bytes, used_bytes: what ``capacity`` reports.
        fail: CIDs whose fetch fails (``FetchFailed``) while listed.
        local: CIDs whose DAG is complete locally (``stage`` succeeds, fetches are free).
        pinned: CIDs pinned now.
        fetches: every fetch started, as ``(cid, sources, trio time)``.
        running, max_running: fetches in progress now, and the most at once.
    """

    fetch_s: float = 1.0
    size_bytes: int = 1 << 20
    capacity_bytes: int = 1 << 40
    used_bytes: int = 0
    fail: set[bytes] = field(default_factory=set)
    local: set[bytes] = field(default_factory=set)
    pinned: set[bytes] = field(default_factory=set)
    fetches: list[tuple[bytes, tuple[str, ...], float]] = field(default_factory=list)
    running: int = 0
    max_running: int = 0

    async def pin(self, cid: bytes, *, mode: PinMode, sources: Sequence[str]) -> int:
        self.fetches.append((cid, tuple(sources), trio.current_time()))
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            if cid not in self.local:
                await trio.sleep(self.fetch_s)
            else:
                await trio.lowlevel.checkpoint()
            if cid in self.fail:
                raise FetchFailed(f"no peer sent the blocks of {cid.hex()}")
        finally:
            self.running -= 1
        fetched = 0 if cid in self.local else self.size_bytes
        self.pinned.add(cid)
        self.local.add(cid)
        return fetched

    async def unpin(self, cid: bytes) -> None:
        await trio.lowlevel.checkpoint()
        self.pinned.discard(cid)

    async def stage(self, cid: bytes) -> int | None:
        await trio.lowlevel.checkpoint()
        if cid not in self.local:
            return None
        self.pinned.add(cid)
        return self.size_bytes

    def has_pin(self, cid: bytes) -> bool:
        return cid in self.pinned

    def capacity(self) -> tuple[int, int]:
        return self.capacity_bytes, max(0, self.capacity_bytes - self.used_bytes)
