"""Bitswap wire codec: round trips, the exact bytes of the spec's protobuf, strict rejection."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pinfold.blockstore.cid import DAG_PB, RAW, make_cid
from pinfold.daemon.p2p.bitswap.errors import MalformedMessage, MessageTooLarge
from pinfold.daemon.p2p.bitswap.message import (
    MAX_MESSAGE_SIZE,
    PROTOCOL_1_0_0,
    PROTOCOL_1_1_0,
    V0_PREFIX,
    Block,
    BlockPresence,
    CidPrefix,
    FrameDecoder,
    Message,
    PresenceType,
    WantEntry,
    WantType,
    decode_message,
    encode_framed,
    encode_message,
    encode_uvarint,
    frame,
)

CID_A = make_cid(b"a", RAW)
CID_B = make_cid(b"b", DAG_PB)
CID_V0 = make_cid(b"v0 node", DAG_PB, version=0)


def test_want_entry_bytes_match_the_spec_protobuf():
    msg = Message(wantlist=(WantEntry(cid=CID_A, priority=5, want_type=WantType.HAVE, send_dont_have=True),))
    cid = bytes(CID_A)
    entry = b"\x0a" + bytes([len(cid)]) + cid + b"\x10\x05" + b"\x20\x01" + b"\x28\x01"
    wantlist = b"\x0a" + bytes([len(entry)]) + entry
    assert encode_message(msg) == b"\x0a" + bytes([len(wantlist)]) + wantlist


def test_block_payload_carries_the_cid_prefix():
    data = b"hello"
    msg = Message(blocks=(Block(prefix=CidPrefix.of(CID_A), data=data),))
    raw = encode_message(msg)
    # field 3 (payload), prefix = version 1, raw 0x55, sha2-256 0x12, 32 bytes
    assert raw.startswith(b"\x1a")
    assert b"\x0a\x04\x01\x55\x12\x20\x12\x05hello" in raw
    back = decode_message(raw)
    assert back.blocks[0].prefix == CidPrefix(version=1, codec=RAW, mh_code=0x12, mh_length=32)
    assert bytes(back.blocks[0].data) == data


def test_round_trip_of_every_field():
    msg = Message(
        wantlist=(
            WantEntry(cid=CID_A, priority=-3, cancel=False, want_type=WantType.BLOCK),
            WantEntry(cid=CID_B, priority=1, cancel=True),
        ),
        full=True,
        blocks=(Block(prefix=CidPrefix.of(CID_B), data=b"x" * 1000),),
        presences=(
            BlockPresence(cid=CID_A, type=PresenceType.HAVE),
            BlockPresence(cid=CID_B, type=PresenceType.DONT_HAVE),
        ),
        pending_bytes=12345,
    )
    back = decode_message(encode_message(msg))
    assert back.wantlist == msg.wantlist
    assert back.full is True
    assert [bytes(b.data) for b in back.blocks] == [b"x" * 1000]
    assert back.presences == msg.presences
    assert back.pending_bytes == 12345


def test_absent_priority_defaults_to_one_and_want_type_to_block():
    cid = bytes(CID_A)
    entry = b"\x0a" + bytes([len(cid)]) + cid
    raw = b"\x0a" + bytes([len(entry) + 2]) + b"\x0a" + bytes([len(entry)]) + entry
    (e,) = decode_message(raw).wantlist
    assert (e.priority, e.want_type, e.cancel, e.send_dont_have) == (1, WantType.BLOCK, False, False)


def test_protocol_1_0_0_sends_v0_blocks_in_the_blocks_field_and_drops_the_rest():
    msg = Message(
        wantlist=(WantEntry(cid=CID_A, want_type=WantType.HAVE), WantEntry(cid=CID_V0)),
        blocks=(Block(prefix=V0_PREFIX, data=b"v0 node"), Block(prefix=CidPrefix.of(CID_A), data=b"a")),
        presences=(BlockPresence(cid=CID_A, type=PresenceType.HAVE),),
    )
    back = decode_message(encode_message(msg, protocol=PROTOCOL_1_0_0))
    assert [e.cid for e in back.wantlist] == [CID_V0]
    assert [(b.prefix, bytes(b.data)) for b in back.blocks] == [(V0_PREFIX, b"v0 node")]
    assert back.presences == ()
    on_11 = decode_message(encode_message(msg, protocol=PROTOCOL_1_1_0))
    assert len(on_11.blocks) == 2 and on_11.presences == ()


def test_unknown_fields_are_skipped():
    raw = encode_message(Message(presences=(BlockPresence(cid=CID_A, type=PresenceType.HAVE),)))
    extra = b"\x78\x07" + b"\x82\x01\x03abc"  # field 15 varint, field 16 bytes
    assert decode_message(raw + extra).presences[0].cid == CID_A


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"\x0a\x05\x0a\x03\x0a\x01", "runs past"),  # truncated inner field
        (b"\x0a", "truncated varint"),
        (b"\x0b", "wire type 3"),  # group start
        (b"\x0a\x04\x0a\x02\x0a\x00", "not a CID"),  # empty CID
        (b"\x08\x01", "message field 1 has wire type 0"),
        (b"\x0a\x02\x10\x02", "full is not a bool"),
        (b"\x28" + b"\xff" * 10 + b"\x01", "longer than 10 bytes"),
        (b"\x22\x02\x10\x01", "presence without a CID"),
        (b"\x1a\x02\x12\x00", "without a CID prefix"),
    ],
)
def test_malformed_messages_name_the_problem(raw, problem):
    with pytest.raises(MalformedMessage, match=problem):
        decode_message(raw)


def test_block_over_2_mib_is_refused():
    big = b"\0" * (2 * 1024 * 1024 + 1)
    raw = encode_message(Message(blocks=(Block(prefix=CidPrefix.of(CID_A), data=big),)))
    with pytest.raises(MessageTooLarge, match="exceeds"):
        decode_message(raw)


def test_encode_framed_refuses_more_than_4_mib():
    blocks = tuple(Block(prefix=CidPrefix.of(CID_A), data=b"\0" * (2 * 1024 * 1024)) for _ in range(3))
    with pytest.raises(ValueError, match="exceeds"):
        encode_framed(Message(blocks=blocks))


def test_frame_decoder_reassembles_split_frames():
    msgs = [Message(wantlist=(WantEntry(cid=CID_A),)), Message(blocks=(Block(prefix=CidPrefix.of(CID_B), data=b"y" * 70000),))]
    stream = b"".join(encode_framed(m) for m in msgs)
    dec = FrameDecoder()
    out = []
    for i in range(0, len(stream), 777):
        dec.feed(stream[i : i + 777])
        while (body := dec.next_frame()) is not None:
            out.append(decode_message(body))
    assert out[0].wantlist == msgs[0].wantlist
    assert bytes(out[1].blocks[0].data) == b"y" * 70000
    assert dec.buffered == 0


def test_frame_decoder_rejects_an_oversize_prefix_before_the_body_arrives():
    dec = FrameDecoder()
    dec.feed(encode_uvarint(MAX_MESSAGE_SIZE + 1))
    with pytest.raises(MessageTooLarge, match="announced"):
        dec.next_frame()
    assert dec.buffered < 16  # nothing of the body was buffered


def test_frame_helper_prefixes_the_length():
    assert frame(b"abc") == b"\x03abc"


def test_prefix_with_impossible_cid_is_malformed():
    with pytest.raises(MalformedMessage, match="CIDv0"):
        CidPrefix(version=0, codec=RAW, mh_code=0x12, mh_length=32).cid_for_digest(b"\0" * 32)
    with pytest.raises(MalformedMessage, match="digest"):
        CidPrefix(version=1, codec=RAW, mh_code=0x12, mh_length=32).cid_for_digest(b"\0" * 31)


_cids = st.binary(min_size=0, max_size=64).map(lambda d: make_cid(d, RAW))
_entries = st.builds(
    WantEntry,
    cid=_cids,
    priority=st.integers(-(2**31), 2**31 - 1),
    cancel=st.booleans(),
    want_type=st.sampled_from(list(WantType)),
    send_dont_have=st.booleans(),
)


@settings(max_examples=200, deadline=None)
@given(
    wantlist=st.lists(_entries, max_size=20),
    full=st.booleans(),
    datas=st.lists(st.binary(max_size=300), max_size=5),
    presences=st.lists(st.builds(BlockPresence, cid=_cids, type=st.sampled_from(list(PresenceType))), max_size=5),
    pending=st.integers(0, 2**31 - 1),
)
def test_property_decode_inverts_encode(wantlist, full, datas, presences, pending):
    msg = Message(
        wantlist=tuple(wantlist),
        full=full,
        blocks=tuple(Block(prefix=CidPrefix.of(CID_A), data=d) for d in datas),
        presences=tuple(presences),
        pending_bytes=pending,
    )
    back = decode_message(encode_message(msg))
    assert back.wantlist == msg.wantlist
    assert back.full == msg.full
    assert [bytes(b.data) for b in back.blocks] == datas
    assert back.presences == msg.presences
    assert back.pending_bytes == pending


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_property_garbage_never_raises_anything_but_protocol_errors(raw):
    try:
        decode_message(raw)
    except (MalformedMessage, MessageTooLarge):
        pass
