"""Only the allocated holders of a new pin fetch it, even right after the cluster formed.

Three real daemons with the default heartbeat (5 s): ``b`` and ``c`` bootstrap
from ``a``, and ``add --replicas 2`` runs on ``a`` as soon as ``a`` sees three
alive members, as the README's cluster walkthrough does. At that moment ``c``
may not yet have heard every member's heartbeat; it must not rank itself
among the holders from that partial view, fetch the whole DAG and release it.
"""

from __future__ import annotations

import random
from pathlib import Path

from pinfold.blockstore.unixfs import FileImporter, ImportParams
from pinfold.replication.allocation import Candidate, RendezvousAllocator
from pinfold.replication.types import pin_key

from tests.support.cluster import configure, local_state, metric, peer_id
from tests.support.daemon import DaemonProcess, run_cli, stop_all
from tests.support.wait import wait_until

SIZE = 12_000_000  # 12 blocks of 1 MiB
RECEIVED = "pinfold_bitswap_received_bytes_total"


def _content_not_allocated_to(ids: list[str], outsider: str) -> tuple[bytes, str]:
    """Random bytes whose root CID ranks ``outsider`` last among equal-capacity ``ids``."""
    rng = random.Random(7)
    allocator = RendezvousAllocator()
    while True:
        data = rng.randbytes(SIZE)
        importer = FileImporter(ImportParams())
        importer.feed(data)
        root = importer.finish()[1]
        ranking = allocator.rank(pin_key(root), [Candidate(peer_id=p, weight=float(1 << 40))
                                                 for p in ids])
        if ranking[-1].peer_id == outsider:
            return data, str(root)


def test_add_replicas_right_after_joining_fetches_only_on_allocated_holders(
        tmp_path: Path) -> None:
    ds = [DaemonProcess(tmp_path, name) for name in ("a", "b", "c")]
    for d in ds:
        d.init()
    ids = [peer_id(d) for d in ds]
    data, cid = _content_not_allocated_to(ids, ids[2])
    timers = {"heartbeat_interval_s": 5.0}
    a, b, c = ds
    try:
        configure(a, cluster="alloc", trusted=[], bootstrap=[], replication=timers)
        a.start()
        with a.client() as cl:
            seed = cl.id()["addresses"][0]
        for d in (b, c):
            configure(d, cluster="alloc", trusted=[], bootstrap=[seed], replication=timers)
            d.start(wait=False)
        for d in (b, c):
            d.wait_ready()

        def a_sees_three() -> bool:
            with a.client() as cl:
                return sum(p["state"] == "alive" for p in cl.cluster_peers()) == 3

        wait_until(a_sees_three, timeout_s=90, what="a to see 3 alive members")
        f = tmp_path / "blob"
        f.write_bytes(data)
        out = run_cli(a.home, "add", "--replicas", "2", str(f))
        assert out.stdout.decode().strip() == cid
        wait_until(lambda: local_state(b, cid) == "pinned", timeout_s=120,
                   what="b, an allocated holder, to pin the content")
        # a (the origin) and b hold it; c must never have fetched it. Give c's
        # view time to settle (two heartbeat periods) before reading its counter.
        wait_until(lambda: all(local_state(d, cid) != "absent" for d in ds), timeout_s=60,
                   what="every node to know the pin")
        with c.client() as cl:
            heard = lambda: sum(p["state"] == "alive" for p in cl.cluster_peers()) == 3  # noqa: E731
            wait_until(heard, timeout_s=60, what="c to hear every member")
        assert local_state(a, cid) == "pinned"
        assert local_state(c, cid) in ("remote",), local_state(c, cid)
        assert metric(c, RECEIVED) < 1 << 20, metric(c, RECEIVED)
        assert metric(b, RECEIVED) >= SIZE
    finally:
        stop_all(ds)
