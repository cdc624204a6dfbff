"""dag-pb codec: canonical encoding, strict decoding (ipld dag-pb spec, "Protobuf Strictness").

Encoding is checked against blocks written by js ``@ipld/dag-pb`` (the
blocks in tests/vectors/car.json, produced by ``ipfs-unixfs-importer``):
decoding and re-encoding each one must give the same bytes.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pinfold.blockstore import dagpb
from pinfold.blockstore.car import read_car
from pinfold.blockstore.cid import DAG_PB, make_cid, parse_cid
from pinfold.blockstore.dagpb import (
    PBLink,
    PBNode,
    decode,
    decode_cid,
    encode,
)
from pinfold.blockstore.errors import DecodeError, InvalidCID
from pinfold.blockstore.varint import encode_uvarint as uvarint
from pinfold.blockstore.varint import read_uvarint

VECTORS = Path(__file__).parents[1] / "vectors"

CID_A = make_cid(b"a")  # CIDv1 raw
CID_B = make_cid(b"b", DAG_PB, version=0)  # CIDv0 dag-pb


def hx(s: str) -> bytes:
    return bytes.fromhex(s.replace(" ", ""))


# --------------------------------------------------------------------------- encode


def test_zero_length_block_is_empty_node() -> None:
    # Spec, "Zero-length blocks": decodes to no Data and no Links; its CIDs are fixed.
    assert decode(b"") == PBNode()
    assert encode(PBNode()) == b""
    assert (
        str(make_cid(b"", DAG_PB)) == "bafybeihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
    )
    assert str(make_cid(b"", DAG_PB, version=0)) == "QmdfTbBqBPQ7VNxZEYEj14VmRuZBkqFbiwReogJgS1zR1n"


def test_encode_puts_links_before_data_and_link_fields_in_order() -> None:
    node = PBNode(links=(PBLink(hash=CID_A, name="x", tsize=300),), data=b"\x01\x02")
    cid_bytes = bytes(CID_A)
    link_body = b"\x0a" + bytes([len(cid_bytes)]) + cid_bytes + hx("12 01 78") + hx("18 ac 02")
    expected = b"\x12" + bytes([len(link_body)]) + link_body + hx("0a 02 01 02")
    assert encode(node) == expected


def test_absent_and_empty_fields_encode_differently() -> None:
    assert encode(PBNode(data=None)) == b""
    assert encode(PBNode(data=b"")) == hx("0a 00")
    absent = encode(PBNode(links=(PBLink(hash=CID_A),)))
    empty = encode(PBNode(links=(PBLink(hash=CID_A, name="", tsize=0),)))
    assert len(empty) == len(absent) + 4  # "12 00" and "18 00"
    assert decode(absent).links[0] == PBLink(hash=CID_A)
    assert decode(empty).links[0] == PBLink(hash=CID_A, name="", tsize=0)


def test_sort_links_by_name_bytes_stable() -> None:
    links = [
        PBLink(hash=CID_A, name="b"),
        PBLink(hash=CID_B, name="é"),
        PBLink(hash=CID_A, name="Z"),
        PBLink(hash=CID_B),
        PBLink(hash=CID_A, name=""),
    ]
    names = [link.name for link in dagpb.sort_links(links)]
    # Absent name sorts as "", stably before the explicit "" that came after it.
    assert names == [None, "", "Z", "b", "é"]


def test_js_blocks_reencode_byte_identical() -> None:
    cars = json.loads((VECTORS / "car.json").read_text())["cars"]
    checked = 0
    for car in cars:
        _, blocks = read_car(base64.b64decode(car["car_base64"]))
        for cid, data in blocks:
            if cid.codec.code != DAG_PB:
                continue
            node = decode(data)
            assert encode(node) == data, f"{cid} re-encodes differently"
            assert node.data is not None
            checked += 1
    assert checked >= 20


# --------------------------------------------------------------------------- strict decode


def _link(body: bytes) -> bytes:
    return b"\x12" + uvarint(len(body)) + body


CIDB = bytes(CID_A)
HASH = b"\x0a" + uvarint(len(CIDB)) + CIDB


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (hx("0a 05 01 02"), "truncated"),
        (hx("0a 02 01 02 ff"), "truncated"),  # trailing garbage: an unfinished field key
        (hx("0a 02 01 02 00"), "unknown field 0"),  # trailing garbage: a zero byte
        (hx("08 01"), "Data has wire type varint"),
        (hx("10 01"), "Links has wire type varint"),
        (hx("0d 00 00 00 00"), "Data has wire type fixed32"),
        (hx("1a 00"), "unknown field 3"),
        (hx("0a 01 01 0a 01 02"), "duplicate Data"),
        (_link(HASH) + hx("0a 00") + _link(HASH), "Links after Data after Links"),
        (_link(hx("12 01 61") + HASH), "out of order (Hash after Name)"),
        (_link(HASH + hx("18 01 12 01 61")), "out of order (Name after Tsize)"),
        (_link(HASH + HASH), "duplicate field Hash"),
        (_link(HASH + hx("12 00 12 00")), "duplicate field Name"),
        (_link(hx("12 01 61 18 01")), "missing Hash"),
        (_link(hx("0a 03 01 02 03")), "PBLink #0 Hash"),
        (_link(HASH + hx("1a 01 01")), "Tsize has wire type length-delimited"),
        (_link(hx("08 01") + HASH), "Hash has wire type varint"),
        (_link(HASH + hx("22 00")), "unknown field 4"),
        (_link(HASH + hx("12 02 c3 28")), "not valid UTF-8"),
        (_link(HASH)[:-1], "truncated"),
        (hx("12 80 80 80 80 80 80 80 80 80 80 01"), "longer than 10 bytes"),
    ],
)
def test_decode_rejects(raw: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        decode(raw)


def test_data_before_links_is_accepted() -> None:
    # Spec rule 2: the decoder should accept either order, as IPFS data exists in both forms.
    links_first = encode(PBNode(links=(PBLink(hash=CID_A, name="n", tsize=1),), data=b"d"))
    data_first = hx("0a 01 64") + links_first[: -len(hx("0a 01 64"))]
    assert decode(data_first) == decode(links_first)
    assert encode(decode(data_first)) == links_first


def test_decode_keeps_stored_link_order() -> None:
    unsorted = encode(PBNode(links=(PBLink(hash=CID_A, name="z"), PBLink(hash=CID_B, name="a"))))
    assert [link.name for link in decode(unsorted).links] == ["z", "a"]


def test_pblink_and_pbnode_validate() -> None:
    with pytest.raises(TypeError, match="PBLink.hash"):
        PBLink(hash="bafy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tsize"):
        PBLink(hash=CID_A, tsize=-1)
    with pytest.raises(TypeError, match="PBNode.links"):
        PBNode(links=("x",))  # type: ignore[arg-type]
    assert PBNode(links=[PBLink(hash=CID_A)]).links == (PBLink(hash=CID_A),)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- varints and CIDs


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 2**32, 2**63, 2**64 - 1])
def test_uvarint_round_trip(value: int) -> None:
    raw = uvarint(value)
    assert read_uvarint(raw, 0, minimal=True) == (value, len(raw))


def test_uvarint_errors() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        uvarint(-1)
    with pytest.raises(ValueError, match="64 bits"):
        uvarint(2**64)
    with pytest.raises(DecodeError, match="not minimally encoded"):
        read_uvarint(hx("80 00"), 0, minimal=True)
    assert read_uvarint(hx("80 00"), 0) == (0, 2)  # protobuf tolerates it
    with pytest.raises(DecodeError, match="exceeds 64 bits"):
        read_uvarint(hx("ff ff ff ff ff ff ff ff ff 7f"), 0)


def test_decode_cid_matches_multiformats_and_sets_base32() -> None:
    v1 = parse_cid("bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4")
    v0 = parse_cid("QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o")
    assert decode_cid(bytes(v1)) == v1 and str(decode_cid(bytes(v1))) == str(v1)
    assert decode_cid(bytes(v0)) == v0 and str(decode_cid(bytes(v0))) == str(v0)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "truncated"),
        (hx("02 55 12 20") + bytes(32), "version 2"),
        (hx("01 55 12 20") + bytes(31), "31 present"),
        (hx("01 55 12 20") + bytes(33), "33 present"),
        (hx("01 55 12 10") + bytes(16), "sha2-256 digest of 16 bytes"),
        (hx("01 d5 aa 03 12 20") + bytes(32), "unknown codec"),
        (hx("01 80 00 12 20") + bytes(32), "not minimally encoded"),
    ],
)
def test_decode_cid_rejects(raw: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode_cid(raw)


# --------------------------------------------------------------------------- properties

cids = st.builds(
    lambda data, v0: make_cid(data, DAG_PB, version=0) if v0 else make_cid(data),
    st.binary(max_size=8),
    st.booleans(),
)
pblinks = st.builds(
    PBLink,
    hash=cids,
    name=st.none() | st.text(max_size=12),
    tsize=st.none() | st.integers(min_value=0, max_value=2**64 - 1),
)
pbnodes = st.builds(
    PBNode,
    links=st.lists(pblinks, max_size=6).map(tuple),
    data=st.none() | st.binary(max_size=64),
)


@settings(deadline=None)
@given(pbnodes)
def test_round_trip(node: PBNode) -> None:
    raw = encode(node)
    assert decode(raw) == node
    assert encode(decode(raw)) == raw


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_decode_random_bytes_raises_only_decode_error(raw: bytes) -> None:
    try:
        node = decode(raw)
    except DecodeError:
        return
    # What decodes must re-encode canonically to something that decodes the same.
    assert decode(encode(node)) == node


@settings(deadline=None)
@given(pbnodes, st.integers(min_value=0, max_value=200), st.binary(min_size=1, max_size=3))
def test_mutations_never_crash(node: PBNode, where: int, junk: bytes) -> None:
    raw = bytearray(encode(node))
    at = where % (len(raw) + 1)
    raw[at:at] = junk
    try:
        decode(bytes(raw))
    except DecodeError:
        pass


def test_hashes_match_multiformats_sha256() -> None:
    raw = encode(PBNode(links=(PBLink(hash=CID_A, name="", tsize=1),), data=b"\x08\x02"))
    cid = make_cid(raw, DAG_PB)
    assert bytes(cid.raw_digest) == hashlib.sha256(raw).digest()


def _decode_strictly(raw: bytes) -> PBNode | str:
    """``decode`` with the fast link path switched off: the node, or the error text."""
    from unittest import mock

    with mock.patch.object(dagpb, "_decode_link_fast", lambda buf, start, end: None):
        try:
            return decode(raw)
        except DecodeError as exc:
            return str(exc)


def _decode_fast(raw: bytes) -> PBNode | str:
    try:
        return decode(raw)
    except DecodeError as exc:
        return str(exc)


@settings(max_examples=400, deadline=None)
@given(pbnodes, st.integers(min_value=0, max_value=200), st.binary(min_size=0, max_size=3),
       st.integers(min_value=0, max_value=3))
def test_fast_link_path_decodes_exactly_as_the_strict_decoder(
        node: PBNode, where: int, junk: bytes, cut: int) -> None:
    """The fast path for common links accepts what the strict decoder accepts, gives
    the same node, and leaves every malformed block to the strict decoder's error."""
    raw = bytearray(encode(node))
    at = where % (len(raw) + 1)
    raw[at:at + cut] = junk
    assert _decode_fast(bytes(raw)) == _decode_strictly(bytes(raw))


def test_fast_link_path_takes_directory_links_and_rejects_what_strict_rejects() -> None:
    link = PBLink(hash=CID_A, name="file-00000.txt", tsize=15)
    raw = encode(PBNode(links=(link,) * 3, data=b"\x08\x01"))
    assert decode(raw).links == (link,) * 3
    # Tsize before Name: out of order, whichever path sees it first.
    body = b"\x0a" + uvarint(len(bytes(CID_A))) + bytes(CID_A) + b"\x18\x0f\x12\x01a"
    bad = b"\x12" + uvarint(len(body)) + body
    with pytest.raises(DecodeError, match="out of order"):
        decode(bad)
    # A name that is not UTF-8 is named by the strict decoder.
    body = b"\x0a" + uvarint(len(bytes(CID_A))) + bytes(CID_A) + b"\x12\x01\xff"
    with pytest.raises(DecodeError, match="not valid UTF-8"):
        decode(b"\x12" + uvarint(len(body)) + body)


@settings(deadline=None)
@given(st.binary(max_size=16), st.sampled_from([(0, DAG_PB), (1, DAG_PB), (1, 0x55), (1, 0x71)]))
def test_cid_text_is_the_multiformats_text(data: bytes, spelling: tuple[int, int]) -> None:
    from pinfold.blockstore.cid import cid_text

    version, codec = spelling
    cid = make_cid(data, codec, version=version)
    assert cid_text(cid) == str(cid)
    assert cid_text(decode_cid(bytes(cid))) == str(cid)


def test_cid_text_of_other_bases_and_long_codecs_is_the_multiformats_text() -> None:
    from multiformats import CID

    from pinfold.blockstore.cid import cid_text

    digest = b"\x12\x20" + hashlib.sha256(b"x").digest()
    for cid in (CID("base32", 1, "dag-jose", digest), CID("base36", 1, "raw", digest),
                CID("base32", 1, "raw", b"\x00\x03abc")):
        assert cid_text(cid) == str(cid)


@pytest.mark.parametrize("code", [0x1B, 0x1D, 0x14])  # keccak-256, keccak-512, sha3-512
def test_cid_with_a_hash_pinfold_does_not_use_is_refused_by_name(code: int) -> None:
    """multiformats needs an optional package for some hashes; a CID naming one
    is an InvalidCID naming the hash, never an ImportError."""
    raw = bytes([0x01, 0x55, code, 32]) + b"\x01" * 32
    with pytest.raises(InvalidCID, match="unsupported hash"):
        parse_cid(raw)
