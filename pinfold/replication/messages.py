"""Wire messages of the cluster protocols (DESIGN.md "Content and wire formats").

Two channels carry them; the transport (``transport.py``) moves the bytes:

Gossip (every cluster peer, one topic per cluster), each message a *kind* and
a msgpack body:

- ``hb``: ``ClusterBeat`` - the sender's ``Heartbeat`` (``health.py`` wire
  form) plus a summary of its replicas: the pinset's digest-tree root
  (digest, count) and its own state log's (epoch, version). A receiver whose
  summary differs learns that it missed something and reconciles with the
  sender (``/pinfold/sync/1``) instead of waiting for the next periodic round.
- ``pins``: a pinset delta (``pinset.encode_entries``).
- ``states``: a delta of the sender's own state log (``states.encode_delta``).

``/pinfold/sync/1`` (request/response on one stream, initiator asks):

- ``sum?``/``ent?`` -> ``sum``/``ent``: the pinset reconciliation of
  ``sync.py``;
- ``push`` -> ``ok``: entries the responder lacks (``Reconciler.to_push``);
- ``st?`` -> ``st``: a page of the responder's own state log after a version
  (``OwnStates.delta_since``).

Every decoder validates every field and raises ``PinsetDecodeError`` naming
the problem; none crashes on malformed input.

Pure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import msgpack

from pinfold.replication.errors import InvalidPin, PinsetDecodeError
from pinfold.replication.health import heartbeat_from_wire, heartbeat_to_wire
from pinfold.replication.pinset import Entry, entry_from_wire, entry_to_wire, msgpack_unpack
from pinfold.replication.states import MAX_DELTA_CHANGES, StatesDelta, delta_from_obj, encode_delta
from pinfold.replication.sync import (
    MAX_PAGE_ENTRIES,
    EntriesRequest,
    EntriesResponse,
    SummaryRequest,
    SummaryResponse,
    decode_message,
    encode_message,
)
from pinfold.replication.types import Heartbeat

__all__ = [
    "KINDS",
    "KIND_HEARTBEAT",
    "KIND_PINS",
    "KIND_STATES",
    "ClusterBeat",
    "PushRequest",
    "PushResponse",
    "StatesRequest",
    "StatesResponse",
    "SyncRequest",
    "SyncResponse",
    "decode_beat",
    "decode_request",
    "decode_response",
    "encode_beat",
    "encode_request",
    "encode_response",
]

KIND_HEARTBEAT: Final = "hb"
KIND_PINS: Final = "pins"
KIND_STATES: Final = "states"
#: Every gossip message kind.
KINDS: Final = frozenset({KIND_HEARTBEAT, KIND_PINS, KIND_STATES})
_FORMAT_VERSION: Final = 1
_U63: Final = (1 << 63) - 1


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterBeat:
    """A heartbeat with the sender's replica summaries.

    Attributes:
        heartbeat: capacity, free bytes, queue, addresses, pin counts.
        pinset_digest: the sender's pinset digest-tree root, a 128-bit integer.
        pinset_count: entries (pins and tombstones) under that root.
        states_epoch: the epoch of the sender's own state log.
        states_version: its last version.
    """

    heartbeat: Heartbeat
    pinset_digest: int
    pinset_count: int
    states_epoch: int
    states_version: int

    def __post_init__(self) -> None:
        if type(self.heartbeat) is not Heartbeat:
            raise InvalidPin("heartbeat: must be a Heartbeat")
        if type(self.pinset_digest) is not int or not 0 <= self.pinset_digest < 1 << 128:
            raise InvalidPin(f"pinset_digest: must be a 128-bit integer, got {self.pinset_digest!r}")
        for name in ("pinset_count", "states_epoch", "states_version"):
            v = getattr(self, name)
            if type(v) is not int or not 0 <= v <= _U63:
                raise InvalidPin(f"{name}: must be an integer in 0..2**63-1, got {v!r}")


def encode_beat(beat: ClusterBeat) -> bytes:
    """A ``ClusterBeat`` as msgpack bytes (the ``hb`` gossip body)."""
    return msgpack.packb({
        "v": _FORMAT_VERSION, "hb": heartbeat_to_wire(beat.heartbeat),
        "pins": [beat.pinset_digest.to_bytes(16, "big"), beat.pinset_count],
        "states": [beat.states_epoch, beat.states_version],
    }, use_bin_type=True)


def decode_beat(data: bytes) -> ClusterBeat:
    """Decode and validate an ``hb`` gossip body.

    Raises:
        PinsetDecodeError: malformed; the message names the field.
    """
    obj = msgpack_unpack(data, "heartbeat")
    if type(obj) is not dict or set(obj) != {"v", "hb", "pins", "states"}:
        raise PinsetDecodeError("heartbeat: expected a map with v, hb, pins, states")
    if obj["v"] != _FORMAT_VERSION:
        raise PinsetDecodeError(f"heartbeat: unsupported format version {obj['v']!r}")
    hb = heartbeat_from_wire(obj["hb"])
    pins, states = obj["pins"], obj["states"]
    if (type(pins) is not list or len(pins) != 2 or type(pins[0]) is not bytes
            or len(pins[0]) != 16):
        raise PinsetDecodeError("heartbeat: pins: expected [digest (16 bytes), count]")
    if type(states) is not list or len(states) != 2:
        raise PinsetDecodeError("heartbeat: states: expected [epoch, version]")
    try:
        return ClusterBeat(heartbeat=hb, pinset_digest=int.from_bytes(pins[0], "big"),
                           pinset_count=pins[1], states_epoch=states[0],
                           states_version=states[1])
    except InvalidPin as exc:
        raise PinsetDecodeError(f"heartbeat: {exc}") from exc


# ----------------------------------------------------------------- /pinfold/sync/1


@dataclass(frozen=True, slots=True, kw_only=True)
class PushRequest:
    """Entries the responder lacks or has older (``Reconciler.to_push``); it merges them.

    Attributes:
        entries: at most ``MAX_PAGE_ENTRIES`` pinset entries.
    """

    entries: tuple[Entry, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class PushResponse:
    """The answer to a push: how many entries changed the responder's replica."""

    changed: int


@dataclass(frozen=True, slots=True, kw_only=True)
class StatesRequest:
    """Ask the responder for its own state log after ``base``.

    Attributes:
        epoch: the epoch the asker knows for the responder (None = none).
        base: the version the asker knows.
        resume: continuing a paged reset (``OwnStates.delta_since``).
        limit: most changes wanted in the page.
    """

    epoch: int | None
    base: int
    resume: bool = False
    limit: int = MAX_DELTA_CHANGES


@dataclass(frozen=True, slots=True, kw_only=True)
class StatesResponse:
    """A page of the responder's state log."""

    delta: StatesDelta


SyncRequest = SummaryRequest | EntriesRequest | PushRequest | StatesRequest
SyncResponse = SummaryResponse | EntriesResponse | PushResponse | StatesResponse


def encode_request(req: SyncRequest) -> bytes:
    """A sync request as msgpack bytes."""
    if isinstance(req, SummaryRequest | EntriesRequest):
        return encode_message(req)
    if isinstance(req, PushRequest):
        obj: dict[str, Any] = {"t": "push", "entries": [entry_to_wire(e) for e in req.entries]}
    elif isinstance(req, StatesRequest):
        obj = {"t": "st?", "epoch": req.epoch, "base": req.base, "resume": req.resume,
               "limit": req.limit}
    else:
        raise TypeError(f"not a sync request: {type(req).__name__}")
    return msgpack.packb(obj, use_bin_type=True)


def encode_response(resp: SyncResponse) -> bytes:
    """A sync response as msgpack bytes."""
    if isinstance(resp, SummaryResponse | EntriesResponse):
        return encode_message(resp)
    if isinstance(resp, PushResponse):
        return msgpack.packb({"t": "ok", "changed": resp.changed}, use_bin_type=True)
    if isinstance(resp, StatesResponse):
        body = msgpack_unpack(encode_delta(resp.delta), "states")
        return msgpack.packb({"t": "st", "delta": body}, use_bin_type=True)
    raise TypeError(f"not a sync response: {type(resp).__name__}")


def _tag(data: bytes) -> tuple[str, dict[str, Any]]:
    obj = msgpack_unpack(data, "sync")
    if type(obj) is not dict or type(obj.get("t")) is not str:
        raise PinsetDecodeError("sync: expected a map with a type tag 't'")
    return obj["t"], obj


def _uint(v: Any, what: str, hi: int = _U63) -> int:
    if type(v) is not int or not 0 <= v <= hi:
        raise PinsetDecodeError(f"sync: {what}: expected an integer in 0..{hi}, got {v!r}")
    return v


def decode_request(data: bytes) -> SyncRequest:
    """Decode and validate a sync request (any of ``SyncRequest``).

    Raises:
        PinsetDecodeError: malformed, or a response where a request belongs.
    """
    t, obj = _tag(data)
    if t in ("ok", "st", "sum", "ent"):
        raise PinsetDecodeError(f"sync: {t!r} is a response, not a request")
    if t == "push":
        if set(obj) != {"t", "entries"} or type(obj["entries"]) is not list:
            raise PinsetDecodeError("sync: push: expected {t, entries: [...]}")
        if len(obj["entries"]) > MAX_PAGE_ENTRIES:
            raise PinsetDecodeError(f"sync: push: more than {MAX_PAGE_ENTRIES} entries")
        return PushRequest(entries=tuple(entry_from_wire(e, f"push entry {i}")
                                         for i, e in enumerate(obj["entries"])))
    if t == "st?":
        if set(obj) != {"t", "epoch", "base", "resume", "limit"}:
            raise PinsetDecodeError("sync: st?: expected {t, epoch, base, resume, limit}")
        epoch = None if obj["epoch"] is None else _uint(obj["epoch"], "epoch")
        if type(obj["resume"]) is not bool:
            raise PinsetDecodeError("sync: st?: resume: expected a bool")
        return StatesRequest(epoch=epoch, base=_uint(obj["base"], "base"), resume=obj["resume"],
                             limit=max(1, min(_uint(obj["limit"], "limit"), MAX_DELTA_CHANGES)))
    msg = decode_message(data)
    if not isinstance(msg, SummaryRequest | EntriesRequest):
        raise PinsetDecodeError(f"sync: {t!r} is a response, not a request")
    return msg


def decode_response(data: bytes) -> SyncResponse:
    """Decode and validate a sync response (any of ``SyncResponse``).

    Raises:
        PinsetDecodeError: malformed, or a request where a response belongs.
    """
    t, obj = _tag(data)
    if t in ("push", "st?", "sum?", "ent?"):
        raise PinsetDecodeError(f"sync: {t!r} is a request, not a response")
    if t == "ok":
        if set(obj) != {"t", "changed"}:
            raise PinsetDecodeError("sync: ok: expected {t, changed}")
        return PushResponse(changed=_uint(obj["changed"], "changed"))
    if t == "st":
        if set(obj) != {"t", "delta"}:
            raise PinsetDecodeError("sync: st: expected {t, delta}")
        return StatesResponse(delta=delta_from_obj(obj["delta"], "sync: st"))
    msg = decode_message(data)
    if not isinstance(msg, SummaryResponse | EntriesResponse):
        raise PinsetDecodeError(f"sync: {t!r} is a request, not a response")
    return msg
