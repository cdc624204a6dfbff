"""UnixFS writing: Data message, importer (against js ipfs-unixfs-importer vectors), directories.

tests/vectors/unixfs.json was written by the real npm ``ipfs-unixfs-importer``
(see tests/vectors/README.md); these tests only read it.
"""

from __future__ import annotations

import json
import random
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pinfold.blockstore.cid import CID, DAG_PB, RAW
from pinfold.blockstore.errors import DecodeError
from pinfold.blockstore.unixfs import (
    DataType,
    DirectoryBuilder,
    FileImporter,
    ImportParams,
    UnixFSData,
    UnixTime,
    decode_data,
    encode_data,
    import_bytes,
    stat,
    walk_tree,
)

from tests.blockstore.unixfs_helpers import HELLO, KIB, Store, build, read_all, stream

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "unixfs.json").read_text())


def content(case: dict) -> bytes:
    return case["text"].encode() if "text" in case else stream(case["seed"], case["size"])


# =========================================================================== vectors


@pytest.mark.parametrize("case", VECTORS["files"], ids=lambda c: c["name"])
def test_file_matches_js_importer(case: dict) -> None:
    data = content(case)
    blocks, root, tsize = import_bytes(data, ImportParams(**case["params"]))
    assert str(root) == case["root"]
    assert tsize == case["tsize"]
    assert len({bytes(cid) for cid, _ in blocks}) == case["block_count"]
    if "blocks" in case:
        mine = sorted({(str(cid), len(block)) for cid, block in blocks})
        assert mine == [(b["cid"], b["size"]) for b in case["blocks"]]


def test_kubo_classic_hello_world() -> None:
    # Kubo's well-known `echo "hello world" | ipfs add` CID.
    _, root, _ = import_bytes(b"hello world\n", ImportParams.kubo_classic())
    assert str(root) == "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"


@pytest.mark.parametrize("case", VECTORS["directories"], ids=lambda c: c["name"])
def test_directory_matches_js_importer(case: dict) -> None:
    params = ImportParams(**case["params"])
    builder = DirectoryBuilder(params)
    store = Store()
    for entry in case["entries"]:
        if entry.get("dir"):
            builder.add_dir(entry["path"])
            continue
        blocks, cid, tsize = import_bytes(stream(entry["seed"], entry["size"]), params)
        store.put(blocks)
        assert str(cid) == case["paths"][entry["path"]]["cid"]
        builder.add_file(entry["path"], cid, entry["size"], tsize)
    blocks, root = builder.finish()
    store.put(blocks)
    assert str(root) == case["root"]
    assert builder.root_tsize == case["tsize"]
    assert len(store.blocks) == case["block_count"]
    assert str(blocks[-1][0]) == case["root"]  # the root block comes last


# =========================================================================== Data message

unixtimes = st.builds(
    UnixTime,
    seconds=st.integers(min_value=-(2**63), max_value=2**63 - 1),
    nanos=st.none() | st.integers(min_value=1, max_value=999_999_999),
)
u64 = st.integers(min_value=0, max_value=2**64 - 1)
datas = st.builds(
    UnixFSData,
    type=st.sampled_from([t for t in DataType if t != DataType.HAMT_SHARD]),
    data=st.none() | st.binary(max_size=40),
    filesize=st.none() | u64,
    blocksizes=st.lists(u64, max_size=5).map(tuple),
    hash_type=st.none() | u64,
    fanout=st.none() | u64,
    mode=st.none() | st.integers(min_value=0, max_value=2**32 - 1),
    mtime=st.none() | unixtimes,
)


@settings(deadline=None)
@given(datas)
def test_data_round_trip(msg: UnixFSData) -> None:
    raw = encode_data(msg)
    assert decode_data(raw) == msg
    assert encode_data(decode_data(raw)) == raw


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40))
def test_data_decode_random_bytes_raises_only_decode_error(raw: bytes) -> None:
    try:
        decode_data(raw)
    except DecodeError:
        pass


def test_data_known_encodings() -> None:
    assert encode_data(UnixFSData(type=DataType.DIRECTORY)) == b"\x08\x01"
    leaf = UnixFSData(type=DataType.FILE, data=b"hi", filesize=2)
    assert encode_data(leaf) == bytes.fromhex("0802 12026869 1802")
    interior = UnixFSData(type=DataType.FILE, filesize=300, blocksizes=(256, 44))
    assert encode_data(interior) == bytes.fromhex("0802 18ac02 208002 202c")  # unpacked, as Kubo/js


def test_data_accepts_packed_blocksizes() -> None:
    assert decode_data(bytes.fromhex("0802 18ac02 2203 80022c")).blocksizes == (256, 44)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (None, "no Data field"),
        (b"", "missing Type"),
        (bytes.fromhex("1802"), "missing Type"),
        (bytes.fromhex("0809"), "unknown Type 9"),
        (bytes.fromhex("0802 4801"), "unknown field 9"),
        (bytes.fromhex("0802 0802"), "duplicate field Type"),
        (bytes.fromhex("0802 1801 1801"), "duplicate field filesize"),
        (bytes.fromhex("0a00"), "Type has wire type 2"),
        (bytes.fromhex("0802 1a00"), "filesize has wire type 2"),
        (bytes.fromhex("0802 1205 68"), "Data claims 5 bytes"),
        (bytes.fromhex("0802 42 07 0801 1500000000"), "FractionalNanoseconds 0 outside"),
        (bytes.fromhex("0802 42 02 1001"), "unexpected field 2"),
        (bytes.fromhex("0802 42 00"), "missing Seconds"),
        (bytes.fromhex("0805 3003"), "fanout 3 is not a power of two"),
        (bytes.fromhex("0805"), "fanout None"),
        (bytes.fromhex("0805 308010"), "fanout 2048"),
        (bytes.fromhex("0802 38ffffffff1f"), "does not fit in uint32"),
    ],
)
def test_data_decode_rejects(raw: bytes | None, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode_data(raw)


def test_unixtime_validates() -> None:
    with pytest.raises(ValueError, match="nanos"):
        UnixTime(seconds=1, nanos=0)
    with pytest.raises(ValueError, match="int64"):
        UnixTime(seconds=2**63)
    negative = UnixFSData(type=DataType.FILE, mtime=UnixTime(seconds=-5, nanos=7))
    assert decode_data(encode_data(negative)).mtime == UnixTime(seconds=-5, nanos=7)


# =========================================================================== importer


def test_params_defaults_and_classic() -> None:
    p = ImportParams()
    assert (p.chunk_size, p.cid_version, p.raw_leaves, p.max_links) == (1024 * 1024, 1, True, 1024)
    c = ImportParams.kubo_classic()
    assert (c.chunk_size, c.cid_version, c.raw_leaves, c.max_links) == (256 * 1024, 0, False, 174)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"chunk_size": 0}, "chunk_size"),
        ({"chunk_size": 2 * 1024 * 1024 - 255}, "chunk_size"),
        ({"chunk_size": 1.5}, "chunk_size"),
        ({"chunk_size": True}, "chunk_size"),
        ({"cid_version": 2}, "cid_version"),
        ({"raw_leaves": 1}, "raw_leaves"),
        ({"max_links": 1}, "max_links"),
        ({"max_links": 8193}, "max_links"),
        ({"cid_version": 0}, "raw_leaves must be False with cid_version 0"),
    ],
)
def test_params_reject(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        ImportParams(**kwargs)


def test_largest_chunk_size_fits_in_a_block() -> None:
    p = ImportParams(chunk_size=2 * 1024 * 1024 - 256, cid_version=0, raw_leaves=False)
    blocks, _, _ = import_bytes(b"\x01" * p.chunk_size, p)
    assert max(len(block) for _, block in blocks) <= 2 * 1024 * 1024


def test_feed_returns_blocks_as_soon_as_complete() -> None:
    imp = FileImporter(ImportParams(chunk_size=KIB, max_links=4))
    assert imp.feed(b"x" * (KIB - 1)) == []
    first = imp.feed(b"x")
    assert [cid.codec.code for cid, _ in first] == [RAW]
    out = imp.feed(b"y" * (3 * KIB))
    # Three more leaves fill the first interior node, which comes right after them.
    assert [cid.codec.code for cid, _ in out] == [RAW, RAW, RAW, DAG_PB]
    assert imp.blocks_made == 5
    rest, root, size = imp.finish()
    assert rest == [] and size == 4 * KIB and root == out[-1][0]
    with pytest.raises(RuntimeError, match="after finish"):
        imp.feed(b"z")
    with pytest.raises(RuntimeError, match="twice"):
        imp.finish()


async def test_one_byte_chunks_and_two_links() -> None:
    data = stream("tiny", 200)
    store, root = build(data, chunk_size=1, max_links=2)  # 200 leaves, depth 8
    leaves = [c for c in map(CID.decode, store.blocks) if c.codec.code == RAW]
    assert len(leaves) == len(set(data))  # equal one-byte leaves are one block
    assert await read_all(store, root) == data
    store.reads.clear()
    assert await read_all(store, root, 77, 1) == data[77:78]
    assert len(store.reads) == 9  # one path from root to leaf


def test_children_come_before_parents() -> None:
    imp = FileImporter(ImportParams(chunk_size=100, max_links=3))
    blocks = imp.feed(stream("order", 5000))
    rest, root, _ = imp.finish()
    blocks += rest
    seen: set[bytes] = set()
    for cid, block in blocks:
        if cid.codec.code == DAG_PB:
            from pinfold.blockstore.dagpb import decode

            assert all(bytes(link.hash) in seen for link in decode(block).links)
        seen.add(bytes(cid))
    assert blocks[-1][0] == root


@settings(max_examples=40, deadline=None)
@given(
    size=st.integers(min_value=0, max_value=30_000),
    chunk=st.integers(min_value=1, max_value=3000).map(lambda c: c if c > 300 else c % 8 + 40),
    links=st.integers(min_value=2, max_value=6),
    mode=st.sampled_from(["v1raw", "v1pb", "v0pb"]),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_streaming_equals_one_shot_and_round_trips(
    size: int, chunk: int, links: int, mode: str, seed: int
) -> None:
    import trio

    params = ImportParams(
        chunk_size=chunk,
        max_links=links,
        cid_version=0 if mode == "v0pb" else 1,
        raw_leaves=mode == "v1raw",
    )
    data = random.Random(seed).randbytes(size)
    one_blocks, one_root, one_tsize = import_bytes(data, params)

    rng = random.Random(seed + 1)
    imp = FileImporter(params)
    blocks = []
    pos = 0
    while pos < size:
        n = rng.choice([0, 1, rng.randint(1, 2 * chunk), rng.randint(1, 10 * chunk)])
        blocks += imp.feed(memoryview(data)[pos : pos + n])
        pos += n
    rest, root, total = imp.finish()
    blocks += rest
    assert (root, total, imp.root_tsize) == (one_root, size, one_tsize)
    assert blocks == one_blocks
    # Tsize counts every link's subtree, and the importer returns every node it makes.
    assert one_tsize == sum(len(block) for _, block in blocks)

    store = Store(blocks)

    async def check() -> None:
        assert await read_all(store, root) == data
        for _ in range(5):
            off = rng.randint(0, size + 3)
            length = rng.choice([None, 0, 1, rng.randint(0, size + 3)])
            expected = data[off:] if length is None else data[off : off + length]
            assert await read_all(store, root, off, length) == expected
        s = await stat(store.get, root)
        assert (s.kind, s.size, s.blocks) == ("file", size, len(store.blocks))

    trio.run(check)


def test_memory_stays_bounded_while_streaming() -> None:
    params = ImportParams(chunk_size=256 * KIB, max_links=16)
    piece = random.Random(7).randbytes(100_000)  # not a multiple of the chunk size
    imp = FileImporter(params)
    tracemalloc.start()
    try:
        fed = 0
        while fed < 96 * 1024 * 1024:
            for _cid, _block in imp.feed(piece):
                pass  # a real caller stores and drops each block
            fed += len(piece)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    _, _, size = imp.finish()
    assert size == fed
    # One chunk buffer + one chunk copy + the feed piece + link lists, not 96 MiB.
    assert peak < 2 * params.chunk_size + 1024 * 1024, peak


@pytest.mark.slow
def test_five_gib_streams_in_bounded_memory() -> None:
    piece = random.Random(5).randbytes(4 * 1024 * 1024 + 17)
    imp = FileImporter()
    tracemalloc.start()
    try:
        total = 0
        while total < 5 * 1024**3:
            imp.feed(piece)
            total += len(piece)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    _, root, size = imp.finish()
    assert size == total and root.codec.code == DAG_PB
    assert peak < 16 * 1024 * 1024, peak


# =========================================================================== directories


def test_empty_directory_well_known_cids() -> None:
    # UnixFS spec, "Well-Known UnixFS CIDs".
    blocks, root = DirectoryBuilder().finish()
    assert str(root) == "bafybeiczsscdsbs7ffqz55asqdf3smv6klcw3gofszvwlyarci47bgf354"
    assert blocks == [(root, b"\x0a\x02\x08\x01")]
    _, root0 = DirectoryBuilder(ImportParams.kubo_classic()).finish()
    assert str(root0) == "QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn"


@pytest.mark.parametrize(
    ("setup", "path", "message"),
    [
        ([], "", "empty"),
        ([], "/etc/passwd", "absolute"),
        ([], "a/../b", "'..'"),
        ([], "..", "'..'"),
        ([], "./a", "'.'"),
        ([], "a//b", "empty name"),
        ([], "a/", "empty name"),
        ([], "a\x00b", "NUL"),
        ([], "bad\udcff", "UTF-8"),
        (["f"], "f", "already added"),
        (["f"], "f/g", "'f' is a file"),
        (["d/f"], "d", "already added"),
    ],
)
def test_directory_rejects_bad_paths(setup: list[str], path: str, message: str) -> None:
    builder = DirectoryBuilder()
    for p in setup:
        builder.add_file(p, HELLO, 12, 12)
    with pytest.raises(ValueError, match=message) as info:
        builder.add_file(path, HELLO, 12, 12)
    assert repr(path)[1:-1] in str(info.value) or path == ""


def test_directory_add_dir_rules() -> None:
    builder = DirectoryBuilder()
    builder.add_file("d/f", HELLO, 12, 12)
    builder.add_dir("d")  # made implicitly before: fine
    with pytest.raises(ValueError, match="'d' was already added"):
        builder.add_dir("d")
    with pytest.raises(ValueError, match="'d/f' was already added"):
        builder.add_dir("d/f")
    builder.add_dir("e")
    builder.add_dir("e/sub")
    blocks, _ = builder.finish()
    assert len(blocks) == 4  # root, d, e, e/sub  (e/sub is the empty directory)
    with pytest.raises(ValueError, match="sizes must be >= 0"):
        DirectoryBuilder().add_file("x", HELLO, -1, 0)


async def test_directory_deduplicates_identical_blocks_and_sorts_bytewise() -> None:
    builder = DirectoryBuilder()
    for name in ["b", "a/x", "c/x", "é", "Z", "e"]:
        builder.add_file(name, HELLO, 12, 12)
    blocks, root = builder.finish()
    assert len(blocks) == 2  # a/ and c/ are the same block, stored once
    store = Store(blocks)
    store.put([(HELLO, b"hello world\n")])
    paths = [e.path async for e in walk_tree(store.get, root)]
    assert paths == ["", "Z", "a", "a/x", "b", "c", "c/x", "e", "é"]
