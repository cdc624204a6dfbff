"""The manager's pin queue: this node's share of the plan, fetched and released.

A ``PinAction`` for this node queues the CID (state ``queued``) when
``policy.may_queue`` allows; at most ``concurrent_pins`` workers fetch at once
(``pinning``), each the DAG by Bitswap from the current holders, pinned with
block refcounts (``pinned``). A failure is ``pin_error``; the planner then
gives the pin to another peer, and this node may take it again only after
``policy.retry_backoff`` (``retry_min_s`` doubling up to ``retry_max_s``) or
``recover``. An ``UnpinAction`` cancels a queued or running fetch, or turns a
pinned copy ``unpinning`` and releases it (GC reclaims the blocks), then
``remote``. Fetches whose sources all went silent are aborted
(``policy.sources_silent``). A trio driver, mixed into ``Manager``
(manager.py): it uses the manager's state and decides through ``policy``.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import trio

from pinfold.replication.errors import (
    describe,
)
from pinfold.replication.hlc import hlc_wall_s
from pinfold.replication.persist import (
    LocalRecord,
    int_bytes,
)
from pinfold.replication.policy import (
    ErrorRelease,
    error_release,
    may_queue,
    retry_backoff,
    settle_until,
    sources_silent,
)
from pinfold.replication.types import (
    PinAction,
    PinMode,
    PinState,
    Reason,
    UnpinAction,
    cid_text,
)

__all__ = ["PinQueue"]

log = logging.getLogger("pinfold.replication")

_NO_RECORD: Final = LocalRecord()  # shared, never modified: a state with no bookkeeping


@dataclass(slots=True)
class FetchJob:
    mode: PinMode
    sources: tuple[str, ...]
    reason: Reason
    aborted: bool = False  # every source went silent: re-plan rather than wait out the fetch
    queued_at: float = 0.0  # trio time the job was queued


class PinQueue:
    """Pin and unpin actions, the fetch workers and their outcomes (a ``Manager`` part)."""

    # ------------------------------------------------------------------ local states

    def _set_state(self, cid: bytes, state: PinState) -> None:
        old = self.own.get(cid)
        if old is state:
            return
        if old is not PinState.REMOTE:
            self._local_counts[old] -= 1
        if state is not PinState.REMOTE:
            self._local_counts[state] += 1
        self.own.set(cid, state)
        self._persist_local(cid)
        self._pending.meta[b"version"] = int_bytes(self.own.version)
        self._flush_event.set()
        self._mark_dirty([cid])

    def _persist_local(self, cid: bytes) -> None:
        st = self.own.get(cid)
        rec = self.local.get(cid)
        if st is PinState.REMOTE and (rec is None or rec.empty()):
            self._pending.local[cid] = None
            if rec is not None:
                self.local.pop(cid, None)
        else:
            self._pending.local[cid] = (st, rec or _NO_RECORD)
        self._flush_event.set()

    def _on_pin_action(self, a: PinAction) -> None:
        cid = a.cid
        rec = self.local.get(cid)
        now = self.now()
        if not may_queue(a, self.own.get(cid), has_job=cid in self._jobs,
                         retry_at=rec.retry_at if rec is not None else None, now=now):
            return
        later = None
        if a.reason is Reason.ALLOCATED:  # (``settle_until`` delays first placements only)
            entry = self.pinset.get(cid)
            later = settle_until(
                a, writer_known=entry is None or entry.peer_id == self.peer_id
                or entry.peer_id in self.health, view_changed_at=self.view_changed_at,
                settle_s=self.config.ttl_s, now=now,
                written_at=None if entry is None else hlc_wall_s(entry.ts))
        if later is not None:
            # The view of the members is young: plan this pin again once it settled.
            heapq.heappush(self._retry_heap, (later, cid))
            self._wake_planner()
            return
        self._jobs[cid] = FetchJob(mode=a.mode, sources=a.sources, reason=a.reason,
                               queued_at=trio.current_time())
        if a.reason is Reason.REPAIR:
            self._acct.counters.repairs["started"] += 1
        self._set_state(cid, PinState.QUEUED)
        self._queue.append(cid)
        self._queue_wakeup.set()

    def _on_unpin_action(self, a: UnpinAction, now: float) -> None:
        cid = a.cid
        st = self.own.get(cid)
        if st is PinState.PIN_ERROR:
            rec = self.local.get(cid)
            release = error_release(a.reason, rec.retry_at if rec is not None else None, now)
            if release is ErrorRelease.WAIT:
                return  # another peer is allocated meanwhile
            if release is ErrorRelease.RESET and rec is not None:
                rec.attempts, rec.error, rec.retry_at = 0, "", None
            self._set_state(cid, PinState.REMOTE)
            return
        if st is PinState.QUEUED:
            self._jobs.pop(cid, None)
            try:
                self._queue.remove(cid)
            except ValueError:
                pass
            self._set_state(cid, PinState.REMOTE)
            return
        if st is PinState.PINNING:
            scope = self._running.get(cid)
            if scope is not None:
                scope.cancel()  # the worker releases whatever was pinned
            return
        if st is PinState.PINNED:
            log.info("releasing %s (%s): holders %s", cid_text(cid), a.reason.value,
                     " ".join(f"{q[-6:]}={s.value}" for q, s in
                              sorted(self.holdings.states(cid).items())))
            self._set_state(cid, PinState.UNPINNING)
            assert self._nursery is not None
            self._nursery.start_soon(self._unpin, cid)

    async def _unpin(self, cid: bytes) -> None:
        try:
            await self.local_pins.unpin(cid)
        except Exception as exc:  # noqa: BLE001 - any failure keeps the copy pinned
            log.warning("unpinning %s failed: %s; keeping it pinned", cid_text(cid), exc)
            self._set_state(cid, PinState.PINNED)
            return
        rec = self.local.get(cid)
        if rec is not None:
            rec.staged = False
        self._set_state(cid, PinState.REMOTE)

    async def _pin_worker(self) -> None:
        while True:
            while not self._queue:
                if self._queue_wakeup.is_set():
                    self._queue_wakeup = trio.Event()
                await self._queue_wakeup.wait()  # shared by every worker
            cid = self._queue.popleft()
            job = self._jobs.get(cid)
            if job is None:
                continue
            if self.own.get(cid) is not PinState.QUEUED:
                self._jobs.pop(cid, None)
                continue
            async with self._limiter:
                if self._jobs.get(cid) is not job:
                    continue
                if job.reason is Reason.REPAIR and self._sources_silent(cid, job, self.now()):
                    # Its sources went silent while it waited (the rule of
                    # _abort_fetches_from): no hopeless fetch; the CID is planned
                    # again with the holders alive then.
                    self._jobs.pop(cid, None)
                    self._set_state(cid, PinState.REMOTE)
                    continue
                await self._fetch(cid, job)

    async def _fetch(self, cid: bytes, job: FetchJob) -> None:
        started = trio.current_time()
        self._set_state(cid, PinState.PINNING)
        error: str | None = None
        fetched = 0
        with trio.CancelScope() as scope:
            self._running[cid] = scope
            try:
                fetched = await self.local_pins.pin(cid, mode=job.mode, sources=job.sources)
            except trio.Cancelled:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure of the fetch is its pin_error
                error = describe(exc)
        self._running.pop(cid, None)
        self._jobs.pop(cid, None)
        if scope.cancelled_caught and job.aborted:
            log.info("pinning %s: every source went silent; re-planning it", cid_text(cid))
            await self._unpin_quietly(cid)
            self._set_state(cid, PinState.REMOTE)
            self._mark_dirty([cid])
            return
        if scope.cancelled_caught:
            # Unpinned while fetching: release anything the fetch may have pinned.
            await self._unpin_quietly(cid)
            self._set_state(cid, PinState.REMOTE)
            return
        rec = self.local.setdefault(cid, LocalRecord())
        if error is None:
            self._acct.counters.bytes_fetched += fetched
            rec.attempts, rec.error, rec.retry_at = 0, "", None
            rec.staged = False
            if job.reason is Reason.REPAIR:
                self._acct.counters.repairs["completed"] += 1
                log.info("repaired %s from %s: %d bytes fetched, %.1f s after it was queued "
                         "(fetch %.1f s)", cid_text(cid), " ".join(q[-6:] for q in job.sources),
                         fetched, trio.current_time() - job.queued_at,
                         trio.current_time() - started)
            self._set_state(cid, PinState.PINNED)
            return
        rec.attempts += 1
        rec.error = error[:500]
        rec.retry_at = self.now() + retry_backoff(rec.attempts, self.config.retry_min_s,
                                                  self.config.retry_max_s, self.rng.random())
        heapq.heappush(self._retry_heap, (rec.retry_at, cid))
        if job.reason is Reason.REPAIR:
            self._acct.counters.repairs["failed"] += 1
        log.warning("pinning %s failed (attempt %d, retry in %.0f s): %s", cid_text(cid),
                    rec.attempts, rec.retry_at - self.now(), rec.error)
        self._set_state(cid, PinState.PIN_ERROR)
        self._wake_planner()

    def _abort_fetches_from(self, peer_id: str) -> None:
        """Cancel running fetches whose every source peer has gone silent.

        A fetch waits up to the Bitswap timeout (30 s) for blocks; its sources
        were the holders alive when it was planned. Behind a partition they stay
        "connected" but silent, and ``concurrent_pins`` such fetches held every
        fetch slot while pins that could be repaired from reachable holders
        waited (found by the cluster fault campaign). The CID is re-planned with
        the sources alive now. Sources that are only suspect cancel the fetch
        only if a queued pin waits for its slot or another alive holder has the
        CID; otherwise it is cancelled when they are declared dead.
        """
        now = self.now()
        for cid, scope in list(self._running.items()):
            job = self._jobs.get(cid)
            if job is None or job.aborted or peer_id not in job.sources:
                continue
            if self._sources_silent(cid, job, now):
                job.aborted = True
                scope.cancel()

    def _sources_silent(self, cid: bytes, job: FetchJob, now: float) -> bool:
        """``policy.sources_silent`` for ``job`` with the health and holders now."""
        return sources_silent(job.sources, self.holdings.states(cid),
                              lambda q: self.health.status(q, now),
                              queue_waiting=bool(self._queue))

    def _release_stage(self, cid: bytes) -> None:
        rec = self.local.get(cid)
        if rec is None or not rec.staged:
            return
        rec.staged = False
        self._persist_local(cid)
        if self.own.get(cid) not in (PinState.REMOTE, PinState.PIN_ERROR):
            return  # the local pin is this node's holding now
        assert self._nursery is not None
        self._nursery.start_soon(self._unpin_quietly, cid)

    async def _unpin_quietly(self, cid: bytes) -> None:
        try:
            await self.local_pins.unpin(cid)
        except Exception as exc:  # noqa: BLE001 - a failed release leaves a local pin; logged
            log.warning("could not release the local copy of %s: %s", cid_text(cid), exc)

    def recover(self, cid: bytes | None = None) -> list[bytes]:
        """Retry pins in ``pin_error`` here now (one CID, or all when None).

        Returns:
            The CIDs that will be retried.
        """
        targets = ([cid] if cid is not None else
                   [c for c, st in self.holdings.peer_states(self.peer_id).items()
                    if st is PinState.PIN_ERROR])
        out = []
        for c in targets:
            if self.own.get(c) is not PinState.PIN_ERROR:
                continue
            rec = self.local.setdefault(c, LocalRecord())
            rec.attempts = 0
            rec.retry_at = None
            self._set_state(c, PinState.REMOTE)
            out.append(c)
        self._mark_dirty(out)
        return out

    def local_incomplete(self, cids: Iterable[bytes]) -> list[bytes]:
        """Report pins this node counted as ``pinned`` whose local blocks are not all
        present (``repo verify`` or ``pin status`` found them): they go back to
        ``queued`` and are fetched again, and peers see this node as not holding
        them meanwhile.

        Returns:
            The CIDs queued again.
        """
        out = []
        for cid in cids:
            if self.own.get(cid) is not PinState.PINNED or cid in self._jobs:
                continue
            pin = self.pinset.pin(cid)
            log.warning("the local copy of %s is missing blocks; fetching it again",
                        cid_text(cid))
            self._jobs[cid] = FetchJob(mode=pin.mode if pin else PinMode.RECURSIVE, sources=(),
                                   reason=Reason.ALLOCATED, queued_at=trio.current_time())
            self._set_state(cid, PinState.QUEUED)
            self._queue.append(cid)
            out.append(cid)
        if out:
            self._queue_wakeup.set()
        return out
