"""Cluster membership and health from heartbeats (DESIGN.md "Replication").

``HealthView`` reads heartbeats and decides, for any ``now``, whether each
peer is alive, suspect or dead, and estimates its availability p_i.

Liveness (IPFS Cluster's ping metric with TTL = 2 x interval, ANCHORS.md 1.4):

- ``alive``   while ``now - last_seen < ttl`` (``peer_ttl_s``, default
  2 x ``heartbeat_interval_s``);
- ``suspect`` for the next ``repair_grace_s`` seconds;
- ``dead``    after that: the planner no longer counts the peer's copies and
  repairs them elsewhere.

``tick(now)`` returns alerts - ``suspect``, ``dead`` - at most once each per
failure episode, and ``observe`` returns ``recovered`` when a heartbeat ends
the episode (hysteresis: a peer that stays down raises one alert, not one per
check).

Availability p_i is an exponentially decayed fraction of heartbeats: each
heartbeat carries ``seq``, the number of heartbeats its sender has sent, so
the gap between two received heartbeats counts the heartbeats the peer *sent*
(it was running) against those expected from the elapsed time (``elapsed /
interval``). A gap no longer than the TTL counts as fully up (the peer was
alive throughout by the definition above), so late or lost gossip messages do
not lower p_i; silence beyond the TTL and restarts do. Both
counts decay with half-life ``p_halflife_s`` and start as if the peer had been
observed for one half-life at ``p_prior``, so a new peer starts at the prior
and the estimate follows its recent behaviour. ``p`` also counts the silence
since the last heartbeat (beyond the TTL) as missed heartbeats.

Time: ``now`` is the receiver's clock in seconds (the same base for every
call); heartbeats carry no sender time, so clock skew between peers does not
matter here.

Pure: no trio, no clock. ``to_bytes``/``from_bytes`` persist the estimates;
``encode_heartbeat``/``decode_heartbeat`` are the gossip wire format.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final

import msgpack

from pinfold.replication.errors import InvalidPeerID, InvalidPin, PinsetDecodeError
from pinfold.replication.pinset import msgpack_unpack
from pinfold.replication.types import HealthEvent, HealthEventKind, Heartbeat, PeerHealth, PeerStatus, check_peer_id

__all__ = [
    "HealthConfig",
    "HealthStats",
    "HealthView",
    "decode_heartbeat",
    "encode_heartbeat",
]

_FORMAT_VERSION: Final = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthConfig:
    """Liveness and availability-estimate settings (mirror ``[replication]`` config).

    Attributes:
        heartbeat_interval_s: how often peers publish heartbeats, seconds (> 0).
        peer_ttl_s: silence after which a peer is suspect, seconds; 0 means
            2 x heartbeat_interval_s (IPFS Cluster: TTL = 2 x ping interval).
        repair_grace_s: further silence after which it is dead, seconds (>= 0).
        p_prior: availability assumed for a peer not yet observed, in (0, 1].
        p_halflife_s: half-life of the decayed heartbeat counts, seconds: how
            far back the p_i estimate looks (default one day).

    Raises:
        InvalidPin: a value is out of range; the message names it.
    """

    heartbeat_interval_s: float = 5.0
    peer_ttl_s: float = 0.0
    repair_grace_s: float = 60.0
    p_prior: float = 0.9
    p_halflife_s: float = 86400.0

    def __post_init__(self) -> None:
        def bad(name: str, cond: bool) -> None:
            if not cond:
                raise InvalidPin(f"{name}: out of range, got {getattr(self, name)!r}")

        for name in ("heartbeat_interval_s", "peer_ttl_s", "repair_grace_s", "p_prior",
                     "p_halflife_s"):
            v = getattr(self, name)
            if type(v) not in (int, float) or not math.isfinite(v):
                raise InvalidPin(f"{name}: must be a finite number, got {v!r}")
        bad("heartbeat_interval_s", self.heartbeat_interval_s > 0)
        bad("peer_ttl_s", self.peer_ttl_s >= 0)
        bad("repair_grace_s", self.repair_grace_s >= 0)
        bad("p_prior", 0 < self.p_prior <= 1)
        bad("p_halflife_s", self.p_halflife_s > 0)

    @property
    def ttl_s(self) -> float:
        """The suspect threshold, seconds (2 x heartbeat when ``peer_ttl_s`` is 0)."""
        return self.peer_ttl_s or 2.0 * self.heartbeat_interval_s


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthStats:
    """Peer counts by status at one moment (metrics, ``cluster peers``)."""

    alive: int
    suspect: int
    dead: int


class _Peer:
    __slots__ = (
        "incarnation",
        "info",
        "last_seen",
        "peer_id",
        "reported",
        "seq",
        "t",
        "t_upd",
        "u",
    )

    def __init__(self, peer_id: str, info: Heartbeat | None, incarnation: int, seq: int,
                 last_seen: float, u: float, t: float) -> None:
        self.peer_id = peer_id
        self.info = info
        self.incarnation = incarnation
        self.seq = seq
        self.last_seen = last_seen
        self.u = u  # decayed heartbeats sent
        self.t = t  # decayed heartbeats expected
        self.t_upd = last_seen
        self.reported = PeerStatus.ALIVE


class HealthView:
    """What this node knows about every peer's liveness, capacity and availability.

    Reads heartbeats (``observe``); answers ``status``, ``p``, ``info``,
    ``record(s)`` for any ``now``; raises alerts (``tick``). Peers never heard
    of are unknown (``status`` returns None) and are not allocated pins.

    Args:
        config: thresholds and estimator settings.
    """

    def __init__(self, config: HealthConfig | None = None) -> None:
        self.config = config or HealthConfig()
        c = self.config
        self._ttl = c.ttl_s
        self._dead_after = c.ttl_s + c.repair_grace_s
        self._interval = c.heartbeat_interval_s
        self._decay = math.log(2.0) / c.p_halflife_s
        self._prior_weight = c.p_halflife_s / c.heartbeat_interval_s
        self._peers: dict[str, _Peer] = {}

    def reconfigure(self, config: HealthConfig) -> None:
        """Take new thresholds (a config reload); known peers and their estimates stay.

        Statuses follow the new TTL and grace from the next read; a peer already
        reported dead under the old ones stays reported until it recovers.
        """
        self.config = c = config
        self._ttl = c.ttl_s
        self._dead_after = c.ttl_s + c.repair_grace_s
        self._interval = c.heartbeat_interval_s
        self._decay = math.log(2.0) / c.p_halflife_s
        self._prior_weight = c.p_halflife_s / c.heartbeat_interval_s

    def __len__(self) -> int:
        return len(self._peers)

    def __contains__(self, peer_id: object) -> bool:
        return peer_id in self._peers

    def peers(self) -> list[str]:
        """Known peer IDs, sorted."""
        return sorted(self._peers)

    # ------------------------------------------------------------ heartbeats

    def observe(self, hb: Heartbeat, now: float) -> list[HealthEvent]:
        """Record a heartbeat received at ``now``.

        A heartbeat older than the last one seen from the same incarnation (a
        duplicate or reordered gossip message) is ignored; a higher
        ``incarnation`` means the peer restarted.

        Args:
            hb: the heartbeat.
            now: receive time, seconds; not earlier than the previous call's.

        Returns:
            ``[recovered]`` when this ends a suspect/dead episode, else ``[]``.
        """
        rec = self._peers.get(hb.peer_id)
        if rec is None:
            w = self._prior_weight
            self._peers[hb.peer_id] = _Peer(hb.peer_id, hb, hb.incarnation, hb.seq, now,
                                            self.config.p_prior * w, w)
            return []
        if hb.incarnation < rec.incarnation or (
            hb.incarnation == rec.incarnation and hb.seq <= rec.seq and rec.info is not None
        ):
            return []
        sent = hb.seq - rec.seq if hb.incarnation == rec.incarnation else 1
        elapsed = max(0.0, now - rec.t_upd)
        expected = elapsed / self._interval
        if hb.incarnation == rec.incarnation and elapsed <= self._ttl:
            # The peer never went quiet for a TTL, so it counted as alive the
            # whole time: a late heartbeat (a busy sender, a slow relay) is not
            # downtime. Only silence beyond the TTL, or a restart, lowers p_i.
            sent = max(1.0, expected)
        else:
            sent = max(1.0, min(float(sent), expected + 1.0))
        expected = max(expected, sent)
        d = math.exp(-self._decay * elapsed)
        rec.u = rec.u * d + sent
        rec.t = rec.t * d + expected
        rec.u = min(rec.u, rec.t)
        rec.t_upd = now
        rec.incarnation, rec.seq, rec.info = hb.incarnation, hb.seq, hb
        rec.last_seen = max(rec.last_seen, now)
        if rec.reported is not PeerStatus.ALIVE:
            rec.reported = PeerStatus.ALIVE
            return [HealthEvent(peer_id=hb.peer_id, kind=HealthEventKind.RECOVERED, at=now)]
        return []

    def touch(self, peer_id: str, now: float) -> list[HealthEvent]:
        """Record that ``peer_id`` answered a request just now (a direct probe).

        Heartbeats travel by gossip; when gossip to us stalls (seen under
        connection resets and partitions) a peer that still answers a sync
        round trip is alive. Its status is refreshed as by a heartbeat, without
        new info or a change to p_i's heartbeat counts.

        Returns:
            ``[recovered]`` when this ends a suspect/dead episode, else ``[]``;
            ``[]`` for an unknown peer (it has never sent a heartbeat).
        """
        rec = self._peers.get(peer_id)
        if rec is None:
            return []
        rec.last_seen = max(rec.last_seen, now)
        if rec.reported is not PeerStatus.ALIVE:
            rec.reported = PeerStatus.ALIVE
            return [HealthEvent(peer_id=peer_id, kind=HealthEventKind.RECOVERED, at=now)]
        return []

    def forget(self, peer_id: str) -> None:
        """Drop a peer (it left the cluster for good). Unknown peers are ignored."""
        self._peers.pop(peer_id, None)

    # ----------------------------------------------------------------- reads

    def _status(self, rec: _Peer, now: float) -> PeerStatus:
        age = now - rec.last_seen
        if age < self._ttl:
            return PeerStatus.ALIVE
        if age < self._dead_after:
            return PeerStatus.SUSPECT
        return PeerStatus.DEAD

    def status(self, peer_id: str, now: float) -> PeerStatus | None:
        """alive/suspect/dead at ``now``, or None for a peer never heard of."""
        rec = self._peers.get(peer_id)
        return None if rec is None else self._status(rec, now)

    def statistics(self, now: float) -> HealthStats:
        """How many known peers are alive, suspect and dead at ``now``."""
        counts = dict.fromkeys(PeerStatus, 0)
        for rec in self._peers.values():
            counts[self._status(rec, now)] += 1
        return HealthStats(alive=counts[PeerStatus.ALIVE], suspect=counts[PeerStatus.SUSPECT],
                           dead=counts[PeerStatus.DEAD])

    def statuses(self, now: float) -> dict[str, PeerStatus]:
        """Every known peer's status at ``now``."""
        return {p: self._status(r, now) for p, r in self._peers.items()}

    def snapshot(self, now: float) -> tuple[dict[str, PeerStatus], dict[str, float],
                                            dict[str, Heartbeat | None]]:
        """``(status, p, info)`` dicts of every known peer at ``now``, in one pass (planner).

        ``p`` is ``p_stable``: an outage in progress is the business of the
        suspect/dead states and their grace period; if it also lowered p_i, an
        availability target would trigger repairs before the grace ran out.
        """
        status: dict[str, PeerStatus] = {}
        ps: dict[str, float] = {}
        info: dict[str, Heartbeat | None] = {}
        for pid, rec in self._peers.items():
            status[pid] = self._status(rec, now)
            ps[pid] = rec.u / rec.t if rec.t > 0 else self.config.p_prior
            info[pid] = rec.info
        return status, ps, info

    def p_stable(self, peer_id: str) -> float:
        """The availability estimate as of the peer's last heartbeat (``p_prior`` if unknown).

        Unlike ``p`` it ignores the silence since then; the planner uses it.
        """
        rec = self._peers.get(peer_id)
        if rec is None or rec.t <= 0:
            return self.config.p_prior
        return rec.u / rec.t

    def _p(self, rec: _Peer, now: float) -> float:
        elapsed = max(0.0, now - rec.t_upd)
        d = math.exp(-self._decay * elapsed)
        missing = max(0.0, elapsed - self._ttl) / self._interval
        denom = rec.t * d + missing
        return rec.u * d / denom if denom > 0 else self.config.p_prior

    def p(self, peer_id: str, now: float) -> float:
        """Estimated availability of a peer at ``now`` in [0, 1] (``p_prior`` if unknown).

        Counts the silence since the last heartbeat (beyond the TTL, the time a
        peer counts as alive without news) as missed heartbeats, so a peer that
        has been away a day shows it.
        """
        rec = self._peers.get(peer_id)
        return self.config.p_prior if rec is None else self._p(rec, now)

    def info(self, peer_id: str) -> Heartbeat | None:
        """The peer's latest heartbeat, or None."""
        rec = self._peers.get(peer_id)
        return None if rec is None else rec.info

    def record(self, peer_id: str, now: float) -> PeerHealth:
        """The peer's health at ``now``.

        Raises:
            KeyError: unknown peer.
        """
        rec = self._peers[peer_id]
        st = self._status(rec, now)
        return PeerHealth(
            peer_id=peer_id,
            status=st,
            last_seen=rec.last_seen,
            suspect_since=None if st is PeerStatus.ALIVE else rec.last_seen + self._ttl,
            p=self._p(rec, now),
            info=rec.info,
        )

    def records(self, now: float) -> list[PeerHealth]:
        """Every known peer's health at ``now``, sorted by peer ID."""
        return [self.record(p, now) for p in sorted(self._peers)]

    def next_transition(self, now: float) -> float | None:
        """The earliest time after ``now`` at which some peer's status changes, or None.

        A driver can sleep until then (or the next heartbeat) before ``tick``.
        """
        best: float | None = None
        for rec in self._peers.values():
            for edge in (rec.last_seen + self._ttl, rec.last_seen + self._dead_after):
                if edge > now and (best is None or edge < best):
                    best = edge
                    break
        return best

    def tick(self, now: float) -> list[HealthEvent]:
        """Alerts for peers that turned suspect or dead since the last tick.

        Each is raised once per episode; ``at`` is when the transition happened.
        Returned sorted by (at, peer ID).
        """
        events: list[HealthEvent] = []
        for pid, rec in self._peers.items():
            st = self._status(rec, now)
            if st is PeerStatus.ALIVE or st is rec.reported:
                continue
            if rec.reported is PeerStatus.ALIVE:
                events.append(HealthEvent(peer_id=pid, kind=HealthEventKind.SUSPECT,
                                          at=rec.last_seen + self._ttl))
            if st is PeerStatus.DEAD:
                events.append(HealthEvent(peer_id=pid, kind=HealthEventKind.DEAD,
                                          at=rec.last_seen + self._dead_after))
            rec.reported = st
        events.sort(key=lambda e: (e.at, e.peer_id))
        return events

    # --------------------------------------------------------- persistence

    def to_bytes(self) -> bytes:
        """The estimates and latest heartbeats as msgpack bytes (for LMDB)."""
        peers = [
            [r.peer_id, r.incarnation, r.seq, r.u, r.t,
             None if r.info is None else heartbeat_to_wire(r.info)]
            for r in sorted(self._peers.values(), key=lambda r: r.peer_id)
        ]
        return msgpack.packb({"v": _FORMAT_VERSION, "peers": peers}, use_bin_type=True)

    @classmethod
    def from_bytes(cls, data: bytes, config: HealthConfig | None, now: float) -> HealthView:
        """Restore a view saved by ``to_bytes``.

        Restored peers count as just seen at ``now`` (alive), so a restart does
        not trigger repairs; a peer that stays silent turns suspect one TTL
        later and dead after the grace period, as usual.

        Raises:
            PinsetDecodeError: malformed data.
        """
        obj = msgpack_unpack(data, "health")
        if type(obj) is not dict or set(obj) != {"v", "peers"} or obj["v"] != _FORMAT_VERSION:
            raise PinsetDecodeError("health: expected {v: 1, peers: [...]}")
        view = cls(config)
        if type(obj["peers"]) is not list:
            raise PinsetDecodeError("health: peers: expected a list")
        for i, item in enumerate(obj["peers"]):
            if type(item) is not list or len(item) != 6:
                raise PinsetDecodeError(f"health: peer {i}: expected 6 fields")
            pid, inc, seq, u, t, info = item
            try:
                check_peer_id(pid)
            except InvalidPeerID as exc:
                raise PinsetDecodeError(f"health: peer {i}: {exc}") from exc
            for name, v in (("incarnation", inc), ("seq", seq)):
                if type(v) is not int or v < 0:
                    raise PinsetDecodeError(f"health: peer {i}: {name}: expected an integer >= 0")
            for name, v in (("u", u), ("t", t)):
                if type(v) is not float or not math.isfinite(v) or v < 0:
                    raise PinsetDecodeError(f"health: peer {i}: {name}: expected a float >= 0")
            if u > t:
                raise PinsetDecodeError(f"health: peer {i}: more heartbeats seen than expected")
            hb = None if info is None else heartbeat_from_wire(info, f"health: peer {i}: info")
            if hb is not None and hb.peer_id != pid:
                raise PinsetDecodeError(f"health: peer {i}: info names another peer")
            view._peers[pid] = _Peer(pid, hb, inc, seq, now, u, t)
        return view


# ----------------------------------------------------------- heartbeat wire
#
# [peer_id, incarnation, seq, capacity, free, queue, [addr...], pinned, pinned_bytes, errors]


def heartbeat_to_wire(hb: Heartbeat) -> list[Any]:
    """The msgpack-ready list form of a heartbeat."""
    return [hb.peer_id, hb.incarnation, hb.seq, hb.capacity_bytes, hb.free_bytes,
            hb.pin_queue_len, list(hb.addresses), hb.pinned_count, hb.pinned_bytes,
            hb.error_count]


def heartbeat_from_wire(obj: Any, where: str = "heartbeat") -> Heartbeat:
    """Build a heartbeat from its list form, validating every field.

    Raises:
        PinsetDecodeError: wrong shape or a bad field.
    """
    if type(obj) is not list or len(obj) != 10 or type(obj[6]) is not list:
        raise PinsetDecodeError(f"{where}: expected a list of 10 fields")
    try:
        return Heartbeat(peer_id=obj[0], incarnation=obj[1], seq=obj[2], capacity_bytes=obj[3],
                         free_bytes=obj[4], pin_queue_len=obj[5], addresses=tuple(obj[6]),
                         pinned_count=obj[7], pinned_bytes=obj[8], error_count=obj[9])
    except (InvalidPin, InvalidPeerID) as exc:
        raise PinsetDecodeError(f"{where}: {exc}") from exc


def encode_heartbeat(hb: Heartbeat) -> bytes:
    """A heartbeat as msgpack bytes (the gossip message body)."""
    return msgpack.packb({"v": _FORMAT_VERSION, "hb": heartbeat_to_wire(hb)}, use_bin_type=True)


def decode_heartbeat(data: bytes) -> Heartbeat:
    """Decode and validate a heartbeat message.

    Raises:
        PinsetDecodeError: malformed.
    """
    obj = msgpack_unpack(data, "heartbeat")
    if type(obj) is not dict or set(obj) != {"v", "hb"} or obj["v"] != _FORMAT_VERSION:
        raise PinsetDecodeError("heartbeat: expected {v: 1, hb: [...]}")
    return heartbeat_from_wire(obj["hb"])
