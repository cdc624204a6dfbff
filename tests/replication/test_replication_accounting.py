"""Pin health accounting (pinfold/replication/accounting.py), without trio.

``classify`` puts a pin in a category (under, at target, over) with flags
(repairing, error, short); ``Accounting`` keeps the counts behind ``cluster
status`` and the metrics as pins are re-classified, and times repairs.
``health_of`` / ``Accounting.assess`` (the manager's per-pin hot path) must
equal the rules written out plainly.
"""

from __future__ import annotations

import hashlib
import math

from hypothesis import given
from hypothesis import strategies as st

from pinfold.replication.accounting import (
    AT,
    ERROR_FLAG,
    OVER,
    REPAIR_BUCKETS,
    REPAIRING_FLAG,
    SHORT_FLAG,
    UNDER,
    Accounting,
    PinHealth,
    classify,
    empty_stats,
    health_of,
    report_lines,
)
from pinfold.replication.allocation import availability
from pinfold.replication.types import (
    PeerStatus,
    Pin,
    PinState,
    ReportAction,
    ReportKind,
    cid_text,
)

ALIVE, SUSPECT, DEAD = PeerStatus.ALIVE, PeerStatus.SUSPECT, PeerStatus.DEAD
PINNED, PINNING, ERROR = PinState.PINNED, PinState.PINNING, PinState.PIN_ERROR


def cid(i: int) -> bytes:
    return b"\x01\x55\x12\x20" + hashlib.sha256(f"pin-{i}".encode()).digest()


PIN = Pin(cid=cid(0), rmin=2, rmax=3)
PEER = "12D3KooW" + "A" * 44


def health(states: dict[str, PinState], status: dict[str, PeerStatus], pin: Pin = PIN,
           p: float = 0.9) -> PinHealth:
    return classify(pin, states, status, dict.fromkeys(status, p))


def test_categories_count_alive_pinned_holders() -> None:
    assert health({"a": PINNED, "b": PINNED}, {"a": ALIVE, "b": ALIVE}).code == AT
    h = health({"a": PINNED, "b": PINNED}, {"a": ALIVE, "b": SUSPECT})
    assert h.category == UNDER and h.healthy == 1
    h = health({q: PINNED for q in "abcd"}, dict.fromkeys("abcd", ALIVE))
    assert h.code == OVER and h.healthy == 4


def test_a_suspect_holder_is_not_short() -> None:
    h = health({"a": PINNED, "b": PINNED}, {"a": ALIVE, "b": SUSPECT})
    assert h.code == UNDER, "under (one healthy) but not short: the suspect still holds it"


def test_an_alive_fetch_of_an_under_replicated_pin_is_repairing() -> None:
    h = health({"a": PINNED, "b": PINNED, "c": PINNING},
               {"a": ALIVE, "b": DEAD, "c": ALIVE})
    assert h.code == UNDER | REPAIRING_FLAG


def test_errors_and_short_flags() -> None:
    h = health({"a": PINNED, "b": ERROR}, {"a": ALIVE, "b": ALIVE})
    assert h.code == UNDER | ERROR_FLAG | SHORT_FLAG
    target = Pin(cid=cid(0), rmin=2, rmax=3, availability=0.9999)
    h = health({"a": PINNED, "b": PINNED}, {"a": ALIVE, "b": ALIVE}, pin=target)
    assert h.code == AT | SHORT_FLAG, "two holders at p 0.9 fall short of 0.9999"


def test_availability_of_the_healthy_holders() -> None:
    h = health({"a": PINNED, "b": PINNED}, {"a": ALIVE, "b": ALIVE}, p=0.5)
    assert math.isclose(h.availability, 0.75)
    assert health({}, {}).availability == 0.0


def test_accounting_counts_what_is_not_at_target() -> None:
    acct = Accounting()
    acct.record(cid(1), PinHealth(code=AT, availability=0.99, healthy=2))
    acct.record(cid(2), PinHealth(code=UNDER | REPAIRING_FLAG, availability=0.9, healthy=1))
    acct.record(cid(3), PinHealth(code=UNDER | ERROR_FLAG | SHORT_FLAG, availability=0.0,
                                  healthy=0))
    acct.record(cid(4), PinHealth(code=OVER, availability=0.999, healthy=4))
    assert acct.cluster_pins(4) == {"under_replicated": 2, "at_target": 1,
                                    "over_replicated": 1}
    st_ = acct.cluster_status(4, now=0.0)
    assert (st_.under_replicated, st_.repairing, st_.errors, st_.over) == (2, 1, 1, 1)
    assert st_.min_availability == 0.0
    assert acct.short_cids() == {cid(3)}
    acct.forget(cid(3))
    acct.record(cid(3), PinHealth(code=AT, availability=0.95, healthy=2))
    acct.invalidate()
    assert acct.cluster_pins(4)["under_replicated"] == 1
    assert acct.flag_counts[ERROR_FLAG] == 0 and acct.short_cids() == set()
    assert acct.min_availability(4, now=0.0) == 0.9


def test_min_availability_is_cached_two_seconds() -> None:
    acct = Accounting()
    acct.record(cid(1), PinHealth(code=UNDER, availability=0.5, healthy=1))
    assert acct.min_availability(1, now=0.0) == 0.5
    acct.forget(cid(1))
    assert acct.min_availability(1, now=1.0) == 0.5
    assert acct.min_availability(1, now=2.0) == 1.0


def test_a_full_pass_recomputes_the_minimum_of_pins_at_target() -> None:
    acct = Accounting()
    acct.record(cid(1), PinHealth(code=AT, availability=0.9, healthy=2))
    assert acct.min_availability(1, now=0.0) == 0.9
    acct.begin_full_pass()
    acct.record(cid(1), PinHealth(code=AT, availability=0.99, healthy=2))
    acct.end_full_pass()
    acct.invalidate()
    assert acct.min_availability(1, now=0.0) == 0.99


def test_repairs_are_timed_from_the_first_death_to_rmin() -> None:
    acct = Accounting()
    acct.repair_started(cid(1), 100.0)
    acct.repair_started(cid(1), 150.0)  # a second holder died: the first time counts
    acct.repair_done(cid(1), 107.0)
    acct.repair_done(cid(1), 200.0)  # nothing more to time
    acct.repair_started(cid(2), 0.0)
    acct.repair_forget(cid(2))
    acct.repair_done(cid(2), 10.0)
    assert (acct.repair_count, acct.repair_sum) == (1, 7.0)
    buckets = dict(acct.repair_buckets())
    assert buckets[5.0] == 0 and buckets[10.0] == 1 and buckets[math.inf] == 1


@given(st.lists(st.floats(0.0, 1e5), max_size=50))
def test_repair_histogram_is_cumulative(durations: list[float]) -> None:
    acct = Accounting()
    for d in durations:
        acct.observe_repair(d)
    counts = [n for _, n in acct.repair_buckets()]
    assert counts == sorted(counts) and counts[-1] == len(durations)
    for b, n in acct.repair_buckets()[:-1]:
        assert n == sum(1 for d in durations if d <= b)
    assert len(counts) == len(REPAIR_BUCKETS) + 1


def test_stats_snapshot() -> None:
    acct = Accounting()
    acct.counters.bytes_fetched = 42
    acct.record(cid(1), PinHealth(code=UNDER, availability=0.5, healthy=1))
    s = acct.stats(pins=3, local_counts={PINNED: 1, PinState.QUEUED: 1},
                   statuses=[ALIVE, ALIVE, DEAD], now=0.0)
    assert s.local_states["remote"] == 1 and s.local_states["pinned"] == 1
    assert s.queue_length == 1 and s.peers == {"alive": 2, "suspect": 0, "dead": 1}
    assert s.cluster_pins == {"under_replicated": 1, "at_target": 2, "over_replicated": 0}
    assert s.bytes_fetched == 42 and s.min_availability == 0.5
    assert empty_stats().local_states.keys() >= s.local_states.keys()


def _reference_health(pin: Pin, states: dict[str, PinState], status: dict[str, PeerStatus],
                      p: dict[str, float]) -> tuple[int, float, int]:
    """The classification rules written out with lists (what ``health_of`` must equal)."""
    active = {PinState.QUEUED, PINNING, PINNED}
    healthy = [p.get(q, 0.0) for q, s in states.items() if s is PINNED and status.get(q) is ALIVE]
    live = [(q, s) for q, s in states.items() if s in active and status.get(q) in (ALIVE, SUSPECT)]
    n = len(healthy)
    cat = UNDER if n < pin.rmin else (OVER if n > pin.rmax else AT)
    repairing = any(s is not PINNED and status.get(q) is ALIVE for q, s in live)
    short = len(live) < pin.rmin or (pin.availability is not None and availability(
        [p.get(q, 0.0) for q, _ in live]) < pin.availability - 1e-9)
    code = cat | (REPAIRING_FLAG if repairing and cat == UNDER else 0) | (
        ERROR_FLAG if ERROR in states.values() else 0) | (SHORT_FLAG if short else 0)
    return code, availability(healthy), n


_PEERS = "abcdef"
_views = st.tuples(
    st.dictionaries(st.sampled_from(_PEERS), st.sampled_from(list(PinState))),
    st.dictionaries(st.sampled_from(_PEERS), st.sampled_from(list(PeerStatus))),
    st.dictionaries(st.sampled_from(_PEERS), st.floats(0.0, 1.0)),
    st.integers(1, 4), st.integers(0, 3), st.none() | st.floats(0.1, 0.99999))


@given(_views)
def test_health_of_equals_the_classification_rules(view: tuple) -> None:
    states, status, p, rmin, extra, target = view
    pin = Pin(cid=cid(0), rmin=rmin, rmax=rmin + extra, availability=target)
    assert health_of(pin, states, status, p) == _reference_health(pin, states, status, p)
    h = classify(pin, states, status, p)
    assert (h.code, h.availability, h.healthy) == health_of(pin, states, status, p)


@given(st.lists(st.tuples(st.integers(0, 3), _views), max_size=30))
def test_assess_counts_as_forget_then_record(steps: list[tuple[int, tuple]]) -> None:
    fast, slow = Accounting(), Accounting()
    for i, (states, status, p, rmin, extra, target) in steps:
        pin = Pin(cid=cid(i), rmin=rmin, rmax=rmin + extra, availability=target)
        for a in (fast, slow):
            a.repair_started(cid(i), 0.0)
        code, healthy = fast.assess(cid(i), pin, states, status, p, now=5.0)
        h = classify(pin, states, status, p)
        slow.forget(cid(i))
        slow.record(cid(i), h)
        if h.category != UNDER:
            slow.repair_done(cid(i), 5.0)
        assert (code, healthy) == (h.code, h.healthy)
        assert fast.info == slow.info and fast.avail == slow.avail
        assert fast.category_counts == slow.category_counts
        assert +fast.flag_counts == +slow.flag_counts and fast.clean_min == slow.clean_min
        assert (fast.repair_count, fast.repair_since) == (slow.repair_count, slow.repair_since)


def test_many_new_reports_log_a_few_lines_and_a_count() -> None:
    reports = [ReportAction(cid=cid(i), peer_id=PEER, kind=ReportKind.UNDER_REPLICATED,
                            holders=1, wanted=2) for i in range(2000)]
    reports.append(ReportAction(cid=cid(9999), peer_id=PEER, kind=ReportKind.TARGET_UNMET,
                                holders=2, wanted=3))
    lines = report_lines(reports, limit=3)
    assert len(lines) == 4
    assert lines[0] == f"{cid_text(cid(0))}: under_replicated (1 holders, 2 wanted)"
    assert lines[3] == ("and 1998 more pins reported: 1 target_unmet, 1997 under_replicated "
                        "(see cluster status)")
    assert report_lines(reports[:2], limit=3) == lines[:2]
    assert report_lines([]) == []
