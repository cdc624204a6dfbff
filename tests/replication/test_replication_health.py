"""Membership and health (pinfold/replication/health.py): liveness, alerts, availability estimate."""

from __future__ import annotations

import random

import msgpack
import pytest
from pinfold.replication.errors import InvalidPin, PinsetDecodeError
from pinfold.replication.health import (
    HealthConfig,
    HealthView,
    decode_heartbeat,
    encode_heartbeat,
)
from pinfold.replication.types import HealthEventKind, Heartbeat, PeerStatus

CFG = HealthConfig(heartbeat_interval_s=5.0, repair_grace_s=60.0, p_prior=0.9,
                   p_halflife_s=3600.0)


def hb(peer: str = "peer-a", seq: int = 0, incarnation: int = 0) -> Heartbeat:
    return Heartbeat(peer_id=peer, seq=seq, incarnation=incarnation, capacity_bytes=100,
                     free_bytes=50)


def test_alive_then_suspect_after_ttl_then_dead_after_grace() -> None:
    view = HealthView(CFG)
    assert view.status("peer-a", 0.0) is None  # never heard of
    view.observe(hb(), 100.0)
    assert CFG.ttl_s == 10.0
    assert view.status("peer-a", 109.9) is PeerStatus.ALIVE
    assert view.status("peer-a", 110.0) is PeerStatus.SUSPECT
    assert view.status("peer-a", 169.9) is PeerStatus.SUSPECT
    assert view.status("peer-a", 170.0) is PeerStatus.DEAD
    rec = view.record("peer-a", 150.0)
    assert rec.status is PeerStatus.SUSPECT and rec.suspect_since == 110.0
    assert view.next_transition(100.0) == 110.0
    assert view.next_transition(110.0) == 170.0
    assert view.next_transition(170.0) is None
    assert HealthConfig(heartbeat_interval_s=2, peer_ttl_s=7).ttl_s == 7


def test_one_alert_per_failure_episode() -> None:
    view = HealthView(CFG)
    view.observe(hb(), 0.0)
    assert view.tick(5.0) == []
    events = view.tick(20.0)
    assert [(e.kind, e.at) for e in events] == [(HealthEventKind.SUSPECT, 10.0)]
    assert view.tick(30.0) == []  # still suspect: no second alert
    assert [(e.kind, e.at) for e in view.tick(100.0)] == [(HealthEventKind.DEAD, 70.0)]
    assert view.tick(1000.0) == []
    back = view.observe(hb(seq=1), 1000.0)
    assert [(e.kind, e.at) for e in back] == [(HealthEventKind.RECOVERED, 1000.0)]
    assert view.observe(hb(seq=2), 1005.0) == []
    # A peer that goes straight from alive to dead between two ticks raises both, in order.
    kinds = [e.kind for e in view.tick(5000.0)]
    assert kinds == [HealthEventKind.SUSPECT, HealthEventKind.DEAD]


def test_stale_and_duplicate_heartbeats_are_ignored_but_restarts_count() -> None:
    view = HealthView(CFG)
    view.observe(hb(seq=10, incarnation=5), 0.0)
    view.observe(hb(seq=9, incarnation=5), 8.0)  # reordered gossip
    assert view.status("peer-a", 12.0) is PeerStatus.SUSPECT
    view.observe(hb(seq=10, incarnation=4), 9.0)  # an older incarnation
    assert view.status("peer-a", 12.0) is PeerStatus.SUSPECT
    view.observe(hb(seq=0, incarnation=6), 9.0)  # restarted: seq starts again
    assert view.status("peer-a", 12.0) is PeerStatus.ALIVE
    assert view.info("peer-a").incarnation == 6


def run_peer(view: HealthView, p: float, seconds: float, rnd: random.Random,
             session_s: float = 600.0) -> float:
    """Drive a peer that is up a fraction p of the time; return the final time."""
    t, seq, up = 0.0, 0, True
    while t < seconds:
        length = rnd.expovariate(1 / (session_s if up else session_s * (1 - p) / p))
        if up:
            end = t + length
            while t < end:
                view.observe(hb(seq=seq), t)
                seq += 1
                t += CFG.heartbeat_interval_s
        else:
            t += length
        up = not up
    return t


@pytest.mark.parametrize("p", [0.5, 0.8])
def test_availability_estimate_follows_observed_uptime(p: float) -> None:
    cfg = HealthConfig(heartbeat_interval_s=5.0, p_halflife_s=86400.0, p_prior=0.9)
    view = HealthView(cfg)
    view.observe(hb(seq=0), 0.0)
    assert view.p("peer-a", 0.0) == pytest.approx(0.9)  # the prior
    assert view.p("unknown", 0.0) == 0.9
    t = run_peer(view, p, 6 * 86400.0, random.Random(1))
    # Six half-lives of 10-minute sessions: the prior is forgotten; the estimate
    # is within sampling noise of the true uptime (seeds 0..7 stay within 0.055).
    assert abs(view.p("peer-a", t) - p) < 0.06


def test_lost_heartbeats_do_not_lower_the_estimate() -> None:
    lossy = HealthView(CFG)
    for i in range(0, 2000, 3):  # two of three heartbeats lost in gossip: seq jumps
        lossy.observe(hb(seq=i), i * 5.0)
    assert lossy.p("peer-a", 10_000.0) > 0.95


def test_silence_lowers_the_estimate_while_it_lasts() -> None:
    view = HealthView(CFG)
    for i in range(100):
        view.observe(hb(seq=i), i * 5.0)
    p_alive = view.p("peer-a", 500.0)
    assert view.p("peer-a", 500.0 + 3600.0) < p_alive - 0.2


def test_persisted_view_restores_estimates_and_counts_peers_as_just_seen() -> None:
    view = HealthView(CFG)
    view.observe(hb("peer-a", seq=0), 0.0)
    view.observe(hb("peer-b", seq=0), 0.0)
    for i in range(1, 50):
        view.observe(hb("peer-b", seq=i), i * 5.0)
    p_b = view.p("peer-b", 245.0)
    back = HealthView.from_bytes(view.to_bytes(), CFG, now=10_000.0)
    assert back.peers() == ["peer-a", "peer-b"]
    assert back.p("peer-b", 10_000.0) == pytest.approx(p_b)
    assert back.status("peer-a", 10_005.0) is PeerStatus.ALIVE
    assert back.status("peer-a", 10_070.0) is PeerStatus.DEAD
    assert back.info("peer-b") == hb("peer-b", seq=49)


def test_decoding_refuses_malformed_data() -> None:
    h = hb("12D3KooWpeer", seq=3)
    assert decode_heartbeat(encode_heartbeat(h)) == h
    with pytest.raises(PinsetDecodeError, match="heartbeat"):
        decode_heartbeat(msgpack.packb({"v": 1, "hb": ["p", 0, 0, 5, 10, 0, [], 0, 0, 0]}))
    with pytest.raises(PinsetDecodeError, match="heartbeat"):
        decode_heartbeat(b"\xc1")
    bad_views = [
        {"v": 2, "peers": []},
        {"v": 1, "peers": [["p", 0, 0, 1.0, 0.5, None]]},  # seen > expected
        {"v": 1, "peers": [["p", -1, 0, 1.0, 2.0, None]]},
        {"v": 1, "peers": [["", 0, 0, 1.0, 2.0, None]]},
        {"v": 1, "peers": [["p", 0, 0, 1.0, 2.0, ["q", 0, 0, 1, 1, 0, [], 0, 0, 0]]]},
    ]
    for obj in bad_views:
        with pytest.raises(PinsetDecodeError, match="health"):
            HealthView.from_bytes(msgpack.packb(obj), CFG, 0.0)


def test_config_refuses_bad_values() -> None:
    for kw in ({"heartbeat_interval_s": 0}, {"repair_grace_s": -1}, {"p_prior": 0},
               {"p_prior": 1.5}, {"p_halflife_s": float("nan")}):
        with pytest.raises(InvalidPin, match=next(iter(kw))):
            HealthConfig(**kw)


def test_statistics_count_peers_by_status() -> None:
    view = HealthView(CFG)
    view.observe(hb("peer-a"), 0.0)
    view.observe(hb("peer-b"), 80.0)
    view.observe(hb("peer-c"), 99.0)
    stats = view.statistics(100.0)
    assert (stats.alive, stats.suspect, stats.dead) == (1, 1, 1)


def test_a_direct_answer_keeps_a_peer_alive_when_its_heartbeats_are_late() -> None:
    view = HealthView(CFG)
    assert view.touch("peer-a", 5.0) == []  # never sent a heartbeat: unknown
    view.observe(hb(), 100.0)
    assert [e.kind for e in view.tick(112.0)] == [HealthEventKind.SUSPECT]
    back = view.touch("peer-a", 112.0)  # it answered a sync round trip
    assert [(e.kind, e.at) for e in back] == [(HealthEventKind.RECOVERED, 112.0)]
    assert view.status("peer-a", 121.9) is PeerStatus.ALIVE
    assert view.touch("peer-a", 113.0) == []
    assert view.tick(200.0)[-1].kind is HealthEventKind.DEAD  # silence still counts
    assert view.info("peer-a") == hb()  # the info is the last heartbeat's
