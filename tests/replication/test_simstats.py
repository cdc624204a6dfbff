"""Confidence intervals of the simulator (pinfold/replication/simstats.py)."""

from __future__ import annotations

import random
import statistics

import pytest
from pinfold.replication.simstats import mean_ci, t_quantile, wilson


def test_t_quantile() -> None:
    assert t_quantile(0.995, 19) == pytest.approx(2.861, abs=2e-3)
    assert t_quantile(0.975, 9) == pytest.approx(2.262, abs=2e-3)
    assert t_quantile(0.975, 1000) == pytest.approx(1.962, abs=2e-3)


def test_mean_ci_widens_for_autocorrelated_series() -> None:
    rnd = random.Random(5)
    iid = [rnd.gauss(0.5, 0.1) for _ in range(400)]
    m, half = mean_ci(iid, 0.99)
    naive = t_quantile(0.995, 399) * statistics.stdev(iid) / len(iid) ** 0.5
    assert abs(m - 0.5) < half and half == pytest.approx(naive, rel=0.35)
    ar, x = [], 0.0
    for _ in range(400):  # AR(1) with rho = 0.9: ~19x the variance of the mean
        x = 0.9 * x + rnd.gauss(0, 0.1)
        ar.append(0.5 + x)
    _, half_ar = mean_ci(ar, 0.99)
    naive_ar = t_quantile(0.995, 399) * statistics.stdev(ar) / len(ar) ** 0.5
    assert half_ar > 2.5 * naive_ar
    assert mean_ci([0.7] * 10, 0.99) == (0.7, 0.0)


def test_wilson_interval_of_a_proportion() -> None:
    lo, hi = wilson(200, 200, 0.99)
    assert hi == 1.0 and 0.9 < lo < 1.0
    lo, hi = wilson(50, 100, 0.95)
    assert lo == pytest.approx(0.404, abs=2e-3) and hi == pytest.approx(0.596, abs=2e-3)
