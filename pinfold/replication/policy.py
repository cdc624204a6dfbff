"""The manager's decisions about this node's own pins and syncs, as pure functions.

The planner decides which peers should hold a pin; these decide what this node
does with its share: whether a pin action is queued (the repair veto, the
backoff), whether a fetch is hopeless (``sources_silent``), how long a failed
pin waits, what a restored state means, when a peer's reports are current and
when a sync with a peer is due (``SyncSchedule``). Pure: no trio, no I/O;
time and randomness come in as arguments. Imports replication's types only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping
from enum import Enum

from pinfold.replication.allocation import replicas_needed
from pinfold.replication.holdings import ACTIVE_STATES
from pinfold.replication.types import PeerStatus, PinAction, PinState, Reason

__all__ = [
    "BeatSync",
    "ErrorRelease",
    "OriginCopy",
    "SyncSchedule",
    "announced_capacity",
    "error_release",
    "is_current",
    "may_queue",
    "origin_copy",
    "pin_bounds",
    "restored_state",
    "retry_backoff",
    "settle_until",
    "sources_silent",
    "sync_after_beat",
]


def sources_silent(sources: Collection[str], holders: Mapping[str, PinState],
                   status: Callable[[str], PeerStatus], *, queue_waiting: bool) -> bool:
    """Whether a repair fetch from ``sources`` should not run (on, or at all).

    True when no source is alive, unless all are only suspect (a late heartbeat:
    under loss and connection resets holders flap suspect every few seconds, and
    giving up there threw away repairs about to finish) while no queued pin
    wants the fetch slot (``queue_waiting``) and no other alive holder in
    ``holders`` (``{peer: state}`` of the CID) could serve it.
    """
    states = [status(s) for s in sources]
    if not states or any(st is PeerStatus.ALIVE for st in states):
        return False
    if not all(st is PeerStatus.SUSPECT for st in states) or queue_waiting:
        return True
    return any(q not in sources and st is PinState.PINNED and status(q) is PeerStatus.ALIVE
               for q, st in holders.items())


def may_queue(action: PinAction, state: PinState, *, has_job: bool, retry_at: float | None,
              now: float) -> bool:
    """Whether this node queues the fetch ``action`` asks for.

    Not when the pin is already held, fetching, being released (the release
    re-plans it) or queued; not while a failed pin waits out its backoff
    (``retry_at`` > ``now``); and not a repair without sources: its holders are
    all silent, so a fetch could only wait out the Bitswap timeout in a slot a
    repairable pin needs (a holder coming back re-plans the CID).
    """
    if state in ACTIVE_STATES or state is PinState.UNPINNING or has_job:
        return False
    if retry_at is not None and retry_at > now:
        return False
    return not (action.reason is Reason.REPAIR and not action.sources)


def settle_until(action: PinAction, *, writer_known: bool, view_changed_at: float | None,
                 settle_s: float, now: float, written_at: float | None = None) -> float | None:
    """When this node may take a first placement (``Reason.ALLOCATED``), or None: now.

    Every node computes a new pin's holders from its own view of the members.
    A node that has not yet heard a member's heartbeat (it joined moments ago,
    or the member did) ranks only the members it knows and may find itself
    among the first ``rmax`` when it is not: it would fetch the whole DAG and
    release it once the rest of the view arrives. So a first placement waits
    while the view is young: until the pin's writer is a known member (a pin
    from a peer whose heartbeat has not arrived shows the view is behind), and
    ``settle_s`` (the peer TTL: every member heartbeats within it) after the
    last member joined, came back or turned suspect. The wait is bounded: a pin
    written ``3 x settle_s`` ago is taken whatever the view (in a cluster whose
    members keep flapping the view never settles). Repairs are not delayed: a
    copy is already held, and losing a holder is what they answer.

    Args:
        action: the pin action for this node.
        writer_known: the pin's writer is this node or a member whose heartbeat
            arrived.
        view_changed_at: when a member last joined or changed status (seconds;
            None: never).
        settle_s: how long a change keeps the view young, seconds.
        now: seconds, the clock of ``view_changed_at``.
        written_at: when the pin was written (its entry's timestamp, seconds), or None.

    Returns:
        The time to plan the pin again (seconds), or None to take it now.
    """
    if action.reason is not Reason.ALLOCATED:
        return None
    until = None
    if not writer_known:
        until = now + settle_s
    elif view_changed_at is not None and now < view_changed_at + settle_s:
        until = view_changed_at + settle_s
    if until is None or written_at is None:
        return until
    bound = written_at + 3 * settle_s
    return None if now >= bound else min(until, bound)


class ErrorRelease(Enum):
    """What an unpin action does to a pin in ``pin_error`` here."""

    WAIT = "wait"  # keep the error until the backoff ends; another peer is allocated
    KEEP_RECORD = "keep_record"  # back to remote, the failure count kept for the backoff
    RESET = "reset"  # back to remote, the failure forgotten (unpinned or moved away)


def error_release(reason: Reason, retry_at: float | None, now: float) -> ErrorRelease:
    """Decide for an unpin of a pin in ``pin_error`` with ``reason`` (see ``ErrorRelease``)."""
    if reason is Reason.FAILED:
        if retry_at is not None and retry_at > now:
            return ErrorRelease.WAIT
        return ErrorRelease.KEEP_RECORD
    return ErrorRelease.RESET


def retry_backoff(attempts: int, retry_min_s: float, retry_max_s: float, u: float) -> float:
    """Seconds before a pin failed ``attempts`` (>= 1) times may be retried.

    ``retry_min_s`` doubling per failure up to ``retry_max_s``, times a jitter
    in [0.75, 1.25] drawn from ``u`` in [0, 1).
    """
    backoff = min(retry_max_s, retry_min_s * 2.0 ** (attempts - 1))
    return backoff * (0.75 + 0.5 * u)


def announced_capacity(capacity: int, free: int, configured: int) -> tuple[int, int]:
    """``(capacity, free)`` bytes to announce: the store's, or ``configured`` capacity
    (when > 0) with the store's used bytes taken off it."""
    if configured:
        used = max(0, capacity - free)
        capacity = configured
        free = max(0, capacity - used)
    return capacity, min(free, capacity)


def pin_bounds(*, rmin: int | None, rmax: int | None, availability_target: float | None,
               default_rmin: int, default_rmax: int, p_prior: float) -> tuple[int, int]:
    """``(rmin, rmax)`` of a new pin from what the user gave and the config defaults.

    A missing rmin is the default (capped by a given rmax); a missing rmax is the
    default (at least rmin), or with an availability target enough replicas for
    the target at ``p_prior`` plus one.
    """
    lo = rmin if rmin is not None else (
        min(default_rmin, rmax) if rmax is not None else default_rmin)
    if rmax is not None:
        hi = rmax
    elif availability_target is not None:
        hi = max(default_rmax, lo, replicas_needed(p_prior, availability_target) + 1)
    else:
        hi = max(default_rmax, lo)
    return lo, hi


class OriginCopy(Enum):
    """What becomes of an origin copy (a local *staged* pin of a DAG added here)."""

    KEEP = "keep"  # fewer than rmin healthy holders: the only copy may be this one
    ADOPT = "adopt"  # this node is a holder: the staged pin is its holding now
    RELEASE = "release"  # enough holders elsewhere: unpin it locally (GC reclaims it)


def origin_copy(*, healthy: int, rmin: int, state: PinState) -> OriginCopy:
    """Decide for an origin copy of a pin with ``healthy`` holders, ``rmin`` and this
    node's ``state`` of it."""
    if healthy < rmin:
        return OriginCopy.KEEP
    return OriginCopy.ADOPT if state in ACTIVE_STATES else OriginCopy.RELEASE


def restored_state(state: PinState) -> PinState:
    """The state a persisted state resumes as: an interrupted fetch is fetched again
    (``queued``), an interrupted release is planned again (``pinned``)."""
    if state is PinState.PINNING:
        return PinState.QUEUED
    if state is PinState.UNPINNING:
        return PinState.PINNED
    return state


def is_current(*, proven: bool, advertised: tuple[int, int] | None,
               known: tuple[int, int] | None, resuming: bool) -> bool:
    """Whether a peer's reported states are up to date: a sync round trip with it
    completed (``proven``), and its states log is applied (``known`` =
    ``(epoch, version)``) at least up to what its last heartbeat ``advertised``,
    with no paged pull half done (``resuming``)."""
    return (proven and advertised is not None and known is not None
            and known[0] == advertised[0] and known[1] >= advertised[1] and not resuming)


class BeatSync(Enum):
    """What a peer's heartbeat asks of the sync schedule."""

    SOON = "soon"  # digests differ: sync after a heartbeat and a half (not a delta in flight)
    NOW = "now"  # no round trip with the peer yet: one makes its reports current
    CANCEL = "cancel"  # in step and proven: a sync asked for earlier is not needed


def sync_after_beat(*, differs: bool, proven: bool) -> BeatSync:
    """Decide after a heartbeat whose pinset digest or states version ``differs`` from
    ours, from a peer a round trip has ``proven`` (``BeatSync``)."""
    if differs:
        return BeatSync.SOON
    return BeatSync.CANCEL if proven else BeatSync.NOW


class SyncSchedule:
    """When to reconcile with which peer: asked-for syncs, one session per peer at a
    time, at least ``gap`` seconds between sessions with a peer.

    Times are the driver's monotonic seconds.
    """

    def __init__(self) -> None:
        self.wanted: dict[str, float] = {}
        self.syncing: set[str] = set()
        self.last: dict[str, float] = {}

    def want(self, peer_id: str, at: float) -> bool:
        """Ask for a sync with ``peer_id`` at ``at``; True when that is sooner than asked."""
        cur = self.wanted.get(peer_id)
        if cur is None or at < cur:
            self.wanted[peer_id] = at
            return True
        return False

    def due(self, now: float, gap: float) -> tuple[list[str], float]:
        """Peers to sync now (marked syncing) and the earliest time another is due."""
        start = []
        wake = math.inf
        for peer, at in list(self.wanted.items()):
            if peer in self.syncing:
                continue
            ready = max(at, self.last.get(peer, -math.inf) + gap)
            if ready <= now:
                del self.wanted[peer]
                self.syncing.add(peer)
                start.append(peer)
            else:
                wake = min(wake, ready)
        return start, wake

    def started(self, peer_id: str, now: float) -> None:
        """A session with ``peer_id`` starts at ``now``."""
        self.syncing.add(peer_id)
        self.last[peer_id] = now

    def ended(self, peer_id: str, now: float) -> bool:
        """A session with ``peer_id`` ended at ``now``; True when another is wanted."""
        self.syncing.discard(peer_id)
        self.last[peer_id] = now
        return peer_id in self.wanted
