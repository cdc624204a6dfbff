"""UnixFS reading: ``cat`` (ranges, offsets, inconsistent or odd DAGs, identity CIDs,
prefetch), ``walk_tree`` and ``stat`` over files, directories, symlinks and HAMT shards."""

from __future__ import annotations

import pytest
from pinfold.blockstore.cid import CID, DAG_CBOR, DAG_PB, RAW, make_cid, parse_cid
from pinfold.blockstore.dagpb import PBLink, PBNode, encode, new_cid
from pinfold.blockstore.errors import BlockNotFound, DecodeError, NotAFile
from pinfold.blockstore.unixfs import (
    DataType,
    DirectoryBuilder,
    Entry,
    UnixFSData,
    UnixTime,
    cat,
    encode_data,
    stat,
    walk_tree,
)

from tests.blockstore.unixfs_helpers import HELLO, KIB, Store, build, read_all, stream


# =========================================================================== exporter


async def test_cat_range_reads_only_the_blocks_it_needs() -> None:
    data = stream("range", 45 * KIB + 300)  # 46 leaves, 4 links a node: depth 3
    store, root = build(data, chunk_size=KIB, max_links=4)
    assert await read_all(store, root, 5000, 100) == data[5000:5100]
    # root -> level-2 node -> level-1 node -> one leaf
    assert len(store.reads) == 4
    assert store.reads[0] == root and store.reads[-1].codec.code == RAW

    store.reads.clear()
    assert await read_all(store, root, 4 * KIB - 10, 20) == data[4 * KIB - 10 : 4 * KIB + 10]
    assert len(store.reads) == 6  # the range crosses a level-1 boundary: two paths, two leaves

    store.reads.clear()
    assert await read_all(store, root, len(data) + 5) == b""
    assert store.reads == [root]

    store.reads.clear()
    assert await read_all(store, root, 0, 0) == b""
    assert store.reads == []

    store.reads.clear()
    assert await read_all(store, root) == data
    assert len(store.reads) == len(store.blocks)


async def test_cat_classic_dag_pb_leaves_and_offsets() -> None:
    data = stream("classic", 3 * KIB + 5)
    store, root = build(data, chunk_size=KIB, cid_version=0, raw_leaves=False, max_links=174)
    assert root.version == 0
    assert await read_all(store, root, KIB + 1, 2 * KIB - 2) == data[KIB + 1 : 3 * KIB - 1]
    assert len(store.reads) == 3  # root + two dag-pb leaves


async def test_cat_rejects_bad_arguments_and_non_files() -> None:
    store, root = build(b"abc")
    with pytest.raises(ValueError, match="offset"):
        await read_all(store, root, -1)
    with pytest.raises(ValueError, match="length"):
        await read_all(store, root, 0, -1)
    dir_blocks, dir_root = DirectoryBuilder().finish()
    store.put(dir_blocks)
    with pytest.raises(NotAFile, match="is a directory"):
        await read_all(store, dir_root)
    cbor = make_cid(b"\xa0", DAG_CBOR)
    store.put([(cbor, b"\xa0")])
    with pytest.raises(NotAFile, match="dag-cbor"):
        await read_all(store, cbor)
    missing = make_cid(b"not stored")
    with pytest.raises(BlockNotFound):
        await read_all(store, missing)


def pb(links: list[tuple[CID, int]], ufs: UnixFSData, version: int = 1) -> tuple[CID, bytes]:
    block = encode(
        PBNode(
            links=tuple(PBLink(hash=c, name="", tsize=t) for c, t in links), data=encode_data(ufs)
        )
    )
    return make_cid(block, DAG_PB, version=version), block


async def test_cat_detects_inconsistent_sizes() -> None:
    leaf = (make_cid(b"12345"), b"12345")
    store = Store([leaf])
    cases = [
        (
            pb([(leaf[0], 5)], UnixFSData(type=DataType.FILE, filesize=5)),
            "1 links but 0 blocksizes",
        ),
        (
            pb([(leaf[0], 5)], UnixFSData(type=DataType.FILE, filesize=9, blocksizes=(5,))),
            "filesize 9",
        ),
        (
            pb([(leaf[0], 5)], UnixFSData(type=DataType.FILE, filesize=4, blocksizes=(4,))),
            "has 5 bytes, its parent says 4",
        ),
    ]
    for (cid, block), message in cases:
        store.put([(cid, block)])
        with pytest.raises(DecodeError, match=message):
            await read_all(store, cid)
    named = encode(
        PBNode(
            links=(PBLink(hash=leaf[0], name="x", tsize=5),),
            data=encode_data(UnixFSData(type=DataType.FILE, filesize=5, blocksizes=(5,))),
        )
    )
    named_cid = make_cid(named, DAG_PB)
    store.put([(named_cid, named)])
    with pytest.raises(DecodeError, match="has a name"):
        await read_all(store, named_cid)
    garbage = make_cid(b"\xff\xff", DAG_PB)
    store.put([(garbage, b"\xff\xff")])
    with pytest.raises(DecodeError):
        await read_all(store, garbage)


async def test_cat_inline_data_before_children_and_legacy_raw_type() -> None:
    leaf_cid, leaf = pb([], UnixFSData(type=DataType.RAW, data=b"world", filesize=5))
    root_cid, root = pb(
        [(leaf_cid, len(leaf))],
        UnixFSData(type=DataType.FILE, data=b"hello ", filesize=11, blocksizes=(5,)),
    )
    store = Store([(leaf_cid, leaf), (root_cid, root)])
    assert await read_all(store, root_cid) == b"hello world"
    assert await read_all(store, root_cid, 3, 5) == b"lo wo"
    store.reads.clear()
    assert await read_all(store, root_cid, 0, 6) == b"hello "
    assert store.reads == [root_cid]  # the child holds nothing of the range


async def test_identity_cids_need_no_reads() -> None:
    empty = parse_cid("bafkqaaa")  # identity raw, no bytes (UnixFS spec)
    store = Store()
    assert await read_all(store, empty) == b""
    inline = new_cid(1, RAW, b"\x00\x05hello")
    builder = DirectoryBuilder()
    builder.add_file("greeting", inline, 5, 5)
    blocks, root = builder.finish()
    store.put(blocks)
    assert await read_all(store, inline, 1) == b"ello"
    entries = [e async for e in walk_tree(store.get, root)]
    assert [(e.path, e.kind, e.size) for e in entries] == [
        ("", "dir", None),
        ("greeting", "file", 5),
    ]
    assert store.reads == [root]
    too_big = new_cid(1, RAW, b"\x00\x81\x01" + bytes(129))
    with pytest.raises(DecodeError, match="more than 128"):
        await read_all(store, too_big)


async def test_walk_tree_file_root_and_stat() -> None:
    data = stream("stat", 10 * KIB)
    store, root = build(data, chunk_size=KIB, max_links=3)
    assert [e async for e in walk_tree(store.get, root)] == [
        Entry(path="", kind="file", cid=root, size=len(data))
    ]
    assert store.reads == [root]  # only the file's root is read
    s = await stat(store.get, root)
    assert (s.kind, s.size, s.blocks, s.entries) == ("file", len(data), len(store.blocks), 0)


def dir_node(
    entries: list[tuple[str, CID, int]], kind: DataType = DataType.DIRECTORY, **extra: object
) -> tuple[CID, bytes]:
    block = encode(
        PBNode(
            links=tuple(PBLink(hash=c, name=n, tsize=t) for n, c, t in entries),
            data=encode_data(UnixFSData(type=kind, **extra)),
        )
    )  # type: ignore[arg-type]
    return make_cid(block, DAG_PB), block


@pytest.mark.parametrize("name", ["..", ".", "", "a/b", "nul\x00"])
async def test_walk_tree_rejects_unsafe_names(name: str) -> None:
    store = Store([(HELLO, b"hello world\n")])
    cid, block = dir_node([(name, HELLO, 12)])
    store.put([(cid, block)])
    with pytest.raises(DecodeError, match="unsafe entry name"):
        async for _ in walk_tree(store.get, cid):
            pass


async def test_walk_tree_symlink_mode_mtime_and_duplicate_names() -> None:
    link_cid, link_block = pb([], UnixFSData(type=DataType.SYMLINK, data=b"../target"))
    file_cid, file_block = pb(
        [],
        UnixFSData(
            type=DataType.FILE,
            data=b"x",
            filesize=1,
            mode=0o600,
            mtime=UnixTime(seconds=1_700_000_000, nanos=5),
        ),
    )
    root, block = dir_node([("f", file_cid, 10), ("f", HELLO, 12), ("s", link_cid, 10)])
    store = Store(
        [(link_cid, link_block), (file_cid, file_block), (HELLO, b"hello world\n"), (root, block)]
    )
    entries = [e async for e in walk_tree(store.get, root)]
    assert entries[1] == Entry(
        path="f",
        kind="file",
        cid=file_cid,
        size=1,
        mode=0o600,
        mtime=UnixTime(seconds=1_700_000_000, nanos=5),
    )
    assert entries[2] == Entry(path="s", kind="symlink", cid=link_cid, size=9, target="../target")
    assert len(entries) == 3  # the second "f" is ignored: first entry wins (UnixFS spec)
    with pytest.raises(NotAFile, match="symlink"):
        await read_all(store, link_cid)
    s = await stat(store.get, root)
    # Both "f" links are part of the DAG, so the duplicate's block is counted.
    assert (s.kind, s.size, s.entries, s.blocks) == ("dir", 1 + 9, 2, 4)


async def test_walk_tree_reads_hamt_sharded_directories() -> None:
    a, b, c = make_cid(b"A"), make_cid(b"BB"), make_cid(b"CCC")
    sub, sub_block = dir_node(
        [("07b.txt", b, 2), ("FFc.txt", c, 3)],
        DataType.HAMT_SHARD,
        data=b"\x00" * 32,
        hash_type=0x22,
        fanout=256,
    )
    root, root_block = dir_node(
        [("00a.txt", a, 1), ("1C", sub, 100)],
        DataType.HAMT_SHARD,
        data=b"\x00" * 32,
        hash_type=0x22,
        fanout=256,
    )
    store = Store([(a, b"A"), (b, b"BB"), (c, b"CCC"), (sub, sub_block), (root, root_block)])
    entries = [(e.path, e.kind, e.size) async for e in walk_tree(store.get, root)]
    assert entries == [
        ("", "dir", None),
        ("a.txt", "file", 1),
        ("b.txt", "file", 2),
        ("c.txt", "file", 3),
    ]
    bad, bad_block = dir_node([("0", a, 1)], DataType.HAMT_SHARD, hash_type=0x22, fanout=256)
    store.put([(bad, bad_block)])
    with pytest.raises(DecodeError, match="shorter than its prefix"):
        async for _ in walk_tree(store.get, bad):
            pass


async def test_walk_tree_rejects_non_unixfs() -> None:
    cbor = make_cid(b"\xa0", DAG_CBOR)
    store = Store([(cbor, b"\xa0")])
    with pytest.raises(DecodeError, match="not UnixFS"):
        async for _ in walk_tree(store.get, cbor):
            pass


async def test_cat_prefetch_names_exactly_the_blocks_it_reads() -> None:
    data = stream("prefetch", 20 * KIB)
    store, root = build(data, chunk_size=KIB, max_links=4)
    hints: list[CID] = []
    reads_at_hint: list[int] = []

    def prefetch(cids: list[CID]) -> None:
        hints.extend(cids)
        reads_at_hint.extend([len(store.reads)] * len(cids))

    got = b"".join([p async for p in cat(store.get, root, 3000, 5000, prefetch=prefetch)])
    assert got == data[3000:8000]
    # Every block read after the root was announced, before it was read, and nothing else.
    assert sorted(map(bytes, hints)) == sorted(map(bytes, store.reads[1:]))
    for cid, hinted_at in zip(hints, reads_at_hint, strict=True):
        assert store.reads.index(cid) >= hinted_at
