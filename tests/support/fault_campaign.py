"""The fault campaign's model (``tests/reliability/test_faults.py``): five clustered
daemons behind a ``faultnet.FaultNet``, the pins the test added and removed, a
sampler's view of which node had which pin pinned when, and the analysis of those
samples into first-replication times and below-rmin ``Episode``s.

``Campaign`` drives the workload (add, unpin, kill, restart), decides convergence
(every node lists the model's pinset, every pin has rmin..rmax ``pinned`` holders
among the up nodes) and describes the cluster when it does not converge. Times are
``time.monotonic()`` seconds.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from pinfold.daemon.rpc.wire import RpcError

from tests.support import faultnet
from tests.support.daemon import DaemonProcess
from tests.support.wait import wait_until

N = 5
RMIN, RMAX = 2, 3
SAMPLE_S = 0.3
CONVERGE_TIMEOUT_S = 120.0


@dataclass
class PinRecord:
    cid: str
    added_at: float
    rmax: int
    origin: int
    removed_at: float | None = None


@dataclass
class Sample:
    at: float
    up: frozenset[int]
    pinned: dict[int, frozenset[str]]
    complete: bool = True  # every node not known to be down answered

    def holders(self, cid: str) -> int:
        return sum(1 for i in self.up if cid in self.pinned.get(i, frozenset()))


@dataclass
class Campaign:
    net: faultnet.FaultNet
    nodes: list[DaemonProcess]
    ids: list[str]
    rng: random.Random
    pins: dict[str, PinRecord] = field(default_factory=dict)
    down: set[int] = field(default_factory=set)
    samples: list[Sample] = field(default_factory=list)
    down_intervals: list[tuple[float, float | None]] = field(default_factory=list)
    partitions: list[tuple[float, float | None, frozenset[int]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    refused: int = 0
    _n_files: int = 0

    # ------------------------------------------------------------ observation

    def pinned_on(self, i: int) -> frozenset[str] | None:
        try:
            with self.nodes[i].client() as c:
                return frozenset(p["cid"] for p in c.pins(state="pinned"))
        except Exception:  # noqa: BLE001 - a node being killed or restarted
            return None

    def sample(self, *, both_ways: bool = False) -> Sample:
        """Every up node's pinned set, read one node after another.

        With ``both_ways`` (the sampler's samples, from which episodes below rmin
        are found) the nodes are read in order and then in reverse, and a node
        holds what it listed in either pass. The reads of one pass are spread
        over time (seconds, under load), so one pass can read the holder that
        takes over a copy before it has pinned it and the holder that hands the
        copy over after it released it: one copy seen where there were always
        two (the planner drops an extra only once the newcomer reports pinned).
        The reverse pass reads the newcomer again after that release. A drop
        below rmin that lasts the sample is seen in both passes.
        """
        with self.lock:
            up = frozenset(i for i in range(N) if i not in self.down)
        pinned: dict[int, frozenset[str]] = {}
        order = sorted(up)
        for i in [*order, *reversed(order)] if both_ways else order:
            got = self.pinned_on(i)
            if got is not None:
                pinned[i] = pinned.get(i, frozenset()) | got
        with self.lock:  # a node killed while we read it does not count as up
            alive = frozenset(i for i in range(N) if i not in self.down)
        # A running node that did not answer (busy starting, a slow RPC), or that
        # came back while the others were read and so was not read at all, is not
        # known to hold nothing: such a sample does not count for episodes.
        return Sample(time.monotonic(), alive & frozenset(pinned), pinned,
                      complete=alive <= frozenset(pinned))

    def sampler(self) -> None:
        while not self.stop.is_set():
            s = self.sample(both_ways=True)
            with self.lock:
                self.samples.append(s)
            self.stop.wait(SAMPLE_S)

    def live(self) -> set[str]:
        return {c for c, r in self.pins.items() if r.removed_at is None}

    # ------------------------------------------------------------ workload

    def up_nodes(self) -> list[int]:
        return [i for i in range(N) if i not in self.down]

    def add_pin(self, i: int | None = None) -> str | None:
        """Add a file on node ``i`` (random) and pin it; None when the node refused
        the pin because it sees fewer live peers than rmin (a node cut off alone,
        as IPFS Cluster refuses a pin it cannot allocate)."""
        i = self.rng.choice(self.up_nodes()) if i is None else i
        self._n_files += 1
        size = self.rng.randrange(16 * 1024, 384 * 1024)
        data = random.Random(self.rng.random()).randbytes(size)
        rmax = self.rng.choice((RMIN, RMAX))  # some pins have no spare copy
        with self.nodes[i].client() as c:
            cid = c.add(data, pin=False)
            try:
                c.pin(cid, rmin=RMIN, rmax=rmax)
            except RpcError as exc:
                if "could never be healthy" not in str(exc):
                    raise
                self.refused += 1
                return None
        self.pins[cid] = PinRecord(cid, time.monotonic(), rmax, i)
        return cid

    def unpin(self) -> str | None:
        """Unpin a random live pin through the node that pinned it (during a
        partition the other side may not know it yet: ``not in the pinset``)."""
        up = set(self.up_nodes())
        live = sorted(c for c in self.live() if self.pins[c].origin in up)
        if not live:
            return None
        cid = self.rng.choice(live)
        with self.nodes[self.pins[cid].origin].client() as c:
            c.unpin(cid)
        self.pins[cid].removed_at = time.monotonic()
        return cid

    def victim(self) -> int | None:
        """The node (not 0, the bootstrap peer) holding most pins that have no spare
        copy: killing it drops those pins below rmin."""
        tight = Counter(i for c in self.live() if self.pins[c].rmax == RMIN
                        for i in self.holders_of(c) if i != 0)
        return tight.most_common(1)[0][0] if tight else None

    def holders_of(self, cid: str) -> list[int]:
        with self.lock:
            last = self.samples[-1] if self.samples else self.sample()
        return [i for i in last.up if cid in last.pinned.get(i, frozenset())]

    def kill(self, i: int) -> None:
        with self.lock:
            self.down.add(i)
            self.down_intervals.append((time.monotonic(), None))
        self.nodes[i].kill9()

    def restart(self, i: int) -> None:
        self.nodes[i].start(wait=False)
        self.nodes[i].wait_ready()
        with self.lock:
            self.down.discard(i)
            start, _ = self.down_intervals[-1]
            self.down_intervals[-1] = (start, time.monotonic())

    # ------------------------------------------------------------ convergence

    def converged(self) -> bool:
        s = self.sample()
        if len(s.up) != N:
            return False
        live = self.live()
        for i in range(N):
            try:
                with self.nodes[i].client() as c:
                    listed = {p["cid"] for p in c.pins()}
                    alive = sum(1 for p in c.cluster_peers() if p["state"] == "alive")
            except Exception:  # noqa: BLE001
                return False
            if listed != live or alive != N:
                return False
        for cid in live:
            if not RMIN <= s.holders(cid) <= self.pins[cid].rmax:
                return False
        removed = set(self.pins) - live
        return all(s.holders(cid) == 0 for cid in removed)

    def wait_converged(self, what: str) -> float:
        t0 = time.monotonic()
        try:
            wait_until(self.converged, timeout_s=CONVERGE_TIMEOUT_S, interval_s=0.25,
                     what=f"the cluster to converge after {what}")
        except TimeoutError:
            raise AssertionError(f"no convergence after {what}: {self.describe()}") from None
        return time.monotonic() - t0

    def describe(self) -> str:
        s = self.sample()
        live = self.live()
        bad = {c[:16]: s.holders(c) for c in live
               if not RMIN <= s.holders(c) <= self.pins[c].rmax}
        lingering = {c[:16]: s.holders(c) for c in set(self.pins) - live if s.holders(c)}
        views = []
        for i in range(N):
            try:
                with self.nodes[i].client() as c:
                    conns = sorted(self.ids.index(p["peer_id"]) for p in c.peers()
                                   if p["peer_id"] in self.ids)
                    health = {self.ids.index(p["peer_id"]): p["state"][0]
                              for p in c.cluster_peers()}
                    st = {}
                    for cid in list(bad)[:3]:
                        full = next(x for x in live if x.startswith(cid))
                        stat = c.status(full)
                        st[cid] = {"local": stat.get("local_state"),
                                   "holders": [(self.ids.index(h["peer_id"]), h["state"])
                                               for h in stat["holders"]
                                               if h["peer_id"] in self.ids]}
                views.append(f"n{i}: connected {conns} health {health} status {st}")
            except Exception as exc:  # noqa: BLE001
                views.append(f"n{i}: {exc}")
        return (f"up {sorted(s.up)}, {len(live)} live pins, out of range {bad}, "
                f"removed but held {lingering}, faults {self.net.stats()}\n"
                + "\n".join(views))

    # ------------------------------------------------------------ analysis

    def component(self, node: int, at: float) -> set[int]:
        """The nodes ``node`` could reach at time ``at`` (its side of a partition)."""
        for start, end, side in self.partitions:
            if start <= at and (end is None or at < end):
                return set(side) if node in side else set(range(N)) - set(side)
        return set(range(N))

    def repairable(self, cid: str, s: Sample) -> bool:
        """Could the cluster restore ``cid`` to rmin at sample ``s``: some holder that
        is up reaches at least rmin up nodes (itself included)?"""
        return any(len(self.component(h, s.at) & s.up) >= RMIN
                   for h in s.up if cid in s.pinned.get(h, frozenset()))

    def episodes(self, since: float, until: float) -> tuple[list[float], list[Episode]]:
        """First-replication times of pins added in [since, until), and every
        below-rmin episode there."""
        with self.lock:
            samples = [s for s in self.samples if since <= s.at <= until and s.complete]
            downs = list(self.down_intervals)
        initial: list[float] = []
        out: list[Episode] = []
        for rec in self.pins.values():
            reached = False
            below: list[Sample] = []
            for k, s in enumerate(samples):
                if s.at < rec.added_at or (rec.removed_at is not None and s.at >= rec.removed_at):
                    continue
                n = s.holders(rec.cid)
                if not reached:
                    if n >= RMIN:
                        reached = True
                        if rec.added_at >= since:
                            initial.append(s.at - rec.added_at)
                    continue
                last = k == len(samples) - 1
                if n < RMIN:
                    below.append(s)
                if below and (n >= RMIN or last):
                    end = s.at
                    fixable = sum(b2.at - b1.at for b1, b2 in zip(below, [*below[1:], s])
                                  if self.repairable(rec.cid, b1))
                    trace: list[tuple[float, tuple[int, ...], bool]] = []
                    for b in [*below, s]:
                        hs = tuple(sorted(h for h in b.up if rec.cid in b.pinned.get(h, ())))
                        if not trace or trace[-1][1:] != (hs, self.repairable(rec.cid, b)):
                            trace.append((round(b.at - since, 1), hs,
                                          self.repairable(rec.cid, b)))
                    out.append(Episode(rec.cid, end - below[0].at, fixable,
                                       _overlaps(downs, below[0].at, end), trace))
                    below = []
        return initial, out


@dataclass
class Episode:
    """A pin below rmin: ``seconds`` in all, ``repairable_s`` of them with a holder
    that could reach enough up nodes; ``node_down``: a node was down meanwhile."""

    cid: str
    seconds: float
    repairable_s: float
    node_down: bool
    trace: list[tuple[float, tuple[int, ...], bool]] = field(default_factory=list)


def _overlaps(downs: list[tuple[float, float | None]], a: float, b: float) -> bool:
    return any(start <= b and (end is None or end >= a) for start, end in downs)
