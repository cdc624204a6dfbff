"""The sans-IO core of the local RPC (pinfold/daemon/rpc/wire/): frames, messages, flow control."""

from __future__ import annotations

import random
import struct

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pinfold.daemon.rpc import wire as w

ids = st.integers(min_value=1, max_value=w.MAX_REQUEST_ID)
values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=20) | st.binary(max_size=64),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12,
)
params = st.dictionaries(st.text(max_size=10), values, max_size=5)

client_messages = st.one_of(
    st.builds(w.Hello, window=st.integers(w.MIN_WINDOW_BYTES, w.MAX_WINDOW_BYTES)),
    st.builds(w.Request, id=ids, method=st.text(min_size=1, max_size=30), params=params,
              upload=st.booleans()),
    st.builds(w.Data, id=ids, data=st.binary(min_size=1, max_size=3000)),
    st.builds(w.End, id=ids),
    st.builds(w.Credit, id=ids, nbytes=st.integers(1, w.MAX_WINDOW_BYTES)),
    st.builds(w.Cancel, id=ids),
)
server_messages = st.one_of(
    st.builds(w.Welcome, daemon_version=st.text(max_size=20),
              window=st.integers(w.MIN_WINDOW_BYTES, w.MAX_WINDOW_BYTES)),
    st.builds(w.Item, id=ids, item=values),
    st.builds(w.Progress, id=ids, progress=st.dictionaries(st.text(max_size=10), values,
                                                           max_size=5)),
    st.builds(w.Result, id=ids, result=values),
    st.builds(w.ErrorReply, id=st.none() | ids,
              code=st.from_regex(r"[a-z][a-z0-9_]{0,20}", fullmatch=True),
              message=st.text(max_size=50)),
    st.builds(w.Credit, id=ids, nbytes=st.integers(1, w.MAX_WINDOW_BYTES)),
)


def frame(obj: object) -> bytes:
    body = msgpack.packb(obj)
    return struct.pack(">I", len(body)) + body


def body_of(obj: object) -> bytes:
    return msgpack.packb(obj)


# ------------------------------------------------------------------ round trips


@given(client_messages)
def test_client_messages_round_trip(msg: w.ClientMessage) -> None:
    decoder = w.FrameDecoder()
    (body,) = decoder.feed(w.encode_bytes(msg))
    assert w.decode_client_message(body) == msg


@given(server_messages)
def test_server_messages_round_trip(msg: w.ServerMessage) -> None:
    decoder = w.FrameDecoder()
    (body,) = decoder.feed(w.encode_bytes(msg))
    got = w.decode_server_message(body)
    if isinstance(msg, w.Item) and isinstance(msg.item, bytes | bytearray | memoryview):
        assert got == w.Item(id=msg.id, item=bytes(msg.item))
    else:
        assert got == msg


def test_bulk_payload_is_not_copied_and_is_plain_msgpack() -> None:
    chunk = bytes(range(256)) * 4096  # 1 MiB
    bufs, cost = w.encode(w.Data(id=7, data=chunk))
    assert bufs[-1] is chunk  # the payload travels as its own buffer
    wire = b"".join(bufs)
    assert cost == len(wire) - 4
    # Any msgpack decoder reads it as an ordinary map with a bin value.
    assert msgpack.unpackb(wire[4:]) == {"t": "data", "id": 7, "data": chunk}
    item_bufs, _ = w.encode(w.Item(id=2**40, item=memoryview(chunk)[:300]))
    assert msgpack.unpackb(b"".join(bytes(b) for b in item_bufs)[4:]) == {
        "t": "item", "id": 2**40, "item": chunk[:300]}


def test_encode_refuses_oversize_and_unserializable() -> None:
    with pytest.raises(ValueError, match="1..1048576 bytes"):
        w.encode(w.Data(id=1, data=b"x" * (w.MAX_CHUNK_BYTES + 1)))
    with pytest.raises(ValueError, match="1..1048576 bytes"):
        w.encode(w.Data(id=1, data=b""))
    with pytest.raises(ValueError, match="exceeds the 1052672-byte frame limit"):
        w.encode(w.Result(id=1, result=b"x" * w.MAX_FRAME_BYTES))
    with pytest.raises(ValueError, match="frame limit"):
        w.encode(w.Item(id=1, item=b"x" * w.MAX_FRAME_BYTES))
    with pytest.raises(TypeError):
        w.encode(w.Result(id=1, result=object()))


# ------------------------------------------------------------------ framing


@given(st.lists(st.binary(min_size=1, max_size=200_000), min_size=1, max_size=8),
       st.randoms(use_true_random=False))
@settings(max_examples=60, deadline=None)
def test_frames_survive_any_split(bodies: list[bytes], rnd: random.Random) -> None:
    stream = b"".join(struct.pack(">I", len(b)) + b for b in bodies)
    decoder = w.FrameDecoder(buffer_bytes=4096, direct_threshold=1024)
    out: list[bytes] = []
    pos = 0
    while pos < len(stream):
        if rnd.random() < 0.5:  # the recv_into path
            target = decoder.get_buffer()
            n = min(target.nbytes, rnd.randint(1, 70_000), len(stream) - pos)
            target[:n] = stream[pos:pos + n]
            decoder.commit(n)
            out.extend(bytes(b) for b in w.iter_bodies(decoder))
        else:  # the feed path
            n = rnd.randint(1, 70_000)
            out.extend(bytes(b) for b in decoder.feed(stream[pos:pos + n]))
        pos += n
    assert out == bodies
    assert decoder.buffered == 0


def drive(decoder: w.FrameDecoder, stream: bytes, rnd: random.Random) -> list[bytes | w.Bulk]:
    """Feed ``stream`` the way the socket drivers do, in random read sizes; bodies are
    snapshotted (views copied) as they come out."""
    out: list[bytes | w.Bulk] = []
    pos = 0
    while pos < len(stream):
        size = rnd.choice([1, 7, 100, 5000, 70_000, 1 << 20])
        if want := decoder.bulk_wanted():
            n = min(want, size, len(stream) - pos)
            decoder.add_bulk(stream[pos:pos + n])
        else:
            target = decoder.get_buffer()
            n = min(target.nbytes, size, len(stream) - pos)
            target[:n] = stream[pos:pos + n]
            decoder.commit(n)
        pos += n
        out.extend(b if isinstance(b, w.Bulk) else bytes(b) for b in w.iter_bodies(decoder))
    return out


bulk_messages = st.one_of(
    st.builds(w.Data, id=ids, data=st.integers(1, w.MAX_CHUNK_BYTES).map(lambda n: b"d" * n)),
    st.builds(w.Item, id=ids, item=st.integers(0, w.MAX_CHUNK_BYTES).map(lambda n: b"i" * n)),
    st.builds(w.Item, id=ids, item=st.integers(0, 200_000).map(lambda n: ["x" * n])),
    st.builds(w.End, id=ids),
)


@given(st.lists(bulk_messages, min_size=1, max_size=6), st.randoms(use_true_random=False))
@settings(max_examples=60, deadline=None)
def test_large_payload_frames_decode_the_same_on_every_path(
        msgs: list[w.ClientMessage | w.ServerMessage], rnd: random.Random) -> None:
    stream = b"".join(w.encode_bytes(m) for m in msgs)
    bodies = drive(w.FrameDecoder(), stream, rnd)
    assert len(bodies) == len(msgs)
    for msg, body in zip(msgs, bodies, strict=True):
        decode = w.decode_client_message if isinstance(msg, w.Data | w.End) \
            else w.decode_server_message
        assert decode(body) == msg
        nbytes = body.nbytes if isinstance(body, w.Bulk) else len(body)
        assert nbytes == len(w.encode_bytes(msg)) - 4
        if isinstance(msg, w.Data) and len(msg.data) > 65536:
            assert isinstance(body, w.Bulk)  # the payload skipped msgpack's copy


@pytest.mark.parametrize("obj", [
    {"id": 5, "t": "data", "data": b"k" * 100_000},                     # other key order
    {"t": "data", "data": b"k" * 100_000, "id": 5},
])
def test_non_canonical_large_frames_take_the_generic_path(obj: dict) -> None:
    stream = frame(obj)
    (body,) = drive(w.FrameDecoder(), stream, random.Random(1))
    assert not isinstance(body, w.Bulk)
    assert w.decode_client_message(body) == w.Data(id=5, data=b"k" * 100_000)


def test_signed_id_encoding_takes_the_generic_path() -> None:
    head = b"\x83\xa1t\xa4data\xa2id\xd3" + (5).to_bytes(8, "big") + b"\xa4data"
    payload = b"p" * 100_000
    body = head + b"\xc6" + len(payload).to_bytes(4, "big") + payload
    (got,) = drive(w.FrameDecoder(), struct.pack(">I", len(body)) + body, random.Random(2))
    assert not isinstance(got, w.Bulk)
    assert w.decode_client_message(got) == w.Data(id=5, data=payload)


def test_bulk_frames_are_still_validated() -> None:
    # A canonical header whose bin ends before the frame does: trailing garbage.
    payload = b"p" * 100_000
    head = b"\x83\xa1t\xa4data\xa2id\x05\xa4data\xc6" + len(payload).to_bytes(4, "big")
    body = head + payload + b"\x00"
    (got,) = drive(w.FrameDecoder(), struct.pack(">I", len(body)) + body, random.Random(3))
    with pytest.raises(w.WireError, match="not valid msgpack"):
        w.decode_client_message(got)
    # A payload over the chunk limit (the frame itself is within the frame limit).
    big = w.encode_bytes(w.Item(id=1, item=b"z" * (w.MAX_CHUNK_BYTES + 100)))
    big = big[:5] + big[5:].replace(b"\xa4item", b"\xa4data", 2)
    (got,) = drive(w.FrameDecoder(), big, random.Random(4))
    assert isinstance(got, w.Bulk)
    with pytest.raises(w.WireError, match="data.data must be bin"):
        w.decode_client_message(got)
    # An item sent to a server, a data frame sent to a client: wrong direction.
    (item,) = drive(w.FrameDecoder(), w.encode_bytes(w.Item(id=1, item=b"x" * 70_000)),
                    random.Random(5))
    with pytest.raises(w.WireError, match="unknown client message type 'item'"):
        w.decode_client_message(item)
    (data,) = drive(w.FrameDecoder(), w.encode_bytes(w.Data(id=1, data=b"x" * 70_000)),
                    random.Random(6))
    with pytest.raises(w.WireError, match="unknown server message type 'data'"):
        w.decode_server_message(data)


def test_frame_too_large_is_refused_before_reading_the_body() -> None:
    decoder = w.FrameDecoder()
    with pytest.raises(w.WireError) as err:
        decoder.feed(b"\xff\xff\xff\xff")
    assert err.value.code == "frame_too_large"
    assert "4294967295 bytes exceeds" in str(err.value)
    with pytest.raises(w.WireError) as err:
        w.FrameDecoder().feed(struct.pack(">I", w.MAX_FRAME_BYTES + 1))
    assert err.value.code == "frame_too_large"
    # The limit itself is allowed.
    assert w.FrameDecoder().feed(struct.pack(">I", w.MAX_FRAME_BYTES)) == []


def test_empty_frame_is_a_protocol_error() -> None:
    with pytest.raises(w.WireError, match="empty frame"):
        w.FrameDecoder().feed(b"\x00\x00\x00\x00")


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize(("body", "needle"), [
    (b"\xc1", "not valid msgpack"),                          # reserved byte
    (b"\x92\x01", "not valid msgpack"),                      # truncated array
    (body_of({"t": "end", "id": 1}) + b"\x00", "not valid msgpack"),  # trailing bytes
    (body_of([1, 2]), "must be a msgpack map"),
    (body_of({"id": 1}), "lacks a string 't'"),
    (body_of({"t": 5}), "lacks a string 't'"),
    (body_of({"t": "bogus", "id": 1}), "unknown client message type 'bogus'"),
    (body_of({"t": "end"}), "lacks the 'id' field"),
    (body_of({"t": "end", "id": 1, "extra": 2}), "unknown field(s): extra"),
    (body_of({"t": "end", "id": 0}), "id must be an integer"),
    (body_of({"t": "end", "id": -5}), "id must be an integer"),
    (body_of({"t": "end", "id": True}), "id must be an integer"),
    (body_of({"t": "end", "id": 1.0}), "id must be an integer"),
    (body_of({"t": "end", "id": 2**64 - 1}), "id must be an integer"),
    (body_of({"t": "data", "id": 1, "data": "text"}), "data.data must be bin"),
    (body_of({"t": "data", "id": 1, "data": b""}), "data.data must be bin"),
    (body_of({"t": "credit", "id": 1, "bytes": 0}), "credit.bytes must be"),
    (body_of({"t": "credit", "id": 1, "bytes": 2**40}), "credit.bytes must be"),
    (body_of({"t": "call", "id": 1, "method": 3}), "call.method must be a string"),
    (body_of({"t": "call", "id": 1, "method": "x" * 300}), "call.method must be a string"),
    (body_of({"t": "call", "id": 1, "method": "m", "params": [1]}), "call.params must be a map"),
    (body_of({"t": "call", "id": 1, "method": "m", "params": {b"k": 1}}),
     "call.params must be a map with string keys"),
    (body_of({"t": "call", "id": 1, "method": "m", "upload": 1}), "call.upload must be a boolean"),
    (body_of({"t": "hello", "protocol": "pinfold-rpc", "version": 1, "window": 10}),
     "window must be an integer in"),
    (b"\x81\xa1t\xa3end" + b"\xa2id" + b"\xd6\xff\x00\x00\x00\x01", "not valid msgpack"),  # ext
    (b"\x83\xa1t\xa3end\xa2id\x01", "not valid msgpack"),    # map shorter than its header
    (b"\xdd\xff\xff\xff\xff", "not valid msgpack"),          # array claiming 4G elements
    (b"\x81\xa1t\xa3\xff\xfe\xfd", "not valid msgpack"),     # invalid UTF-8
    (b"\x91" * 5000 + b"\xc0", "not valid msgpack"),          # nesting beyond msgpack's stack
    (body_of({"t": "end", "id": 1, "x": [[]] * (w.MAX_CONTAINERS_PER_FRAME + 1)}),
     "more than 16384 maps and arrays"),                     # a decoding bomb
    (body_of({"t": "end", "id": 1, "x": [{}] * 20000}), "more than 16384 maps and arrays"),
])
def test_malformed_client_frames_are_named(body: bytes, needle: str) -> None:
    with pytest.raises(w.WireError) as err:
        w.decode_client_message(body)
    assert err.value.code == "protocol_error"
    assert needle in str(err.value)


@pytest.mark.parametrize("hello", [
    {"t": "hello", "protocol": "pinfold-rpc", "version": 2, "window": w.DEFAULT_WINDOW_BYTES},
    {"t": "hello", "protocol": "other", "version": 1, "window": w.DEFAULT_WINDOW_BYTES},
    {"t": "hello", "protocol": "pinfold-rpc", "version": "1"},
    {"t": "hello", "protocol": "pinfold-rpc", "version": 9, "new_field": 1},
    {"t": "hello", "protocol": "pinfold-rpc", "version": [1]},   # unhashable: not looked up
    {"t": "hello", "protocol": "pinfold-rpc", "version": {"v": 1}},
])
def test_unsupported_hello_names_the_versions(hello: dict) -> None:
    with pytest.raises(w.WireError) as err:
        w.decode_client_message(body_of(hello))
    assert err.value.code == "unsupported_version"
    assert "this daemon speaks pinfold-rpc version 1" in str(err.value)


@pytest.mark.parametrize(("obj", "needle"), [
    ({"t": "hello", "protocol": "pinfold-rpc", "version": 1, "window": 2**22}, "unknown server"),
    ({"t": "error", "id": 1, "code": "Not Snake", "message": "m"}, "error.code must be snake_case"),
    ({"t": "error", "id": 0, "code": "x", "message": "m"}, "id must be an integer"),
    ({"t": "result", "id": 1}, "lacks the 'result' field"),
    ({"t": "item", "id": 1, "item": 1, "more": 1}, "unknown field(s): more"),
    ({"t": "progress", "id": 1, "progress": [1]}, "progress.progress must be a map"),
    ({"t": "progress", "id": 1}, "lacks the 'progress' field"),
])
def test_malformed_server_frames_are_named(obj: dict, needle: str) -> None:
    with pytest.raises(w.WireError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        w.decode_server_message(body_of(obj))


def test_newer_fields_are_not_silently_accepted() -> None:
    # Unknown fields are refused so a mismatch shows instead of being half-understood.
    with pytest.raises(w.WireError, match="unknown field"):
        w.decode_client_message(body_of({"t": "cancel", "id": 3, "reason": "x"}))


# ------------------------------------------------------------------ errors


def test_error_codes_of_exceptions() -> None:
    class NotFound(Exception):
        code = "not_found"

    class Weird(Exception):
        code = "Not A Code!"

    assert w.error_code_of(NotFound()) == "not_found"
    assert w.error_code_of(Weird()) == "internal"
    assert w.error_code_of(ValueError()) == "internal"
    assert w.error_code_of(w.RpcError("store_full", "m")) == "store_full"
    err = w.DaemonNotRunning("/x/rpc.sock", "socket missing")
    assert err.code == "daemon_not_running"
    assert "/x/rpc.sock" in str(err)


# ------------------------------------------------------------------ flow control


def test_credit_overflow_and_overrun_are_errors() -> None:
    credit = w.SendCredit(window=w.MIN_WINDOW_BYTES)
    with pytest.raises(w.FlowControlError, match="credit overflow"):
        credit.grant(1)
    credit.spend(1000)
    credit.grant(1000)
    assert credit.available == w.MIN_WINDOW_BYTES
    recv = w.RecvWindow(window=w.MIN_WINDOW_BYTES)
    recv.on_receive(w.MIN_WINDOW_BYTES)
    with pytest.raises(w.FlowControlError, match="only 0 bytes of credit"):
        recv.on_receive(1)


@given(st.lists(st.integers(1, w.MAX_FRAME_BYTES), min_size=1, max_size=200),
       st.sampled_from([w.MIN_WINDOW_BYTES, w.DEFAULT_WINDOW_BYTES, 3 * w.MAX_FRAME_BYTES + 7]),
       st.randoms(use_true_random=False))
@settings(max_examples=150)
def test_flow_control_bounds_buffer_and_never_deadlocks(
        frames: list[int], window: int, rnd: random.Random) -> None:
    """Any schedule of sends, deliveries and consumption: the buffer stays within the
    window, and whenever the sender is blocked with nothing in flight, draining the
    receiver unblocks it."""
    sender = w.SendCredit(window=window)
    receiver = w.RecvWindow(window=window)
    in_flight: list[int] = []
    buffered: list[int] = []
    grants: list[int] = []
    todo = list(frames)
    delivered = 0
    steps = 0
    while delivered < len(frames):
        steps += 1
        assert steps < 100_000, "no progress"
        choices = []
        if todo and sender.can_send(todo[0]):
            choices.append("send")
        if in_flight:
            choices.append("deliver")
        if buffered:
            choices.append("consume")
        if grants:
            choices.append("grant")
        assert choices, "deadlock: the sender is blocked and nothing else can happen"
        action = rnd.choice(choices)
        if action == "send":
            cost = todo.pop(0)
            sender.spend(cost)
            in_flight.append(cost)
        elif action == "deliver":
            cost = in_flight.pop(0)
            receiver.on_receive(cost)
            buffered.append(cost)
        elif action == "consume":
            grant = receiver.on_consume(buffered.pop(0))
            delivered += 1
            if grant:
                grants.append(grant)
        else:
            sender.grant(grants.pop(0))
        assert receiver.buffered <= window
        assert sender.available >= 0
    assert receiver.peak_buffered <= window
