"""CAR v1 (and v2 unwrapping), DAG walks and the DAG-CBOR codec.

tests/vectors/car.json holds CARs written by js ``@ipld/car`` (see
tests/vectors/README.md): pinfold must read them and write the same bytes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
from collections.abc import Iterable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pinfold.blockstore.car import (
    CARV2_PRAGMA,
    CarReader,
    car_header,
    car_section,
    export_car,
    read_car,
)
from pinfold.blockstore.cid import CID, DAG_CBOR, DAG_PB, RAW, make_cid, parse_cid
from pinfold.blockstore.dag import cbor_decode, cbor_encode, links, walk, walk_blocks
from pinfold.blockstore.dagpb import PBLink, PBNode, encode, new_cid
from pinfold.blockstore.varint import encode_uvarint as uvarint
from pinfold.blockstore.errors import BlockCorrupt, BlockNotFound, BlockTooLarge, DecodeError
from pinfold.blockstore.unixfs import DirectoryBuilder, ImportParams, import_bytes

CARS = json.loads((Path(__file__).parents[1] / "vectors" / "car.json").read_text())["cars"]


class Store:
    def __init__(self, blocks: Iterable[tuple[CID, bytes]] = ()) -> None:
        self.blocks = {bytes(cid): data for cid, data in blocks}
        self.reads: list[CID] = []

    async def get(self, cid: CID) -> bytes:
        self.reads.append(cid)
        try:
            return self.blocks[bytes(cid)]
        except KeyError:
            raise BlockNotFound(cid) from None

    def has(self, cid: CID) -> bool:
        return bytes(cid) in self.blocks


def sample_dag() -> tuple[Store, CID, list[tuple[CID, bytes]]]:
    """A directory with a multi-level file, a small file and the same file twice."""
    params = ImportParams(chunk_size=512, max_links=3)
    blocks_all: list[tuple[CID, bytes]] = []
    builder = DirectoryBuilder(params)
    rng = random.Random(3)
    big = rng.randbytes(5000)
    for path, data in [
        ("big.bin", big),
        ("dir/small.txt", rng.randbytes(40)),
        ("dir/again.bin", big),
    ]:
        size = len(data)
        blocks, cid, tsize = import_bytes(data, params)
        blocks_all += blocks
        builder.add_file(path, cid, size, tsize)
    blocks, root = builder.finish()
    blocks_all += blocks
    return Store(blocks_all), root, blocks_all


async def car_bytes(store: Store, root: CID) -> bytes:
    return b"".join([piece async for piece in export_car(store.get, root)])


# =========================================================================== vectors


@pytest.mark.parametrize("case", CARS, ids=lambda c: c["name"])
async def test_reads_and_writes_js_cars_byte_for_byte(case: dict) -> None:
    raw = base64.b64decode(case["car_base64"])
    roots, blocks = read_car(raw)
    assert [str(r) for r in roots] == [case["root"]]
    assert [str(cid) for cid, _ in blocks] == case["blocks_in_order"]
    store = Store(blocks)
    assert [str(c) async for c in walk(store.get, roots[0])] == case["blocks_in_order"]
    assert await car_bytes(store, roots[0]) == raw


def test_header_bytes() -> None:
    root = parse_cid("bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4")
    body = (
        b"\xa2"
        + b"\x65roots"
        + b"\x81"
        + b"\xd8\x2a\x58\x25\x00"
        + bytes(root)
        + b"\x67version"
        + b"\x01"
    )
    assert car_header([root]) == uvarint(len(body)) + body
    with pytest.raises(ValueError, match="at least one root"):
        car_header([])
    with pytest.raises(TypeError, match="must be CIDs"):
        car_header(["bafy"])  # type: ignore[list-item]


# =========================================================================== round trips


async def test_round_trip_same_roots_and_blocks() -> None:
    store, root, _ = sample_dag()
    raw = await car_bytes(store, root)
    roots, got = read_car(raw)
    assert roots == (root,)
    assert {bytes(c): d for c, d in got} == store.blocks  # every block, nothing else
    assert len(got) == len(store.blocks)  # each once, though "again.bin" repeats "big.bin"
    assert got[0][0] == root


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**32))
def test_streaming_reader_any_split(seed: int) -> None:
    import trio

    store, root, _ = sample_dag()
    raw = trio.run(car_bytes, store, root)
    expected = read_car(raw)[1]
    rng = random.Random(seed)
    reader = CarReader()
    got: list[tuple[CID, bytes]] = []
    pos = 0
    while pos < len(raw):
        n = rng.choice([1, 2, rng.randint(1, 100), rng.randint(1, 5000)])
        got += reader.feed(raw[pos : pos + n])
        pos += n
    reader.finish()
    assert reader.roots == (root,) and reader.version == 1
    assert got == expected and reader.blocks_read == len(expected)


async def test_blocks_come_out_as_soon_as_their_section_completes() -> None:
    store, root, _ = sample_dag()
    raw = await car_bytes(store, root)
    reader = CarReader()
    header_len = len(car_header([root]))
    assert reader.feed(raw[:header_len]) == [] and reader.roots == (root,)
    first_section = len(car_section(root, store.blocks[bytes(root)]))
    assert reader.feed(raw[header_len : header_len + first_section - 1]) == []
    assert [
        c for c, _ in reader.feed(raw[header_len + first_section - 1 : header_len + first_section])
    ] == [root]


# =========================================================================== bad input


def valid_car() -> bytes:
    data = b"some block"
    cid = make_cid(data)
    return car_header([cid]) + car_section(cid, data)


def test_corrupt_block_is_refused() -> None:
    raw = bytearray(valid_car())
    raw[-1] ^= 0x01
    with pytest.raises(BlockCorrupt):
        read_car(bytes(raw))


@pytest.mark.parametrize("cut", [1, 5, 20, 50])
def test_truncated_car_is_a_decode_error(cut: int) -> None:
    raw = valid_car()
    reader = CarReader()
    reader.feed(raw[:-cut])
    with pytest.raises(DecodeError, match="ended"):
        reader.finish()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "empty input"),
        (b"hello, not a CAR at all", "header"),
        (bytes(64), "zero-length header"),
        (uvarint(2) + b"\xa0\x00", "trailing"),
        (uvarint(1) + b"\x01", "is a int, expected a map"),
        (
            uvarint(len(cbor_encode({"version": 1}))) + cbor_encode({"version": 1}),
            "at least one root",
        ),
        (
            uvarint(len(cbor_encode({"roots": [], "version": 1})))
            + cbor_encode({"roots": [], "version": 1}),
            "at least one root",
        ),
        (
            uvarint(len(cbor_encode({"roots": [1], "version": 1})))
            + cbor_encode({"roots": [1], "version": 1}),
            "not a CID",
        ),
        (
            uvarint(len(cbor_encode({"roots": [make_cid(b"")], "version": 3})))
            + cbor_encode({"roots": [make_cid(b"")], "version": 3}),
            "version is 3, expected 1",
        ),
        (
            uvarint(len(cbor_encode({"roots": [make_cid(b"")], "version": 1, "x": 0})))
            + cbor_encode({"roots": [make_cid(b"")], "version": 1, "x": 0}),
            "unexpected keys",
        ),
        (car_header([make_cid(b"")]) + b"\x00", "zero-length section"),
        (car_header([make_cid(b"")]) + uvarint(3) + b"\x01\x55\x12", "too short for its CID"),
        (
            car_header([make_cid(b"")]) + uvarint(5) + b"\x02\x55\x12\x00\x00",
            "unsupported version 2",
        ),
        (car_header([make_cid(b"")]) + b"\xff" * 11, "longer than 10 bytes"),
        (uvarint(2 * 1024 * 1024) + b"x", "larger than 1 MiB"),
    ],
)
def test_garbage_is_a_decode_error(raw: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        read_car(raw)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_raise_only_format_errors(raw: bytes) -> None:
    try:
        read_car(raw)
    except (DecodeError, BlockCorrupt, BlockTooLarge):
        pass


def test_block_too_large() -> None:
    big = b"\x00" * (2 * 1024 * 1024 + 1)
    cid = make_cid(big)
    section = uvarint(len(bytes(cid)) + len(big)) + bytes(cid) + big
    with pytest.raises(BlockTooLarge):
        read_car(car_header([cid]) + section)
    with pytest.raises(BlockTooLarge):
        car_section(cid, big)
    # A huge length prefix is refused at once, before buffering anything.
    reader = CarReader()
    with pytest.raises(BlockTooLarge):
        reader.feed(car_header([cid]) + uvarint(1 << 40))


def test_identity_sections_are_checked_then_dropped() -> None:
    ident = new_cid(1, RAW, b"\x00\x03abc")
    normal = make_cid(b"x")
    raw = car_header([normal]) + car_section(ident, b"abc") + car_section(normal, b"x")
    reader = CarReader()
    assert reader.feed(raw) == [(normal, b"x")]
    assert reader.blocks_read == 2
    with pytest.raises(BlockCorrupt):
        read_car(car_header([normal]) + car_section(ident, b"abd"))


def test_feed_after_finish() -> None:
    reader = CarReader()
    reader.feed(valid_car())
    reader.finish()
    with pytest.raises(RuntimeError, match="after finish"):
        reader.feed(b"")


# =========================================================================== CARv2


def carv2(
    payload: bytes,
    *,
    pad: int = 7,
    index: bytes = b"\x01fake-index",
    data_offset: int | None = None,
    data_size: int | None = None,
) -> bytes:
    offset = len(CARV2_PRAGMA) + 40 + pad if data_offset is None else data_offset
    size = len(payload) if data_size is None else data_size
    header = (
        bytes(16)
        + offset.to_bytes(8, "little")
        + size.to_bytes(8, "little")
        + (offset + len(payload)).to_bytes(8, "little")
    )
    return CARV2_PRAGMA + header + b"\x00" * pad + payload + index


async def test_carv2_payload_is_unwrapped() -> None:
    store, root, _ = sample_dag()
    payload = await car_bytes(store, root)
    raw = carv2(payload)
    roots, blocks = read_car(raw)
    assert roots == (root,) and blocks == read_car(payload)[1]
    reader = CarReader()
    got = []
    for i in range(0, len(raw), 7):
        got += reader.feed(raw[i : i + 7])
    reader.finish()
    assert reader.version == 2 and got == blocks


def test_carv2_errors() -> None:
    payload = valid_car()
    with pytest.raises(DecodeError, match="payload should end"):
        read_car(carv2(payload, index=b"")[:-3])
    with pytest.raises(DecodeError, match="points inside the CARv2 header"):
        read_car(carv2(payload, data_offset=10))
    with pytest.raises(DecodeError, match="data size is 0"):
        read_car(carv2(payload, data_size=0))
    with pytest.raises(DecodeError, match="runs past the payload end"):
        read_car(carv2(payload, data_size=len(payload) - 2))
    with pytest.raises(DecodeError, match="before the header"):
        read_car(CARV2_PRAGMA + bytes(10))


# =========================================================================== dag.walk / links


def node(*children: CID, data: bytes = b"\x08\x02") -> tuple[CID, bytes]:
    block = encode(
        PBNode(links=tuple(PBLink(hash=c, name="", tsize=1) for c in children), data=data)
    )
    return make_cid(block, DAG_PB), block


async def test_walk_is_preorder_dfs_each_cid_once_raw_not_read() -> None:
    leaves = [(make_cid(bytes([i])), bytes([i])) for i in range(4)]
    (l0, _), (l1, _), (l2, _), (l3, _) = leaves
    a = node(l0, l1)
    b = node(l1, l2, a[0])
    root = node(a[0], b[0], l3, l0)
    store = Store([*leaves, a, b, root])
    order = [c async for c in walk(store.get, root[0])]
    assert order == [root[0], a[0], l0, l1, b[0], l2, l3]
    assert store.reads == [root[0], a[0], b[0]]  # raw leaves are not read
    assert [c for c, _ in [x async for x in walk_blocks(store.get, root[0])]] == order


async def test_walk_checks_raw_presence_with_has_block() -> None:
    present, absent = make_cid(b"here"), make_cid(b"gone")
    root = node(present, absent)
    store = Store([(present, b"here"), root])
    assert [c async for c in walk(store.get, root[0])] == [root[0], present, absent]  # unchecked
    with pytest.raises(BlockNotFound, match=str(absent)):
        async for _ in walk(store.get, root[0], has_block=store.has):
            pass

    async def has_async(cid: CID) -> bool:
        return store.has(cid)

    with pytest.raises(BlockNotFound):
        async for _ in walk(store.get, root[0], has_block=has_async):
            pass
    missing_inner = node(make_cid(b"x", DAG_PB))
    store2 = Store([missing_inner])
    with pytest.raises(BlockNotFound):
        async for _ in walk(store2.get, missing_inner[0]):
            pass


async def test_walk_skips_identity_but_follows_its_links() -> None:
    leaf = make_cid(b"leaf")
    inline_block = encode(PBNode(links=(PBLink(hash=leaf, name="", tsize=4),), data=b"\x08\x02"))
    inline = new_cid(1, DAG_PB, b"\x00" + uvarint(len(inline_block)) + inline_block)
    root = node(inline)
    store = Store([(leaf, b"leaf"), root])
    assert [c async for c in walk(store.get, root[0])] == [root[0], leaf]


async def test_walk_follows_dag_cbor_links() -> None:
    leaf = make_cid(b"raw")
    pb = node(leaf)
    doc = {
        "name": "model",
        "parts": [{"/": pb[0]}, pb[0]],
        "meta": {"weights": leaf, "n": -3, "f": 1.5},
    }
    block = cbor_encode(doc)
    cbor_cid = make_cid(block, DAG_CBOR)
    # Canonical key order: "meta" < "name" < "parts"; links in document order.
    assert links(cbor_cid, block) == [leaf, pb[0], pb[0]]
    store = Store([(leaf, b"raw"), pb, (cbor_cid, block)])
    assert [c async for c in walk(store.get, cbor_cid)] == [cbor_cid, leaf, pb[0]]


def test_links_by_codec() -> None:
    leaf = make_cid(b"x")
    pb = node(leaf, leaf)
    assert links(leaf, b"x") == []
    assert links(pb[0], pb[1]) == [leaf, leaf]
    dag_json = new_cid(1, 0x0129, b"\x12\x20" + hashlib.sha256(b"{}").digest())
    with pytest.raises(DecodeError, match="dag-json is not supported"):
        links(dag_json, b"{}")
    with pytest.raises(DecodeError):
        links(make_cid(b"\xff", DAG_CBOR), b"\xff")


# =========================================================================== DAG-CBOR

json_like = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10)
    | st.binary(max_size=10)
    | st.builds(lambda b: make_cid(b), st.binary(max_size=4)),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(deadline=None)
@given(json_like)
def test_cbor_round_trip(value: object) -> None:
    raw = cbor_encode(value)
    assert cbor_decode(raw) == value
    assert cbor_encode(cbor_decode(raw)) == raw


def test_cbor_canonical_bytes() -> None:
    # Map keys: shorter first, then bytewise (DAG-CBOR strictness).
    assert cbor_encode({"bb": 1, "a": 2, "c": 3}) == bytes.fromhex(
        "a3 6161 02 6163 03 626262 01".replace(" ", "")
    )
    assert cbor_encode(-1) == b"\x20"
    assert cbor_encode(1.5) == bytes.fromhex("fb3ff8000000000000")
    assert cbor_encode(500) == b"\x19\x01\xf4"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("9f01ff", "indefinite-length"),
        ("1801", "not minimally encoded"),
        ("190001", "not minimally encoded"),
        ("a2616201616101", "not in canonical order"),
        ("a2616101616101", "duplicate map key"),
        ("a10101", "map key is int"),
        ("c11a00000000", "tag 1"),
        ("d82a4100", "CID at byte"),
        ("d82a420102", "starting with 0x00"),
        ("fa3fc00000", "16- or 32-bit float"),
        ("fb7ff8000000000000", "NaN or Infinity"),
        ("f7", "simple value 23"),
        ("0101", "trailing"),
        ("62c328", "not valid UTF-8"),
        ("5a00010000", "truncated"),
        ("", "empty input"),
        ("81" * 300 + "01", "nesting deeper than 256"),
    ],
)
def test_cbor_rejects(raw: str, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        cbor_decode(bytes.fromhex(raw))


def test_cbor_encode_rejects() -> None:
    with pytest.raises(ValueError, match="NaN"):
        cbor_encode(float("nan"))
    with pytest.raises(TypeError, match="map keys must be strings"):
        cbor_encode({1: 2})
    with pytest.raises(ValueError, match="cannot encode"):
        cbor_encode({1, 2})
    with pytest.raises(ValueError, match="64 bits"):
        cbor_encode(2**64)


def test_sha256_of_sections() -> None:
    data = b"abc"
    cid = make_cid(data)
    section = car_section(cid, data)
    assert section[0] == len(bytes(cid)) + 3
    assert hashlib.sha256(section[-3:]).digest() == bytes(cid.raw_digest)


async def test_walk_prefetch_hints_children_it_will_read() -> None:
    leaves = [(make_cid(bytes([i])), bytes([i])) for i in range(3)]
    inner = node(leaves[0][0], leaves[1][0])
    root = node(inner[0], leaves[2][0], inner[0])
    store = Store([*leaves, inner, root])
    hints: list[list[CID]] = []
    order = [c async for c in walk(store.get, root[0], prefetch=hints.append)]
    assert order[0] == root[0]
    assert hints == [[inner[0]]]  # raw leaves are not read by walk, the repeat is listed once
    hints.clear()
    _ = [c async for c, _ in walk_blocks(store.get, root[0], prefetch=hints.append)]
    assert hints == [[inner[0], leaves[2][0]], [leaves[0][0], leaves[1][0]]]
