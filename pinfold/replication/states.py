"""Per-peer pin states shared by the cluster: who holds which CID, in which state.

The planner needs every peer's local state of every pin (``Holdings``). Each
peer is the only writer of its own states, so the shared structure is a set of
single-writer logs, one per *owner* peer - a CRDT where concurrent writers
never collide (DESIGN.md "Replication"; ANCHORS.md 1.2 TrackerStatus).

Owner side (``OwnStates``): every change of a local state gets the next
version number of the owner's log. ``delta_since(base)`` returns the states
changed after version ``base`` - what to gossip after a change, or what a peer
that knows the log up to ``base`` pulls. The log keeps the latest change of
each CID; it is compacted (records of CIDs that went back to ``remote`` are
dropped) when it holds twice as many records as live states, and the version
of that compaction becomes the log's *floor*: a peer whose ``base`` is below
the floor gets a reset (every live state, starting over), since the dropped
``remote`` records can no longer tell it what to clear.

Receiver side (``PeerStates``): the owner's states go into the planner's
``Holdings``; per owner it keeps ``(epoch, version)``, the prefix of the log
it has applied. A delta is applied only when it continues that prefix (its
``base`` is at most the known version and its ``version`` above it) or is a
reset; a delta with a gap is not applied (the receiver pulls from the owner
instead, ``needs_pull``), so states never go back in time. The epoch changes
when an owner loses its log (a new store); a delta of another epoch is only
accepted as a reset.

Deltas travel on the cluster's gossip topic and, for pulls, over
``/pinfold/sync/1`` straight from the owner (third parties do not relay logs:
a dead owner's copies do not count anyway). Encoding: msgpack,
``{"v": 1, "owner", "epoch", "base", "version", "reset", "more", "changes":
[[cid, code], ...]}`` with the state codes of ``STATE_CODES``.

Pure: no trio, no I/O.
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import msgpack

from pinfold.replication.errors import InvalidPeerID, InvalidPin, PinsetDecodeError
from pinfold.replication.holdings import Holdings
from pinfold.replication.pinset import msgpack_unpack
from pinfold.replication.types import PinState, check_cid_key, check_peer_id

__all__ = [
    "CODE_STATES",
    "MAX_DELTA_CHANGES",
    "STATE_CODES",
    "OwnStates",
    "PeerStates",
    "StatesDelta",
    "decode_delta",
    "encode_delta",
]

#: Wire and LMDB codes of the pin states (0 = remote: holds nothing).
STATE_CODES: Final = {
    PinState.REMOTE: 0,
    PinState.QUEUED: 1,
    PinState.PINNING: 2,
    PinState.PINNED: 3,
    PinState.PIN_ERROR: 4,
    PinState.UNPINNING: 5,
}
CODE_STATES: Final = {v: k for k, v in STATE_CODES.items()}
#: Most changes one delta carries (~45 bytes each: ~450 KB, under gossip's 1 MiB).
MAX_DELTA_CHANGES: Final = 10_000
_FORMAT_VERSION: Final = 1
_MAX_VERSION: Final = (1 << 63) - 1


@dataclass(frozen=True, slots=True, kw_only=True)
class StatesDelta:
    """A piece of one owner's state log.

    Attributes:
        owner: the peer whose states these are (the only writer).
        epoch: the owner's log epoch (changes when the owner starts a new log).
        base: the version the changes follow; a receiver that knows the log
            up to at least ``base`` may apply them.
        version: the owner's version after these changes.
        reset: the changes are the owner's whole state from scratch (forget
            what was known of the owner first).
        more: a pull answer that continues: ask again from ``version``.
        changes: ``(cid, state)`` pairs, the state current at ``version`` or later.

    Raises:
        InvalidPin: versions out of order or a bad CID/state; InvalidPeerID: bad owner.
    """

    owner: str
    epoch: int
    base: int
    version: int
    reset: bool = False
    more: bool = False
    changes: tuple[tuple[bytes, PinState], ...] = ()

    def __post_init__(self) -> None:
        check_peer_id(self.owner, "owner")
        for name in ("epoch", "base", "version"):
            v = getattr(self, name)
            if type(v) is not int or not 0 <= v <= _MAX_VERSION:
                raise InvalidPin(f"{name}: must be an integer in 0..2**63-1, got {v!r}")
        if self.base > self.version:
            raise InvalidPin(f"base {self.base} is after version {self.version}")
        if len(self.changes) > MAX_DELTA_CHANGES:
            raise InvalidPin(f"changes: at most {MAX_DELTA_CHANGES}, got {len(self.changes)}")


class OwnStates:
    """This peer's own pin states as a versioned log (the owner side).

    The states themselves live in the shared ``Holdings`` under ``peer_id``
    (the planner reads them there); this object keeps the log.

    Args:
        peer_id: this peer.
        holdings: the planner's holdings, updated in place.
        epoch: the log's epoch (e.g. the store's creation time in ms).
        version: the last version issued (0 for a new log); after a restart
            pass the persisted one: the restored states (already in
            ``holdings``) are logged at the versions up to it and it becomes
            the floor, so peers that knew less get a reset.
    """

    __slots__ = ("_floor", "_holdings", "_log_keys", "_log_vers", "epoch", "peer_id", "version")

    def __init__(self, peer_id: str, holdings: Holdings, *, epoch: int, version: int = 0) -> None:
        self.peer_id = check_peer_id(peer_id)
        if type(epoch) is not int or not 0 <= epoch <= _MAX_VERSION:
            raise InvalidPin(f"epoch: must be an integer >= 0, got {epoch!r}")
        if type(version) is not int or not 0 <= version < _MAX_VERSION:
            raise InvalidPin(f"version: must be an integer >= 0, got {version!r}")
        self._holdings = holdings
        self.epoch = epoch
        # Restored states are logged at the versions just below ``version``
        # (each change took a version, so there are at most ``version`` of them).
        keys = sorted(holdings.cids_of(peer_id))
        version = max(version, len(keys))
        self.version = version
        self._floor = version
        self._log_keys: list[bytes] = keys
        self._log_vers = array("Q", range(version - len(keys) + 1, version + 1))

    @property
    def floor(self) -> int:
        """Peers that know less than this version get a reset."""
        return self._floor

    def get(self, cid: bytes) -> PinState:
        """This peer's state of ``cid`` (``remote`` when it holds nothing)."""
        return self._holdings.get(cid, self.peer_id)

    def set(self, cid: bytes, state: PinState) -> bool:
        """Record a state change; returns False when ``state`` is already the state."""
        if self._holdings.get(cid, self.peer_id) is state:
            return False
        self._holdings.set(cid, self.peer_id, state)
        self.version += 1
        self._log_keys.append(cid)
        self._log_vers.append(self.version)
        live = len(self._holdings.peer_states(self.peer_id))
        if len(self._log_keys) > 2 * live + 1024:
            self._compact()
        return True

    def _compact(self) -> None:
        own = self._holdings.peer_states(self.peer_id)
        seen: set[bytes] = set()
        keys: list[bytes] = []
        vers: list[int] = []
        for i in range(len(self._log_keys) - 1, -1, -1):
            k = self._log_keys[i]
            if k in seen:
                continue
            seen.add(k)
            if k in own:
                keys.append(k)
                vers.append(self._log_vers[i])
        keys.reverse()
        vers.reverse()
        self._log_keys = keys
        self._log_vers = array("Q", vers)
        self._floor = self.version

    def delta_since(self, base: int, epoch: int | None = None, *, resume: bool = False,
                    limit: int = MAX_DELTA_CHANGES) -> StatesDelta:
        """The states changed after version ``base``, at most ``limit`` CIDs.

        Args:
            base: the version the asker knows (0 = nothing).
            epoch: the epoch the asker knows for this owner (None = none); a
                different epoch or a ``base`` below the floor (or ahead of
                the log) gives a reset from scratch.
            resume: the asker is continuing a paged reset from ``base`` (the
                ``version`` of the previous page): no new reset for being
                below the floor, since the asker forgot the owner's states.
            limit: most changes in the answer (1..MAX_DELTA_CHANGES).

        Returns:
            A delta; when ``more`` is set, ask again with ``base=delta.version``
            (and ``resume=True`` after a reset page).
        """
        if not 1 <= limit <= MAX_DELTA_CHANGES:
            raise InvalidPin(f"limit: must be in 1..{MAX_DELTA_CHANGES}, got {limit!r}")
        reset = epoch != self.epoch or base > self.version or (not resume and base < self._floor)
        if reset:
            base = 0
        start = bisect.bisect_right(self._log_vers, base)
        out: list[tuple[bytes, PinState]] = []
        seen: set[bytes] = set()
        own = self._holdings.peer_states(self.peer_id)
        vers = self._log_vers
        keys = self._log_keys
        upto = self.version
        more = False
        i = start
        n = len(keys)
        while i < n:
            k = keys[i]
            if k not in seen:
                if len(out) >= limit:
                    upto = vers[i - 1]
                    more = True
                    break
                seen.add(k)
                out.append((k, own.get(k, PinState.REMOTE)))
            i += 1
        if reset:
            # A reset lists live states only; "remote" ones are implied.
            out = [(k, s) for k, s in out if s is not PinState.REMOTE]
        return StatesDelta(owner=self.peer_id, epoch=self.epoch, base=base, version=upto,
                           reset=reset, more=more, changes=tuple(out))


class PeerStates:
    """Other peers' states as this peer knows them (the receiver side).

    Args:
        peer_id: this peer (its own states are never taken from others).
        holdings: the planner's holdings, updated in place.
        known: ``{owner: (epoch, version)}`` restored from disk.
    """

    __slots__ = ("_holdings", "_known", "_partial", "peer_id", "stale_deltas")

    def __init__(self, peer_id: str, holdings: Holdings,
                 known: Mapping[str, tuple[int, int]] | None = None) -> None:
        self.peer_id = check_peer_id(peer_id)
        self._holdings = holdings
        self._known: dict[str, tuple[int, int]] = dict(known or {})
        self._partial: set[str] = set()
        #: deltas not applied for being old or having a gap (they are pulled instead)
        self.stale_deltas = 0

    def known(self, owner: str) -> tuple[int, int] | None:
        """``(epoch, version)`` applied for ``owner``, or None."""
        return self._known.get(owner)

    def known_all(self) -> dict[str, tuple[int, int]]:
        """A copy of every owner's ``(epoch, version)``."""
        return dict(self._known)

    def resuming(self, owner: str) -> bool:
        """True while a paged reset of ``owner`` is incomplete (pull with ``resume``)."""
        return owner in self._partial

    def needs_pull(self, owner: str, epoch: int, version: int) -> bool:
        """True when the owner advertises a log state we have not applied."""
        k = self._known.get(owner)
        return owner in self._partial or k is None or k[0] != epoch or k[1] < version

    def apply(self, delta: StatesDelta, *, pulled: bool = False) -> tuple[bool, set[bytes]]:
        """Apply a delta if it continues what is known.

        Args:
            delta: from the owner's gossip, or a pull answer (``pulled``).
            pulled: the delta answers our own pull from the owner; resets are
                accepted only then, as are the pages that continue one.

        Returns:
            ``(applied, changed)``: whether it was applied, and the CIDs whose
            state for the owner changed (to re-plan). A reset also reports the
            CIDs the owner no longer holds.
        """
        owner = delta.owner
        if owner == self.peer_id:
            return False, set()
        k = self._known.get(owner)
        h = self._holdings
        changed: set[bytes] = set()
        if delta.reset:
            if not pulled:
                self.stale_deltas += 1
                return False, changed
            changed = h.replace_peer(
                owner, {c: s for c, s in delta.changes if s is not PinState.REMOTE})
        else:
            continuing = owner in self._partial
            if continuing:
                ok = (pulled and k is not None and k[0] == delta.epoch and delta.base == k[1]
                      and delta.version >= k[1])
            else:
                ok = (k is not None and k[0] == delta.epoch and delta.base <= k[1]
                      < delta.version)
                if (pulled and not ok and k is not None and k[0] == delta.epoch
                        and delta.version == k[1] and not delta.changes):
                    return True, changed  # a pull answer: nothing new
            if not ok:
                self.stale_deltas += 1
                return False, changed
            for cid, st in delta.changes:
                if h.get(cid, owner) is not st:
                    h.set(cid, owner, st)
                    changed.add(cid)
        self._known[owner] = (delta.epoch, delta.version)
        if delta.more and (delta.reset or owner in self._partial):
            self._partial.add(owner)
        else:
            self._partial.discard(owner)
        return True, changed

    def forget(self, owner: str) -> set[bytes]:
        """Drop everything known of ``owner``; returns its CIDs."""
        self._known.pop(owner, None)
        self._partial.discard(owner)
        return self._holdings.forget_peer(owner)


# ------------------------------------------------------------------ encoding


def encode_delta(delta: StatesDelta) -> bytes:
    """A delta as msgpack bytes (module docstring)."""
    return msgpack.packb({
        "v": _FORMAT_VERSION, "owner": delta.owner, "epoch": delta.epoch, "base": delta.base,
        "version": delta.version, "reset": delta.reset, "more": delta.more,
        "changes": [[c, STATE_CODES[s]] for c, s in delta.changes],
    }, use_bin_type=True)


_KEYS: Final = frozenset({"v", "owner", "epoch", "base", "version", "reset", "more", "changes"})


def delta_from_obj(obj: Any, what: str = "states") -> StatesDelta:
    """Build a delta from its decoded map form, validating every field.

    Raises:
        PinsetDecodeError: wrong shape or a bad field; the message names it.
    """
    if type(obj) is not dict or set(obj) != _KEYS:
        raise PinsetDecodeError(f"{what}: expected a map with keys {sorted(_KEYS)}")
    if obj["v"] != _FORMAT_VERSION:
        raise PinsetDecodeError(f"{what}: unsupported format version {obj['v']!r}")
    items = obj["changes"]
    if type(items) is not list or len(items) > MAX_DELTA_CHANGES:
        raise PinsetDecodeError(f"{what}: changes: expected a list of <= {MAX_DELTA_CHANGES}")
    changes = []
    for i, item in enumerate(items):
        if type(item) is not list or len(item) != 2:
            raise PinsetDecodeError(f"{what}: change {i}: expected [cid, state code]")
        cid, code = item
        st = CODE_STATES.get(code) if type(code) is int else None
        if st is None:
            raise PinsetDecodeError(f"{what}: change {i}: unknown state code {code!r}")
        try:
            check_cid_key(cid)
        except InvalidPin as exc:
            raise PinsetDecodeError(f"{what}: change {i}: {exc}") from exc
        changes.append((cid, st))
    for name in ("reset", "more"):
        if type(obj[name]) is not bool:
            raise PinsetDecodeError(f"{what}: {name}: expected a bool")
    try:
        return StatesDelta(owner=obj["owner"], epoch=obj["epoch"], base=obj["base"],
                           version=obj["version"], reset=obj["reset"], more=obj["more"],
                           changes=tuple(changes))
    except (InvalidPin, InvalidPeerID) as exc:
        raise PinsetDecodeError(f"{what}: {exc}") from exc


def decode_delta(data: bytes) -> StatesDelta:
    """Decode and validate ``encode_delta`` output.

    Raises:
        PinsetDecodeError: malformed; the message names the field.
    """
    return delta_from_obj(msgpack_unpack(data, "states"))

