"""The daemon's resolver over blocks in memory: reference parsing, ``stat`` over a
DAG whose blocks are partly missing (it never fetches below the path), ``ls -r``,
and the client's name for what a reference names."""

from __future__ import annotations

import random

import pytest

from pinfold.blockstore.cid import CID
from pinfold.blockstore.errors import BlockNotFound, InvalidCID
from pinfold.blockstore.unixfs import DirectoryBuilder, ImportParams, import_bytes
from pinfold.blockstore.unixfs.paths import InvalidPath, PathNotFound
from pinfold.client_paths import ref_basename
from pinfold.daemon.resolver import Resolver, to_content_path

PARAMS = ImportParams(chunk_size=1024, max_links=4)  # a file of 10 KiB: 3 levels


def _dag() -> tuple[dict[bytes, bytes], CID, CID, CID]:
    """``{big.bin (10 KiB, 10 leaves, interior nodes), sub/small.txt}``: blocks, root,
    big's CID, the CID of one interior node of big."""
    data = random.Random(3).randbytes(10 * 1024)
    blocks: dict[bytes, bytes] = {}
    fblocks, big = import_bytes(data, PARAMS)[:2]
    sblocks, small = import_bytes(b"small\n", PARAMS)[:2]
    for cid, block in [*fblocks, *sblocks]:
        blocks[bytes(cid)] = block
    builder = DirectoryBuilder(PARAMS)
    builder.add_file("big.bin", big, len(data), sum(len(b) for _, b in fblocks))
    builder.add_file("sub/small.txt", small, 6, 6)
    dblocks, root = builder.finish()
    for cid, block in dblocks:
        blocks[bytes(cid)] = block
    interior = next(c for c, _ in fblocks if c.codec.name == "dag-pb" and c != big)
    return blocks, root, big, interior


def _resolver(blocks: dict[bytes, bytes]) -> Resolver:
    async def get_block(cid: CID) -> bytes:
        try:
            return blocks[bytes(cid)]
        except KeyError:
            raise BlockNotFound(cid) from None

    return Resolver(get_block, lambda c: bytes(c) in blocks, lambda c: len(blocks[bytes(c)]))


def test_to_content_path_forms_and_errors() -> None:
    blocks, root, _, _ = _dag()
    for form in (f"{root}/sub/small.txt", f"/ipfs/{root}/sub/small.txt",
                 f"ipfs://{root}/sub//small.txt/"):
        p = to_content_path(form)
        assert p.root == root and p.segments == ("sub", "small.txt")
    with pytest.raises(InvalidCID, match="'nope' is not a CID"):
        to_content_path("nope/a")
    with pytest.raises(InvalidPath, match="segment '..'"):
        to_content_path(f"{root}/../a")


async def test_stat_of_a_partly_missing_dag_counts_only_what_it_can_see() -> None:
    blocks, root, big, interior = _dag()
    r = _resolver(blocks)
    whole = await r.stat(f"{root}/big.bin")
    assert whole["cid"] == str(big) and whole["size"] == 10 * 1024
    assert whole["blocks_exact"] and whole["complete"]
    assert whole["local_blocks"] == whole["blocks"] > 10
    del blocks[bytes(interior)]
    part = await r.stat(f"{root}/big.bin")
    assert not part["blocks_exact"] and not part["complete"]
    assert part["blocks"] < whole["blocks"] and part["local_blocks"] == part["blocks"] - 1


async def test_ls_recursive_and_missing_entry() -> None:
    blocks, root, _, _ = _dag()
    r = _resolver(blocks)
    got = [(e["path"], e["type"]) async for e in r.ls(str(root), recursive=True)]
    assert got == [("big.bin", "file"), ("sub", "dir"), ("sub/small.txt", "file")]
    with pytest.raises(PathNotFound, match=f"no entry 'x' in directory {root}/sub"):
        await r.resolve_ref(f"{root}/sub/x")


def test_ref_basename_names_the_last_segment_or_the_cid() -> None:
    cid = "bafkreieyzs2ddqas5p7joyua7pkfv2sm5r2ate2yndgoz44vinypszzsue"
    assert ref_basename(cid) == cid
    assert ref_basename(f"{cid}/a/b.txt") == "b.txt"
    assert ref_basename(f"/ipfs/{cid}/a/") == "a"
    assert ref_basename(f"pinfold://{cid}") == cid
