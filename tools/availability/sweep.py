"""Simulator sweep: availability across p x k, without and with repair, and the target mode.

Every figure comes from ``pinfold.replication.simulate.run_simulation``, which
drives the real allocation, health and planner code on a simulated clock. A
configuration is run ``runs`` times with independent seeds (``seed``,
``seed + 1``, ...); its figure is the mean of the runs' measurements and its
interval is Student's t over those independent replications (``replication_ci``),
which needs no assumption about the time correlation inside a run. The static
and repair runs of one seed see the same node up/down history (the simulator's
common random numbers), so they can be compared run by run.

Checks (issue 5, "Report"):

- static placement (repair off) must agree with the formula ``1 - (1 - p)^k``:
  the formula lies inside the interval;
- with repair, availability must be at or above the formula: the interval
  reaches the formula or lies above it;
- availability targets (``pin add --availability P``): over many runs the pins'
  measured availability meets P (``target_sweep``).

Run ``python -m tools.availability.sweep [--quick]`` for a printed table; the
report (``python -m tools.availability.report``) writes the files.
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from pinfold.replication.allocation import replicas_needed
from pinfold.replication.simulate import SimParams, SimResult, run_simulation, t_quantile

__all__ = [
    "DAY",
    "QUICK_SWEEP",
    "QUICK_TARGETS",
    "SweepConfig",
    "SweepRow",
    "TargetConfig",
    "TargetRow",
    "replication_ci",
    "sweep",
    "target_sweep",
]

DAY = 86400.0


def replication_ci(values: Sequence[float], confidence: float) -> tuple[float, float, float]:
    """Mean of independent replications and its Student-t interval.

    Args:
        values: one measurement per independent run (at least 2).
        confidence: level in (0, 1), e.g. 0.99.

    Returns:
        ``(mean, low, high)``, clipped to [0, 1] (the values are probabilities).

    Raises:
        ValueError: fewer than 2 values or a confidence outside (0, 1).
    """
    if len(values) < 2:
        raise ValueError(f"replication_ci: needs at least 2 runs, got {len(values)}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"replication_ci: confidence must be in (0, 1), got {confidence}")
    m = statistics.fmean(values)
    sd = statistics.stdev(values)
    half = t_quantile(0.5 + confidence / 2, len(values) - 1) * sd / math.sqrt(len(values))
    return m, max(0.0, m - half), min(1.0, m + half)


@dataclass(frozen=True, slots=True, kw_only=True)
class SweepConfig:
    """The p x k sweep (issue 5: p in {0.5, 0.7, 0.9}, k in {1, 2, 3, 4}).

    Attributes:
        ps: node online fractions to sweep.
        ks: replication factors to sweep (each <= nodes).
        nodes: cluster size N.
        pins: pins per run.
        duration_s: simulated time per run, seconds.
        session_mean_s: mean online session, seconds (offline: x (1 - p) / p).
        grace_s: repair grace after a peer turns suspect, seconds.
        heartbeat_interval_s: heartbeat period, seconds.
        repair_bandwidth_Bps: a node's repair fetch speed, bytes/s.
        pin_size_bytes: size of each pinned DAG, bytes.
        runs: independent replications per configuration (>= 2).
        seed: seed of the first run; run r uses ``seed + r``.
        confidence: interval level.
    """

    ps: tuple[float, ...] = (0.5, 0.7, 0.9)
    ks: tuple[int, ...] = (1, 2, 3, 4)
    nodes: int = 10
    pins: int = 100
    duration_s: float = 3 * DAY
    session_mean_s: float = 3600.0
    grace_s: float = 60.0
    heartbeat_interval_s: float = 5.0
    repair_bandwidth_Bps: float = 50e6
    pin_size_bytes: int = 1 << 30
    runs: int = 8
    seed: int = 0
    confidence: float = 0.99

    def __post_init__(self) -> None:
        if self.runs < 2:
            raise ValueError(f"runs: must be >= 2 for an interval, got {self.runs}")
        if any(k > self.nodes for k in self.ks):
            raise ValueError(f"ks: every k must be <= nodes ({self.nodes}), got {self.ks}")

    def params(self, *, p: float, k: int, repair: bool, seed: int) -> SimParams:
        """The simulator parameters of one run."""
        return SimParams(nodes=self.nodes, p=p, k=k, pins=self.pins, repair=repair,
                         duration_s=self.duration_s, session_mean_s=self.session_mean_s,
                         grace_s=self.grace_s, heartbeat_interval_s=self.heartbeat_interval_s,
                         repair_bandwidth_Bps=self.repair_bandwidth_Bps,
                         pin_size_bytes=self.pin_size_bytes, confidence=self.confidence,
                         seed=seed)


@dataclass(frozen=True, slots=True, kw_only=True)
class SweepRow:
    """One (p, k, repair) configuration over ``runs`` seeds.

    Attributes:
        p, k, repair: the configuration.
        formula: ``1 - (1 - p)^k``.
        measured: mean over runs of the fraction of time a pin had an online full copy.
        ci_low, ci_high: interval of ``measured`` over the independent runs.
        runs: replications.
        run_means: each run's measurement, in seed order.
        repairs_per_pin_day: copies fetched by repair, per pin and simulated day.
        mean_holders: time-averaged holders a pin (any node state).
        lower_than_static: runs (seeds) where repair measured less than static
            placement on the same up/down history (0 for static rows).
        verdict: static: ``agrees`` (formula inside the interval) or
            ``disagrees``; repair: ``above`` (interval above the formula), ``at``
            (interval reaches it) or ``below``.
    """

    p: float
    k: int
    repair: bool
    formula: float
    measured: float
    ci_low: float
    ci_high: float
    runs: int
    run_means: tuple[float, ...]
    repairs_per_pin_day: float
    mean_holders: float
    lower_than_static: int
    verdict: str

    @property
    def ok(self) -> bool:
        """Whether the issue's check for this row holds."""
        return self.verdict in ("agrees", "above", "at")

    @property
    def downtime_ratio(self) -> float:
        """Unavailability the formula predicts over the one measured (inf when none was)."""
        miss = 1.0 - self.measured
        return math.inf if miss <= 0 else (1.0 - self.formula) / miss


def _verdict(repair: bool, formula: float, low: float, high: float) -> str:
    # A little slack for floating point: a run where every sample is 1.0 has
    # low == high == 1.0, and 1 - 0.1**4 must count as inside [0.9999, ...].
    eps = 1e-12
    if not repair:
        return "agrees" if low - eps <= formula <= high + eps else "disagrees"
    if low > formula + eps:
        return "above"
    return "at" if high + eps >= formula else "below"


def sweep(cfg: SweepConfig, *, progress: Callable[[str], None] | None = None
          ) -> list[SweepRow]:
    """Run the p x k sweep, static and with repair.

    Args:
        cfg: the sweep.
        progress: called with a line of text after each configuration.

    Returns:
        Rows ordered by (p, k, repair), static before repair.
    """
    rows: list[SweepRow] = []
    for p in cfg.ps:
        for k in cfg.ks:
            static: list[SimResult] = []
            for repair in (False, True):
                results = [run_simulation(cfg.params(p=p, k=k, repair=repair, seed=cfg.seed + r))
                           for r in range(cfg.runs)]
                if not repair:
                    static = results
                means = [r.measured for r in results]
                mean, low, high = replication_ci(means, cfg.confidence)
                formula = 1.0 - (1.0 - p) ** k
                row = SweepRow(
                    p=p, k=k, repair=repair, formula=formula, measured=mean, ci_low=low,
                    ci_high=high, runs=cfg.runs, run_means=tuple(means),
                    repairs_per_pin_day=statistics.fmean(r.repairs for r in results)
                    / (cfg.pins * cfg.duration_s / DAY),
                    mean_holders=statistics.fmean(r.mean_holders for r in results),
                    lower_than_static=sum(1 for a, b in zip(results, static, strict=True)
                                          if repair and a.measured < b.measured),
                    verdict=_verdict(repair, formula, low, high))
                rows.append(row)
                if progress is not None:
                    progress(format_sweep_row(row))
    return rows


def format_sweep_row(r: SweepRow) -> str:
    """One line of text for a sweep row."""
    return (f"p={r.p:.2f} k={r.k} {'repair' if r.repair else 'static'}: "
            f"formula {r.formula:.5f} measured {r.measured:.5f} "
            f"[{r.ci_low:.5f}, {r.ci_high:.5f}] holders {r.mean_holders:.2f} "
            f"-> {r.verdict}")


# ---------------------------------------------------------------- targets


@dataclass(frozen=True, slots=True, kw_only=True)
class TargetConfig:
    """Availability targets (``pin add --availability P``) over many runs.

    Variants per (p, target): the placement's prior p_i estimate equals the true
    p or is the default 0.9 (learned from observed uptime as the run goes on),
    each with static placement and with repair.

    Attributes:
        ps: node online fractions.
        targets: availability targets P.
        nodes, pins, duration_s, session_mean_s, grace_s, heartbeat_interval_s,
            repair_bandwidth_Bps, pin_size_bytes: as ``SweepConfig``.
        default_prior: the configured prior of the "default prior" variants.
        runs: independent replications per configuration.
        seed: seed of the first run.
        confidence: interval level.
    """

    ps: tuple[float, ...] = (0.5, 0.7, 0.9)
    targets: tuple[float, ...] = (0.9, 0.99, 0.999)
    nodes: int = 10
    pins: int = 50
    duration_s: float = 2 * DAY
    session_mean_s: float = 3600.0
    grace_s: float = 60.0
    heartbeat_interval_s: float = 5.0
    repair_bandwidth_Bps: float = 50e6
    pin_size_bytes: int = 1 << 30
    default_prior: float = 0.9
    runs: int = 10
    seed: int = 100
    confidence: float = 0.99


@dataclass(frozen=True, slots=True, kw_only=True)
class TargetRow:
    """One (p, target, prior, repair) configuration over ``runs`` seeds.

    Attributes:
        p: true online fraction of every node.
        target: the pins' availability target.
        prior: the p_i estimate placement starts from.
        repair: repair on.
        needed_k: holders the target needs at the true p
            (``ceil(ln(1 - P) / ln(1 - p))``).
        reachable: whether all ``nodes`` together reach the target at the true p.
        runs: replications.
        met_runs: runs whose measured availability was >= target.
        measured, ci_low, ci_high: mean over runs and its interval.
        mean_holders: time-averaged holders a pin.
        verdict: ``meets`` (mean >= target), ``within CI`` (mean below, interval
            reaches it), ``misses`` (interval below) or ``unreachable`` (the
            cluster is too small for the target).
    """

    p: float
    target: float
    prior: float
    repair: bool
    needed_k: int
    reachable: bool
    runs: int
    met_runs: int
    measured: float
    ci_low: float
    ci_high: float
    mean_holders: float
    verdict: str

    @property
    def variant(self) -> str:
        """``static`` or ``repair``, with the prior: e.g. ``repair, prior 0.9``."""
        return f"{'repair' if self.repair else 'static'}, prior {self.prior:g}"


def _target_variants(p: float, default_prior: float) -> Iterator[tuple[float, bool]]:
    priors = [p] if p == default_prior else [p, default_prior]
    for prior in priors:
        for repair in (False, True):
            yield prior, repair


def target_sweep(cfg: TargetConfig, *, progress: Callable[[str], None] | None = None
                 ) -> list[TargetRow]:
    """Run the target-availability configurations.

    Returns:
        Rows ordered by (p, target, prior (true p first), repair).
    """
    rows: list[TargetRow] = []
    for p in cfg.ps:
        for target in cfg.targets:
            for prior, repair in _target_variants(p, cfg.default_prior):
                results = [run_simulation(SimParams(
                    nodes=cfg.nodes, p=p, target=target, pins=cfg.pins, repair=repair,
                    p_prior=prior, duration_s=cfg.duration_s,
                    session_mean_s=cfg.session_mean_s, grace_s=cfg.grace_s,
                    heartbeat_interval_s=cfg.heartbeat_interval_s,
                    repair_bandwidth_Bps=cfg.repair_bandwidth_Bps,
                    pin_size_bytes=cfg.pin_size_bytes, confidence=cfg.confidence,
                    seed=cfg.seed + r)) for r in range(cfg.runs)]
                means = [r.measured for r in results]
                mean, low, high = replication_ci(means, cfg.confidence)
                reachable = 1.0 - (1.0 - p) ** cfg.nodes >= target - 1e-12
                if not reachable:
                    verdict = "unreachable"
                elif mean >= target:
                    verdict = "meets"
                elif high >= target:
                    verdict = "within CI"
                else:
                    verdict = "misses"
                row = TargetRow(p=p, target=target, prior=prior, repair=repair,
                                needed_k=replicas_needed(p, target), reachable=reachable,
                                runs=cfg.runs, met_runs=sum(1 for m in means if m >= target),
                                measured=mean, ci_low=low, ci_high=high,
                                mean_holders=statistics.fmean(r.mean_holders for r in results),
                                verdict=verdict)
                rows.append(row)
                if progress is not None:
                    progress(format_target_row(row))
    return rows


def format_target_row(r: TargetRow) -> str:
    """One line of text for a target row."""
    return (f"p={r.p:.2f} target={r.target:g} {r.variant}: measured {r.measured:.5f} "
            f"[{r.ci_low:.5f}, {r.ci_high:.5f}] met {r.met_runs}/{r.runs} "
            f"holders {r.mean_holders:.2f} (needed {r.needed_k}) -> {r.verdict}")


#: Small configurations for the default test suite (a few seconds).
QUICK_SWEEP = SweepConfig(ps=(0.5, 0.9), ks=(1, 2, 3), nodes=6, pins=30, duration_s=DAY,
                          runs=4)
QUICK_TARGETS = TargetConfig(ps=(0.7,), targets=(0.99,), nodes=6, pins=20, duration_s=DAY,
                             runs=4)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="the small test configurations")
    args = ap.parse_args(argv)
    scfg, tcfg = (QUICK_SWEEP, QUICK_TARGETS) if args.quick else (SweepConfig(), TargetConfig())
    rows = sweep(scfg, progress=print)
    trows = target_sweep(tcfg, progress=print)
    bad = [r for r in rows if not r.ok] + [r for r in trows if r.verdict == "misses"]
    print(f"{len(rows)} sweep rows, {len(trows)} target rows; {len(bad)} not as expected")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
