"""Holdings: which peers report which pin state for each CID.

The planner's view of the cluster's copies. The manager fills it from the
local pin tracker (its own states) and from peers' status reports. Stored per
peer - ``{peer_id: {cid: state}}`` - which is compact (one dict slot per copy;
``remote`` is not stored at all), answers "which CIDs does this peer hold"
directly (the index ``affected_cids`` needs when a peer dies or comes back),
and answers "who holds this CID" with one lookup per peer.

Pure; not thread-safe.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Final

from pinfold.replication.errors import InvalidPin
from pinfold.replication.types import PinState, check_peer_id

__all__ = ["ACTIVE_STATES", "HOLDING_STATES", "Holdings"]

#: States in which a peer has (or is getting, or failed to get) a copy to release.
HOLDING_STATES: Final = frozenset(
    {PinState.QUEUED, PinState.PINNING, PinState.PINNED, PinState.PIN_ERROR}
)
#: States that count as a holder for allocation: pinned or on its way.
ACTIVE_STATES: Final = frozenset({PinState.QUEUED, PinState.PINNING, PinState.PINNED})


class Holdings:
    """Pin states reported by peers, per CID and per peer."""

    __slots__ = ("_by_peer",)

    def __init__(self) -> None:
        self._by_peer: dict[str, dict[bytes, PinState]] = {}

    def set(self, cid: bytes, peer_id: str, state: PinState) -> None:
        """Record that ``peer_id`` reports ``state`` for ``cid`` (``remote`` clears it).

        Raises:
            InvalidPin: ``state`` is not a ``PinState``; InvalidPeerID: bad peer.
        """
        if type(state) is not PinState:
            raise InvalidPin(f"state: must be a PinState, got {state!r}")
        if state is PinState.REMOTE:
            self.clear(cid, peer_id)
            return
        d = self._by_peer.get(peer_id)
        if d is None:
            check_peer_id(peer_id)
            d = self._by_peer[peer_id] = {}
        d[cid] = state

    def clear(self, cid: bytes, peer_id: str) -> None:
        """Forget ``peer_id``'s state for ``cid`` (it holds nothing)."""
        d = self._by_peer.get(peer_id)
        if d is not None:
            d.pop(cid, None)

    def replace_peer(self, peer_id: str, states: Mapping[bytes, PinState]) -> set[bytes]:
        """Replace everything known about ``peer_id`` by a full report.

        Returns:
            The CIDs whose state for this peer changed (to re-plan).
        """
        check_peer_id(peer_id)
        new: dict[bytes, PinState] = {}
        for cid, st in states.items():
            if type(st) is not PinState:
                raise InvalidPin(f"state: must be a PinState, got {st!r}")
            if st is not PinState.REMOTE:
                new[cid] = st
        old = self._by_peer.get(peer_id, {})
        changed = {c for c in old.keys() | new.keys() if old.get(c) is not new.get(c)}
        self._by_peer[peer_id] = new
        return changed

    def forget_peer(self, peer_id: str) -> set[bytes]:
        """Drop every state of a peer that left; return its CIDs."""
        return set(self._by_peer.pop(peer_id, {}))

    def get(self, cid: bytes, peer_id: str) -> PinState:
        """``peer_id``'s state for ``cid`` (``remote`` when none)."""
        d = self._by_peer.get(peer_id)
        if d is None:
            return PinState.REMOTE
        return d.get(cid, PinState.REMOTE)

    def states(self, cid: bytes) -> dict[str, PinState]:
        """``{peer_id: state}`` of the peers reporting ``cid``."""
        out = {}
        for peer, d in self._by_peer.items():
            st = d.get(cid)
            if st is not None:
                out[peer] = st
        return out

    def cids_of(self, peer_id: str) -> Iterable[bytes]:
        """The CIDs ``peer_id`` reports any state for (a live view; copy before mutating)."""
        return self._by_peer.get(peer_id, {}).keys()

    def peer_states(self, peer_id: str) -> Mapping[bytes, PinState]:
        """``{cid: state}`` of one peer (a live read-only view)."""
        return self._by_peer.get(peer_id, {})

    def peers(self) -> list[str]:
        """Peers with at least one reported state, sorted."""
        return sorted(p for p, d in self._by_peer.items() if d)

    def cids(self) -> set[bytes]:
        """Every CID some peer reports."""
        out: set[bytes] = set()
        for d in self._by_peer.values():
            out.update(d)
        return out

    def __iter__(self) -> Iterator[tuple[bytes, str, PinState]]:
        """``(cid, peer_id, state)`` for every reported state."""
        for peer, d in self._by_peer.items():
            for cid, st in d.items():
                yield cid, peer, st

    def __len__(self) -> int:
        """Number of (cid, peer) states stored."""
        return sum(len(d) for d in self._by_peer.values())
