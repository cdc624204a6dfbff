"""Real-process availability: daemons killed and restarted on a seeded churn schedule.

``run_churn(ChurnParams(...), root) -> ChurnResult`` starts N real ``pinfold
daemon`` processes on 127.0.0.1 (fixed ports, so a restarted node is found at
the same multiaddr with the same peer ID) and one *gateway* daemon, places
pins at factor k, then for ``duration_s`` seconds:

- the **churn driver** follows a schedule drawn from a seeded random stream
  per node (``churn_schedule``): alternating online/offline sessions,
  exponential with means ``mean_up_s`` and ``mean_up_s * (1 - p) / p``, started
  in the stationary state (online with probability p), so each node is up a
  fraction p of the time. Going offline is SIGKILL; coming back is a new
  process, spawned ahead of the scheduled time by the measured start-up latency
  so the node answers at about the scheduled moment. A node counts as *up* from
  the moment its RPC answers ``id`` until it is killed; those observed
  intervals give each node's realized online fraction.
- the **prober** works in rounds at fixed times (every ``fetch_timeout_s +
  round_slack_s`` seconds, whatever the outcomes, so it samples time
  uniformly): each round picks ``probes_per_round`` pins at random (seeded; 0 =
  all, in random order) and asks the gateway for each block at once (``block
  get``: Bitswap from the connected peers, with the gateway's
  ``bitswap.fetch_timeout_s = fetch_timeout_s``). A probe succeeds when the
  right bytes arrive within the timeout. The gateway then deletes its copy
  (``block rm``), and the round ends before the next starts, so every probe goes
  to the network and a pin is never probed twice at once. (Picking pins one at
  a time while skipping those still in flight would bias the result upwards:
  the probes still in flight are the failing ones.) A probe launched while no
  holder is up can still succeed when one comes back within the timeout; the
  short default timeout keeps that bias small, and the oracle below shows it.

The gateway holds none of the pins and is never allocated any: it is a
standalone node (``cluster.name = ""``, not a cluster member), connected to
every churning node through ``node.bootstrap`` (and each node dials it back on
start). It never churns.

Placement modes:

- ``static``: the harness places each pin itself - the block is put and pinned
  on the top k nodes of the real allocator's ranking
  (``RendezvousAllocator``, equal weights) - and nothing re-replicates. This is
  the setting the formula describes, and needs only standalone daemons.
- ``cluster``: the nodes form a pinfold cluster (``[cluster] name``, short
  ``[replication]`` intervals) and each pin is added with ``pin add --replicas
  k`` on one node; the cluster chooses holders and repairs lost copies.

Reported per k: the probes' success fraction with a confidence interval
(``mean_ci`` over the probe series in time order: it accounts for the time
correlation of sessions), next to the formula ``1 - (1 - p)^k``, the formula with
each node's realized online fraction, the oracle (static mode: the exact
fraction of time at least one holder was up, from the observed intervals) and
the simulator's figure for the same settings.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import heapq
import json
import math
import random
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pinfold.blockstore.cid import cid_key, make_cid
from pinfold.config import load, render, replace
from pinfold.client import Client, DaemonNotRunning, RpcError
from pinfold.replication.allocation import Candidate, RendezvousAllocator
from pinfold.replication.simulate import SimParams, mean_ci, run_simulation

from tests.support.daemon import DaemonProcess, run_cli

__all__ = [
    "ChurnParams",
    "ChurnResult",
    "KResult",
    "NodeSchedule",
    "churn_schedule",
    "covered_fraction",
    "merge_intervals",
    "run_churn",
    "run_spread",
    "static_holders",
]

Interval = tuple[float, float]

#: Fixed listen ports are drawn below the kernel's ephemeral range (32768-60999 on
#: Linux), so no socket bound to port 0 elsewhere can take a port while its node is down.
_PORT_RANGE = (20000, 32000)
#: How far ahead of a scheduled start the driver decides when to spawn, seconds
#: (more than any start-up takes).
_LOOKAHEAD_S = 10.0


# ---------------------------------------------------------------- pure core


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeSchedule:
    """When one node should be up.

    Attributes:
        index: the node's number, 0-based.
        up: scheduled online intervals ``(start, end)`` in seconds from the
            start of the churn, sorted, disjoint, within [0, duration].
        duration_s: the schedule's span, seconds.
    """

    index: int
    up: tuple[Interval, ...]
    duration_s: float

    @property
    def up_fraction(self) -> float:
        """Scheduled online fraction over the span."""
        return sum(b - a for a, b in self.up) / self.duration_s


def _node_rng(seed: int, index: int) -> random.Random:
    h = hashlib.blake2b(f"pinfold-churn:{seed}:{index}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(h, "big"))


def churn_schedule(*, nodes: int, p: float, duration_s: float, mean_up_s: float,
                   seed: int, min_down_s: float = 0.0) -> tuple[NodeSchedule, ...]:
    """Each node's online intervals: an alternating renewal process with online fraction p.

    Online sessions are exponential with mean ``mean_up_s``; offline sessions
    have mean ``mean_up_s * (1 - p) / p`` and are ``min_down_s`` plus an
    exponential (all exactly the mean when it is below ``min_down_s``): a real
    restart takes about a second, so a shorter absence cannot be made, and a
    schedule asking for one would leave the node down longer than planned. The
    long-run online fraction is p whatever the distributions, and so is the
    formula for independent nodes. Each node starts online with probability p
    and has its own random stream, so adding nodes does not change the others'
    schedules.

    Args:
        nodes: number of churning nodes (>= 1).
        p: long-run online fraction in (0, 1]; 1 keeps every node up.
        duration_s: span of the schedule, seconds (> 0).
        mean_up_s: mean online session, seconds (> 0).
        seed: equal arguments give equal schedules.
        min_down_s: shortest offline session, seconds (>= 0).

    Returns:
        One ``NodeSchedule`` a node, in node order.

    Raises:
        ValueError: an argument is out of range (the message names it).
    """
    if not (isinstance(nodes, int) and nodes >= 1):
        raise ValueError(f"nodes: must be an integer >= 1, got {nodes!r}")
    if not 0.0 < p <= 1.0:
        raise ValueError(f"p: must be in (0, 1], got {p!r}")
    if not (duration_s > 0 and math.isfinite(duration_s)):
        raise ValueError(f"duration_s: must be > 0, got {duration_s!r}")
    if not (mean_up_s > 0 and math.isfinite(mean_up_s)):
        raise ValueError(f"mean_up_s: must be > 0, got {mean_up_s!r}")
    if not (min_down_s >= 0 and math.isfinite(min_down_s)):
        raise ValueError(f"min_down_s: must be >= 0, got {min_down_s!r}")
    mean_down = mean_up_s * (1.0 - p) / p
    floor = min(min_down_s, mean_down)
    out = []
    for i in range(nodes):
        rng = _node_rng(seed, i)
        if p >= 1.0:
            out.append(NodeSchedule(index=i, up=((0.0, duration_s),), duration_s=duration_s))
            continue
        online = rng.random() < p
        t = 0.0
        ups: list[Interval] = []
        while t < duration_s:
            if online:
                length = rng.expovariate(1.0 / mean_up_s)
            else:
                extra = mean_down - floor
                length = floor + (rng.expovariate(1.0 / extra) if extra > 0 else 0.0)
            end = min(duration_s, t + length)
            if online and end > t:
                ups.append((t, end))
            t = end
            online = not online
        out.append(NodeSchedule(index=i, up=tuple(ups), duration_s=duration_s))
    return tuple(out)


def merge_intervals(intervals: Sequence[Interval]) -> list[Interval]:
    """The union of intervals as sorted, disjoint intervals (empty ones dropped)."""
    merged: list[Interval] = []
    for a, b in sorted(iv for iv in intervals if iv[1] > iv[0]):
        if merged and a <= merged[-1][1]:
            if b > merged[-1][1]:
                merged[-1] = (merged[-1][0], b)
        else:
            merged.append((a, b))
    return merged


def covered_fraction(interval_sets: Sequence[Sequence[Interval]], start: float,
                     end: float) -> float:
    """Fraction of [start, end] covered by at least one interval of any set.

    Args:
        interval_sets: per holder, its online intervals (seconds).
        start, end: the measured span, seconds (end > start).

    Returns:
        A fraction in [0, 1]: the availability of a pin held by these holders.
    """
    if end <= start:
        raise ValueError(f"covered_fraction: empty span [{start}, {end}]")
    clipped = [(max(a, start), min(b, end)) for ivs in interval_sets for a, b in ivs]
    return sum(b - a for a, b in merge_intervals(clipped)) / (end - start)


def static_holders(cid: bytes, peer_ids: Sequence[str], k: int) -> list[int]:
    """Indices of the k nodes the real allocator ranks first for ``cid`` (equal weights)."""
    cands = [Candidate(peer_id=pid, weight=1.0) for pid in peer_ids]
    ranked = RendezvousAllocator().rank(cid, cands)
    index = {pid: i for i, pid in enumerate(peer_ids)}
    return [index[c.peer_id] for c in ranked[:k]]


def run_spread(holder_sets: Sequence[Sequence[int]], *, nodes: int, p: float,
               duration_s: float, mean_up_s: float, min_down_s: float = 0.0,
               draws: int = 300, seed: int = 0) -> float:
    """Run-to-run standard deviation of a short run's availability, by Monte Carlo.

    A run of ``duration_s`` sees only a few sessions per node, so its pins'
    availability differs from the long-run formula even when the system is
    perfect. This draws ``draws`` independent schedules (``churn_schedule``)
    and measures, for each, the mean over pins of the fraction of time a holder
    was up; the spread of those means is the noise a single run carries.

    Args:
        holder_sets: each pin's holders (node indices).
        nodes, p, duration_s, mean_up_s, min_down_s: as ``churn_schedule``.
        draws: schedules drawn (>= 2).
        seed: seeds the draws (independent of the experiment's own schedule).

    Returns:
        The standard deviation (0 when there are no pins).
    """
    if not holder_sets:
        return 0.0
    means = []
    for d in range(draws):
        sched = churn_schedule(nodes=nodes, p=p, duration_s=duration_s, mean_up_s=mean_up_s,
                               seed=1_000_003 * (seed + 1) + d, min_down_s=min_down_s)
        means.append(statistics.fmean(
            covered_fraction([sched[h].up for h in hs], 0.0, duration_s) for hs in holder_sets))
    return statistics.stdev(means)


# ---------------------------------------------------------------- parameters and results


@dataclass(frozen=True, slots=True, kw_only=True)
class ChurnParams:
    """One real-process experiment.

    Attributes:
        nodes: churning daemons N (the gateway comes on top).
        p: each node's scheduled online fraction, in (0, 1].
        ks: replication factors; ``pins_per_k`` pins are placed at each.
        pins_per_k: pins per replication factor.
        block_bytes: size of each pinned block (one raw block a pin), bytes.
        duration_s: measured span of churn and probing, seconds.
        mean_up_s: mean online session, seconds.
        min_down_s: shortest offline session, seconds (``churn_schedule``).
        fetch_timeout_s: the gateway's Bitswap fetch timeout: a probe fails when
            the block has not arrived by then, seconds.
        round_slack_s: a probe round lasts ``fetch_timeout_s`` plus this, seconds.
        probes_per_round: pins probed each round (0 = all of them).
        mode: ``"static"`` (the harness places pins, no repair) or
            ``"cluster"`` (``pin add --replicas k`` in a pinfold cluster, repair on).
        heartbeat_interval_s, grace_s, replan_interval_s: the cluster's
            ``[replication]`` settings (cluster mode), seconds.
        seed: seeds the schedule, the pins' bytes and the probes' choices.
        confidence: interval level.
        sim_duration_factor: the simulator's figure comes from a run this many
            times longer than ``duration_s`` (same other settings).
    """

    nodes: int = 6
    p: float = 0.7
    ks: tuple[int, ...] = (1, 2, 3, 4)
    pins_per_k: int = 6
    block_bytes: int = 16 * 1024
    duration_s: float = 140.0
    mean_up_s: float = 20.0
    min_down_s: float = 1.5
    fetch_timeout_s: float = 1.5
    round_slack_s: float = 0.5
    probes_per_round: int = 12
    mode: str = "static"
    heartbeat_interval_s: float = 1.0
    grace_s: float = 3.0
    replan_interval_s: float = 2.0
    seed: int = 0
    confidence: float = 0.99
    sim_duration_factor: float = 200.0

    def __post_init__(self) -> None:
        def need(cond: bool, name: str, what: str) -> None:
            if not cond:
                raise ValueError(f"{name}: {what}, got {getattr(self, name)!r}")

        need(isinstance(self.nodes, int) and 1 <= self.nodes <= 32, "nodes", "must be in 1..32")
        need(0.0 < self.p <= 1.0, "p", "must be in (0, 1]")
        need(len(self.ks) >= 1 and all(isinstance(k, int) and 1 <= k <= self.nodes
                                        for k in self.ks), "ks", "each k must be in 1..nodes")
        need(self.pins_per_k >= 1, "pins_per_k", "must be >= 1")
        need(1 <= self.block_bytes <= 1 << 20, "block_bytes", "must be in 1..1 MiB")
        need(self.probes_per_round >= 0, "probes_per_round", "must be >= 0")
        for name in ("duration_s", "mean_up_s", "round_slack_s", "fetch_timeout_s",
                     "heartbeat_interval_s", "replan_interval_s", "sim_duration_factor"):
            need(getattr(self, name) > 0, name, "must be > 0")
        need(self.grace_s >= 0, "grace_s", "must be >= 0")
        need(self.min_down_s >= 0, "min_down_s", "must be >= 0")
        need(self.mode in ("static", "cluster"), "mode", "must be 'static' or 'cluster'")
        need(0.0 < self.confidence < 1.0, "confidence", "must be in (0, 1)")

    @property
    def repair(self) -> bool:
        """Whether lost copies are re-replicated (cluster mode)."""
        return self.mode == "cluster"


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeRecord:
    """One probe.

    Attributes:
        t: launch time, seconds from the churn start.
        pin: index of the pin probed.
        k: its replication factor.
        ok: the right bytes arrived within the fetch timeout.
        latency_s: time the probe took, seconds.
        holder_up: static mode: a holder was up (answering) at launch; None in
            cluster mode (holders move).
        error: the error's class and code when the probe failed, else "".
    """

    t: float
    pin: int
    k: int
    ok: bool
    latency_s: float
    holder_up: bool | None
    error: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class KResult:
    """Availability of the pins at one replication factor.

    Attributes:
        k: replication factor.
        pins: pins at this factor.
        probes, successes: probes launched at these pins and how many succeeded.
        measured: success fraction.
        ci_low, ci_high: its interval, combining the probes' sampling noise
            (``probe_half``) and the run-to-run noise of a run this short
            (``run_sd``): ``measured +- sqrt(probe_half^2 + (z * run_sd)^2)``.
            It answers "is the long-run formula consistent with this run?".
        probe_half: half-width of the probes' own interval (``mean_ci`` over the
            probe series in time order): the noise given this run's schedule.
        run_sd: standard deviation of the availability of a run this long
            (``run_spread``), under the formula's model.
        formula: ``1 - (1 - p)^k`` with the scheduled p.
        formula_realized: mean over pins of ``1 - prod(1 - u_i)`` over the
            holders' realized online fractions u_i (static mode; the scheduled
            holders in cluster mode).
        oracle: static mode: mean over pins of the exact fraction of time at
            least one holder was up (observed intervals); None in cluster mode.
        sim, sim_ci_low, sim_ci_high: the simulator's figure for the same
            settings and its interval.
    """

    k: int
    pins: int
    probes: int
    successes: int
    measured: float
    ci_low: float
    ci_high: float
    probe_half: float
    run_sd: float
    formula: float
    formula_realized: float
    oracle: float | None
    sim: float
    sim_ci_low: float
    sim_ci_high: float


@dataclass(frozen=True, slots=True, kw_only=True)
class ChurnResult:
    """What one experiment measured.

    Attributes:
        params: the parameters.
        rows: one ``KResult`` per replication factor, in ``params.ks`` order.
        realized_p: each node's observed online fraction (answering ``id``).
        scheduled_p: each node's scheduled online fraction.
        restarts: processes started during the churn.
        failed_starts: starts that exited before answering (retried).
        startup_s: median time from spawn to answering, seconds.
        probe_errors: failed probes by error kind.
        wall_s: wall-clock time of the whole experiment, seconds.
        records: every probe, in launch order.
        intervals: each node's observed up intervals (answering ``id`` until
            killed), seconds from the churn start.
        alive: each node's process lifetimes (spawn to kill), seconds.
        holders: each pin's holders (node indices) as placed.
    """

    params: ChurnParams
    rows: tuple[KResult, ...]
    realized_p: tuple[float, ...]
    scheduled_p: tuple[float, ...]
    restarts: int
    failed_starts: int
    startup_s: float
    probe_errors: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0
    records: tuple[ProbeRecord, ...] = ()
    intervals: tuple[tuple[Interval, ...], ...] = ()
    alive: tuple[tuple[Interval, ...], ...] = ()
    holders: tuple[tuple[int, ...], ...] = ()

    def as_dict(self, *, records: bool = False) -> dict[str, Any]:
        """JSON-ready; the probe records and up intervals only when ``records``."""
        d = asdict(self)
        if not records:
            del d["records"], d["intervals"], d["alive"], d["holders"]
        return d


# ---------------------------------------------------------------- the driver


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


class _Churn:
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
        """Probe rounds until ``duration_s`` (module docstring); returns every probe."""
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


def run_churn(params: ChurnParams, root: Path | None = None, *,
              log: Callable[[str], None] | None = None) -> ChurnResult:
    """Run one real-process experiment (module docstring).

    Args:
        params: the experiment.
        root: directory for the daemons' homes and logs (a temporary directory,
            removed afterwards, when None).
        log: called with progress lines.

    Returns:
        The measurement.

    Raises:
        TimeoutError: a daemon did not answer, the gateway did not connect or
            the cluster did not place the pins in time.
        RuntimeError: a daemon exited during start-up (its log is in the message).
    """
    say = log or (lambda line: None)
    if root is not None:
        return _Churn(params, root, say).run()
    tmp = Path(tempfile.mkdtemp(prefix="pinfold-churn-"))
    try:
        return _Churn(params, tmp, say).run()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def format_result(res: ChurnResult) -> list[str]:
    """Lines of text: one per k, and a summary."""
    prm = res.params
    lines = [(f"real daemons: N={prm.nodes} p={prm.p} mode={prm.mode} {prm.duration_s:.0f} s, "
              f"realized p {statistics.fmean(res.realized_p):.3f} "
              f"(scheduled {statistics.fmean(res.scheduled_p):.3f}), {res.restarts} restarts, "
              f"start-up {res.startup_s:.2f} s")]
    for r in res.rows:
        oracle = f" oracle {r.oracle:.4f}" if r.oracle is not None else ""
        lines.append(f"  k={r.k}: probes {r.successes}/{r.probes} = {r.measured:.4f} "
                     f"[{r.ci_low:.4f}, {r.ci_high:.4f}] formula {r.formula:.4f} "
                     f"(realized p: {r.formula_realized:.4f}){oracle} sim {r.sim:.4f}")
    if res.probe_errors:
        lines.append(f"  failed probes: {res.probe_errors}")
    return lines


def main(argv: list[str] | None = None) -> int:
    d = ChurnParams()
    ap = argparse.ArgumentParser(description="real-process availability experiment")
    ap.add_argument("--nodes", type=int, default=d.nodes)
    ap.add_argument("--p", type=float, default=d.p)
    ap.add_argument("--ks", default=",".join(map(str, d.ks)))
    ap.add_argument("--pins-per-k", type=int, default=d.pins_per_k)
    ap.add_argument("--duration", type=float, default=d.duration_s)
    ap.add_argument("--mean-up", type=float, default=d.mean_up_s)
    ap.add_argument("--mode", choices=("static", "cluster"), default="static")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", metavar="DIR", help="keep homes and logs in DIR")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    prm = ChurnParams(nodes=a.nodes, p=a.p, ks=tuple(int(x) for x in a.ks.split(",")),
                      pins_per_k=a.pins_per_k, duration_s=a.duration, mean_up_s=a.mean_up,
                      mode=a.mode, seed=a.seed)
    root = Path(a.keep) if a.keep else None
    if root is not None:
        root.mkdir(parents=True, exist_ok=True)
    res = run_churn(prm, root, log=lambda s: print(s, file=sys.stderr, flush=True))
    if a.json:
        print(json.dumps(res.as_dict(), sort_keys=True))
    else:
        print("\n".join(format_result(res)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
