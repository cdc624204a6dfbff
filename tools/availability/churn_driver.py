"""The churn experiment's driver: real daemons on 127.0.0.1 on fixed ports, killed and
restarted on the schedule while a prober fetches pins through a gateway node.

``ChurnRun(params, root, log).run() -> ChurnResult`` is what ``run_churn`` calls; the
experiment (placement modes, probe rounds, what is reported) is described in
``tools.availability.churn``.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import json
import math
import random
import socket
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pinfold.blockstore.cid import cid_key, make_cid
from pinfold.config import load, render, replace
from pinfold.client import Client, DaemonNotRunning, RpcError
from pinfold.replication.simulate import SimParams, mean_ci, run_simulation

from tests.support.daemon import DaemonProcess, run_cli

from .churn_model import (
    Interval,
    NodeSchedule,
    churn_schedule,
    covered_fraction,
    run_spread,
    static_holders,
)
from .churn_records import ChurnParams, ChurnResult, KResult, ProbeRecord

#: Fixed listen ports are drawn below the kernel's ephemeral range (32768-60999 on
#: Linux), so no socket bound to port 0 elsewhere can take a port while its node is down.
_PORT_RANGE = (20000, 32000)
#: How far ahead of a scheduled start the driver decides when to spawn, seconds
#: (more than any start-up takes).
_LOOKAHEAD_S = 10.0


_TAKEN: set[int] = set()
_TAKEN_LOCK = threading.Lock()


def _free_ports(n: int, rng: random.Random) -> list[int]:
    """n ports on 127.0.0.1 that bind now, below the ephemeral range (module note), and
    not handed to another experiment of this process (they may run side by side)."""
    ports: list[int] = []
    with _TAKEN_LOCK:
        while len(ports) < n:
            port = rng.randrange(*_PORT_RANGE)
            if port in _TAKEN:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _TAKEN.add(port)
            ports.append(port)
    return ports


class _Node(DaemonProcess):
    """A daemon with a fixed listen port and a config written by the experiment."""

    def __init__(self, root: Path, name: str, port: int) -> None:
        super().__init__(root, name)
        self.port = port
        self.peer_id = ""
        self.config_text = ""

    def init(self) -> None:
        if self.peer_id:
            return
        out = run_cli(self.home, "--json", "init", "--listen",
                      f"/ip4/127.0.0.1/tcp/{self.port}", "--metrics", "",
                      "--gateway", "")
        self.peer_id = json.loads(out.stdout)["peer_id"]

    @property
    def multiaddr(self) -> str:
        return f"/ip4/127.0.0.1/tcp/{self.port}/p2p/{self.peer_id}"

    def write_config(self, text: str) -> None:
        """Replace config.toml (every key has a default; the file holds only changes)."""
        self.config_text = text
        (self.home / "config.toml").write_text(text)

    def rpc(self) -> Client:
        return Client(socket_path=self.home / "rpc.sock")


class ChurnRun:
    """Runs one experiment (``run_churn``); state shared by the driver, watchers and probes."""

    def __init__(self, prm: ChurnParams, root: Path, log: Callable[[str], None]) -> None:
        self.prm = prm
        self.root = root
        self.log = log
        ports = _free_ports(prm.nodes + 1, random.Random())
        self.nodes = [_Node(root, f"node{i}", ports[i]) for i in range(prm.nodes)]
        self.gateway = _Node(root, "gateway", ports[-1])
        self.lock = threading.Lock()
        self.t0 = 0.0
        self.gen = [0] * prm.nodes
        self.ready_at: list[float | None] = [None] * prm.nodes
        self.intervals: list[list[Interval]] = [[] for _ in range(prm.nodes)]
        # Process lifetimes (spawn to kill): the node cannot serve outside them.
        self.alive: list[list[Interval]] = [[] for _ in range(prm.nodes)]
        self.spawned_at: list[float] = [0.0] * prm.nodes
        self.startups: list[float] = []
        self.restarts = 0
        self.failed_starts = 0
        self.pins: list[dict[str, Any]] = []
        self.stopping = threading.Event()

    def now(self) -> float:
        return time.monotonic() - self.t0

    # ------------------------------------------------------------ setup

    def configure(self) -> None:
        """Write every home's config.toml (through ``pinfold.config``, so keys are checked)."""
        prm = self.prm
        for n in [*self.nodes, self.gateway]:
            n.init()
        ids = [n.peer_id for n in self.nodes]
        for i, n in enumerate(self.nodes):
            sections: dict[str, dict[str, Any]] = {
                "node": {"listen": [f"/ip4/127.0.0.1/tcp/{n.port}"],
                         "bootstrap": [self.gateway.multiaddr],
                         "reconnect_max_backoff_s": 1.0},
                "metrics": {"listen": ""}, "gateway": {"listen": ""}}
            if prm.mode == "cluster":
                sections["node"]["bootstrap"] += [m.multiaddr for j, m in enumerate(self.nodes)
                                                  if j != i]
                sections["cluster"] = {"name": "availability", "trusted_peers": ids}
                sections["replication"] = {
                    "heartbeat_interval_s": prm.heartbeat_interval_s,
                    "repair_grace_s": prm.grace_s, "replan_interval_s": prm.replan_interval_s,
                    "sync_interval_s": 5.0, "retry_min_s": 1.0, "retry_max_s": 5.0,
                    "p_prior": min(prm.p, 0.999)}
            n.write_config(render(replace(load(n.home / "config.toml"), **sections)))
        self.gateway.write_config(render(replace(
            load(self.gateway.home / "config.toml"),
            node={"listen": [f"/ip4/127.0.0.1/tcp/{self.gateway.port}"],
                  "bootstrap": [n.multiaddr for n in self.nodes], "reconnect_max_backoff_s": 1.0},
            metrics={"listen": ""}, gateway={"listen": ""}, bitswap={"fetch_timeout_s": prm.fetch_timeout_s})))

    def start_all(self, timeout: float = 90.0) -> None:
        everyone = [*self.nodes, self.gateway]
        for n in everyone:
            n.start(wait=False)
        deadline = time.monotonic() + timeout
        waiting = list(everyone)
        while waiting:
            for n in list(waiting):
                if n.proc is not None and n.proc.poll() is not None:
                    raise RuntimeError(f"daemon {n.name} exited {n.proc.returncode}:\n{n.log()}")
                try:
                    with n.rpc() as c:
                        c.id()
                    waiting.remove(n)
                except (DaemonNotRunning, RpcError, OSError):
                    pass  # not answering yet
            if waiting and time.monotonic() > deadline:
                raise TimeoutError(f"daemons {[n.name for n in waiting]} did not answer "
                                   f"within {timeout} s")
            if waiting:
                time.sleep(0.05)  # polling start-up, with the deadline above

    def place(self) -> None:
        prm = self.prm
        if prm.mode == "cluster":
            self._wait_cluster_formed()
        rng = random.Random(f"pinfold-churn-pins:{prm.seed}")
        ids = [n.peer_id for n in self.nodes]
        for k in prm.ks:
            for _ in range(prm.pins_per_k):
                data = rng.randbytes(prm.block_bytes)
                if prm.mode == "static":
                    cid_obj = make_cid(data)
                    cid = str(cid_obj)
                    holders = static_holders(cid_key(cid_obj), ids, k)
                    for h in holders:
                        with self.nodes[h].rpc() as c:
                            put = c.block_put(data)["cid"]
                            if put != cid:
                                raise AssertionError(f"block put: CID {put}, expected {cid}")
                            c.pin(cid)
                else:
                    # ``add`` pins in the same call (a put, then a pin, leaves a moment
                    # in which the block is unpinned).
                    with self.nodes[0].rpc() as c:
                        cid = c.add(data, replicas=k, name=f"availability-k{k}")
                    if cid != str(make_cid(data)):
                        raise AssertionError(f"add: root {cid} is not the single raw block")
                    holders = None
                self.pins.append({"cid": cid, "k": k, "holders": holders,
                                  "sha256": hashlib.sha256(data).digest()})
        if prm.mode == "cluster":
            self._wait_placed()

    def _wait_cluster_formed(self, timeout: float = 60.0) -> None:
        """Every node sees all N nodes alive (so placement ranks the whole cluster)."""
        ids = sorted(n.peer_id for n in self.nodes)
        deadline = time.monotonic() + timeout
        while True:
            seen = []
            for n in self.nodes:
                with n.rpc() as c:
                    seen.append(sorted(q["peer_id"] for q in c.cluster_peers()
                                       if q.get("state") == "alive"))
            if all(s == ids for s in seen):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"cluster formation: alive peers seen {[len(s) for s in seen]}"
                                   f" of {len(ids)} after {timeout} s")
            time.sleep(0.2)  # polling the cluster's state, with the deadline above

    def _wait_placed(self, timeout: float = 240.0) -> None:
        """Every pin has exactly k holders, all ``pinned`` (the origin copy released),
        then every node collects its unpinned blocks: only holders have a pin's block.

        Peer status is not required to be alive: on a loaded machine a heartbeat can be
        late and a peer briefly suspect, which does not move a copy."""
        deadline = time.monotonic() + timeout
        pending = list(range(len(self.pins)))
        last: dict[int, list[str]] = {}
        while pending:
            with self.nodes[0].rpc() as c:
                still = []
                for i in pending:
                    st = c.status(self.pins[i]["cid"])
                    states = [h.get("state", "") for h in st.get("holders", [])]
                    last[i] = sorted(states)
                    if states.count("pinned") != len(states) or len(states) != \
                            self.pins[i]["k"]:
                        still.append(i)
                    else:
                        ids = {h["peer_id"] for h in st["holders"]}
                        self.pins[i]["holders"] = [j for j, n in enumerate(self.nodes)
                                                   if n.peer_id in ids]
            pending = still
            if pending and time.monotonic() > deadline:
                raise TimeoutError(
                    f"cluster placement: {len(pending)} of {len(self.pins)} pins not at exactly "
                    f"k pinned holders after {timeout} s, e.g. k={self.pins[pending[0]]['k']}: "
                    f"{last[pending[0]]}")
            if pending:
                time.sleep(0.5)  # polling the cluster's state, with the deadline above
        for n in self.nodes:
            with n.rpc() as c:
                c.repo_gc()

    def wait_gateway_connected(self, timeout: float = 60.0) -> None:
        want = {n.peer_id for n in self.nodes}
        deadline = time.monotonic() + timeout
        while True:
            with self.gateway.rpc() as c:
                have = {p["peer_id"] for p in c.peers()}
            if want <= have:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"gateway connected to {len(want & have)}/{len(want)} nodes")
            time.sleep(0.1)  # polling connection state, with the deadline above

    # ------------------------------------------------------------ churn

    def _watch(self, i: int, gen: int, spawned: float) -> None:
        """Mark node i up when its RPC answers, unless it was killed first (gen moved on)."""
        node = self.nodes[i]
        proc = node.proc
        while not self.stopping.is_set():
            with self.lock:
                if self.gen[i] != gen:
                    return
            if proc is not None and proc.poll() is not None:
                with self.lock:
                    if self.gen[i] != gen:
                        return
                    self.failed_starts += 1
                self.log(f"node{i} exited {proc.returncode} before answering; restarting")
                with self.lock:
                    if self.gen[i] != gen:
                        return
                    node.start(wait=False)
                    proc = node.proc
                continue
            try:
                with node.rpc() as c:
                    c.id()
            except (DaemonNotRunning, RpcError, OSError):  # not answering yet
                time.sleep(0.02)
                continue
            t = self.now()
            with self.lock:
                if self.gen[i] == gen:
                    self.ready_at[i] = t
                    self.startups.append(t - spawned)
            return

    def _kill(self, i: int) -> None:
        with self.lock:
            self.gen[i] += 1
            t = self.now()
            if self.ready_at[i] is not None:
                self.intervals[i].append((self.ready_at[i], t))
            self.ready_at[i] = None
            self.nodes[i].kill9()
            self.alive[i].append((self.spawned_at[i], t))

    def _spawn(self, i: int) -> None:
        with self.lock:
            self.gen[i] += 1
            gen = self.gen[i]
            self.restarts += 1
            self.spawned_at[i] = self.now()
            self.nodes[i].start(wait=False)
        threading.Thread(target=self._watch, args=(i, gen, self.now()), daemon=True).start()

    def startup_estimate(self) -> float:
        with self.lock:
            # Until a restart was measured: a typical start-up on a quiet machine.
            return statistics.median(self.startups[-20:]) if self.startups else 1.0

    def holder_up(self, holders: Sequence[int]) -> bool:
        with self.lock:
            return any(self.ready_at[h] is not None for h in holders)

    def drive(self, schedule: Sequence[NodeSchedule]) -> None:
        """Follow the schedule until ``duration_s``: kill at each interval's end,
        spawn ahead of each start by the start-up estimate (never before the kill)."""
        prm = self.prm
        # Heap of (time, order, seq, kind, node, scheduled start, previous kill).
        # Kills sort before spawns at equal times. An "up" comes due _LOOKAHEAD_S
        # ahead of its start and becomes a spawn at start - estimate (estimated then).
        heap: list[tuple[float, int, int, str, int, float, float]] = []
        seq = 0
        for s in schedule:
            last_kill = 0.0
            if not s.up or s.up[0][0] > 0.0:
                heap.append((0.0, 0, seq := seq + 1, "kill", s.index, 0.0, 0.0))
            for a, b in s.up:
                if a > 0.0:
                    heap.append((a - _LOOKAHEAD_S, 2, seq := seq + 1, "up", s.index, a,
                                 last_kill))
                if b < prm.duration_s:
                    heap.append((b, 0, seq := seq + 1, "kill", s.index, 0.0, 0.0))
                last_kill = b
        heapq.heapify(heap)
        while heap:
            delay = heap[0][0] - self.now()
            if delay > 0:
                # The schedule's clock: wait for the next scheduled moment (or stop).
                if self.stopping.wait(min(delay, 0.05)):
                    return
                continue
            _, _, _, kind, i, a, last_kill = heapq.heappop(heap)
            if kind == "up":
                at = max(a - self.startup_estimate(), last_kill)
                heapq.heappush(heap, (at, 1, seq := seq + 1, "spawn", i, a, last_kill))
            elif kind == "kill":
                self._kill(i)
            else:
                self._spawn(i)

    def gc_loop(self, interval_s: float = 5.0) -> None:
        """Cluster mode: collect unpinned blocks on every running node every ``interval_s``.

        A copy the cluster drops as extra is unpinned, but its blocks stay in the store
        (and Bitswap serves them) until GC; collecting them keeps availability the
        holders' alone. Done by the harness during the churn only (no adds then), not
        through ``blockstore.gc_interval_s``, which could also collect a just-added
        block before its pin lands."""
        while not self.stopping.wait(interval_s):
            for i, n in enumerate(self.nodes):
                with self.lock:
                    up = self.ready_at[i] is not None
                if not up:
                    continue
                try:
                    with n.rpc() as c:
                        c.repo_gc()
                except (DaemonNotRunning, RpcError, OSError):
                    pass  # killed meanwhile: its store is collected after its next start

    # ------------------------------------------------------------ probing

    def probe(self, index: int, t: float) -> ProbeRecord:
        pin = self.pins[index]
        holders = pin["holders"] if self.prm.mode == "static" else None
        up = self.holder_up(holders) if holders is not None else None
        ok, err = False, ""
        start = time.monotonic()
        try:
            with self.gateway.rpc() as c:
                data = c.block_get(pin["cid"])
            ok = hashlib.sha256(data).digest() == pin["sha256"]
            err = "" if ok else "wrong bytes"
        except (RpcError, DaemonNotRunning, OSError) as exc:  # the outcome, recorded
            err = f"{type(exc).__name__}:{getattr(exc, 'code', '')}"
        latency = time.monotonic() - start
        with contextlib.suppress(RpcError), self.gateway.rpc() as c:
            c.block_rm(pin["cid"])  # not_found when the probe failed: nothing was stored
        return ProbeRecord(t=t, pin=index, k=pin["k"], ok=ok, latency_s=latency,
                           holder_up=up, error=err)

    def probe_loop(self, rng: random.Random) -> list[ProbeRecord]:
        """Probe rounds until ``duration_s`` (``churn`` module docstring); returns every probe."""
        prm = self.prm
        round_s = prm.fetch_timeout_s + prm.round_slack_s
        per_round = min(prm.probes_per_round or len(self.pins), len(self.pins))
        records: list[ProbeRecord] = []
        with ThreadPoolExecutor(max_workers=min(per_round, 32),
                                thread_name_prefix="probe") as pool:
            r = 0
            while True:
                t = round_s * (r + 0.25)
                if t >= prm.duration_s:
                    break
                r += 1
                delay = t - self.now()
                # The prober's clock: wait for the round's scheduled moment (or stop).
                if delay > 0 and self.stopping.wait(delay):
                    break
                gw = self.gateway.proc
                if gw is None or gw.poll() is not None:
                    code = None if gw is None else gw.returncode
                    raise RuntimeError(f"the gateway daemon exited ({code}) at "
                                       f"t={self.now():.1f} s:\n{self.gateway.log()}")
                chosen = rng.sample(range(len(self.pins)), per_round)
                launched = self.now()
                records += pool.map(self.probe, chosen, [launched] * len(chosen))
        return records

    # ------------------------------------------------------------ run

    def run(self) -> ChurnResult:
        prm = self.prm
        wall0 = time.monotonic()
        schedule = churn_schedule(nodes=prm.nodes, p=prm.p, duration_s=prm.duration_s,
                                  mean_up_s=prm.mean_up_s, seed=prm.seed,
                                  min_down_s=prm.min_down_s)
        try:
            self.configure()
            self.start_all()
            self.log(f"{prm.nodes} nodes + gateway up; placing {len(prm.ks) * prm.pins_per_k} "
                     f"pins ({prm.mode})")
            self.place()
            self.wait_gateway_connected()
            self.t0 = time.monotonic()
            for i in range(prm.nodes):
                self.ready_at[i] = 0.0
            driver = threading.Thread(target=self.drive, args=(schedule,), daemon=True)
            driver.start()
            collector = threading.Thread(target=self.gc_loop, daemon=True)
            if prm.mode == "cluster":
                collector.start()
            try:
                records = self.probe_loop(random.Random(f"pinfold-churn-probes:{prm.seed}"))
            finally:
                self.stopping.set()
                driver.join(timeout=30)
                if collector.is_alive():
                    collector.join(timeout=30)
            end = self.now()
            span = min(end, prm.duration_s)
            with self.lock:
                for i in range(prm.nodes):
                    if self.ready_at[i] is not None:
                        self.intervals[i].append((self.ready_at[i], span))
                        self.ready_at[i] = None
                    if self.nodes[i].proc is not None and self.nodes[i].proc.poll() is None:
                        self.alive[i].append((self.spawned_at[i], span))
        finally:
            self.stopping.set()
            for n in [*self.nodes, self.gateway]:
                try:
                    n.stop(timeout=10)
                except AssertionError:
                    n.kill9()
                finally:
                    n.kill9()
        realized = tuple(covered_fraction([ivs], 0.0, span) for ivs in self.intervals)
        rows = tuple(self._k_result(k, records, realized, span) for k in prm.ks)
        errors: dict[str, int] = {}
        for r in records:
            if not r.ok:
                errors[r.error] = errors.get(r.error, 0) + 1
        return ChurnResult(params=prm, rows=rows, realized_p=realized,
                           scheduled_p=tuple(s.up_fraction for s in schedule),
                           restarts=self.restarts, failed_starts=self.failed_starts,
                           startup_s=statistics.median(self.startups) if self.startups else 0.0,
                           probe_errors=errors, wall_s=time.monotonic() - wall0,
                           records=tuple(sorted(records, key=lambda r: r.t)),
                           intervals=tuple(tuple(ivs) for ivs in self.intervals),
                           alive=tuple(tuple(ivs) for ivs in self.alive),
                           holders=tuple(tuple(p["holders"] or ()) for p in self.pins))

    def _k_result(self, k: int, records: Sequence[ProbeRecord], realized: Sequence[float],
                  span: float) -> KResult:
        prm = self.prm
        mine = [r for r in records if r.k == k]
        pins = [p for p in self.pins if p["k"] == k]
        series = [1.0 if r.ok else 0.0 for r in sorted(mine, key=lambda r: r.t)]
        if len(series) >= 2:
            m, half = mean_ci(series, prm.confidence)
        else:
            m, half = (series[0] if series else float("nan")), 1.0
        with_holders = [p for p in pins if p["holders"]]
        formula_realized = statistics.fmean(
            1.0 - math.prod(1.0 - realized[h] for h in p["holders"]) for p in with_holders
        ) if with_holders else float("nan")
        oracle = statistics.fmean(
            covered_fraction([self.intervals[h] for h in p["holders"]], 0.0, span)
            for p in pins) if prm.mode == "static" else None
        sim = run_simulation(SimParams(
            nodes=prm.nodes, p=prm.p, k=k, pins=max(20, prm.pins_per_k), repair=prm.repair,
            duration_s=prm.duration_s * prm.sim_duration_factor,
            session_mean_s=prm.mean_up_s, heartbeat_interval_s=prm.heartbeat_interval_s,
            grace_s=prm.grace_s, pin_size_bytes=prm.block_bytes,
            repair_bandwidth_Bps=10e6, p_prior=min(prm.p, 0.999),
            confidence=prm.confidence, seed=prm.seed))
        # The run-to-run spread under the model, for the placement used: static
        # holders, or the cluster's initial holders (a stand-in: repair moves them).
        sd = run_spread([p["holders"] for p in with_holders], nodes=prm.nodes, p=prm.p,
                        duration_s=prm.duration_s, mean_up_s=prm.mean_up_s,
                        min_down_s=prm.min_down_s, seed=prm.seed)
        z = statistics.NormalDist().inv_cdf(0.5 + prm.confidence / 2)
        width = math.hypot(half, z * sd)
        return KResult(k=k, pins=len(pins), probes=len(mine),
                       successes=sum(1 for r in mine if r.ok), measured=m,
                       ci_low=max(0.0, m - width), ci_high=min(1.0, m + width),
                       probe_half=half, run_sd=sd,
                       formula=1.0 - (1.0 - prm.p) ** k, formula_realized=formula_realized,
                       oracle=oracle, sim=sim.measured, sim_ci_low=sim.ci_low,
                       sim_ci_high=sim.ci_high)
