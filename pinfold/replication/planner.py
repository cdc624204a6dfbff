"""The replication planner: a pure function from the cluster view to actions.

``plan(pinset, holdings, health, policy, now) -> list[Action]`` (STYLE.md 1).
The manager gathers the inputs, calls it, carries out the actions and feeds
the outcomes back into ``holdings``; the planner never does I/O, never reads a
clock and keeps no state, so the same inputs always give the same (sorted)
plan, whatever order the view was built in.

Per CID, from one node's point of view (``Policy.self_peer_id``; None plans
every peer's actions at once, as the simulator and tests do):

Who acts: in a node's own plan, only that node (whatever its status - it is
running); in a plan for every peer, only alive peers (a suspect or dead one
cannot act; it re-plans its CIDs when it is back).

1. No entry: the CID is not in the shared pinset; nothing is done (a local pin
   the cluster never knew is left alone).
2. Tombstone or expired pin (``expire_at <= now``): every holder releases its
   copy; for an expired pin the CID's closest alive peer (first in its
   ranking) writes the tombstone (``ExpireAction``).
3. Otherwise the *kept* holders are the peers that report queued, pinning or
   pinned and are alive or suspect. A suspect peer is still counted: its copy
   is repaired only after ``repair_grace_s``, when the peer turns dead.
   - Enough (at least ``rmin`` kept, and the availability target met if the
     pin has one): the desired holders are the kept ones. Nothing moves because
     the ranking changed: re-allocation happens only below rmin (IPFS
     Cluster's rmin/rmax hysteresis, ``allocate.go``).
   - More than ``rmax`` kept (a dead peer came back after its copy was
     repaired): the desired holders are the first ``rmax`` of the kept ones,
     pinned copies first, alive before suspect, then by an *unweighted*
     rendezvous order of (CID, peer), which no node's view changes (weights
     do: two holders each sure the other stays would both drop). With an availability target the
     upper bound is one more than the holders the target needs (counting the
     best-estimated ones first), so copies do not pile up to rmax either.
   - Not enough: the kept holders stay and peers are added from the CID's
     ranking (weighted rendezvous over alive peers; skipping peers that failed
     to pin it or lack room for ``size_bytes``) up to ``rmax`` - or, with an
     availability target, until ``1 - prod(1 - p_i) >= target`` with at least
     ``rmin``, at most ``rmax`` (p_i: ``HealthView.p_stable``, the estimate
     as of the peer's last heartbeat). New pins take this path (nobody holds
     them).
     With ``Policy.repair`` off only a pin nobody ever held is placed (IPFS
     Cluster's ``disable_repinning``).
   Each desired holder that does not hold the CID pins it (``PinAction``, with
   the alive pinned holders as fetch sources). A holder that is not desired
   releases its copy - at once if it is not pinned (queued, pinning,
   pin_error), and a pinned one only once every desired holder reports
   ``pinned`` and at least ``rmin`` of them are alive, so a drop never leaves
   fewer than rmin healthy copies. When the context says which peers' reports
   are *current* (``PlanContext.current``: a sync round trip with the peer
   completed since it came back, and the node has applied every state change
   the peer's last heartbeat advertised), a pinned copy is dropped only if
   every other desired holder is current. A node just restarted knows the
   others' states as they were before it stopped, and a partition that held
   bytes delivers heartbeats of a peer that died meanwhile: dropping on either
   stale view left pins at one copy with every node up (found by the cluster
   fault campaign).
   If fewer than rmin holders (or not the target) can be had, the closest alive
   peer reports it (``ReportAction``); only one peer acts on a CID's repair
   alerts, so there is no thundering herd (IPFS Cluster ``isClosest``).

No peer acts twice: only the desired newcomers pin, only the extras unpin, and
every peer computes the same desired set from the same view.

Incremental planning: ``plan_cids`` plans only the given CIDs;
``affected_cids`` finds the CIDs a change of some peers' health touches (those
they hold or are allocated), so a heartbeat or a death does not re-plan a
million pins. CIDs reported under-replicated should also be re-planned when a
peer joins (the manager keeps them from the ``ReportAction``s).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from pinfold.replication.allocation import (
    Allocator,
    Candidate,
    RendezvousAllocator,
    availability,
    cid_hash64,
    mix64,
    peer_seed,
    replicas_for_availability,
)
from pinfold.replication.errors import InvalidPin
from pinfold.replication.health import HealthView
from pinfold.replication.holdings import ACTIVE_STATES, HOLDING_STATES, Holdings
from pinfold.replication.pinset import PinSet
from pinfold.replication.types import (
    Action,
    ExpireAction,
    PeerStatus,
    PinAction,
    PinState,
    Reason,
    ReportAction,
    ReportKind,
    UnpinAction,
    check_peer_id,
    cid_text,
    sort_actions,
)

__all__ = [
    "HolderStatus",
    "PinStatus",
    "PlanContext",
    "Policy",
    "affected_cids",
    "pin_status",
    "plan",
    "plan_cids",
]

_ALIVE: Final = PeerStatus.ALIVE
_SUSPECT: Final = PeerStatus.SUSPECT
_PINNED: Final = PinState.PINNED
_PIN_ERROR: Final = PinState.PIN_ERROR
_EPS: Final = 1e-9


@dataclass(frozen=True, slots=True, kw_only=True)
class Policy:
    """Whose plan, and cluster-wide switches.

    Attributes:
        self_peer_id: the planning node; its plan holds only its own pin/unpin
            actions (and expire/report actions when it is the CID's closest
            alive peer). None plans every peer's actions (simulator, tests).
        repair: re-allocate copies lost on dead peers (False = static
            placement: only pins that nobody holds yet are placed).
    """

    self_peer_id: str | None
    repair: bool = True

    def __post_init__(self) -> None:
        if self.self_peer_id is not None:
            check_peer_id(self.self_peer_id, "self_peer_id")
        if type(self.repair) is not bool:
            raise InvalidPin(f"repair: must be a bool, got {self.repair!r}")


class PlanContext:
    """The per-call snapshot of the health view: built once, used for every CID.

    Attributes:
        now: the planning time, seconds.
        status: ``{peer_id: status}`` of every known peer.
        p: ``{peer_id: availability estimate}`` (``HealthView.p_stable``).
        candidates: alive peers with a known capacity > 0, as ``Candidate``s
            (built on first use: a plan in steady state never ranks).
        allocator: ranks candidates per CID.
        current: peers whose reported pin states are known to be up to date
            (None: trust every report, as the simulator and tests do).
        seen: when not None (``keep_states=True``), each planned CID's
            ``{peer_id: state}`` as the planner read it from ``Holdings``, so the
            caller can assess the pins after planning without reading them again
            (it must drop the CIDs whose states its actions changed).
    """

    __slots__ = ("_candidates", "_info", "allocator", "current", "now", "p", "seen", "status")

    def __init__(self, health: HealthView, now: float, allocator: Allocator | None = None,
                 current: frozenset[str] | set[str] | None = None, *,
                 keep_states: bool = False) -> None:
        self.now = now
        self.current = current
        self.seen: dict[bytes, dict[str, PinState]] | None = {} if keep_states else None
        self.status, self.p, self._info = health.snapshot(now)
        self._candidates: list[Candidate] | None = None
        self.allocator: Allocator = allocator or RendezvousAllocator()

    @property
    def candidates(self) -> list[Candidate]:
        if self._candidates is None:
            cands = []
            for pid in sorted(self.status):
                info = self._info[pid]
                if self.status[pid] is _ALIVE and info is not None and info.capacity_bytes > 0:
                    cands.append(Candidate(peer_id=pid, weight=float(info.capacity_bytes),
                                           free_bytes=info.free_bytes,
                                           p=min(max(self.p[pid], 0.0), 1.0)))
            self._candidates = cands
        return self._candidates


def _meets(ps: Iterable[float], target: float) -> bool:
    miss = 1.0
    for p in ps:
        miss *= 1.0 - p
    return miss <= (1.0 - target) * (1.0 + _EPS)


def _acts(peer: str, me: str | None, status: dict[str, PeerStatus]) -> bool:
    """Whether ``peer`` carries out actions in this plan (module docstring, "Who acts")."""
    return peer == me if me is not None else status.get(peer) is _ALIVE


def _plan_one(cid: bytes, pinset: PinSet, holdings: Holdings, ctx: PlanContext,
              me: str | None, repair: bool, out: list[Action]) -> None:
    entry = pinset.get(cid)
    if entry is None:
        return
    states = holdings.states(cid)
    if ctx.seen is not None:
        ctx.seen[cid] = states
    status = ctx.status
    pin = entry.pin

    if pin is None or pin.expired(ctx.now):
        reason = Reason.UNPINNED if pin is None else Reason.EXPIRED
        for q, st in states.items():
            if st in HOLDING_STATES and _acts(q, me, status):
                out.append(UnpinAction(cid=cid, peer_id=q, reason=reason))
        if pin is not None and ctx.candidates:
            closest = ctx.allocator.rank(cid, ctx.candidates)[0].peer_id
            if me is None or closest == me:
                out.append(ExpireAction(cid=cid, peer_id=closest))
        return

    keep = [q for q, st in states.items()
            if st in ACTIVE_STATES and (status.get(q) is _ALIVE or status.get(q) is _SUSPECT)]
    rmin, rmax, target = pin.rmin, pin.rmax, pin.availability
    p = ctx.p
    if target is None:
        enough = len(keep) >= rmin
        cap = rmax
    else:
        # An availability target sets the band [needed, needed + 1] (ANCHORS.md 7:
        # k_max = k_min + slack), needed counted with the best-estimated holders.
        best = sorted((p[q] for q in keep), reverse=True)
        enough = len(keep) >= rmin and _meets(best, target)
        cap = min(rmax, replicas_for_availability(best, target, rmin, len(best)) + 1) \
            if enough else rmax

    ranking: list[Candidate] | None = None
    if enough and len(keep) <= cap:
        desired = keep
    else:
        ranking = ctx.allocator.rank(cid, ctx.candidates)
        pos = {c.peer_id: i for i, c in enumerate(ranking)}
        n = len(ranking)
        if enough:
            # Trimming extras: which copies stay must not depend on the view (the
            # weights -- free bytes, uptime -- differ between nodes, and two
            # holders each sure the other stays would both drop: found by the
            # cluster fault campaign after partitions healed). Pinned first, alive
            # (ranked) before suspect, then an unweighted rendezvous order every
            # node computes the same.
            cid_h = cid_hash64(cid)
            keep.sort(key=lambda q: (states[q] is not _PINNED, q not in pos,
                                     -mix64(cid_h ^ peer_seed(q)), q))
        else:
            keep.sort(key=lambda q: (states[q] is not _PINNED, pos.get(q, n), q))
        if enough and target is not None:
            # Trim to the shortest prefix (in keep order) that meets the target, + 1.
            need = replicas_for_availability([p[q] for q in keep], target, rmin, len(keep))
            desired = keep[:min(rmax, need + 1)]
        else:
            desired = keep[:rmax]
        if not enough and (repair or not any(st in HOLDING_STATES for st in states.values())):
            kept = set(desired)
            size = pin.size_bytes or 0
            for c in ranking:
                if len(desired) >= rmax:
                    break
                if target is not None and len(desired) >= rmin and _meets(
                        (p[q] for q in desired), target):
                    break
                q = c.peer_id
                if q in kept or states.get(q) is _PIN_ERROR or c.free_bytes < size:
                    continue
                desired.append(q)

    # Pins: desired peers that do not hold it yet.
    new = [q for q in desired if states.get(q) not in ACTIVE_STATES]
    if new:
        sources = tuple(sorted(q for q, st in states.items()
                               if st is _PINNED and status.get(q) is _ALIVE))
        reason = Reason.REPAIR if any(st is _PINNED for st in states.values()) else Reason.ALLOCATED
        for q in new:  # desired newcomers are alive candidates
            if me is None or q == me:
                out.append(PinAction(cid=cid, peer_id=q, mode=pin.mode, sources=sources,
                                     reason=reason))

    # Unpins: holders that are not desired.
    dset = set(desired)
    if not dset.issuperset(states):
        ready: bool | None = None
        for q, st in states.items():
            if q in dset or st not in HOLDING_STATES:
                continue
            if not _acts(q, me, status):
                continue  # a silent peer re-plans its CIDs when it is back
            if st is _PINNED:
                if ready is None:
                    # Every desired holder reports pinned, and at least rmin of
                    # them are alive: dropping extras leaves >= rmin healthy.
                    # With ``ctx.current``: each other desired holder's report is
                    # current (a stale "pinned" may be a copy already gone).
                    cur = ctx.current
                    ready = all(states.get(d) is _PINNED and (
                        cur is None or d == me or d in cur) for d in desired) and sum(
                        1 for d in desired if status.get(d) is _ALIVE) >= rmin
                if not ready:
                    continue
                out.append(UnpinAction(cid=cid, peer_id=q, reason=Reason.EXTRA))
            else:
                out.append(UnpinAction(cid=cid, peer_id=q, reason=Reason.FAILED
                                       if st is _PIN_ERROR else Reason.EXTRA))

    # Reports: the closest alive peer says what cannot be fixed.
    short = len(desired) < rmin
    if short or (target is not None and not _meets((p[q] for q in desired), target)):
        if ranking is None:
            ranking = ctx.allocator.rank(cid, ctx.candidates)
        if ranking and (me is None or ranking[0].peer_id == me):
            out.append(ReportAction(
                cid=cid, peer_id=ranking[0].peer_id,
                kind=ReportKind.UNDER_REPLICATED if short else ReportKind.TARGET_UNMET,
                holders=len(desired), wanted=rmin if short else rmax))


def plan_cids(cids: Iterable[bytes], pinset: PinSet, holdings: Holdings, health: HealthView,
              policy: Policy, now: float, *, context: PlanContext | None = None) -> list[Action]:
    """Plan the given CIDs only (incremental re-planning).

    Args:
        cids: pin keys to plan (duplicates are planned once).
        pinset: the shared pinset replica.
        holdings: reported pin states.
        health: the health view.
        policy: whose plan, repair on/off.
        now: seconds, the same time base as ``health`` and ``expire_at``.
        context: a ``PlanContext`` built earlier for the same ``health`` and
            ``now`` (saves rebuilding it when planning in batches).

    Returns:
        The actions, sorted by (CID bytes, peer ID, kind).
    """
    ctx = context if context is not None else PlanContext(health, now)
    out: list[Action] = []
    me, repair = policy.self_peer_id, policy.repair
    for cid in set(cids) if not isinstance(cids, set | frozenset) else cids:
        _plan_one(cid, pinset, holdings, ctx, me, repair, out)
    return sort_actions(out)


def plan(pinset: PinSet, holdings: Holdings, health: HealthView, policy: Policy,
         now: float) -> list[Action]:
    """Plan every CID of the pinset (a full pass); see the module docstring for the rules.

    Returns:
        The actions, sorted by (CID bytes, peer ID, kind).
    """
    return plan_cids(pinset.cids(), pinset, holdings, health, policy, now)


def affected_cids(peer_ids: Iterable[str], holdings: Holdings) -> set[bytes]:
    """The CIDs whose plan may change when these peers' health changes.

    A peer turning dead or coming back changes the plan of the CIDs it reports
    a state for (held, being fetched, failed). A peer joining or gaining room
    can only help CIDs that are under-replicated; the manager re-plans those
    (from earlier ``ReportAction``s) as well.
    """
    out: set[bytes] = set()
    for peer in peer_ids:
        out.update(holdings.cids_of(peer))
    return out


# --------------------------------------------------------------------- status


@dataclass(frozen=True, slots=True, kw_only=True)
class HolderStatus:
    """One peer's report for a CID in ``pin status``."""

    peer_id: str
    state: PinState
    peer_status: PeerStatus | None
    p: float


@dataclass(frozen=True, slots=True, kw_only=True)
class PinStatus:
    """The ``pin status`` record (DESIGN.md Interface).

    Attributes:
        cid: base32 CIDv1 text.
        rmin, rmax: the pin's replication bounds.
        target: its availability target, or None.
        healthy: holders in state pinned on alive peers.
        availability: ``1 - prod(1 - p_i)`` over those healthy holders.
        holders: every peer reporting a state, sorted by peer ID.
    """

    cid: str
    rmin: int
    rmax: int
    target: float | None
    healthy: int
    availability: float
    holders: tuple[HolderStatus, ...]

    def as_dict(self) -> dict[str, object]:
        """The JSON form: ``{"cid", "rmin", "rmax", "healthy", "availability", "holders"}``."""
        return {
            "cid": self.cid, "rmin": self.rmin, "rmax": self.rmax, "target": self.target,
            "healthy": self.healthy, "availability": self.availability,
            "holders": [{"peer_id": h.peer_id, "state": h.state.value,
                         "peer_status": None if h.peer_status is None else h.peer_status.value,
                         "p": h.p} for h in self.holders],
        }


def pin_status(cid: bytes, pinset: PinSet, holdings: Holdings, health: HealthView,
               now: float) -> PinStatus | None:
    """The replication status of one pin, or None when the pinset has no live pin for it."""
    pin = pinset.pin(cid)
    if pin is None:
        return None
    holders = []
    healthy_p = []
    for peer, st in sorted(holdings.states(cid).items()):
        ps = health.status(peer, now)
        pp = health.p_stable(peer)
        holders.append(HolderStatus(peer_id=peer, state=st, peer_status=ps, p=pp))
        if st is _PINNED and ps is _ALIVE:
            healthy_p.append(pp)
    return PinStatus(cid=cid_text(cid), rmin=pin.rmin, rmax=pin.rmax, target=pin.availability,
                     healthy=len(healthy_p), availability=availability(healthy_p),
                     holders=tuple(holders))
