"""Replication benchmarks (issue 4): repair across real daemons, and a million-pin pinset.

Repair: 4 daemons (heartbeat 0.5 s, peer TTL 1 s, repair grace 3 s); node 0 adds
200 files totalling ``PINFOLD_BENCH_REPAIR_MIB`` (default 1024 MiB) and pins them
at rmin = rmax = 2; once placed (and every node's GC has run, so no stray block
can stand in for a fetch), the node holding the most copies is killed with
SIGKILL. Figures: time until every pin is back at 2 healthy holders, counted from
the kill and from the moment the dead node's grace period ran out; the bytes the
survivors moved (Bitswap bytes received, and bytes fetched for pins) against
the bytes that had to move (the DAG bytes of the copies lost): target 1.0.

Scale (``PINFOLD_BENCH_SCALE_PINS``, default 1,000,000), in a child process so
its RSS is its own: a replica of the pinset pulled from a peer by anti-entropy
(the pages of the sync protocol, decoded and merged by the manager), holdings of
5 peers (2 copies a pin), then a full planning pass of the manager and the
incremental re-plan after one peer dies. Then a daemon started on a store holding
that many pins: start-up time, RSS, and ``pinfold pin ls`` time to the first line.
Targets: RSS < 1 GiB, full pass < 60 s, first line < 0.5 s.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pinfold.config import load, render, replace

from tests.support.daemon import PYTHON, DaemonProcess, cli_json, metric, stop_all
from tests.support.wait import wait_until

MiB = 1024 * 1024
GRACE_S = 3.0
TTL_S = 1.0


# ------------------------------------------------------------------ repair


def _status(d: DaemonProcess) -> dict:
    with d.client() as c:
        return c.cluster_status()


def repair_bench(total_mib: int, pins: int = 200) -> Iterator[tuple[str, ...]]:
    root = Path(tempfile.mkdtemp(prefix="pinfold-bench-repair-"))
    nodes = [DaemonProcess(root, f"r{i}") for i in range(4)]
    repl = {"heartbeat_interval_s": 0.5, "repair_grace_s": GRACE_S, "rmin": 2, "rmax": 2,
            "sync_interval_s": 10.0, "concurrent_pins": 4}
    try:
        seed = ""
        for d in nodes:
            d.init()
            path = d.home / "config.toml"
            path.write_text(render(replace(load(path), cluster={"name": "bench"},
                                           replication=repl,
                                           node={"bootstrap": [seed] if seed else []})))
            d.start()
            if not seed:
                with d.client() as c:
                    seed = c.id()["addresses"][0]
        wait_until(lambda: all(sum(p["state"] == "alive" for p in d.client().cluster_peers()) == 4
                             for d in nodes), timeout_s=60, what="4 alive peers")
        size = total_mib * MiB // pins
        t0 = time.perf_counter()
        with nodes[0].client() as c:
            cids = [c.add_stream([os.urandom(size)], pin=False)["cid"] for _ in range(pins)]
        add_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        with nodes[0].client() as c:
            for cid in cids:
                c.pin(cid, replicas=2)
        wait_until(lambda: (s := _status(nodes[1]))["pins"] == pins and s["at_target"] == pins,
                 timeout_s=3600, interval_s=0.5, what="every pin at 2 holders")
        place_s = time.perf_counter() - t0
        yield ("repair: setup", f"{pins} pins x {size / MiB:.2f} MiB = {total_mib} MiB",
               f"add {add_s:.1f} s", (f"placed at 2 holders in {place_s:.1f} s "
                                      f"({2 * total_mib / place_s:.0f} MiB/s of copies)"))
        for d in nodes:  # origin copies released: GC everywhere, so only fetches count
            with d.client() as c:
                c.repo_gc()
        held = {}
        for d in nodes:
            with d.client() as c:
                held[d.name] = {p["cid"]: p for p in c.pins(state="pinned")}
        victim = max(nodes[1:], key=lambda d: len(held[d.name]))
        observer = next(d for d in nodes[1:] if d is not victim)
        survivors = [d for d in nodes if d is not victim]
        lost = held[victim.name]
        with observer.client() as c:
            needed = sum(c.status(cid).get("size_bytes", 0) or 0 for cid in lost)
        if not needed:  # size_bytes comes from the origin copy; fall back to the file sizes
            needed = len(lost) * size
        recv0 = {d.name: metric(d, "pinfold_bitswap_received_bytes_total") for d in survivors}
        fetch0 = {d.name: metric(d, "pinfold_replication_fetched_bytes_total") for d in survivors}
        dup0 = {d.name: metric(d, "pinfold_bitswap_duplicate_blocks_total") for d in survivors}
        killed = time.perf_counter()
        victim.kill9()
        wait_until(lambda: _status(observer)["under_replicated"] > 0, timeout_s=30, interval_s=0.1,
                 what="the loss to show")
        wait_until(lambda: _status(observer)["under_replicated"] == 0, timeout_s=3600, interval_s=0.2,
                 what="every pin back at 2 healthy holders")
        took = time.perf_counter() - killed
        after_grace = took - TTL_S - GRACE_S
        time.sleep(1.5)  # metrics are the managers' snapshots at their last heartbeat
        recv = sum(metric(d, "pinfold_bitswap_received_bytes_total") - recv0[d.name]
                   for d in survivors)
        fetched = sum(metric(d, "pinfold_replication_fetched_bytes_total") - fetch0[d.name]
                      for d in survivors)
        dups = sum(metric(d, "pinfold_bitswap_duplicate_blocks_total") - dup0[d.name]
                   for d in survivors)
        yield ("repair: kill -9 one holder", f"{len(lost)} copies lost ({needed / MiB:.0f} MiB)",
               f"{took:.1f} s from the kill", (f"{after_grace:.1f} s after TTL+grace "
                                               f"({needed / MiB / max(after_grace, 1e-9):.0f} "
                                               "MiB/s)"))
        yield ("repair: bytes moved / bytes needed",
               f"received {recv / needed:.3f}", f"fetched for pins {fetched / needed:.3f}",
               (f"+ {int(dups)} duplicate blocks (<= {(recv + dups * MiB) / needed:.3f} "
                "counting each as 1 MiB)"), "target 1.0")
    finally:
        stop_all(nodes)
        subprocess.run(["rm", "-rf", str(root)], check=False)


# ------------------------------------------------------------------ scale


def _cid(i: int) -> bytes:
    return bytes([1, 0x55, 0x12, 0x20]) + hashlib.sha256(i.to_bytes(8, "big")).digest()


def _rss_mib(field: str = "VmRSS") -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def scale_pages(n: int, path: Path) -> None:
    """Build a peer's replica of ``n`` pins and write the anti-entropy pages it would send
    (runs in its own process, so the reader's memory is its own)."""
    from pinfold.replication.pinset import PinSet
    from pinfold.replication.sync import EntriesRequest, answer, encode_message
    from pinfold.replication.types import Pin

    src = PinSet()
    for i in range(n):
        src.put(Pin(cid=_cid(i), rmin=2, rmax=2), ts=(1_700_000_000_000 + i) << 16,
                peer_id=_PEERS[1])
    digest, count = src.summary(0, 0)
    page = 8000  # what the manager asks for (pinfold/replication/manager.py _SYNC_PAGE)
    req = EntriesRequest(tree_bits=src.tree_bits, ranges=((0, 1 << src.tree_bits),), limit=page)
    with open(path, "wb") as f:
        f.write(digest.to_bytes(16, "big") + count.to_bytes(8, "big"))
        while True:
            resp = answer(src, req)
            data = encode_message(resp)
            f.write(len(data).to_bytes(4, "big") + data)
            if not resp.resume:
                break
            req = EntriesRequest(tree_bits=src.tree_bits, ranges=resp.resume, limit=page)


_PEERS = [f"12D3KooWPeer{i:040d}" for i in range(5)]


def scale_child(n: int, pages_path: Path) -> dict:
    """Runs in its own process; returns the figures."""
    import trio
    import trio.testing
    from pinfold.replication.manager import Manager, ManagerConfig
    from pinfold.replication.persist import Pending
    from pinfold.replication.states import OwnStates
    from pinfold.replication.sync import Reconciler, SummaryResponse, decode_message
    from pinfold.replication.transport import MemoryHub, MemoryPins
    from pinfold.replication.types import Heartbeat, PinState

    out: dict = {"pins": n, "wire_mib": pages_path.stat().st_size / MiB}
    peers = _PEERS
    me = peers[0]
    out["rss_base_mib"] = _rss_mib()
    f = open(pages_path, "rb")  # noqa: SIM115 - read page by page below
    head = f.read(24)
    root = (int.from_bytes(head[:16], "big"), int.from_bytes(head[16:], "big"))

    def pages() -> Iterator[bytes]:
        while hdr := f.read(4):
            yield f.read(int.from_bytes(hdr, "big"))

    async def main() -> None:
        clock = trio.lowlevel.current_clock()
        cfg = ManagerConfig(heartbeat_interval_s=5.0, repair_grace_s=60.0)
        m = Manager(me, cfg, MemoryHub().transport(me), MemoryPins(), wall_offset=1.7e9)
        # Anti-entropy from the peer: our replica is empty, so one pull of everything.
        t0 = time.perf_counter()
        rec = Reconciler(m.pinset)
        rec.next_request()
        rec.handle(SummaryResponse(level=0, nodes=((0, *root),)))
        source = pages()
        while rec.next_request() is not None:
            changed = rec.handle(decode_message(next(source)))
            m._after_merge(changed)
            m._pending = Pending()  # (the daemon commits these rows to LMDB)
        out["merge_s"] = time.perf_counter() - t0
        out["merged"] = len(m.pinset)
        del rec
        gc.collect()
        out["rss_merged_mib"] = _rss_mib()
        out["hwm_merged_mib"] = _rss_mib("VmHWM")
        m._dirty.clear()  # (the full pass below plans them)
        # Holdings: 2 copies a pin over the 5 peers (this node holds ~40%).
        t0 = time.perf_counter()
        for i, cid in enumerate(m.pinset.cids()):
            for peer in (peers[i % 5], peers[(i + 1) % 5]):
                m.holdings.set(cid, peer, PinState.PINNED)
        m.own = OwnStates(me, m.holdings, epoch=1, version=len(m.holdings.peer_states(me)))
        for p in peers:
            m.health.observe(Heartbeat(peer_id=p, seq=1, capacity_bytes=1 << 44,
                                       free_bytes=1 << 43), m.now())
        out["holdings_s"] = time.perf_counter() - t0
        out["holdings"] = len(m.holdings)
        gc.collect()
        out["rss_state_mib"] = _rss_mib()
        # A full planning pass, as the plan loop runs it (chunks + per-pin health record).
        cids = m.pinset.cids()
        t0 = time.perf_counter()
        for i in range(0, len(cids), 2048):
            m.plan_now(cids[i:i + 2048])
        out["full_pass_s"] = time.perf_counter() - t0
        out["full_pass_actions"] = len(m._jobs)
        out["rss_planned_mib"] = _rss_mib()
        out["hwm_planned_mib"] = _rss_mib("VmHWM")
        m._dirty.clear()
        # One peer dies: 100 s of silence (TTL 10 s + grace 60 s) while the others beat.
        clock.jump(100)
        for p in peers:
            if p != peers[3]:
                m.health.observe(Heartbeat(peer_id=p, seq=2, capacity_bytes=1 << 44,
                                           free_bytes=1 << 43), m.now())
        t0 = time.perf_counter()
        m._on_health_events(m.health.tick(m.now()))
        dirty = list(m._dirty)
        m._dirty.clear()
        queued = len(m._jobs)
        for i in range(0, len(dirty), 2048):
            m.plan_now(dirty[i:i + 2048])
        out["incremental_s"] = time.perf_counter() - t0
        out["incremental_cids"] = len(dirty)
        out["incremental_pins_here"] = len(m._jobs) - queued
        out["under_replicated"] = m.cluster_status().under_replicated
        out["rss_peak_mib"] = _rss_mib("VmHWM")

    trio.run(main, clock=trio.testing.MockClock())
    f.close()
    return out


def _seed_store(home: Path, n: int) -> float:
    """Write ``n`` pins into a home's replication table; returns seconds."""
    from pinfold.blockstore.lmdbstore import LmdbBlockStore
    from pinfold.replication.persist import Pending, ReplicationDB
    from pinfold.replication.pinset import Entry
    from pinfold.replication.types import Pin

    t0 = time.perf_counter()
    store = LmdbBlockStore(home / "store", max_size_bytes=1 << 40, sync=False)
    try:
        async def submit(fn):
            return store.write(fn)

        db = ReplicationDB(store, submit)
        import trio

        step = 200_000
        for lo in range(0, n, step):
            p = Pending()
            for i in range(lo, min(n, lo + step)):
                cid = _cid(i)
                p.pins[cid] = Entry(cid=cid, ts=(1_700_000_000_000 + i) << 16,
                                    peer_id="12D3KooWSeedWriter", pin=Pin(cid=cid, rmin=2, rmax=2))
            trio.run(db.commit, p)
    finally:
        store.close()
    return time.perf_counter() - t0


def ls_bench(n: int) -> Iterator[tuple[str, ...]]:
    root = Path(tempfile.mkdtemp(prefix="pinfold-bench-ls-"))
    d = DaemonProcess(root, "big")
    try:
        d.init()
        path = d.home / "config.toml"
        path.write_text(render(replace(load(path), cluster={"name": "bench-ls"})))
        (d.home / "store").mkdir(exist_ok=True)
        seed_s = _seed_store(d.home, n)
        t0 = time.perf_counter()
        d.start(wait=False)
        d.wait_ready(timeout=600)
        start_s = time.perf_counter() - t0
        wait_until(lambda: cli_json(d.home, "cluster", "status")["pins"] == n, timeout_s=600)
        rss = 0.0
        with open(f"/proc/{d.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) / 1024
        firsts = []
        for _ in range(3):
            t0 = time.perf_counter()
            proc = subprocess.Popen([PYTHON, "-m", "pinfold.daemon.cli", "--home", str(d.home),
                                     "pin", "ls"], stdout=subprocess.PIPE)
            assert proc.stdout is not None
            first = proc.stdout.readline()
            firsts.append(time.perf_counter() - t0)
            proc.kill()
            proc.wait()
            assert first.startswith(b"baf"), first
        first_s = min(firsts)
        ok = "ok" if first_s < 0.5 else "MISS"
        yield ("scale: daemon with the pins in its store", f"seeded in {seed_s:.1f} s",
               f"start-up (load + index) {start_s:.1f} s", f"RSS {rss:.0f} MiB")
        yield ("scale: `pinfold pin ls` time to first line", f"best {first_s * 1000:.0f} ms",
               "runs " + "/".join(f"{x * 1000:.0f}" for x in firsts) + " ms (incl. CLI start)",
               f"target < 0.5 s: {ok}")
    finally:
        try:
            d.stop(timeout=120)
        finally:
            d.kill9()
        subprocess.run(["rm", "-rf", str(root)], check=False)


def scale_bench(n: int) -> Iterator[tuple[str, ...]]:
    with tempfile.TemporaryDirectory(prefix="pinfold-bench-scale-") as tmp:
        pages = Path(tmp) / "pages"
        subprocess.run([PYTHON, __file__, "--scale-pages", str(n), str(pages)], timeout=3600,
                       check=True)
        proc = subprocess.run([PYTHON, __file__, "--scale-child", str(n), str(pages)],
                              capture_output=True, timeout=3600, check=False)
    if proc.returncode != 0:
        yield ("scale", "child failed", proc.stderr.decode()[-2000:])
        return
    r = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    rss_ok = "ok" if r["rss_peak_mib"] < 1024 else "MISS"
    pass_ok = "ok" if r["full_pass_s"] < 60 else "MISS"
    yield ("scale: anti-entropy pull of the pinset", f"{r['merged']:,} pins",
           f"{r['wire_mib']:.0f} MiB of sync pages", f"decoded + merged in {r['merge_s']:.1f} s")
    yield ("scale: memory", f"pinset + {r['holdings']:,} holder states + manager",
           f"RSS {r['rss_state_mib']:.0f} MiB (peak {r['rss_peak_mib']:.0f} MiB)",
           f"target < 1 GiB: {rss_ok}")
    yield ("scale: full planning pass", f"{r['pins']:,} pins, 5 peers",
           f"{r['full_pass_s']:.1f} s", f"target < 60 s: {pass_ok}")
    yield ("scale: incremental re-plan, one peer dead", f"{r['incremental_cids']:,} CIDs planned",
           f"{r['incremental_s']:.2f} s", f"{r['incremental_pins_here']:,} repairs queued here",
           f"{r['under_replicated']:,} under-replicated while they run")


def run() -> Iterator[tuple[str, ...]]:
    """Rows for ``make bench``."""
    total = int(os.environ.get("PINFOLD_BENCH_REPAIR_MIB", "1024"))
    n = int(os.environ.get("PINFOLD_BENCH_SCALE_PINS", "1000000"))
    yield from repair_bench(total)
    yield from scale_bench(n)
    yield from ls_bench(n)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--scale-pages":
        scale_pages(int(sys.argv[2]), Path(sys.argv[3]))
    elif len(sys.argv) == 4 and sys.argv[1] == "--scale-child":
        print(json.dumps(scale_child(int(sys.argv[2]), Path(sys.argv[3]))), flush=True)
    else:
        for row in run():
            print(" | ".join(row), flush=True)
