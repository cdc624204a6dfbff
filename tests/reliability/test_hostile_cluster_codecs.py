"""Hostile input, parser level: every decoder that takes cluster bytes from outside (issue 7).

The cluster's gossip topic and ``/pinfold/sync/1`` carry msgpack from other
peers. Each decoder gets random bytes, mutated valid encodings and
msgpack-structured garbage (valid msgpack of the wrong shape: wrong types,
huge and negative integers, NaN, deep nesting, headers claiming huge lengths,
a valid message with one field replaced). It must return a value or raise
``PinsetDecodeError`` with a message: nothing else, within a time bound.

Decoders: ``decode_beat``, ``decode_request``, ``decode_response``
(pinfold/replication/messages.py), ``sync.decode_message``, ``pinset.decode_entries``,
``states.decode_delta``; the gossip envelope and topic validator of
``pinfold/daemon/cluster_transport.py`` (what a raw gossipsub payload meets before and at the
trust check: never raises, drops everything untrusted or forged); and the
manager's two entry points behind them, ``Manager.on_message`` (called from
the gossip reader: it may raise nothing at all, or the node's transport would
end) and ``Manager.answer`` (the sync responder: documented errors only).

The live campaign against running daemons is ``test_hostile_cluster.py``.
"""

from __future__ import annotations

import hashlib
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack
import trio
from hypothesis import strategies as st
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID
from pinfold.daemon.cluster_transport import LibP2PTransport, _signed_bytes
from pinfold.daemon.p2p.host import Host, HostConfig
from pinfold.replication.errors import InvalidPin, PinsetDecodeError
from pinfold.replication.manager import Manager, ManagerConfig
from pinfold.replication.messages import (
    KIND_HEARTBEAT,
    KIND_PINS,
    KIND_STATES,
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
from pinfold.replication.pinset import Entry, decode_entries, encode_entries
from pinfold.replication.states import StatesDelta, decode_delta, encode_delta
from pinfold.replication.sync import (
    MAX_PAGE_ENTRIES,
    EntriesRequest,
    EntriesResponse,
    SummaryRequest,
    SummaryResponse,
    decode_message,
    encode_message,
)
from pinfold.replication.transport import MemoryHub, MemoryPins
from pinfold.replication.types import Heartbeat, Pin, PinMode, PinState

from tests.support.fuzzing import examples, hostile_bytes, run_fuzz

#: longest any one input may take to decode, seconds (a hang fails the test)
MAX_INPUT_S = 2.0
#: most the process's peak RSS may grow over one campaign, bytes
MAX_RSS_GROWTH = 200 * 1024 * 1024

PEER_A = ID(b"\x00\x24\x08\x01\x12\x20" + bytes(range(32))).to_base58()
PEER_B = ID(b"\x00\x24\x08\x01\x12\x20" + bytes(range(1, 33))).to_base58()
TS = 1_800_000_000_000 << 16


def cid_of(i: int) -> bytes:
    return bytes([1, 0x55, 0x12, 0x20]) + hashlib.sha256(b"cluster fuzz %d" % i).digest()


# ------------------------------------------------------------------ corpora


def _entries() -> list[Entry]:
    return [
        Entry(cid=cid_of(1), ts=TS, peer_id=PEER_A, pin=Pin(cid=cid_of(1), rmin=1, rmax=3)),
        Entry(cid=cid_of(2), ts=TS + 5, peer_id=PEER_B, pin=None),
        Entry(cid=cid_of(3), ts=TS + 9, peer_id=PEER_A, pin=Pin(
            cid=cid_of(3), name="a name", mode=PinMode.DIRECT, rmin=2, rmax=2,
            availability=0.999, expire_at=1_900_000_000.5, metadata=(("k", "v"), ("x", "")),
            size_bytes=12345)),
    ]


def _beats() -> list[ClusterBeat]:
    return [
        ClusterBeat(heartbeat=Heartbeat(peer_id=PEER_A, incarnation=7, seq=3,
                                        capacity_bytes=1 << 40, free_bytes=1 << 39,
                                        pin_queue_len=2,
                                        addresses=(f"/ip4/127.0.0.1/tcp/4001/p2p/{PEER_A}",),
                                        pinned_count=5, pinned_bytes=500, error_count=1),
                    pinset_digest=(1 << 127) + 5, pinset_count=3, states_epoch=99,
                    states_version=4),
        ClusterBeat(heartbeat=Heartbeat(peer_id=PEER_B), pinset_digest=0, pinset_count=0,
                    states_epoch=0, states_version=0),
    ]


def _deltas() -> list[StatesDelta]:
    return [
        StatesDelta(owner=PEER_A, epoch=99, base=3, version=5,
                    changes=((cid_of(1), PinState.PINNED), (cid_of(2), PinState.REMOTE))),
        StatesDelta(owner=PEER_B, epoch=1, base=0, version=9, reset=True, more=True,
                    changes=((cid_of(3), PinState.PIN_ERROR),)),
    ]


def _requests() -> list[Any]:
    return [SummaryRequest(tree_bits=16, level=0, indices=(0,)),
            SummaryRequest(tree_bits=16, level=1, indices=tuple(range(16))),
            EntriesRequest(tree_bits=16, ranges=((0, 16), (32, 4096)), limit=200),
            PushRequest(entries=tuple(_entries())),
            StatesRequest(epoch=None, base=0), StatesRequest(epoch=99, base=3, resume=True,
                                                             limit=50)]


def _responses() -> list[Any]:
    return [SummaryResponse(level=0, nodes=((0, 12345, 3),)),
            SummaryResponse(level=1, nodes=tuple((i, i * 7, i) for i in range(16))),
            EntriesResponse(entries=tuple(_entries()), resume=((4096, 65536),)),
            PushResponse(changed=2), StatesResponse(delta=_deltas()[0])]


BEATS = [encode_beat(b) for b in _beats()]
ENTRIES = [encode_entries(_entries()), encode_entries(_entries()[:1]), encode_entries([])]
DELTAS = [encode_delta(d) for d in _deltas()]
REQUESTS = [encode_request(r) for r in _requests()]
RESPONSES = [encode_response(r) for r in _responses()]
SYNC = [encode_message(m) for m in (_requests()[:3] + _responses()[:3])]
EVERYTHING = BEATS + ENTRIES + DELTAS + REQUESTS + RESPONSES

# ------------------------------------------------------------------ msgpack-structured garbage

#: msgpack headers that claim huge lengths, followed by little or nothing
HUGE_HEADERS = (b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff", b"\xc6\xff\xff\xff\xff",
                b"\xdb\xff\xff\xff\xff", b"\xdc\xff\xff", b"\xde\xff\xff", b"\xc5\xff\xff",
                b"\xc9\xff\xff\xff\xff\x01", b"\xcf" + b"\xff" * 8, b"\xd3\x80" + bytes(7))

SPECIAL_VALUES = (2**63, 2**63 - 1, 2**64 - 1, -(2**63), -1, 0, 1 << 128, float("nan"),
                  float("inf"), -0.0, "", "recursive", "direct", "hb", "sum?", "ent?", "push",
                  "st?", "ok", "st", "sum", "ent", PEER_A, b"", bytes(16), cid_of(1),
                  cid_of(1)[:-1], "\x00", "x" * 300)


def _ext_or_int(v: int) -> Any:
    # msgpack packs integers up to 2**64-1 and down to -2**63; bigger ones become
    # a (valid) ext value, which the decoders must refuse as a wrong type
    return v if -(2**63) <= v < 2**64 else msgpack.ExtType(1, b"\x01")


LEAVES = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
    st.binary(max_size=40), st.sampled_from(SPECIAL_VALUES).map(
        lambda v: _ext_or_int(v) if type(v) is int else v),
    st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=8)),
)
KEYS = st.one_of(st.sampled_from(["v", "t", "hb", "pins", "states", "entries", "owner", "epoch",
                                  "base", "version", "reset", "more", "changes", "bits", "level",
                                  "idx", "nodes", "ranges", "limit", "resume", "delta",
                                  "changed", "k", "b", "s"]), st.text(max_size=6),
                 st.binary(max_size=4))
VALUES = st.recursive(LEAVES, lambda inner: st.one_of(
    st.lists(inner, max_size=6), st.dictionaries(KEYS, inner, max_size=6)), max_leaves=24)


def _pack(obj: Any, bin_type: bool) -> bytes:
    return msgpack.packb(obj, use_bin_type=bin_type, strict_types=False)


def _replace_at(obj: Any, path: list[int], new: Any, action: int) -> Any:
    """``obj`` with the node at ``path`` (indices taken modulo) replaced, deleted or grown."""
    if not path or not isinstance(obj, list | dict) or not obj:
        if action == 1 and isinstance(obj, list):
            return obj * 50  # a list fifty times as long
        return new
    keys = list(obj) if isinstance(obj, dict) else list(range(len(obj)))
    k = keys[path[0] % len(keys)]
    out = dict(obj) if isinstance(obj, dict) else list(obj)
    if len(path) == 1 and action == 2:  # delete
        del out[k]
        return out
    if len(path) == 1 and action == 3 and isinstance(out, dict):  # an extra key
        out["extra"] = new
        return out
    out[k] = _replace_at(obj[k], path[1:], new, action)
    return out


@st.composite
def structured_garbage(draw: st.DrawFn, corpus: list[bytes]) -> bytes:
    """Valid msgpack of the wrong shape: a corpus message with a node replaced, or
    any value tree, or a deep nesting, or a huge-length header."""
    kind = draw(st.integers(0, 9))
    if kind <= 4:
        base = msgpack.unpackb(draw(st.sampled_from(corpus)), raw=False, strict_map_key=False)
        path = draw(st.lists(st.integers(0, 40), min_size=1, max_size=4))
        obj = _replace_at(base, path, draw(VALUES), draw(st.integers(0, 3)))
        return _pack(obj, draw(st.booleans()))
    if kind <= 6:
        return _pack(draw(VALUES), draw(st.booleans()))
    if kind == 7:  # deep nesting: arrays or maps inside each other
        depth = draw(st.integers(100, 5000))
        opener = draw(st.sampled_from([b"\x91", b"\x81\xa1t"]))
        return opener * depth + b"\xc0"
    header = draw(st.sampled_from(HUGE_HEADERS))
    if draw(st.booleans()):
        return header + draw(st.binary(max_size=16))
    base = draw(st.sampled_from(corpus))
    at = draw(st.integers(0, len(base)))
    return base[:at] + header + base[at:]


def hostile(corpus: list[bytes]) -> st.SearchStrategy[bytes]:
    """Mutated corpus entries and random bytes (``hostile_bytes``) or structured garbage."""
    return st.one_of(hostile_bytes(corpus), structured_garbage(corpus),
                     structured_garbage(corpus))


# ------------------------------------------------------------------ the bounds


@dataclass
class Bounds:
    """Wraps a parser: fails an input that takes longer than ``MAX_INPUT_S``."""

    parse: Callable[[Any], Any]
    slowest_s: float = 0.0

    def __call__(self, data: Any) -> Any:
        t0 = time.monotonic()
        try:
            return self.parse(data)
        finally:
            took = time.monotonic() - t0
            self.slowest_s = max(self.slowest_s, took)
            assert took < MAX_INPUT_S, f"{took:.2f} s to decode {len(data)} bytes"


def fuzz(name: str, parse: Callable[[Any], Any], allowed: tuple[type[BaseException], ...],
         strategy: st.SearchStrategy[Any], n: int,
         check: Callable[[Any, Any], None] | None = None) -> Any:
    """``run_fuzz`` under the time bound and a bound on the process's peak memory."""
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    bounded = Bounds(parse)
    counts = run_fuzz(name, bounded, allowed, strategy, n, check)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss0
    assert grown < MAX_RSS_GROWTH, f"{name}: peak RSS grew by {grown} bytes"
    assert counts["inputs"] >= n // 2, counts
    return counts


# ------------------------------------------------------------------ the decoders


def _roundtrip(encode: Callable[[Any], bytes], decode: Callable[[bytes], Any]
               ) -> Callable[[bytes, Any], None]:
    def check(_data: bytes, value: Any) -> None:
        assert decode(encode(value)) == value, "a decoded value must re-encode to itself"
    return check


def test_heartbeat_decoder() -> None:
    c = fuzz("cluster heartbeat (decode_beat)", decode_beat, (PinsetDecodeError,),
             hostile(BEATS), examples(), check=_roundtrip(encode_beat, decode_beat))
    assert c["rejected"] > 0 and c["accepted"] > 0


def test_pinset_delta_decoder() -> None:
    def parse(data: bytes) -> list[Entry]:
        return decode_entries(data, max_entries=MAX_PAGE_ENTRIES)

    c = fuzz("cluster pinset delta (decode_entries)", parse, (PinsetDecodeError,),
             hostile(ENTRIES), examples(), check=_roundtrip(encode_entries, parse))
    assert c["rejected"] > 0 and c["accepted"] > 0


def test_states_delta_decoder() -> None:
    c = fuzz("cluster states delta (decode_delta)", decode_delta, (PinsetDecodeError,),
             hostile(DELTAS), examples(), check=_roundtrip(encode_delta, decode_delta))
    assert c["rejected"] > 0 and c["accepted"] > 0


def test_sync_message_decoder() -> None:
    c = fuzz("sync message (sync.decode_message)", decode_message, (PinsetDecodeError,),
             hostile(SYNC), examples(), check=_roundtrip(encode_message, decode_message))
    assert c["rejected"] > 0 and c["accepted"] > 0


def test_sync_request_decoder() -> None:
    c = fuzz("sync request (decode_request)", decode_request, (PinsetDecodeError,),
             hostile(REQUESTS + RESPONSES), examples())
    assert c["rejected"] > 0 and c["accepted"] > 0


def test_sync_response_decoder() -> None:
    c = fuzz("sync response (decode_response)", decode_response, (PinsetDecodeError,),
             hostile(RESPONSES + REQUESTS), examples())
    assert c["rejected"] > 0 and c["accepted"] > 0


# ------------------------------------------------------------------ the daemon's seam


class _Msg:
    """A gossipsub message as the topic validator sees it (``from_id``, ``data``)."""

    def __init__(self, from_id: bytes, data: bytes) -> None:
        self.from_id = from_id
        self.data = data


def _transport() -> tuple[LibP2PTransport, Any, Any]:
    """A transport (not running) that trusts one member; returns it, the member's and an
    outsider's key pair."""
    member, outsider = create_new_key_pair(b"m" * 32), create_new_key_pair(b"o" * 32)
    host = Host(create_new_key_pair(b"d" * 32), HostConfig(listen=("/ip4/127.0.0.1/tcp/0",)))
    trusted = [ID.from_pubkey(member.public_key).to_base58()]
    return LibP2PTransport(host, host.key_pair, "fuzz", trusted=trusted), member, outsider


def _envelope(key: Any, kind: str, body: bytes, cluster: str = "fuzz") -> bytes:
    return msgpack.packb({"v": 1, "k": kind, "b": body,
                          "s": key.sign(_signed_bytes(cluster, kind, body))}, use_bin_type=True)


def test_gossip_envelope_and_topic_validator() -> None:
    """A raw gossipsub payload: the validator never raises; an outsider's message, or
    anything whose envelope or signature does not verify, is dropped."""
    transport, member, outsider = _transport()
    member_id = ID.from_pubkey(member.public_key).to_bytes()
    outsider_id = ID.from_pubkey(outsider.public_key).to_bytes()
    bodies = {KIND_HEARTBEAT: BEATS[0], KIND_PINS: ENTRIES[0], KIND_STATES: DELTAS[0]}
    corpus = [_envelope(member.private_key, k, b) for k, b in bodies.items()]
    corpus += [_envelope(member.private_key, KIND_PINS, ENTRIES[0], cluster="other")]
    forwarder = ID(outsider_id)
    outcomes = {"member": 0, "outsider": 0, "garbage author": 0}

    def validate(arg: tuple[int, bytes]) -> bool:
        who, data = arg
        if who == 0:
            author = member_id
        elif who == 1:
            author = outsider_id
        else:
            author = data[:who]  # a malformed author field
        ok = transport._validate(forwarder, _Msg(author, data))
        opened = transport._open_envelope(ID(member_id), data)
        assert type(ok) is bool
        if who != 0:
            assert ok is False, "an untrusted or malformed author passed the validator"
            outcomes["outsider" if who == 1 else "garbage author"] += 1
        else:
            valid = data in corpus[:3]
            assert ok is (opened is not None)
            assert not ok or valid or _verifies(member, data), "a forged envelope verified"
            outcomes["member"] += ok
        if ok:
            return opened
        raise PinsetDecodeError("dropped by the topic validator")

    strategy = st.tuples(st.integers(0, 40), hostile(corpus))
    c = fuzz("gossip envelope + topic validator", validate, (PinsetDecodeError,), strategy,
             examples())
    assert c["rejected"] > 0 and outcomes["outsider"] > 0


def _verifies(member: Any, data: bytes) -> bool:
    env = msgpack.unpackb(data, raw=False)
    return member.public_key.verify(_signed_bytes("fuzz", env["k"], env["b"]), env["s"])


# ------------------------------------------------------------------ the manager behind it

CFG = ManagerConfig(heartbeat_interval_s=1.0, repair_grace_s=5.0, replan_interval_s=3600.0,
                    sync_interval_s=3600.0, rmin=1, rmax=2)


def _in_trio(body: Callable[[Manager], None]) -> None:
    async def main() -> None:
        hub = MemoryHub()
        m = Manager(PEER_A, CFG, hub.transport(PEER_A), MemoryPins(), wall_offset=1.8e9)
        async with trio.open_nursery() as nursery:
            await nursery.start(m.run)
            body(m)
            await trio.sleep(0.2)  # the manager's tasks run what the messages queued
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_manager_on_message_never_raises() -> None:
    """What the gossip reader calls for a verified, trusted author's message: a bad body
    is counted and dropped, never raised (an exception would end the transport)."""
    by_kind = {KIND_HEARTBEAT: BEATS, KIND_PINS: ENTRIES, KIND_STATES: DELTAS}
    # bodies naming the trusted author PEER_B, so that valid ones get past the
    # impersonation check and reach the merge and health code
    own = {KIND_HEARTBEAT: [encode_beat(ClusterBeat(heartbeat=Heartbeat(peer_id=PEER_B, seq=1),
                                                    pinset_digest=1, pinset_count=1,
                                                    states_epoch=1, states_version=1))],
           KIND_STATES: [encode_delta(StatesDelta(owner=PEER_B, epoch=1, base=0, version=1,
                                                  changes=((cid_of(1), PinState.PINNED),)))]}
    strategy = st.sampled_from(sorted(by_kind) + ["bogus"]).flatmap(
        lambda k: st.tuples(st.just(k), hostile(by_kind.get(k, EVERYTHING) + own.get(k, []))))

    def run(m: Manager) -> None:
        def deliver(arg: tuple[str, bytes]) -> None:
            kind, body = arg
            before = m.statistics().rejected_messages
            m.on_message(PEER_B, kind, body)
            if m.statistics().rejected_messages > before:
                raise PinsetDecodeError("counted and dropped")

        c = fuzz("gossip message into the manager (on_message)", deliver, (PinsetDecodeError,),
                 strategy, examples(quick=200, full=10000))
        assert c["rejected"] > 0

    _in_trio(run)


def test_manager_sync_answer() -> None:
    """The ``/pinfold/sync/1`` responder: a bad request raises a documented error (the
    daemon resets the stream), a read-only request leaves the pinset as it was."""
    def run(m: Manager) -> None:
        def ask(req: bytes) -> bytes:
            before = m.pinset.statistics()
            try:
                out = m.answer(PEER_B, req)
            finally:
                try:
                    push = isinstance(decode_request(req), PushRequest)
                except PinsetDecodeError:
                    push = False
                if not push:
                    assert m.pinset.statistics() == before, "a non-push request changed the pinset"
            decode_response(out)
            return out

        c = fuzz("sync request into the manager (answer)", ask, (PinsetDecodeError, InvalidPin),
                 hostile(REQUESTS), examples(quick=200, full=10000))
        assert c["rejected"] > 0 and c["accepted"] > 0

    _in_trio(run)



def test_malformed_gossipsub_key_is_dropped_not_fatal() -> None:
    """Regression: a gossipsub message whose ``key`` field is not a protobuf public key
    made py-libp2p's ``signature_validator`` raise inside the Pubsub service's
    ``push_msg`` task, which ended the service and the daemon (one message from any
    peer). Now it is dropped and counted as forged."""
    from libp2p.pubsub.pb import rpc_pb2

    transport, _member, outsider = _transport()
    sender = ID.from_pubkey(outsider.public_key)
    topic = transport.topic

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(transport.host.run)
            await nursery.start(transport.run)
            bad = [rpc_pb2.Message(data=b"x", topicIDs=[topic], from_id=b"\x01\x02",
                                   seqno=bytes(8), key=b"\xff\x00junk", signature=bytes(64)),
                   rpc_pb2.Message(data=b"x", topicIDs=[topic], from_id=b"", seqno=b"",
                                   key=b"\x08\x01\x12\x03abc", signature=b"")]
            for msg in bad:
                await transport._pubsub.push_msg(sender, msg)
            assert transport.statistics().forged_dropped >= 1
            nursery.cancel_scope.cancel()

    trio.run(main)
