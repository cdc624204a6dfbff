"""The replication manager end to end: real daemons in separate processes on 127.0.0.1.

Five daemons share one cluster (module fixture) with short intervals: heartbeat
0.5 s, peer TTL 1 s (two heartbeats), repair grace 3 s, so a silent peer is dead
4 s after its last heartbeat. They reach each other through node 0 (bootstrap)
and the addresses their heartbeats announce; gossip runs on gossipsub, catch-up
on ``/pinfold/sync/1``. The tests run in file order on the same cluster and
leave it healthy for the next one.

Partitions are made by stopping the link: every node of one side blocks every
node of the other (``peers_block`` RPC: disconnect, then refuse reconnection and
drop their messages), and unblocks to heal.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.cluster import (
    GRACE_S,
    TTL_S,
    Cluster,
    local_state,
    metric,
    peer_id,
    pinned_on,
    replication,
    status,
)
from tests.support.cluster import configure as support_configure
from tests.support.daemon import DaemonProcess, cli_json, stop_all
from tests.support.wait import wait_until

ROOT = Path(__file__).resolve().parents[2]
REPLICATION = replication(rmin=2, rmax=3, p_prior=0.9)


def configure(d: DaemonProcess, *, bootstrap: list[str], trusted: list[str]) -> None:
    support_configure(d, cluster="itest", trusted=trusted, bootstrap=bootstrap,
                      replication=REPLICATION)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("cluster")
    nodes = [DaemonProcess(root, f"n{i}") for i in range(5)]
    for d in nodes:
        d.init()
    ids = [peer_id(d) for d in nodes]
    try:
        configure(nodes[0], bootstrap=[], trusted=ids)
        nodes[0].start()
        with nodes[0].client() as c:
            seed = c.id()["addresses"][0]
        for d in nodes[1:]:
            configure(d, bootstrap=[seed], trusted=ids)
            d.start(wait=False)
        for d in nodes[1:]:
            d.wait_ready()
        cl = Cluster(nodes, ids)

        def all_alive() -> bool:
            for d in nodes:
                with d.client() as c:
                    peers = list(c.cluster_peers())
                if sorted(p["peer_id"] for p in peers if p["state"] == "alive") != sorted(ids):
                    return False
            return True

        wait_until(all_alive, timeout_s=60, what="every node to see 5 alive cluster peers")
        yield cl
    finally:
        # Also when the setup fails: no daemon outlives the module.
        stop_all(nodes)


def add(d: DaemonProcess, size: int, seed: int) -> str:
    with d.client() as c:
        return c.add(random.Random(seed).randbytes(size), pin=False)


def connected_members(d: DaemonProcess) -> list[str]:
    with d.client() as c:
        return [p["peer_id"] for p in c.cluster_peers() if p.get("connected")]


def pin_cids(d: DaemonProcess) -> list[str]:
    with d.client() as c:
        return sorted(p["cid"] for p in c.pins())


def blocks(d: DaemonProcess) -> int:
    with d.client() as c:
        return c.repo_stat()["blocks"]


# ---------------------------------------------------------------------- tests


def test_availability_target_allocates_three_holders(cluster: Cluster) -> None:
    a = cluster.nodes[1]
    cid = add(a, 2 * 1024 * 1024 + 11, seed=7)
    res = cli_json(a.home, "pin", "add", cid, "--availability", "0.999")
    assert res["availability"] == 0.999 and res["rmin"] == 2
    wait_until(lambda: len(pinned_on(cluster, cid)) == 3, timeout_s=30, what="3 holders")
    st = wait_until(lambda: (s := status(cluster.nodes[0], cid)) and s["healthy"] == 3 and s,
                  timeout_s=20, what="status to show 3 healthy holders")
    ps = [h["p"] for h in st["holders"] if h["state"] == "pinned"]
    achieved = 1.0
    for p in ps:
        achieved *= 1.0 - p
    assert st["availability"] == pytest.approx(1.0 - achieved)
    # p_i starts at the prior 0.9 and only rises while peers stay up: 1 - 0.1^3.
    assert st["availability"] >= 0.999 - 1e-9
    assert all(0.899 <= p < 0.91 for p in ps), ps
    assert st["target"] == 0.999
    time_left = time.monotonic() + 3
    while time.monotonic() < time_left:  # stays at 3: the target is met
        assert len(pinned_on(cluster, cid)) == 3
    cli_json(a.home, "pin", "rm", cid)
    wait_until(lambda: not pinned_on(cluster, cid), timeout_s=30, what="holders to release")


def test_replicas_3_kill_repair_restart_settle_unpin(cluster: Cluster) -> None:
    a = cluster.nodes[0]
    for d in cluster.nodes:
        with d.client() as c:
            c.repo_gc()
    before = {d.name: blocks(d) for d in cluster.nodes}
    data_seed = 11
    cid = add(a, 4 * 1024 * 1024 + 3, seed=data_seed)
    out = cli_json(a.home, "pin", "add", cid, "--replicas", "3")
    assert (out["rmin"], out["rmax"]) == (3, 3)
    wait_until(lambda: len(pinned_on(cluster, cid)) == 3, timeout_s=30, what="3 holders")
    holders = pinned_on(cluster, cid)
    end = time.monotonic() + 2
    while time.monotonic() < end:
        assert pinned_on(cluster, cid) == holders, "exactly 3 stay pinned"
    st = status(a, cid)
    assert st["healthy"] == 3 and st["rmin"] == st["rmax"] == 3

    # kill -9 one holder (not the node we query)
    victim = next(d for d in cluster.nodes if d.name in holders and d is not a)
    killed_at = time.monotonic()
    victim.kill9()
    wait_until(lambda: status(a, cid)["healthy"] == 2, timeout_s=10, what="a holder to go")

    def repaired() -> bool:
        s = status(a, cid)
        return s["healthy"] == 3 and victim.name not in pinned_on(cluster, cid)

    wait_until(repaired, timeout_s=40, what="repair back to 3 healthy holders")
    took = time.monotonic() - killed_at
    assert took >= TTL_S + GRACE_S - 0.6, f"repaired after {took:.1f} s, before the grace ran out"
    new_holders = pinned_on(cluster, cid)
    assert len(new_holders) == 3 and len(new_holders - holders) == 1
    # Metrics are snapshots of the last heartbeat (0.5 s).
    wait_until(lambda: metric(a, "pinfold_cluster_peers", {"state": "dead"}) == 1, timeout_s=5)
    wait_until(lambda: sum(metric(d, "pinfold_replication_repairs_total", {"outcome": "completed"})
                         for d in cluster.up()) >= 1, timeout_s=5, what="a completed repair")
    wait_until(lambda: metric(a, "pinfold_replication_repair_duration_seconds_count") >= 1,
             timeout_s=5, what="a repair duration")
    assert metric(a, "pinfold_replication_repair_duration_seconds_sum") < 30
    wait_until(lambda: metric(a, "pinfold_cluster_pins", {"status": "under_replicated"}) == 0,
             timeout_s=5)

    # restart the dead node: 4 copies for a moment, then back to 3, never below 3
    victim.start()
    samples = []
    deadline = time.monotonic() + 40
    settled_since = None
    while time.monotonic() < deadline:
        s = status(a, cid)
        samples.append(s["healthy"])
        assert s["healthy"] >= 3, f"dropped below rmin: {samples}"
        n = len(pinned_on(cluster, cid))
        if n == 3 and local_state(victim, cid) in ("pinned", "remote"):
            settled_since = settled_since or time.monotonic()
            if time.monotonic() - settled_since > 3:
                break
        else:
            settled_since = None
    assert settled_since is not None, f"did not settle at 3 copies: {samples[-20:]}"
    assert len(pinned_on(cluster, cid)) <= 3

    # unpin: every holder releases, and GC frees the blocks everywhere
    cli_json(cluster.nodes[2].home, "pin", "rm", cid)

    def released() -> bool:
        return all(local_state(d, cid) == "absent" for d in cluster.nodes)

    wait_until(released, timeout_s=30, what="every node to forget the pin")

    def gc_done() -> bool:
        for d in cluster.nodes:
            with d.client() as c:
                c.repo_gc()
        return {d.name: blocks(d) for d in cluster.nodes} == before

    assert any(blocks(d) > before[d.name] for d in cluster.nodes)
    wait_until(gc_done, timeout_s=30, interval_s=0.5, what="GC to free the DAG's blocks")


def test_offline_node_catches_up_on_restart(cluster: Cluster) -> None:
    a, e = cluster.nodes[1], cluster.nodes[4]
    keep = add(a, 300_000, seed=21)
    gone = add(a, 300_000, seed=22)
    for cid in (keep, gone):
        cli_json(a.home, "pin", "add", cid, "--replicas", "2")
    wait_until(lambda: all(status(e, c) is not None for c in (keep, gone)), timeout_s=20)
    e.stop()
    new = [add(a, 200_000, seed=30 + i) for i in range(3)]
    for cid in new:
        cli_json(a.home, "pin", "add", cid, "--rmin", "1", "--rmax", "2", "--name", "while-off")
    cli_json(cluster.nodes[2].home, "pin", "rm", gone)
    wait_until(lambda: all(len(pinned_on(cluster, c)) >= 1 for c in new), timeout_s=30)
    e.start()

    def caught_up() -> bool:
        with e.client() as c:
            names = {p["cid"]: p for p in c.pins()}
        return (set(new) | {keep}) <= set(names) and gone not in names and all(
            names[x]["name"] == "while-off" for x in new)

    wait_until(caught_up, timeout_s=30, what="the restarted node to catch up")
    # It also learned who holds what: its status agrees with the others'.
    wait_until(lambda: all(status(e, x)["healthy"] == status(a, x)["healthy"] for x in new),
             timeout_s=20, what="holder states to agree")
    for cid in [keep, *new]:
        cli_json(a.home, "pin", "rm", cid)


def _partition(cluster: Cluster, left: list[int], right: list[int], block: bool) -> None:
    method = "peers_block" if block else "peers_unblock"
    for i in left:
        for j in right:
            for x, y in ((i, j), (j, i)):
                with cluster.nodes[x].client() as c:
                    c.call(method, {"peer_id": cluster.ids[y]})


def test_partitioned_writers_converge_to_the_last_writer(cluster: Cluster) -> None:
    left, right = [0, 1], [2, 3, 4]
    n = cluster.nodes
    x = add(n[0], 100_000, seed=41)   # left re-pins it last: it stays
    y = add(n[0], 100_000, seed=42)   # right pins it last: it stays; left removed it
    z = add(n[0], 100_000, seed=43)   # right removes it last: it goes
    for cid in (x, y, z):
        cli_json(n[0].home, "pin", "add", cid, "--replicas", "2")
    wait_until(lambda: all(status(d, c) is not None for d in n for c in (x, y, z)), timeout_s=20)
    _partition(cluster, left, right, True)
    try:
        wait_until(lambda: all(len(connected_members(n[i])) == 1 for i in left),
                 timeout_s=10, what="the partition")
        # Concurrent writes on both sides; the later one must win after healing.
        cli_json(n[3].home, "pin", "rm", x)
        cli_json(n[1].home, "pin", "rm", y)
        cli_json(n[0].home, "pin", "add", z, "--replicas", "2", "--name", "left-z")
        cli_json(n[1].home, "pin", "add", x, "--replicas", "2", "--name", "left-x")
        cli_json(n[4].home, "pin", "add", y, "--replicas", "2", "--name", "right-y")
        cli_json(n[2].home, "pin", "rm", z)

        def sides_settled() -> bool:  # each side has its own writes...
            return (all((s := status(n[i], x)) and s["name"] == "left-x" for i in left)
                    and all(status(n[i], y) is None for i in left)
                    and all((s := status(n[i], z)) and s["name"] == "left-z" for i in left)
                    and all(status(n[i], x) is None for i in right)
                    and all((s := status(n[i], y)) and s["name"] == "right-y" for i in right)
                    and all(status(n[i], z) is None for i in right))

        wait_until(sides_settled, timeout_s=20, what="each side to apply its own writes")
        # ... and none of the other side's.
        assert status(n[2], x) is None and status(n[0], y) is None and status(n[1], z)
    finally:
        _partition(cluster, left, right, False)

    def converged() -> bool:
        for d in n:
            sx, sy, sz = status(d, x), status(d, y), status(d, z)
            if not (sx and sx["name"] == "left-x" and sy and sy["name"] == "right-y"
                    and sz is None):
                return False
        return True

    wait_until(converged, timeout_s=40, what="both sides to converge on the last writes")
    wait_until(lambda: all(len(pinned_on(cluster, c)) >= 2 for c in (x, y)), timeout_s=30)
    for cid in (x, y):
        cli_json(n[0].home, "pin", "rm", cid)


@pytest.mark.serial
def test_untrusted_peer_changes_nothing(cluster: Cluster) -> None:
    a = cluster.nodes[0]
    cid = add(a, 50_000, seed=51)
    cli_json(a.home, "pin", "add", cid, "--replicas", "2")
    wait_until(lambda: len(pinned_on(cluster, cid)) == 2, timeout_s=30)
    with a.client() as c:
        target = c.id()["addresses"][0]
    pins_before = {d.name: pin_cids(d) for d in cluster.nodes}
    dropped_before = metric(a, "pinfold_cluster_untrusted_messages_dropped_total")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "tests.support.cluster_adversary", target, "itest", cid,
                           cluster.ids[1]], capture_output=True, timeout=120, cwd=ROOT, env=env,
                          check=False)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    out = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    assert out["published"] >= 15 and out["sync_refused"] is True
    # The adversary may exit before node a has read all it published: wait for the count.
    wait_until(lambda: metric(a, "pinfold_cluster_untrusted_messages_dropped_total")
               - dropped_before >= 5, timeout_s=20,
               what="node a to drop at least 5 of the untrusted peer's messages")
    # Nothing changed: the pinsets, the pin's holders, the member list.
    end = time.monotonic() + 3
    while time.monotonic() < end:
        for d in cluster.nodes:
            assert pin_cids(d) == pins_before[d.name]
            assert status(d, out["new_cid"]) is None
        assert len(pinned_on(cluster, cid)) == 2
    for d in cluster.nodes:
        with d.client() as c:
            members = {p["peer_id"] for p in c.cluster_peers()}
        assert out["peer_id"] not in members and members == set(cluster.ids)
        st = status(d, cid)
        assert all(h["peer_id"] != out["peer_id"] for h in st["holders"])
    cli_json(a.home, "pin", "rm", cid)
