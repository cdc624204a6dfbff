"""Regression: one peer could take every stream slot of a node.

Found by the security campaign: py-libp2p limits streams only globally (10000
in its default resource manager) and Yamux limits only the streams a side
*opens*; a hostile peer that ignores its own side's limit could open 10000
streams to a pinfold node, after which no other peer could open one (their
identify timed out). The host now resets inbound streams beyond
``max_inbound_streams_per_peer`` (128) per peer.
"""

from __future__ import annotations

import contextlib

import trio
from pinfold.daemon.p2p.host import HostConfig

from tests.support.bitswap import new_host
from tests.support.wait import wait_until_trio

PROTO = "/pinfold-test/hold/1"


async def test_streams_over_the_per_peer_limit_are_reset_and_others_still_connect(
        nursery: trio.Nursery) -> None:
    victim, hostile, good = new_host(), new_host(), new_host()
    held: list[object] = []

    async def hold(stream: object) -> None:
        held.append(stream)
        with contextlib.suppress(Exception):
            await stream.read(1)  # until the peer resets or closes it

    for h in (victim, hostile, good):
        await nursery.start(h.run)
    victim.set_stream_handler(PROTO, hold)
    await hostile.connect(victim.addrs()[0])
    for conn in hostile.libp2p.get_network().get_connections(victim.peer_id):
        conn.muxed_conn.stream_backlog_semaphore = trio.Semaphore(1 << 20)  # hostile: no limit
    refused = 0
    for _ in range(300):
        try:
            with trio.fail_after(2):
                await hostile.new_stream(victim.peer_id, [PROTO])
        except Exception:  # noqa: BLE001 - reset by the victim
            refused += 1
            if refused >= 10:
                break
    assert refused > 0
    assert len(held) <= HostConfig().max_inbound_streams_per_peer == 128
    await wait_until_trio(lambda: victim.statistics().streams_refused >= 1, what="a refused stream")
    # another peer is served as usual
    await good.connect(victim.addrs()[0])
    assert await good.ping(victim.peer_id) < 5
