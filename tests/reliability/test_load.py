"""Load campaign (issue 7, item 5): many RPC clients, many fetching peers, bounded memory.

* 200 concurrent RPC clients (one thread and one connection each) add (and
  pin), cat, pin again and unpin against one daemon, which one client
  garbage-collects every 5 s, for ``pick(10 s, 5 min)``; each client keeps at
  most 8 files pinned, so the store stays small while the operations are
  real; every operation's
  latency is recorded (p50/p99/max per operation; ``$PINFOLD_LOAD_SECONDS``
  overrides the length), the daemon's RSS is
  sampled; no operation may fail, and in the full run memory must level off
  (the last third of the run may not grow past the first third by more than
  a margin).
* 10 raw libp2p peers (each a host with its own Bitswap, in this process)
  fetch the same file from the daemon at once; per-peer completion times and
  the aggregate rate are recorded with the daemon's peak RSS.
"""

from __future__ import annotations

import os
import random
import socket
import threading
import time
from collections import defaultdict
from pathlib import Path

import trio

import pytest

from tests.support.bitswap import Peer, fetch_all, tcp_target
from tests.support.daemon import DaemonProcess
from tests.support.campaign import (
    KiB,
    MiB,
    RssSampler,
    make_content,
    percentile,
    pick,
    record,
    seed,
)

CLIENTS = 200
#: pinned files each client keeps (bounds the store: 200 x 8 x <= 64 KiB); GC period, seconds
KEEP = 8
GC_EVERY_S = 5.0


@pytest.mark.serial
def test_200_rpc_clients_add_cat_pin(tmp_path: Path) -> None:
    duration = float(os.environ.get("PINFOLD_LOAD_SECONDS", pick(10.0, 300.0)))
    latencies: dict[str, list[float]] = defaultdict(list)
    errors: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    start_line = threading.Barrier(CLIENTS + 1)

    daemon = DaemonProcess(tmp_path, "load").start()

    def client(i: int) -> None:
        rng = random.Random(seed() * 1000 + i)
        mine: list[tuple[str, bytes]] = []  # this client's pinned files, at most KEEP
        next_gc = time.monotonic() + GC_EVERY_S
        try:
            with daemon.client() as c:
                start_line.wait(60)
                while not stop.is_set():
                    roll = rng.random()
                    t0 = time.monotonic()
                    if i == 0 and t0 >= next_gc:  # one client collects what unpins freed
                        c.repo_gc()
                        kind, next_gc = "gc", t0 + GC_EVERY_S
                    elif roll < 0.45 or not mine:
                        data = rng.randbytes(rng.choice((4 * KiB, 16 * KiB, 64 * KiB)))
                        mine.append((c.add(data, pin=True), data))
                        kind = "add"
                    elif roll < 0.8:
                        cid, data = rng.choice(mine)
                        kind = "cat"
                        if b"".join(c.cat(cid)) != data:
                            raise AssertionError(f"cat {cid} returned other bytes")
                    elif roll < 0.9:
                        c.pin(rng.choice(mine)[0])  # pinning again is allowed and cheap
                        kind = "pin"
                    elif len(mine) > 1:
                        c.unpin(mine.pop(0)[0])
                        kind = "unpin"
                    else:
                        c.repo_stat()
                        kind = "stat"
                    dt = time.monotonic() - t0
                    with lock:
                        latencies[kind].append(dt)
                    if len(mine) > KEEP:  # bound the store: the oldest pin goes
                        c.unpin(mine.pop(0)[0])
        except Exception as exc:  # noqa: BLE001 - every failure is a finding
            with lock:
                errors.append(f"client {i}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(CLIENTS)]
    try:
        for t in threads:
            t.start()
        with RssSampler(daemon.pid, 0.5) as rss:
            start_line.wait(60)
            began = time.monotonic()
            stop.wait(duration)  # the run's length, not a wait for state
            stop.set()
            for t in threads:
                t.join(120)
            elapsed = time.monotonic() - began
        with daemon.client() as c:
            verify = c.repo_verify()
    finally:
        stop.set()
        daemon.stop()
        daemon.kill9()
    all_lat = [x for v in latencies.values() for x in v]
    per_op = {k: {"count": len(v), "p50_ms": round(percentile(v, 0.5) * 1000, 1),
                  "p99_ms": round(percentile(v, 0.99) * 1000, 1),
                  "max_ms": round(max(v) * 1000, 1)} for k, v in sorted(latencies.items())}
    samples = [r for _, r in rss.anon_samples]
    third = max(1, len(samples) // 3)
    first, last = max(samples[:third], default=0), max(samples[-third:], default=0)
    record("load", f"{CLIENTS} RPC clients add/cat/pin", clients=CLIENTS,
           seconds=round(elapsed, 1), ops=len(all_lat), ops_per_s=round(len(all_lat) / elapsed, 1),
           p50_ms=round(percentile(all_lat, 0.5) * 1000, 1),
           p99_ms=round(percentile(all_lat, 0.99) * 1000, 1), per_op=per_op, errors=len(errors),
           rss_peak_bytes=rss.peak, anon_peak_bytes=rss.anon_peak, anon_first_third_bytes=first,
           anon_last_third_bytes=last)
    assert errors == [], errors[:5]
    assert verify["corrupt"] == []
    assert len(all_lat) > CLIENTS  # every client got work done
    assert rss.anon_peak < 1024 * MiB, rss.anon_peak
    if duration >= 60:  # memory levels off: no steady growth over a long run
        assert last <= first * 1.25 + 64 * MiB, (first, last)


async def test_10_peers_fetch_one_file_at_once(tmp_path: Path, nursery: trio.Nursery) -> None:
    size = pick(16 * MiB, 64 * MiB)
    daemon = DaemonProcess(tmp_path, "origin").start()
    try:
        content = make_content("shared", random.Random(seed()), sizes=(size,),
                               chunk_sizes=(MiB,))
        with daemon.client() as c:
            assert c.add(content.data, pin=True, chunk_size=MiB) == content.root_text
        _, _, addr = tcp_target(daemon)
        peers = [Peer() for _ in range(10)]
        for p in peers:
            await nursery.start(p.run)
            await p.host.connect(addr)
        times: list[float] = []
        with RssSampler(daemon.pid, 0.1) as rss:
            began = trio.current_time()

            async def fetch(p: Peer) -> None:
                times.append(await fetch_all(p, content, timeout_s=600))

            async with trio.open_nursery() as n:
                for p in peers:
                    n.start_soon(fetch, p)
            elapsed = trio.current_time() - began
        total = len(content.data) * len(peers)
        record("load", "10 peers fetch one file at once", peers=len(peers),
               file_bytes=len(content.data), seconds=round(elapsed, 2),
               aggregate_mib_per_s=round(total / MiB / elapsed, 1),
               per_peer_p50_s=round(percentile(times, 0.5), 2),
               per_peer_max_s=round(max(times), 2), rss_peak_bytes=rss.peak,
               anon_peak_bytes=rss.anon_peak)
        assert len(times) == len(peers)
        assert all(len(p.store.blocks) == len(content.blocks) for p in peers)
        assert rss.anon_peak < 1024 * MiB, rss.anon_peak
        for p in peers:
            p.scope.cancel()
    finally:
        daemon.stop()
        daemon.kill9()


def test_a_burst_of_connections_beyond_128_is_not_refused(tmp_path: Path) -> None:
    """Regression: the RPC socket listened with a backlog of 128, so a burst of clients
    (the 200-client load) got EAGAIN from connect(); the backlog is now SOMAXCONN."""
    daemon = DaemonProcess(tmp_path, "burst").start()
    socks = []
    refused = 0
    try:
        path = str(daemon.home / "rpc.sock")
        for _ in range(400):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.setblocking(False)
            try:
                s.connect(path)
            except BlockingIOError:
                refused += 1
            socks.append(s)
    finally:
        for s in socks:
            s.close()
        daemon.stop()
        daemon.kill9()
    assert refused == 0, f"{refused} of 400 connects got EAGAIN"
