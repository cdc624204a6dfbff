"""Pin health accounting: how each pin stands against its rmin/rmax, and the counters.

Owns the per-pin health codes (``classify``), the running counts behind
``cluster status`` and the metrics (``Accounting``), the repair-duration
histogram and the value types the manager reports (``ManagerStats``,
``ClusterStatus``, ``PeerInfo``). Pure: no trio, no I/O; time comes in as
arguments. Imports replication's types and holdings only.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from pinfold.replication.holdings import ACTIVE_STATES
from pinfold.replication.types import (
    PeerHealth,
    PeerStatus,
    Pin,
    PinState,
    ReportAction,
    cid_text,
)

__all__ = [
    "AT",
    "ERROR_FLAG",
    "OVER",
    "REPAIRING_FLAG",
    "REPAIR_BUCKETS",
    "SHORT_FLAG",
    "UNDER",
    "Accounting",
    "ClusterStatus",
    "Counters",
    "ManagerStats",
    "PeerInfo",
    "PinHealth",
    "classify",
    "empty_stats",
    "health_of",
    "peer_info",
    "report_lines",
]

#: Repair-duration histogram buckets, seconds (grace periods of seconds to minutes,
#: fetches of seconds to hours).
REPAIR_BUCKETS: Final = (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
                         7200.0, 21600.0)
#: A pin's category (the low two bits of its code): healthy holders vs rmin/rmax.
UNDER, AT, OVER = 0, 1, 2
CATEGORY_NAMES: Final = ("under_replicated", "at_target", "over_replicated")
#: Flags over the category: some alive peer is fetching an under-replicated pin;
#: some holder reports pin_error; the alive/suspect holders (incl. fetching) are
#: fewer than rmin or short of the availability target.
REPAIRING_FLAG: Final = 4
ERROR_FLAG: Final = 8
SHORT_FLAG: Final = 16
_FLAGS: Final = (REPAIRING_FLAG, ERROR_FLAG, SHORT_FLAG)
_ALIVE: Final = PeerStatus.ALIVE
_SUSPECT: Final = PeerStatus.SUSPECT
_QUEUED: Final = PinState.QUEUED
_PINNING: Final = PinState.PINNING
_PINNED: Final = PinState.PINNED
_PIN_ERROR: Final = PinState.PIN_ERROR
#: How long ``min_availability`` is cached, seconds (metrics scrapes, status calls).
_MIN_AVAIL_TTL_S: Final = 2.0


@dataclass(frozen=True, slots=True, kw_only=True)
class PinHealth:
    """One pin's standing, as ``classify`` computed it.

    Attributes:
        code: category (``UNDER``/``AT``/``OVER``) | flags.
        availability: achieved availability of the healthy holders, in [0, 1].
        healthy: holders that are alive and report ``pinned``.
    """

    code: int
    availability: float
    healthy: int

    @property
    def category(self) -> int:
        """``UNDER``, ``AT`` or ``OVER``."""
        return self.code & 3


def classify(pin: Pin, states: Mapping[str, PinState], status: Mapping[str, PeerStatus],
             p: Mapping[str, float]) -> PinHealth:
    """How ``pin`` stands given its holders' ``states``, their ``status`` and estimates ``p``."""
    code, avail, healthy = health_of(pin, states, status, p)
    return PinHealth(code=code, availability=avail, healthy=healthy)


def health_of(pin: Pin, states: Mapping[str, PinState], status: Mapping[str, PeerStatus],
              p: Mapping[str, float]) -> tuple[int, float, int]:
    """``classify`` as a plain ``(code, availability, healthy)`` tuple (the per-pin hot path).

    Healthy holders: alive and ``pinned``. Active holders (for the short flag):
    alive or suspect and queued, pinning or pinned; an alive active holder that
    is not pinned yet is repairing. Availabilities are ``1 - prod(1 - p_i)``
    in the order of ``states``, so the figures equal ``availability`` of the
    same holders.
    """
    healthy = active = 0
    miss = miss_active = 1.0
    repairing = error = False
    for q, st in states.items():
        s = status.get(q)
        if s is _ALIVE:
            if st is _PINNED:
                x = 1.0 - p.get(q, 0.0)
                healthy += 1
                miss *= x
                active += 1
                miss_active *= x
                continue
            if st is _QUEUED or st is _PINNING:
                active += 1
                miss_active *= 1.0 - p.get(q, 0.0)
                repairing = True
                continue
        elif s is _SUSPECT and (st is _PINNED or st is _QUEUED or st is _PINNING):
            active += 1
            miss_active *= 1.0 - p.get(q, 0.0)
            continue
        if st is _PIN_ERROR:
            error = True
    rmin = pin.rmin
    if healthy < rmin:
        code = UNDER | REPAIRING_FLAG if repairing else UNDER
    else:
        code = OVER if healthy > pin.rmax else AT
    if error:
        code |= ERROR_FLAG
    target = pin.availability
    if active < rmin or (target is not None and 1.0 - miss_active < target - 1e-9):
        code |= SHORT_FLAG
    return code, 1.0 - miss, healthy


def report_lines(reports: Sequence[ReportAction], limit: int = 5) -> list[str]:
    """Log lines for newly raised ``reports``: the first ``limit`` one line each,
    the rest as one count by kind (a pass that finds thousands of pins short
    must not write thousands of lines while the node waits; ``cluster status``
    lists them)."""
    lines = [f"{cid_text(a.cid)}: {a.kind.value} ({a.holders} holders, {a.wanted} wanted)"
             for a in reports[:limit]]
    rest = Counter(a.kind.value for a in reports[limit:])
    if rest:
        lines.append(f"and {sum(rest.values())} more pins reported: " + ", ".join(
            f"{n} {kind}" for kind, n in sorted(rest.items())) + " (see cluster status)")
    return lines


@dataclass(frozen=True, slots=True, kw_only=True)
class ManagerStats:
    """A snapshot for metrics (``pinfold/daemon/cluster.py`` turns it into Prometheus families).

    Attributes:
        pins: live pins in the shared pinset.
        local_states: this node's pins by state (``remote`` = in the pinset, not held here).
        queue_length: pins queued or fetching here.
        cluster_pins: pins by healthy holders vs rmin/rmax: under_replicated,
            at_target, over_replicated (as this node sees the cluster).
        peers: cluster peers by state: alive, suspect, dead (this node included).
        repairs: repair fetches by outcome: started, completed, failed.
        repair_buckets: cumulative ``(upper bound s, count)`` of repair durations
            (a holder declared dead -> the pin back at rmin).
        repair_count, repair_sum_s: histogram count and sum, seconds.
        min_availability: the lowest achieved availability over all pins (1 when none).
        bytes_fetched: bytes fetched for pins, bytes.
        syncs, sync_failures: anti-entropy sessions run and failed.
        rejected_messages: gossip messages dropped as malformed or forged.
    """

    pins: int
    local_states: dict[str, int]
    queue_length: int
    cluster_pins: dict[str, int]
    peers: dict[str, int]
    repairs: dict[str, int]
    repair_buckets: tuple[tuple[float, int], ...]
    repair_count: int
    repair_sum_s: float
    min_availability: float
    bytes_fetched: int
    syncs: int
    sync_failures: int
    rejected_messages: int


def empty_stats() -> ManagerStats:
    """The snapshot before the first heartbeat: every count zero."""
    return ManagerStats(
        pins=0, local_states=dict.fromkeys([s.value for s in PinState], 0), queue_length=0,
        cluster_pins=dict.fromkeys(CATEGORY_NAMES, 0),
        peers={"alive": 0, "suspect": 0, "dead": 0},
        repairs={"started": 0, "completed": 0, "failed": 0},
        repair_buckets=tuple((b, 0) for b in (*REPAIR_BUCKETS, math.inf)), repair_count=0,
        repair_sum_s=0.0, min_availability=1.0, bytes_fetched=0, syncs=0, sync_failures=0,
        rejected_messages=0)


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerInfo:
    """One cluster peer for ``cluster peers``."""

    peer_id: str
    state: PeerStatus
    p: float
    capacity_bytes: int
    free_bytes: int
    pin_queue_len: int
    pins: int
    addresses: tuple[str, ...]
    last_seen_s: float

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"peer_id": self.peer_id, "state": self.state.value, "p": self.p,
                "capacity_bytes": self.capacity_bytes, "free_bytes": self.free_bytes,
                "pin_queue_len": self.pin_queue_len, "pins": self.pins,
                "addresses": list(self.addresses), "last_seen_s": self.last_seen_s}


def peer_info(rec: PeerHealth, states: Mapping[bytes, PinState], now: float) -> PeerInfo:
    """``PeerInfo`` of a peer's ``PeerHealth`` whose peer reports ``states``, at ``now``."""
    info = rec.info
    held = sum(1 for st in states.values() if st is PinState.PINNED)
    return PeerInfo(
        peer_id=rec.peer_id, state=rec.status, p=rec.p,
        capacity_bytes=info.capacity_bytes if info else 0,
        free_bytes=info.free_bytes if info else 0,
        pin_queue_len=info.pin_queue_len if info else 0, pins=held,
        addresses=info.addresses if info else (), last_seen_s=max(0.0, now - rec.last_seen))


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterStatus:
    """``cluster status``: the pinset's health as this node sees it.

    Attributes:
        pins: live pins.
        under_replicated: pins with fewer healthy holders than rmin.
        repairing: of those, pins some peer is fetching now.
        errors: pins some holder reports pin_error for.
        at_target: pins with rmin..rmax healthy holders.
        over: pins with more than rmax healthy holders.
        min_availability: lowest achieved availability (1 when no pins).
        under_replicated_cids: up to 100 of the under-replicated CIDs (text).
        error_cids: up to 100 CIDs with errors (text).
    """

    pins: int
    under_replicated: int
    repairing: int
    errors: int
    at_target: int
    over: int
    min_availability: float
    under_replicated_cids: tuple[str, ...]
    error_cids: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"pins": self.pins, "under_replicated": self.under_replicated,
                "repairing": self.repairing, "errors": self.errors,
                "at_target": self.at_target, "over": self.over,
                "min_availability": self.min_availability,
                "under_replicated_cids": list(self.under_replicated_cids),
                "error_cids": list(self.error_cids)}


@dataclass(slots=True)
class Counters:
    """Event counters of the manager (monotonic)."""

    repairs: Counter[str] = field(default_factory=Counter)
    bytes_fetched: int = 0
    syncs: int = 0
    sync_failures: int = 0
    rejected: int = 0
    plans: int = 0
    planned_cids: int = 0


class Accounting:
    """Running counts of pins by health code, repair timing and the manager's counters.

    Only pins that are not simply at target are stored (a million healthy pins
    cost nothing here); the lowest availability among those at target is kept
    as a running minimum, recomputed by each full pass (``begin_full_pass`` /
    ``end_full_pass``).
    """

    def __init__(self) -> None:
        self.info: dict[bytes, int] = {}
        self.avail: dict[bytes, float] = {}
        self.category_counts = [0, 0, 0]
        self.flag_counts = Counter[int]()
        self.clean_min = 1.0
        self._clean_min_next: float | None = None
        self.repair_since: dict[bytes, float] = {}
        self.repair_hist = [0] * len(REPAIR_BUCKETS)
        self.repair_count = 0
        self.repair_sum = 0.0
        self.counters = Counters()
        self._min_avail_cache: tuple[float, float] | None = None

    # -- per pin

    def forget(self, cid: bytes) -> None:
        """Drop ``cid``'s health record (before re-recording it, or when unpinned)."""
        code = self.info.pop(cid, None)
        if code is None:
            return
        self.avail.pop(cid, None)
        self._count(code, -1)

    def record(self, cid: bytes, health: PinHealth) -> None:
        """Count ``cid`` with its new ``health`` (after ``forget``)."""
        self._record(cid, health.code, health.availability)

    def assess(self, cid: bytes, pin: Pin, states: Mapping[str, PinState],
               status: Mapping[str, PeerStatus], p: Mapping[str, float],
               now: float) -> tuple[int, int]:
        """Re-classify live ``pin`` (``health_of``), re-count it and, once it is no
        longer under-replicated, time its repair at wall time ``now``.

        The same as ``forget`` + ``record`` (+ ``repair_done``) without building a
        ``PinHealth``; a pin whose code did not change costs no count updates.

        Returns:
            ``(code, healthy)``: the new health code and the healthy holders.
        """
        code, avail, healthy = health_of(pin, states, status, p)
        old = self.info.get(cid)
        if old is None or old != code:
            if old is not None:
                del self.info[cid]
                self.avail.pop(cid, None)
                self._count(old, -1)
            self._record(cid, code, avail)
        elif code != AT:
            self.avail[cid] = avail
        if code & 3 != UNDER and self.repair_since:
            self.repair_done(cid, now)
        return code, healthy

    def _record(self, cid: bytes, code: int, avail: float) -> None:
        if code == AT:
            if avail < self.clean_min:
                self.clean_min = avail
            nxt = self._clean_min_next
            if nxt is not None and avail < nxt:
                self._clean_min_next = avail
            return
        self._count(code, 1)
        self.info[cid] = code
        self.avail[cid] = avail

    def _count(self, code: int, delta: int) -> None:
        self.category_counts[code & 3] += delta
        for flag in _FLAGS:
            if code & flag:
                self.flag_counts[flag] += delta

    def begin_full_pass(self) -> None:
        """A full pass starts: the running minimum of pins at target is recomputed."""
        self._clean_min_next = 1.0

    def end_full_pass(self) -> None:
        """Planning of a batch ended: adopt a recomputed minimum, if a full pass ran."""
        if self._clean_min_next is not None:
            self.clean_min, self._clean_min_next = self._clean_min_next, None

    def short_cids(self) -> set[bytes]:
        """Pins short of holders (re-planned when a peer joins or comes back)."""
        return {c for c, code in self.info.items() if code & SHORT_FLAG}

    # -- repairs

    def repair_started(self, cid: bytes, at: float) -> None:
        """A holder of ``cid`` was declared dead at wall time ``at`` (first one counts)."""
        self.repair_since.setdefault(cid, at)

    def repair_forget(self, cid: bytes) -> None:
        """``cid`` is unpinned or expired: its repair is not timed."""
        self.repair_since.pop(cid, None)

    def repair_done(self, cid: bytes, now: float) -> None:
        """``cid`` is back at rmin at wall time ``now``: observe its repair duration."""
        since = self.repair_since.pop(cid, None)
        if since is not None:
            self.observe_repair(max(0.0, now - since))

    def observe_repair(self, seconds: float) -> None:
        """Add one repair duration to the histogram."""
        for i, b in enumerate(REPAIR_BUCKETS):
            if seconds <= b:
                self.repair_hist[i] += 1
                break
        self.repair_count += 1
        self.repair_sum += seconds

    def repair_buckets(self) -> tuple[tuple[float, int], ...]:
        """Cumulative ``(upper bound s, count)``, ending with ``(inf, count)``."""
        cum = 0
        buckets = []
        for b, n in zip(REPAIR_BUCKETS, self.repair_hist, strict=True):
            cum += n
            buckets.append((b, cum))
        buckets.append((math.inf, self.repair_count))
        return tuple(buckets)

    # -- summaries

    def invalidate(self) -> None:
        """Health changed: the next ``min_availability`` recomputes."""
        self._min_avail_cache = None

    def min_availability(self, pins: int, now: float) -> float:
        """The lowest achieved availability over ``pins`` live pins (cached 2 s of ``now``)."""
        cached = self._min_avail_cache
        if cached is not None and now - cached[0] < _MIN_AVAIL_TTL_S:
            return cached[1]
        low = min(self.avail.values(), default=1.0)
        if pins > len(self.avail):
            low = min(low, self.clean_min)
        self._min_avail_cache = (now, low)
        return low

    def at_target(self, pins: int) -> int:
        """Pins at target among ``pins`` live pins."""
        c = self.category_counts
        return max(0, pins - c[UNDER] - c[OVER])

    def cluster_pins(self, pins: int) -> dict[str, int]:
        """``{under_replicated, at_target, over_replicated}`` counts."""
        return {"under_replicated": self.category_counts[UNDER],
                "at_target": self.at_target(pins),
                "over_replicated": self.category_counts[OVER]}

    def cluster_status(self, pins: int, now: float) -> ClusterStatus:
        """``cluster status`` for ``pins`` live pins (as of each pin's last planning)."""
        under: list[str] = []
        errors: list[str] = []
        repairing = 0
        for cid, code in self.info.items():
            if code & 3 == UNDER and len(under) < 100:
                under.append(cid_text(cid))
            if code & REPAIRING_FLAG:
                repairing += 1
            if code & ERROR_FLAG and len(errors) < 100:
                errors.append(cid_text(cid))
        return ClusterStatus(
            pins=pins, under_replicated=self.category_counts[UNDER], repairing=repairing,
            errors=self.flag_counts[ERROR_FLAG], at_target=self.at_target(pins),
            over=self.category_counts[OVER], min_availability=self.min_availability(pins, now),
            under_replicated_cids=tuple(under), error_cids=tuple(errors))

    def stats(self, *, pins: int, local_counts: Mapping[PinState, int],
              statuses: Iterable[PeerStatus], now: float) -> ManagerStats:
        """The metrics snapshot: ``pins`` live pins, this node's ``local_counts`` by
        state (``remote`` not counted), the peers' ``statuses``, at ``now``."""
        local = {s.value: local_counts.get(s, 0) for s in PinState if s is not PinState.REMOTE}
        held = sum(local_counts.get(s, 0) for s in ACTIVE_STATES | {PinState.PIN_ERROR})
        local["remote"] = max(0, pins - held)
        peers = {"alive": 0, "suspect": 0, "dead": 0}
        for st in statuses:
            peers[st.value] += 1
        c = self.counters
        return ManagerStats(
            pins=pins, local_states=local,
            queue_length=local_counts.get(PinState.QUEUED, 0)
            + local_counts.get(PinState.PINNING, 0),
            cluster_pins=self.cluster_pins(pins), peers=peers,
            repairs={k: c.repairs[k] for k in ("started", "completed", "failed")},
            repair_buckets=self.repair_buckets(), repair_count=self.repair_count,
            repair_sum_s=self.repair_sum, min_availability=self.min_availability(pins, now),
            bytes_fetched=c.bytes_fetched, syncs=c.syncs, sync_failures=c.sync_failures,
            rejected_messages=c.rejected)
