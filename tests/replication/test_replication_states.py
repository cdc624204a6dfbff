"""The per-peer state log (pinfold/replication/states.py) and the sync/gossip messages.

Property: whatever gossip deltas a receiver gets (lost, duplicated, reordered),
one pull session from the owner (paged, possibly across a compaction or an
owner restart) leaves the receiver with exactly the owner's states, and no
applied delta ever moves a state back in time.
"""

from __future__ import annotations

import hashlib
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pinfold.replication.errors import PinsetDecodeError
from pinfold.replication.holdings import Holdings
from pinfold.replication.messages import (
    ClusterBeat,
    PushRequest,
    PushResponse,
    StatesRequest,
    StatesResponse,
    decode_beat,
    decode_request,
    decode_response,
    encode_beat,
    encode_request,
    encode_response,
)
from pinfold.replication.pinset import Entry
from pinfold.replication.states import (
    OwnStates,
    PeerStates,
    StatesDelta,
    decode_delta,
    encode_delta,
)
from pinfold.replication.sync import SummaryRequest
from pinfold.replication.types import Heartbeat, Pin, PinState

STATES = list(PinState)


def cid_of(i: int) -> bytes:
    return bytes([1, 0x55, 0x12, 0x20]) + hashlib.sha256(b"s%d" % i).digest()


def pull(owner: OwnStates, recv: PeerStates, limit: int) -> int:
    """One pull session, as the manager runs it; returns the pages."""
    pages = 0
    while True:
        k = recv.known(owner.peer_id)
        delta = owner.delta_since(0 if k is None else k[1], None if k is None else k[0],
                                  resume=recv.resuming(owner.peer_id), limit=limit)
        delta = decode_delta(encode_delta(delta))  # through the wire form
        applied, _ = recv.apply(delta, pulled=True)
        pages += 1
        assert applied, delta
        if not delta.more:
            return pages


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(st.tuples(st.integers(0, 40), st.sampled_from(STATES)), max_size=400),
       seed=st.integers(0, 2**32), limit=st.integers(1, 50), restart_at=st.integers(-1, 400))
def test_gossip_then_pull_converges_and_never_goes_back(ops, seed, limit, restart_at) -> None:
    rng = random.Random(seed)
    h_owner, h_recv = Holdings(), Holdings()
    owner = OwnStates("owner", h_owner, epoch=7)
    recv = PeerStates("recv", h_recv)
    # The receiver first knows some prefix of the log through a pull.
    pull(owner, recv, limit)
    deltas: list[StatesDelta] = []
    published = owner.version
    for n, (i, s) in enumerate(ops):
        if n == restart_at:  # the owner restarts from its persisted states and version
            owner = OwnStates("owner", h_owner, epoch=7, version=owner.version)
            published = owner.version
        owner.set(cid_of(i), s)
        if rng.random() < 0.3:
            d = owner.delta_since(published, owner.epoch)
            published = d.version
            deltas.append(d)
    # Gossip: lost, duplicated and reordered.
    arrived = [d for d in deltas if rng.random() < 0.7]
    arrived += [d for d in deltas if rng.random() < 0.2]
    rng.shuffle(arrived)
    for d in arrived:
        before = dict(h_recv.peer_states("owner"))
        k = recv.known("owner")
        applied, changed = recv.apply(d)
        if applied:
            assert k is not None and d.base <= k[1] < d.version
            assert recv.known("owner") == (7, d.version)
        else:
            assert dict(h_recv.peer_states("owner")) == before and not changed
    pull(owner, recv, limit)
    assert dict(h_recv.peer_states("owner")) == dict(h_owner.peer_states("owner"))
    assert recv.known("owner") == (7, owner.version)
    assert not recv.needs_pull("owner", 7, owner.version)


def test_compaction_gives_late_peers_a_paged_reset() -> None:
    h_owner, h_recv = Holdings(), Holdings()
    owner = OwnStates("owner", h_owner, epoch=1)
    recv = PeerStates("recv", h_recv)
    for i in range(100):
        owner.set(cid_of(i), PinState.PINNED)
    pull(owner, recv, 1000)
    for rnd in range(30):  # churn far beyond the log bound: the log compacts
        for i in range(100):
            owner.set(cid_of(i), PinState.REMOTE if (i + rnd) % 3 else PinState.PINNED)
    assert owner.floor > 100
    d = owner.delta_since(100, 1, limit=10)
    assert d.reset and d.more and len(d.changes) <= 10
    assert pull(owner, recv, 10) > 1
    assert dict(h_recv.peer_states("owner")) == dict(h_owner.peer_states("owner"))


def test_new_epoch_and_resets_come_only_from_pulls() -> None:
    h_owner, h_recv = Holdings(), Holdings()
    owner = OwnStates("owner", h_owner, epoch=1)
    recv = PeerStates("recv", h_recv)
    owner.set(cid_of(1), PinState.PINNED)
    pull(owner, recv, 10)
    reborn = OwnStates("owner", Holdings(), epoch=2)  # a new store: a new log
    reborn.set(cid_of(2), PinState.QUEUED)
    gossip = reborn.delta_since(0, 2)
    assert recv.apply(gossip) == (False, set())  # another epoch: pull instead
    assert recv.needs_pull("owner", 2, reborn.version)
    reset = reborn.delta_since(1, 1)  # we ask with the old epoch
    assert reset.reset
    assert recv.apply(reset) == (False, set()), "a reset by gossip is refused"
    applied, changed = recv.apply(reset, pulled=True)
    assert applied and changed == {cid_of(1), cid_of(2)}
    assert dict(h_recv.peer_states("owner")) == {cid_of(2): PinState.QUEUED}


def test_own_states_are_never_taken_from_others() -> None:
    h = Holdings()
    recv = PeerStates("me", h)
    d = StatesDelta(owner="me", epoch=1, base=0, version=1, reset=True,
                    changes=((cid_of(1), PinState.PINNED),))
    assert recv.apply(d, pulled=True) == (False, set())
    assert h.get(cid_of(1), "me") is PinState.REMOTE


@pytest.mark.parametrize("bad", [
    b"", b"\x80", b"\x01",
    encode_delta(StatesDelta(owner="o", epoch=1, base=0, version=1))[:-1],
])
def test_delta_decoder_refuses_malformed_bytes(bad: bytes) -> None:
    with pytest.raises(PinsetDecodeError):
        decode_delta(bad)


def test_delta_decoder_names_a_bad_state_code() -> None:
    import msgpack

    obj = {"v": 1, "owner": "o", "epoch": 1, "base": 0, "version": 1, "reset": False,
           "more": False, "changes": [[cid_of(1), 9]]}
    with pytest.raises(PinsetDecodeError, match="unknown state code 9"):
        decode_delta(msgpack.packb(obj, use_bin_type=True))


def test_messages_round_trip() -> None:
    hb = Heartbeat(peer_id="p1", incarnation=5, seq=9, capacity_bytes=100, free_bytes=40,
                   pin_queue_len=2, addresses=("/ip4/127.0.0.1/tcp/1/p2p/p1",), pinned_count=3)
    beat = ClusterBeat(heartbeat=hb, pinset_digest=(1 << 127) + 5, pinset_count=12,
                       states_epoch=3, states_version=44)
    assert decode_beat(encode_beat(beat)) == beat
    e = Entry(cid=cid_of(1), ts=1 << 40, peer_id="w", pin=Pin(cid=cid_of(1), name="x"))
    for req in (PushRequest(entries=(e,)), StatesRequest(epoch=None, base=3, resume=True),
                SummaryRequest(tree_bits=16, level=0, indices=(0,))):
        assert decode_request(encode_request(req)) == req
    for resp in (PushResponse(changed=4), StatesResponse(delta=StatesDelta(
            owner="o", epoch=1, base=2, version=5, more=True,
            changes=((cid_of(3), PinState.PIN_ERROR),)))):
        assert decode_response(encode_response(resp)) == resp
    with pytest.raises(PinsetDecodeError, match="is a response"):
        decode_request(encode_response(PushResponse(changed=1)))
    with pytest.raises(PinsetDecodeError, match="is a request"):
        decode_response(encode_request(StatesRequest(epoch=1, base=0)))
