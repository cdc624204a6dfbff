"""What the machine's load leaves for a fetch: idle CPU cores and the event loop's busy time.

``LoadSampler.sample()`` returns, since its previous call, the machine's idle
CPU cores (``psutil.cpu_times``: idle + iowait seconds over wall seconds) and
the fraction of the time the calling thread (the trio thread: call it there)
was running or waiting for a core (Linux ``/proc/thread-self/schedstat``: run
and run-queue nanoseconds). Either is None where it cannot be read (another
OS, a restricted /proc), and both are None on the first call. The holder
admission (``admission.HolderAdmission.machine``) decides from them; this
module only reads.
"""

from __future__ import annotations

import time
from pathlib import Path

import psutil

__all__ = ["LoadSampler"]

_SCHEDSTAT = Path("/proc/thread-self/schedstat")


def _idle_s() -> float | None:
    try:
        t = psutil.cpu_times()
    except Exception:  # noqa: BLE001 - no CPU times here: unknown, not an error
        return None
    return t.idle + getattr(t, "iowait", 0.0)


def _thread_busy_s() -> float | None:
    try:
        run_ns, wait_ns, _ = _SCHEDSTAT.read_text().split()
    except (OSError, ValueError):
        return None
    return (int(run_ns) + int(wait_ns)) / 1e9


class LoadSampler:
    """Idle cores and this thread's busy fraction between calls (see the module doc)."""

    def __init__(self) -> None:
        self._at = time.perf_counter()
        self._idle = _idle_s()
        self._busy = _thread_busy_s()

    def sample(self) -> tuple[float | None, float | None]:
        """``(idle cores, busy fraction 0..1)`` since the last call (None: unknown)."""
        at, idle, busy = time.perf_counter(), _idle_s(), _thread_busy_s()
        dt = at - self._at
        cores = frac = None
        if dt > 0:
            if idle is not None and self._idle is not None:
                cores = max(0.0, (idle - self._idle) / dt)
            if busy is not None and self._busy is not None:
                frac = min(1.0, max(0.0, (busy - self._busy) / dt))
        self._at, self._idle, self._busy = at, idle, busy
        return cores, frac
