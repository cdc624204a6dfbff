"""The replication planner (pinfold/replication/planner.py).

Scenarios read like DESIGN.md "Replication"; Hypothesis checks the properties
of STYLE.md 8: re-planning after the actions ran yields nothing (fixpoint), a
plan never leaves fewer than rmin healthy holders, the same view in any order
gives the same plan, and each node's own plan is its share of the cluster plan.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pinfold.replication.allocation import Candidate, RendezvousAllocator
from pinfold.replication.errors import InvalidPeerID
from pinfold.replication.health import HealthConfig, HealthView
from pinfold.replication.holdings import ACTIVE_STATES, Holdings
from pinfold.replication.pinset import PinSet
from pinfold.replication.planner import (
    PlanContext,
    Policy,
    affected_cids,
    pin_status,
    plan,
    plan_cids,
)
from pinfold.replication.types import (
    Action,
    ExpireAction,
    Heartbeat,
    PeerStatus,
    Pin,
    PinAction,
    PinState,
    Reason,
    ReportAction,
    ReportKind,
    UnpinAction,
)

NOW = 10_000.0
CFG = HealthConfig(heartbeat_interval_s=5.0, repair_grace_s=60.0, p_prior=0.9)
GIB = 1 << 30
EVERYONE = Policy(self_peer_id=None)


def cid(i: int) -> bytes:
    return b"\x01\x55\x12\x20" + hashlib.sha256(f"pin-{i}".encode()).digest()


def seen_at(status: PeerStatus) -> float:
    """When a peer's last heartbeat must have been to have ``status`` at NOW."""
    return {PeerStatus.ALIVE: NOW - 1.0, PeerStatus.SUSPECT: NOW - 30.0,
            PeerStatus.DEAD: NOW - 500.0}[status]


def health(peers: dict[str, PeerStatus], free: dict[str, int] | None = None,
           order: Iterable[str] | None = None) -> HealthView:
    view = HealthView(CFG)
    for p in order or peers:
        f = (free or {}).get(p, 100 * GIB)
        view.observe(Heartbeat(peer_id=p, capacity_bytes=100 * GIB, free_bytes=f),
                     seen_at(peers[p]))
    return view


def ranking(c: bytes, peers: Iterable[str]) -> list[str]:
    cands = [Candidate(peer_id=p, weight=float(100 * GIB)) for p in peers]
    return [x.peer_id for x in RendezvousAllocator().rank(c, cands)]


def pinset_of(*pins: Pin) -> PinSet:
    ps = PinSet(tree_bits=8)
    for i, p in enumerate(pins):
        ps.put(p, ts=i + 1, peer_id="writer")
    return ps


def holdings_of(states: dict[bytes, dict[str, PinState]]) -> Holdings:
    h = Holdings()
    for c, per_peer in states.items():
        for p, s in per_peer.items():
            h.set(c, p, s)
    return h


def kinds(actions: list[Action]) -> list[tuple[str, str]]:
    return [(type(a).__name__, a.peer_id) for a in actions]


ALIVE5 = {f"peer-{i}": PeerStatus.ALIVE for i in range(5)}


# ------------------------------------------------------------------ scenarios


def test_a_new_pin_goes_to_the_top_rmax_of_its_ranking() -> None:
    c = cid(1)
    acts = plan(pinset_of(Pin(cid=c, rmin=2, rmax=3)), Holdings(), health(ALIVE5), EVERYONE, NOW)
    top3 = ranking(c, ALIVE5)[:3]
    assert [a.peer_id for a in acts] == sorted(top3)
    assert all(isinstance(a, PinAction) and a.reason is Reason.ALLOCATED and a.sources == ()
               for a in acts)
    # Each node's own plan is its share: only the allocated ones pin.
    for p in ALIVE5:
        own = plan(pinset_of(Pin(cid=c, rmin=2, rmax=3)), Holdings(), health(ALIVE5),
                   Policy(self_peer_id=p), NOW)
        assert [a.peer_id for a in own] == ([p] if p in top3 else [])


def test_hysteresis_repairs_only_below_rmin_and_then_tops_up_to_rmax() -> None:
    c = cid(2)
    order = ranking(c, ALIVE5)
    a, b, d = order[:3]
    ps = pinset_of(Pin(cid=c, rmin=2, rmax=3))
    h = holdings_of({c: {a: PinState.PINNED, b: PinState.PINNED, d: PinState.PINNED}})
    # One holder dead: 2 >= rmin, nothing moves.
    assert plan(ps, h, health({**ALIVE5, d: PeerStatus.DEAD}), EVERYONE, NOW) == []
    # Two dead: 1 < rmin, top up to rmax=3 with the next peers in rank order.
    view = health({**ALIVE5, b: PeerStatus.DEAD, d: PeerStatus.DEAD})
    acts = plan(ps, h, view, EVERYONE, NOW)
    assert sorted(x.peer_id for x in acts) == sorted(order[3:5])
    assert all(isinstance(x, PinAction) and x.reason is Reason.REPAIR and x.sources == (a,)
               for x in acts)


def test_no_repair_during_the_grace_period() -> None:
    c = cid(3)
    a, b = ranking(c, ALIVE5)[:2]
    ps = pinset_of(Pin(cid=c, rmin=2, rmax=2))
    h = holdings_of({c: {a: PinState.PINNED, b: PinState.PINNED}})
    assert plan(ps, h, health({**ALIVE5, b: PeerStatus.SUSPECT}), EVERYONE, NOW) == []
    acts = plan(ps, h, health({**ALIVE5, b: PeerStatus.DEAD}), EVERYONE, NOW)
    assert kinds(acts) == [("PinAction", ranking(c, ALIVE5)[2])]


def test_an_extra_copy_is_dropped_only_after_the_desired_holders_are_pinned() -> None:
    c = cid(4)
    order = ranking(c, ALIVE5)
    ps = pinset_of(Pin(cid=c, rmin=2, rmax=3))
    # A dead holder came back after its copy was repaired on order[3]: four holders.
    states = {order[0]: PinState.PINNED, order[1]: PinState.PINNED,
              order[2]: PinState.PINNED, order[3]: PinState.PINNING}
    acts = plan(ps, holdings_of({c: states}), health(ALIVE5), EVERYONE, NOW)
    # The unfinished copy goes at once (it is not a full copy).
    assert kinds(acts) == [("UnpinAction", order[3])] and acts[0].reason is Reason.EXTRA
    states[order[3]] = PinState.PINNED
    acts = plan(ps, holdings_of({c: states}), health(ALIVE5), EVERYONE, NOW)
    assert kinds(acts) == [("UnpinAction", order[3])]  # the lowest-ranked pinned copy
    # A suspect holder's copy is the one trimmed (alive copies first); it drops it
    # itself when it is back - the three alive copies stay.
    view = health({**ALIVE5, order[0]: PeerStatus.SUSPECT})
    assert plan(ps, holdings_of({c: states}), view, EVERYONE, NOW) == []
    own = plan(ps, holdings_of({c: states}), view, Policy(self_peer_id=order[0]), NOW)
    assert kinds(own) == [("UnpinAction", order[0])]
    # With an availability target out of reach, copies beyond rmax still go and
    # the closest peer reports the shortfall.
    target = pinset_of(Pin(cid=c, rmin=1, rmax=2, availability=0.9999))
    trim = {order[0]: PinState.PINNED, order[1]: PinState.PINNED, order[2]: PinState.PINNED}
    acts = plan(target, holdings_of({c: trim}), health(ALIVE5), EVERYONE, NOW)
    assert sorted(kinds(acts)) == [("ReportAction", order[0]), ("UnpinAction", order[2])]


def test_an_extra_copy_is_not_dropped_on_stale_reports() -> None:
    """A node just restarted knows the others' states from before it stopped: the
    copy it would drop for a holder that reports "pinned" may be gone already (the
    cluster fault campaign saw pins at one copy with every node up). It drops only
    once every other desired holder's report is current."""
    c = cid(42)
    ps = pinset_of(Pin(cid=c, rmin=2, rmax=2))
    states = {p: PinState.PINNED for p in ("peer-0", "peer-1", "peer-2")}
    held = holdings_of({c: states})
    view = health({p: PeerStatus.ALIVE for p in states})
    (drop,) = [a for a in plan(ps, held, view, EVERYONE, NOW) if isinstance(a, UnpinAction)]
    me = drop.peer_id
    others = sorted(set(states) - {me})
    mine = Policy(self_peer_id=me)

    def drops(current: set[str] | None) -> list[str]:
        ctx = PlanContext(view, NOW, current=current)
        return [a.peer_id for a in plan_cids([c], ps, held, view, mine, NOW, context=ctx)
                if isinstance(a, UnpinAction)]

    assert drops(None) == [me]  # no currency tracking: every report is trusted
    assert drops(set()) == []
    assert drops({others[0]}) == []  # one desired holder's report is stale
    assert drops(set(others)) == [me]
    # The other holders, whose own copies are desired, act the same either way.
    for q in others:
        ctx = PlanContext(view, NOW, current=set())
        assert plan_cids([c], ps, held, view, Policy(self_peer_id=q), NOW, context=ctx) == []


def test_pinned_copies_win_over_unfinished_ones_when_trimming() -> None:
    c = cid(5)
    order = ranking(c, ALIVE5)
    ps = pinset_of(Pin(cid=c, rmin=1, rmax=2))
    states = {order[0]: PinState.QUEUED, order[1]: PinState.PINNED, order[2]: PinState.PINNED}
    acts = plan(ps, holdings_of({c: states}), health(ALIVE5), EVERYONE, NOW)
    assert kinds(acts) == [("UnpinAction", order[0])]


def test_tombstoned_pins_are_released_by_every_holder() -> None:
    c = cid(6)
    ps = pinset_of(Pin(cid=c))
    ps.remove(c, ts=100, peer_id="writer")
    states = {"peer-0": PinState.PINNED, "peer-1": PinState.QUEUED, "peer-2": PinState.PIN_ERROR,
              "peer-3": PinState.UNPINNING, "peer-4": PinState.PINNED}
    view = health({**ALIVE5, "peer-4": PeerStatus.DEAD})
    acts = plan(ps, holdings_of({c: states}), view, EVERYONE, NOW)
    assert kinds(acts) == [("UnpinAction", "peer-0"), ("UnpinAction", "peer-1"),
                           ("UnpinAction", "peer-2")]
    assert {a.reason for a in acts} == {Reason.UNPINNED}
    # The dead peer releases its copy in its own plan once it is back.
    own = plan(ps, holdings_of({c: states}), view, Policy(self_peer_id="peer-4"), NOW)
    assert kinds(own) == [("UnpinAction", "peer-4")]


def test_expired_pins_are_released_and_the_closest_peer_writes_the_tombstone() -> None:
    c = cid(7)
    ps = pinset_of(Pin(cid=c, rmin=1, rmax=2, expire_at=NOW - 1))
    states = {"peer-1": PinState.PINNED, "peer-2": PinState.PINNED}
    acts = plan(ps, holdings_of({c: states}), health(ALIVE5), EVERYONE, NOW)
    closest = ranking(c, ALIVE5)[0]
    assert [a for a in acts if isinstance(a, ExpireAction)] == [ExpireAction(cid=c,
                                                                             peer_id=closest)]
    assert {a.peer_id for a in acts if isinstance(a, UnpinAction)} == {"peer-1", "peer-2"}
    assert all(a.reason is Reason.EXPIRED for a in acts if isinstance(a, UnpinAction))
    # Not yet expired: nothing happens.
    ps2 = pinset_of(Pin(cid=c, rmin=1, rmax=2, expire_at=NOW + 1))
    assert plan(ps2, holdings_of({c: states}), health(ALIVE5), EVERYONE, NOW) == []


def test_a_failed_holder_gives_the_pin_back_and_another_peer_takes_it() -> None:
    c = cid(8)
    order = ranking(c, ALIVE5)
    ps = pinset_of(Pin(cid=c, rmin=2, rmax=2))
    states = {order[0]: PinState.PINNED, order[1]: PinState.PIN_ERROR}
    acts = plan(ps, holdings_of({c: states}), health(ALIVE5), EVERYONE, NOW)
    assert kinds(acts) == sorted([("PinAction", order[2]), ("UnpinAction", order[1])],
                                 key=lambda k: k[1])
    assert [a.reason for a in acts if isinstance(a, UnpinAction)] == [Reason.FAILED]


def test_peers_without_room_are_skipped() -> None:
    c = cid(9)
    order = ranking(c, ALIVE5)
    ps = pinset_of(Pin(cid=c, rmin=1, rmax=2, size_bytes=10 * GIB))
    view = health(ALIVE5, free={order[0]: 9 * GIB})
    acts = plan(ps, Holdings(), view, EVERYONE, NOW)
    assert [a.peer_id for a in acts] == sorted(order[1:3])


def test_availability_target_picks_enough_holders() -> None:
    c = cid(10)
    # Fresh peers are estimated at p_prior = 0.9: 0.999 needs 3, 0.99 needs 2.
    for target, n in ((0.999, 3), (0.99, 2), (0.9, 1)):
        ps = pinset_of(Pin(cid=c, rmin=1, rmax=5, availability=target))
        acts = plan(ps, Holdings(), health(ALIVE5), EVERYONE, NOW)
        assert [a.peer_id for a in acts] == sorted(ranking(c, ALIVE5)[:n])
    # Unreachable within rmax: the closest peer reports it.
    ps = pinset_of(Pin(cid=c, rmin=1, rmax=2, availability=0.9999))
    acts = plan(ps, Holdings(), health(ALIVE5), EVERYONE, NOW)
    reports = [a for a in acts if isinstance(a, ReportAction)]
    assert len(reports) == 1 and reports[0].kind is ReportKind.TARGET_UNMET
    assert reports[0].peer_id == ranking(c, ALIVE5)[0]


def test_availability_target_keeps_a_band_of_needed_plus_one() -> None:
    c = cid(17)
    order = ranking(c, ALIVE5)
    ps = pinset_of(Pin(cid=c, rmin=1, rmax=5, availability=0.999))  # p = 0.9: needs 3
    four = {q: PinState.PINNED for q in order[:4]}
    assert plan(ps, holdings_of({c: four}), health(ALIVE5), EVERYONE, NOW) == []
    five = {q: PinState.PINNED for q in order}
    acts = plan(ps, holdings_of({c: five}), health(ALIVE5), EVERYONE, NOW)
    assert kinds(acts) == [("UnpinAction", order[4])]
    # One of three holders dead: 0.99 < 0.999, so one is added (back to three).
    three = {q: PinState.PINNED for q in order[:3]}
    view = health({**ALIVE5, order[0]: PeerStatus.DEAD})
    acts = plan(ps, holdings_of({c: three}), view, EVERYONE, NOW)
    assert kinds(acts) == [("PinAction", order[3])]
    # While it is only suspect, its copy still counts (the grace period).
    view = health({**ALIVE5, order[0]: PeerStatus.SUSPECT})
    assert plan(ps, holdings_of({c: three}), view, EVERYONE, NOW) == []


def test_under_replication_is_reported_once_by_the_closest_alive_peer() -> None:
    c = cid(11)
    peers = {"peer-0": PeerStatus.ALIVE, "peer-1": PeerStatus.DEAD, "peer-2": PeerStatus.DEAD}
    ps = pinset_of(Pin(cid=c, rmin=2, rmax=3))
    acts = plan(ps, Holdings(), health(peers), EVERYONE, NOW)
    assert kinds(acts) == [("PinAction", "peer-0"), ("ReportAction", "peer-0")]
    report = acts[1]
    assert report.kind is ReportKind.UNDER_REPLICATED and (report.holders, report.wanted) == (1, 2)


def test_static_placement_does_not_repair() -> None:
    c = cid(12)
    order = ranking(c, ALIVE5)
    ps = pinset_of(Pin(cid=c, rmin=2, rmax=2))
    h = holdings_of({c: {order[0]: PinState.PINNED, order[1]: PinState.PINNED}})
    view = health({**ALIVE5, order[1]: PeerStatus.DEAD})
    static = Policy(self_peer_id=None, repair=False)
    assert [type(a) for a in plan(ps, h, view, static, NOW)] == [ReportAction]
    # ... but a new pin is still placed.
    assert len(plan(pinset_of(Pin(cid=cid(13))), Holdings(), view, static, NOW)) == 3


def test_cids_unknown_to_the_pinset_are_left_alone() -> None:
    h = holdings_of({cid(14): {"peer-0": PinState.PINNED}})
    assert plan(PinSet(tree_bits=8), h, health(ALIVE5), EVERYONE, NOW) == []


def test_incremental_planning_and_the_affected_index() -> None:
    pins = [Pin(cid=cid(100 + i), rmin=2, rmax=2) for i in range(40)]
    ps = pinset_of(*pins)
    h = Holdings()
    for a in plan(ps, h, health(ALIVE5), EVERYONE, NOW):
        h.set(a.cid, a.peer_id, PinState.PINNED)
    assert plan(ps, h, health(ALIVE5), EVERYONE, NOW) == []
    view = health({**ALIVE5, "peer-3": PeerStatus.DEAD})
    touched = affected_cids(["peer-3"], h)
    assert touched == {p.cid for p in pins if h.get(p.cid, "peer-3") is PinState.PINNED}
    full = plan(ps, h, view, EVERYONE, NOW)
    assert plan_cids(touched, ps, h, view, EVERYONE, NOW) == full
    assert {a.cid for a in full} == touched


def test_pin_status_counts_pinned_holders_on_alive_peers() -> None:
    c = cid(15)
    ps = pinset_of(Pin(cid=c, rmin=2, rmax=3))
    h = holdings_of({c: {"peer-0": PinState.PINNED, "peer-1": PinState.PINNED,
                         "peer-2": PinState.PINNING}})
    view = health({**ALIVE5, "peer-1": PeerStatus.SUSPECT})
    st_ = pin_status(c, ps, h, view, NOW)
    assert st_ is not None and st_.healthy == 1
    assert st_.availability == pytest.approx(0.9)
    d = st_.as_dict()
    assert {"cid", "rmin", "rmax", "healthy", "availability", "holders"} <= d.keys()
    assert d["holders"][1] == {"peer_id": "peer-1", "state": "pinned", "peer_status": "suspect",
                               "p": pytest.approx(0.9, abs=0.01)}  # 30 s of silence
    assert pin_status(cid(16), ps, h, view, NOW) is None


def test_policy_validates_the_peer_id() -> None:
    with pytest.raises(InvalidPeerID):
        Policy(self_peer_id="has space")


# ----------------------------------------------------------------- properties

PEER_IDS = [f"peer-{i}" for i in range(6)]
STATE_CHOICES = [PinState.REMOTE] * 4 + list(PinState)


@st.composite
def worlds(draw: st.DrawFn):
    n = draw(st.integers(2, 6))
    peers = {p: draw(st.sampled_from([PeerStatus.ALIVE] * 3 + [PeerStatus.SUSPECT,
                                                                 PeerStatus.DEAD]))
             for p in PEER_IDS[:n]}
    pins, states, removed = [], {}, []
    for i in range(draw(st.integers(1, 5))):
        rmin = draw(st.integers(1, 3))
        rmax = draw(st.integers(rmin, 4))
        target = draw(st.sampled_from([None, None, 0.99, 0.9999]))
        expire = draw(st.sampled_from([None, None, None, NOW - 5]))
        pin = Pin(cid=cid(1000 + i), rmin=rmin, rmax=rmax, availability=target, expire_at=expire)
        pins.append(pin)
        states[pin.cid] = {p: s for p in peers
                           if (s := draw(st.sampled_from(STATE_CHOICES))) is not PinState.REMOTE}
        if draw(st.integers(0, 5)) == 0:
            removed.append(pin.cid)
    return peers, pins, states, removed


def build(world, rnd: random.Random | None = None):
    peers, pins, states, removed = world
    pins = list(pins)
    order = list(peers)
    if rnd is not None:
        rnd.shuffle(pins)
        rnd.shuffle(order)
    ps = PinSet(tree_bits=8)
    for i, p in enumerate(pins):
        ps.merge([__import__("pinfold.replication.pinset", fromlist=["Entry"]).Entry(
            cid=p.cid, ts=int(p.cid[-1]) + 1, peer_id="writer", pin=p)])
    for c in removed:
        ps.remove(c, ts=1000, peer_id="writer")
    h = Holdings()
    items = [(c, p, s) for c, per in states.items() for p, s in per.items()]
    if rnd is not None:
        rnd.shuffle(items)
    for c, p, s in items:
        h.set(c, p, s)
    return ps, h, health(peers, order=order)


def apply(actions: list[Action], ps: PinSet, h: Holdings, ts: int) -> None:
    """Carry out a plan: every pin succeeds, every unpin completes."""
    for a in actions:
        _apply_one(a, ps, h, ts)


def progress(h: Holdings, view: HealthView) -> bool:
    """The managers of alive peers finish what is in flight; True if anything changed."""
    changed = False
    for c, p, s in list(h):
        if view.status(p, NOW) is not PeerStatus.ALIVE:
            continue
        if s in (PinState.QUEUED, PinState.PINNING):
            h.set(c, p, PinState.PINNED)
            changed = True
        elif s is PinState.UNPINNING:
            h.clear(c, p)
            changed = True
    return changed


def _apply_one(a: Action, ps: PinSet, h: Holdings, ts: int) -> None:
    if isinstance(a, PinAction):
        h.set(a.cid, a.peer_id, PinState.PINNED)
    elif isinstance(a, UnpinAction):
        h.clear(a.cid, a.peer_id)
    elif isinstance(a, ExpireAction) and a.cid in ps:
        ps.remove(a.cid, ts=ts, peer_id=a.peer_id)


def healthy(c: bytes, h: Holdings, view: HealthView) -> int:
    return sum(1 for p, s in h.states(c).items()
               if s is PinState.PINNED and view.status(p, NOW) is PeerStatus.ALIVE)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds(), st.randoms(use_true_random=False))
def test_the_same_view_in_any_order_gives_the_same_plan(world, rnd) -> None:
    a = plan(*build(world), EVERYONE, NOW)
    b = plan(*build(world, rnd), EVERYONE, NOW)
    assert a == b
    me = rnd.choice(list(world[0]))
    assert plan(*build(world), Policy(self_peer_id=me), NOW) == plan(
        *build(world, rnd), Policy(self_peer_id=me), NOW)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds())
def test_each_alive_nodes_plan_is_its_share_of_the_cluster_plan(world) -> None:
    everyone = plan(*build(world), EVERYONE, NOW)
    assert all(world[0][a.peer_id] is PeerStatus.ALIVE for a in everyone)
    for p, status in world[0].items():
        if status is PeerStatus.ALIVE:
            own = plan(*build(world), Policy(self_peer_id=p), NOW)
            assert own == [a for a in everyone if a.peer_id == p]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds())
def test_a_plan_never_leaves_fewer_than_rmin_healthy_holders(world) -> None:
    ps, h, view = build(world)
    actions = plan(ps, h, view, EVERYONE, NOW)
    before = {c: healthy(c, h, view) for c in ps.cids()}
    apply([a for a in actions if isinstance(a, UnpinAction)], ps, h, ts=2000)
    for c in ps.cids():
        pin = ps.pin(c)
        if pin is None or pin.expired(NOW):
            continue  # the user asked for these to go
        assert healthy(c, h, view) >= min(pin.rmin, before[c])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds())
def test_replanning_after_the_actions_ran_yields_nothing(world) -> None:
    ps, h, view = build(world)
    rounds = 0
    while True:
        actions = [a for a in plan(ps, h, view, EVERYONE, NOW) if not isinstance(a, ReportAction)]
        apply(actions, ps, h, ts=2000 + rounds)
        in_flight = progress(h, view)  # fetches and unpins already under way finish
        if not actions and not in_flight:
            break
        rounds += 1
        assert rounds <= 4, f"no fixpoint after 4 rounds: {actions}"
    alive = [p for p, s in world[0].items() if s is PeerStatus.ALIVE]
    for c in ps.cids():
        pin = ps.pin(c)
        states = h.states(c)
        alive_holders = [p for p in alive if states.get(p) in ACTIVE_STATES]
        if pin is None or pin.expired(NOW):
            assert not [p for p in alive if p in states and states[p] is not PinState.UNPINNING]
            continue
        assert all(states[p] is PinState.PINNED for p in alive_holders)
        suspect_holders = [p for p, s in states.items() if s in ACTIVE_STATES
                           and world[0][p] is PeerStatus.SUSPECT]
        assert len(alive_holders) + len(suspect_holders) >= min(pin.rmin, len(alive))
        if pin.availability is not None and not suspect_holders:
            reached = 1 - 0.1 ** len(alive_holders) >= pin.availability - 1e-9  # p = 0.9 each
            assert reached or len(alive_holders) == min(pin.rmax, len(alive))
        if not suspect_holders:
            assert len(alive_holders) <= pin.rmax


def test_trimming_extras_does_not_depend_on_the_view_weights() -> None:
    """Two holders whose views weigh peers differently (a capacity change not yet
    heard everywhere) must not both drop their copy of an over-replicated pin."""
    c = cid(41)
    peers = ["peer-0", "peer-1", "peer-2"]

    def view(capacity: dict[str, int]) -> HealthView:
        v = HealthView(CFG)
        for p in peers:
            v.observe(Heartbeat(peer_id=p, capacity_bytes=capacity[p], free_bytes=capacity[p]),
                      seen_at(PeerStatus.ALIVE))
        return v

    ps = pinset_of(Pin(cid=c, rmin=1, rmax=1))
    held = holdings_of({c: {"peer-0": PinState.PINNED, "peer-1": PinState.PINNED}})
    for small, big in ((1, 1000), (1000, 1)):
        v0 = view({"peer-0": small * GIB, "peer-1": big * GIB, "peer-2": GIB})
        v1 = view({"peer-0": big * GIB, "peer-1": small * GIB, "peer-2": GIB})
        drops = [a.peer_id for me, v in (("peer-0", v0), ("peer-1", v1))
                 for a in plan(ps, held, v, Policy(self_peer_id=me), NOW)
                 if isinstance(a, UnpinAction)]
        assert len(drops) == 1, drops
