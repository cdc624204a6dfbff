"""The manager's gossip: what this node hears from and tells the cluster.

Takes in gossip messages (heartbeats, pinset entries, states deltas) and the
health events they cause; sends this node's heartbeat; persists local changes
and then gossips them (the flush). A trio driver, mixed into ``Manager``
(manager.py).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any, Final

import trio

from pinfold.replication.errors import (
    ClockSkewError,
    InvalidPeerID,
    InvalidPin,
    PinsetDecodeError,
)
from pinfold.replication.messages import (
    KIND_HEARTBEAT,
    KIND_PINS,
    KIND_STATES,
    ClusterBeat,
    PushRequest,
    PushResponse,
    StatesRequest,
    StatesResponse,
    decode_beat,
    decode_request,
    encode_beat,
    encode_response,
)
from pinfold.replication.persist import (
    Pending,
    int_bytes,
    known_key,
    known_value,
)
from pinfold.replication.entries import pages_by_size
from pinfold.replication.pinset import Entry, decode_entries, encode_entries
from pinfold.replication.policy import BeatSync, announced_capacity, sync_after_beat
from pinfold.replication.states import decode_delta, encode_delta
from pinfold.replication.sync import MAX_PAGE_ENTRIES, answer
from pinfold.replication.transport import TransportError
from pinfold.replication.types import (
    HealthEvent,
    HealthEventKind,
    Heartbeat,
    PinState,
    cid_text,
)

__all__ = ["Gossip"]

log = logging.getLogger("pinfold.replication")

#: Pinset entries per gossip message (~130 bytes each without metadata: ~260 KB).
_GOSSIP_ENTRIES: Final = 2000
#: ``wire_size`` bytes per gossip message: under py-libp2p's 1 MiB RPC limit with
#: room for the envelope, signature and protobuf framing (a pin carrying a name
#: record is up to ~280 KB, so a batch of them is split by bytes, not count).
_GOSSIP_BYTES: Final = 768 * 1024


class Gossip:
    """Inbound messages, heartbeats, health events and the persist-then-gossip flush
    (a ``Manager`` part)."""

    def on_message(self, peer_id: str, kind: str, body: bytes) -> None:
        """A gossip message from ``peer_id`` (verified author; trust already checked)."""
        if peer_id == self.peer_id:
            return
        try:
            if kind == KIND_HEARTBEAT:
                self._on_beat(peer_id, decode_beat(body))
            elif kind == KIND_PINS:
                self._merge(decode_entries(body, max_entries=MAX_PAGE_ENTRIES))
            elif kind == KIND_STATES:
                delta = decode_delta(body)
                if delta.owner != peer_id:
                    raise InvalidPin(f"states of {delta.owner} published by {peer_id}")
                self._apply_states(delta, pulled=False)
            else:
                raise InvalidPin(f"unknown message kind {kind!r}")
        except (PinsetDecodeError, InvalidPin, InvalidPeerID) as exc:
            self._acct.counters.rejected += 1
            log.warning("dropped a %s message from %s: %s", kind, peer_id, exc)

    def on_peer(self, peer_id: str, connected: bool) -> None:
        """A peer connected: reconcile with it soon."""
        if connected and peer_id != self.peer_id:
            self._want_sync(peer_id, immediate=True)

    def answer(self, peer_id: str, request: bytes) -> bytes:
        """Answer one ``/pinfold/sync/1`` request (raises on a malformed one)."""
        req = decode_request(request)
        if isinstance(req, PushRequest):
            changed = self._merge(req.entries)
            return encode_response(PushResponse(changed=changed))
        if isinstance(req, StatesRequest):
            delta = self.own.delta_since(req.base, req.epoch, resume=req.resume, limit=req.limit)
            return encode_response(StatesResponse(delta=delta))
        return encode_response(answer(self.pinset, req))

    def _on_beat(self, peer_id: str, beat: ClusterBeat) -> None:
        hb = beat.heartbeat
        if hb.peer_id != peer_id:
            raise InvalidPin(f"heartbeat names {hb.peer_id} but was sent by {peer_id}")
        now = self.now()
        new = peer_id not in self.health
        self.last_heartbeat[peer_id] = now
        events = self.health.observe(hb, now)
        if hb.addresses:
            self.transport.note_addresses(peer_id, hb.addresses)
        if new:
            log.info("cluster peer %s joined (%d bytes free)", peer_id, hb.free_bytes)
            self.view_changed_at = now
            self._mark_dirty(self._acct.short_cids())
        self._on_health_events(events)
        digest, count = self.pinset.summary(0, 0)
        pins_differ = (digest, count) != (beat.pinset_digest, beat.pinset_count)
        self._advertised[peer_id] = (beat.states_epoch, beat.states_version)
        states_behind = self.peers.needs_pull(peer_id, beat.states_epoch, beat.states_version)
        self._check_current(peer_id)
        todo = sync_after_beat(differs=pins_differ or states_behind,
                               proven=peer_id in self._proven)
        if todo is BeatSync.CANCEL:
            self._syncs.wanted.pop(peer_id, None)
        else:
            self._want_sync(peer_id, immediate=todo is BeatSync.NOW)

    def _merge(self, entries: Iterable[Entry]) -> int:
        """Merge remote pinset entries (after the clock check); returns how many changed."""
        wall = self.now()
        accepted = []
        for e in entries:
            try:
                self.clock.receive(e.ts, wall)
            except ClockSkewError as exc:
                self._acct.counters.rejected += 1
                log.warning("dropped the entry for %s from %s: %s", cid_text(e.cid), e.peer_id,
                            exc)
                continue
            accepted.append(e)
        changed = self.pinset.merge(accepted)
        self._after_merge(changed)
        return len(changed)

    def _after_merge(self, changed: list[Entry]) -> None:
        if not changed:
            return
        for e in changed:
            self._pending.pins[e.cid] = e if self.pinset.get(e.cid) is not None else None
        self._pending.meta[b"hlc"] = int_bytes(self.clock.last)
        self._flush_event.set()
        self._mark_dirty(e.cid for e in changed)

    def _apply_states(self, delta: Any, *, pulled: bool) -> bool:
        reset_before = delta.reset
        applied, changed = self.peers.apply(delta, pulled=pulled)
        if not applied:
            if not pulled:
                self._want_sync(delta.owner, immediate=False)
            return False
        owner = delta.owner
        if reset_before:
            self._pending.reset_owner(owner)
            for cid, st in self.holdings.peer_states(owner).items():
                self._pending.holdings[(owner, cid)] = st
        else:
            for cid in changed:
                self._pending.holdings[(owner, cid)] = self.holdings.get(cid, owner)
        k = self.peers.known(owner)
        if k is not None:
            self._pending.meta[known_key(owner)] = known_value(*k)
        self._flush_event.set()
        self._mark_dirty(changed)
        self._check_current(owner)
        return True

    def _heartbeat(self) -> Heartbeat:
        cap, free = announced_capacity(*self.local_pins.capacity(), self.config.capacity_bytes)
        own = self.holdings.peer_states(self.peer_id)
        pinned = sum(1 for st in own.values() if st is PinState.PINNED)
        self._seq += 1
        return Heartbeat(peer_id=self.peer_id, incarnation=self._incarnation, seq=self._seq,
                         capacity_bytes=cap, free_bytes=free,
                         pin_queue_len=len(self._queue) + len(self._running),
                         addresses=tuple(self.transport.addresses())[:64], pinned_count=pinned,
                         error_count=self._local_counts[PinState.PIN_ERROR])

    async def _heartbeat_loop(self) -> None:
        last_save = trio.current_time()
        while True:
            hb = self._heartbeat()
            self.health.observe(hb, self.now())
            self._stats = self.statistics()
            digest, count = self.pinset.summary(0, 0)
            beat = ClusterBeat(heartbeat=hb, pinset_digest=digest, pinset_count=count,
                               states_epoch=self.own.epoch, states_version=self._published_version)
            try:
                await self.transport.publish(KIND_HEARTBEAT, encode_beat(beat))
            except TransportError as exc:
                log.debug("heartbeat not sent: %s", exc)
            if trio.current_time() - last_save >= self.config.health_save_interval_s:
                last_save = trio.current_time()
                self._pending.meta[b"health"] = self.health.to_bytes()
                self._flush_event.set()
            await trio.sleep(self.config.heartbeat_interval_s)

    async def _flush_loop(self) -> None:
        while True:
            await self._flush_event.wait()
            self._flush_event = trio.Event()
            await trio.sleep(0.02)  # gather a few more changes into one commit
            await self._flush_once()
            done, self._flush_done = self._flush_done, trio.Event()
            done.set()

    async def _flush_once(self) -> None:
        pending, self._pending = self._pending, Pending()
        if pending and self.db is not None:
            try:
                await self.db.commit(pending)
            except trio.Cancelled:
                raise
            except Exception as exc:  # noqa: BLE001 - e.g. StoreFull: keep the batch, retry
                log.error("persisting replication state failed: %s", exc)
                pending.absorb(self._pending)
                self._pending = pending
                await trio.sleep(1.0)
                self._flush_event.set()
                return
        gossip, self._to_gossip = self._to_gossip, []
        try:
            for page in pages_by_size(gossip, max_bytes=_GOSSIP_BYTES,
                                      max_entries=_GOSSIP_ENTRIES):
                await self.transport.publish(KIND_PINS, encode_entries(page))
            while self.own.version != self._published_version:
                delta = self.own.delta_since(self._published_version, self.own.epoch)
                await self.transport.publish(KIND_STATES, encode_delta(delta))
                self._published_version = delta.version
        except TransportError as exc:
            log.debug("gossip not sent (anti-entropy will carry it): %s", exc)

    async def wait_flushed(self) -> None:
        """Wait until everything written so far is persisted and gossiped."""
        while self._pending or self._to_gossip or self.own.version != self._published_version:
            done = self._flush_done
            self._flush_event.set()
            await done.wait()

    async def _health_loop(self) -> None:
        while True:
            now = self.now()
            self._on_health_events(self.health.tick(now))
            nxt = self.health.next_transition(now)
            delay = self.config.heartbeat_interval_s
            if nxt is not None:
                delay = min(delay, max(0.0, nxt - now) + 1e-3)
            await trio.sleep(delay)

    def _on_health_events(self, events: Sequence[HealthEvent]) -> None:
        if events:
            self.view_changed_at = self.now()
        for ev in events:
            cids = set(self.holdings.cids_of(ev.peer_id))
            if ev.kind is HealthEventKind.DEAD:
                log.warning("cluster peer %s is dead: its %d pins are repaired elsewhere",
                            ev.peer_id, len(cids))
                at = ev.at
                for cid in cids:
                    if self.holdings.get(cid, ev.peer_id) is PinState.PINNED:
                        self._acct.repair_started(cid, at)
            elif ev.kind is HealthEventKind.RECOVERED:
                log.info("cluster peer %s is back", ev.peer_id)
                cids |= self._acct.short_cids()
                # Its heartbeat may be one held up by a partition: trust its reports
                # for dropping copies only after a round trip with it.
                self._proven.discard(ev.peer_id)
                self._current.discard(ev.peer_id)
                self._want_sync(ev.peer_id, immediate=True)
            else:
                log.info("cluster peer %s is suspect", ev.peer_id)
                # Probe it directly: a sync round trip that succeeds keeps it alive
                # when only the gossip carrying its heartbeats stalled (SWIM's
                # direct probe before declaring a member failed).
                self._want_sync(ev.peer_id, immediate=True)
            if ev.kind is not HealthEventKind.RECOVERED:
                self._abort_fetches_from(ev.peer_id)
            self._mark_dirty(cids)
        self._acct.invalidate()
