"""Bitswap interop with a real Helia 7 node (npm, pinned in tests/interop/package-lock.json).

Needs Node.js >= 20 and ``npm ci --prefix tests/interop``; skipped with the
reason otherwise.
"""

from __future__ import annotations

import hashlib

import pytest
import trio
from pinfold.blockstore.cid import RAW, cid_key, make_cid, parse_cid
from pinfold.blockstore.unixfs import ImportParams, import_bytes
from pinfold.daemon.p2p.bitswap import BlockUnavailable
from pinfold.blockstore.dag import links

from tests.support.bitswap import file_bytes, random_bytes, raw_blocks, running_nodes
from tests.support.helia import HeliaError, helia_peer, skip_reason
from tests.support.wait import wait_until_trio

MiB = 1024 * 1024

_reason = skip_reason()
pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(_reason is not None, reason=_reason or ""),
]

# 5 MiB in 256 KiB raw leaves, 4 links a node: 20 leaves under three levels of dag-pb
PARAMS = ImportParams(chunk_size=256 * 1024, max_links=4)


async def test_helia_fetches_a_multi_level_file_and_a_2_mib_block_from_pinfold(tmp_path):
    data = random_bytes(5 * MiB + 1234, seed=11)
    blocks, root, _ = import_bytes(data, PARAMS)
    assert max(len(links(c, b)) for c, b in blocks if c.codec.code != RAW) == 4
    (big_cid, big), = raw_blocks(1, 2 * MiB, seed=12)
    async with running_nodes(1) as (node,), helia_peer() as helia:
        node.store.add(blocks + [(big_cid, big)])
        await helia.request("dial", addr=node.addr)
        await wait_until_trio(lambda: node.bitswap.statistics().peers == 1, what="Helia seen by bitswap")

        got = await helia.request("cat", cid=str(root), timeout_ms=30000)
        assert got == {**got, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}

        blk = await helia.request("block_get", cid=str(big_cid), timeout_ms=30000)
        assert (blk["size"], blk["sha256"]) == (2 * MiB, hashlib.sha256(big).hexdigest())

        # Helia's importer makes the same root CID from the same bytes and parameters
        path = tmp_path / "file.bin"
        path.write_bytes(data)
        added = await helia.request("add", path=str(path), chunk_size=PARAMS.chunk_size,
                                    max_children=PARAMS.max_links, raw_leaves=True, cid_version=1)
        assert added["cid"] == str(root)

        stats = node.bitswap.statistics()
        assert stats.blocks_sent >= len(blocks) + 1
        assert stats.rejected == {} and stats.peers_cut_off == 0


async def test_pinfold_dials_helia_and_fetches_a_helia_added_file(tmp_path):
    data = random_bytes(4 * MiB + 99, seed=13)
    path = tmp_path / "helia.bin"
    path.write_bytes(data)
    async with running_nodes(1) as (node,), helia_peer() as helia:
        added = await helia.request("add", path=str(path), chunk_size=PARAMS.chunk_size,
                                    max_children=PARAMS.max_links)
        root = parse_cid(added["cid"])
        peer = await node.host.connect(helia.addrs[0])
        assert str(peer) == helia.peer_id
        with trio.fail_after(60):
            stats = await node.bitswap.fetch_dag(root, timeout_s=20)
        assert stats.blocks_by_peer == {helia.peer_id: stats.fetched_blocks}
        assert stats.fetched_blocks == len(import_bytes(data, PARAMS)[0])
        assert file_bytes(node.store, root) == data


async def test_a_cid_nobody_has_gets_dont_have_from_helia_and_fails_within_a_second():
    missing = make_cid(b"neither pinfold nor helia has this", RAW)
    async with running_nodes(1) as (node,), helia_peer() as helia:
        await node.host.connect(helia.addrs[0])
        await wait_until_trio(lambda: node.bitswap.statistics().peers == 1, what="Helia seen by bitswap")
        start = trio.current_time()
        with pytest.raises(BlockUnavailable) as info:
            await node.bitswap.get_block(missing, timeout_s=30.0)
        assert trio.current_time() - start < 1.0
        assert str(info.value) == f"no peer has block {missing}: 1 peer asked: 1 DONT_HAVE"
        assert info.value.dont_have == (helia.peer_id,)
        # and the other way: Helia asking us gets DONT_HAVE and gives up
        with pytest.raises(HeliaError, match="(?i)abort|timeout|failed to load block"):
            await helia.request("block_get", cid=str(missing), timeout_ms=1500)
        assert not node.store.has(missing) and cid_key(missing) not in node.store.blocks
