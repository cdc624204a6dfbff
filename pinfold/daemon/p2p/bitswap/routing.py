"""How the wantlist routes one want (sans-IO): its records, and the moves between holders.

``WantRouter`` holds the wantlist's state (wants, sessions, the queue of wants
waiting for a slot, the holder scheduler) and the decisions about a single
want: which holder gets its want-block (``_schedule``: the scheduler's pick,
else the queue, plus want-have discovery), and moving want-blocks between
holders: off a silent peer (``_move_off``), to a second peer when late
(``_reask_late``), off a holder far slower than another (``_rebalance``).
``wants.WantManager`` is its public face: the events of sessions, peers,
presences, blocks and time. Pure: no trio, no libp2p, time comes in as ``now``.
"""

from __future__ import annotations

import itertools
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from pinfold.blockstore.cid import CID

from pinfold.daemon.p2p.bitswap.client_types import Action, ClientConfig, Peer, SendWants
from pinfold.daemon.p2p.bitswap.message import WantEntry, WantType
from pinfold.daemon.p2p.bitswap.schedule import HolderScheduler

__all__ = [
    "KEEP",
    "MAX_BLOCK_PEERS",
    "SLOW_MARGIN",
    "SessionRecord",
    "Sends",
    "WantRecord",
    "WantRouter",
    "entry",
    "send_actions",
]

Sends = dict[Peer, list[WantEntry]]
"""Entries to send, per peer (gathered while handling one event)."""

#: Most peers asked for one block with want-block at once (the first, and one
#: more when the first is late).
MAX_BLOCK_PEERS = 2

#: A want-block is moved off a holder when it would arrive this many times
#: (plus ``late_min_s``) later than another holder with a free slot would
#: deliver it.
SLOW_MARGIN = 2.0

#: The oldest want-blocks at a peer that may be on the way already: asked of
#: another holder too rather than moved.
KEEP = 2


class WantRecord:
    """One wanted block: its sessions and what each peer was asked and answered."""

    __slots__ = (
        "block_peers",
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
        self.block_peers: dict[Peer, None] = {}  # want-block in flight (ordered set)
        self.have_asked: dict[Peer, float] = {}  # peer -> when last sent want-have/-block
        self.have_peers: set[Peer] = set()  # peers that said HAVE
        self.dont_have: set[Peer] = set()
        self.stalled: set[Peer] = set()
        self.queued = False
        self.exhausted_at: float | None = None  # since when every peer said DONT_HAVE


@dataclass(slots=True)
class SessionRecord:
    """One session: its peer filter, deadline, useful peers and open wants."""

    sid: int
    peers: frozenset[Peer] | None
    timeout_s: float
    last_progress: float
    useful: dict[Peer, None] = field(default_factory=dict)  # ordered set
    wants: set[bytes] = field(default_factory=set)


def entry(w: WantRecord, want_type: WantType) -> WantEntry:
    """A want-have or want-block for ``w``, asking for DONT_HAVE too."""
    return WantEntry(cid=w.cid, want_type=want_type, send_dont_have=True)


class WantRouter:
    """The wantlist's state and the routing of single wants (see the module doc).

    Attributes:
        config: the client's tuning.
        scheduler: the per-peer measurements and holder choice.
        counters: ``late_reasks`` (want-blocks sent to another peer while the
            first might still answer: it was late, or would be, at a holder
            far slower than another), ``wants_moved`` (want-blocks moved off a
            peer that vanished, went silent or said DONT_HAVE),
            ``rebroadcasts_timer`` and ``rebroadcasts_connect`` (messages
            sending open wants again on the timer, or to a newly connected
            peer) and ``rebroadcast_wants`` (their entries).
    """

    def __init__(self, config: ClientConfig | None = None) -> None:
        self.config = config or ClientConfig()
        self.scheduler = HolderScheduler(self.config)
        self.counters: Counter[str] = Counter()
        self._wants: dict[bytes, WantRecord] = {}
        self._sessions: dict[int, SessionRecord] = {}
        self._queue: deque[bytes] = deque()  # wants waiting for a peer slot
        self._late: dict[bytes, None] = {}  # late wants not yet asked of a second peer
        self._done: OrderedDict[bytes, tuple[int, ...]] = OrderedDict()  # key -> sessions, recent
        self._sid = itertools.count(1)

    def _mark_useful(self, sids: Iterable[int], peer: Peer) -> None:
        for sid in sids:
            s = self._sessions.get(sid)
            if s is not None and self._allowed(s, peer):
                s.useful[peer] = None

    def _useful(self, w: WantRecord, peer: Peer) -> bool:
        return any(
            (s := self._sessions.get(sid)) is not None and peer in s.useful for sid in w.sessions
        )

    def _exhausted(self, w: WantRecord) -> bool:
        """Every peer ``w`` may ask answered DONT_HAVE, none said HAVE, and no
        session of it is restricted to given peers (expected holders)."""
        if w.block_peers or w.have_peers or not w.dont_have:
            return False
        for sid in w.sessions:
            s = self._sessions.get(sid)
            if s is not None and s.peers is not None:
                return False
        return not self._candidates(w)

    def _allowed(self, s: SessionRecord, peer: Peer) -> bool:
        return s.peers is None or peer in s.peers

    def _may_ask(self, w: WantRecord, peer: Peer) -> bool:
        return any(
            (s := self._sessions.get(sid)) is not None and self._allowed(s, peer)
            for sid in w.sessions
        )

    def _candidates(self, w: WantRecord) -> list[Peer]:
        return [p for p in self.scheduler.peers() if p not in w.dont_have and self._may_ask(w, p)]

    def _holders(self, w: WantRecord, among: list[Peer]) -> list[Peer]:
        """Of ``among``, the peers that said HAVE for ``w``, else its sessions' useful peers."""
        holders = [p for p in among if p in w.have_peers]
        if holders:
            return holders
        useful: dict[Peer, None] = {}
        allowed = set(among)
        for sid in w.sessions:
            s = self._sessions.get(sid)
            if s is not None:
                useful.update((p, None) for p in s.useful if p in allowed)
        return list(useful)

    def _release(self, peer: Peer, w: WantRecord) -> None:
        self.scheduler.released(peer, w.key)
        w.block_peers.pop(peer, None)

    def _assign(self, peer: Peer, w: WantRecord, now: float, sends: Sends) -> None:
        self.scheduler.sent(peer, w.key, now)
        w.block_peers[peer] = None
        w.have_asked[peer] = now
        w.queued = False
        sends.setdefault(peer, []).append(entry(w, WantType.BLOCK))

    def _schedule(self, w: WantRecord, now: float, sends: Sends) -> None:
        """Route a want that has no want-block in flight: to the holder the
        scheduler picks, else queue it for a slot; and want-have to the allowed
        peers not asked yet (discovery)."""
        if w.block_peers:
            return
        candidates = self._candidates(w)
        if not candidates:
            return  # wait for a new peer or the deadline
        fresh = [p for p in candidates if p not in w.stalled] or candidates
        holders = self._holders(w, fresh)
        if holders:
            best = self.scheduler.pick(holders)
            if best is not None:
                self._assign(best, w, now, sends)
            elif not w.queued:
                w.queued = True
                self._queue.append(w.key)
            # discovery: while some allowed peers have not proved useful to the
            # session, ask them too (want-have), so later wants spread over them.
            # Not the useful ones: a want queued for a slot at the chosen holders
            # would otherwise go as want-have to every holder, and the first HAVE
            # back, often from a holder not admitted, would take its want-block.
            for p in candidates:
                if p not in w.have_asked and not self._useful(w, p):
                    w.have_asked[p] = now
                    sends.setdefault(p, []).append(entry(w, WantType.HAVE))
            return
        for p in candidates:
            if p not in w.have_asked:
                w.have_asked[p] = now
                sends.setdefault(p, []).append(entry(w, WantType.HAVE))

    def _move_off(self, peer: Peer, now: float, sends: Sends) -> None:
        """``peer`` went silent: its want-blocks go to other holders (it gets cancels)."""
        for key in self.scheduler.in_flight_keys(peer):
            w = self._wants.get(key)
            if w is None:
                continue
            w.stalled.add(peer)
            if not [p for p in self._candidates(w) if p != peer and p not in w.stalled]:
                continue
            self._release(peer, w)
            sends.setdefault(peer, []).append(WantEntry(cid=w.cid, cancel=True))
            if not w.block_peers:
                self.counters["wants_moved"] += 1
                self._schedule(w, now, sends)

    def _reask_late(self, now: float, sends: Sends) -> None:
        """Ask one more holder with a free slot for each late want (its first
        peer keeps the want: the block may be on its way)."""
        for key in list(self._late):
            w = self._wants.get(key)
            if w is None or not w.block_peers:
                del self._late[key]  # received, dropped or moved meanwhile
                continue
            if len(w.block_peers) >= MAX_BLOCK_PEERS:
                del self._late[key]
                continue
            others = [p for p in self._candidates(w) if p not in w.block_peers
                      and p not in w.stalled]
            holders = self._holders(w, others)
            best = self.scheduler.pick(holders) if holders else None
            if best is None:
                continue  # no holder has a slot: again when one frees
            del self._late[key]
            self.counters["late_reasks"] += 1
            self._assign(best, w, now, sends)

    def _rebalance(self, now: float, sends: Sends) -> None:
        """Move work off measured holders that would deliver it much later than
        another holder with a free slot now: a want-block ``SLOW_MARGIN`` x +
        ``late_min_s`` later than that holder's ETA goes there (it would be
        late); off a holder not admitted (``admission``), as soon as the free
        holder would deliver it sooner. The ``KEEP`` oldest at a peer may be on the way already: they
        are asked of the other holder too; younger ones move (a cancel to the
        slow peer). Both count as ``late_reasks``: the slow peer's copy may
        still arrive. With no holder free (all busy), nothing moves: every
        holder is working, and noise in the measurements moves nothing."""
        sched = self.scheduler
        for peer in sched.peers():
            keys = sched.in_flight_keys(peer)
            for idx in range(len(keys) - 1, -1, -1):
                remaining = sched.expected_s(peer, idx, now)
                if remaining is None:
                    break  # not measured: its late timeout covers it
                w = self._wants.get(keys[idx])
                if w is None or len(w.block_peers) >= MAX_BLOCK_PEERS:
                    continue
                free = [p for p in self._candidates(w) if p not in w.block_peers
                        and p not in w.stalled and sched.has_room(p) and not sched.lagging(p)]
                holders = self._holders(w, free)
                best = sched.pick(holders, admitted_only=True) if holders else None
                # off a holder not admitted (a probe that failed), work moves to an
                # admitted one as soon as that would deliver it sooner
                bar = (sched.eta(best) if best is not None and not sched.admission.admitted(peer)
                       else SLOW_MARGIN * sched.eta(best) + self.config.late_min_s
                       if best is not None else 0.0)
                if best is None or remaining <= bar:
                    break  # the older ones gain even less
                self._late.pop(w.key, None)
                self.counters["late_reasks"] += 1
                if idx >= KEEP:
                    self._release(peer, w)
                    sends.setdefault(peer, []).append(WantEntry(cid=w.cid, cancel=True))
                self._assign(best, w, now, sends)

    def _due(self, now: float) -> tuple[list[WantRecord], set[bytes]]:
        """Wants past their session deadline, and those every peer said DONT_HAVE
        for (``early``) after the settle time."""
        failed: list[WantRecord] = []
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
        return failed, early

    def _drain_queue(self, now: float, sends: Sends) -> None:
        """Give queued wants to peers with free slots, oldest first; stop at the
        first one no holder takes now (the rest share its holders, mostly), so
        a block's arrival costs one routing decision, not one per queued want."""
        if self._late:
            self._reask_late(now, sends)  # late wants take freed slots first
        queue = self._queue
        while queue and self.scheduler.any_room():
            key = queue.popleft()
            w = self._wants.get(key)
            if w is None or not w.queued or w.block_peers:
                continue
            w.queued = False
            self._schedule(w, now, sends)
            if w.queued:  # no holder takes it now: back to the front, to wait for a slot
                queue.pop()
                queue.appendleft(key)
                break

    def _drop(self, w: WantRecord, cancels: Sends) -> None:
        self._wants.pop(w.key, None)
        self._late.pop(w.key, None)
        for p in list(w.block_peers):
            self._release(p, w)
        w.queued = False
        entry = WantEntry(cid=w.cid, cancel=True)
        for p in w.have_asked:
            if p in self.scheduler and p not in w.dont_have:
                cancels.setdefault(p, []).append(entry)



def send_actions(sends: Sends) -> list[Action]:
    """One ``SendWants`` per peer with entries."""
    return [SendWants(peer=p, entries=tuple(e)) for p, e in sends.items() if e]
