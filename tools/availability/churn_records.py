"""The churn experiment's parameters and results: ``ChurnParams`` (validated when
built), ``ProbeRecord`` per probe, ``KResult`` per replication factor and
``ChurnResult`` for a whole run (``tools.availability.churn`` describes the experiment).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .churn_model import Interval


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
