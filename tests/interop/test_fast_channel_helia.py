"""The fast secure channel (pinfold.daemon.p2p.transport) with a real Helia 7 node
(js-libp2p's Noise and Yamux). Needs Node.js >= 20 and ``npm ci --prefix
tests/interop``; skipped with the reason otherwise."""

from __future__ import annotations

import hashlib

import pytest
import trio
from pinfold.blockstore.cid import parse_cid
from pinfold.blockstore.unixfs import ImportParams, import_bytes
from pinfold.daemon.p2p.transport import FastSecureSession, FastYamux

from tests.support.bitswap import file_bytes, random_bytes, running_nodes
from tests.support.helia import helia_peer, skip_reason
from tests.support.wait import wait_until_trio

MiB = 1024 * 1024

_reason = skip_reason()
pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(_reason is not None, reason=_reason or ""),
]

PARAMS = ImportParams(chunk_size=MiB, max_links=1024)


def _muxed(node, peer_id: str):
    (conn,) = [c for pid, conns in node.host.libp2p.get_network().get_connections_map().items()
               if str(pid) == peer_id for c in conns]
    return conn.muxed_conn


@pytest.mark.parametrize("helia_dials", [True, False], ids=["helia-dials", "pinfold-dials"])
async def test_helia_and_a_fast_channel_node_move_16_mib_files_both_ways(tmp_path, helia_dials):
    ours = random_bytes(16 * MiB + 4321, seed=21)
    theirs = random_bytes(16 * MiB + 99, seed=22)
    blocks, root, _ = import_bytes(ours, PARAMS)
    path = tmp_path / "helia.bin"
    path.write_bytes(theirs)
    async with running_nodes(1) as (node,), helia_peer() as helia:
        node.store.add(blocks)
        added = await helia.request("add", path=str(path), chunk_size=PARAMS.chunk_size)
        helia_root = parse_cid(added["cid"])

        # our fast channel as responder or initiator to js-libp2p's Noise + Yamux
        if helia_dials:
            await helia.request("dial", addr=node.addr)
        else:
            await node.host.connect(helia.addrs[0])
        await wait_until_trio(lambda: node.bitswap.statistics().peers == 1, what="Helia seen by bitswap")
        muxed = _muxed(node, helia.peer_id)
        assert isinstance(muxed, FastYamux) and isinstance(muxed.secured_conn, FastSecureSession)

        # Helia fetches from us (our 65507-byte frames into js-yamux) ...
        got = await helia.request("cat", cid=str(root), timeout_ms=120000, timeout_s=150)
        assert (got["size"], got["sha256"]) == (len(ours), hashlib.sha256(ours).hexdigest())
        # ... and we fetch from Helia (js-yamux frames through our batch reader)
        with trio.fail_after(150):
            await node.bitswap.fetch_dag(helia_root, timeout_s=60)
        assert file_bytes(node.store, helia_root) == theirs
        assert await node.host.ping(helia.peer_id) < 5
