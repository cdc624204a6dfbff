"""Hostile input, live: a cluster of real daemons takes hostile gossip and sync frames (issue 7).

Three daemons (separate processes, 127.0.0.1, short intervals as in
``tests/cluster/test_cluster_multinode.py``) form one cluster whose ``trusted_peers``
lists them and one more identity: a compromised member. ``tests/support/cluster_fuzzer.py``
runs as a separate process twice, once as an outsider (a fresh identity) and once
as that insider, and each time joins the cluster topic and sends hostile gossip
(garbage payloads, mutated bodies in valid envelopes, valid but untrusted
messages, raw replays and forgeries of the members' messages, oversized
payloads) and malformed ``/pinfold/sync/1`` frames; the daemons' own sync
sessions with it get garbage answers. Afterwards every daemon is still up and
answering, its cluster pinset, pin status, cluster peers and store are what they
were before (state changes 0), and the members still replicate a new pin.

The replay test: an observer captures a member's signed pinset delta adding a
pin; the pin is removed (a tombstone); one daemon restarts (its gossipsub
seen-cache, which would drop the replay as a duplicate, starts empty) and gets
the captured message raw, with its original author, seqno and signature. The
pin must not come back.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID
from pinfold.config import load, render, replace

from tests.support.daemon import DaemonProcess, stop_all
from tests.support.campaign import live_fingerprint, pick, record, seed
from tests.support.cluster import metric, peer_id, replication, status
from tests.support.wait import wait_until

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = "hostile"
INSIDER_SEED = bytes(range(32, 64))
REPLICATION = replication(sync_interval_s=2.0, rmin=2, rmax=2, p_prior=0.9)


@dataclass
class Members:
    nodes: list[DaemonProcess]
    ids: list[str]

    def addrs(self) -> list[str]:
        out = []
        for d in self.nodes:
            with d.client() as c:
                addr = next(a for a in c.id()["addresses"] if "/ip4/127.0.0.1/" in a)
            out.append(addr if "/p2p/" in addr else f"{addr}/p2p/{peer_id(d)}")
        return out


def insider_id() -> str:
    return ID.from_pubkey(create_new_key_pair(INSIDER_SEED).public_key).to_base58()


@pytest.fixture(scope="module")
def members(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("hostile-cluster")
    nodes = [DaemonProcess(root, f"h{i}") for i in range(3)]
    for d in nodes:
        d.init()
    ids = [peer_id(d) for d in nodes]
    trusted = [*ids, insider_id()]
    seed_addr = None
    for i, d in enumerate(nodes):
        path = d.home / "config.toml"
        path.write_text(render(replace(load(path), cluster={"name": CLUSTER,
                                                             "trusted_peers": trusted},
                                       replication=REPLICATION,
                                       node={"bootstrap": [seed_addr] if seed_addr else []})))
        if i == 0:
            d.start()
            with d.client() as c:
                seed_addr = c.id()["addresses"][0]
        else:
            d.start(wait=False)
    for d in nodes[1:]:
        d.wait_ready()

    def all_alive() -> bool:
        for d in nodes:
            with d.client() as c:
                alive = sorted(p["peer_id"] for p in c.cluster_peers() if p["state"] == "alive")
            if alive != sorted(ids):
                return False
        return True

    wait_until(all_alive, timeout_s=60, what="every member to see 3 alive cluster peers")
    yield Members(nodes, ids)
    stop_all(nodes)


def add_pin(d: DaemonProcess, seed_: int) -> str:
    with d.client() as c:
        cid = c.add(random.Random(seed_).randbytes(50_000 + seed_), pin=False)
        c.pin(cid, rmin=2, rmax=2)
    return cid


def holders(members: Members, cid: str) -> set[str]:
    out = set()
    for d in members.nodes:
        st = status(d, cid)
        if st is not None and st["local_state"] == "pinned":
            out.add(d.name)
    return out


def snapshot(d: DaemonProcess) -> dict[str, Any]:
    """What hostile input must not change on a member."""
    with d.client() as c:
        pins = sorted((p["cid"], p["name"], p["mode"], p["rmin"], p["rmax"], p["state"])
                      for p in c.pins())
        peers = sorted((p["peer_id"], p["state"]) for p in c.cluster_peers())
        store = live_fingerprint(c)
    sts = {}
    for cid, *_ in pins:
        st = status(d, cid)
        sts[cid] = None if st is None else (
            st["healthy"], sorted((h["peer_id"], h["state"]) for h in st["holders"]))
    return {"pins": pins, "status": sts, "peers": peers, "store": store}


def run_fuzzer(cfg: dict[str, Any], timeout: float) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "tests.support.cluster_fuzzer", json.dumps(cfg)],
                          capture_output=True, timeout=timeout, cwd=ROOT, env=env, check=False)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    return json.loads(proc.stdout.decode().strip().splitlines()[-1])


def all_up(members: Members) -> None:
    for d in members.nodes:
        assert d.proc is not None and d.proc.poll() is None, f"{d.name} exited:\n{d.log()[-3000:]}"
        with d.client() as c:
            c.id()


def test_hostile_gossip_and_sync_frames_change_nothing(members: Members) -> None:
    a = members.nodes[0]
    cid = add_pin(a, 1)
    wait_until(lambda: len(holders(members, cid)) == 2, timeout_s=60, what="2 holders of the pin")
    wait_until(lambda: len({json.dumps(snapshot(d)["status"]) for d in members.nodes}) == 1,
             timeout_s=30, what="every member to agree on the pin's status")
    before = {d.name: snapshot(d) for d in members.nodes}
    dropped_before = sum(metric(d, "pinfold_cluster_untrusted_messages_dropped_total")
                         for d in members.nodes)
    rejected_before = sum(metric(d, "pinfold_cluster_rejected_messages_total")
                          for d in members.nodes)
    n, frames = pick(150, 3000), pick(60, 1500)
    results = {}
    t0 = time.monotonic()
    for who, key_seed in (("outsider", None), ("insider", INSIDER_SEED.hex())):
        results[who] = run_fuzzer({"mode": "fuzz", "targets": members.addrs(), "cluster": CLUSTER,
                                   "key_seed": key_seed, "n": n, "frames": frames,
                                   "seed": seed() + len(results)}, timeout=pick(240, 1200))
        all_up(members)
    took = time.monotonic() - t0
    assert results["insider"]["peer_id"] == insider_id()
    dropped = sum(metric(d, "pinfold_cluster_untrusted_messages_dropped_total")
                  for d in members.nodes) - dropped_before
    rejected = sum(metric(d, "pinfold_cluster_rejected_messages_total")
                   for d in members.nodes) - rejected_before

    # Nothing changed, and stays so for a few heartbeats and a sync round.
    end = time.monotonic() + 4
    changed = 0
    while time.monotonic() < end:
        for d in members.nodes:
            now = snapshot(d)
            changed += now != before[d.name]
            assert now == before[d.name], f"{d.name} changed: {before[d.name]} -> {now}"
    all_up(members)

    # The members still replicate.
    cid2 = add_pin(members.nodes[1], 2)
    wait_until(lambda: len(holders(members, cid2)) == 2, timeout_s=60, what="a new pin replicated")
    wait_until(lambda: all(status(d, cid2) is not None for d in members.nodes), timeout_s=30,
             what="every member to know the new pin")

    inputs = {who: sum(v for k, v in r["counts"].items()
                       if k not in ("skipped (a valid write)", "raw writes failed",
                                    "sync answers", "sync streams", "sync streams reset",
                                    "sync responses (garbage)"))
              for who, r in results.items()}
    print(json.dumps({"results": results, "dropped": dropped, "rejected": rejected,
                      "seconds": round(took, 1)}))
    for who, r in results.items():
        c = r["counts"]
        record("hostile", f"cluster gossip + sync frames from a live {who} peer",
               inputs=inputs[who], gossip=sum(c.get(k, 0) for k in (
                   "garbage payloads", "mutated bodies", "valid untrusted messages", "replays",
                   "forgeries", "oversized payloads")),
               sync_frames=c.get("sync frames", 0) + c.get("sync streams refused", 0),
               sync_garbage_answers=c.get("sync responses (garbage)", 0),
               rejected=inputs[who], accepted=0, skipped_valid=c.get("skipped (a valid write)", 0),
               crashes=0, state_changes=changed, live=True)
    record("hostile", "cluster members' drop counters after the live campaign", inputs=0,
           untrusted_or_forged_dropped=dropped, rejected_from_members=rejected, crashes=0,
           state_changes=0, live=True)
    assert results["outsider"]["counts"].get("replays", 0) > 0, results
    assert dropped > n // 4, f"only {dropped} untrusted or forged messages counted as dropped"
    assert rejected > 0, "the insider's malformed bodies were never counted as rejected"


@pytest.mark.serial
def test_replayed_pin_delta_does_not_resurrect_an_unpinned_pin(members: Members) -> None:
    a, b = members.nodes[0], members.nodes[2]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cfg = {"mode": "capture", "targets": members.addrs(), "cluster": CLUSTER, "key_seed": None,
           "seed": seed()}
    with subprocess.Popen([sys.executable, "-m", "tests.support.cluster_fuzzer", json.dumps(cfg)],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          cwd=ROOT, env=env, text=True) as observer:
        try:
            line = observer.stdout.readline()
            assert json.loads(line) == {"ready": True}, observer.stderr.read()[-3000:]
            cid = add_pin(a, 3)
            observer.stdin.write(cid + "\n")
            observer.stdin.flush()
            out, err = observer.communicate(timeout=60)
        finally:
            observer.kill()
    assert observer.returncode == 0, err[-3000:]
    captured = json.loads(out.strip().splitlines()[-1])["message"]
    wait_until(lambda: all(status(d, cid) is not None for d in members.nodes), timeout_s=30,
             what="every member to know the pin")

    with a.client() as c:
        c.unpin(cid)
    wait_until(lambda: all(status(d, cid) is None for d in members.nodes), timeout_s=30,
             what="every member to drop the pin")
    wait_until(lambda: not holders(members, cid), timeout_s=30, what="the holders to release it")

    b.stop()
    b.start()  # an empty gossipsub seen-cache: the replay is new to it
    wait_until(lambda: all(status(d, cid) is None for d in members.nodes), timeout_s=30,
             what="the restarted member to know the tombstone")
    before = {d.name: snapshot(d) for d in members.nodes}
    dropped_before = metric(b, "pinfold_cluster_untrusted_messages_dropped_total")
    cfg = {"mode": "replay", "targets": members.addrs(), "cluster": CLUSTER, "key_seed": None,
           "seed": seed(), "message": captured}
    with subprocess.Popen([sys.executable, "-m", "tests.support.cluster_fuzzer", json.dumps(cfg)],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          cwd=ROOT, env=env, text=True) as replayer:
        try:
            line = replayer.stdout.readline()
            assert line, replayer.stderr.read()[-3000:]
            sent = json.loads(line)
            assert sent["counts"].get("raw writes failed", 0) == 0, sent
            # The barrier written after the replay on the same stream was counted:
            # the replay ahead of it was processed.
            wait_until(lambda: metric(b, "pinfold_cluster_untrusted_messages_dropped_total")
                     > dropped_before, timeout_s=30,
                     what="the restarted member to process the replay")
            replayer.stdin.write("\n")
            replayer.stdin.flush()
            replayer.communicate(timeout=30)
        finally:
            replayer.kill()
    end = time.monotonic() + 3
    while time.monotonic() < end:
        for d in members.nodes:
            assert status(d, cid) is None, f"the replayed delta brought {cid} back on {d.name}"
            assert snapshot(d) == before[d.name]
    all_up(members)
    record("hostile", "replayed signed pin delta after unpin (live cluster)", inputs=1,
           rejected=1, accepted=0, crashes=0, state_changes=0, live=True)
