"""systemd's service notification protocol (sd_notify(3), sd_watchdog_enabled(3)).

The protocol is one datagram of ``KEY=VALUE`` lines sent to the ``AF_UNIX``
socket named by ``$NOTIFY_SOCKET`` (a filesystem path, or ``@name`` for the
Linux abstract namespace). It takes ten lines, so pinfold speaks it itself:
the PyPI ``sdnotify`` package is unmaintained since 2017 and ``systemd-python``
needs libsystemd headers to build.

States pinfold sends (see ``pinfold/daemon/service.py`` and ``pinfold/daemon/node.py``):

- ``READY=1`` once the store is open and the RPC socket and the libp2p host listen;
- ``WATCHDOG=1`` every half ``$WATCHDOG_USEC`` while the node is healthy;
- ``RELOADING=1`` + ``MONOTONIC_USEC=...`` at the start of a SIGHUP reload,
  then ``READY=1`` when it is done;
- ``STOPPING=1`` when shutdown begins;
- ``STATUS=...`` free text shown by ``systemctl status``.

Without ``$NOTIFY_SOCKET`` (not under systemd) every call does nothing.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

#: A datagram send never waits longer than this (seconds); systemd reads promptly.
SEND_TIMEOUT_S = 1.0


def _address(value: str) -> str:
    """The ``connect`` address for a ``$NOTIFY_SOCKET`` value (``@`` = abstract namespace)."""
    return "\0" + value[1:] if value.startswith("@") else value


def notify(state: str, *, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (e.g. ``"READY=1\\nSTATUS=serving"``) to systemd's notify socket.

    Args:
        state: newline-separated ``KEY=VALUE`` assignments (sd_notify(3)).
        environ: where to read ``NOTIFY_SOCKET`` (default ``os.environ``).

    Returns:
        True if the datagram was sent; False without ``$NOTIFY_SOCKET`` or when the
        socket is gone or full (a notification is advisory; the daemon goes on).

    Raises:
        ValueError: ``state`` is empty or holds a line without ``=``.
    """
    lines = state.split("\n")
    if not state or any("=" not in line for line in lines):
        raise ValueError(f"sd_notify state must be KEY=VALUE lines, got {state!r}")
    env = os.environ if environ is None else environ
    path = env.get("NOTIFY_SOCKET", "")
    if not path:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.settimeout(SEND_TIMEOUT_S)
            s.connect(_address(path))
            s.sendall(state.encode())
        return True
    except OSError:
        return False


def watchdog_interval_s(environ: Mapping[str, str] | None = None,
                        pid: int | None = None) -> float | None:
    """How often to send ``WATCHDOG=1``: half of ``$WATCHDOG_USEC``, in seconds.

    Follows sd_watchdog_enabled(3): the watchdog is on when ``$WATCHDOG_USEC`` is
    a positive integer (microseconds) and ``$WATCHDOG_PID``, if set, is this
    process. Pinging at half the timeout leaves one missed ping of slack.

    Args:
        environ: where to read the variables (default ``os.environ``).
        pid: this process's ID (default ``os.getpid()``).

    Returns:
        The ping interval in seconds, or None when the watchdog is off for us.

    Raises:
        ValueError: ``$WATCHDOG_USEC`` or ``$WATCHDOG_PID`` is set but not a
            positive integer.
    """
    env = os.environ if environ is None else environ
    usec_text = env.get("WATCHDOG_USEC", "")
    if not usec_text:
        return None
    if not usec_text.isdigit() or int(usec_text) <= 0:
        raise ValueError(f"WATCHDOG_USEC must be a positive integer (microseconds), "
                         f"got {usec_text!r}")
    pid_text = env.get("WATCHDOG_PID", "")
    if pid_text:
        if not pid_text.isdigit() or int(pid_text) <= 0:
            raise ValueError(f"WATCHDOG_PID must be a positive integer, got {pid_text!r}")
        if int(pid_text) != (os.getpid() if pid is None else pid):
            return None
    return int(usec_text) / 2e6


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, for ``MONOTONIC_USEC=`` with ``RELOADING=1``."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
