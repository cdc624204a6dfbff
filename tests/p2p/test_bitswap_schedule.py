"""The holder scheduler and multi-holder sessions, pure: no trio, no sockets.

``HolderScheduler`` is driven directly with times; whole fetches run in the
discrete-event simulation of ``tests.support.holders_sim`` (holders serving
want-blocks one after another at a given speed), so what is asserted is the
scheduler's decisions, free of the machine's load.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from pinfold.blockstore.cid import cid_key
from pinfold.daemon.p2p.bitswap.client_types import ClientConfig, SendWants
from pinfold.daemon.p2p.bitswap.message import BlockPresence, PresenceType, WantType
from pinfold.daemon.p2p.bitswap.schedule import HolderScheduler
from pinfold.daemon.p2p.bitswap.wants import WantManager

from tests.support.holders_sim import TICK_S, sim_cids, simulate

CIDS = sim_cids(64)
KEYS = [cid_key(c) for c in CIDS]


def measured(sched: HolderScheduler, peer: str, block_s: float, n: int = 8, t0: float = 0.0,
             key_base: int = 0) -> float:
    """Feed ``peer`` ``n`` want-blocks delivered one every ``block_s`` seconds;
    returns the time after the last."""
    sched.add_peer(peer, t0)
    now = t0
    for i in range(n):
        key = f"{peer}-{key_base + i}".encode()
        sched.sent(peer, key, now)
        now += block_s
        assert sched.delivered(peer, key, now, 1 << 20)
    return now


# ------------------------------------------------------------------ scheduler


def test_time_per_block_and_latency_are_measured_from_deliveries():
    sched = HolderScheduler()
    measured(sched, "a", 0.1)
    perf = sched.perf("a")
    assert perf is not None and perf.blocks == 8 and perf.bytes == 8 << 20
    assert abs(perf.block_s - 0.1) < 0.01 and abs(perf.latency_s - 0.1) < 0.01
    assert perf.rtt_s is not None and perf.rtt_s < 0.01


#: Every holder admitted: what is tested is the choice among the admitted ones.
SPREAD = ClientConfig(adaptive_holders=False)


def test_the_holder_that_would_deliver_soonest_is_picked():
    sched = HolderScheduler(SPREAD)
    measured(sched, "slow", 0.1)
    measured(sched, "fast", 0.01)
    assert sched.pick(["slow", "fast"]) == "fast"
    for i in range(10):  # ten blocks queued at the fast peer: ETA 0.11 s vs 0.1 s
        sched.sent("fast", f"q{i}".encode(), 1.0)
    assert sched.eta("fast") > sched.eta("slow")
    assert sched.pick(["slow", "fast"]) == "slow"


def test_a_slow_holder_gets_nothing_a_full_faster_holder_would_finish_first():
    sched = HolderScheduler(ClientConfig(max_outstanding_per_peer=4))
    measured(sched, "slow", 1.0)
    measured(sched, "fast", 0.01)
    for i in range(4):
        sched.sent("fast", f"q{i}".encode(), 1.0)
    assert not sched.has_room("fast") and sched.has_room("slow")
    assert sched.pick(["slow", "fast"]) is None  # wait for the fast peer's slot
    assert sched.pick(["slow"]) == "slow"  # the only holder is still used


def test_in_flight_is_bounded_per_peer_and_opens_after_the_first_block():
    cfg = ClientConfig(max_outstanding_per_peer=8, initial_outstanding_per_peer=2)
    sched = HolderScheduler(cfg)
    sched.add_peer("p", 0.0)
    sched.sent("p", b"k0", 0.0)
    sched.sent("p", b"k1", 0.0)
    assert not sched.has_room("p") and sched.pick(["p"]) is None
    sched.delivered("p", b"k0", 0.1)
    for i in range(2, 9):
        assert sched.pick(["p"]) == "p"
        sched.sent("p", f"k{i}".encode(), 0.1)
    assert sched.in_flight("p") == 8 and sched.pick(["p"]) is None


def test_unmeasured_peers_are_tried_as_if_as_fast_as_the_best():
    sched = HolderScheduler(SPREAD)
    measured(sched, "known", 0.05)
    sched.add_peer("new", 1.0)
    assert sched.eta("new") == sched.eta("known")
    assert sched.pick(["known", "new"]) == "known"  # tie: the earlier one
    sched.sent("known", b"x", 1.0)
    assert sched.pick(["known", "new"]) == "new"


def test_late_timeout_follows_the_peers_observed_latency():
    cfg = ClientConfig(late_multiplier=2, late_min_s=0.2, late_max_s=7)
    sched = HolderScheduler(cfg)
    now = measured(sched, "p", 0.5)
    assert abs(sched.late_timeout("p") - 1.0) < 0.05  # 2 x (rtt ~0 + 1 x 0.5 s)
    assert abs(sched.late_timeout("p", ahead=3) - 4.0) < 0.2  # 2 x 4 blocks
    sched.add_peer("new", now)
    assert sched.late_timeout("new") == 7  # not measured: late_max_s
    sched.sent("p", b"k", now)
    assert sched.late(now + 0.9) == []
    window = sched.perf("p").window
    assert sched.late(now + 1.1) == [("p", b"k")]
    assert sched.late(now + 5) == []  # reported once
    assert sched.lagging("p") and sched.perf("p").window == max(1, window // 2)
    sched.delivered("p", b"k", now + 6)
    assert not sched.lagging("p")


def test_a_peer_that_sends_nothing_is_reported_silent_once_per_period():
    sched = HolderScheduler(ClientConfig(stall_timeout_s=5))
    sched.add_peer("p", 0.0)
    sched.sent("p", b"k", 1.0)
    assert sched.silent(5.9) == []
    assert sched.silent(6.0) == ["p"]
    assert sched.silent(10.0) == []
    sched.heard("p", 10.5)
    assert sched.silent(15.4) == [] and sched.silent(15.5) == ["p"]


# ------------------------------------------------------------------ sessions (pure)


def sends(actions):
    out: dict = {}
    for a in actions:
        if isinstance(a, SendWants):
            out.setdefault(a.peer, []).extend(a.entries)
    return out


def _holding_session(peers, n, *, cfg=None, now=0.0):
    m = WantManager(cfg)
    for p in peers:
        m.peer_connected(p, now)
    sid = m.new_session(timeout_s=100, now=now)
    m.want(sid, CIDS[:n], now)
    out: dict = {}
    for p in peers:
        have = [BlockPresence(cid=c, type=PresenceType.HAVE) for c in CIDS[:n]]
        for q, es in sends(m.on_presences(p, have, now)).items():
            out.setdefault(q, []).extend(es)
    return m, sid, out


def test_a_vanished_holder_s_want_blocks_move_to_the_others_without_restarting():
    m, _sid, out = _holding_session(["a", "b"], 8, cfg=ClientConfig(
        max_outstanding_per_peer=4, adaptive_holders=False))
    at_a = [e.cid for e in out["a"] if e.want_type == WantType.BLOCK]
    assert len(at_a) == 4
    m.on_block("b", cid_key(next(e.cid for e in out["b"] if e.want_type == WantType.BLOCK)), 0.1)
    moved = sends(m.peer_disconnected("a", 0.2))
    assert set(moved) == {"b"}
    got = {e.cid for e in moved["b"] if e.want_type == WantType.BLOCK}
    assert got <= set(at_a) and got  # a's wants, not the ones received
    assert m.counters["wants_moved"] == 4 and m.wantlist_size() == 7


def test_a_block_s_cancel_goes_only_where_its_want_is_still_open():
    """A holder that answered HAVE holds no want for the block any more (the
    server forgets an answered want-have): it gets no cancel when the block
    arrives from another; a peer whose want-have is unanswered does."""
    m = WantManager(ClientConfig(max_outstanding_per_peer=4))
    for p in ("a", "b", "quiet"):
        m.peer_connected(p, 0.0)
    sid = m.new_session(timeout_s=100, now=0.0)
    m.want(sid, CIDS[:2], 0.0)
    have = [BlockPresence(cid=c, type=PresenceType.HAVE) for c in CIDS[:2]]
    out = sends(m.on_presences("a", have, 0.0))
    m.on_presences("b", have, 0.0)  # "quiet" never answers
    first = next(e.cid for e in out["a"] if e.want_type == WantType.BLOCK)
    res = m.on_block("a", cid_key(first), 0.1, 1 << 20)
    assert res is not None
    cancels = sends(res[2])
    assert "b" not in cancels
    assert [(e.cid, e.cancel) for e in cancels["quiet"]] == [(first, True)]


def test_a_late_block_is_asked_of_one_second_peer_and_the_first_copy_wins():
    cfg = ClientConfig(late_min_s=0.5, late_max_s=2.0, max_outstanding_per_peer=1,
                       adaptive_holders=False)
    m, _sid, out = _holding_session(["a", "b"], 2, cfg=cfg)
    (first,) = [e.cid for e in out["a"] if e.want_type == WantType.BLOCK]
    (other,) = [e.cid for e in out["b"] if e.want_type == WantType.BLOCK]
    m.on_block("b", cid_key(other), 0.1)  # b is free again; a stays silent
    assert sends(m.tick(1.9)) == {}
    reask = sends(m.tick(2.1))  # a not measured: late after late_max_s
    assert [(e.cid, e.want_type) for e in reask["b"]] == [(first, WantType.BLOCK)]
    assert "a" not in reask  # a keeps its want: the block may be on its way
    assert m.counters["late_reasks"] == 1
    assert sends(m.tick(3.0)) == {}  # asked of two peers at most
    _, _, actions = m.on_block("b", cid_key(first), 3.1)
    assert [(e.cid, e.cancel) for e in sends(actions)["a"]] == [(first, True)]
    assert m.on_block("a", cid_key(first), 3.2) is None  # the late copy: a duplicate


def test_a_newly_connected_peer_is_asked_for_every_open_want():
    m, _sid, _ = _holding_session(["a"], 5)
    out = sends(m.peer_connected("b", 1.0))
    assert {e.cid for e in out["b"]} == set(CIDS[:5]) and len(out["b"]) == 5
    assert all(e.want_type == WantType.HAVE and e.send_dont_have for e in out["b"])
    assert m.counters["rebroadcasts_connect"] == 1


def test_rebroadcast_resends_only_wants_asked_that_long_ago():
    m, sid, _ = _holding_session(["a"], 4)
    m.want(sid, CIDS[4:6], 20.0)
    out = sends(m.rebroadcast(30.0, 30.0))
    assert [e.cid for e in out["a"]] == CIDS[:4]  # not the two asked at 20 s
    assert all(e.want_type == WantType.BLOCK for e in out["a"])  # in flight to a
    assert sends(m.rebroadcast(31.0, 30.0)) == {}  # just sent again
    assert m.counters["rebroadcasts_timer"] == 1 and m.counters["rebroadcast_wants"] == 4


# ------------------------------------------------------------------ whole fetches (simulated)


def test_wants_spread_over_holders_by_their_throughput():
    r = simulate({"a": 0.01, "b": 0.02, "c": 0.04}, 350)
    assert r.by_peer["a"] > r.by_peer["b"] > r.by_peer["c"] > 0
    assert abs(r.by_peer["a"] / r.by_peer["b"] - 2) < 0.5
    assert r.duplicates == 0


def test_more_holders_are_never_slower_than_the_fastest_alone():
    one = simulate({"a": 0.01}, 200).elapsed_s
    for speeds in ({"a": 0.01, "b": 0.01, "c": 0.01}, {"a": 0.01, "b": 0.01, "c": 0.2},
                   {"a": 0.01, "b": 0.05, "c": 0.5}, {"a": 0.01, "b": 0.03}):
        r = simulate(speeds, 200)
        assert r.elapsed_s <= one * 1.01, (speeds, r)
        assert r.duplicates <= r.counters["late_reasks"]


def test_probing_a_very_slow_unmeasured_holder_costs_at_most_two_of_its_blocks():
    """A holder 100 x slower than the other gets its first few wants before it
    is measured; once the fast one has a free slot, what would arrive over
    ``late_min_s`` later is asked of it: the fetch ends within the slow
    holder's first block, one more, and the margin."""
    one = simulate({"a": 0.01}, 200).elapsed_s
    r = simulate({"a": 0.01, "slow": 1.0}, 200)
    assert r.elapsed_s <= one + 2 * 1.0 + ClientConfig().late_min_s + TICK_S, r
    assert r.by_peer["slow"] <= ClientConfig().initial_outstanding_per_peer
    assert r.counters["late_reasks"] >= 1 and r.duplicates <= r.counters["late_reasks"]


def test_a_holder_that_dies_midway_and_one_that_is_slow_do_not_stop_the_fetch():
    r = simulate({"a": 0.01, "dies": 0.01, "slow": 0.2}, 200, vanish={"dies": 0.3})
    assert r.received == 200 and r.by_peer["dies"] > 0 and r.by_peer["a"] > 100
    assert r.counters["wants_moved"] > 0 and r.duplicates == 0
    assert r.elapsed_s <= simulate({"a": 0.01}, 200).elapsed_s


def test_a_holder_that_goes_silent_loses_its_blocks_as_they_go_late():
    r = simulate({"a": 0.01, "mute": 0.01}, 200, silence={"mute": 0.3},
                 config=ClientConfig(stall_timeout_s=60))
    assert r.received == 200 and r.counters["late_reasks"] > 0
    assert r.elapsed_s < 5  # the late timeout (>= 1 s), not the 60 s stall timeout


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from([0.005, 0.01, 0.03, 0.1, 0.5]), min_size=1, max_size=4),
       st.integers(10, 120))
def test_property_holders_added_never_make_a_fetch_slower(extra, n):
    """Adding holders of any speed to the fastest one: the fetch ends no later
    than from it alone, or, when that is shorter than probing the slowest
    unmeasured holder costs (its first block, then its wants are moved once
    they would arrive ``late_min_s`` later than elsewhere), within that."""
    base = simulate({"a": 0.005}, n).elapsed_s
    speeds = {"a": 0.005, **{f"p{i}": s for i, s in enumerate(extra)}}
    r = simulate(speeds, n)
    probe = 2 * max(extra) + ClientConfig().late_min_s + TICK_S
    assert r.elapsed_s <= max(base * 1.01, probe), (speeds, n, r)
    assert r.duplicates <= r.counters["late_reasks"]


# ------------------------------------------------------------------ holders that cost the receiver


#: Three equal holders on the receiver's machine: each busy sender adds half the
#: receiver's per-block CPU cost (0.008 s alone), so one holder (0.01 s a block)
#: is the limit alone and three together are slower (0.016 s a block).
CROWDED = {"receiver_s": 0.008, "per_conn": 0.5}


def test_the_crowded_receiver_model_makes_three_spread_holders_slower_than_one():
    """The old policy (every holder used) on a receiver that pays per busy holder."""
    spread = ClientConfig(adaptive_holders=False)
    one = simulate({"a": 0.01}, 300, config=spread, **CROWDED).elapsed_s
    three = simulate({"a": 0.01, "b": 0.01, "c": 0.01}, 300, config=spread, **CROWDED)
    assert three.elapsed_s > one * 1.3, (one, three)


def test_holders_that_cost_the_receiver_more_than_they_bring_are_dropped():
    one = simulate({"a": 0.01}, 300, **CROWDED).elapsed_s
    r = simulate({"a": 0.01, "b": 0.01, "c": 0.01}, 300, **CROWDED)
    assert r.elapsed_s <= one * 1.05, (one, r)
    assert r.by_peer["a"] > 0.8 * 300  # the extra holders only had their trial
    assert r.duplicates <= r.counters["late_reasks"]


def test_extra_holders_are_kept_while_the_receiver_keeps_up():
    one = simulate({"a": 0.01}, 300, receiver_s=0.002, per_conn=0.5).elapsed_s
    r = simulate({"a": 0.01, "b": 0.01, "c": 0.01}, 300, receiver_s=0.002, per_conn=0.5)
    assert r.elapsed_s < one / 2, (one, r)
    assert min(r.by_peer[p] for p in "abc") > 50


def test_a_slow_first_holder_is_dropped_once_a_faster_one_joined():
    """The first holder admitted is slow and the receiver takes only one busy
    holder well: the faster one is probed and stays; the trial without the
    slow one shows the rate no lower, so the slow one is dropped."""
    kw = {"receiver_s": 0.008, "per_conn": 1.0}
    r = simulate({"slow": 0.03, "fast": 0.01}, 400, **kw)
    assert r.by_peer["fast"] > 4 * r.by_peer["slow"], r
    fast_alone = simulate({"fast": 0.01}, 400, **kw).elapsed_s
    assert r.elapsed_s < fast_alone * 1.25, (fast_alone, r)


def test_admission_keeps_a_probe_only_when_the_aggregate_rate_rises_by_the_gain():
    from pinfold.daemon.p2p.bitswap.admission import MIN_BLOCKS, HolderAdmission

    adm = HolderAdmission(ClientConfig(holder_window_s=1.0, holder_gain=0.1))
    adm.seen(["a", "b", "c"])
    adm.chosen("a")
    assert adm.members() == ["a"] and not adm.admitted("b")
    now = 0.0
    for _ in range(MIN_BLOCKS + 4):  # baseline: 10 MB/s
        now += 0.1
        adm.delivered("a", 1_000_000, now)
    assert adm.base_rate and abs(adm.base_rate - 1e7) < 1e6
    assert adm.probing == "b" and adm.admitted("b")
    adm.delivered("b", 1_000_000, now + 0.05)  # the probe's first block starts its window
    now += 0.05
    for i in range(MIN_BLOCKS + 4):  # 10.5 MB/s with b: under the 10 % gain
        now += 0.095
        adm.delivered("ab"[i % 2], 1_000_000, now)
    assert adm.members() == ["a"] and adm.decisions["dropped"] == 1
    assert adm.probing is None and adm.base_rate is None  # the set is measured anew
