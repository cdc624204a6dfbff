"""Regression: a node accepted only ``max_connections`` inbound connections in its life.

Found by the hostile-input campaign (after 256 short-lived hostile peers the
daemon refused everyone): py-libp2p 0.8.1 takes an inbound slot per
connection and gives it back only when the node stops. The host now counts
handshakes in progress plus live connections instead.
"""

from __future__ import annotations

import trio

from tests.support.bitswap import new_host
from tests.support.wait import wait_until_trio


async def _visit(victim, nursery: trio.Nursery) -> None:
    """One peer connects, pings and goes away."""
    peer = new_host()
    scope = trio.CancelScope()

    async def run(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            await peer.run(task_status=task_status)

    await nursery.start(run)
    await peer.connect(victim.addrs()[0])
    assert await peer.ping(victim.peer_id) < 5
    scope.cancel()
    await wait_until_trio(lambda: not victim.is_connected(peer.peer_id), what="the peer to leave")


async def test_peers_keep_connecting_after_max_connections_have_come_and_gone(
        nursery: trio.Nursery) -> None:
    victim = new_host(max_connections=4)
    await nursery.start(victim.run)
    for _ in range(12):  # three times the limit, one after the other
        await _visit(victim, nursery)
    assert victim.statistics().connections_opened >= 12


async def test_the_limit_still_holds_for_peers_connected_at_once(nursery: trio.Nursery) -> None:
    victim = new_host(max_connections=4)
    await nursery.start(victim.run)
    peers = [new_host() for _ in range(6)]
    connected = 0
    for p in peers:
        await nursery.start(p.run)
        try:
            await p.connect(victim.addrs()[0])
            connected += 1
        except Exception:  # noqa: BLE001, S110 - refused at the limit
            pass
    await wait_until_trio(lambda: len(victim.connected_peers()) <= 4, what="the limit")
    assert connected >= 4
    assert len(victim.connected_peers()) <= 4
