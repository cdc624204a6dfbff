"""Hybrid logical clock (Kulkarni et al., "Logical Physical Clocks", 2014).

A timestamp is one non-negative integer, ``(wall_ms << 16) | logical``: the
high bits are milliseconds of the wall clock, the low 16 bits a counter that
orders events within one millisecond (or while the wall clock stands still or
goes backwards). Packing makes comparison, msgpack encoding and storage plain
integer operations, and the HLC update rules become

    send/local event:  t = max(last + 1, pt)
    receive(m):        t = max(last + 1, m + 1, pt)

where ``pt = wall_ms << 16``. ``last + 1`` overflowing the counter carries into
the millisecond field, which keeps every result strictly increasing - the
clock is monotonic even when the wall clock steps back (NTP, a VM resume).

The pinset orders concurrent writes by (timestamp, peer ID), so a peer whose
clock runs far ahead would win every conflict for as long as it is ahead;
``receive`` therefore refuses remote timestamps more than ``max_drift_s`` ahead
of our wall clock (``ClockSkewError``).

Pure: the wall clock comes in as ``wall`` (seconds); no trio, no ``time``.
"""

from __future__ import annotations

import math
from typing import Final

from pinfold.replication.errors import ClockSkewError, InvalidPin

__all__ = [
    "LOGICAL_BITS",
    "MAX_TIMESTAMP",
    "HybridClock",
    "check_timestamp",
    "hlc_from_wall",
    "hlc_pack",
    "hlc_unpack",
    "hlc_wall_s",
]

#: Bits of the logical counter.
LOGICAL_BITS: Final = 16
_LOGICAL_MASK: Final = (1 << LOGICAL_BITS) - 1
#: Largest timestamp accepted (fits msgpack int64 and LMDB 8-byte keys).
MAX_TIMESTAMP: Final = (1 << 63) - 1


def hlc_pack(wall_ms: int, logical: int = 0) -> int:
    """Pack milliseconds and a counter into one timestamp.

    Raises:
        InvalidPin: ``wall_ms`` < 0 or ``logical`` outside 0..65535.
    """
    if wall_ms < 0 or not 0 <= logical <= _LOGICAL_MASK:
        raise InvalidPin(f"hlc: wall_ms {wall_ms} / logical {logical} out of range")
    return (wall_ms << LOGICAL_BITS) | logical


def hlc_unpack(ts: int) -> tuple[int, int]:
    """``(wall_ms, logical)`` of a timestamp."""
    return ts >> LOGICAL_BITS, ts & _LOGICAL_MASK


def hlc_from_wall(wall: float) -> int:
    """The smallest timestamp at wall-clock time ``wall`` (seconds, >= 0)."""
    if not math.isfinite(wall) or wall < 0:
        raise InvalidPin(f"hlc: wall time must be finite and >= 0, got {wall!r}")
    return int(wall * 1000.0) << LOGICAL_BITS


def hlc_wall_s(ts: int) -> float:
    """The wall-clock part of a timestamp, seconds."""
    return (ts >> LOGICAL_BITS) / 1000.0


def check_timestamp(ts: object, what: str = "ts") -> int:
    """Validate a timestamp from outside and return it.

    Raises:
        InvalidPin: not an int in 0..2**63-1.
    """
    if type(ts) is not int or not 0 <= ts <= MAX_TIMESTAMP:
        raise InvalidPin(f"{what}: must be an HLC timestamp (int in 0..2**63-1), got {ts!r}")
    return ts


class HybridClock:
    """One node's hybrid logical clock.

    Every timestamp it returns is strictly greater than every timestamp it
    returned or received before. Persist ``last`` and pass it back after a
    restart so that writes made after the restart order after those before
    it even if the wall clock went back meanwhile.

    Args:
        last: the last timestamp issued or received (0 for a new node).
        max_drift_s: how far ahead of our wall clock a remote timestamp may be,
            seconds; None accepts any.
    """

    __slots__ = ("_last", "_max_drift_ms")

    def __init__(self, *, last: int = 0, max_drift_s: float | None = 300.0) -> None:
        self._last = check_timestamp(last, "last")
        if max_drift_s is not None and (not math.isfinite(max_drift_s) or max_drift_s < 0):
            raise InvalidPin(f"max_drift_s: must be >= 0, got {max_drift_s!r}")
        self._max_drift_ms = None if max_drift_s is None else int(max_drift_s * 1000)

    @property
    def last(self) -> int:
        """The last timestamp issued or received."""
        return self._last

    def now(self, wall: float) -> int:
        """A timestamp for a local event or an outgoing message.

        Args:
            wall: our wall clock, seconds.

        Returns:
            ``max(last + 1, wall_ms << 16)``.
        """
        ts = max(self._last + 1, hlc_from_wall(wall))
        if ts > MAX_TIMESTAMP:
            raise InvalidPin("hlc: timestamp overflow")
        self._last = ts
        return ts

    send = now

    def receive(self, remote: int, wall: float) -> int:
        """Merge a timestamp carried by a received message; return the new local time.

        Args:
            remote: the message's timestamp.
            wall: our wall clock, seconds.

        Returns:
            ``max(last + 1, remote + 1, wall_ms << 16)``.

        Raises:
            InvalidPin: ``remote`` is not a timestamp.
            ClockSkewError: ``remote`` is more than ``max_drift_s`` ahead of
                ``wall``; the clock is left unchanged.
        """
        check_timestamp(remote, "remote")
        pt = hlc_from_wall(wall)
        if self._max_drift_ms is not None:
            remote_ms, local_ms = remote >> LOGICAL_BITS, pt >> LOGICAL_BITS
            if remote_ms - local_ms > self._max_drift_ms:
                raise ClockSkewError(remote_ms, local_ms, self._max_drift_ms)
        ts = max(self._last + 1, remote + 1, pt)
        if ts > MAX_TIMESTAMP:
            raise InvalidPin("hlc: timestamp overflow")
        self._last = ts
        return ts
