"""``pin_wait``: wait until a pin's holders report it pinned, or all failed.

The RPC method ``pin_wait`` (``daemon/api.py``) calls ``wait_for_holders``.
It reads the node's ``pin status`` record at each change of the cluster's pins
or holders' states (``wait_pin_change``, at least every 0.5 s) and streams a
progress item when the count, a holder's state or the bytes known of a holder
change. Imports nothing of the daemon but types.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import trio
from pinfold.blockstore.cid import CID
from pinfold.config import Config

__all__ = ["all_failed", "allocated_holders", "holder_progress", "wait_for_holders"]


class WaitNode(Protocol):
    """What the wait reads of the node."""

    config: Config

    async def pin_status(self, cid: CID) -> dict[str, Any]: ...

    async def wait_pin_change(self, timeout_s: float) -> None: ...

    def sent_by_peer(self) -> dict[str, int]: ...


_BUSY = ("queued", "pinning")


def allocated_holders(st: dict[str, Any]) -> list[dict[str, Any]]:
    """The holders a ``pin_status`` record counts toward the pin: at most ``rmax``.

    A holder that failed stays listed (its ``pin_error``) while the planner
    allocates another peer in its place; the list keeps the pinned and fetching
    holders first, then live failed ones, then holders on dead peers, and drops
    the rest, so ``--wait`` shows as many holders as the pin has places.
    """
    def rank(h: dict[str, Any]) -> tuple[int, int, str]:
        state = h.get("state")
        order = 0 if state == "pinned" else 1 if state in _BUSY else 2
        return (h.get("peer_status") == "dead", order, str(h.get("peer_id")))

    held = [h for h in st.get("holders", []) if h.get("state") in ("pinned", "pin_error", *_BUSY)]
    return sorted(held, key=rank)[:max(1, int(st.get("rmax", 1)))]


def holder_progress(holders: list[dict[str, Any]], sent: dict[str, int]
                    ) -> list[dict[str, Any]]:
    """The holders as a progress item lists them: ``peer_id``, ``state``,
    ``peer_status``, and where known ``bytes`` (of the DAG the holder has: all
    of it when pinned, what this node's own fetch reached) and ``sent_bytes``
    (block bytes this node sent that peer since the wait began, > 0 only)."""
    out = []
    for h in holders:
        item = {k: h.get(k) for k in ("peer_id", "state", "peer_status")}
        if h.get("bytes") is not None:
            item["bytes"] = h["bytes"]
        if sent.get(str(h.get("peer_id")), 0) > 0:
            item["sent_bytes"] = sent[str(h.get("peer_id"))]
        out.append(item)
    return out


def all_failed(st: dict[str, Any]) -> bool:
    """No holder on a live peer is fetching or pinned, and one reports ``pin_error``."""
    live = [h for h in st.get("holders", []) if h.get("peer_status") != "dead"]
    if any(h.get("state") in ("pinned", *_BUSY) for h in live):
        return False
    return any(h.get("state") == "pin_error" for h in live)


async def wait_for_holders(node: WaitNode, cid: CID, *, timeout: float | None,
                           send: Callable[[dict[str, Any]], Awaitable[None]]) -> dict[str, Any]:
    """Wait until ``rmin`` holders of ``cid`` report pinned on alive peers.

    Calls ``send({"pinned", "wanted", "total", "holders"})`` each time the count,
    a holder's state or its bytes change (``total``: the DAG's bytes, None when
    unknown; ``holders``: the allocated ones, at most rmax, see
    ``allocated_holders``, with bytes where known, see ``holder_progress``); returns the ``pin_status`` record with ``done``
    (False: the timeout passed first, or ``failed``). ``failed`` is True when
    no holder is fetching while some report ``pin_error``, for ``3 x`` the
    peer TTL on end (failed holders retry with a growing backoff; a failure
    that outlasts the time in which every peer heartbeats three times is not a
    passing one): content nobody has ends the wait instead of hanging.

    Args:
        node: the node.
        cid: the pinned root.
        timeout: seconds (> 0), or None: no limit.
        send: streams one progress item to the caller.

    Raises:
        NotPinned: the pin is removed meanwhile.
    """
    settle = 3 * node.config.replication.effective_peer_ttl_s
    last: dict[str, Any] | None = None
    failed_since: float | None = None
    st = await node.pin_status(cid)
    sent0 = node.sent_by_peer()
    with trio.move_on_after(math.inf if timeout is None else float(timeout)):
        while True:
            st = await node.pin_status(cid)
            holders = allocated_holders(st)
            sent = {p: n - sent0.get(p, 0) for p, n in node.sent_by_peer().items()}
            progress = {"pinned": st["healthy"], "wanted": st["rmin"],
                        "total": st.get("size_bytes"),
                        "holders": holder_progress(holders, sent)}
            if progress != last:
                await send(progress)
                last = progress
            if st["healthy"] >= st["rmin"]:
                return {**st, "holders": holders, "done": True}
            if all_failed(st):
                now = trio.current_time()
                failed_since = now if failed_since is None else failed_since
                if now - failed_since >= settle:
                    return {**st, "holders": holders, "done": False, "failed": True}
            else:
                failed_since = None
            # Woken by any change; the bound re-reads peers turning suspect or dead.
            await node.wait_pin_change(0.5)
    return {**st, "holders": allocated_holders(st), "done": False}
