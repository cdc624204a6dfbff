"""The sans-IO Bitswap cores, without a network: server ledgers/scheduler and client wants."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pinfold.blockstore.cid import RAW, cid_key, make_cid
from pinfold.daemon.p2p.bitswap.wants import ClientConfig, SendWants, WantFailed, WantManager
from pinfold.daemon.p2p.bitswap.errors import WantlistTooLarge
from pinfold.daemon.p2p.bitswap.message import BlockPresence, PresenceType, WantEntry, WantType
from pinfold.daemon.p2p.bitswap.server import ServerConfig, ServerEngine

MiB = 1024 * 1024
CIDS = [make_cid(i.to_bytes(4, "big"), RAW) for i in range(400)]


def sizes(table):
    return lambda cid: table.get(cid_key(cid))


def want(cid, *, have=False, sdh=True, priority=1, cancel=False):
    return WantEntry(
        cid=cid,
        want_type=WantType.HAVE if have else WantType.BLOCK,
        send_dont_have=sdh,
        priority=priority,
        cancel=cancel,
    )


# ------------------------------------------------------------------ server


def test_server_answers_have_block_and_dont_have():
    eng = ServerEngine()
    table = {cid_key(CIDS[0]): 5000, cid_key(CIDS[1]): 10, cid_key(CIDS[2]): 7000}
    eng.receive_wantlist("p", [want(CIDS[0], have=True), want(CIDS[1], have=True), want(CIDS[2]), want(CIDS[3])])
    env = eng.next_envelope(sizes(table))
    assert env.haves == (CIDS[0],)  # large block: HAVE
    assert set(env.blocks) == {CIDS[1], CIDS[2]}  # tiny block sent instead of HAVE; want-block
    assert env.dont_haves == (CIDS[3],)
    assert env.block_bytes == 7010
    assert eng.next_envelope(sizes(table)) is None  # everything answered once


def test_server_keeps_a_missing_want_and_serves_it_when_the_block_arrives():
    eng = ServerEngine()
    table: dict[bytes, int] = {}
    eng.receive_wantlist("p", [want(CIDS[0], sdh=False)])
    assert eng.next_envelope(sizes(table)) is None  # no DONT_HAVE: not asked for
    assert eng.ledger("p").wantlist_size == 1
    table[cid_key(CIDS[0])] = 100
    assert eng.blocks_added([cid_key(CIDS[0])]) == ["p"]
    assert eng.next_envelope(sizes(table)).blocks == (CIDS[0],)


def test_server_honours_cancels_and_full_wantlists():
    eng = ServerEngine()
    table = {cid_key(c): 10 for c in CIDS[:3]}
    eng.receive_wantlist("p", [want(CIDS[0]), want(CIDS[1])])
    eng.receive_wantlist("p", [want(CIDS[0], cancel=True)])
    eng.receive_wantlist("q", [want(CIDS[0]), want(CIDS[1])])
    eng.receive_wantlist("q", [want(CIDS[2])], full=True)
    got = {}
    while (env := eng.next_envelope(sizes(table))) is not None:
        got.setdefault(env.peer, []).extend(env.blocks)
    assert got == {"p": [CIDS[1]], "q": [CIDS[2]]}


def test_server_serves_higher_priority_first_then_arrival_order():
    eng = ServerEngine(ServerConfig(quantum_bytes=1))
    table = {cid_key(c): 10 for c in CIDS[:4]}
    eng.receive_wantlist("p", [want(CIDS[0]), want(CIDS[1], priority=9), want(CIDS[2]), want(CIDS[3], priority=9)])
    order = []
    while (env := eng.next_envelope(sizes(table))) is not None:
        order.extend(env.blocks)
    assert order == [CIDS[1], CIDS[3], CIDS[0], CIDS[2]]


def test_round_robin_a_heavy_peer_does_not_starve_a_light_one():
    eng = ServerEngine(ServerConfig(quantum_bytes=MiB, max_queued_bytes_per_peer=64 * MiB))
    table = {cid_key(c): MiB for c in CIDS[:101]}
    eng.receive_wantlist("heavy", [want(c) for c in CIDS[:100]])
    eng.receive_wantlist("light", [want(CIDS[100])])
    first = [eng.next_envelope(sizes(table)) for _ in range(3)]
    assert [e.peer for e in first] == ["heavy", "light", "heavy"]
    assert first[1].blocks == (CIDS[100],)
    assert all(len(e.blocks) == 1 for e in first)  # one 1 MiB quantum per turn


def test_queued_bytes_per_peer_are_bounded_until_written():
    eng = ServerEngine(ServerConfig(quantum_bytes=MiB, max_queued_bytes_per_peer=2 * MiB))
    table = {cid_key(c): MiB for c in CIDS[:10]}
    eng.receive_wantlist("p", [want(c) for c in CIDS[:10]])
    e1 = eng.next_envelope(sizes(table))
    e2 = eng.next_envelope(sizes(table))
    assert eng.next_envelope(sizes(table)) is None  # 2 MiB queued: wait
    assert eng.ledger("p").queued_bytes == 2 * MiB
    eng.envelope_sent("p", e1.block_bytes, 1)
    assert eng.next_envelope(sizes(table)) is not None
    assert eng.ledger("p").bytes_sent == MiB and eng.ledger("p").blocks_sent == 1
    del e2


def test_wantlist_flood_raises_and_drops_the_ledger():
    eng = ServerEngine(ServerConfig(max_wantlist_entries=50))
    eng.receive_wantlist("p", [want(c) for c in CIDS[:50]])
    with pytest.raises(WantlistTooLarge, match="more than 50"):
        eng.receive_wantlist("p", [want(CIDS[50])])
    assert eng.ledger("p") is None


def test_disconnect_forgets_the_peer():
    eng = ServerEngine()
    eng.receive_wantlist("p", [want(CIDS[0], sdh=False)])
    eng.peer_disconnected("p")
    assert eng.blocks_added([cid_key(CIDS[0])]) == []
    assert eng.next_envelope(sizes({cid_key(CIDS[0]): 1})) is None


# ------------------------------------------------------------------ client


def sends(actions):
    out: dict = {}
    for a in actions:
        if isinstance(a, SendWants):
            out.setdefault(a.peer, []).extend(a.entries)
    return out


def test_first_want_asks_everyone_have_then_block_from_the_first_holder():
    m = WantManager()
    for p in ("p1", "p2"):
        m.peer_connected(p, 0.0)
    sid = m.new_session(timeout_s=10, now=0.0)
    out = sends(m.want(sid, [CIDS[0]], 0.0))
    assert {p: [(e.want_type, e.send_dont_have) for e in es] for p, es in out.items()} == {
        "p1": [(WantType.HAVE, True)],
        "p2": [(WantType.HAVE, True)],
    }
    out = sends(m.on_presences("p2", [BlockPresence(cid=CIDS[0], type=PresenceType.HAVE)], 0.1))
    assert [(e.cid, e.want_type) for e in out["p2"]] == [(CIDS[0], WantType.BLOCK)]
    cid, sids, actions = m.on_block("p2", cid_key(CIDS[0]), 0.2)
    assert cid == CIDS[0] and sids == (sid,)
    assert [(e.cid, e.cancel) for e in sends(actions)["p1"]] == [(CIDS[0], True)]
    assert m.useful_peers(sid) == ["p2"]
    assert m.on_block("p1", cid_key(CIDS[0]), 0.3) is None  # late duplicate


def test_dont_have_from_the_block_peer_moves_the_want():
    m = WantManager()
    for p in ("p1", "p2"):
        m.peer_connected(p, 0.0)
    sid = m.new_session(timeout_s=10, now=0.0)
    m.want(sid, [CIDS[0]], 0.0)
    m.on_presences("p1", [BlockPresence(cid=CIDS[0], type=PresenceType.HAVE)], 0.0)
    m.on_presences("p2", [BlockPresence(cid=CIDS[0], type=PresenceType.HAVE)], 0.0)
    assert m.outstanding("p1") == 1
    out = sends(m.on_presences("p1", [BlockPresence(cid=CIDS[0], type=PresenceType.DONT_HAVE)], 0.1))
    assert [(e.want_type) for e in out["p2"]] == [WantType.BLOCK]
    assert (m.outstanding("p1"), m.outstanding("p2")) == (0, 1)


def test_pipelining_is_capped_per_peer_and_refilled_as_blocks_arrive():
    m = WantManager(ClientConfig(max_outstanding_per_peer=8))
    m.peer_connected("p", 0.0)
    sid = m.new_session(timeout_s=10, now=0.0)
    m.want(sid, [CIDS[0]], 0.0)
    m.on_presences("p", [BlockPresence(cid=CIDS[0], type=PresenceType.HAVE)], 0.0)
    m.on_block("p", cid_key(CIDS[0]), 0.0)  # p is now a useful peer of the session
    out = sends(m.want(sid, CIDS[1:101], 0.0))
    blocks = [e for e in out["p"] if e.want_type == WantType.BLOCK]
    assert len(blocks) == 8 and m.outstanding("p") == 8
    _, _, actions = m.on_block("p", cid_key(blocks[0].cid), 0.1)
    more = [e for e in sends(actions)["p"] if e.want_type == WantType.BLOCK]
    assert len(more) == 1 and m.outstanding("p") == 8


def test_wants_spread_over_every_holder():
    """With ``spread_holders`` (admission off), every holder gets want-blocks at once."""
    m = WantManager(ClientConfig(max_outstanding_per_peer=4, adaptive_holders=False))
    peers = ["a", "b", "c"]
    for p in peers:
        m.peer_connected(p, 0.0)
    sid = m.new_session(timeout_s=10, now=0.0)
    m.want(sid, CIDS[:30], 0.0)
    for p in peers:
        m.on_presences(p, [BlockPresence(cid=c, type=PresenceType.HAVE) for c in CIDS[:30]], 0.0)
    assert [m.outstanding(p) for p in peers] == [4, 4, 4]


def test_a_fetch_starts_on_one_holder_and_others_wait_for_their_trial():
    m = WantManager(ClientConfig(max_outstanding_per_peer=4))
    peers = ["a", "b", "c"]
    for p in peers:
        m.peer_connected(p, 0.0)
    sid = m.new_session(timeout_s=10, now=0.0)
    m.want(sid, CIDS[:30], 0.0)
    for p in peers:
        m.on_presences(p, [BlockPresence(cid=c, type=PresenceType.HAVE) for c in CIDS[:30]], 0.0)
    assert [m.outstanding(p) for p in peers] == [4, 0, 0]
    assert m.scheduler.admission.members() == ["a"]


def test_a_stalled_peer_loses_its_wants_to_another_holder():
    m = WantManager(ClientConfig(stall_timeout_s=5))
    for p in ("slow", "fast"):
        m.peer_connected(p, 0.0)
    sid = m.new_session(timeout_s=60, now=0.0)
    m.want(sid, [CIDS[0]], 0.0)
    m.on_presences("slow", [BlockPresence(cid=CIDS[0], type=PresenceType.HAVE)], 0.0)
    m.on_presences("fast", [BlockPresence(cid=CIDS[0], type=PresenceType.HAVE)], 0.0)
    assert m.outstanding("slow") == 1
    assert sends(m.tick(4.0)) == {}
    out = sends(m.tick(5.1))
    assert [(e.cancel, e.want_type) for e in out["slow"]] == [(True, WantType.BLOCK)]
    assert [e.want_type for e in out["fast"]] == [WantType.BLOCK]


def test_deadline_fails_the_want_naming_who_was_asked():
    m = WantManager()
    for p in ("p1", "p2"):
        m.peer_connected(p, 0.0)
    sid = m.new_session(timeout_s=3, now=0.0)
    m.want(sid, [CIDS[0]], 0.0)
    m.on_presences("p1", [BlockPresence(cid=CIDS[0], type=PresenceType.DONT_HAVE)], 0.1)
    assert not [a for a in m.tick(2.9) if isinstance(a, WantFailed)]
    (fail,) = [a for a in m.tick(3.0) if isinstance(a, WantFailed)]
    assert fail.cid == CIDS[0] and fail.sessions == (sid,) and fail.timeout_s == 3
    assert set(fail.peers_asked) == {"p1", "p2"} and fail.dont_have == ("p1",)
    assert not m.is_wanted(cid_key(CIDS[0]))


def test_progress_in_the_session_extends_the_deadline():
    m = WantManager()
    m.peer_connected("p", 0.0)
    sid = m.new_session(timeout_s=3, now=0.0)
    m.want(sid, CIDS[:2], 0.0)
    m.on_block("p", cid_key(CIDS[0]), 2.5)
    assert not [a for a in m.tick(4.0) if isinstance(a, WantFailed)]
    assert [a.cid for a in m.tick(5.5) if isinstance(a, WantFailed)] == [CIDS[1]]


def test_disconnect_reroutes_and_new_peers_are_asked():
    m = WantManager()
    m.peer_connected("p1", 0.0)
    sid = m.new_session(timeout_s=10, now=0.0)
    m.want(sid, [CIDS[0]], 0.0)
    m.on_presences("p1", [BlockPresence(cid=CIDS[0], type=PresenceType.HAVE)], 0.0)
    assert m.outstanding("p1") == 1
    assert sends(m.peer_disconnected("p1", 1.0)) == {}
    out = sends(m.peer_connected("p2", 1.5))
    assert [e.want_type for e in out["p2"]] == [WantType.HAVE]


def test_session_peer_filter_and_close_sends_cancels():
    m = WantManager()
    for p in ("in", "out"):
        m.peer_connected(p, 0.0)
    sid = m.new_session(timeout_s=10, now=0.0, peers=["in"])
    assert set(sends(m.want(sid, [CIDS[0]], 0.0))) == {"in"}
    out = sends(m.close_session(sid))
    assert [(e.cid, e.cancel) for e in out["in"]] == [(CIDS[0], True)]
    assert m.wantlist_size() == 0


def test_two_sessions_share_one_want():
    m = WantManager()
    m.peer_connected("p", 0.0)
    s1 = m.new_session(timeout_s=10, now=0.0)
    s2 = m.new_session(timeout_s=10, now=0.0)
    assert sends(m.want(s1, [CIDS[0]], 0.0))
    assert sends(m.want(s2, [CIDS[0]], 0.0)) == {}
    assert sends(m.close_session(s1)) == {}  # s2 still wants it
    _, sids, _ = m.on_block("p", cid_key(CIDS[0]), 0.1)
    assert sids == (s2,)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["have", "dont", "block", "tick", "drop", "join"]),
                          st.integers(0, 2), st.integers(0, 39)), max_size=120))
def test_property_never_more_than_the_cap_in_flight(events):
    cap = 3
    m = WantManager(ClientConfig(max_outstanding_per_peer=cap, stall_timeout_s=1))
    peers = ["a", "b", "c"]
    for p in peers:
        m.peer_connected(p, 0.0)
    sid = m.new_session(timeout_s=1000, now=0.0)
    m.want(sid, CIDS[:40], 0.0)
    now = 0.0
    for kind, pi, ci in events:
        now += 0.3
        p, c = peers[pi], CIDS[ci]
        if kind == "have":
            m.on_presences(p, [BlockPresence(cid=c, type=PresenceType.HAVE)], now)
        elif kind == "dont":
            m.on_presences(p, [BlockPresence(cid=c, type=PresenceType.DONT_HAVE)], now)
        elif kind == "block":
            m.on_block(p, cid_key(c), now)
        elif kind == "tick":
            m.tick(now)
        elif kind == "drop":
            m.peer_disconnected(p, now)
        else:
            m.peer_connected(p, now)
        for q in m.connected():
            assert m.outstanding(q) <= cap


def test_unanswerable_wants_make_room_instead_of_counting_as_a_flood():
    eng = ServerEngine(ServerConfig(max_wantlist_entries=10))
    eng.receive_wantlist("p", [want(c) for c in CIDS[:10]])
    assert eng.next_envelope(sizes({})).dont_haves  # all missing: answered, kept waiting
    eng.receive_wantlist("p", [want(c) for c in CIDS[10:15]])  # no flood: oldest waiting dropped
    assert eng.ledger("p").wantlist_size == 10
    assert set(eng.wanted_by("p")) == set(CIDS[5:15])


def _fails(actions):
    return [a for a in actions if isinstance(a, WantFailed)]


def _all_dont_have(m, peers, cid, now):
    for p in peers:
        m.on_presences(p, [BlockPresence(cid=cid, type=PresenceType.DONT_HAVE)], now)


def test_a_want_every_peer_answers_dont_have_for_fails_at_once():
    """Content nobody has ends the fetch in well under a second, not at the
    deadline, naming how many peers were asked and what they answered."""
    m = WantManager()
    for p in ("p1", "p2"):
        m.peer_connected(p, 0.0)
    sid = m.new_session(timeout_s=30, now=0.0)
    m.want(sid, [CIDS[0]], 0.0)
    _all_dont_have(m, ["p1"], CIDS[0], 0.1)
    assert not _fails(m.tick(0.5))  # p2 has not answered yet
    _all_dont_have(m, ["p2"], CIDS[0], 0.6)
    assert not _fails(m.tick(0.7))  # settling: a peer that connects now is asked too
    (fail,) = _fails(m.tick(0.9))
    assert fail.all_dont_have and fail.sessions == (sid,)
    assert fail.peers_asked == fail.dont_have == ("p1", "p2")
    assert not m.is_wanted(cid_key(CIDS[0]))


def test_a_peer_connecting_after_every_dont_have_is_asked_before_giving_up():
    m = WantManager()
    m.peer_connected("p1", 0.0)
    sid = m.new_session(timeout_s=30, now=0.0)
    m.want(sid, [CIDS[0]], 0.0)
    _all_dont_have(m, ["p1"], CIDS[0], 0.1)
    out = sends(m.peer_connected("p2", 0.2))
    assert [e.want_type for e in out["p2"]] == [WantType.HAVE]
    assert not _fails(m.tick(1.0))
    m.on_presences("p2", [BlockPresence(cid=CIDS[0], type=PresenceType.HAVE)], 1.1)
    assert not _fails(m.tick(5.0))  # someone has it: wait for it


def test_a_session_limited_to_expected_holders_waits_through_dont_have():
    """A fetch from given peers (a cluster pin's holders, which may be fetching
    the block themselves) keeps waiting until its deadline."""
    m = WantManager()
    m.peer_connected("holder", 0.0)
    sid = m.new_session(timeout_s=3, now=0.0, peers=["holder"])
    m.want(sid, [CIDS[0]], 0.0)
    _all_dont_have(m, ["holder"], CIDS[0], 0.1)
    assert not _fails(m.tick(2.0))
    (fail,) = _fails(m.tick(3.0))
    assert not fail.all_dont_have


def test_the_only_holder_leaving_after_others_said_dont_have_ends_the_want_early():
    m = WantManager()
    for p in ("p1", "p2"):
        m.peer_connected(p, 0.0)
    sid = m.new_session(timeout_s=30, now=0.0)
    m.want(sid, [CIDS[0]], 0.0)
    m.on_presences("p1", [BlockPresence(cid=CIDS[0], type=PresenceType.HAVE)], 0.1)
    _all_dont_have(m, ["p2"], CIDS[0], 0.1)
    assert not _fails(m.tick(1.0))
    m.peer_disconnected("p1", 1.1)
    assert not _fails(m.tick(1.2))
    (fail,) = _fails(m.tick(1.5))
    assert fail.all_dont_have and fail.dont_have == ("p2",)
