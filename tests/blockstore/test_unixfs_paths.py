"""Content paths: parsing, and resolution through basic and HAMT-sharded
directories (the sharded one written by the real js importer,
tests/vectors/hamt_js.json)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from pinfold.blockstore.cid import CID, parse_cid
from pinfold.blockstore.errors import BlockNotFound
from pinfold.blockstore.unixfs import DirectoryBuilder, ImportParams, cat, import_bytes
from pinfold.blockstore.unixfs.paths import (
    InvalidPath,
    PathNotFound,
    list_dir,
    parse_path,
    parse_url_path,
    resolve,
    resolve_listing,
)

VECTOR = Path(__file__).parent.parent / "vectors" / "hamt_js.json"
CID0 = "bafkreic4vr2zjhksxxlcpr53a5yofbep7limcivblh72iy7u5qff6u6ify"


def _folder(files: list[tuple[str, bytes]], params: ImportParams | None = None
            ) -> tuple[dict[bytes, bytes], CID]:
    """Import ``(path, bytes)`` files into a folder: ``(blocks by multihash, root CID)``."""
    blocks: dict[bytes, bytes] = {}
    b = DirectoryBuilder()
    for path, data in files:
        blks, root, tsize = import_bytes(data, params)
        for c, d in blks:
            blocks[bytes(c.digest)] = d
        b.add_file(path, root, len(data), tsize)
    dir_blocks, top = b.finish()
    for c, d in dir_blocks:
        blocks[bytes(c.digest)] = d
    return blocks, top


def _store(blocks: dict[bytes, bytes], reads: list[str] | None = None):
    """A ``GetBlock`` over ``blocks``; each CID asked for is appended to ``reads``."""
    async def get_block(cid):
        if reads is not None:
            reads.append(str(cid))
        try:
            return blocks[bytes(cid.digest)]
        except KeyError:
            raise BlockNotFound(cid) from None
    return get_block


def test_parse_path_forms_give_the_same_path():
    want = parse_path(f"{CID0}/a/b.txt")
    assert want.segments == ("a", "b.txt")
    for form in (f"/ipfs/{CID0}/a/b.txt", f"ipfs://{CID0}/a/b.txt", f"{CID0}//a/b.txt/"):
        assert parse_path(form) == want
    assert parse_path(CID0).segments == ()
    assert parse_url_path(f"/ipfs/{CID0}/a%20b/c").segments == ("a b", "c")


def test_parse_path_keeps_spaces_at_the_ends_of_names():
    assert parse_path(f"{CID0}/ lead space ").segments == (" lead space ",)
    assert parse_path(f"  {CID0}/a/b ").segments == ("a", "b ")
    assert parse_path(f"{CID0} \n").segments == ()  # a bare CID pasted with a newline


@pytest.mark.parametrize("bad, words", [
    ("", "empty"),
    ("notacid/x", "'notacid' is not a CID"),
    (f"{CID0}/../etc", "'..'"),
    ("/ipns/x", "only /ipfs/"),
])
def test_parse_path_names_the_problem(bad, words):
    with pytest.raises(InvalidPath) as info:
        parse_path(bad)
    assert words in str(info.value)


def test_url_path_with_an_encoded_slash_is_refused():
    with pytest.raises(InvalidPath, match="encoded '/'"):
        parse_url_path(f"/ipfs/{CID0}/a%2Fb")


async def test_resolve_in_a_basic_directory_and_errors_name_the_segment():
    blocks, top = _folder([("config.json", b"{}"), ("sub/w.bin", b"x" * 1000)])
    gb = _store(blocks)
    r = await resolve(gb, f"{top}/sub/w.bin")
    assert (r.kind, r.size, len(r.path_blocks)) == ("file", 1000, 3)
    assert b"".join([x async for x in cat(gb, r.cid)]) == b"x" * 1000
    assert (await resolve(gb, f"{top}/sub")).kind == "dir"
    with pytest.raises(PathNotFound, match="no entry 'nope' in directory .*/sub"):
        await resolve(gb, f"{top}/sub/nope")
    with pytest.raises(PathNotFound, match="config.json is a file, not a directory"):
        await resolve(gb, f"{top}/config.json/x")
    names = [(e.name, e.kind, e.size) for e in await list_dir(gb, top)]
    assert names == [("config.json", "file", 2), ("sub", "dir", None)]


async def test_resolve_and_list_a_hamt_sharded_directory_written_by_js():
    vec = json.loads(VECTOR.read_text())
    blocks = {bytes(parse_cid(k).digest): base64.b64decode(v) for k, v in vec["blocks"].items()}
    gb = _store(blocks)
    root = vec["root"]
    for i in (0, 1, 299, 599):
        r = await resolve(gb, f"{root}/file-{i}.txt")
        assert b"".join([x async for x in cat(gb, r.cid)]) == f"hello {i}\n".encode()
        assert r.path_blocks[0] == parse_cid(root) and r.path_blocks[-1] == r.cid
    with pytest.raises(PathNotFound, match="no entry 'file-600.txt'"):
        await resolve(gb, f"{root}/file-600.txt")
    entries = await list_dir(gb, parse_cid(root))
    assert sorted(e.name for e in entries) == sorted(f"file-{i}.txt" for i in range(600))


def _read_local(blocks: dict[bytes, bytes], calls: list[int]):
    """A ``ReadLocal`` over ``blocks`` that hands ``fn`` memoryviews (as LMDB does) and
    records how many CIDs each call asked for."""
    def read_local(cids, fn):
        calls.append(len(cids))
        out = []
        for cid in cids:
            data = blocks.get(bytes(cid.digest))
            out.append(None if data is None else fn(cid, memoryview(data)))
        return out
    return read_local


async def test_list_dir_of_raw_children_reads_no_child_block():
    """A raw child is a file of its link's Tsize (Kubo's ls does the same): a
    listing reads no child block, locally or from peers."""
    vec = json.loads(VECTOR.read_text())
    blocks = {bytes(parse_cid(k).digest): base64.b64decode(v) for k, v in vec["blocks"].items()}
    root = parse_cid(vec["root"])
    fetched: list[str] = []
    calls: list[int] = []
    got = await list_dir(_store(blocks, fetched), root, read_local=_read_local(blocks, calls))
    assert len(got) == 600 and all(e.cid.codec.name == "raw" for e in got)
    assert all(e.kind == "file" and e.size == len(blocks[bytes(e.cid.digest)]) for e in got)
    assert calls == []
    assert not {str(e.cid) for e in got} & set(fetched)


async def test_list_dir_reads_local_entries_in_batches_and_lists_the_same():
    # dag-pb children (no raw leaves): each entry's root block says its kind and size
    blocks, root = _folder([(f"f{i}.txt", b"%d" % i) for i in range(600)],
                           ImportParams(raw_leaves=False))
    fetched: list[str] = []
    plain = _store(blocks)
    get_block = _store(blocks, fetched)
    want = await list_dir(plain, root)
    # Half the entries' blocks are "local": the rest come through get_block.
    local = dict(blocks)
    for e in want[::2]:
        del local[bytes(e.cid.digest)]
    calls: list[int] = []
    fetched.clear()
    got = await list_dir(get_block, root, read_local=_read_local(local, calls))
    assert got == want and len(got) == 600
    assert calls == [600]  # one read for every entry (under LOCAL_BATCH)
    entry_cids = {str(e.cid) for e in want}
    assert {f for f in fetched if f in entry_cids} == {str(e.cid) for e in want[::2]}


async def test_resolve_listing_decodes_the_directory_once_and_matches_resolve():
    blocks, top = _folder([("a.txt", b"a"), ("d/b.txt", b"bb")])
    reads: list[str] = []
    plain = _store(blocks)
    get_block = _store(blocks, reads)

    r, entries = await resolve_listing(get_block, f"{top}/d", read_local=_read_local(blocks, []))
    assert r == await resolve(plain, f"{top}/d")
    assert entries == await list_dir(plain, r.cid)
    assert reads == [str(top), str(r.cid)]  # each directory block once; entries read locally
    r, entries = await resolve_listing(get_block, f"{top}/a.txt")
    assert (r.kind, r.size, entries) == ("file", 1, None)
