"""The manager's anti-entropy: reconciling the pinset and a peer's states over a session.

When a sync is due is ``policy.SyncSchedule``; whether a peer's reports are
current is ``policy.is_current``. This runs the sessions: the pinset
reconciliation (``sync.Reconciler``), the push of what the peer lacks and the
pull of the peer's own states log. A trio driver, mixed into ``Manager``
(manager.py).
"""

from __future__ import annotations

import logging
from typing import Final

import trio

from pinfold.replication.errors import (
    ClockSkewError,
    InvalidPin,
    PinsetDecodeError,
)
from pinfold.replication.messages import (
    PushRequest,
    PushResponse,
    StatesRequest,
    StatesResponse,
    decode_response,
    encode_request,
)
from pinfold.replication.policy import is_current
from pinfold.replication.entries import pages_by_size
from pinfold.replication.sync import MAX_PAGE_BYTES, MAX_PAGE_ENTRIES, Reconciler
from pinfold.replication.transport import SyncSession, TransportError

__all__ = ["AntiEntropy"]

log = logging.getLogger("pinfold.replication")

#: Entries asked per anti-entropy page (responders overshoot by up to one bucket).
_SYNC_PAGE: Final = MAX_PAGE_ENTRIES * 4 // 5


class AntiEntropy:
    """Sync scheduling and sessions with peers (a ``Manager`` part)."""

    def _want_sync(self, peer_id: str, *, immediate: bool) -> None:
        """Ask for a sync with ``peer_id``: now, or after a heartbeat and a half
        (a digest that still differs then was not just a delta in flight)."""
        now = trio.current_time()
        at = now if immediate else now + 1.5 * self.config.heartbeat_interval_s
        if self._syncs.want(peer_id, at):
            self._sync_event.set()

    async def _sync_loop(self) -> None:
        next_random = trio.current_time() + self.config.sync_interval_s
        gap = self.config.heartbeat_interval_s
        async with trio.open_nursery() as nursery:
            while True:
                now = trio.current_time()
                due, wake = self._syncs.due(now, gap)
                wake = min(wake, next_random)
                for peer in due:
                    nursery.start_soon(self._sync_task, peer)
                if now >= next_random:
                    next_random = now + self.config.sync_interval_s
                    wake = min(wake, next_random)
                    candidates = [p for p in self.transport.connected()
                                  if p in self.health and p not in self._syncs.syncing]
                    if candidates:
                        peer = self.rng.choice(sorted(candidates))
                        self._syncs.syncing.add(peer)
                        nursery.start_soon(self._sync_task, peer)
                self._sync_event = trio.Event()
                with trio.move_on_at(wake):
                    await self._sync_event.wait()

    async def _sync_task(self, peer_id: str) -> None:
        try:
            self._syncs.started(peer_id, trio.current_time())
            await self.sync_with(peer_id)
        finally:
            if self._syncs.ended(peer_id, trio.current_time()):
                self._sync_event.set()

    async def sync_with(self, peer_id: str, *, timeout_s: float = 60.0) -> bool:
        """Reconcile the pinset and ``peer_id``'s states with it (anti-entropy).

        Returns:
            True when the session completed.
        """
        c = self._acct.counters
        c.syncs += 1
        try:
            with trio.fail_after(timeout_s):
                session = await self.transport.open_session(peer_id)
                try:
                    await self._sync_session(peer_id, session)
                finally:
                    with trio.CancelScope(shield=True):
                        await session.aclose()
        except (TransportError, PinsetDecodeError, InvalidPin, trio.TooSlowError) as exc:
            c.sync_failures += 1
            log.debug("sync with %s failed: %s", peer_id, exc)
            return False
        self._synced_once.set()
        events = self.health.touch(peer_id, self.now())
        if events:
            log.info("cluster peer %s answered a sync while its heartbeats were late",
                     peer_id)
            self._on_health_events(events)
        self._proven.add(peer_id)
        self._check_current(peer_id)
        return True

    async def _sync_session(self, peer_id: str, session: SyncSession) -> None:
        # Pages end on bucket boundaries, so a responder may overshoot the limit by
        # up to a bucket; stay well under the decoder's MAX_PAGE_ENTRIES.
        rec = Reconciler(self.pinset, page_limit=_SYNC_PAGE)
        while (req := rec.next_request()) is not None:
            resp = decode_response(await session.ask(encode_request(req)))
            before = self.pinset.statistics().max_ts
            changed = rec.handle(resp)  # type: ignore[arg-type]
            if changed:
                max_ts = self.pinset.statistics().max_ts
                if max_ts > before:
                    try:
                        self.clock.receive(max_ts, self.now())
                    except ClockSkewError as exc:
                        log.warning("sync with %s: %s", peer_id, exc)
                self._after_merge(changed)
        push = rec.to_push()
        for page in pages_by_size(push, max_bytes=MAX_PAGE_BYTES, max_entries=MAX_PAGE_ENTRIES):
            resp = decode_response(await session.ask(encode_request(
                PushRequest(entries=tuple(page)))))
            if not isinstance(resp, PushResponse):
                raise InvalidPin("sync: expected an ok to a push")
        # The peer's own state log.
        while True:
            k = self.peers.known(peer_id)
            req_s = StatesRequest(epoch=None if k is None else k[0],
                                  base=0 if k is None else k[1],
                                  resume=self.peers.resuming(peer_id))
            resp = decode_response(await session.ask(encode_request(req_s)))
            if not isinstance(resp, StatesResponse) or resp.delta.owner != peer_id:
                raise InvalidPin("sync: expected the peer's own states")
            if not self._apply_states(resp.delta, pulled=True) or not resp.delta.more:
                break

    def _check_current(self, peer_id: str) -> None:
        """Track whether ``peer_id``'s reported states are up to date: a sync
        session with it completed since we started or it came back, and its
        states are applied at least up to what its last heartbeat advertised. A
        peer turning current re-plans its CIDs (a drop of an extra copy may have
        waited for it)."""
        now_current = is_current(proven=peer_id in self._proven,
                                 advertised=self._advertised.get(peer_id),
                                 known=self.peers.known(peer_id),
                                 resuming=self.peers.resuming(peer_id))
        if now_current and peer_id not in self._current:
            self._current.add(peer_id)
            self._mark_dirty(self.holdings.cids_of(peer_id))
        elif not now_current:
            self._current.discard(peer_id)
