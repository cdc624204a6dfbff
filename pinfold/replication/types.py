"""Value types of the replication layer (DESIGN.md "Replication"; STYLE.md 2).

Every type here is a frozen, slotted, keyword-only dataclass validated when it
is built, so a bad value fails where it is made with a message naming the field.

CIDs are carried as their *binary CIDv1 bytes* (``pin_key``): compact (36 bytes
for a sha2-256 CID), hashable, totally ordered, and one spelling per DAG root
(a CIDv0 is converted to the CIDv1 of the same dag-pb root). The blockstore keys
*blocks* by multihash; the pinset keys *pins* by CID because the codec matters
to a pin (a raw block and a dag-pb node with the same multihash are different
DAGs).

Time: every ``*_at`` / ``now`` value is in seconds in the one time base the
caller uses for the whole replication layer (the manager passes wall-clock
seconds, so that ``expire_at`` and HLC timestamps mean the same on every peer).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from pinfold.blockstore.cid import CID, cid_v1, parse_cid
from pinfold.blockstore.errors import InvalidCID

from pinfold.replication.errors import InvalidPeerID, InvalidPin

__all__ = [
    "MAX_ADDRESSES",
    "MAX_METADATA_ITEMS",
    "MAX_METADATA_KEY_LEN",
    "MAX_METADATA_VALUE_LEN",
    "MAX_NAME_LEN",
    "MAX_PEER_ID_LEN",
    "MAX_REPLICAS",
    "Action",
    "ExpireAction",
    "HealthEvent",
    "HealthEventKind",
    "Heartbeat",
    "PeerHealth",
    "PeerStatus",
    "Pin",
    "PinAction",
    "PinMode",
    "PinState",
    "Reason",
    "ReportAction",
    "ReportKind",
    "UnpinAction",
    "action_sort_key",
    "check_cid_key",
    "check_peer_id",
    "cid_text",
    "pin_key",
    "sort_actions",
]

#: Largest rmin/rmax accepted. IPFS Cluster's -1 ("everywhere") is not supported;
#: a bound keeps a typo (rmax=30000) from allocating a pin to every peer.
MAX_REPLICAS: Final = 1024
#: Longest peer ID, characters (a base58 Ed25519 peer ID is 52; RSA ones ~ 46).
MAX_PEER_ID_LEN: Final = 128
#: Longest pin name, characters (same bound as the local pin record).
MAX_NAME_LEN: Final = 1024
#: Metadata bounds: entries, key characters, value characters.
MAX_METADATA_ITEMS: Final = 64
MAX_METADATA_KEY_LEN: Final = 256
MAX_METADATA_VALUE_LEN: Final = 4096
#: Most multiaddrs one heartbeat may carry.
MAX_ADDRESSES: Final = 64
#: Largest count/size a heartbeat or pin may carry (msgpack uint64 limit).
_MAX_U64: Final = (1 << 64) - 1


class PinMode(StrEnum):
    """How much of the DAG a pin holds: the whole DAG or the root block only."""

    RECURSIVE = "recursive"
    DIRECT = "direct"


class PinState(StrEnum):
    """What one peer reports about one CID (IPFS Cluster's TrackerStatus, reduced).

    ``queued``/``pinning``/``pinned`` mean the peer is (becoming) a holder;
    ``pin_error`` means it tried and failed; ``unpinning`` means it is releasing
    the copy; ``remote`` means it tracks the pin but is not allocated it (the
    same as not reporting the CID at all).
    """

    QUEUED = "queued"
    PINNING = "pinning"
    PINNED = "pinned"
    PIN_ERROR = "pin_error"
    UNPINNING = "unpinning"
    REMOTE = "remote"


class PeerStatus(StrEnum):
    """Liveness of a peer as one node sees it (health.py).

    ``alive``: a heartbeat arrived within the TTL. ``suspect``: the TTL passed
    but the repair grace period did not. ``dead``: silent for TTL + grace; its
    pins are repaired elsewhere.
    """

    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"


class HealthEventKind(StrEnum):
    """An alert raised once per failure episode (IPFS Cluster MaxAlertThreshold=1)."""

    SUSPECT = "suspect"
    DEAD = "dead"
    RECOVERED = "recovered"


class Reason(StrEnum):
    """Why the planner asks for a pin or an unpin."""

    ALLOCATED = "allocated"  #: first placement of a pin on its desired holders
    REPAIR = "repair"  #: a new holder replaces copies lost on dead peers
    EXTRA = "extra"  #: more holders than wanted; the desired ones are pinned
    FAILED = "failed"  #: a holder in pin_error gives the pin back for another peer
    UNPINNED = "unpinned"  #: the pin was removed from the pinset (tombstone)
    EXPIRED = "expired"  #: the pin's expire_at has passed


class ReportKind(StrEnum):
    """Conditions the planner reports (once, by the CID's closest alive peer)."""

    UNDER_REPLICATED = "under_replicated"  #: fewer than rmin holders possible
    TARGET_UNMET = "target_unmet"  #: availability target not reachable within rmax


# --------------------------------------------------------------------------- checks

_CANONICAL_CODECS: Final = frozenset({0x55, 0x70, 0x71})  # raw, dag-pb, dag-cbor


def check_cid_key(key: object, what: str = "cid") -> bytes:
    """Validate a binary CIDv1 pin key and return it.

    Fast path for the common case (CIDv1, one-byte codec, sha2-256); anything
    else is parsed by ``blockstore.cid.parse_cid``.

    Args:
        key: the value to check.
        what: the field name used in the error message.

    Returns:
        ``key`` itself (``bytes``).

    Raises:
        InvalidPin: not bytes, not a CID, or not in canonical CIDv1 binary form.
    """
    if type(key) is not bytes:
        raise InvalidPin(f"{what}: must be binary CIDv1 bytes, got {type(key).__name__}")
    if (
        len(key) == 36
        and key[0] == 1
        and key[1] in _CANONICAL_CODECS
        and key[2] == 0x12
        and key[3] == 0x20
    ):
        return key
    try:
        cid = parse_cid(key)
    except InvalidCID as exc:
        raise InvalidPin(f"{what}: {exc}") from exc
    if cid.version != 1 or bytes(cid_v1(cid)) != key:
        raise InvalidPin(f"{what}: not the binary CIDv1 form (use pin_key())")
    return key


def pin_key(cid: str | bytes | CID) -> bytes:
    """The pinset key of a CID: its binary CIDv1 bytes (CIDv0 converted).

    Args:
        cid: text CID (``Qm...``, ``bafy...``), binary CID bytes or a ``CID``.

    Raises:
        InvalidPin: not a CID (wraps ``InvalidCID``).
    """
    try:
        parsed = parse_cid(cid)
    except InvalidCID as exc:
        raise InvalidPin(f"cid: {exc}") from exc
    return bytes(cid_v1(parsed))


def cid_text(key: bytes) -> str:
    """The base32 CIDv1 text of a pin key, for messages and JSON (``bafy...``)."""
    try:
        return str(cid_v1(parse_cid(key)))
    except InvalidCID:
        return "0x" + key.hex()


def check_peer_id(peer_id: object, what: str = "peer_id") -> str:
    """Validate a peer ID string and return it.

    pinfold uses libp2p's base58 peer IDs, but the replication layer only needs
    a stable, printable name: 1..128 printable ASCII characters, no whitespace.

    Raises:
        InvalidPeerID: otherwise.
    """
    if type(peer_id) is not str:
        raise InvalidPeerID(f"{what}: must be a string, got {type(peer_id).__name__}")
    if not 0 < len(peer_id) <= MAX_PEER_ID_LEN:
        raise InvalidPeerID(f"{what}: must be 1..{MAX_PEER_ID_LEN} characters, got {len(peer_id)}")
    if not (peer_id.isascii() and peer_id.isprintable()) or " " in peer_id:
        raise InvalidPeerID(f"{what}: must be printable ASCII without spaces, got {peer_id!r}")
    return peer_id


def _is_int(x: object) -> bool:
    return type(x) is int


def _is_num(x: object) -> bool:
    return (type(x) is float or type(x) is int) and math.isfinite(x)


def _check_count(value: object, what: str) -> None:
    if not _is_int(value) or not 0 <= value <= _MAX_U64:  # type: ignore[operator]
        raise InvalidPin(f"{what}: must be an integer >= 0, got {value!r}")


def _check_time(value: object, what: str) -> None:
    if not _is_num(value) or value < 0:  # type: ignore[operator]
        raise InvalidPin(f"{what}: must be a finite number of seconds >= 0, got {value!r}")


def _normalize_metadata(meta: object) -> tuple[tuple[str, str], ...]:
    if isinstance(meta, Mapping):
        meta = tuple(sorted(meta.items()))
    if type(meta) is not tuple:
        raise InvalidPin(
            f"metadata: must be a mapping or a tuple of pairs, got {type(meta).__name__}"
        )
    if len(meta) > MAX_METADATA_ITEMS:
        raise InvalidPin(f"metadata: at most {MAX_METADATA_ITEMS} entries, got {len(meta)}")
    prev: str | None = None
    for item in meta:
        if type(item) is not tuple or len(item) != 2:
            raise InvalidPin(f"metadata: entries must be (key, value) pairs, got {item!r}")
        k, v = item
        if type(k) is not str or not 0 < len(k) <= MAX_METADATA_KEY_LEN:
            raise InvalidPin(
                f"metadata: key must be 1..{MAX_METADATA_KEY_LEN} characters, got {k!r}"
            )
        if type(v) is not str or len(v) > MAX_METADATA_VALUE_LEN:
            raise InvalidPin(
                f"metadata[{k!r}]: value must be a string of <= {MAX_METADATA_VALUE_LEN} characters"
            )
        if prev is not None and k <= prev:
            raise InvalidPin(f"metadata: keys must be sorted and unique ({prev!r} then {k!r})")
        prev = k
    return meta  # type: ignore[return-value]


# ----------------------------------------------------------------------------- pin


@dataclass(frozen=True, slots=True, kw_only=True)
class Pin:
    """One entry of the shared pinset: what to keep and how many copies.

    Attributes:
        cid: binary CIDv1 bytes of the DAG root (``pin_key``).
        name: a label for people, <= 1024 characters.
        mode: ``recursive`` (the whole DAG) or ``direct`` (the root block).
        rmin: repair starts when fewer than this many holders remain (>= 1).
        rmax: holders allocated at most (>= rmin). A new pin gets rmax holders
            (IPFS Cluster ``replication_factor_max``).
        availability: optional target P_a in (0, 1). When set, holders are taken
            in rank order until 1 - prod(1 - p_i) >= availability, at least
            rmin and at most rmax.
        expire_at: optional time (seconds, the manager's wall clock) after which
            the pin is removed.
        metadata: sorted ``(key, value)`` string pairs; a mapping is accepted and
            sorted.
        size_bytes: the DAG's total size if known, bytes; peers with less free
            space are not allocated the pin.

    Raises:
        InvalidPin: a field is out of range; the message names it.
    """

    cid: bytes
    name: str = ""
    mode: PinMode = PinMode.RECURSIVE
    rmin: int = 2
    rmax: int = 3
    availability: float | None = None
    expire_at: float | None = None
    metadata: tuple[tuple[str, str], ...] = ()
    size_bytes: int | None = None

    def __post_init__(self) -> None:
        # Inline checks: a million pins are built when a pinset is loaded.
        cid = self.cid
        if not (
            type(cid) is bytes
            and len(cid) == 36
            and cid[0] == 1
            and cid[2] == 0x12
            and cid[3] == 0x20
            and cid[1] in _CANONICAL_CODECS
        ):
            check_cid_key(cid)
        if type(self.name) is not str or len(self.name) > MAX_NAME_LEN:
            raise InvalidPin(f"name: must be a string of <= {MAX_NAME_LEN} characters")
        if type(self.mode) is not PinMode:
            try:
                object.__setattr__(self, "mode", PinMode(self.mode))
            except ValueError:
                raise InvalidPin(
                    f"mode: must be 'recursive' or 'direct', got {self.mode!r}"
                ) from None
        rmin, rmax = self.rmin, self.rmax
        if type(rmin) is not int or not 1 <= rmin <= MAX_REPLICAS:
            raise InvalidPin(f"rmin: must be an integer in 1..{MAX_REPLICAS}, got {rmin!r}")
        if type(rmax) is not int or not rmin <= rmax <= MAX_REPLICAS:
            raise InvalidPin(
                f"rmax: must be an integer in rmin..{MAX_REPLICAS} (rmin={rmin}), got {rmax!r}"
            )
        a = self.availability
        if a is not None and (not _is_num(a) or not 0.0 < a < 1.0):
            raise InvalidPin(f"availability: must be a number in (0, 1), got {a!r}")
        if self.expire_at is not None:
            _check_time(self.expire_at, "expire_at")
        meta = self.metadata
        if meta:
            norm = _normalize_metadata(meta)
            if norm is not meta:
                object.__setattr__(self, "metadata", norm)
        elif type(meta) is not tuple:
            if meta is not None and not isinstance(meta, Mapping):
                raise InvalidPin(
                    f"metadata: must be a mapping or a tuple of pairs, got {type(meta).__name__}"
                )
            object.__setattr__(self, "metadata", ())
        size = self.size_bytes
        if size is not None and (type(size) is not int or not 0 <= size <= _MAX_U64):
            raise InvalidPin(f"size_bytes: must be an integer >= 0, got {size!r}")

    @property
    def metadata_dict(self) -> dict[str, str]:
        """The metadata as a new ``dict``."""
        return dict(self.metadata)

    def expired(self, now: float) -> bool:
        """True when ``expire_at`` is set and ``now`` (seconds) has reached it."""
        return self.expire_at is not None and self.expire_at <= now


# ------------------------------------------------------------------------ health


@dataclass(frozen=True, slots=True, kw_only=True)
class Heartbeat:
    """What a peer publishes about itself every ``heartbeat_interval_s``.

    ``HealthView`` keeps the latest one per peer as that peer's info.

    Attributes:
        peer_id: the sender.
        incarnation: changes (grows) when the peer restarts, e.g. its start time
            in ms; with ``seq`` it tells new heartbeats from stale duplicates.
        seq: heartbeats sent by this incarnation, counting from 0; the gap
            between two received ``seq`` values counts missed heartbeats.
        capacity_bytes: storage the peer offers, bytes (its allocation weight).
        free_bytes: of which still free, bytes (<= capacity_bytes).
        pin_queue_len: pins waiting or fetching on the peer.
        addresses: multiaddrs the peer listens on, with ``/p2p/``.
        pinned_count: pins the peer holds (state pinned).
        pinned_bytes: their total size, bytes.
        error_count: pins in pin_error on the peer.

    Raises:
        InvalidPin: a field is out of range; InvalidPeerID: bad ``peer_id``.
    """

    peer_id: str
    incarnation: int = 0
    seq: int = 0
    capacity_bytes: int = 0
    free_bytes: int = 0
    pin_queue_len: int = 0
    addresses: tuple[str, ...] = ()
    pinned_count: int = 0
    pinned_bytes: int = 0
    error_count: int = 0

    def __post_init__(self) -> None:
        check_peer_id(self.peer_id)
        for name in ("incarnation", "seq", "capacity_bytes", "free_bytes", "pin_queue_len",
                     "pinned_count", "pinned_bytes", "error_count"):
            _check_count(getattr(self, name), name)
        if self.free_bytes > self.capacity_bytes:
            raise InvalidPin(
                f"free_bytes: {self.free_bytes} exceeds capacity_bytes {self.capacity_bytes}"
            )
        if type(self.addresses) is not tuple or len(self.addresses) > MAX_ADDRESSES:
            raise InvalidPin(f"addresses: must be a tuple of <= {MAX_ADDRESSES} multiaddr strings")
        for a in self.addresses:
            if type(a) is not str or not a.startswith("/") or len(a) > 1024:
                raise InvalidPin(f"addresses: not a multiaddr string: {a!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerHealth:
    """One peer's health as ``HealthView.record`` reports it at some ``now``.

    Attributes:
        peer_id: the peer.
        status: alive, suspect or dead.
        last_seen: when its latest heartbeat was received, seconds.
        suspect_since: when it turned suspect (last_seen + TTL), or None if alive.
        p: estimated availability (long-run online fraction) in [0, 1].
        info: its latest heartbeat, or None if only restored from disk.
    """

    peer_id: str
    status: PeerStatus
    last_seen: float
    suspect_since: float | None
    p: float
    info: Heartbeat | None


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthEvent:
    """An alert: a peer turned suspect, dead, or came back (once per episode).

    Attributes:
        peer_id: the peer.
        kind: suspect, dead or recovered.
        at: when the transition happened (not when it was noticed), seconds.
    """

    peer_id: str
    kind: HealthEventKind
    at: float


# ----------------------------------------------------------------------- actions


@dataclass(frozen=True, slots=True, kw_only=True)
class PinAction:
    """``peer_id`` should fetch the DAG of ``cid`` (by bitswap) and pin it.

    Attributes:
        cid: pin key.
        peer_id: the peer that acts (a plan holds only the planning node's own
            pin/unpin actions unless planned for every peer).
        mode: recursive or direct.
        sources: peers that hold the pin (pinned, alive), sorted; fetch from them.
        reason: allocated (first placement) or repair.
    """

    cid: bytes
    peer_id: str
    mode: PinMode
    sources: tuple[str, ...]
    reason: Reason


@dataclass(frozen=True, slots=True, kw_only=True)
class UnpinAction:
    """``peer_id`` should release its copy (or its attempt) of ``cid``.

    Attributes:
        cid: pin key.
        peer_id: the peer that acts.
        reason: extra, failed, unpinned or expired.
    """

    cid: bytes
    peer_id: str
    reason: Reason


@dataclass(frozen=True, slots=True, kw_only=True)
class ExpireAction:
    """``peer_id`` (the CID's closest alive peer) should write a tombstone: the pin expired."""

    cid: bytes
    peer_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportAction:
    """``peer_id`` (the CID's closest alive peer) reports a condition it cannot fix.

    Attributes:
        cid: pin key.
        peer_id: the reporting peer.
        kind: under_replicated or target_unmet.
        holders: holders the plan keeps or allocates.
        wanted: holders wanted (rmin, or what the availability target needs).
    """

    cid: bytes
    peer_id: str
    kind: ReportKind
    holders: int
    wanted: int


Action = PinAction | UnpinAction | ExpireAction | ReportAction

_KIND_ORDER: Final = {PinAction: 0, UnpinAction: 1, ExpireAction: 2, ReportAction: 3}


def action_sort_key(action: Action) -> tuple[bytes, str, int]:
    """Sort key of an action: (CID bytes, peer ID, kind) - STYLE.md 2."""
    return (action.cid, action.peer_id, _KIND_ORDER[type(action)])


def sort_actions(actions: list[Action]) -> list[Action]:
    """Sort ``actions`` in place by ``action_sort_key`` and return the list."""
    actions.sort(key=action_sort_key)
    return actions
