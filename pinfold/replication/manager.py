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
- **Pins.** A ``PinAction`` for this node queues the CID (state ``queued``);
  at most ``concurrent_pins`` fetches run at once (``pinning``); each fetches
  the DAG by Bitswap from the current holders and pins it with block
  refcounts (``pinned``). A failure is ``pin_error``; the planner then gives
  the pin to another peer, and this node may take it again only after a
  backoff (``retry_min_s`` doubling up to ``retry_max_s``) or ``recover``.
- **Unpins.** A queued or running fetch is cancelled; a pinned copy goes
  ``unpinning`` and is released (GC reclaims the blocks), then ``remote``.
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
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import trio

from pinfold.replication.allocation import availability, replicas_needed
from pinfold.replication.errors import (
    ClockSkewError,
    InvalidPeerID,
    InvalidPin,
    PinNotFound,
    PinsetDecodeError,
    StaleWrite,
    describe,
)
from pinfold.replication.health import HealthConfig, HealthView
from pinfold.replication.hlc import HybridClock, hlc_from_wall
from pinfold.replication.holdings import ACTIVE_STATES, Holdings
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
    decode_response,
    encode_beat,
    encode_request,
    encode_response,
)
from pinfold.replication.persist import (
    Loaded,
    LocalRecord,
    Pending,
    ReplicationDB,
    int_bytes,
    known_key,
    known_value,
)
from pinfold.replication.pinset import Entry, PinSet, decode_entries, encode_entries
from pinfold.replication.planner import PinStatus, PlanContext, Policy, pin_status, plan_cids
from pinfold.replication.states import OwnStates, PeerStates, decode_delta, encode_delta
from pinfold.replication.sync import MAX_PAGE_ENTRIES, Reconciler, answer
from pinfold.replication.transport import LocalPins, SyncSession, Transport, TransportError
from pinfold.replication.types import (
    ExpireAction,
    HealthEvent,
    HealthEventKind,
    Heartbeat,
    PeerStatus,
    Pin,
    PinAction,
    PinMode,
    PinState,
    Reason,
    ReportAction,
    UnpinAction,
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

#: Repair-duration histogram buckets, seconds (grace periods of seconds to minutes,
#: fetches of seconds to hours).
REPAIR_BUCKETS: Final = (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
                         7200.0, 21600.0)
#: Entries asked per anti-entropy page (responders overshoot by up to one bucket).
_SYNC_PAGE: Final = MAX_PAGE_ENTRIES * 4 // 5
#: CIDs planned per chunk before yielding to other tasks.
_CHUNK: Final = 2048
#: Pinset entries per gossip message (~130 bytes each: ~260 KB, under gossip's 1 MiB).
_GOSSIP_ENTRIES: Final = 2000
_UNDER, _AT, _OVER = 0, 1, 2
_CATEGORY_NAMES: Final = ("under_replicated", "at_target", "over_replicated")
_REPAIRING_FLAG: Final = 4
_ERROR_FLAG: Final = 8
_SHORT_FLAG: Final = 16


@dataclass(frozen=True, slots=True, kw_only=True)
class ManagerConfig:
    """The manager's settings (``[replication]`` config, DESIGN.md "Replication").

    Attributes:
        heartbeat_interval_s: heartbeat period, seconds.
        peer_ttl_s: silence after which a peer is suspect, seconds (0 = 2 heartbeats).
        repair_grace_s: further silence after which it is dead, seconds.
        p_prior: availability assumed for a peer not yet observed, in (0, 1).
        concurrent_pins: pin fetches at once (>= 1).
        replan_interval_s: a full planning pass at least this often, seconds.
        tombstone_horizon_s: unpins are forgotten after this, seconds.
        sync_interval_s: anti-entropy with a random peer this often, seconds.
        retry_min_s: first wait before a failed pin may be retried, seconds.
        retry_max_s: longest wait (the wait doubles per failure), seconds.
        rmin: default rmin of new pins.
        rmax: default rmax of new pins.
        capacity_bytes: capacity announced (0 = what ``LocalPins.capacity`` says).
        startup_wait_s: how long planning waits at start for a first sync with a
            peer, seconds (None = the peer TTL).
        health_save_interval_s: how often the peer stats (p_i) are persisted, seconds.

    Raises:
        InvalidPin: a value is out of range (the message names it).
    """

    heartbeat_interval_s: float = 5.0
    peer_ttl_s: float = 0.0
    repair_grace_s: float = 60.0
    p_prior: float = 0.9
    concurrent_pins: int = 4
    replan_interval_s: float = 30.0
    tombstone_horizon_s: float = 7 * 86400.0
    sync_interval_s: float = 30.0
    retry_min_s: float = 5.0
    retry_max_s: float = 600.0
    rmin: int = 2
    rmax: int = 3
    capacity_bytes: int = 0
    startup_wait_s: float | None = None
    health_save_interval_s: float = 30.0

    def __post_init__(self) -> None:
        for name in ("heartbeat_interval_s", "replan_interval_s", "tombstone_horizon_s",
                     "sync_interval_s", "retry_min_s", "retry_max_s", "health_save_interval_s"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
                raise InvalidPin(f"{name}: must be a number > 0, got {v!r}")
        if self.retry_max_s < self.retry_min_s:
            raise InvalidPin("retry_max_s: must be >= retry_min_s")
        if type(self.concurrent_pins) is not int or self.concurrent_pins < 1:
            raise InvalidPin(f"concurrent_pins: must be >= 1, got {self.concurrent_pins!r}")
        if not 1 <= self.rmin <= self.rmax:
            raise InvalidPin(f"rmin/rmax: need 1 <= rmin <= rmax, got {self.rmin}/{self.rmax}")
        if type(self.capacity_bytes) is not int or self.capacity_bytes < 0:
            raise InvalidPin(f"capacity_bytes: must be >= 0, got {self.capacity_bytes!r}")
        self.health_config()  # validates the health settings

    def health_config(self) -> HealthConfig:
        """The health view's settings."""
        return HealthConfig(heartbeat_interval_s=self.heartbeat_interval_s,
                            peer_ttl_s=self.peer_ttl_s, repair_grace_s=self.repair_grace_s,
                            p_prior=self.p_prior)

    @property
    def ttl_s(self) -> float:
        """The suspect threshold, seconds."""
        return self.peer_ttl_s or 2.0 * self.heartbeat_interval_s

    @classmethod
    def from_config(cls, config: Any, **overrides: Any) -> ManagerConfig:
        """Build from a ``pinfold.config.Config`` (its ``replication`` section)."""
        r = config.replication
        values: dict[str, Any] = {}
        for name in ("heartbeat_interval_s", "peer_ttl_s", "repair_grace_s", "p_prior",
                     "concurrent_pins", "replan_interval_s", "tombstone_horizon_s", "rmin",
                     "rmax", "sync_interval_s", "retry_min_s", "retry_max_s", "capacity_bytes"):
            if hasattr(r, name):
                values[name] = getattr(r, name)
        values.update(overrides)
        return cls(**values)


@dataclass(frozen=True, slots=True, kw_only=True)
class ManagerStats:
    """A snapshot for metrics (``pinfold/daemon/cluster.py`` turns it into Prometheus families).

    Attributes:
        pins: live pins in the shared pinset.
        local_states: this node's pins by state (``remote`` = in the pinset, not held here).
        queue_length: pins queued or fetching here.
        cluster_pins: pins by healthy holders vs rmin/rmax: under_replicated,
            at_target, over_replicated (as this node sees the cluster).
        peers: cluster peers by state: alive, suspect, dead (this node included).
        repairs: repair fetches by outcome: started, completed, failed.
        repair_buckets: cumulative ``(upper bound s, count)`` of repair durations
            (a holder declared dead -> the pin back at rmin).
        repair_count, repair_sum_s: histogram count and sum, seconds.
        min_availability: the lowest achieved availability over all pins (1 when none).
        bytes_fetched: bytes fetched for pins, bytes.
        syncs, sync_failures: anti-entropy sessions run and failed.
        rejected_messages: gossip messages dropped as malformed or forged.
    """

    pins: int
    local_states: dict[str, int]
    queue_length: int
    cluster_pins: dict[str, int]
    peers: dict[str, int]
    repairs: dict[str, int]
    repair_buckets: tuple[tuple[float, int], ...]
    repair_count: int
    repair_sum_s: float
    min_availability: float
    bytes_fetched: int
    syncs: int
    sync_failures: int
    rejected_messages: int


_NO_RECORD: Final = LocalRecord()  # shared, never modified: a state with no bookkeeping
_EMPTY_STATS: Final = ManagerStats(
    pins=0, local_states=dict.fromkeys([s.value for s in PinState], 0), queue_length=0,
    cluster_pins=dict.fromkeys(_CATEGORY_NAMES, 0), peers={"alive": 0, "suspect": 0, "dead": 0},
    repairs={"started": 0, "completed": 0, "failed": 0},
    repair_buckets=tuple((b, 0) for b in (*REPAIR_BUCKETS, math.inf)), repair_count=0,
    repair_sum_s=0.0, min_availability=1.0, bytes_fetched=0, syncs=0, sync_failures=0,
    rejected_messages=0)


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerInfo:
    """One cluster peer for ``cluster peers``."""

    peer_id: str
    state: PeerStatus
    p: float
    capacity_bytes: int
    free_bytes: int
    pin_queue_len: int
    pins: int
    addresses: tuple[str, ...]
    last_seen_s: float

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"peer_id": self.peer_id, "state": self.state.value, "p": self.p,
                "capacity_bytes": self.capacity_bytes, "free_bytes": self.free_bytes,
                "pin_queue_len": self.pin_queue_len, "pins": self.pins,
                "addresses": list(self.addresses), "last_seen_s": self.last_seen_s}


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterStatus:
    """``cluster status``: the pinset's health as this node sees it.

    Attributes:
        pins: live pins.
        under_replicated: pins with fewer healthy holders than rmin.
        repairing: of those, pins some peer is fetching now.
        errors: pins some holder reports pin_error for.
        at_target: pins with rmin..rmax healthy holders.
        over: pins with more than rmax healthy holders.
        min_availability: lowest achieved availability (1 when no pins).
        under_replicated_cids: up to 100 of the under-replicated CIDs (text).
        error_cids: up to 100 CIDs with errors (text).
    """

    pins: int
    under_replicated: int
    repairing: int
    errors: int
    at_target: int
    over: int
    min_availability: float
    under_replicated_cids: tuple[str, ...]
    error_cids: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"pins": self.pins, "under_replicated": self.under_replicated,
                "repairing": self.repairing, "errors": self.errors,
                "at_target": self.at_target, "over": self.over,
                "min_availability": self.min_availability,
                "under_replicated_cids": list(self.under_replicated_cids),
                "error_cids": list(self.error_cids)}


@dataclass(slots=True)
class _Job:
    mode: PinMode
    sources: tuple[str, ...]
    reason: Reason
    aborted: bool = False  # every source went silent: re-plan rather than wait out the fetch
    queued_at: float = 0.0  # trio time the job was queued


@dataclass(slots=True)
class _Counters:
    repairs: Counter[str] = field(default_factory=Counter)
    repair_hist: list[int] = field(default_factory=lambda: [0] * len(REPAIR_BUCKETS))
    repair_count: int = 0
    repair_sum: float = 0.0
    bytes_fetched: int = 0
    syncs: int = 0
    sync_failures: int = 0
    rejected: int = 0
    plans: int = 0
    planned_cids: int = 0


class Manager:
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
        self._jobs: dict[bytes, _Job] = {}
        self._queue: deque[bytes] = deque()
        self._queue_wakeup = trio.Event()
        self._running: dict[bytes, trio.CancelScope] = {}
        self._limiter = trio.CapacityLimiter(config.concurrent_pins)
        self._dirty: set[bytes] = set()
        self._dirty_event = trio.Event()
        self._changed = trio.Event()
        self._full_pass_due = True
        self._retry_heap: list[tuple[float, bytes]] = []
        # Pins that are not simply at target (under/over-replicated, repairing, in
        # error or short of holders): their category/flag code and availability. A
        # pin at target is not stored (a million healthy pins cost nothing here);
        # the lowest availability among those is kept as a running minimum,
        # recomputed by each full pass.
        self._cid_info: dict[bytes, int] = {}
        self._cid_avail: dict[bytes, float] = {}
        self._clean_min = 1.0
        self._clean_min_next: float | None = None
        self._category_counts = [0, 0, 0]
        self._flag_counts = Counter[int]()
        self._repair_since: dict[bytes, float] = {}
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
        self._proven: set[str] = set()
        self._current: set[str] = set()
        self._sync_wanted: dict[str, float] = {}
        self._syncing: set[str] = set()
        self._last_sync: dict[str, float] = {}
        self._sync_event = trio.Event()
        self._synced_once = trio.Event()
        self._may_plan = trio.Event()
        self._seq = 0
        self._incarnation = 0
        self._counters = _Counters()
        self._local_counts = Counter[PinState]()
        self._min_avail_cache: tuple[float, float] | None = None
        self._stats: ManagerStats | None = None
        self._nursery: trio.Nursery | None = None
        self._started = False

    # ------------------------------------------------------------------ time

    def now(self) -> float:
        """Wall-clock seconds (``trio.current_time()`` + ``wall_offset``)."""
        return trio.current_time() + self.wall_offset

    # ------------------------------------------------------------------ service

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
                self._jobs[cid] = _Job(mode=pin.mode if pin else PinMode.RECURSIVE, sources=(),
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
            if state is PinState.PINNING:
                state = PinState.QUEUED  # the fetch was interrupted: fetch again
            if state is PinState.UNPINNING:
                state = PinState.PINNED  # the planner decides again whether to drop it
            if state is not PinState.REMOTE:
                self.holdings.set(cid, self.peer_id, state)
                self._local_counts[state] += 1
            if not rec.empty():
                self.local[cid] = rec
            if state is PinState.QUEUED:
                pin = self.pinset.pin(cid)
                mode = pin.mode if pin is not None else PinMode.RECURSIVE
                self._jobs[cid] = _Job(mode=mode, sources=(), reason=Reason.ALLOCATED)
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

    # ------------------------------------------------------------------ user API

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
        lo = rmin if rmin is not None else (min(c.rmin, rmax) if rmax is not None else c.rmin)
        if rmax is not None:
            hi = rmax
        elif availability_target is not None:
            need = replicas_needed(self.config.p_prior, availability_target)
            hi = max(c.rmax, lo, need + 1)
        else:
            hi = max(c.rmax, lo)
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

    async def wait_flushed(self) -> None:
        """Wait until everything written so far is persisted and gossiped."""
        while self._pending or self._to_gossip or self.own.version != self._published_version:
            done = self._flush_done
            self._flush_event.set()
            await done.wait()

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
        out = []
        for rec in self.health.records(now):
            info = rec.info
            held = sum(1 for st in self.holdings.peer_states(rec.peer_id).values()
                       if st is PinState.PINNED)
            out.append(PeerInfo(
                peer_id=rec.peer_id, state=rec.status, p=rec.p,
                capacity_bytes=info.capacity_bytes if info else 0,
                free_bytes=info.free_bytes if info else 0,
                pin_queue_len=info.pin_queue_len if info else 0, pins=held,
                addresses=info.addresses if info else (), last_seen_s=max(0.0, now - rec.last_seen)))
        return out

    def cluster_status(self) -> ClusterStatus:
        """``cluster status`` (as of the last planning of each pin)."""
        under: list[str] = []
        errors: list[str] = []
        repairing = 0
        for cid, code in self._cid_info.items():
            if code & 3 == _UNDER and len(under) < 100:
                under.append(cid_text(cid))
            if code & _REPAIRING_FLAG:
                repairing += 1
            if code & _ERROR_FLAG and len(errors) < 100:
                errors.append(cid_text(cid))
        return ClusterStatus(
            pins=len(self.pinset), under_replicated=self._category_counts[_UNDER],
            repairing=repairing, errors=self._flag_counts[_ERROR_FLAG],
            at_target=self._at_target(), over=self._category_counts[_OVER],
            min_availability=self._min_availability(), under_replicated_cids=tuple(under),
            error_cids=tuple(errors))

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
            self._jobs[cid] = _Job(mode=pin.mode if pin else PinMode.RECURSIVE, sources=(),
                                   reason=Reason.ALLOCATED, queued_at=trio.current_time())
            self._set_state(cid, PinState.QUEUED)
            self._queue.append(cid)
            out.append(cid)
        if out:
            self._queue_wakeup.set()
        return out

    def last_statistics(self) -> ManagerStats:
        """The snapshot taken at the last heartbeat (safe to read from any thread).

        The metrics endpoint runs in its own thread, which must neither read
        trio's clock nor iterate structures the trio thread is changing.
        """
        stats = self._stats
        return stats if stats is not None else _EMPTY_STATS

    def statistics(self) -> ManagerStats:
        """Counters and gauges for metrics, computed now (call from the trio thread)."""
        now = self.now()
        local = {s.value: self._local_counts[s] for s in PinState if s is not PinState.REMOTE}
        held = sum(self._local_counts[s] for s in ACTIVE_STATES | {PinState.PIN_ERROR})
        local["remote"] = max(0, len(self.pinset) - held)
        hs = self.health.statuses(now)
        peers = {"alive": 0, "suspect": 0, "dead": 0}
        for st in hs.values():
            peers[st.value] += 1
        c = self._counters
        cum = 0
        buckets = []
        for b, n in zip(REPAIR_BUCKETS, c.repair_hist, strict=True):
            cum += n
            buckets.append((b, cum))
        buckets.append((math.inf, c.repair_count))
        return ManagerStats(
            pins=len(self.pinset), local_states=local,
            queue_length=self._local_counts[PinState.QUEUED] + self._local_counts[PinState.PINNING],
            cluster_pins={"under_replicated": self._category_counts[_UNDER],
                          "at_target": self._at_target(),
                          "over_replicated": self._category_counts[_OVER]},
            peers=peers,
            repairs={k: c.repairs[k] for k in ("started", "completed", "failed")},
            repair_buckets=tuple(buckets), repair_count=c.repair_count, repair_sum_s=c.repair_sum,
            min_availability=self._min_availability(), bytes_fetched=c.bytes_fetched,
            syncs=c.syncs, sync_failures=c.sync_failures, rejected_messages=c.rejected)

    def _min_availability(self) -> float:
        now = trio.current_time()
        cached = self._min_avail_cache
        if cached is not None and now - cached[0] < 2.0:
            return cached[1]
        low = min(self._cid_avail.values(), default=1.0)
        if len(self.pinset) > len(self._cid_avail):
            low = min(low, self._clean_min)
        self._min_avail_cache = (now, low)
        return low

    def _at_target(self) -> int:
        c = self._category_counts
        return max(0, len(self.pinset) - c[_UNDER] - c[_OVER])

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

    # ------------------------------------------------------------------ transport side

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
            self._counters.rejected += 1
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
            self._mark_dirty(self._short_cids())
        self._on_health_events(events)
        digest, count = self.pinset.summary(0, 0)
        pins_differ = (digest, count) != (beat.pinset_digest, beat.pinset_count)
        self._advertised[peer_id] = (beat.states_epoch, beat.states_version)
        states_behind = self.peers.needs_pull(peer_id, beat.states_epoch, beat.states_version)
        self._check_current(peer_id)
        if pins_differ or states_behind:
            self._want_sync(peer_id, immediate=False)
        elif peer_id in self._proven:
            self._sync_wanted.pop(peer_id, None)
        else:
            self._want_sync(peer_id, immediate=True)  # a round trip makes it current

    def _merge(self, entries: Iterable[Entry]) -> int:
        """Merge remote pinset entries (after the clock check); returns how many changed."""
        wall = self.now()
        accepted = []
        for e in entries:
            try:
                self.clock.receive(e.ts, wall)
            except ClockSkewError as exc:
                self._counters.rejected += 1
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

    def _check_current(self, peer_id: str) -> None:
        """Track whether ``peer_id``'s reported states are up to date: a sync
        session with it completed since we started or it came back, and its
        states are applied at least up to what its last heartbeat advertised. A
        peer turning current re-plans its CIDs (a drop of an extra copy may have
        waited for it)."""
        adv = self._advertised.get(peer_id)
        k = self.peers.known(peer_id)
        now_current = (peer_id in self._proven and adv is not None and k is not None
                       and k[0] == adv[0] and k[1] >= adv[1]
                       and not self.peers.resuming(peer_id))
        if now_current and peer_id not in self._current:
            self._current.add(peer_id)
            self._mark_dirty(self.holdings.cids_of(peer_id))
        elif not now_current:
            self._current.discard(peer_id)

    # ------------------------------------------------------------------ health

    def _heartbeat(self) -> Heartbeat:
        cap, free = self.local_pins.capacity()
        if self.config.capacity_bytes:
            used = max(0, cap - free)
            cap = self.config.capacity_bytes
            free = max(0, cap - used)
        free = min(free, cap)
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
        for ev in events:
            cids = set(self.holdings.cids_of(ev.peer_id))
            if ev.kind is HealthEventKind.DEAD:
                log.warning("cluster peer %s is dead: its %d pins are repaired elsewhere",
                            ev.peer_id, len(cids))
                at = ev.at
                for cid in cids:
                    if self.holdings.get(cid, ev.peer_id) is PinState.PINNED:
                        self._repair_since.setdefault(cid, at)
            elif ev.kind is HealthEventKind.RECOVERED:
                log.info("cluster peer %s is back", ev.peer_id)
                cids |= self._short_cids()
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
        self._min_avail_cache = None

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

    def _sources_silent(self, cid: bytes, job: _Job, now: float) -> bool:
        """Whether ``job`` should not fetch (on, or at all) from its sources.

        True when none is alive, unless all are only suspect (a late heartbeat:
        under loss and connection resets holders flap suspect every few seconds,
        and giving up there threw away repairs about to finish) while no queued
        pin wants the fetch slot and no other alive holder could serve the CID.
        """
        status = self.health.status
        states = [status(s, now) for s in job.sources]
        if not states or any(st is PeerStatus.ALIVE for st in states):
            return False
        if not all(st is PeerStatus.SUSPECT for st in states) or self._queue:
            return True
        return any(q not in job.sources and st is PinState.PINNED
                   and status(q, now) is PeerStatus.ALIVE
                   for q, st in self.holdings.states(cid).items())

    def _short_cids(self) -> set[bytes]:
        return {c for c, code in self._cid_info.items() if code & _SHORT_FLAG}

    # ------------------------------------------------------------------ planning

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
                cids.extend(c for c in self._cid_info if c not in self.pinset)
                cids.extend(c for c in self.local if self.local[c].staged)
                self._dirty.clear()
                self._clean_min_next = 1.0
            else:
                cids = list(self._dirty)
                self._dirty.clear()
            for i in range(0, len(cids), _CHUNK):
                self._plan_chunk(cids[i:i + _CHUNK])
                await trio.lowlevel.checkpoint()
            if self._clean_min_next is not None:
                self._clean_min, self._clean_min_next = self._clean_min_next, None

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

    def _plan_chunk(self, cids: list[bytes]) -> list[Any]:
        now = self.now()
        ctx = PlanContext(self.health, now, current=self._current)
        actions = plan_cids(cids, self.pinset, self.holdings, self.health, self.policy, now,
                            context=ctx)
        c = self._counters
        c.plans += 1
        c.planned_cids += len(cids)
        for a in actions:
            if isinstance(a, PinAction):
                self._on_pin_action(a)
            elif isinstance(a, UnpinAction):
                self._on_unpin_action(a, now)
            elif isinstance(a, ExpireAction):
                self._on_expire(a.cid)
            elif isinstance(a, ReportAction):
                if self._reports.get(a.cid) != a:
                    log.warning("%s: %s (%d holders, %d wanted)", cid_text(a.cid), a.kind.value,
                                a.holders, a.wanted)
                self._reports[a.cid] = a
        for cid in cids:
            self._assess(cid, ctx, now)
        self._min_avail_cache = None
        return actions

    def _assess(self, cid: bytes, ctx: PlanContext, now: float) -> None:
        """Update the pin's health record, repair timing and origin copy after planning it."""
        pin = self.pinset.pin(cid)
        old = self._cid_info.pop(cid, None)
        if old is not None:
            code = old
            self._cid_avail.pop(cid, None)
            self._category_counts[code & 3] -= 1
            for flag in (_REPAIRING_FLAG, _ERROR_FLAG, _SHORT_FLAG):
                if code & flag:
                    self._flag_counts[flag] -= 1
        rec = self.local.get(cid)
        if pin is None or pin.expired(now):
            self._repair_since.pop(cid, None)
            self._reports.pop(cid, None)
            if rec is not None and rec.staged:
                self._release_stage(cid)
            if pin is None and rec is not None and self.own.get(cid) is PinState.REMOTE:
                self.local.pop(cid, None)
                self._persist_local(cid)
            return
        status, ps = ctx.status, ctx.p
        healthy: list[float] = []
        active_ps: list[float] = []
        repairing = error = False
        for q, st in self.holdings.states(cid).items():
            s = status.get(q)
            if st is PinState.PINNED and s is PeerStatus.ALIVE:
                healthy.append(ps.get(q, 0.0))
            if st in ACTIVE_STATES and (s is PeerStatus.ALIVE or s is PeerStatus.SUSPECT):
                active_ps.append(ps.get(q, 0.0))
                if st is not PinState.PINNED and s is PeerStatus.ALIVE:
                    repairing = True
            if st is PinState.PIN_ERROR:
                error = True
        n = len(healthy)
        cat = _UNDER if n < pin.rmin else (_OVER if n > pin.rmax else _AT)
        short = len(active_ps) < pin.rmin or (
            pin.availability is not None and availability(active_ps) < pin.availability - 1e-9)
        code = cat | (_REPAIRING_FLAG if repairing and cat == _UNDER else 0) | (
            _ERROR_FLAG if error else 0) | (_SHORT_FLAG if short else 0)
        avail = availability(healthy)
        if code == _AT:
            self._clean_min = min(self._clean_min, avail)
            if self._clean_min_next is not None:
                self._clean_min_next = min(self._clean_min_next, avail)
        else:
            self._category_counts[cat] += 1
            for flag in (_REPAIRING_FLAG, _ERROR_FLAG, _SHORT_FLAG):
                if code & flag:
                    self._flag_counts[flag] += 1
            self._cid_info[cid] = code
            self._cid_avail[cid] = avail
        if cat != _UNDER:
            self._reports.pop(cid, None)
            since = self._repair_since.pop(cid, None)
            if since is not None:
                self._observe_repair(max(0.0, now - since))
        if rec is not None and rec.staged and n >= pin.rmin:
            if self.own.get(cid) in ACTIVE_STATES:
                rec.staged = False  # the origin copy became this node's holding
                self._persist_local(cid)
            else:
                self._release_stage(cid)

    def _observe_repair(self, seconds: float) -> None:
        c = self._counters
        for i, b in enumerate(REPAIR_BUCKETS):
            if seconds <= b:
                c.repair_hist[i] += 1
                break
        c.repair_count += 1
        c.repair_sum += seconds

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

    # ------------------------------------------------------------------ actions

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
        st = self.own.get(cid)
        if st in ACTIVE_STATES or st is PinState.UNPINNING or cid in self._jobs:
            return  # (an unpin in progress re-plans the CID when it is done)
        rec = self.local.get(cid)
        if rec is not None and rec.retry_at is not None and rec.retry_at > self.now():
            return
        if a.reason is Reason.REPAIR and not a.sources:
            # Its holders are all silent: a fetch could only wait out the Bitswap
            # timeout in a fetch slot that a repairable pin needs (found by the
            # cluster fault campaign). A holder coming back re-plans the CID.
            return
        self._jobs[cid] = _Job(mode=a.mode, sources=a.sources, reason=a.reason,
                               queued_at=trio.current_time())
        if a.reason is Reason.REPAIR:
            self._counters.repairs["started"] += 1
        self._set_state(cid, PinState.QUEUED)
        self._queue.append(cid)
        self._queue_wakeup.set()

    def _on_unpin_action(self, a: UnpinAction, now: float) -> None:
        cid = a.cid
        st = self.own.get(cid)
        if st is PinState.PIN_ERROR:
            rec = self.local.get(cid)
            if a.reason is Reason.FAILED and rec is not None and rec.retry_at is not None \
                    and rec.retry_at > now:
                return  # wait out the backoff; another peer is allocated meanwhile
            if a.reason is not Reason.FAILED and rec is not None:
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

    def _on_expire(self, cid: bytes) -> None:
        try:
            self._write(pin=None, cid=cid)
            log.info("pin %s expired; wrote its tombstone", cid_text(cid))
        except PinNotFound:
            pass

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

    async def _fetch(self, cid: bytes, job: _Job) -> None:
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
            self._counters.bytes_fetched += fetched
            rec.attempts, rec.error, rec.retry_at = 0, "", None
            rec.staged = False
            if job.reason is Reason.REPAIR:
                self._counters.repairs["completed"] += 1
                log.info("repaired %s from %s: %d bytes fetched, %.1f s after it was queued "
                         "(fetch %.1f s)", cid_text(cid), " ".join(q[-6:] for q in job.sources),
                         fetched, trio.current_time() - job.queued_at,
                         trio.current_time() - started)
            self._set_state(cid, PinState.PINNED)
            return
        rec.attempts += 1
        rec.error = error[:500]
        backoff = min(self.config.retry_max_s,
                      self.config.retry_min_s * 2.0 ** (rec.attempts - 1))
        rec.retry_at = self.now() + backoff * (0.75 + 0.5 * self.rng.random())
        heapq.heappush(self._retry_heap, (rec.retry_at, cid))
        if job.reason is Reason.REPAIR:
            self._counters.repairs["failed"] += 1
        log.warning("pinning %s failed (attempt %d, retry in %.0f s): %s", cid_text(cid),
                    rec.attempts, rec.retry_at - self.now(), rec.error)
        self._set_state(cid, PinState.PIN_ERROR)
        self._wake_planner()

    # ------------------------------------------------------------------ flush

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
            for i in range(0, len(gossip), _GOSSIP_ENTRIES):
                await self.transport.publish(KIND_PINS,
                                             encode_entries(gossip[i:i + _GOSSIP_ENTRIES]))
            while self.own.version != self._published_version:
                delta = self.own.delta_since(self._published_version, self.own.epoch)
                await self.transport.publish(KIND_STATES, encode_delta(delta))
                self._published_version = delta.version
        except TransportError as exc:
            log.debug("gossip not sent (anti-entropy will carry it): %s", exc)

    # ------------------------------------------------------------------ anti-entropy

    def _want_sync(self, peer_id: str, *, immediate: bool) -> None:
        """Ask for a sync with ``peer_id``: now, or after a heartbeat and a half
        (a digest that still differs then was not just a delta in flight)."""
        now = trio.current_time()
        at = now if immediate else now + 1.5 * self.config.heartbeat_interval_s
        cur = self._sync_wanted.get(peer_id)
        if cur is None or at < cur:
            self._sync_wanted[peer_id] = at
            self._sync_event.set()

    async def _sync_loop(self) -> None:
        next_random = trio.current_time() + self.config.sync_interval_s
        gap = self.config.heartbeat_interval_s
        async with trio.open_nursery() as nursery:
            while True:
                now = trio.current_time()
                wake = next_random
                for peer, at in list(self._sync_wanted.items()):
                    if peer in self._syncing:
                        continue
                    ready = max(at, self._last_sync.get(peer, -math.inf) + gap)
                    if ready <= now:
                        del self._sync_wanted[peer]
                        self._syncing.add(peer)
                        nursery.start_soon(self._sync_task, peer)
                    else:
                        wake = min(wake, ready)
                if now >= next_random:
                    next_random = now + self.config.sync_interval_s
                    wake = min(wake, next_random)
                    candidates = [p for p in self.transport.connected()
                                  if p in self.health and p not in self._syncing]
                    if candidates:
                        peer = self.rng.choice(sorted(candidates))
                        self._syncing.add(peer)
                        nursery.start_soon(self._sync_task, peer)
                self._sync_event = trio.Event()
                with trio.move_on_at(wake):
                    await self._sync_event.wait()

    async def _sync_task(self, peer_id: str) -> None:
        try:
            self._last_sync[peer_id] = trio.current_time()
            await self.sync_with(peer_id)
        finally:
            self._syncing.discard(peer_id)
            self._last_sync[peer_id] = trio.current_time()
            if peer_id in self._sync_wanted:
                self._sync_event.set()

    async def sync_with(self, peer_id: str, *, timeout_s: float = 60.0) -> bool:
        """Reconcile the pinset and ``peer_id``'s states with it (anti-entropy).

        Returns:
            True when the session completed.
        """
        c = self._counters
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
        for i in range(0, len(push), MAX_PAGE_ENTRIES):
            resp = decode_response(await session.ask(encode_request(
                PushRequest(entries=tuple(push[i:i + MAX_PAGE_ENTRIES])))))
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
