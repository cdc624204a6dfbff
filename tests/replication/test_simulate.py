"""The availability simulator (pinfold/replication/simulate.py) against the formula 1 - prod(1 - p_i)."""

from __future__ import annotations

import json

import pytest
from pinfold.replication.errors import SimulationError
from pinfold.replication.simulate import (
    SimParams,
    SimResult,
    run_simulation,
)

DAY = 86400.0
QUICK = {"nodes": 8, "pins": 60, "duration_s": 2 * DAY}


def test_same_seed_same_result_other_seed_other_result() -> None:
    a = run_simulation(SimParams(p=0.7, k=2, seed=7, **QUICK))
    b = run_simulation(SimParams(p=0.7, k=2, seed=7, **QUICK))
    assert a == b
    assert json.dumps(a.as_dict(), sort_keys=True) == json.dumps(b.as_dict(), sort_keys=True)
    c = run_simulation(SimParams(p=0.7, k=2, seed=8, **QUICK))
    assert c.batch_means != a.batch_means


@pytest.mark.parametrize(("p", "k"), [(0.5, 2), (0.7, 3), (0.9, 2)])
def test_static_placement_matches_the_formula_within_the_99pct_interval(p: float, k: int) -> None:
    r = run_simulation(SimParams(p=p, k=k, repair=False, nodes=10, pins=100,
                                 duration_s=5 * DAY, seed=1))
    assert r.formula == pytest.approx(1 - (1 - p) ** k)
    assert r.ci_low <= r.formula <= r.ci_high
    assert r.ci_high - r.ci_low < 0.15  # the interval says something
    assert r.repairs == 0 and r.mean_holders == pytest.approx(k)


def test_static_placement_with_heterogeneous_nodes() -> None:
    ps = (0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.9, 0.8)
    r = run_simulation(SimParams(p=ps, nodes=8, k=2, repair=False, pins=80,
                                 duration_s=5 * DAY, seed=2))
    # The formula averages 1 - prod(1 - p_i) over each pin's own holders.
    assert 1 - 0.5 * 0.5 < r.formula < 1 - 0.05 * 0.1
    assert r.ci_low <= r.formula <= r.ci_high


@pytest.mark.parametrize(("p", "k"), [(0.5, 1), (0.5, 2), (0.7, 2), (0.9, 3)])
def test_repair_never_lowers_availability(p: float, k: int) -> None:
    # Same seed: both runs see the same node up/down history (common random numbers).
    kw = {"nodes": 6, "p": p, "k": k, "pins": 30, "duration_s": DAY, "seed": 3}
    static = run_simulation(SimParams(repair=False, **kw))
    repaired = run_simulation(SimParams(repair=True, **kw))
    assert repaired.measured >= static.measured
    if k == 1:
        # A lone copy has no source while its holder is away: nothing to repair from.
        assert repaired.repairs == 0 and repaired.measured == static.measured
    else:
        assert repaired.repairs > 0 and repaired.repair_bytes == repaired.repairs * (1 << 30)


def test_target_availability_places_enough_holders() -> None:
    r = run_simulation(SimParams(p=0.9, target=0.999, repair=False, nodes=10, pins=50,
                                 duration_s=DAY, seed=4))
    assert r.params.rmin == 1 and r.params.effective_rmax == 10
    assert r.mean_holders == pytest.approx(3)  # the prior 0.9: three holders reach 0.999
    assert r.formula == pytest.approx(0.999)


def test_as_dict_has_the_cli_contract() -> None:
    r = run_simulation(SimParams(p=0.8, k=2, repair=False, nodes=4, pins=10, duration_s=DAY))
    d = r.as_dict()
    assert {"formula", "measured", "ci_low", "ci_high", "nodes", "p", "k", "pins", "repair",
            "seed", "duration_s", "rmin", "rmax"} <= d.keys()
    assert d["ci_low"] <= d["measured"] <= d["ci_high"]
    json.dumps(d)  # JSON-ready
    assert isinstance(r, SimResult)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"nodes": 0}, "nodes"),
    ({"p": 0.0}, "p"),
    ({"p": (0.5, 0.5), "nodes": 3}, "one value per node"),
    ({"k": 11}, "k"),
    ({"target": 1.0}, "target"),
    ({"k": 3, "rmax": 2}, "rmax"),
    ({"duration_s": -1.0}, "duration_s"),
    ({"warmup_s": 1e9}, "warmup_s"),
    ({"batches": 1}, "batches"),
    ({"session_dist": "pareto"}, "session_dist"),
])
def test_bad_parameters_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(SimulationError, match=message):
        SimParams(**kwargs)


def test_a_run_without_any_outage_still_gets_an_honest_interval() -> None:
    r = run_simulation(SimParams(p=1.0, k=1, nodes=3, pins=5, duration_s=DAY, repair=False))
    assert r.measured == 1.0 and r.formula == 1.0
    assert r.ci_high == 1.0 and 0.9 < r.ci_low < 1.0  # Wilson over 200 slices, not [1, 1]
