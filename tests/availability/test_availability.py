"""Availability measurement (issue 5): the sweep, the churn schedule, the report, and
a smoke run of real daemons killed and restarted under a gateway's probes.

The long real-process runs (default configuration, static and cluster) are in
``test_availability_slow.py`` (marked slow; ``make availability`` runs the full
report).
"""

from __future__ import annotations

import json
import math
import statistics

import pytest
from pinfold.daemon.cli.main import main as cli_main
from pinfold.replication.health import HealthConfig, HealthView
from pinfold.replication.holdings import Holdings
from pinfold.replication.pinset import PinSet
from pinfold.replication.planner import Policy, plan
from pinfold.replication.types import Heartbeat, Pin, PinAction

from tools.availability.churn import (
    ChurnParams,
    churn_schedule,
    covered_fraction,
    merge_intervals,
    run_churn,
    run_spread,
    static_holders,
)
from tools.availability.report import nines, real_rows, write_real, write_summary, write_sweep
from tools.availability.sweep import (
    QUICK_SWEEP,
    QUICK_TARGETS,
    SweepConfig,
    replication_ci,
    sweep,
    target_sweep,
)

# ---------------------------------------------------------------- simulator sweep


@pytest.fixture(scope="module")
def quick_rows():
    return sweep(QUICK_SWEEP)


def test_sweep_static_agrees_with_the_formula_and_repair_is_at_or_above(quick_rows) -> None:
    assert len(quick_rows) == len(QUICK_SWEEP.ps) * len(QUICK_SWEEP.ks) * 2
    for r in quick_rows:
        assert r.formula == pytest.approx(1 - (1 - r.p) ** r.k)
        if r.repair:
            assert r.verdict in ("above", "at"), r
        else:
            assert r.verdict == "agrees", r
            assert r.ci_low <= r.formula <= r.ci_high
            assert r.ci_high - r.ci_low < 0.35  # the interval says something
            assert r.mean_holders == pytest.approx(r.k)


def test_sweep_repair_beats_static_when_there_is_a_copy_to_repair_from(quick_rows) -> None:
    by = {(r.p, r.k, r.repair): r for r in quick_rows}
    for p in QUICK_SWEEP.ps:
        for k in QUICK_SWEEP.ks:
            static, repaired = by[(p, k, False)], by[(p, k, True)]
            # Same seeds, same node histories: repair never does worse on average...
            assert repaired.measured >= static.measured
            if k == 1:
                # ...and a lone copy has no source while its holder is away.
                assert repaired.measured == static.measured
                assert repaired.repairs_per_pin_day == 0
            else:
                assert repaired.measured > static.measured
                assert repaired.repairs_per_pin_day > 0
                assert repaired.ci_low > repaired.formula or repaired.measured == 1.0
    # At p = 0.9, k = 2 repair cuts the downtime the formula predicts several times over.
    assert by[(0.9, 2, True)].downtime_ratio > 2


def test_sweep_is_deterministic_for_its_seeds() -> None:
    cfg = SweepConfig(ps=(0.7,), ks=(2,), nodes=5, pins=10, duration_s=6 * 3600.0, runs=2)
    a, b = sweep(cfg), sweep(cfg)
    assert a == b
    other = sweep(SweepConfig(ps=(0.7,), ks=(2,), nodes=5, pins=10, duration_s=6 * 3600.0,
                              runs=2, seed=50))
    assert [r.run_means for r in other] != [r.run_means for r in a]


def test_targets_are_met_when_placement_knows_p_or_repair_learns_it() -> None:
    rows = target_sweep(QUICK_TARGETS)
    by = {(r.prior, r.repair): r for r in rows}
    assert set(by) == {(0.7, False), (0.7, True), (0.9, False), (0.9, True)}
    for (prior, repair), r in by.items():
        assert r.needed_k == 4  # ceil(ln(0.01) / ln(0.3))
        if repair or prior == r.p:
            assert r.verdict in ("meets", "within CI"), r
    # Static placement from the optimistic default prior places 2 copies, not 4: it misses.
    assert by[(0.9, False)].verdict == "misses"
    assert by[(0.9, False)].mean_holders == pytest.approx(2)
    # With repair the health view learns p_i = 0.7 and adds holders.
    assert by[(0.9, True)].mean_holders > 3


def test_replication_ci() -> None:
    runs = [0.9, 0.92, 0.88, 0.91, 0.95, 0.87, 0.9, 0.93]
    m, lo, hi = replication_ci(runs, 0.99)
    assert m == pytest.approx(statistics.fmean(runs))
    # Student t, 7 degrees of freedom: t(0.995, 7) = 3.4995.
    assert hi - m == pytest.approx(3.4995 * statistics.stdev(runs) / math.sqrt(8), rel=1e-3)
    assert lo < m < hi
    assert replication_ci([1.0, 1.0], 0.99) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="at least 2 runs"):
        replication_ci([0.5], 0.99)


# ---------------------------------------------------------------- churn schedule (pure)


def test_churn_schedule_is_seeded_and_well_formed() -> None:
    a = churn_schedule(nodes=4, p=0.7, duration_s=500.0, mean_up_s=20.0, seed=3)
    assert a == churn_schedule(nodes=4, p=0.7, duration_s=500.0, mean_up_s=20.0, seed=3)
    assert a != churn_schedule(nodes=4, p=0.7, duration_s=500.0, mean_up_s=20.0, seed=4)
    # A node's schedule does not depend on how many nodes there are.
    assert churn_schedule(nodes=2, p=0.7, duration_s=500.0, mean_up_s=20.0, seed=3) == a[:2]
    for s in a:
        assert s.up == tuple(merge_intervals(s.up))  # sorted, disjoint
        assert all(0.0 <= x < y <= 500.0 for x, y in s.up)
    everyone = churn_schedule(nodes=3, p=1.0, duration_s=60.0, mean_up_s=5.0, seed=0)
    assert all(s.up == ((0.0, 60.0),) for s in everyone)


def test_churn_schedule_online_fraction_is_p() -> None:
    for p in (0.5, 0.7, 0.9):
        s = churn_schedule(nodes=1, p=p, duration_s=400_000.0, mean_up_s=20.0, seed=1)[0]
        assert s.up_fraction == pytest.approx(p, abs=0.015)
        ups = [b - a for a, b in s.up[1:-1]]
        assert statistics.fmean(ups) == pytest.approx(20.0, rel=0.05)


def test_churn_schedule_minimum_offline_session_keeps_p() -> None:
    for p in (0.5, 0.9):
        s = churn_schedule(nodes=1, p=p, duration_s=400_000.0, mean_up_s=20.0, seed=2,
                           min_down_s=1.5)[0]
        downs = [b[0] - a[1] for a, b in zip(s.up, s.up[1:], strict=False)]
        assert min(downs) >= 1.5 - 1e-9
        assert statistics.fmean(downs) == pytest.approx(20.0 * (1 - p) / p, rel=0.05)
        assert s.up_fraction == pytest.approx(p, abs=0.015)
    # A mean offline time below the floor: every offline session is exactly the mean.
    s = churn_schedule(nodes=1, p=0.95, duration_s=5000.0, mean_up_s=10.0, seed=2,
                       min_down_s=1.5)[0]
    downs = [b[0] - a[1] for a, b in zip(s.up, s.up[1:], strict=False)]
    assert downs and all(d == pytest.approx(10.0 * 0.05 / 0.95) for d in downs)


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"nodes": 0}, "nodes"), ({"min_down_s": -1.0}, "min_down_s"), ({"p": 0.0}, "p"), ({"p": 1.5}, "p"),
    ({"duration_s": 0.0}, "duration_s"), ({"mean_up_s": -1.0}, "mean_up_s"),
])
def test_churn_schedule_names_bad_arguments(kwargs: dict, name: str) -> None:
    args = {"nodes": 2, "p": 0.5, "duration_s": 10.0, "mean_up_s": 1.0, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=f"^{name}:"):
        churn_schedule(**args)


def test_covered_fraction() -> None:
    assert merge_intervals([(5, 6), (0, 2), (1, 3), (3, 3.5), (7, 7)]) == [(0, 3.5), (5, 6)]
    assert covered_fraction([[(0, 2)], [(1, 3)], [(8, 20)]], 0.0, 10.0) == pytest.approx(0.5)
    assert covered_fraction([], 0.0, 10.0) == 0.0
    # Independent holders: over a long span the union approaches 1 - (1 - p)^k.
    sched = churn_schedule(nodes=3, p=0.5, duration_s=200_000.0, mean_up_s=10.0, seed=2)
    got = covered_fraction([s.up for s in sched], 0.0, 200_000.0)
    assert got == pytest.approx(1 - math.prod(1 - s.up_fraction for s in sched), abs=0.01)
    with pytest.raises(ValueError, match="empty span"):
        covered_fraction([[(0, 1)]], 2.0, 2.0)


def test_run_spread_shrinks_with_run_length_and_vanishes_without_churn() -> None:
    holders = [[0], [1], [2, 3]]
    short = run_spread(holders, nodes=4, p=0.7, duration_s=100.0, mean_up_s=20.0, draws=200)
    long = run_spread(holders, nodes=4, p=0.7, duration_s=2000.0, mean_up_s=20.0, draws=200)
    assert 0 < long < short / 2
    assert run_spread(holders, nodes=4, p=1.0, duration_s=100.0, mean_up_s=20.0) == 0.0


def test_static_holders_are_the_planners_choice() -> None:
    """The harness's static placement equals the real planner's first placement."""
    peers = [f"node-{i}" for i in range(6)]
    pinset, holdings, health = PinSet(), Holdings(), HealthView(HealthConfig())
    for q in peers:
        health.observe(Heartbeat(peer_id=q, capacity_bytes=1 << 40, free_bytes=1 << 40), 0.0)
    cids = [bytes((1, 0x55, 0x12, 32)) + bytes([i]) * 32 for i in range(12)]
    for i, cid in enumerate(cids):
        pinset.put(Pin(cid=cid, rmin=3, rmax=3), ts=i + 1, peer_id=peers[0])
    chosen: dict[bytes, set[str]] = {}
    for a in plan(pinset, holdings, health, Policy(self_peer_id=None), 0.0):
        if isinstance(a, PinAction):
            chosen.setdefault(a.cid, set()).add(a.peer_id)
    for cid in cids:
        mine = static_holders(cid, peers, 3)
        assert len(set(mine)) == 3
        assert {peers[i] for i in mine} == chosen[cid]


# ---------------------------------------------------------------- report writers


def test_report_writes_tables_and_a_plot(tmp_path, quick_rows) -> None:
    fake_real = [{
        "params": {"p": 0.9, "mode": "static", "nodes": 3, "duration_s": 10.0,
                   "mean_up_s": 3.0},
        "realized_p": [0.9, 0.85, 0.95],
        "rows": [{"k": 1, "pins": 2, "probes": 20, "successes": 18, "measured": 0.9,
                  "ci_low": 0.8, "ci_high": 1.0, "probe_half": 0.05, "run_sd": 0.04,
                  "formula": 0.9, "formula_realized": 0.9, "oracle": 0.89, "sim": 0.9,
                  "sim_ci_low": 0.89, "sim_ci_high": 0.91},
                 {"k": 2, "pins": 2, "probes": 20, "successes": 20, "measured": 1.0,
                  "ci_low": 1.0, "ci_high": 1.0, "probe_half": 0.0, "run_sd": 0.0,
                  "formula": 0.99, "formula_realized": 0.99, "oracle": 1.0, "sim": 0.99,
                  "sim_ci_low": 0.98, "sim_ci_high": 1.0}]}]
    real = real_rows(fake_real)
    assert [r["verdict"] for r in real] == ["agrees", "disagrees"]
    write_sweep(tmp_path, quick_rows, QUICK_SWEEP)
    write_real(tmp_path, real)
    summary = write_summary(tmp_path, quick_rows, real, "make availability")
    assert "make availability" in summary
    assert "| 0.9 | 1 | 0.9000 |" in summary and "0.900 [0.800, 1.000]" in summary
    csv_lines = (tmp_path / "sweep.csv").read_text().splitlines()
    assert csv_lines[0].startswith("p,k,repair,formula,measured,ci_low,ci_high")
    assert len(csv_lines) == 1 + len(quick_rows)
    assert "| 0.9 | 0.900 | static | 2 |" in (tmp_path / "real.md").read_text()
    assert nines(0.999) == pytest.approx(3) and nines(1.0) == 5.0
    pytest.importorskip("matplotlib")  # the `report` extra (make availability installs it)
    from tools.availability.report import plot

    png = plot(tmp_path, quick_rows, real)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


# ---------------------------------------------------------------- CLI


def test_cli_simulate_takes_the_issue_options(capsys) -> None:
    rc = cli_main(["simulate", "--json", "--nodes", "4", "--p", "0.9,0.8,0.7,0.6",
                   "--availability", "0.95", "--pins", "5", "--duration", "20000",
                   "--session", "600", "--grace", "10", "--heartbeat", "2",
                   "--repair-bandwidth", "1e7", "--pin-size", "1000000", "--p-prior", "0.8",
                   "--seed", "3"])
    assert rc == 0
    d = json.loads(capsys.readouterr().out)
    assert d["p"] == [0.9, 0.8, 0.7, 0.6] and d["target"] == 0.95
    assert (d["session_mean_s"], d["grace_s"], d["heartbeat_interval_s"]) == (600, 10, 2)
    assert (d["repair_bandwidth_Bps"], d["pin_size_bytes"], d["p_prior"]) == (1e7, 10**6, 0.8)
    assert d["rmin"] == 1 and d["rmax"] == 4
    assert 0 <= d["ci_low"] <= d["measured"] <= d["ci_high"] <= 1


def test_cli_simulate_refuses_bad_options(capsys) -> None:
    assert cli_main(["simulate", "--k", "2", "--target", "0.9"]) == 2
    assert "--k cannot be combined" in capsys.readouterr().err
    assert cli_main(["simulate", "--nodes", "3", "--p", "0.7,0.8"]) == 1
    assert "one value per node" in capsys.readouterr().err


# ---------------------------------------------------------------- real daemons (smoke)


def test_real_daemons_smoke(tmp_path) -> None:
    """Two churning daemons and a gateway for 10 s: the harness kills and restarts on
    schedule, and the gateway only ever serves a pin while one of its holders runs."""
    prm = ChurnParams(nodes=2, p=0.6, ks=(1, 2), pins_per_k=2, duration_s=10.0, mean_up_s=3.0,
                      seed=1)
    sched = churn_schedule(nodes=2, p=0.6, duration_s=10.0, mean_up_s=3.0, seed=1,
                           min_down_s=prm.min_down_s)
    assert sum(len(s.up) for s in sched) >= 4  # the schedule has restarts in it
    res = run_churn(prm, tmp_path)
    assert res.restarts >= 2
    rounds = math.ceil((prm.duration_s / (prm.fetch_timeout_s + prm.round_slack_s)) - 0.25)
    assert len(res.records) == rounds * min(prm.probes_per_round, 4)
    assert {r.k for r in res.rows} == {1, 2}
    json.dumps(res.as_dict())
    for r in res.records:
        holders = res.holders[r.pin]
        assert len(holders) == r.k
        ran = covered_fraction([res.alive[h] for h in holders], r.t, r.t + r.latency_s + 1e-3)
        if r.ok:
            # Served by the network, never from the gateway's own store: some holder's
            # process was running during the fetch.
            assert ran > 0, r
    # Probes while a holder answered throughout the fetch window succeed.
    steady = [r for r in res.records
              if covered_fraction([res.intervals[h] for h in res.holders[r.pin]],
                                  max(0.0, r.t - 1.0), r.t + prm.fetch_timeout_s) == 1.0]
    assert steady, "no probe ran while a holder was steadily up"
    assert sum(r.ok for r in steady) >= 0.8 * len(steady)
    # The k=2 pins were at least as available as the k=1 pins.
    by_k = {r.k: r for r in res.rows}
    assert by_k[2].oracle >= by_k[1].oracle - 1e-9
