"""The RPC messages as frozen dataclasses, validated when built, and the
``ClientMessage``/``ServerMessage`` unions.

Imports ``limits`` and ``errors``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pinfold.daemon.rpc.wire.errors import WireError
from pinfold.daemon.rpc.wire.limits import (
    DEFAULT_WINDOW_BYTES,
    MAX_REQUEST_ID,
    MAX_WINDOW_BYTES,
    MIN_WINDOW_BYTES,
    PROTOCOL,
    VERSION,
)


def _check_id(value: object, what: str = "id") -> int:
    if type(value) is not int or not 1 <= value <= MAX_REQUEST_ID:
        raise WireError("protocol_error", f"{what} must be an integer in 1..2**63-1, got {value!r:.40}")
    return value


def _check_window(value: object) -> int:
    if type(value) is not int or not MIN_WINDOW_BYTES <= value <= MAX_WINDOW_BYTES:
        raise WireError(
            "protocol_error",
            f"window must be an integer in {MIN_WINDOW_BYTES}..{MAX_WINDOW_BYTES} bytes, "
            f"got {value!r:.40}",
        )
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class Hello:
    """Client's first frame: protocol name, version, and its per-request reply window (bytes)."""

    protocol: str = PROTOCOL
    version: int = VERSION
    window: int = DEFAULT_WINDOW_BYTES


@dataclass(frozen=True, slots=True, kw_only=True)
class Welcome:
    """Server's answer to ``Hello``: its version, the daemon's version, its upload window (bytes)."""

    protocol: str = PROTOCOL
    version: int = VERSION
    daemon_version: str
    window: int = DEFAULT_WINDOW_BYTES


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    """Opens request ``id``: ``method`` with ``params``; ``upload`` says data frames follow."""

    id: int
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    upload: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Data:
    """One upload chunk of request ``id`` (1..MAX_CHUNK_BYTES bytes)."""

    id: int
    data: bytes | bytearray | memoryview


@dataclass(frozen=True, slots=True, kw_only=True)
class End:
    """The upload of request ``id`` is complete."""

    id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Credit:
    """The receiver of request ``id``'s stream grants ``nbytes`` more bytes of frame body."""

    id: int
    nbytes: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Cancel:
    """The client asks the server to cancel request ``id``."""

    id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Item:
    """One streamed item of request ``id``'s reply (any msgpack value; bytes travel as bin)."""

    id: int
    item: Any


@dataclass(frozen=True, slots=True, kw_only=True)
class Progress:
    """A progress event of request ``id`` (sent only when the call's params hold
    ``progress: true``): a map of counters, e.g. ``{bytes, total, blocks,
    fetched_bytes, peers, elapsed_s}`` (DESIGN.md, "Progress events")."""

    id: int
    progress: dict[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class Result:
    """The final successful reply of request ``id``."""

    id: int
    result: Any


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorReply:
    """The final error reply of request ``id``, or a connection-level error when ``id`` is None."""

    id: int | None
    code: str
    message: str


ClientMessage = Hello | Request | Data | End | Credit | Cancel
ServerMessage = Welcome | Item | Progress | Result | ErrorReply | Credit

