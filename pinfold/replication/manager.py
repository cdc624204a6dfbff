"""The replication manager: the thin trio driver around the planner (STYLE.md 1, 4).

It gathers the inputs - the shared pinset (``pinset.py``), every peer's pin
states (``states.py`` into ``Holdings``), the health view (``health.py``) -
calls ``plan_cids`` for the CIDs a change touched, carries out this node's
actions through ``LocalPins`` and reports the outcomes as its own states.
It decides nothing the planner decides; what it adds is *when*:

- **Re-planning.** A CID is planned again when its pinset entry changes, when
  a peer's state of it changes, when a peer that holds it turns suspect/dead
  or comes back, or when its retry time comes; CIDs short of holders are
  also re-planned when a peer joins. A full pass runs every
  ``replan_interval_s`` in chunks (expiries, drifting p_i). A heartbeat
  changes nothing unless it changes a peer's status, so a million-pin
  pinset is not re-planned per heartbeat.
- **Pins and unpins** of this node's share: ``pinqueue.py`` (queued,
  pinning, pinned, pin_error with backoff; unpinning, remote).
- **Origin copies.** ``pin_add`` on the node where the DAG was added keeps a
  local *staged* pin of it (not reported as a holding) until the pin has
  rmin healthy holders or is removed, so GC cannot lose the only copy while
  the holders fetch it.
- **Gossip and anti-entropy.** Local pinset writes and this node's state
  changes are persisted first (LMDB, through the store's writer) and then
  gossiped. A heartbeat every ``heartbeat_interval_s`` carries capacity,
  free bytes, queue length, addresses and digests of the replicas; a peer
  whose digests differ from ours, a peer that connects, and one random peer
  every ``sync_interval_s`` are reconciled over ``/pinfold/sync/1``.

Parts: the decisions are pure - ``policy.py`` (what this node does with its
share, when to sync), ``accounting.py`` (pin health counts, repair timing,
the reported value types), ``settings.py`` (``ManagerConfig``). The driving
is split by job into the mixins ``pinqueue.PinQueue`` (fetch and release),
``gossip.Gossip`` (messages, heartbeats, health events, persist then gossip),
``antientropy.AntiEntropy`` (sync sessions) and ``plan_actions.PlanActions``
(carrying out a planned chunk, assessing its pins); this module composes them,
keeps the state, and runs the user API and the planning loop.

Time: everything in the replication layer uses wall-clock seconds; the
manager reads ``trio.current_time()`` only and adds ``wall_offset`` (set once
by the daemon from ``time.time()``), so tests run it on a ``MockClock``.
"""

from __future__ import annotations

import heapq
import logging
import math
import random
from collections import Counter, deque
from collections.abc import AsyncIterator, Iterable
from typing import Any, Final

import trio

from pinfold.replication.accounting import (
    REPAIR_BUCKETS,
    Accounting,
    ClusterStatus,
    ManagerStats,
    PeerInfo,
    empty_stats,
    peer_info,
)
from pinfold.replication.antientropy import AntiEntropy
from pinfold.replication.errors import (
    ClockSkewError,
    InvalidPin,
    PinsetDecodeError,
    StaleWrite,
)
from pinfold.replication.gossip import Gossip
from pinfold.replication.health import HealthView
from pinfold.replication.hlc import HybridClock, hlc_from_wall
from pinfold.replication.holdings import Holdings
from pinfold.replication.persist import (
    Loaded,
    LocalRecord,
    Pending,
    ReplicationDB,
    int_bytes,
)
from pinfold.replication.pinqueue import FetchJob, PinQueue
from pinfold.replication.plan_actions import PlanActions
from pinfold.replication.pinset import Entry, PinSet
from pinfold.replication.planner import PinStatus, Policy, pin_status
from pinfold.replication.policy import (
    SyncSchedule,
    pin_bounds,
    restored_state,
)
from pinfold.replication.settings import ManagerConfig
from pinfold.replication.states import OwnStates, PeerStates
from pinfold.replication.transport import LocalPins, Transport
from pinfold.replication.types import (
    Pin,
    PinMode,
    PinState,
    Reason,
    ReportAction,
    cid_text,
)

__all__ = [
    "REPAIR_BUCKETS",
    "ClusterStatus",
    "Manager",
    "ManagerConfig",
    "ManagerStats",
    "PeerInfo",
]

log = logging.getLogger("pinfold.replication")

#: CIDs planned per chunk before yielding to other tasks (a few ms: RPCs stay prompt).
_CHUNK: Final = 512
_EMPTY_STATS: Final = empty_stats()


class Manager(Gossip, AntiEntropy, PinQueue, PlanActions):
    """The replication manager of one node.

    Usage::

        manager = Manager(peer_id, ManagerConfig(...), transport, local_pins, db=db,
                          wall_offset=time.time() - trio.current_time())
        await nursery.start(manager.run)
        await manager.pin_add(cid, rmin=3, rmax=3)

    Args:
        peer_id: this node's peer ID.
        config: settings.
        transport: the cluster's network (gossip + sync sessions).
        pins: the local store's pins (fetch + pin, unpin, stage).
        db: persistence of the pinset, states and peer stats (None: memory only).
        wall_offset: seconds to add to ``trio.current_time()`` for wall-clock time.
        rng: randomness (sync peer choice, backoff jitter).
    """

    def __init__(self, peer_id: str, config: ManagerConfig, transport: Transport,
                 pins: LocalPins, *, db: ReplicationDB | None = None, wall_offset: float = 0.0,
                 rng: random.Random | None = None) -> None:
        self.peer_id = peer_id
        self.config = config
        self.transport = transport
        self.local_pins = pins
        self.db = db
        self.wall_offset = wall_offset
        self.rng = rng or random.Random()
        self.pinset = PinSet()
        self.clock = HybridClock()
        self.health = HealthView(config.health_config())
        self.holdings = Holdings()
        self.own = OwnStates(peer_id, self.holdings, epoch=1)
        self.peers = PeerStates(peer_id, self.holdings)
        self.policy = Policy(self_peer_id=peer_id)
        self.local: dict[bytes, LocalRecord] = {}
        self._jobs: dict[bytes, FetchJob] = {}
        self._queue: deque[bytes] = deque()
        self._queue_wakeup = trio.Event()
        self._running: dict[bytes, trio.CancelScope] = {}
        self._limiter = trio.CapacityLimiter(config.concurrent_pins)
        self._dirty: set[bytes] = set()
        self._dirty_event = trio.Event()
        self._changed = trio.Event()
        self._full_pass_due = True
        self._retry_heap: list[tuple[float, bytes]] = []
        self._acct = Accounting()  # pin health codes, repair timing, counters
        self._reports: dict[bytes, ReportAction] = {}
        self._pending = Pending()
        self._to_gossip: list[Entry] = []
        self._published_version = 0
        self._flush_event = trio.Event()
        self._flush_done = trio.Event()
        # Each peer's states log as its last heartbeat advertised it (this run), the
        # peers a sync session completed with since we started or they came back
        # (a round trip: heartbeats held up by a partition arrive long after they
        # were sent, from a peer that may have died meanwhile), and those of them
        # whose reports we have applied up to the advertised version: only their
        # "pinned" lets this node drop an extra copy (planner, "current").
        self._advertised: dict[str, tuple[int, int]] = {}
        self.last_heartbeat: dict[str, float] = {}  # peer -> wall time its last beat arrived
        # When a member last joined or changed status (wall seconds): first placements
        # wait until the view has settled (``policy.settle_until``).
        self.view_changed_at: float | None = None
        self._proven: set[str] = set()
        self._current: set[str] = set()
        self._syncs = SyncSchedule()
        self._sync_event = trio.Event()
        self._synced_once = trio.Event()
        self._may_plan = trio.Event()
        self._seq = 0
        self._incarnation = 0
        self._local_counts = Counter[PinState]()
        self._stats: ManagerStats | None = None
        self._nursery: trio.Nursery | None = None
        self._started = False

    def now(self) -> float:
        """Wall-clock seconds (``trio.current_time()`` + ``wall_offset``)."""
        return trio.current_time() + self.wall_offset

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Load the persisted state, then gossip, plan, pin and sync until cancelled.

        Calls ``task_status.started()`` once the state is loaded and inbound
        messages are accepted. Cancellation stops every task; pins being
        fetched are left queued and resume at the next start.
        """
        if self._started:
            raise RuntimeError("Manager.run called twice")
        self._started = True
        if self.db is not None:
            loaded = await trio.to_thread.run_sync(self.db.load)
            self._restore(loaded)
            held = [c for c, st in self.holdings.peer_states(self.peer_id).items()
                    if st is PinState.PINNED]
            missing = await trio.to_thread.run_sync(
                lambda: [c for c in held if not self.local_pins.has_pin(c)])
            for cid in missing:  # a crash between the store's unpin and our state's commit
                self._set_state(cid, PinState.QUEUED)
                pin = self.pinset.pin(cid)
                self._jobs[cid] = FetchJob(mode=pin.mode if pin else PinMode.RECURSIVE, sources=(),
                                       reason=Reason.ALLOCATED)
                self._queue.append(cid)
        else:
            self.own = OwnStates(self.peer_id, self.holdings, epoch=max(1, int(self.now() * 1000)))
        self._incarnation = int(self.now() * 1000)
        self.health.observe(self._heartbeat(), self.now())
        for rec in self.health.records(self.now()):
            if rec.peer_id != self.peer_id and rec.info is not None and rec.info.addresses:
                self.transport.note_addresses(rec.peer_id, rec.info.addresses)
        self.transport.attach(self)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._heartbeat_loop)
            nursery.start_soon(self._health_loop)
            nursery.start_soon(self._flush_loop)
            nursery.start_soon(self._sync_loop)
            nursery.start_soon(self._startup_gate)
            nursery.start_soon(self._plan_loop)
            for _ in range(self.config.concurrent_pins):
                nursery.start_soon(self._pin_worker)
            for peer in self.transport.connected():
                self.on_peer(peer, True)
            task_status.started()

    def _restore(self, loaded: Loaded) -> None:
        """Rebuild the in-memory state from ``ReplicationDB.load`` output."""
        self.pinset.merge(loaded.entries)
        wm = loaded.meta_int(b"watermark")
        if wm:
            self.pinset.compact_tombstones(wm)
        self.clock = HybridClock(last=max(loaded.meta_int(b"hlc"), self.pinset.statistics().max_ts))
        for owner, states in loaded.holdings.items():
            if owner != self.peer_id:
                self.holdings.replace_peer(owner, states)
        self.peers = PeerStates(self.peer_id, self.holdings,
                                {o: k for o, k in loaded.known.items() if o != self.peer_id})
        for cid, (state, rec) in loaded.local.items():
            state = restored_state(state)
            if state is not PinState.REMOTE:
                self.holdings.set(cid, self.peer_id, state)
                self._local_counts[state] += 1
            if not rec.empty():
                self.local[cid] = rec
            if state is PinState.QUEUED:
                pin = self.pinset.pin(cid)
                mode = pin.mode if pin is not None else PinMode.RECURSIVE
                self._jobs[cid] = FetchJob(mode=mode, sources=(), reason=Reason.ALLOCATED)
                self._queue.append(cid)
            if state is PinState.PIN_ERROR and rec.retry_at is not None:
                heapq.heappush(self._retry_heap, (rec.retry_at, cid))
        # Every start opens a new epoch of our states log: peers pull a reset of
        # the restored states. Reusing the epoch let a peer keep changes it had
        # pulled before the crash but we had not persisted (and the restore's own
        # rewrites, pinning -> queued, unpinning -> pinned) as our current states.
        epoch = max(loaded.meta_int(b"epoch") + 1, int(self.now() * 1000))
        self._pending.meta[b"epoch"] = int_bytes(epoch)
        self.own = OwnStates(self.peer_id, self.holdings, epoch=epoch,
                             version=loaded.meta_int(b"version"))
        self._published_version = self.own.version
        self._pending.meta[b"version"] = int_bytes(self.own.version)
        health = loaded.meta.get(b"health")
        if health:
            try:
                self.health = HealthView.from_bytes(health, self.config.health_config(),
                                                    self.now())
            except PinsetDecodeError as exc:
                log.warning("peer stats in the store do not decode (%s); starting afresh", exc)
        self._dirty.update(self.pinset.cids())
        log.info("replication state loaded: %d pins, %d own states, %d peers", len(self.pinset),
                 len(self.holdings.peer_states(self.peer_id)), len(self.health))

    async def _startup_gate(self) -> None:
        """Planning waits for a first sync with some peer, or the peer TTL at most."""
        wait = self.config.startup_wait_s
        if wait is None:
            wait = self.config.ttl_s
        with trio.move_on_after(wait):
            await self._synced_once.wait()
        self._may_plan.set()
        self._wake_planner()

    async def pin_add(self, cid: bytes, *, name: str = "", mode: PinMode = PinMode.RECURSIVE,
                      rmin: int | None = None, rmax: int | None = None,
                      availability_target: float | None = None, expire_at: float | None = None,
                      metadata: dict[str, str] | None = None, stage: bool = False) -> Pin:
        """Add (or change) a pin in the shared pinset.

        Args:
            cid: pin key (binary CIDv1).
            name: label.
            mode: recursive or direct.
            rmin, rmax: replication bounds (defaults from the config; with an
                availability target and no rmax, enough for the target at
                ``p_prior`` plus one).
            availability_target: target P_a in (0, 1), or None.
            expire_at: wall-clock seconds after which the pin is removed.
            metadata: string labels.
            stage: keep an origin copy locally until the pin has rmin healthy
                holders (when the DAG is complete in the local store).

        Returns:
            The pin as written.

        A pin is never weakened: a direct pin over a live recursive one is
        refused. Without a ``name`` a re-pin keeps the current one.

        Raises:
            InvalidPin: a bad field (the message names it), or a direct pin over
                a recursive one.
        """
        existing = self.pinset.pin(cid)
        if existing is not None and existing.mode is PinMode.RECURSIVE and \
                mode is PinMode.DIRECT:
            raise InvalidPin(f"{cid_text(cid)} is already pinned recursively; unpin it first "
                             "to pin only its root block")
        if not name and existing is not None:
            name = existing.name
        c = self.config
        lo, hi = pin_bounds(rmin=rmin, rmax=rmax, availability_target=availability_target,
                            default_rmin=c.rmin, default_rmax=c.rmax, p_prior=c.p_prior)
        size = None
        if stage:
            size = await self.local_pins.stage(cid)
            if size is not None:
                rec = self.local.setdefault(cid, LocalRecord())
                rec.staged = True
                self._persist_local(cid)
        pin = Pin(cid=cid, name=name, mode=mode, rmin=lo, rmax=hi,
                  availability=availability_target, expire_at=expire_at,
                  metadata=tuple(sorted((metadata or {}).items())), size_bytes=size)
        self._write(pin=pin, cid=cid)
        return pin

    async def pin_rm(self, cid: bytes) -> Entry:
        """Remove a pin from the shared pinset (a tombstone); holders release it.

        Raises:
            PinNotFound: the pinset has no live pin for ``cid``.
        """
        entry = self._write(pin=None, cid=cid)
        await trio.lowlevel.checkpoint()
        return entry

    def _write(self, *, pin: Pin | None, cid: bytes) -> Entry:
        wall = self.now()
        for _ in range(3):
            ts = self.clock.now(wall)
            try:
                if pin is None:
                    entry = self.pinset.remove(cid, ts=ts, peer_id=self.peer_id)
                else:
                    entry = self.pinset.put(pin, ts=ts, peer_id=self.peer_id)
                break
            except StaleWrite:
                try:
                    self.clock.receive(self.pinset.statistics().max_ts, wall)
                except ClockSkewError:
                    pass
        else:
            raise StaleWrite(f"could not order a write for {cid_text(cid)} after the pinset")
        self._pending.pins[cid] = entry
        self._pending.meta[b"hlc"] = int_bytes(self.clock.last)
        self._to_gossip.append(entry)
        self._flush_event.set()
        self._mark_dirty([cid])
        return entry

    def local_state(self, cid: bytes) -> PinState:
        """This node's state of ``cid``."""
        return self.own.get(cid)

    def local_error(self, cid: bytes) -> str:
        """The last pin failure of ``cid`` here ("" when none)."""
        rec = self.local.get(cid)
        return rec.error if rec is not None else ""

    def is_staged(self, cid: bytes) -> bool:
        """True while an origin copy of ``cid`` is kept here."""
        rec = self.local.get(cid)
        return rec is not None and rec.staged

    async def iter_pins(self, state: PinState | None = None,
                        page: int = 512) -> AsyncIterator[tuple[Pin, PinState]]:
        """Live pins in listing order with this node's state, optionally filtered.

        Reads the pinset a page of buckets at a time with a checkpoint between
        pages, so a listing of a million pins starts at once and does not hold
        up the node; pins changed during the listing may or may not appear.
        """
        nb = 1 << self.pinset.tree_bits
        lo: int | None = 0
        while lo is not None and lo < nb:
            entries, lo = self.pinset.entries_in_buckets(lo, nb, page)
            for e in entries:
                if e.pin is None:
                    continue
                st = self.own.get(e.cid)
                if state is None or st is state:
                    yield e.pin, st
            await trio.lowlevel.checkpoint()

    def status(self, cid: bytes) -> PinStatus | None:
        """``pin status``: holders, states and achieved availability (None: not pinned)."""
        return pin_status(cid, self.pinset, self.holdings, self.health, self.now())

    def cluster_peers(self) -> list[PeerInfo]:
        """Every known cluster peer (this node included), sorted by peer ID."""
        now = self.now()
        return [peer_info(rec, self.holdings.peer_states(rec.peer_id), now)
                for rec in self.health.records(now)]

    def cluster_status(self) -> ClusterStatus:
        """``cluster status`` (as of the last planning of each pin)."""
        return self._acct.cluster_status(len(self.pinset), trio.current_time())

    def last_statistics(self) -> ManagerStats:
        """The snapshot taken at the last heartbeat (safe to read from any thread).

        The metrics endpoint runs in its own thread, which must neither read
        trio's clock nor iterate structures the trio thread is changing.
        """
        stats = self._stats
        return stats if stats is not None else _EMPTY_STATS

    def statistics(self) -> ManagerStats:
        """Counters and gauges for metrics, computed now (call from the trio thread)."""
        return self._acct.stats(pins=len(self.pinset), local_counts=self._local_counts,
                                statuses=self.health.statuses(self.now()).values(),
                                now=trio.current_time())

    def apply_config(self, config: ManagerConfig) -> None:
        """Take new settings that can change while running (a config reload).

        Everything applies at once: default rmin/rmax of new pins,
        ``concurrent_pins``, intervals, retry times, the tombstone horizon, and
        the health thresholds (heartbeat period, TTL, grace, p_prior) - known
        peers keep their estimates. Every pin is re-planned.
        """
        if config.health_config() != self.health.config:
            self.health.reconfigure(config.health_config())
        self._limiter.total_tokens = config.concurrent_pins
        if config.concurrent_pins > self.config.concurrent_pins and self._nursery is not None:
            for _ in range(config.concurrent_pins - self.config.concurrent_pins):
                self._nursery.start_soon(self._pin_worker)
        self.config = config
        self._full_pass_due = True
        self._wake_planner()

    def changed(self) -> trio.Event:
        """An event set at the next change of any pin's entry or holders' states
        (what ``status`` reports); take a new one after each wake-up."""
        return self._changed

    def _mark_dirty(self, cids: Iterable[bytes]) -> None:
        self._changed.set()
        self._changed = trio.Event()
        before = len(self._dirty)
        self._dirty.update(cids)
        if len(self._dirty) != before:
            self._wake_planner()

    def _wake_planner(self) -> None:
        self._dirty_event.set()

    async def _plan_loop(self) -> None:
        await self._may_plan.wait()
        next_full = trio.current_time()
        while True:
            now_t = trio.current_time()
            deadline = min(next_full, self._retry_heap[0][0] - self.wall_offset
                           if self._retry_heap else math.inf)
            if not self._dirty and not self._full_pass_due and now_t < deadline:
                self._dirty_event = trio.Event()
                with trio.move_on_at(deadline):
                    await self._dirty_event.wait()
                continue
            now_w = self.now()
            while self._retry_heap and self._retry_heap[0][0] <= now_w:
                _, cid = heapq.heappop(self._retry_heap)
                self._dirty.add(cid)
            if self._full_pass_due or trio.current_time() >= next_full:
                self._full_pass_due = False
                next_full = trio.current_time() + self.config.replan_interval_s
                self._compact_tombstones()
                cids = self.pinset.cids()
                cids.extend(c for c in self._acct.info if c not in self.pinset)
                cids.extend(c for c in self.local if self.local[c].staged)
                self._dirty.clear()
                self._acct.begin_full_pass()
            else:
                cids = list(self._dirty)
                self._dirty.clear()
            for i in range(0, len(cids), _CHUNK):
                self._plan_chunk(cids[i:i + _CHUNK])
                await trio.lowlevel.checkpoint()
            self._acct.end_full_pass()

    def _compact_tombstones(self) -> None:
        before = hlc_from_wall(max(0.0, self.now() - self.config.tombstone_horizon_s))
        gone = self.pinset.compact_tombstones(before)
        for cid in gone:
            self._pending.pins[cid] = None
        if gone:
            self._pending.meta[b"watermark"] = int_bytes(self.pinset.watermark)
            self._flush_event.set()

    def plan_now(self, cids: Iterable[bytes]) -> list[Any]:
        """Plan the given CIDs at once and carry out the actions (tests, ``recover``)."""
        return self._plan_chunk(list(cids))
