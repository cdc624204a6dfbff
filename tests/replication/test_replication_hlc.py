"""Hybrid logical clock (pinfold/replication/hlc.py): monotonic under clock skew and steps back."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pinfold.replication.errors import ClockSkewError, InvalidPin
from pinfold.replication.hlc import (
    LOGICAL_BITS,
    HybridClock,
    hlc_from_wall,
    hlc_pack,
    hlc_unpack,
    hlc_wall_s,
)

walls = st.floats(min_value=0, max_value=4e9, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), walls, walls), max_size=60))
def test_timestamps_strictly_increase_whatever_the_wall_clock_does(steps) -> None:
    clock = HybridClock(max_drift_s=None)
    last = clock.last
    for is_receive, wall, remote_wall in steps:
        if is_receive:
            remote = hlc_from_wall(remote_wall)
            ts = clock.receive(remote, wall)
            assert ts > remote
        else:
            ts = clock.now(wall)
        assert ts > last
        assert ts >= hlc_from_wall(wall)  # never behind the wall clock
        last = ts


def test_a_clock_that_steps_back_keeps_counting_in_the_logical_part() -> None:
    clock = HybridClock()
    a = clock.now(100.0)
    b = clock.now(50.0)  # NTP stepped the clock back
    assert hlc_unpack(b) == (hlc_unpack(a)[0], 1)
    assert hlc_wall_s(b) == 100.0
    c = clock.now(101.0)
    assert hlc_unpack(c) == (101_000, 0)


def test_the_logical_counter_carries_into_the_milliseconds() -> None:
    clock = HybridClock(last=hlc_pack(5, (1 << LOGICAL_BITS) - 1))
    assert hlc_unpack(clock.now(0.001)) == (6, 0)


def test_receive_refuses_a_peer_far_in_the_future_and_keeps_state() -> None:
    clock = HybridClock(max_drift_s=60)
    before = clock.now(1000.0)
    clock.receive(hlc_from_wall(1059.0), 1000.0)  # within the drift
    last = clock.last
    with pytest.raises(ClockSkewError, match="ahead of ours") as info:
        clock.receive(hlc_from_wall(1100.0), 1000.0)
    assert info.value.max_drift_ms == 60_000
    assert clock.last == last > before


def test_bad_values_are_refused() -> None:
    with pytest.raises(InvalidPin, match="last"):
        HybridClock(last=-1)
    with pytest.raises(InvalidPin, match="remote"):
        HybridClock().receive("5", 1.0)  # type: ignore[arg-type]
    with pytest.raises(InvalidPin, match="wall time"):
        HybridClock().now(float("nan"))
    with pytest.raises(InvalidPin):
        hlc_pack(1, 1 << LOGICAL_BITS)
