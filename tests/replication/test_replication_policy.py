"""The manager's pure decisions (pinfold/replication/policy.py), without trio.

Each rule of the manager's driver is checked on its own: the repair veto and
backoff gate of ``may_queue``, the silent-sources rule, the backoff curve, the
release of a pin in error, the announced capacity, a new pin's bounds, the
restored states, the origin copy, when a peer is current and when to sync.
"""

from __future__ import annotations

import hashlib
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pinfold.replication.policy import (
    BeatSync,
    ErrorRelease,
    OriginCopy,
    SyncSchedule,
    announced_capacity,
    error_release,
    is_current,
    may_queue,
    origin_copy,
    pin_bounds,
    restored_state,
    retry_backoff,
    settle_until,
    sources_silent,
    sync_after_beat,
)
from pinfold.replication.types import PeerStatus, PinAction, PinMode, PinState, Reason

CID = b"\x01\x55\x12\x20" + hashlib.sha256(b"policy").digest()
ALIVE, SUSPECT, DEAD = PeerStatus.ALIVE, PeerStatus.SUSPECT, PeerStatus.DEAD


def action(reason: Reason = Reason.ALLOCATED, sources: tuple[str, ...] = ("a",)) -> PinAction:
    return PinAction(cid=CID, peer_id="me", mode=PinMode.RECURSIVE, sources=sources,
                     reason=reason)


# ---------------------------------------------------------------- may_queue

def test_a_pin_action_queues_a_remote_pin() -> None:
    assert may_queue(action(), PinState.REMOTE, has_job=False, retry_at=None, now=10.0)


@pytest.mark.parametrize("state", [PinState.QUEUED, PinState.PINNING, PinState.PINNED,
                                   PinState.UNPINNING])
def test_a_pin_held_fetching_or_being_released_is_not_queued_again(state: PinState) -> None:
    assert not may_queue(action(), state, has_job=False, retry_at=None, now=10.0)


def test_a_pin_with_a_job_is_not_queued_twice() -> None:
    assert not may_queue(action(), PinState.REMOTE, has_job=True, retry_at=None, now=10.0)


def test_a_failed_pin_waits_out_its_backoff() -> None:
    assert not may_queue(action(), PinState.PIN_ERROR, has_job=False, retry_at=20.0, now=10.0)
    assert may_queue(action(), PinState.PIN_ERROR, has_job=False, retry_at=20.0, now=20.0)


def test_a_repair_without_sources_is_vetoed() -> None:
    assert not may_queue(action(Reason.REPAIR, ()), PinState.REMOTE, has_job=False,
                         retry_at=None, now=10.0)
    assert may_queue(action(Reason.REPAIR, ("a",)), PinState.REMOTE, has_job=False,
                     retry_at=None, now=10.0)
    assert may_queue(action(Reason.ALLOCATED, ()), PinState.REMOTE, has_job=False,
                     retry_at=None, now=10.0), "a first placement may have no holder yet"


# ---------------------------------------------------------------- sources_silent

def silent(sources: tuple[str, ...], status: dict[str, PeerStatus],
           holders: dict[str, PinState] | None = None, *, queue_waiting: bool = False) -> bool:
    return sources_silent(sources, holders or {}, lambda q: status.get(q, DEAD),
                          queue_waiting=queue_waiting)


def test_a_first_placement_waits_while_the_member_view_is_young() -> None:
    # A member joined 1 s ago: the view settles one TTL (10 s) after that.
    assert settle_until(action(), writer_known=True, view_changed_at=99.0, settle_s=10.0,
                        now=100.0) == 109.0
    # A pin from a writer never heard from: the view is behind; look again in a TTL.
    assert settle_until(action(), writer_known=False, view_changed_at=None, settle_s=10.0,
                        now=100.0) == 110.0


def test_a_first_placement_goes_ahead_once_the_view_settled() -> None:
    assert settle_until(action(), writer_known=True, view_changed_at=80.0, settle_s=10.0,
                        now=100.0) is None
    assert settle_until(action(), writer_known=True, view_changed_at=None, settle_s=10.0,
                        now=100.0) is None


def test_the_wait_for_a_settled_view_is_bounded_by_the_pins_age() -> None:
    # Members keep flapping: the view changed 1 s ago, but the pin was written
    # 3 TTL ago, so it is placed now rather than never.
    assert settle_until(action(), writer_known=True, view_changed_at=99.0, settle_s=10.0,
                        now=100.0, written_at=70.0) is None
    assert settle_until(action(), writer_known=False, view_changed_at=None, settle_s=10.0,
                        now=100.0, written_at=70.0) is None
    # Younger than that: wait, but never past the bound.
    assert settle_until(action(), writer_known=True, view_changed_at=99.0, settle_s=10.0,
                        now=100.0, written_at=75.0) == 105.0


def test_a_repair_never_waits_for_the_view_to_settle() -> None:
    assert settle_until(action(Reason.REPAIR), writer_known=False, view_changed_at=99.0,
                        settle_s=10.0, now=100.0) is None


def test_one_alive_source_keeps_the_fetch() -> None:
    assert not silent(("a", "b"), {"a": DEAD, "b": ALIVE}, queue_waiting=True)


def test_no_sources_is_not_silent() -> None:
    assert not silent((), {})


def test_dead_sources_are_silent() -> None:
    assert silent(("a", "b"), {"a": DEAD, "b": SUSPECT})


def test_suspect_sources_keep_the_fetch_when_nothing_waits_and_no_one_else_holds() -> None:
    assert not silent(("a",), {"a": SUSPECT}, {"a": PinState.PINNED})


def test_suspect_sources_give_way_to_a_queued_pin() -> None:
    assert silent(("a",), {"a": SUSPECT}, {"a": PinState.PINNED}, queue_waiting=True)


def test_suspect_sources_give_way_to_another_alive_holder() -> None:
    holders = {"a": PinState.PINNED, "c": PinState.PINNED}
    assert silent(("a",), {"a": SUSPECT, "c": ALIVE}, holders)
    assert not silent(("a",), {"a": SUSPECT, "c": SUSPECT}, holders)
    assert not silent(("a",), {"a": SUSPECT, "c": ALIVE},
                      {"a": PinState.PINNED, "c": PinState.PINNING}), "only a pinned copy serves"


# ---------------------------------------------------------------- backoff and errors

def test_backoff_doubles_up_to_the_maximum_with_jitter() -> None:
    assert retry_backoff(1, 5.0, 600.0, 0.5) == 5.0
    assert retry_backoff(2, 5.0, 600.0, 0.5) == 10.0
    assert retry_backoff(4, 5.0, 600.0, 0.5) == 40.0
    assert retry_backoff(20, 5.0, 600.0, 0.5) == 600.0
    assert retry_backoff(1, 5.0, 600.0, 0.0) == 3.75
    assert retry_backoff(1, 5.0, 600.0, 0.999) < 6.25


@given(st.integers(1, 60), st.floats(0.0, 1.0, exclude_max=True))
def test_backoff_stays_within_a_quarter_of_its_curve(attempts: int, u: float) -> None:
    base = min(600.0, 5.0 * 2.0 ** (attempts - 1))
    assert 0.75 * base <= retry_backoff(attempts, 5.0, 600.0, u) <= 1.25 * base


def test_a_failed_pin_given_back_waits_out_its_backoff_then_keeps_its_count() -> None:
    assert error_release(Reason.FAILED, 20.0, 10.0) is ErrorRelease.WAIT
    assert error_release(Reason.FAILED, 20.0, 20.0) is ErrorRelease.KEEP_RECORD
    assert error_release(Reason.FAILED, None, 10.0) is ErrorRelease.KEEP_RECORD


@pytest.mark.parametrize("reason", [Reason.UNPINNED, Reason.EXPIRED, Reason.EXTRA])
def test_a_pin_in_error_unpinned_for_another_reason_forgets_its_failures(reason: Reason) -> None:
    assert error_release(reason, 20.0, 10.0) is ErrorRelease.RESET


# ---------------------------------------------------------------- capacity, bounds, restore

def test_capacity_is_the_stores_unless_configured() -> None:
    assert announced_capacity(100, 40, 0) == (100, 40)
    assert announced_capacity(100, 40, 1000) == (1000, 940), "the used 60 bytes taken off"
    assert announced_capacity(100, 40, 50) == (50, 0)
    assert announced_capacity(100, 140, 0) == (100, 100), "free never above capacity"


def bounds(**kw: object) -> tuple[int, int]:
    args = {"rmin": None, "rmax": None, "availability_target": None, "default_rmin": 2,
            "default_rmax": 3, "p_prior": 0.9}
    args.update(kw)
    return pin_bounds(**args)  # type: ignore[arg-type]


def test_pin_bounds_default_to_the_config() -> None:
    assert bounds() == (2, 3)
    assert bounds(rmin=5) == (5, 5), "rmax at least rmin"
    assert bounds(rmax=1) == (1, 1), "rmin capped by a given rmax"
    assert bounds(rmin=1, rmax=4) == (1, 4)


def test_an_availability_target_sets_rmax_to_what_it_needs_plus_one() -> None:
    assert bounds(availability_target=0.99) == (2, 3)  # 2 needed at p 0.9
    assert bounds(availability_target=0.99999) == (2, 6)  # 5 needed
    assert bounds(availability_target=0.99999, rmax=4) == (2, 4), "a given rmax wins"


def test_restored_states_resume_interrupted_work() -> None:
    assert restored_state(PinState.PINNING) is PinState.QUEUED
    assert restored_state(PinState.UNPINNING) is PinState.PINNED
    for s in (PinState.QUEUED, PinState.PINNED, PinState.PIN_ERROR, PinState.REMOTE):
        assert restored_state(s) is s


def test_an_origin_copy_is_kept_until_rmin_holders_then_adopted_or_released() -> None:
    assert origin_copy(healthy=1, rmin=2, state=PinState.REMOTE) is OriginCopy.KEEP
    assert origin_copy(healthy=1, rmin=2, state=PinState.PINNING) is OriginCopy.KEEP
    assert origin_copy(healthy=2, rmin=2, state=PinState.REMOTE) is OriginCopy.RELEASE
    assert origin_copy(healthy=2, rmin=2, state=PinState.PIN_ERROR) is OriginCopy.RELEASE
    for s in (PinState.QUEUED, PinState.PINNING, PinState.PINNED):
        assert origin_copy(healthy=3, rmin=2, state=s) is OriginCopy.ADOPT


# ---------------------------------------------------------------- current peers, syncs

def test_a_heartbeat_asks_for_a_sync_when_it_differs_or_the_peer_is_unproven() -> None:
    assert sync_after_beat(differs=True, proven=True) is BeatSync.SOON
    assert sync_after_beat(differs=True, proven=False) is BeatSync.SOON
    assert sync_after_beat(differs=False, proven=False) is BeatSync.NOW
    assert sync_after_beat(differs=False, proven=True) is BeatSync.CANCEL


def test_a_peer_is_current_after_a_round_trip_and_its_advertised_states() -> None:
    assert is_current(proven=True, advertised=(1, 5), known=(1, 5), resuming=False)
    assert is_current(proven=True, advertised=(1, 5), known=(1, 7), resuming=False)
    assert not is_current(proven=False, advertised=(1, 5), known=(1, 5), resuming=False)
    assert not is_current(proven=True, advertised=(1, 5), known=(1, 4), resuming=False)
    assert not is_current(proven=True, advertised=(2, 1), known=(1, 9), resuming=False)
    assert not is_current(proven=True, advertised=None, known=(1, 5), resuming=False)
    assert not is_current(proven=True, advertised=(1, 5), known=None, resuming=False)
    assert not is_current(proven=True, advertised=(1, 5), known=(1, 5), resuming=True)


def test_sync_schedule_keeps_the_soonest_request() -> None:
    s = SyncSchedule()
    assert s.want("a", 10.0)
    assert not s.want("a", 12.0)
    assert s.want("a", 8.0)
    assert s.due(7.0, gap=5.0) == ([], 8.0)
    assert s.due(8.0, gap=5.0) == (["a"], float("inf"))
    assert s.syncing == {"a"}


def test_sync_schedule_spaces_sessions_with_a_peer_and_runs_one_at_a_time() -> None:
    s = SyncSchedule()
    s.started("a", 0.0)
    s.want("a", 1.0)
    assert s.due(1.0, gap=5.0) == ([], float("inf")), "a session with a is running"
    assert s.ended("a", 2.0), "another one is wanted"
    assert s.due(3.0, gap=5.0) == ([], 7.0), "the gap after the last session"
    assert s.due(7.0, gap=5.0) == (["a"], float("inf"))
    assert not s.ended("a", 8.0)


def test_sync_schedule_due_in_any_order_is_the_same() -> None:
    rng = random.Random(0)
    peers = [f"p{i}" for i in range(20)]
    times = {p: rng.uniform(0, 10) for p in peers}
    a, b = SyncSchedule(), SyncSchedule()
    for p in peers:
        a.want(p, times[p])
    for p in reversed(peers):
        b.want(p, times[p])
    da, wa = a.due(5.0, gap=1.0)
    db, wb = b.due(5.0, gap=1.0)
    assert sorted(da) == sorted(db) == sorted(p for p in peers if times[p] <= 5.0)
    assert wa == wb == min(t for t in times.values() if t > 5.0)
