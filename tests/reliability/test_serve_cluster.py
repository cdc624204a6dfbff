"""Security campaign (issue 7): ``bitswap.serve = "cluster"`` with real daemons.

Two daemons form a cluster without ``cluster.trusted_peers`` (so membership is
"known to the cluster": a signed heartbeat accepted) and serve only its
members. A third party -- a bare libp2p host in this process with pinfold's own
Bitswap client, connected to both daemons -- wants every block of a file they
hold: it gets no block and no answer (its fetch fails with ``FetchTimeout``),
the daemons keep none of its wants, and their ``pinfold_bitswap_refused_wants``
counters grow. The cluster member fetches the same file from the other member.
Then one daemon is switched to ``serve = "all"`` by SIGHUP (the key is live) and
the same outsider fetches the whole file from it, so the setting alone made the
difference.
"""

from __future__ import annotations

import random
import signal
from collections.abc import Iterator
from typing import Any

import pytest
import trio
from pinfold.blockstore.unixfs import ImportParams, import_bytes
from pinfold.config import loader
from pinfold.daemon.p2p.bitswap import Bitswap, FetchTimeout

from tests.support.bitswap import DictStore, new_host
from tests.support.cluster import HEARTBEAT_S
from tests.support.daemon import DaemonProcess, metric, stop_all
from tests.support.campaign import MiB, configured, record
from tests.support.wait import wait_until

CLUSTER = {"name": "private"}
REPLICATION = {"heartbeat_interval_s": HEARTBEAT_S}
FILE_BYTES = 3 * MiB + 12345  # four 1 MiB leaves and a root


def _members(d: DaemonProcess) -> set[str]:
    with d.client() as c:
        return {p["peer_id"] for p in c.cluster_peers()}


@pytest.fixture(scope="module")
def private_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[DaemonProcess]]:
    root = tmp_path_factory.mktemp("serve")
    a = configured(DaemonProcess(root, "a"), cluster=CLUSTER, bitswap={"serve": "cluster"},
                   replication=REPLICATION)
    a.start()
    with a.client() as c:
        seed_addr = c.id()["addresses"][0]
    b = configured(DaemonProcess(root, "b"), cluster=CLUSTER, bitswap={"serve": "cluster"},
                   replication=REPLICATION, node={"bootstrap": [seed_addr]})
    try:
        b.start()
        ids = []
        for d in (a, b):
            with d.client() as c:
                ids.append(c.id()["peer_id"])
        # Members are the peers whose heartbeat the cluster accepted: wait until each
        # node knows the other (no trusted_peers in this cluster).
        wait_until(lambda: _members(a) >= set(ids) and _members(b) >= set(ids), timeout_s=60,
                 what="both daemons to know each other as cluster members")
        yield [a, b]
    finally:
        stop_all((a, b))


class Outsider:
    """A bare libp2p host with pinfold's Bitswap and a dict store, in this process."""

    def __init__(self) -> None:
        self.host = new_host()
        self.store = DictStore()
        self.bitswap = Bitswap(self.host, self.store, self.store.put_many)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as n:
            await n.start(self.host.run)
            await n.start(self.bitswap.run)
            task_status.started()


async def _poll(predicate: Any, *, timeout_s: float, what: str) -> Any:
    """Await until ``predicate()`` (run in a thread: it talks to daemons) is truthy."""
    with trio.move_on_after(timeout_s):
        while not (value := await trio.to_thread.run_sync(predicate)):
            await trio.sleep(0.05)
        return value
    raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")


def _total(daemons: list[DaemonProcess], name: str, **labels: str) -> int:
    return int(sum(metric(d, name, **labels) for d in daemons))


async def test_only_cluster_members_fetch_and_outsiders_get_nothing(
        private_cluster: list[DaemonProcess], nursery: trio.Nursery) -> None:
    a, b = private_cluster
    data = random.Random(7).randbytes(FILE_BYTES)
    blocks, root, _ = import_bytes(data, ImportParams())
    cids = [c for c, _ in blocks]
    with a.client() as c:
        # stored on a only, not pinned (no replication)
        assert c.add(data, pin=False) == str(root)

    # The member b fetches the file from a.
    t0 = trio.current_time()
    with b.client() as c:
        got = await trio.to_thread.run_sync(lambda: b"".join(c.cat(str(root))))
    member_fetch_s = trio.current_time() - t0
    assert got == data

    # The outsider wants every block from both holders.
    outsider = Outsider()
    await nursery.start(outsider.run)
    for d in (a, b):
        with d.client() as c:
            await outsider.host.connect(c.id()["addresses"][0])
    sent_before = _total([a, b], "pinfold_bitswap_blocks_sent_total")
    refused_before = _total([a, b], "pinfold_bitswap_refused_wants_total")
    failed = trio.Event()
    t0 = trio.current_time()

    async def fetch_refused() -> None:
        with pytest.raises(FetchTimeout):
            async for _ in outsider.bitswap.fetch_blocks(cids, timeout_s=4.0):
                pass
        failed.set()

    nursery.start_soon(fetch_refused)
    # Every CID was wanted from each daemon, and each refused it.
    for d in (a, b):
        await _poll(lambda d=d: metric(d, "pinfold_bitswap_refused_wants_total") >= len(cids),
                    timeout_s=20, what=f"daemon {d.name} to refuse the outsider's wants")
    held = _total([a, b], "pinfold_bitswap_wantlist_entries", side="peers")
    assert held == 0  # none of the outsider's wants is kept
    with trio.fail_after(30):
        await failed.wait()
    outsider_wait_s = trio.current_time() - t0
    refused = _total([a, b], "pinfold_bitswap_refused_wants_total") - refused_before
    sent = _total([a, b], "pinfold_bitswap_blocks_sent_total") - sent_before
    stored = len(outsider.store.blocks)
    assert sent == 0 and stored == 0
    assert outsider.bitswap.statistics().blocks_received == 0
    with b.client() as c:
        st = c.cluster_status()
    assert st["serve"] == "cluster" and st["refused_wants"] >= len(cids)

    # SIGHUP: a serves everyone from now on (a live key); b still serves only members.
    path = a.home / "config.toml"
    path.write_text(loader.render(loader.replace(loader.load(path), bitswap={"serve": "all"})))
    assert a.proc is not None
    a.proc.send_signal(signal.SIGHUP)

    def serves_all() -> bool:
        with a.client() as c:
            return c.cluster_status()["serve"] == "all"

    await _poll(serves_all, timeout_s=20, what="the reload to apply bitswap.serve = all")
    b_sent = _total([b], "pinfold_bitswap_blocks_sent_total")
    t0 = trio.current_time()
    with trio.fail_after(60):
        async for _ in outsider.bitswap.fetch_blocks(cids, timeout_s=20):
            pass
    outsider_fetch_s = trio.current_time() - t0
    assert all(outsider.store.has(c) for c in cids)
    assert _total([b], "pinfold_bitswap_blocks_sent_total") == b_sent  # all from a

    record("security", "serve = cluster", refused=refused, blocks_sent=sent,
           blocks_stored=stored, wants_held_max=held,
           member_fetch_s=round(member_fetch_s, 2), outsider_wait_s=round(outsider_wait_s, 2),
           outsider_fetch_after_serve_all_s=round(outsider_fetch_s, 2), file_bytes=FILE_BYTES,
           blocks=len(cids))
