"""The Bitswap client's wantlist (sans-IO): which blocks we want, for which session, from whom.

No trio, no libp2p: time comes in as ``now`` (seconds), peers are opaque
hashable IDs, and every method returns a list of actions for the driver to
carry out (``SendWants``, ``WantFailed``, in ``client_types``). Which holder
gets a want-block, and when one is late, is decided by the holder scheduler
(``schedule.HolderScheduler``) from its measurements of each peer.

Strategy (bitswap-protocol.md, "Bitswap 1.2.0: Interaction Pattern"; boxo's
sessions behave alike):

* A *session* groups the wants of one fetch (a DAG walk or a list of CIDs) and
  remembers which peers proved useful: peers that sent a block or said HAVE.
* Discovery: a new want goes as want-have (with sendDontHave) to every allowed
  connected peer that has not proved useful to its session; a peer that
  connects gets want-have for every want it may be asked for (the wantlist is
  broadcast on a new connection). Peers answering HAVE join the session.
* Spreading: a want-block goes to the holder the scheduler picks (known
  holders of the block first, else the session's useful peers): the one that
  would deliver it soonest by its measured throughput and latency, within its
  in-flight bound. A want no holder can take now waits in a queue for a slot.
* Moving work: DONT_HAVE, a disconnect, or a peer silent for
  ``stall_timeout_s`` moves its wants to other peers without restarting the
  fetch; peers that said DONT_HAVE are not asked again for that block. A
  measured holder that would deliver a want-block far later than another
  holder could (``SLOW_MARGIN``) loses it to that holder.
* Late blocks: a want-block not answered within its peer's late timeout (from
  its observed latency) is asked of one second peer as well; the first copy
  to arrive wins and the other peer gets a cancel. Only then can a block
  arrive twice (``counters["late_reasks"]``).
* Rebroadcast (``rebroadcast``, boxo's message queue does it every 30 s):
  wants asked of a peer that long ago and still open are sent to it again, in
  case a message was lost. When a stream to or from a peer breaks, the driver
  sends it our whole wantlist for it at once (``wantlist_for``, a ``full``
  message: the spec's "full wantlist").
* Deadline: a want fails (``WantFailed``) when its session made no progress
  for the session's ``timeout_s`` and the want is at least that old.
* Nobody has it: a want fails early (``WantFailed`` with ``all_dont_have``)
  when every connected peer it may ask answered DONT_HAVE and none said HAVE,
  for ``dont_have_settle_s`` (a peer that connects meanwhile is asked first).
  Only sessions open to any peer do this; a session restricted to given peers
  (cluster holders, expected to get the block) waits for its deadline.
* When a block arrives, every other peer with the want still open gets a
  cancel: a want-block in flight, or a want-have it has not answered (one it
  answered HAVE is no longer on its ledger).
"""

from __future__ import annotations

from collections.abc import Iterable

from pinfold.blockstore.cid import CID, cid_key

from pinfold.daemon.p2p.bitswap.client_types import (
    Action,
    ClientConfig,
    Peer,
    SendWants,
    WantFailed,
)
from pinfold.daemon.p2p.bitswap.message import BlockPresence, PresenceType, WantEntry, WantType
from pinfold.daemon.p2p.bitswap.routing import (
    WantRouter,
    Sends,
    WantRecord,
    SessionRecord,
    entry,
    send_actions,
)
from pinfold.daemon.p2p.bitswap.schedule import PeerPerf

__all__ = [
    "Action",
    "ClientConfig",
    "SendWants",
    "WantFailed",
    "WantManager",
]


class WantManager(WantRouter):
    """Our wantlist across sessions and peers (pure state machine).

    ``counters`` (from ``WantRouter``) counts late re-asks, moved wants and
    rebroadcasts.
    """

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
        self._sessions[sid] = SessionRecord(
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
        cancels: Sends = {}
        for key in s.wants:
            w = self._wants.get(key)
            if w is None:
                continue
            if sid in w.sessions:
                w.sessions.remove(sid)
            if not w.sessions:
                self._drop(w, cancels)
        return send_actions(cancels)

    def want(self, sid: int, cids: Iterable[CID], now: float) -> list[Action]:
        """Add wants to session ``sid`` (CIDs already wanted are shared, not re-sent).

        Raises:
            KeyError: unknown session.
            OverflowError: more than ``max_wants`` wants outstanding.
        """
        s = self._sessions[sid]
        sends: Sends = {}
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
            w = WantRecord(cid, key, now, sid)
            self._wants[key] = w
            s.wants.add(key)
            self._schedule(w, now, sends)
        return send_actions(sends)

    def session_wants(self, sid: int) -> int:
        """Wants of ``sid`` not yet received."""
        s = self._sessions.get(sid)
        return len(s.wants) if s else 0

    # ------------------------------------------------------------ peers

    def peer_connected(self, peer: Peer, now: float) -> list[Action]:
        """A peer is connected: it is asked (want-have) for every want it may be
        asked for, and wants waiting for a holder may go to it."""
        if peer in self.scheduler:
            return []
        self.scheduler.add_peer(peer, now)
        sends: Sends = {}
        for w in self._wants.values():
            if peer in w.have_asked or not self._may_ask(w, peer):
                continue
            w.have_asked[peer] = now
            sends.setdefault(peer, []).append(entry(w, WantType.HAVE))
        if sends:
            self.counters["rebroadcasts_connect"] += 1
            self.counters["rebroadcast_wants"] += len(sends[peer])
        return send_actions(sends)

    def peer_disconnected(self, peer: Peer, now: float) -> list[Action]:
        """A peer is gone: its in-flight wants go elsewhere."""
        if peer not in self.scheduler:
            return []
        keys = self.scheduler.remove_peer(peer)
        sends: Sends = {}
        for s in self._sessions.values():
            s.useful.pop(peer, None)
        for w in self._wants.values():
            w.have_peers.discard(peer)
            w.have_asked.pop(peer, None)
        for key in keys:
            w = self._wants.get(key)
            if w is None or peer not in w.block_peers:
                continue
            del w.block_peers[peer]
            if not w.block_peers:
                self.counters["wants_moved"] += 1
                self._schedule(w, now, sends)
        self._drain_queue(now, sends)
        return send_actions(sends)

    def connected(self) -> list[Peer]:
        """Peers the manager knows as connected."""
        return self.scheduler.peers()

    # ------------------------------------------------------------ input

    def is_wanted(self, key: bytes) -> bool:
        """True when a block with store key ``key`` is wanted now."""
        return key in self._wants

    def wanted_cid(self, key: bytes) -> CID | None:
        """The CID wanted under ``key``, if any."""
        w = self._wants.get(key)
        return w.cid if w else None

    def sessions_wanting(self, keys: Iterable[bytes]) -> set[int]:
        """The IDs of the sessions that want any of the store keys ``keys`` now."""
        out: set[int] = set()
        for key in keys:
            w = self._wants.get(key)
            if w is not None:
                out.update(w.sessions)
        return out

    def on_presences(self, peer: Peer, presences: Iterable[BlockPresence], now: float) -> list[Action]:
        """HAVE / DONT_HAVE answers from ``peer``."""
        if peer not in self.scheduler:
            return []
        self.scheduler.heard(peer, now)
        sends: Sends = {}
        for p in presences:
            key = cid_key(p.cid)
            w = self._wants.get(key)
            if w is None:
                if p.type == PresenceType.HAVE:
                    # a late HAVE for a block already received still shows the peer is useful
                    self._mark_useful(self._done.get(key, ()), peer)
                continue
            if p.type == PresenceType.HAVE:
                w.have_peers.add(peer)
                w.dont_have.discard(peer)
                self._mark_useful(w.sessions, peer)
                if not w.block_peers:
                    self._schedule(w, now, sends)
                continue
            w.dont_have.add(peer)
            w.have_peers.discard(peer)
            if peer in w.block_peers:
                self._release(peer, w)
                if not w.block_peers:
                    self.counters["wants_moved"] += 1
                    self._schedule(w, now, sends)
                self._drain_queue(now, sends)
            elif not w.block_peers and not w.queued:
                self._schedule(w, now, sends)
            if w.exhausted_at is None and self._exhausted(w):
                w.exhausted_at = now
        return send_actions(sends)

    def on_block(self, peer: Peer, key: bytes, now: float,
                 nbytes: int = 0) -> tuple[CID, tuple[int, ...], list[Action]] | None:
        """A verified block with store key ``key`` (``nbytes`` long) arrived from ``peer``.

        Returns:
            None when the block is not wanted (unsolicited or a duplicate);
            else (its CID, the sessions that wanted it, actions: cancels to the
            other peers asked, and the next wants for freed peer slots).
        """
        self.scheduler.delivered(peer, key, now, nbytes)
        w = self._wants.pop(key, None)
        if w is None:
            # a duplicate still proves the peer holds the session's data
            if peer in self.scheduler:
                self._mark_useful(self._done.get(key, ()), peer)
            return None
        w.queued = False  # removed lazily from the queue
        self._late.pop(key, None)
        self._done[key] = tuple(w.sessions)
        if len(self._done) > 4096:
            self._done.popitem(last=False)
        # cancels only where the want is still open: a want-block in flight, or a
        # want-have not answered yet (a server forgets a want-have once it said
        # HAVE, as boxo's engine does; a cancel per block to every holder that
        # said HAVE was most of the traffic to holders not in use)
        open_at = [p for p in w.have_asked
                   if p != peer and p in self.scheduler and p not in w.dont_have
                   and (p in w.block_peers or p not in w.have_peers)]
        for p in list(w.block_peers):
            self._release(p, w)
        for sid in w.sessions:
            s = self._sessions.get(sid)
            if s is None:
                continue
            s.wants.discard(key)
            s.last_progress = now
        if peer in self.scheduler:
            self._mark_useful(w.sessions, peer)
        cancels: Sends = {}
        entry = WantEntry(cid=w.cid, cancel=True)
        for p in open_at:
            cancels.setdefault(p, []).append(entry)
        self._drain_queue(now, cancels)
        return w.cid, tuple(w.sessions), send_actions(cancels)

    def tick(self, now: float) -> list[Action]:
        """Periodic work: move the wants of silent peers, ask a second peer for
        late blocks, move work off slow holders, fail wants past their deadline
        or that nobody has."""
        sends: Sends = {}
        for peer in self.scheduler.silent(now):
            self._move_off(peer, now, sends)
        for _peer, key in self.scheduler.late(now):
            self._late[key] = None
        self._reask_late(now, sends)
        self._rebalance(now, sends)
        failed, early = self._due(now)
        actions: list[Action] = []
        for w in failed:
            actions.append(
                WantFailed(
                    cid=w.cid,
                    sessions=tuple(w.sessions),
                    timeout_s=max(
                        (self._sessions[sid].timeout_s for sid in w.sessions if sid in self._sessions),
                        default=0.0,
                    ),
                    peers_asked=tuple(sorted(set(w.have_asked) | w.dont_have, key=str)),
                    dont_have=tuple(sorted(w.dont_have, key=str)),
                    all_dont_have=w.key in early,
                )
            )
            for sid in w.sessions:
                s = self._sessions.get(sid)
                if s is not None:
                    s.wants.discard(w.key)
            self._drop(w, sends)
        self._drain_queue(now, sends)
        return send_actions(sends) + actions

    def rebroadcast(self, now: float, min_age_s: float) -> list[Action]:
        """Send again every want asked of a peer at least ``min_age_s`` ago and
        still open (want-block where one is in flight to it, else want-have):
        a lost message must not leave a want waiting for ever.

        Returns:
            One ``SendWants`` per peer with such wants.
        """
        sends: Sends = {}
        for w in self._wants.values():
            for peer, at in w.have_asked.items():
                if now - at < min_age_s or peer in w.have_peers and peer not in w.block_peers:
                    continue
                w.have_asked[peer] = now
                kind = WantType.BLOCK if peer in w.block_peers else WantType.HAVE
                sends.setdefault(peer, []).append(entry(w, kind))
        for entries in sends.values():
            self.counters["rebroadcasts_timer"] += 1
            self.counters["rebroadcast_wants"] += len(entries)
        return send_actions(sends)

    def machine(self, idle_cores: float | None, loop_busy: float | None) -> None:
        """The machine's idle CPU cores and the receiver's event-loop busy
        fraction since the last call (``admission.HolderAdmission.machine``)."""
        self.scheduler.admission.machine(idle_cores, loop_busy)

    # ------------------------------------------------------------ views

    def wantlist_size(self) -> int:
        """Blocks wanted now."""
        return len(self._wants)

    def outstanding(self, peer: Peer) -> int:
        """Want-blocks in flight to ``peer``."""
        return self.scheduler.in_flight(peer)

    def perf(self) -> list[PeerPerf]:
        """What the scheduler measured of each connected peer."""
        out = []
        for p in self.scheduler.peers():
            perf = self.scheduler.perf(p)
            if perf is not None:
                out.append(perf)
        return out

    def wantlist_for(self, peer: Peer) -> list[WantEntry]:
        """Every want open with ``peer``, for a full wantlist after our messages to
        it, or its blocks to us, may have been lost (a stream or connection broke).

        Want-blocks in flight to the peer go as want-block, want-haves it has not
        answered as want-have (both with sendDontHave).
        """
        if peer not in self.scheduler:
            return []
        out: list[WantEntry] = []
        for w in self._wants.values():
            if peer in w.block_peers:
                out.append(entry(w, WantType.BLOCK))
            elif peer in w.have_asked and peer not in w.have_peers and peer not in w.dont_have:
                out.append(entry(w, WantType.HAVE))
        return out

    def useful_peers(self, sid: int) -> list[Peer]:
        """Peers that sent a block or said HAVE in session ``sid``."""
        s = self._sessions.get(sid)
        return list(s.useful) if s else []

    # ------------------------------------------------------------ internals
