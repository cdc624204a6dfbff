"""The Bitswap client's decision core (sans-IO): who to ask for which block, and when.

No trio, no libp2p: time comes in as ``now`` (seconds), peers are opaque
hashable IDs, and every method returns a list of actions for the driver to
carry out (``SendWants``, ``WantFailed``).

Strategy (bitswap-protocol.md, "Bitswap 1.2.0: Interaction Pattern"; boxo's
session and Helia's want-list behave alike):

* A *session* groups the wants of one fetch (a DAG walk or a list of CIDs) and
  remembers which peers proved useful: peers that sent a block or said HAVE.
* A new want goes as want-block (with sendDontHave) to the least-loaded
  useful peer of its session; when the session knows no useful peer yet, as
  want-have (with sendDontHave) to every allowed connected peer, and then as
  want-block to the first that answers HAVE.
* Each peer has at most ``max_outstanding_per_peer`` want-blocks in flight;
  further wants queue and go to whichever useful peer frees a slot first, so
  faster holders serve more (pipelining without overloading one peer).
* Retries: DONT_HAVE, a disconnect, or a stall (a peer with want-blocks in
  flight that sent nothing for ``stall_timeout_s``) moves the want to another
  peer; peers that said DONT_HAVE are not asked again for that block. When a
  stream to or from a peer breaks, the driver sends it our whole wantlist for
  it again (``wantlist_for``, a ``full`` message: the spec's "full wantlist"),
  as messages on the broken stream may be lost.
* Deadline: a want fails (``WantFailed``) when its session made no progress
  for the session's ``timeout_s`` and the want is at least that old.
* Nobody has it: a want fails early (``WantFailed`` with ``all_dont_have``)
  when every connected peer it may ask answered DONT_HAVE and none said HAVE,
  for ``dont_have_settle_s`` (a peer that connects meanwhile is asked first).
  Only sessions open to any peer do this; a session restricted to given peers
  (cluster holders, expected to get the block) waits for its deadline.
* When a block arrives, every other peer asked for it gets a cancel.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict, deque
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field

from pinfold.blockstore.cid import CID, cid_key

from pinfold.daemon.p2p.bitswap.message import BlockPresence, PresenceType, WantEntry, WantType

__all__ = [
    "Action",
    "ClientConfig",
    "SendWants",
    "WantFailed",
    "WantManager",
]

Peer = Hashable


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientConfig:
    """Client-side tuning.

    Attributes:
        max_outstanding_per_peer: want-blocks in flight to one peer (pipelining
            depth; 16 x 1 MiB blocks keep a loopback link busy, and a low cap
            spreads a DAG over every holder sooner).
        stall_timeout_s: a peer with want-blocks in flight that sent us nothing
            for this long, seconds, loses them to other peers.
        max_wants: wants outstanding at once over all sessions (memory bound).
        dont_have_settle_s: a want that every peer it may ask answered DONT_HAVE
            fails after this long, seconds (well under a second: the answer is
            in; the wait only lets a peer that is connecting be asked too).
    """

    max_outstanding_per_peer: int = 16
    stall_timeout_s: float = 10.0
    max_wants: int = 100_000
    dont_have_settle_s: float = 0.25

    def __post_init__(self) -> None:
        if self.max_outstanding_per_peer < 1:
            raise ValueError("bitswap.max_outstanding_per_peer: must be >= 1")
        if self.stall_timeout_s <= 0:
            raise ValueError("bitswap.stall_timeout_s: must be > 0")
        if self.dont_have_settle_s < 0:
            raise ValueError("bitswap.dont_have_settle_s: must be >= 0")


@dataclass(frozen=True, slots=True, kw_only=True)
class SendWants:
    """Send ``entries`` (wants and/or cancels) to ``peer``."""

    peer: Peer
    entries: tuple[WantEntry, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class WantFailed:
    """A want passed its deadline.

    Attributes:
        cid: the block that did not arrive.
        sessions: sessions that wanted it.
        timeout_s: the deadline (no progress for this long), seconds.
        peers_asked: peers asked for it, sorted by ``str``.
        dont_have: peers among them that answered DONT_HAVE, sorted.
        all_dont_have: True when it failed early because every peer asked
            answered DONT_HAVE (``timeout_s`` then did not pass).
    """

    cid: CID
    sessions: tuple[int, ...]
    timeout_s: float
    peers_asked: tuple[Peer, ...]
    dont_have: tuple[Peer, ...]
    all_dont_have: bool = False


Action = SendWants | WantFailed


class _Want:
    __slots__ = (
        "block_peer",
        "block_sent_at",
        "cid",
        "created",
        "dont_have",
        "exhausted_at",
        "have_asked",
        "have_peers",
        "key",
        "queued",
        "sessions",
        "stalled",
    )

    def __init__(self, cid: CID, key: bytes, now: float, session: int) -> None:
        self.cid = cid
        self.key = key
        self.created = now
        self.sessions: list[int] = [session]
        self.block_peer: Peer | None = None
        self.block_sent_at = 0.0
        self.have_asked: set[Peer] = set()  # peers sent want-have or want-block
        self.have_peers: set[Peer] = set()  # peers that said HAVE
        self.dont_have: set[Peer] = set()
        self.stalled: set[Peer] = set()
        self.queued = False
        self.exhausted_at: float | None = None  # since when every peer said DONT_HAVE


@dataclass(slots=True)
class _WantSession:
    sid: int
    peers: frozenset[Peer] | None
    timeout_s: float
    last_progress: float
    useful: dict[Peer, None] = field(default_factory=dict)  # ordered set
    wants: set[bytes] = field(default_factory=set)


@dataclass(slots=True)
class _PeerState:
    outstanding: set[bytes] = field(default_factory=set)  # keys with a want-block in flight
    last_heard: float = 0.0
    busy_since: float = 0.0


class WantManager:
    """Our wantlist across sessions and peers (pure state machine)."""

    def __init__(self, config: ClientConfig | None = None) -> None:
        self.config = config or ClientConfig()
        self._wants: dict[bytes, _Want] = {}
        self._sessions: dict[int, _WantSession] = {}
        self._peers: dict[Peer, _PeerState] = {}
        self._queue: deque[bytes] = deque()  # wants waiting for a peer slot
        self._done: OrderedDict[bytes, tuple[int, ...]] = OrderedDict()  # key -> sessions, recent
        self._sid = itertools.count(1)

    # ------------------------------------------------------------ sessions

    def new_session(self, *, timeout_s: float, now: float, peers: Iterable[Peer] | None = None) -> int:
        """Open a session; returns its ID.

        Args:
            timeout_s: a want fails after this many seconds without session progress.
            now: current time, seconds.
            peers: restrict the session to these peers; None = every connected peer.
        """
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        sid = next(self._sid)
        self._sessions[sid] = _WantSession(
            sid=sid,
            peers=frozenset(peers) if peers is not None else None,
            timeout_s=timeout_s,
            last_progress=now,
        )
        return sid

    def close_session(self, sid: int) -> list[Action]:
        """Drop a session; wants no other session shares are cancelled at their peers."""
        s = self._sessions.pop(sid, None)
        if s is None:
            return []
        cancels: dict[Peer, list[WantEntry]] = {}
        for key in s.wants:
            w = self._wants.get(key)
            if w is None:
                continue
            if sid in w.sessions:
                w.sessions.remove(sid)
            if not w.sessions:
                self._drop(w, cancels, except_peer=None)
        return _cancel_actions(cancels)

    def want(self, sid: int, cids: Iterable[CID], now: float) -> list[Action]:
        """Add wants to session ``sid`` (CIDs already wanted are shared, not re-sent).

        Raises:
            KeyError: unknown session.
            OverflowError: more than ``max_wants`` wants outstanding.
        """
        s = self._sessions[sid]
        sends: dict[Peer, list[WantEntry]] = {}
        for cid in cids:
            key = cid_key(cid)
            w = self._wants.get(key)
            if w is not None:
                if sid not in w.sessions:
                    w.sessions.append(sid)
                s.wants.add(key)
                continue
            if len(self._wants) >= self.config.max_wants:
                raise OverflowError(f"more than {self.config.max_wants} blocks wanted at once")
            w = _Want(cid, key, now, sid)
            self._wants[key] = w
            s.wants.add(key)
            self._schedule(w, now, sends)
        return _send_actions(sends)

    def session_wants(self, sid: int) -> int:
        """Wants of ``sid`` not yet received."""
        s = self._sessions.get(sid)
        return len(s.wants) if s else 0

    # ------------------------------------------------------------ peers

    def peer_connected(self, peer: Peer, now: float) -> list[Action]:
        """A peer is connected: unresolved wants that may use it ask it (want-have)."""
        if peer in self._peers:
            return []
        self._peers[peer] = _PeerState(last_heard=now)
        sends: dict[Peer, list[WantEntry]] = {}
        for w in self._wants.values():
            if w.block_peer is None and not w.queued:
                self._schedule(w, now, sends)
        return _send_actions(sends)

    def peer_disconnected(self, peer: Peer, now: float) -> list[Action]:
        """A peer is gone: its in-flight wants go elsewhere."""
        st = self._peers.pop(peer, None)
        if st is None:
            return []
        sends: dict[Peer, list[WantEntry]] = {}
        for s in self._sessions.values():
            s.useful.pop(peer, None)
        for key in list(st.outstanding):
            w = self._wants.get(key)
            if w is not None and w.block_peer == peer:
                w.block_peer = None
                w.have_peers.discard(peer)
                w.have_asked.discard(peer)
                self._schedule(w, now, sends)
        for w in self._wants.values():
            w.have_peers.discard(peer)
            w.have_asked.discard(peer)
        self._drain_queue(now, sends)
        return _send_actions(sends)

    def connected(self) -> list[Peer]:
        """Peers the manager knows as connected."""
        return list(self._peers)

    # ------------------------------------------------------------ input

    def is_wanted(self, key: bytes) -> bool:
        """True when a block with store key ``key`` is wanted now."""
        return key in self._wants

    def wanted_cid(self, key: bytes) -> CID | None:
        """The CID wanted under ``key``, if any."""
        w = self._wants.get(key)
        return w.cid if w else None

    def on_presences(self, peer: Peer, presences: Iterable[BlockPresence], now: float) -> list[Action]:
        """HAVE / DONT_HAVE answers from ``peer``."""
        st = self._peers.get(peer)
        if st is None:
            return []
        st.last_heard = now
        sends: dict[Peer, list[WantEntry]] = {}
        for p in presences:
            key = cid_key(p.cid)
            w = self._wants.get(key)
            if w is None:
                if p.type == PresenceType.HAVE:
                    # a late HAVE for a block already received still shows the peer is useful
                    for sid in self._done.get(key, ()):
                        s = self._sessions.get(sid)
                        if s is not None and self._allowed(s, peer):
                            s.useful[peer] = None
                continue
            if p.type == PresenceType.HAVE:
                w.have_peers.add(peer)
                w.dont_have.discard(peer)
                for sid in w.sessions:
                    s = self._sessions.get(sid)
                    if s is not None and self._allowed(s, peer):
                        s.useful[peer] = None
                if w.block_peer is None:
                    self._schedule(w, now, sends)
            else:
                w.dont_have.add(peer)
                w.have_peers.discard(peer)
                if w.block_peer == peer:
                    self._release(peer, w)
                    self._schedule(w, now, sends)
                    self._drain_queue(now, sends)
                elif w.block_peer is None and not w.queued:
                    self._schedule(w, now, sends)
                if w.exhausted_at is None and self._exhausted(w):
                    w.exhausted_at = now
        return _send_actions(sends)

    def on_block(self, peer: Peer, key: bytes, now: float) -> tuple[CID, tuple[int, ...], list[Action]] | None:
        """A verified block with store key ``key`` arrived from ``peer``.

        Returns:
            None when the block is not wanted (unsolicited or a duplicate);
            else (its CID, the sessions that wanted it, actions: cancels to the
            other peers asked, and the next wants for freed peer slots).
        """
        w = self._wants.pop(key, None)
        st = self._peers.get(peer)
        if st is not None:
            st.last_heard = now
        if w is None:
            # a duplicate still proves the peer holds the session's data
            for sid in self._done.get(key, ()):
                s = self._sessions.get(sid)
                if s is not None and st is not None and self._allowed(s, peer):
                    s.useful[peer] = None
            return None
        if w.queued:
            w.queued = False  # removed lazily from the queue
        self._done[key] = tuple(w.sessions)
        if len(self._done) > 4096:
            self._done.popitem(last=False)
        cancels: dict[Peer, list[WantEntry]] = {}
        if w.block_peer is not None:
            self._release(w.block_peer, w)
        for sid in w.sessions:
            s = self._sessions.get(sid)
            if s is None:
                continue
            s.wants.discard(key)
            s.last_progress = now
            if self._allowed(s, peer):
                s.useful[peer] = None
        entry = WantEntry(cid=w.cid, cancel=True)
        for p in w.have_asked:
            if p != peer and p in self._peers and p not in w.dont_have:
                cancels.setdefault(p, []).append(entry)
        self._drain_queue(now, cancels)
        return w.cid, tuple(w.sessions), _send_actions(cancels)

    def tick(self, now: float) -> list[Action]:
        """Periodic work: move stalled want-blocks, fail wants past their deadline."""
        sends: dict[Peer, list[WantEntry]] = {}
        actions: list[Action] = []
        stall = self.config.stall_timeout_s
        for peer, st in self._peers.items():
            if not st.outstanding:
                continue
            if now - max(st.last_heard, st.busy_since) < stall:
                continue
            for key in list(st.outstanding):
                w = self._wants.get(key)
                if w is None:
                    continue
                w.stalled.add(peer)
                alternatives = [
                    p for p in self._candidates(w) if p != peer and p not in w.stalled
                ]
                if alternatives:
                    self._release(peer, w)
                    sends.setdefault(peer, []).append(WantEntry(cid=w.cid, cancel=True))
                    self._schedule(w, now, sends)
            st.busy_since = now  # look again after another stall period
        failed: list[_Want] = []
        early: set[bytes] = set()
        settle = self.config.dont_have_settle_s
        for w in self._wants.values():
            if w.exhausted_at is None and w.dont_have and self._exhausted(w):
                w.exhausted_at = now  # e.g. the only peer that said HAVE went away
            elif w.exhausted_at is not None:
                if not self._exhausted(w):
                    w.exhausted_at = None
                elif now - w.exhausted_at >= settle:
                    failed.append(w)
                    early.add(w.key)
                    continue
            timeout = None
            for sid in w.sessions:
                s = self._sessions.get(sid)
                if s is None:
                    continue
                if now - max(s.last_progress, w.created) >= s.timeout_s:
                    timeout = s.timeout_s
                else:
                    timeout = None
                    break
            if timeout is not None:
                failed.append(w)
        cancels: dict[Peer, list[WantEntry]] = {}
        for w in failed:
            actions.append(
                WantFailed(
                    cid=w.cid,
                    sessions=tuple(w.sessions),
                    timeout_s=max(
                        (self._sessions[sid].timeout_s for sid in w.sessions if sid in self._sessions),
                        default=0.0,
                    ),
                    peers_asked=tuple(sorted(w.have_asked | w.dont_have, key=str)),
                    dont_have=tuple(sorted(w.dont_have, key=str)),
                    all_dont_have=w.key in early,
                )
            )
            for sid in w.sessions:
                s = self._sessions.get(sid)
                if s is not None:
                    s.wants.discard(w.key)
            self._drop(w, cancels, except_peer=None)
        for peer, entries in cancels.items():
            sends.setdefault(peer, []).extend(entries)
        self._drain_queue(now, sends)
        return _send_actions(sends) + actions

    # ------------------------------------------------------------ views

    def wantlist_size(self) -> int:
        """Blocks wanted now."""
        return len(self._wants)

    def outstanding(self, peer: Peer) -> int:
        """Want-blocks in flight to ``peer``."""
        st = self._peers.get(peer)
        return len(st.outstanding) if st else 0

    def wantlist_for(self, peer: Peer) -> list[WantEntry]:
        """Every want open with ``peer``, for a full wantlist after our messages to
        it, or its blocks to us, may have been lost (a stream or connection broke).

        Want-blocks in flight to the peer go as want-block, want-haves it has not
        answered as want-have (both with sendDontHave).
        """
        if peer not in self._peers:
            return []
        out: list[WantEntry] = []
        for w in self._wants.values():
            if w.block_peer == peer:
                out.append(WantEntry(cid=w.cid, want_type=WantType.BLOCK, send_dont_have=True))
            elif peer in w.have_asked and peer not in w.have_peers and peer not in w.dont_have:
                out.append(WantEntry(cid=w.cid, want_type=WantType.HAVE, send_dont_have=True))
        return out

    def useful_peers(self, sid: int) -> list[Peer]:
        """Peers that sent a block or said HAVE in session ``sid``."""
        s = self._sessions.get(sid)
        return list(s.useful) if s else []

    # ------------------------------------------------------------ internals

    def _useful(self, w: _Want, peer: Peer) -> bool:
        return any(
            (s := self._sessions.get(sid)) is not None and peer in s.useful for sid in w.sessions
        )

    def _exhausted(self, w: _Want) -> bool:
        """Every peer ``w`` may ask answered DONT_HAVE, none said HAVE, and no
        session of it is restricted to given peers (expected holders)."""
        if w.block_peer is not None or w.have_peers or not w.dont_have:
            return False
        for sid in w.sessions:
            s = self._sessions.get(sid)
            if s is not None and s.peers is not None:
                return False
        return not self._candidates(w)

    def _allowed(self, s: _WantSession, peer: Peer) -> bool:
        return s.peers is None or peer in s.peers

    def _candidates(self, w: _Want) -> list[Peer]:
        out = []
        for peer in self._peers:
            if peer in w.dont_have:
                continue
            if any(
                (s := self._sessions.get(sid)) is not None and self._allowed(s, peer)
                for sid in w.sessions
            ):
                out.append(peer)
        return out

    def _release(self, peer: Peer, w: _Want) -> None:
        st = self._peers.get(peer)
        if st is not None:
            st.outstanding.discard(w.key)
        if w.block_peer == peer:
            w.block_peer = None

    def _assign(self, peer: Peer, w: _Want, now: float, sends: dict[Peer, list[WantEntry]]) -> None:
        st = self._peers[peer]
        if not st.outstanding:
            st.busy_since = now
        st.outstanding.add(w.key)
        w.block_peer = peer
        w.block_sent_at = now
        w.have_asked.add(peer)
        w.queued = False
        sends.setdefault(peer, []).append(
            WantEntry(cid=w.cid, want_type=WantType.BLOCK, send_dont_have=True)
        )

    def _schedule(self, w: _Want, now: float, sends: dict[Peer, list[WantEntry]]) -> None:
        """Route a want that has no block peer: want-block to a known holder with
        a free slot, else queue for a slot, else want-have to everyone unasked."""
        if w.block_peer is not None:
            return
        cap = self.config.max_outstanding_per_peer
        candidates = self._candidates(w)
        if not candidates:
            return  # wait for a new peer or the deadline
        fresh = [p for p in candidates if p not in w.stalled] or candidates
        # peers that said HAVE for this block come first, then the session's useful peers
        holders = [p for p in fresh if p in w.have_peers]
        if not holders:
            useful: dict[Peer, None] = {}
            for sid in w.sessions:
                s = self._sessions.get(sid)
                if s is not None:
                    useful.update((p, None) for p in s.useful if p in fresh)
            holders = list(useful)
        if holders:
            free = [p for p in holders if len(self._peers[p].outstanding) < cap]
            if free:
                best = min(free, key=lambda p: len(self._peers[p].outstanding))
                self._assign(best, w, now, sends)
                # discovery: while some allowed peers have not proved useful to the
                # session, ask them too (want-have), so later wants spread over them
                unproven = [p for p in candidates if p not in w.have_asked and not self._useful(w, p)]
                for p in unproven:
                    w.have_asked.add(p)
                    sends.setdefault(p, []).append(
                        WantEntry(cid=w.cid, want_type=WantType.HAVE, send_dont_have=True)
                    )
                return
            if not w.queued:
                w.queued = True
                self._queue.append(w.key)
            # also learn about holders we have not asked yet
        for p in candidates:
            if p not in w.have_asked:
                w.have_asked.add(p)
                sends.setdefault(p, []).append(
                    WantEntry(cid=w.cid, want_type=WantType.HAVE, send_dont_have=True)
                )

    def _drain_queue(self, now: float, sends: dict[Peer, list[WantEntry]]) -> None:
        cap = self.config.max_outstanding_per_peer
        if not self._queue:
            return
        if all(len(st.outstanding) >= cap for st in self._peers.values()):
            return
        n = len(self._queue)
        for _ in range(n):
            key = self._queue.popleft()
            w = self._wants.get(key)
            if w is None or not w.queued or w.block_peer is not None:
                continue
            w.queued = False
            self._schedule(w, now, sends)
            if all(len(st.outstanding) >= cap for st in self._peers.values()):
                break

    def _drop(self, w: _Want, cancels: dict[Peer, list[WantEntry]], except_peer: Peer | None) -> None:
        self._wants.pop(w.key, None)
        if w.block_peer is not None:
            self._release(w.block_peer, w)
        w.queued = False
        entry = WantEntry(cid=w.cid, cancel=True)
        for p in w.have_asked:
            if p != except_peer and p in self._peers and p not in w.dont_have:
                cancels.setdefault(p, []).append(entry)


def _send_actions(sends: dict[Peer, list[WantEntry]]) -> list[Action]:
    return [SendWants(peer=p, entries=tuple(e)) for p, e in sends.items() if e]


_cancel_actions = _send_actions
