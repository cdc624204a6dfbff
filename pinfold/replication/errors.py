"""Errors raised by the replication layer.

One hierarchy (STYLE.md 7): every class says when it is raised. The manager
and the RPC layer translate them at their seams; ``code`` is the RPC error code.
"""

from __future__ import annotations


def describe(exc: BaseException) -> str:
    """One line for a user about ``exc``: the messages of the errors inside any
    (nested) exception groups, joined with "; ", never a class name or "Exceptions
    from Trio nursery". An error without a message is named by its ``code``."""
    found: list[str] = []
    todo = [exc]
    while todo:
        e = todo.pop(0)
        if isinstance(e, BaseExceptionGroup):
            todo[:0] = list(e.exceptions)
            continue
        text = str(e).strip()
        if not text:
            code = getattr(e, "code", None)
            if isinstance(e, TimeoutError):
                text = "timed out"
            elif isinstance(code, str) and code:
                text = code.replace("_", " ")
            else:
                text = "unexpected error (the daemon log has the details)"
        text = text.replace("\n", " ")
        if text not in found:
            found.append(text)
    return "; ".join(found)


class ReplicationError(Exception):
    """Base class of every error the replication layer raises."""

    code = "replication_error"


class InvalidPin(ReplicationError, ValueError):
    """A pin, heartbeat, action or policy value is out of range or of the wrong type.

    The message names the field and the offending value.
    """

    code = "invalid_pin"


class InvalidPeerID(ReplicationError, ValueError):
    """A peer ID is empty, too long, or contains whitespace or non-ASCII characters."""

    code = "invalid_peer_id"


class PinsetDecodeError(ReplicationError, ValueError):
    """Bytes from the wire or from LMDB are not a valid pinset, sync or health encoding.

    The message says which part (e.g. ``entry 3: rmin``) is wrong and why.
    """

    code = "decode_error"


class ClockSkewError(ReplicationError):
    """A remote hybrid-logical-clock timestamp is further ahead of our wall clock than allowed.

    Raised by ``HybridClock.receive``; the caller drops the message and counts it.
    """

    code = "clock_skew"

    def __init__(self, remote_ms: int, local_ms: int, max_drift_ms: int) -> None:
        super().__init__(
            f"remote clock {remote_ms - local_ms} ms ahead of ours "
            f"(at most {max_drift_ms} ms allowed)"
        )
        self.remote_ms = remote_ms
        self.local_ms = local_ms
        self.max_drift_ms = max_drift_ms


class SimulationError(ReplicationError, ValueError):
    """Simulator parameters are inconsistent (the message names the parameter)."""

    code = "invalid_simulation"


class PinNotFound(ReplicationError, KeyError):
    """The shared pinset has no live pin for the CID (``PinSet.remove``, ``pin status``)."""

    code = "not_pinned"

    def __init__(self, cid: str) -> None:
        super().__init__(f"not in the pinset: {cid}")
        self.cid = cid

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class StaleWrite(ReplicationError):
    """A local pinset write carries a timestamp older than the entry it replaces.

    The node's hybrid logical clock is behind the pinset; feed it
    ``PinSet.max_ts`` with ``HybridClock.receive`` and write again.
    """

    code = "stale_write"
