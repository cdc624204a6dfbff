"""``LocalExpiry``: removes local pins whose ``--expire-in`` time has passed.

``pin add --expire-in SECONDS`` (and ``add``'s ``expire_in``) on a node without
a cluster records ``expire_at`` (unix seconds) in the pin's metadata
(``Pinner.pin``). As IPFS Cluster's ``--expire-in``, the pin is removed once
that time has passed: this service releases the local hold of every such pin
(``Pinner.unpin``, owner ``local``); the blocks are then unpinned and the next
``repo gc`` frees them. In a cluster the pinset carries ``expire_at`` and the
replication planner expires the pin instead (``ExpireAction``).

The service sleeps until the earliest ``expire_at`` it knows (at most
``RESCAN_S``), and ``wake()`` makes it look again at once, so a pin added with
a short expiry is removed on time without scanning the pins every second.
Imports the blockstore and the pinner.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import trio
from pinfold.blockstore.cid import CID
from pinfold.blockstore.errors import NotPinned
from pinfold.blockstore.lmdbstore import LmdbBlockStore

from pinfold.daemon.pinning import Pinner

__all__ = ["RESCAN_S", "LocalExpiry", "expire_at_of"]

log = logging.getLogger("pinfold.expiry")

#: Longest sleep between two scans of the pins, seconds (pins written by another
#: path than ``wake()`` are found this late at most).
RESCAN_S = 60.0


def expire_at_of(metadata: dict[str, str] | object) -> float | None:
    """The ``expire_at`` (unix seconds) of a pin's metadata, or None (absent or not a number)."""
    raw = metadata.get("expire_at") if hasattr(metadata, "get") else None
    try:
        value = float(raw) if raw is not None else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


class LocalExpiry:
    """Removes the local holds of pins whose ``expire_at`` has passed.

    Args:
        store: the node's store (pins are read from it).
        pinner: the node's pin path (``unpin`` with owner ``local``).
        clock: unix seconds now (``time.time``; tests may pass another).
    """

    def __init__(self, store: LmdbBlockStore, pinner: Pinner, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.pinner = pinner
        self.clock = clock
        self.expired = 0
        self._wake = trio.Event()

    def wake(self) -> None:
        """Look at the pins again now (a pin with an expiry was just written)."""
        self._wake.set()

    def _scan(self, now: float) -> tuple[list[CID], float]:
        """``(roots whose local hold expired, earliest expire_at still ahead)``; in a thread."""
        due: list[CID] = []
        nxt = math.inf
        for rec in self.store.pin_ls():
            at = expire_at_of(rec.metadata)
            if at is None or "local" not in rec.holds:
                continue
            if at <= now:
                due.append(rec.cid)
            else:
                nxt = min(nxt, at)
        return due, nxt

    async def expire_due(self) -> float:
        """Remove every expired local hold now; returns the next ``expire_at`` (inf: none)."""
        due, nxt = await trio.to_thread.run_sync(self._scan, self.clock())
        for cid in due:
            try:
                await self.pinner.unpin(cid, owner="local")
            except NotPinned:
                continue  # unpinned meanwhile
            self.expired += 1
            log.info("pin %s expired; removed it", cid)
        return nxt

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Expire pins until cancelled: at each pin's ``expire_at``, rescanning at least
        every ``RESCAN_S`` seconds and whenever ``wake()`` is called."""
        task_status.started()
        while True:
            self._wake = trio.Event()
            nxt = await self.expire_due()
            delay = min(RESCAN_S, max(0.0, nxt - self.clock()))
            with trio.move_on_after(delay):
                await self._wake.wait()
