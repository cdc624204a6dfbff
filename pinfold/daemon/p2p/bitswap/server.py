"""The Bitswap server's decision core (sans-IO): per-peer ledgers and a fair scheduler.

No trio, no libp2p, no store: the driver feeds it each peer's wantlist updates
(``receive_wantlist``), asks it what to send next (``next_envelope``, given a
``block_size`` lookup), loads the blocks an envelope names, writes them, and
reports the bytes written back (``envelope_sent``).

Behaviour (bitswap-protocol.md, "Bitswap 1.2.0: Interaction Pattern", and
boxo's/Helia's engines):

* want-have for a block we have -> HAVE, or the block itself when it is at most
  ``max_have_block_bytes`` (Helia and boxo do the same for tiny blocks);
  want-block -> the block; a missing block -> DONT_HAVE when the peer asked
  ``sendDontHave``. A want we could not answer stays on the ledger and is
  served if the block arrives later (``blocks_added``).
* cancels remove wants; ``full`` wantlists replace the peer's ledger.
* a want is answered once; a repeated want after the answer is a new want.
* fairness: peers with work are served round robin, a quantum of
  ``quantum_bytes`` of block data per turn, so a peer wanting gigabytes cannot
  starve one wanting a single block; within a peer, higher ``priority`` first,
  then arrival order.
* bounded memory: at most ``max_queued_bytes_per_peer`` of block data handed
  to the driver and not yet written per peer; at most ``max_wantlist_entries``
  wants per peer: unanswerable wants (missing blocks) are forgotten oldest
  first to make room; wants we can serve beyond the limit raise
  ``WantlistTooLarge`` (a flood: the driver disconnects).
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass

from pinfold.blockstore.cid import CID, cid_key

from pinfold.daemon.p2p.bitswap.errors import WantlistTooLarge
from pinfold.daemon.p2p.bitswap.message import MAX_MESSAGE_SIZE, WantEntry, WantType

__all__ = ["Envelope", "LedgerStat", "ServerConfig", "ServerEngine"]

Peer = Hashable


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerConfig:
    """Limits of the server side.

    Attributes:
        max_wantlist_entries: wants one peer may have outstanding with us; more
            is a flood (boxo keeps 1024 queued per peer; we allow more because a
            pinfold fetcher pipelines whole DAG levels).
        max_queued_bytes_per_peer: block bytes handed to the driver for one peer
            and not yet written, bytes (bounds memory per peer).
        quantum_bytes: block bytes one peer gets per round-robin turn, bytes (at
            least one block is always allowed).
        max_message_bytes: largest response message, bytes (spec: <= 4 MiB).
        max_have_block_bytes: answer a want-have with the block itself when the
            block is at most this size, bytes (Helia's default 1024).
    """

    max_wantlist_entries: int = 16384
    max_queued_bytes_per_peer: int = 8 * 1024 * 1024  # two full 4 MiB messages in flight
    quantum_bytes: int = 1024 * 1024
    max_message_bytes: int = MAX_MESSAGE_SIZE - 64 * 1024  # headroom for framing/presences
    max_have_block_bytes: int = 1024

    def __post_init__(self) -> None:
        if self.max_wantlist_entries < 1:
            raise ValueError("bitswap.max_wantlist_entries: must be >= 1")
        if self.max_queued_bytes_per_peer < 1:
            raise ValueError("bitswap.max_queued_bytes_per_peer: must be >= 1")
        if not 0 < self.max_message_bytes <= MAX_MESSAGE_SIZE:
            raise ValueError(f"bitswap.max_message_bytes: must be in 1..{MAX_MESSAGE_SIZE}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Envelope:
    """What to send one peer next.

    Attributes:
        peer: the recipient.
        blocks: CIDs whose blocks to send (the driver loads them; a block gone
            since the lookup becomes a DONT_HAVE).
        haves: CIDs to answer HAVE for.
        dont_haves: CIDs to answer DONT_HAVE for.
        block_bytes: total size of ``blocks``, bytes (what ``envelope_sent`` gives back).
    """

    peer: Peer
    blocks: tuple[CID, ...]
    haves: tuple[CID, ...]
    dont_haves: tuple[CID, ...]
    block_bytes: int


@dataclass(frozen=True, slots=True, kw_only=True)
class LedgerStat:
    """One peer's ledger, for ``bitswap ledger`` and metrics."""

    peer: Peer
    wantlist_size: int
    queued_bytes: int
    bytes_sent: int
    bytes_received: int
    blocks_sent: int
    blocks_received: int


class _Want:
    __slots__ = ("cid", "dont_have_sent", "key", "priority", "send_dont_have", "seq", "want_type")

    def __init__(self, e: WantEntry, key: bytes, seq: int) -> None:
        self.cid = e.cid
        self.key = key
        self.priority = e.priority
        self.want_type = e.want_type
        self.send_dont_have = e.send_dont_have
        self.seq = seq
        self.dont_have_sent = False


class _Ledger:
    __slots__ = (
        "active",
        "blocks_received",
        "blocks_sent",
        "bytes_received",
        "bytes_sent",
        "heap",
        "queued_bytes",
        "waiting",
    )

    def __init__(self) -> None:
        self.active: dict[bytes, _Want] = {}
        self.heap: list[tuple[int, int, bytes]] = []  # (-priority, seq, key), lazy deletion
        self.waiting: dict[bytes, _Want] = {}  # missing blocks, served if they arrive
        self.queued_bytes = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self.blocks_sent = 0
        self.blocks_received = 0

    def size(self) -> int:
        return len(self.active) + len(self.waiting)

    def activate(self, w: _Want) -> None:
        self.active[w.key] = w
        heapq.heappush(self.heap, (-w.priority, w.seq, w.key))

    def pop(self) -> _Want | None:
        while self.heap:
            _, seq, key = self.heap[0]
            w = self.active.get(key)
            if w is None or w.seq != seq:
                heapq.heappop(self.heap)
                continue
            return w
        return None


class ServerEngine:
    """Per-peer ledgers and the round-robin response scheduler."""

    def __init__(self, config: ServerConfig | None = None) -> None:
        self.config = config or ServerConfig()
        self._ledgers: dict[Peer, _Ledger] = {}
        self._rr: deque[Peer] = deque()  # peers with active wants, in turn order
        self._in_rr: set[Peer] = set()
        self._seq = itertools.count()
        self._by_key: dict[bytes, set[Peer]] = {}  # key -> peers waiting for that block

    # ------------------------------------------------------------ peers

    def peer_connected(self, peer: Peer) -> None:
        """Start a ledger for ``peer`` (idempotent)."""
        self._ledgers.setdefault(peer, _Ledger())

    def peer_disconnected(self, peer: Peer) -> None:
        """Forget ``peer``'s wants and queued bytes."""
        led = self._ledgers.pop(peer, None)
        if led is None:
            return
        for key in led.waiting:
            self._unindex(key, peer)
        self._in_rr.discard(peer)
        # stale deque entries are skipped lazily in next_envelope

    def peers(self) -> list[Peer]:
        """Peers with a ledger."""
        return list(self._ledgers)

    def drop_wants(self, peer: Peer) -> int:
        """Forget every want of ``peer`` (it may no longer fetch from us); the ledger's
        counters and queued bytes stay.

        Returns:
            How many wants were dropped (active and waiting).
        """
        led = self._ledgers.get(peer)
        if led is None:
            return 0
        n = led.size()
        for key in led.waiting:
            self._unindex(key, peer)
        led.active.clear()
        led.heap.clear()
        led.waiting.clear()
        self._in_rr.discard(peer)
        return n

    # ------------------------------------------------------------ input

    def receive_wantlist(self, peer: Peer, entries: Iterable[WantEntry], *, full: bool = False) -> bool:
        """Apply a wantlist update from ``peer``.

        Args:
            peer: the sender.
            entries: wants and cancels, in message order.
            full: the entries replace the peer's whole wantlist.

        Returns:
            True if the peer now has work for ``next_envelope``.

        Raises:
            WantlistTooLarge: the peer's wantlist exceeds ``max_wantlist_entries``
                (its ledger is dropped; the driver should disconnect it).
        """
        led = self._ledgers.setdefault(peer, _Ledger())
        if full:
            for key in led.waiting:
                self._unindex(key, peer)
            led.active.clear()
            led.heap.clear()
            led.waiting.clear()
        for e in entries:
            key = cid_key(e.cid)
            if e.cancel:
                led.active.pop(key, None)
                if led.waiting.pop(key, None) is not None:
                    self._unindex(key, peer)
                continue
            old = led.active.get(key) or led.waiting.get(key)
            if old is not None and old.want_type == WantType.BLOCK and e.want_type == WantType.HAVE:
                # a want-block already covers a want-have; keep the stronger one
                continue
            w = _Want(e, key, next(self._seq))
            if key in led.waiting:
                led.waiting.pop(key)
                self._unindex(key, peer)
            led.activate(w)
            if led.size() > self.config.max_wantlist_entries:
                if led.waiting:
                    # forget the oldest want we could not serve (already answered
                    # DONT_HAVE, or the peer did not ask for one): a long-lived
                    # peer that never cancels is not a flood
                    old_key = next(iter(led.waiting))
                    del led.waiting[old_key]
                    self._unindex(old_key, peer)
                    continue
                self.peer_disconnected(peer)
                raise WantlistTooLarge(
                    f"peer wants more than {self.config.max_wantlist_entries} blocks at once"
                )
        has_work = bool(led.active)
        if has_work and peer not in self._in_rr:
            self._in_rr.add(peer)
            self._rr.append(peer)
        return has_work

    def blocks_added(self, keys: Iterable[bytes]) -> list[Peer]:
        """Blocks with these store keys just arrived; wake wants waiting for them.

        Returns:
            Peers that now have work.
        """
        woken: list[Peer] = []
        for key in keys:
            peers = self._by_key.pop(key, None)
            if not peers:
                continue
            for peer in peers:
                led = self._ledgers.get(peer)
                if led is None:
                    continue
                w = led.waiting.pop(key, None)
                if w is None:
                    continue
                w.seq = next(self._seq)
                led.activate(w)
                if peer not in self._in_rr:
                    self._in_rr.add(peer)
                    self._rr.append(peer)
                woken.append(peer)
        return woken

    def record_received(self, peer: Peer, blocks: int, nbytes: int) -> None:
        """Account blocks received from ``peer`` (ledger bytes received)."""
        led = self._ledgers.get(peer)
        if led is not None:
            led.blocks_received += blocks
            led.bytes_received += nbytes

    # ------------------------------------------------------------ output

    def has_work(self) -> bool:
        """True when some peer has active wants and room in its queue."""
        return any(
            (led := self._ledgers.get(p)) is not None
            and led.active
            and led.queued_bytes < self.config.max_queued_bytes_per_peer
            for p in self._rr
        )

    def next_envelope(self, block_size: Callable[[CID], int | None]) -> Envelope | None:
        """The next response to send, taking peers in round-robin order.

        Args:
            block_size: size in bytes of a stored block, None when missing.

        Returns:
            An envelope for the first peer in turn order with active wants and
            queue room (that peer then goes to the back of the line), or None
            when no peer can be served now.
        """
        cfg = self.config
        for _ in range(len(self._rr)):
            peer = self._rr.popleft()
            led = self._ledgers.get(peer)
            if led is None or peer not in self._in_rr:
                continue
            if not led.active:
                self._in_rr.discard(peer)
                continue
            if led.queued_bytes >= cfg.max_queued_bytes_per_peer:
                self._rr.append(peer)
                continue
            env = self._fill(peer, led, block_size)
            if led.active:
                self._rr.append(peer)
            else:
                self._in_rr.discard(peer)
            if env is not None:
                return env
        return None

    def _fill(self, peer: Peer, led: _Ledger, block_size: Callable[[CID], int | None]) -> Envelope | None:
        cfg = self.config
        blocks: list[CID] = []
        haves: list[CID] = []
        dont: list[CID] = []
        block_bytes = 0
        msg_bytes = 0
        budget = min(cfg.quantum_bytes, cfg.max_queued_bytes_per_peer - led.queued_bytes)
        while True:
            w = led.pop()
            if w is None:
                break
            size = block_size(w.cid)
            send_block = size is not None and (
                w.want_type == WantType.BLOCK or size <= cfg.max_have_block_bytes
            )
            if send_block:
                assert size is not None
                if blocks and (block_bytes + size > budget or msg_bytes + size + 128 > cfg.max_message_bytes):
                    break
                blocks.append(w.cid)
                block_bytes += size
                msg_bytes += size + 128
            else:
                if msg_bytes + 128 > cfg.max_message_bytes:
                    break
                if size is not None:
                    haves.append(w.cid)
                    msg_bytes += 80
                else:
                    if w.send_dont_have and not w.dont_have_sent:
                        dont.append(w.cid)
                        msg_bytes += 80
                        w.dont_have_sent = True
                    # keep waiting for the block; serve it if it arrives
                    led.active.pop(w.key)
                    heapq.heappop(led.heap)
                    led.waiting[w.key] = w
                    self._by_key.setdefault(w.key, set()).add(peer)
                    continue
            led.active.pop(w.key)
            heapq.heappop(led.heap)
        if not (blocks or haves or dont):
            return None
        led.queued_bytes += block_bytes
        return Envelope(
            peer=peer,
            blocks=tuple(blocks),
            haves=tuple(haves),
            dont_haves=tuple(dont),
            block_bytes=block_bytes,
        )

    def envelope_sent(self, peer: Peer, block_bytes: int, blocks: int, *, written: bool = True) -> None:
        """An envelope's blocks left the queue: written (``written=True``) or dropped.

        Frees ``block_bytes`` of the peer's queue; counts sent bytes when written.
        """
        led = self._ledgers.get(peer)
        if led is None:
            return
        led.queued_bytes = max(0, led.queued_bytes - block_bytes)
        if written:
            led.bytes_sent += block_bytes
            led.blocks_sent += blocks
        if led.active and peer not in self._in_rr:
            self._in_rr.add(peer)
            self._rr.append(peer)

    # ------------------------------------------------------------ views

    def ledger(self, peer: Peer) -> LedgerStat | None:
        """``peer``'s ledger counters, or None without a ledger."""
        led = self._ledgers.get(peer)
        if led is None:
            return None
        return LedgerStat(
            peer=peer,
            wantlist_size=led.size(),
            queued_bytes=led.queued_bytes,
            bytes_sent=led.bytes_sent,
            bytes_received=led.bytes_received,
            blocks_sent=led.blocks_sent,
            blocks_received=led.blocks_received,
        )

    def ledgers(self) -> list[LedgerStat]:
        """Every peer's ledger counters."""
        return [s for p in list(self._ledgers) if (s := self.ledger(p)) is not None]

    def wanted_by(self, peer: Peer) -> list[CID]:
        """CIDs ``peer`` wants from us now (active and waiting)."""
        led = self._ledgers.get(peer)
        if led is None:
            return []
        return [w.cid for w in led.active.values()] + [w.cid for w in led.waiting.values()]

    # ------------------------------------------------------------ internals

    def _unindex(self, key: bytes, peer: Peer) -> None:
        peers = self._by_key.get(key)
        if peers is not None:
            peers.discard(peer)
            if not peers:
                del self._by_key[key]
