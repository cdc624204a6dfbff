"""Fetching from many holders over real libp2p hosts on 127.0.0.1 (one process).

A slow holder is a real host whose Bitswap server waits ``reply_delay_s``
before each reply (the ``ExchangeConfig`` test hook); a holder that dies is a
host whose service is cancelled mid-fetch, closing its connections.
"""

from __future__ import annotations

import contextlib

import pytest
import trio
from pinfold.blockstore.cid import cid_key
from pinfold.blockstore.unixfs import ImportParams, import_bytes
from pinfold.daemon.p2p.bitswap import ClientConfig, ExchangeConfig

from tests.support.bitswap import Peer, file_bytes, random_bytes
from tests.support.wait import wait_until_trio

MiB = 1024 * 1024


@contextlib.asynccontextmanager
async def started(nursery: trio.Nursery, *peers: Peer):
    for p in peers:
        await nursery.start(p.run)
    try:
        yield peers
    finally:
        for p in peers:
            p.scope.cancel()


# Which holder serves more depends on measured rates: under a parallel suite's
# load the in-process hosts' rates are the event loop's, not the holders'.
@pytest.mark.serial
async def test_a_fetch_from_three_holders_survives_one_dying_and_one_being_slow():
    # long enough that admission's rate windows (0.25 s, 8 blocks) settle which
    # holders serve; with 40 blocks the outcome was the first few windows' luck
    data = random_bytes(160 * MiB, seed=14)
    blocks, root, _ = import_bytes(data, ImportParams(chunk_size=MiB, max_links=64))
    fast, dies = Peer(), Peer()
    slow = Peer(ExchangeConfig(reply_delay_s=0.1))  # ~10 MB/s
    # every host runs in this one process, on one loaded machine: holders are
    # probed whatever the load (the headroom gate has its own tests)
    fetcher = Peer(ExchangeConfig(client=ClientConfig(holder_min_idle_cores=0)))
    async with trio.open_nursery() as nursery, started(nursery, fast, dies, slow, fetcher):
        for h in (fast, dies, slow):
            h.store.add(blocks)
            await fetcher.host.connect(h.addr)
        got = 0
        half = trio.Event()

        def on_block(cid, size):
            nonlocal got
            got += 1
            if got == 10:
                half.set()

        async def kill_one():
            await half.wait()
            dies.scope.cancel()  # its host and connections go

        nursery.start_soon(kill_one)
        with trio.fail_after(120):
            stats = await fetcher.bitswap.fetch_dag(root, timeout_s=30, on_block=on_block)
        await wait_until_trio(lambda: not fetcher.host.is_connected(dies.peer_id), timeout_s=10,
                              what="the dead holder's connection to close")
    assert stats.fetched_blocks == len(blocks)
    assert file_bytes(fetcher.store, root) == data
    by_peer = stats.blocks_by_peer
    assert sum(by_peer.values()) == len(blocks)
    assert len([p for p, n in by_peer.items() if n]) >= 2, by_peer  # more than one holder
    assert by_peer.get(str(fast.peer_id), 0) > by_peer.get(str(slow.peer_id), 0), by_peer
    bs = fetcher.bitswap.statistics()
    # no block fetched twice, except ones asked of a second peer because late
    assert bs.duplicate_blocks <= bs.late_reasks, bs
    assert bs.blocks_received == len(blocks)


async def test_a_holder_connecting_mid_fetch_joins_it():
    data = random_bytes(24 * MiB, seed=15)
    blocks, root, _ = import_bytes(data, ImportParams(chunk_size=MiB, max_links=64))
    first = Peer(ExchangeConfig(reply_delay_s=0.1))
    late = Peer()
    fetcher = Peer()
    async with trio.open_nursery() as nursery, started(nursery, first, late, fetcher):
        for h in (first, late):
            h.store.add(blocks)
        await fetcher.host.connect(first.addr)
        got = 0

        def on_block(cid, size):
            nonlocal got
            got += 1
            if got == 3:
                nursery.start_soon(fetcher.host.connect, late.addr)

        with trio.fail_after(120):
            stats = await fetcher.bitswap.fetch_dag(root, timeout_s=30, on_block=on_block)
    assert stats.blocks_by_peer.get(str(late.peer_id), 0) > 0, stats.blocks_by_peer
    assert fetcher.bitswap.statistics().wantlist_rebroadcasts["connect"] >= 1


async def test_the_wantlist_is_rebroadcast_on_a_timer():
    """A holder that answered DONT_HAVE and got the block later without telling
    anyone is asked again: the fetch ends without waiting for its deadline."""
    ((cid, block),), _root, _ = import_bytes(b"x" * 1000, ImportParams())
    holder = Peer()
    fetcher = Peer(ExchangeConfig(rebroadcast_interval_s=0.5))
    result: list[bytes] = []
    async with trio.open_nursery() as nursery, started(nursery, holder, fetcher):
        await fetcher.host.connect(holder.addr)

        async def fetch():
            # limited to the holder, as a cluster pin is: DONT_HAVE does not end it
            result.append(await fetcher.bitswap.get_block(cid, timeout_s=60,
                                                          peers=[holder.peer_id]))

        nursery.start_soon(fetch)
        await wait_until_trio(lambda: holder.bitswap.statistics().messages_received >= 1,
                              timeout_s=10, what="the want to reach the holder")
        holder.store.add([(cid, block)])  # no blocks_added: nobody is told
        await wait_until_trio(lambda: result, timeout_s=20, what="the block")
    assert result == [block] and cid_key(cid) in fetcher.store.blocks
    assert fetcher.bitswap.statistics().wantlist_rebroadcasts["timer"] >= 1
