"""The Python client's errors about waiting for a pin's holders (``Client.wait_pinned``):
``PinWaitTimeout`` (the timeout passed) and ``PinFailed`` (every holder failed).

Each builds one message for a user from the last ``pin status`` record and
carries a ``code`` the CLI maps to its exit status (``daemon/cli/format.py``).
Imports nothing of pinfold.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PinFailed", "PinWaitTimeout"]


class PinWaitTimeout(Exception):
    """``wait_pinned`` gave up: fewer than rmin holders reported pinned within the
    timeout. ``.cid``, ``.timeout`` (seconds), ``.status`` (the last ``pin status``
    record), ``.behind`` (``[(peer_id, state)]`` of holders not pinned)."""

    code = "wait_timeout"

    def __init__(self, cid: str, timeout: float, status: dict[str, Any]) -> None:
        self.cid = cid
        self.timeout = timeout
        self.status = status
        self.behind = []
        for h in status.get("holders", []):
            state = h.get("state", "?")
            if h.get("peer_status") not in (None, "alive"):
                state = f"{state}, peer {h['peer_status']}"
            if h.get("state") != "pinned" or h.get("peer_status") not in (None, "alive"):
                self.behind.append((h["peer_id"], state))
        pinned, wanted = status.get("healthy", 0), status.get("rmin", 0)
        parts = [f"{peer} {state}" for peer, state in self.behind]
        missing = wanted - pinned - len(self.behind)
        if missing > 0:
            parts.append(f"{missing} holder(s) not chosen or not reporting yet")
        super().__init__(
            f"{cid}: timed out after {timeout:g} s with {pinned} of {wanted} holders pinned; "
            f"behind: {'; '.join(parts) or 'none'}")


class PinFailed(Exception):
    """``wait_pinned`` gave up: no holder is fetching the pin and those allocated
    report ``pin_error`` (content no connected peer has, a store full...).
    ``.cid``, ``.status`` (the last ``pin status`` record), ``.failed``
    (``[(peer_id, error)]``; the error is known for the node asked, others say
    where to read it)."""

    code = "pin_failed"

    def __init__(self, cid: str, status: dict[str, Any]) -> None:
        self.cid = cid
        self.status = status
        self.failed = []
        for h in status.get("holders", []):
            if h.get("state") != "pin_error":
                continue
            why = h.get("error") or "its error: `pinfold pin ls --state error` on that node"
            self.failed.append((h["peer_id"], why))
        pinned, wanted = status.get("healthy", 0), status.get("rmin", 0)
        parts = [f"{peer} pin_error ({why})" for peer, why in self.failed]
        super().__init__(
            f"{cid}: pin failed with {pinned} of {wanted} holders pinned; every holder "
            f"failed: {'; '.join(parts) or 'none'}")
