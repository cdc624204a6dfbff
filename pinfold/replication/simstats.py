"""Confidence intervals for the availability simulator's measurements.

``mean_ci`` (the mean of an autocorrelated series with Geyer's initial
positive sequence), ``t_quantile`` (Student's t) and ``wilson`` (a binomial
proportion). Pure: the standard library only.
"""

from __future__ import annotations

import math
import statistics

__all__ = ["mean_ci", "t_quantile", "wilson"]


def t_quantile(q: float, df: int) -> float:
    """Quantile of Student's t distribution (Cornish-Fisher expansion; error < 1e-3 for df >= 3).

    Args:
        q: probability in (0, 1).
        df: degrees of freedom (>= 1).
    """
    z = statistics.NormalDist().inv_cdf(q)
    n = float(df)
    z2 = z * z
    return (z
            + z * (z2 + 1) / (4 * n)
            + z * (5 * z2 * z2 + 16 * z2 + 3) / (96 * n**2)
            + z * (3 * z2**3 + 19 * z2 * z2 + 17 * z2 - 15) / (384 * n**3)
            + z * (79 * z2**4 + 776 * z2**3 + 1482 * z2 * z2 - 1920 * z2 - 945) / (92160 * n**4))


def mean_ci(xs: list[float], confidence: float) -> tuple[float, float]:
    """Mean of a stationary, autocorrelated series and the half-width of its interval.

    The variance of the mean is the series' long-run variance over n, estimated
    with Geyer's initial positive sequence (sum the autocovariances in adjacent
    pairs while the pair sums stay positive; Geyer 1992, "Practical Markov chain
    Monte Carlo"). It adapts to the correlation time, which plain batch means
    with a fixed batch count do not (they under-cover when sessions are long
    against a batch). The quantile is Student's t with the effective sample
    size minus one degrees of freedom.

    Args:
        xs: the series (here: availability per time slice), n >= 2.
        confidence: level in (0, 1).

    Returns:
        ``(mean, half_width)``.
    """
    n = len(xs)
    m = statistics.fmean(xs)
    d = [x - m for x in xs]
    gamma0 = sum(v * v for v in d) / n
    if gamma0 == 0.0:
        return m, 0.0

    def gamma(lag: int) -> float:
        return sum(d[i] * d[i + lag] for i in range(n - lag)) / n

    lrv = -gamma0
    k = 0
    while 2 * k + 1 < n:
        pair = (gamma0 if k == 0 else gamma(2 * k)) + gamma(2 * k + 1)
        if pair <= 0.0:
            break
        lrv += 2.0 * pair
        k += 1
    lrv = max(lrv, gamma0 / n)
    n_eff = max(2.0, n * gamma0 / lrv)
    half = t_quantile(0.5 + confidence / 2, max(1, int(n_eff) - 1)) * math.sqrt(lrv / n)
    return m, half


def wilson(successes: int, n: int, confidence: float) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion."""
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
    phat = successes / n
    denom = 1 + z * z / n
    centre = (phat + z * z / (2 * n)) / denom
    spread = z * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - spread), min(1.0, centre + spread)
