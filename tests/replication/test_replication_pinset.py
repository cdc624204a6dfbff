"""The shared pinset CRDT (pinfold/replication/pinset.py) and its anti-entropy (pinfold/replication/sync.py).

Properties (STYLE.md 8): merge is commutative, associative and idempotent over
random operation histories; after every replica merged every history all hold
the same pinset; encodings round-trip and malformed bytes give a clear
``PinsetDecodeError``, never a crash.
"""

from __future__ import annotations

import hashlib
import random

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pinfold.blockstore.cid import DAG_PB, make_cid
from pinfold.replication.errors import InvalidPin, PinNotFound, PinsetDecodeError, StaleWrite
from pinfold.replication.hlc import HybridClock, hlc_from_wall
from pinfold.replication.pinset import (
    Entry,
    PinSet,
    decode_entries,
    decode_entry,
    encode_entries,
    encode_entry,
)
from pinfold.replication.sync import (
    EntriesRequest,
    Reconciler,
    SummaryRequest,
    answer,
    decode_message,
    encode_message,
)
from pinfold.replication.types import Pin, PinMode, pin_key


def raw_cid(data: bytes) -> bytes:
    """Binary CIDv1 (raw, sha2-256) of ``data``, built without multiformats (fast)."""
    return b"\x01\x55\x12\x20" + hashlib.sha256(data).digest()


CIDS = [bytes(make_cid(f"block-{i}".encode())) for i in range(8)]
assert CIDS[0] == raw_cid(b"block-0")
PEERS = ["peer-a", "peer-b", "peer-c"]


def snapshot(ps: PinSet) -> tuple:
    """Everything observable about a replica's content."""
    return (
        tuple((e.cid, e.ts, e.peer_id, e.pin) for e in ps.entries(include_tombstones=True)),
        ps.summary(0, 0),
        len(ps),
    )


def merged(*groups: list[Entry]) -> PinSet:
    ps = PinSet(tree_bits=8)
    for g in groups:
        ps.merge(g)
    return ps


# Entries with few CIDs, timestamps and writers, so that conflicts and exact
# ties (same ts, other writer; even same ts and writer with other content) occur.
pins_st = st.builds(
    Pin,
    cid=st.sampled_from(CIDS),
    name=st.sampled_from(["", "a", "model"]),
    mode=st.sampled_from(list(PinMode)),
    rmin=st.integers(1, 2),
    rmax=st.integers(2, 3),
)


@st.composite
def entries_st(draw: st.DrawFn) -> Entry:
    cid = draw(st.sampled_from(CIDS))
    ts = draw(st.integers(1, 6))
    peer = draw(st.sampled_from(PEERS))
    if draw(st.booleans()):
        p = draw(pins_st)
        p = Pin(cid=cid, name=p.name, mode=p.mode, rmin=p.rmin, rmax=p.rmax)
        return Entry(cid=cid, ts=ts, peer_id=peer, pin=p)
    return Entry(cid=cid, ts=ts, peer_id=peer, pin=None)


histories = st.lists(entries_st(), max_size=25)


@settings(max_examples=100, deadline=None)
@given(histories, histories)
def test_merge_is_commutative(a: list[Entry], b: list[Entry]) -> None:
    ab = merged(a)
    ab.merge_set(merged(b))
    ba = merged(b)
    ba.merge_set(merged(a))
    assert snapshot(ab) == snapshot(ba)


@settings(max_examples=100, deadline=None)
@given(histories, histories, histories)
def test_merge_is_associative(a: list[Entry], b: list[Entry], c: list[Entry]) -> None:
    left = merged(a)
    left.merge_set(merged(b))
    left.merge_set(merged(c))
    bc = merged(b)
    bc.merge_set(merged(c))
    right = merged(a)
    right.merge_set(bc)
    assert snapshot(left) == snapshot(right)


@settings(max_examples=100, deadline=None)
@given(histories, st.randoms(use_true_random=False))
def test_merge_is_idempotent_and_order_free(a: list[Entry], rnd: random.Random) -> None:
    ps = merged(a)
    before = snapshot(ps)
    assert ps.merge(a) == []  # idempotent: nothing changes a second time
    ps.merge_set(merged(a))
    assert snapshot(ps) == before
    shuffled = list(a)
    rnd.shuffle(shuffled)
    assert snapshot(merged(shuffled + shuffled)) == before


ops_st = st.lists(
    st.tuples(
        st.sampled_from(["put", "remove", "gossip", "gossip", "tick"]),
        st.integers(0, 2),  # replica
        st.integers(0, 2),  # other replica / clock step
        st.sampled_from(CIDS[:4]),
        st.integers(1, 3),
    ),
    max_size=40,
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops_st, st.randoms(use_true_random=False))
def test_replicas_converge_after_exchanging_everything(ops: list, rnd: random.Random) -> None:
    """Random local writes, lossy/duplicated gossip and skewed clocks; then full exchange."""
    replicas = [PinSet(tree_bits=8) for _ in PEERS]
    clocks = [HybridClock(max_drift_s=None) for _ in PEERS]
    walls = [1000.0, 990.0, 1005.0]  # skewed wall clocks
    written: list[Entry] = []
    for op, r, other, cid, rmin in ops:
        ps, clock = replicas[r], clocks[r]
        if op == "tick":
            walls[r] += other - 1  # the wall clock may go backwards
        elif op == "put":
            clock.receive(ps.max_ts, walls[r]) if ps.max_ts else None
            written.append(ps.put(Pin(cid=cid, rmin=rmin, rmax=3), ts=clock.now(walls[r]),
                                  peer_id=PEERS[r]))
        elif op == "remove" and cid in ps:
            clock.receive(ps.max_ts, walls[r])
            written.append(ps.remove(cid, ts=clock.now(walls[r]), peer_id=PEERS[r]))
        elif op == "gossip" and other != r:
            delta = ps.delta_since(rnd.randrange(ps.version + 1))
            if rnd.random() < 0.7:  # sometimes lost
                replicas[other].merge(delta)
    # Anti-entropy: everybody merges everybody, in a random order.
    pairs = [(i, j) for i in range(3) for j in range(3) if i != j]
    rnd.shuffle(pairs)
    for i, j in pairs + pairs:
        replicas[i].merge_set(replicas[j])
    snaps = {snapshot(ps) for ps in replicas}
    assert len(snaps) == 1
    # ... and equal to merging every write ever made, in any order.
    rnd.shuffle(written)
    assert snapshot(merged(written)) == snaps.pop()


def test_last_writer_wins_and_ties_break_on_peer_id() -> None:
    ps = PinSet(tree_bits=8)
    cid = CIDS[0]
    ps.merge([Entry(cid=cid, ts=5, peer_id="peer-a", pin=Pin(cid=cid, name="old"))])
    ps.merge([Entry(cid=cid, ts=5, peer_id="peer-b", pin=Pin(cid=cid, name="tie-b"))])
    assert ps.pin(cid).name == "tie-b"
    ps.merge([Entry(cid=cid, ts=4, peer_id="peer-z", pin=None)])  # older tombstone loses
    assert cid in ps
    ps.merge([Entry(cid=cid, ts=6, peer_id="peer-a", pin=None)])
    assert cid not in ps and ps.get(cid).is_tombstone and len(ps) == 0


def test_local_writes_refuse_stale_timestamps_and_unknown_removes() -> None:
    ps = PinSet(tree_bits=8)
    cid = CIDS[1]
    ps.put(Pin(cid=cid), ts=10, peer_id="peer-a")
    with pytest.raises(StaleWrite, match="does not beat"):
        ps.put(Pin(cid=cid, name="late"), ts=9, peer_id="peer-a")
    with pytest.raises(PinNotFound, match="not in the pinset"):
        ps.remove(CIDS[2], ts=11, peer_id="peer-a")
    ps.remove(cid, ts=11, peer_id="peer-a")
    with pytest.raises(PinNotFound):
        ps.remove(cid, ts=12, peer_id="peer-a")


def test_delta_since_returns_each_changed_cid_once_in_change_order() -> None:
    ps = PinSet(tree_bits=8)
    ps.put(Pin(cid=CIDS[0]), ts=1, peer_id="p")
    v = ps.version
    ps.put(Pin(cid=CIDS[1]), ts=2, peer_id="p")
    ps.put(Pin(cid=CIDS[0], name="again"), ts=3, peer_id="p")
    ps.remove(CIDS[1], ts=4, peer_id="p")
    delta = ps.delta_since(v)
    assert [(e.cid, e.ts) for e in delta] == [(CIDS[0], 3), (CIDS[1], 4)]
    assert ps.delta_since(ps.version) == []
    assert {e.cid for e in ps.delta_since(0)} == {CIDS[0], CIDS[1]}


def test_delta_log_is_compacted_but_stays_correct() -> None:
    ps = PinSet(tree_bits=8)
    for ts in range(1, 3000):
        ps.put(Pin(cid=CIDS[ts % 3]), ts=ts, peer_id="p")
    assert len(ps._log_keys) <= 2 * ps.entry_count + 1024 + 1
    v = ps.version
    ps.put(Pin(cid=CIDS[0], name="n"), ts=5000, peer_id="p")
    assert [e.ts for e in ps.delta_since(v)] == [5000]
    # versions v-2 .. v+1 touched all three CIDs; each comes once, with its current entry
    assert sorted(e.ts for e in ps.delta_since(v - 3)) == [2998, 2999, 5000]


def test_tombstone_compaction_and_watermark_prevent_resurrection() -> None:
    ps = PinSet(tree_bits=8)
    old_pin = Entry(cid=CIDS[0], ts=hlc_from_wall(100), peer_id="p", pin=Pin(cid=CIDS[0]))
    ps.merge([old_pin])
    ps.remove(CIDS[0], ts=hlc_from_wall(200), peer_id="p")
    ps.put(Pin(cid=CIDS[1]), ts=hlc_from_wall(300), peer_id="p")
    gone = ps.compact_tombstones(hlc_from_wall(250))
    assert gone == [CIDS[0]]
    assert ps.get(CIDS[0]) is None and ps.entry_count == 1 and CIDS[1] in ps
    # A peer that missed the unpin sends the old pin again: it stays deleted.
    assert ps.merge([old_pin]) == []
    assert ps.get(CIDS[0]) is None
    assert ps.statistics().rejected_stale == 1
    # Writes newer than the watermark are accepted as usual.
    fresh = Entry(cid=CIDS[0], ts=hlc_from_wall(400), peer_id="q", pin=Pin(cid=CIDS[0]))
    assert ps.merge([fresh]) == [fresh]
    # A replica that compacted and one that did not still converge on live pins.
    other = PinSet(tree_bits=8)
    other.merge([old_pin])
    other.merge(ps.entries(include_tombstones=True))
    assert other.pin(CIDS[0]) == fresh.pin


def test_compacting_removes_the_tombstone_when_it_beats_a_local_live_entry() -> None:
    ps = PinSet(tree_bits=8)
    ps.merge([Entry(cid=CIDS[3], ts=10, peer_id="p", pin=Pin(cid=CIDS[3]))])
    ps.compact_tombstones(100)
    tomb = Entry(cid=CIDS[3], ts=50, peer_id="q", pin=None)
    assert ps.merge([tomb]) == [tomb]
    assert ps.get(CIDS[3]) is None and len(ps) == 0


def test_listing_is_deterministic_and_first_entry_does_not_sort_everything() -> None:
    a, b = PinSet(), PinSet()
    entries = [Entry(cid=raw_cid(str(i).encode()), ts=i + 1, peer_id="p",
                     pin=Pin(cid=raw_cid(str(i).encode()))) for i in range(500)]
    a.merge(entries)
    b.merge(reversed(entries))
    assert [e.cid for e in a.entries()] == [e.cid for e in b.entries()]
    assert len(list(a.pins())) == 500
    assert next(a.entries()).cid == min(a.cids(), key=lambda c: (
        __import__("pinfold.replication.pinset", fromlist=["bucket_of"]).bucket_of(c), c))


# ------------------------------------------------------------- serialization


def test_roundtrip_of_every_field() -> None:
    ps = PinSet(tree_bits=8)
    v0 = pin_key(str(make_cid(b"dag", DAG_PB, version=0)))
    ps.put(Pin(cid=v0, name="weights", mode=PinMode.DIRECT, rmin=1, rmax=4, availability=0.999,
               expire_at=1.9e9, metadata={"b": "2", "a": "1"}, size_bytes=123),
           ts=7, peer_id="12D3KooWabc")
    ps.put(Pin(cid=CIDS[0]), ts=8, peer_id="peer-b")
    ps.remove(CIDS[0], ts=9, peer_id="peer-b")
    ps.put(Pin(cid=CIDS[2]), ts=10, peer_id="peer-b")
    ps.remove(CIDS[2], ts=11, peer_id="peer-b")
    ps.compact_tombstones(10)  # drops the tombstone of CIDS[0]; the old live pin stays
    assert ps.entry_count == 2 and v0 in ps
    back = PinSet.from_bytes(ps.to_bytes())
    assert snapshot(back) == snapshot(ps)
    assert back.watermark == 10 and v0 in back  # a pin older than the watermark survives
    assert back.pin(v0).metadata == (("a", "1"), ("b", "2"))
    entries = list(ps.entries(include_tombstones=True))
    assert decode_entries(encode_entries(entries)) == entries
    assert [decode_entry(encode_entry(e)) for e in entries] == entries


def _valid_entry_wire() -> list:
    return [CIDS[0], 5, "peer-a", ["n", "recursive", 2, 3, None, None, {}, None]]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda w: w.__setitem__(0, b"\x01\x02"), "entry 0: cid"),
        (lambda w: w.__setitem__(1, -1), "entry 0: ts"),
        (lambda w: w.__setitem__(1, "5"), "entry 0: ts"),
        (lambda w: w.__setitem__(2, ""), "entry 0: peer_id"),
        (lambda w: w.__setitem__(2, "a b"), "entry 0: peer_id"),
        (lambda w: w[3].__setitem__(1, "sideways"), "entry 0: mode"),
        (lambda w: w[3].__setitem__(2, 0), "entry 0: rmin"),
        (lambda w: w[3].__setitem__(3, 1), "entry 0: rmax"),
        (lambda w: w[3].__setitem__(4, 1.5), "entry 0: availability"),
        (lambda w: w[3].__setitem__(5, -3), "entry 0: expire_at"),
        (lambda w: w[3].__setitem__(6, {"k": 1}), "entry 0: metadata"),
        (lambda w: w[3].__setitem__(6, []), "entry 0: metadata"),
        (lambda w: w[3].__setitem__(7, -1), "entry 0: size_bytes"),
        (lambda w: w[3].pop(), "entry 0: pin"),
        (lambda w: w.pop(), "entry 0: expected"),
    ],
)
def test_decode_names_the_bad_field(mutate, message: str) -> None:
    wire = _valid_entry_wire()
    mutate(wire)
    data = msgpack.packb({"v": 1, "entries": [wire]}, use_bin_type=True)
    with pytest.raises(PinsetDecodeError, match=message):
        decode_entries(data)


def test_decode_rejects_envelopes_and_garbage() -> None:
    good = encode_entries([])
    assert decode_entries(good) == []
    for bad, msg in [
        (b"", "not valid msgpack"),
        (good + b"\x00", "trailing bytes"),
        (msgpack.packb({"v": 2, "entries": []}), "unsupported format version"),
        (msgpack.packb([1, 2]), "expected a map"),
        (msgpack.packb({1: 2}), "not valid msgpack"),  # non-str map key
        ("text", "expected bytes"),
    ]:
        with pytest.raises(PinsetDecodeError, match=msg):
            decode_entries(bad)  # type: ignore[arg-type]
    with pytest.raises(PinsetDecodeError, match="exceed the limit"):
        decode_entries(encode_entries([Entry(cid=CIDS[0], ts=1, peer_id="p", pin=None)] * 3),
                       max_entries=2)
    with pytest.raises(PinsetDecodeError, match="tree_bits"):
        PinSet.from_bytes(msgpack.packb({"v": 1, "tree_bits": 5, "watermark": 0, "entries": []}))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_crash_the_decoder(data: bytes) -> None:
    for decode in (decode_entries, decode_entry, PinSet.from_bytes, decode_message):
        try:
            decode(data)
        except PinsetDecodeError:
            pass


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_valid_encodings_decode_or_fail_cleanly(data: st.DataObject) -> None:
    ps = PinSet(tree_bits=8)
    ps.put(Pin(cid=CIDS[0], name="x", metadata={"k": "v"}, expire_at=5.0), ts=3, peer_id="p")
    ps.remove(CIDS[0], ts=4, peer_id="p") if data.draw(st.booleans()) else None
    blob = bytearray(ps.to_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i] = data.draw(st.integers(0, 255))
    try:
        back = PinSet.from_bytes(bytes(blob))
    except PinsetDecodeError:
        return
    assert back.entry_count <= 1


# ------------------------------------------------------------------- sync


def run_sync(local: PinSet, remote: PinSet, **kw) -> Reconciler:
    rec = Reconciler(local, **kw)
    while (req := rec.next_request()) is not None:
        # Through the wire encoding both ways, as the daemon will do.
        req2 = decode_message(encode_message(req))
        rec.handle(decode_message(encode_message(answer(remote, req2))))
    remote.merge(rec.to_push())
    return rec


def big_pinset(n: int, writer: str = "p") -> PinSet:
    ps = PinSet()
    ps.merge(Entry(cid=c, ts=i + 1, peer_id=writer, pin=Pin(cid=c))
             for i, c in enumerate(raw_cid(f"x{i}".encode()) for i in range(n)))
    return ps


def test_sync_of_equal_replicas_takes_one_round_trip() -> None:
    a, b = big_pinset(300), big_pinset(300)
    rec = run_sync(a, b)
    assert rec.round_trips == 1 and rec.entries_received == 0


def test_sync_finds_few_differences_in_log_rounds_and_pulls_only_them() -> None:
    a, b = big_pinset(20_000), big_pinset(20_000)
    b.put(Pin(cid=CIDS[0]), ts=10**9, peer_id="b")  # only b has it
    a.put(Pin(cid=CIDS[1]), ts=10**9, peer_id="a")  # only a has it
    a.remove(raw_cid(b"x5"), ts=10**9 + 1, peer_id="a")  # a unpinned one
    rec = run_sync(a, b, pull_threshold=16)
    assert rec.round_trips <= a.levels + 2  # root + one per level + entries
    assert rec.entries_received < 100  # only the differing buckets, not 20,000
    assert snapshot(a) == snapshot(b)
    assert CIDS[0] in a and CIDS[1] in b and raw_cid(b"x5") not in b


def test_a_new_node_receives_everything_in_pages() -> None:
    full, empty = big_pinset(2_500), PinSet()
    rec = run_sync(empty, full, page_limit=1000)
    assert rec.entries_received == 2_500 and len(empty) == 2_500
    assert rec.round_trips == 1 + 3  # root, then three pages of entries
    assert snapshot(empty) == snapshot(full)


@settings(max_examples=40, deadline=None)
@given(histories, histories)
def test_sync_makes_any_two_replicas_equal(a: list[Entry], b: list[Entry]) -> None:
    pa, pb = merged(a), merged(b)
    run_sync(pa, pb, pull_threshold=0)
    assert snapshot(pa) == snapshot(pb)


def test_sync_rejects_protocol_violations() -> None:
    ps = PinSet(tree_bits=8)
    with pytest.raises(InvalidPin, match="tree_bits"):
        answer(ps, SummaryRequest(tree_bits=16, level=0, indices=(0,)))
    with pytest.raises(InvalidPin, match="index"):
        answer(ps, SummaryRequest(tree_bits=8, level=1, indices=(16,)))
    with pytest.raises(InvalidPin, match="bucket range"):
        answer(ps, EntriesRequest(tree_bits=8, ranges=((0, 257),)))
    rec = Reconciler(ps)
    req = rec.next_request()
    with pytest.raises(InvalidPin, match="previous response"):
        rec.next_request()
    with pytest.raises(InvalidPin, match="does not match"):
        rec.handle(answer(ps, SummaryRequest(tree_bits=8, level=1, indices=(0,))))
    assert req is not None


def test_entry_pages_never_exceed_the_limit() -> None:
    """A page stops before a bucket that would pass the limit (the decoder refuses
    pages over MAX_PAGE_ENTRIES, so an overshoot broke full pulls of ~650k pins)."""
    ps = PinSet(tree_bits=4)  # 16 buckets, so every bucket holds many entries
    for i in range(400):
        cid = raw_cid(f"page-{i}".encode())
        ps.merge([Entry(cid=cid, ts=i + 1, peer_id=PEERS[0], pin=Pin(cid=cid))])
    lo, total = 0, 0
    while True:
        got, resume = ps.entries_in_buckets(lo, 16, 30)
        assert 0 < len(got) <= 30 or len(got) == len(ps._buckets[lo] or ())
        total += len(got)
        if resume is None:
            break
        lo = resume
    assert total == 400
