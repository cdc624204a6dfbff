"""The churn experiment's pure model: seeded online schedules, interval arithmetic,
the allocator's static placement and the run-to-run spread of a short run.

No process runs here; ``churn_driver`` follows these schedules with real daemons
(the experiment is described in ``tools.availability.churn``). Times are seconds
from the start of the churn.
"""

from __future__ import annotations

import hashlib
import math
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from pinfold.replication.allocation import Candidate, RendezvousAllocator

Interval = tuple[float, float]


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
