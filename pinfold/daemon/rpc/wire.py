"""The local RPC wire protocol: frames, messages, validation, flow-control bookkeeping.

This module is sans-IO (STYLE.md 1): bytes go in, frozen messages come out, and
messages turn into buffers to write. ``rpcserver`` (trio) and ``rpcclient``
(blocking sockets, and trio for tests) are the only I/O.

Protocol ``pinfold-rpc`` version 1, over a Unix stream socket:

* **Frames.** A 4-byte big-endian unsigned length, then that many bytes of
  msgpack (``msgpack`` spec, bin type for bytes, str as UTF-8). A body is one
  map with a ``"t"`` key naming the message type. Bodies are 1 to
  ``MAX_FRAME_BYTES`` (1 MiB + 4 KiB) long; a longer length prefix is a
  ``frame_too_large`` error and the connection is closed.
* **Handshake.** The client's first frame is ``hello``; the server answers
  ``welcome`` or an ``error`` with ``id`` nil (connection-level) and closes.
* **Requests.** ``call`` opens request ``id`` (a positive integer, strictly
  increasing on a connection, so a reused id is detected). Frames for a
  request that already finished are ignored (they may have crossed the final
  reply in flight); frames naming an id never opened are a protocol error.
  Each request ends with exactly one ``result`` or ``error`` from the server.
* **Streaming.** A ``call`` with ``upload: true`` is followed by ``data``
  frames (at most ``MAX_CHUNK_BYTES`` of bytes each) and one ``end``. The
  server may send ``item`` frames before the final reply.
* **Flow control.** Per request and direction, in bytes of frame body (the
  length prefix excluded). The uploader may send ``data`` only while the
  body length fits in its credit; the server's credit starts at the
  ``window`` of its ``welcome``. Symmetrically the server sends ``item``
  frames within the ``window`` of the client's ``hello``. The receiver hands
  credit back with ``credit`` frames as its consumer takes frames from its
  buffer, so a receiver never holds more than ``window`` bytes for a request
  and one slow request never stalls the others. Receiving more than the
  granted credit, or a grant that lifts the sender's credit above the window,
  is a protocol error. ``result`` and ``error`` frames are not
  flow-controlled (one per request).
* **Cancel.** ``cancel`` asks the server to cancel the request's handler; the
  final reply is then ``error`` with code ``cancelled`` (or the result, if it
  was already on its way).

Messages (``?`` marks optional fields; any other key is a protocol error)::

    client -> server
      {t: "hello", protocol: "pinfold-rpc", version: 1, window: int}
      {t: "call", id: int, method: str, params?: map(str -> any), upload?: bool}
      {t: "data", id: int, data: bin}
      {t: "end", id: int}
      {t: "credit", id: int, bytes: int}
      {t: "cancel", id: int}
    server -> client
      {t: "welcome", protocol: "pinfold-rpc", version: 1, daemon_version: str, window: int}
      {t: "item", id: int, item: any}
      {t: "result", id: int, result: any}
      {t: "error", id: int | nil, code: str, message: str}
      {t: "credit", id: int, bytes: int}

Error codes are short snake_case strings. Connection-level ones (``id`` nil,
the connection is closed after them) are listed in ``CONNECTION_ERROR_CODES``.

Data path (add/cat are bound by it): ``encode`` returns a 1 MiB payload as its
own buffer behind a small header, for one gather write; ``FrameDecoder``
recognizes that canonical layout on the way in and receives the payload
straight into one bytes object (``Bulk``). Any other valid msgpack layout of
the same message decodes to the same result through the generic path.
"""

from __future__ import annotations

import array
import fcntl
import re
import struct
import termios
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import msgpack

PROTOCOL = "pinfold-rpc"
"""The protocol name sent in ``hello`` and ``welcome``."""

VERSION = 1
"""The protocol version this module speaks."""

SUPPORTED_VERSIONS = frozenset({VERSION})
"""Versions a server built from this module accepts in ``hello``."""

MAX_CHUNK_BYTES = 1 << 20
"""Largest ``data`` payload, bytes (1 MiB: the add chunk size)."""

MAX_FRAME_BYTES = MAX_CHUNK_BYTES + 4096
"""Largest frame body, bytes: one chunk plus room for the message around it."""

MIN_WINDOW_BYTES = 2 * MAX_FRAME_BYTES
"""Smallest window a peer may announce, bytes; guarantees progress (see ``RecvWindow``)."""

MAX_WINDOW_BYTES = 64 << 20
"""Largest window a peer may announce, bytes."""

DEFAULT_WINDOW_BYTES = 4 * MAX_FRAME_BYTES
"""Default per-request window, bytes: four full chunks in flight (~4 MiB)."""

MAX_REQUEST_ID = (1 << 63) - 1
"""Request ids are 1..MAX_REQUEST_ID."""

MAX_CONTAINERS_PER_FRAME = 16384
"""Maps plus arrays one frame may decode to; bounds the memory a hostile frame costs."""

MAX_ERROR_MESSAGE_CHARS = 8192
"""Error messages longer than this are truncated before sending."""

CONNECTION_ERROR_CODES = frozenset({
    "protocol_error",         # a malformed frame or a broken protocol rule
    "frame_too_large",        # a length prefix above MAX_FRAME_BYTES
    "unsupported_version",    # hello named another protocol or version
    "too_many_connections",   # the server's connection limit is reached
    "permission_denied",      # the peer's user may not use the daemon (SO_PEERCRED)
    "handshake_timeout",      # no hello in time
    "shutting_down",          # the server is stopping
})
"""Codes of ``error`` frames with ``id`` nil, after which the connection closes."""

_CODE_RE = re.compile(r"[a-z][a-z0-9_]{0,63}\Z")
_LEN = struct.Struct(">I")


# --------------------------------------------------------------------------- errors


class RpcError(Exception):
    """An RPC failed: the daemon answered with an error, or the transport failed.

    ``str(exc)`` is the human message; ``code`` is the short snake_case code
    (``not_found``, ``invalid_argument``, ``unknown_method``, ``cancelled``,
    ``internal``, ...) a program branches on.

    Attributes:
        code: the error code.
        message: the human-readable message.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code!r}, {self.message!r})"


class RpcProtocolError(RpcError):
    """The peer broke the wire protocol (the remote side's fault, or a version mismatch)."""


class RpcConnectionClosed(RpcError):
    """The connection ended before the request got its final reply (code ``connection_closed``)."""

    def __init__(self, message: str) -> None:
        super().__init__("connection_closed", message)


class DaemonNotRunning(RpcError):
    """No daemon listens on the socket path (code ``daemon_not_running``).

    Attributes:
        socket_path: the path that was tried.
    """

    def __init__(self, socket_path: str, reason: str) -> None:
        super().__init__(
            "daemon_not_running",
            f"no pinfold daemon is running on {socket_path} ({reason}); "
            "start one with `pinfold daemon`",
        )
        self.socket_path = socket_path


class WireError(Exception):
    """A frame broke protocol rules; the receiver answers with ``code`` and closes.

    Attributes:
        code: a connection-level code from ``CONNECTION_ERROR_CODES``.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def error_code_of(exc: BaseException) -> str:
    """The wire code for an exception: its ``.code`` if that is valid snake_case, else ``internal``."""
    code = getattr(exc, "code", None)
    if isinstance(code, str) and _CODE_RE.match(code):
        return code
    return "internal"


def is_valid_code(code: object) -> bool:
    """True if ``code`` is a short snake_case string usable as an error code."""
    return isinstance(code, str) and _CODE_RE.match(code) is not None


# --------------------------------------------------------------------------- messages


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
ServerMessage = Welcome | Item | Result | ErrorReply | Credit


# --------------------------------------------------------------------------- encoding

_packb = msgpack.packb


def _bin_header(n: int) -> bytes:
    if n < 0x100:
        return b"\xc4" + n.to_bytes(1, "big")
    if n < 0x10000:
        return b"\xc5" + n.to_bytes(2, "big")
    return b"\xc6" + n.to_bytes(4, "big")


_DATA_HEAD = b"\x83" + _packb("t") + _packb("data") + _packb("id")
_DATA_KEY = _packb("data")
_ITEM_HEAD = b"\x83" + _packb("t") + _packb("item") + _packb("id")
_ITEM_KEY = _packb("item")


def _framed_bin(head: bytes, rid: int, key: bytes, payload: bytes | bytearray | memoryview,
                ) -> tuple[list[bytes | bytearray | memoryview], int]:
    n = payload.nbytes if isinstance(payload, memoryview) else len(payload)
    header = head + _packb(rid) + key + _bin_header(n)
    body_len = len(header) + n
    return [_LEN.pack(body_len) + header, payload], body_len


def _as_bytes_view(payload: memoryview) -> memoryview:
    if not payload.c_contiguous:
        raise ValueError("a memoryview payload must be C-contiguous")
    return payload.cast("B") if payload.format != "B" or payload.ndim != 1 else payload


def encode(msg: ClientMessage | ServerMessage) -> tuple[list[bytes | bytearray | memoryview], int]:
    """Encode a message as buffers to write, without copying bulk payloads.

    ``Data`` and bytes-valued ``Item`` payloads are returned as their own buffer
    after a small header, so a 1 MiB chunk is never copied (write the list with
    one gather write, ``socket.sendmsg``).

    Args:
        msg: the message.

    Returns:
        ``(buffers, body_len)``: buffers whose concatenation is the whole frame
        (length prefix included) and the body length in bytes, which is the
        message's flow-control cost.

    Raises:
        ValueError: the body would exceed ``MAX_FRAME_BYTES`` or a chunk exceeds
            ``MAX_CHUNK_BYTES``, or a field is invalid.
        TypeError: a value (params, item, result) is not msgpack-serializable.
    """
    if isinstance(msg, Data):
        data = _as_bytes_view(msg.data) if isinstance(msg.data, memoryview) else msg.data
        n = len(data) if not isinstance(data, memoryview) else data.nbytes
        if not 1 <= n <= MAX_CHUNK_BYTES:
            raise ValueError(f"a data chunk must hold 1..{MAX_CHUNK_BYTES} bytes, got {n}")
        return _framed_bin(_DATA_HEAD, msg.id, _DATA_KEY, data)
    if isinstance(msg, Item) and isinstance(msg.item, bytes | bytearray | memoryview):
        data = _as_bytes_view(msg.item) if isinstance(msg.item, memoryview) else msg.item
        bufs, body_len = _framed_bin(_ITEM_HEAD, msg.id, _ITEM_KEY, data)
    else:
        body = _packb(_to_wire(msg))
        body_len = len(body)
        bufs = [_LEN.pack(body_len), body]
    if body_len > MAX_FRAME_BYTES:
        raise ValueError(
            f"{type(msg).__name__.lower()} frame of {body_len} bytes exceeds the "
            f"{MAX_FRAME_BYTES}-byte frame limit"
        )
    return bufs, body_len


def encode_bytes(msg: ClientMessage | ServerMessage) -> bytes:
    """``encode`` joined into one bytes object (for small messages and tests)."""
    bufs, _ = encode(msg)
    return b"".join(bytes(b) if isinstance(b, memoryview) else b for b in bufs)


def _to_wire(msg: ClientMessage | ServerMessage) -> dict[str, Any]:
    match msg:
        case Hello():
            return {"t": "hello", "protocol": msg.protocol, "version": msg.version,
                    "window": msg.window}
        case Welcome():
            return {"t": "welcome", "protocol": msg.protocol, "version": msg.version,
                    "daemon_version": msg.daemon_version, "window": msg.window}
        case Request():
            wire: dict[str, Any] = {"t": "call", "id": msg.id, "method": msg.method}
            if msg.params:
                wire["params"] = msg.params
            if msg.upload:
                wire["upload"] = True
            return wire
        case End():
            return {"t": "end", "id": msg.id}
        case Credit():
            return {"t": "credit", "id": msg.id, "bytes": msg.nbytes}
        case Cancel():
            return {"t": "cancel", "id": msg.id}
        case Item():
            return {"t": "item", "id": msg.id, "item": msg.item}
        case Result():
            return {"t": "result", "id": msg.id, "result": msg.result}
        case ErrorReply():
            return {"t": "error", "id": msg.id, "code": msg.code,
                    "message": msg.message[:MAX_ERROR_MESSAGE_CHARS]}
    raise TypeError(f"not an RPC message: {msg!r:.80}")


# --------------------------------------------------------------------------- decoding


class _ContainerLimit:
    """``object_hook``/``list_hook`` counting maps and arrays; aborts a decoding bomb."""

    __slots__ = ("left",)

    def __init__(self) -> None:
        self.left = MAX_CONTAINERS_PER_FRAME

    def __call__(self, obj: Any) -> Any:
        self.left -= 1
        if self.left < 0:
            raise ValueError(f"more than {MAX_CONTAINERS_PER_FRAME} maps and arrays in one frame")
        return obj


def unpack_body(body: bytes | bytearray | memoryview) -> Any:
    """Decode one frame body to Python values, with limits against hostile input.

    Maps and arrays together are limited to ``MAX_CONTAINERS_PER_FRAME``, ext
    types (timestamps included) are refused, map keys must be str or bytes,
    and nesting is limited by msgpack's own stack (1024 levels).

    Raises:
        WireError: ``protocol_error`` naming what is wrong.
    """
    limit = _ContainerLimit()
    try:
        return msgpack.unpackb(body, raw=False, strict_map_key=True, max_ext_len=0,
                               object_hook=limit, list_hook=limit)
    except Exception as exc:  # msgpack raises a zoo of types for bad input; all mean one thing
        raise WireError("protocol_error", f"frame is not valid msgpack: {exc}") from exc


def _fields(obj: dict[str, Any], kind: str, required: tuple[str, ...],
            optional: tuple[str, ...] = ()) -> None:
    for key in required:
        if key not in obj:
            raise WireError("protocol_error", f"{kind} frame lacks the {key!r} field")
    extra = set(obj) - set(required) - set(optional) - {"t"}
    if extra:
        raise WireError("protocol_error",
                        f"{kind} frame has unknown field(s): {', '.join(sorted(map(str, extra)))[:200]}")


def _str(obj: dict[str, Any], key: str, kind: str, max_len: int = 256) -> str:
    value = obj[key]
    if not isinstance(value, str) or len(value) > max_len:
        raise WireError("protocol_error",
                        f"{kind}.{key} must be a string of at most {max_len} characters")
    return value


def _nbytes(obj: dict[str, Any], kind: str) -> int:
    value = obj["bytes"]
    if type(value) is not int or not 1 <= value <= MAX_WINDOW_BYTES:
        raise WireError("protocol_error",
                        f"{kind}.bytes must be an integer in 1..{MAX_WINDOW_BYTES}, got {value!r:.40}")
    return value


def _message_map(body: bytes | bytearray | memoryview) -> tuple[dict[str, Any], str]:
    obj = unpack_body(body)
    if not isinstance(obj, dict):
        raise WireError("protocol_error", f"frame must be a msgpack map, got {type(obj).__name__}")
    kind = obj.get("t")
    if not isinstance(kind, str):
        raise WireError("protocol_error", "frame lacks a string 't' (message type) field")
    return obj, kind


def decode_client_message(body: bytes | bytearray | memoryview | Bulk) -> ClientMessage:
    """Decode and validate one frame body sent by a client.

    Args:
        body: the frame body (length prefix removed), or a ``Bulk`` from ``FrameDecoder``.

    Returns:
        The message.

    Raises:
        WireError: ``protocol_error`` naming the malformed part (unknown type,
            missing or unknown field, wrong type, out-of-range value).
    """
    if isinstance(body, Bulk):
        if body.kind != "data":
            raise WireError("protocol_error", f"unknown client message type {body.kind!r}")
        if len(body.payload) > MAX_CHUNK_BYTES:
            raise WireError("protocol_error", f"data.data must be bin of 1..{MAX_CHUNK_BYTES} bytes")
        return Data(id=body.id, data=body.payload)
    obj, kind = _message_map(body)
    if kind == "data":
        _fields(obj, "data", ("id", "data"))
        data = obj["data"]
        if not isinstance(data, bytes) or not 1 <= len(data) <= MAX_CHUNK_BYTES:
            raise WireError("protocol_error",
                            f"data.data must be bin of 1..{MAX_CHUNK_BYTES} bytes")
        return Data(id=_check_id(obj["id"]), data=data)
    if kind == "credit":
        _fields(obj, "credit", ("id", "bytes"))
        return Credit(id=_check_id(obj["id"]), nbytes=_nbytes(obj, "credit"))
    if kind == "call":
        _fields(obj, "call", ("id", "method"), ("params", "upload"))
        params = obj.get("params", {})
        if not isinstance(params, dict) or not all(isinstance(k, str) for k in params):
            raise WireError("protocol_error", "call.params must be a map with string keys")
        upload = obj.get("upload", False)
        if not isinstance(upload, bool):
            raise WireError("protocol_error", "call.upload must be a boolean")
        return Request(id=_check_id(obj["id"]), method=_str(obj, "method", "call"), params=params,
                    upload=upload)
    if kind in ("end", "cancel"):
        _fields(obj, kind, ("id",))
        rid = _check_id(obj["id"])
        return End(id=rid) if kind == "end" else Cancel(id=rid)
    if kind == "hello":
        # Name and version first: a newer client's hello may carry fields this version lacks.
        protocol, version = obj.get("protocol"), obj.get("version")
        if protocol != PROTOCOL or version not in SUPPORTED_VERSIONS or type(version) is not int:
            raise WireError(
                "unsupported_version",
                f"this daemon speaks {PROTOCOL} version {max(SUPPORTED_VERSIONS)}; the client "
                f"asked for {str(protocol)[:40]!r} version {str(version)[:20]}")
        _fields(obj, "hello", ("protocol", "version", "window"))
        return Hello(protocol=_str(obj, "protocol", "hello"), version=version,
                     window=_check_window(obj["window"]))
    raise WireError("protocol_error", f"unknown client message type {kind[:40]!r}")


def decode_server_message(body: bytes | bytearray | memoryview | Bulk) -> ServerMessage:
    """Decode and validate one frame body sent by a server (or a ``Bulk``).

    Raises:
        WireError: ``protocol_error`` naming the malformed part.
    """
    if isinstance(body, Bulk):
        if body.kind != "item":
            raise WireError("protocol_error", f"unknown server message type {body.kind!r}")
        return Item(id=body.id, item=body.payload)
    obj, kind = _message_map(body)
    if kind == "item":
        _fields(obj, "item", ("id", "item"))
        return Item(id=_check_id(obj["id"]), item=obj["item"])
    if kind == "credit":
        _fields(obj, "credit", ("id", "bytes"))
        return Credit(id=_check_id(obj["id"]), nbytes=_nbytes(obj, "credit"))
    if kind == "result":
        _fields(obj, "result", ("id", "result"))
        return Result(id=_check_id(obj["id"]), result=obj["result"])
    if kind == "error":
        _fields(obj, "error", ("id", "code", "message"))
        rid = obj["id"]
        if rid is not None:
            _check_id(rid)
        code = obj["code"]
        if not is_valid_code(code):
            raise WireError("protocol_error", f"error.code must be snake_case, got {code!r:.40}")
        return ErrorReply(id=rid, code=code,
                          message=_str(obj, "message", "error", MAX_ERROR_MESSAGE_CHARS))
    if kind == "welcome":
        _fields(obj, "welcome", ("protocol", "version", "daemon_version", "window"))
        version = obj["version"]
        if type(version) is not int:
            raise WireError("protocol_error", "welcome.version must be an integer")
        return Welcome(protocol=_str(obj, "protocol", "welcome"), version=version,
                       daemon_version=_str(obj, "daemon_version", "welcome"),
                       window=_check_window(obj["window"]))
    raise WireError("protocol_error", f"unknown server message type {kind[:40]!r}")


# --------------------------------------------------------------------------- framing


@dataclass(frozen=True, slots=True, kw_only=True)
class Bulk:
    """A large ``data`` or ``item`` frame whose bin payload was received as one bytes object.

    ``FrameDecoder`` recognizes the canonical layout ``encode`` writes
    (``{t, id, data|item}`` in that order, unsigned id, bin payload ending the
    frame) and receives the payload straight into a bytes object, skipping
    msgpack's copy. Any other layout takes the generic path; both give the
    same message from ``decode_*_message``.

    Attributes:
        kind: ``"data"`` or ``"item"``.
        id: the request id (already range-checked).
        payload: the bin payload.
        nbytes: the frame's body length, bytes (its flow-control cost).
    """

    kind: str
    id: int
    payload: bytes
    nbytes: int


Body = memoryview | Bulk
"""What ``FrameDecoder.next_body`` returns; ``.nbytes`` is the body length either way."""

_BULK_HEADS = ((_DATA_HEAD, "data", _DATA_KEY), (_ITEM_HEAD, "item", _ITEM_KEY))
_UINT = {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8}
_BIN = {0xC4: 1, 0xC5: 2, 0xC6: 4}
_BULK_HEADER_MAX = len(_DATA_HEAD) + 9 + len(_DATA_KEY) + 5  # id as uint64, bin32
_READ_BYTES = 32 << 10


def _bulk_header_len(buf: memoryview) -> int | None:
    """How long a canonical bulk header starting ``buf`` is (as far as ``buf`` tells),
    or None if ``buf`` cannot start one. Lets a driver read a header byte-exactly,
    so that the payload after it can be received whole into one bytes object."""
    have = len(buf)
    for head, _, key in _BULK_HEADS:
        size = len(head)
        if have <= size:
            if buf[:have] == head[:have]:
                return size + 1  # up to the id's type byte
            continue
        if buf[:size] != head:
            continue
        tag = buf[size]
        extra = 0 if tag <= 0x7F else _UINT.get(tag)
        if extra is None:
            return None
        pos = size + 1 + extra + len(key)  # the bin type byte
        if have <= pos:
            return pos + 5  # assume bin32, as bulk payloads (> 64 KiB) nearly always are
        width = _BIN.get(buf[pos])
        return None if width is None else pos + 1 + width
    return None


def _parse_bulk_header(buf: memoryview, n: int) -> tuple[str, int, int] | None:
    """``(kind, id, header_len)`` if ``buf`` (a body's first bytes, the whole header
    included) starts a canonical bulk frame of body length ``n`` whose bin payload
    ends the frame; else None."""
    for head, kind, key in _BULK_HEADS:
        if buf[:len(head)] != head:
            continue
        pos = len(head)
        tag = buf[pos]
        if tag <= 0x7F:
            rid, pos = tag, pos + 1
        elif tag in _UINT:
            size = _UINT[tag]
            rid = int.from_bytes(buf[pos + 1:pos + 1 + size], "big")
            pos += 1 + size
        else:
            return None
        if not 1 <= rid <= MAX_REQUEST_ID or buf[pos:pos + len(key)] != key:
            return None
        pos += len(key)
        size = _BIN.get(buf[pos])
        if size is None:
            return None
        length = int.from_bytes(buf[pos + 1:pos + 1 + size], "big")
        pos += 1 + size
        return (kind, rid, pos) if pos + length == n else None
    return None


class FrameDecoder:
    """Splits a byte stream into frame bodies; sans-IO, built for few copies.

    Drivers loop: if ``bulk_wanted()`` is non-zero, receive up to that many
    bytes as a new bytes object (``socket.recv``) and pass it to
    ``add_bulk``; otherwise receive into ``get_buffer()`` (``recv_into``) and
    ``commit(n)``. After either, take bodies with ``next_body()`` until it
    returns None (draining keeps ``get_buffer()`` non-empty). ``feed(data)``
    does all of this for bytes already in hand.

    Large canonical ``data``/``item`` frames come back as ``Bulk``: their
    payload is received into its own bytes object (one kernel copy, no
    more). Other bodies come back as a view into the decoder's buffers, valid
    until the next call on the decoder: decode it (``decode_*_message`` copies
    what it keeps) before asking for more. Large non-canonical bodies land in
    a second buffer reused from frame to frame.

    Memory: ``buffer_bytes``, plus ``max_frame_bytes`` once a large
    non-canonical frame was seen, plus the bulk payload in progress.
    """

    def __init__(self, *, max_frame_bytes: int = MAX_FRAME_BYTES,
                 buffer_bytes: int = 256 << 10, direct_threshold: int = 64 << 10) -> None:
        if direct_threshold + 4 > buffer_bytes or direct_threshold < _BULK_HEADER_MAX:
            raise ValueError("need direct_threshold >= 64 and buffer_bytes > direct_threshold + 4")
        self._max = max_frame_bytes
        self._buf = bytearray(buffer_bytes)
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0
        self._direct = direct_threshold
        self._big_buf = bytearray()
        self._big: memoryview | None = None  # the current large body being filled
        self._big_filled = 0
        # The bulk frame in progress: kind, id, body length, payload pieces, bytes missing.
        self._bulk: tuple[str, int, int] | None = None
        self._pieces: list[bytes] = []
        self._bulk_need = 0
        # After a bulk frame, expect another: read headers byte-exactly so the next
        # payload is received whole (see ``get_buffer``).
        self._probe = False

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames."""
        return (self._end - self._start + self._big_filled
                + sum(len(p) for p in self._pieces))

    def bulk_wanted(self) -> int:
        """Bytes of a bulk payload still to receive with ``add_bulk`` (0: use ``get_buffer``)."""
        return self._bulk_need

    def add_bulk(self, data: bytes) -> None:
        """Add received payload bytes (at most ``bulk_wanted()``; kept without copying)."""
        if not 0 < len(data) <= self._bulk_need:
            raise ValueError(f"add_bulk takes 1..{self._bulk_need} bytes, got {len(data)}")
        self._pieces.append(data)
        self._bulk_need -= len(data)

    def get_buffer(self) -> memoryview:
        """A writable view to receive into (never empty); then call ``commit``."""
        if self._big is not None:
            return self._big[self._big_filled:]
        if self._end == len(self._buf):
            self._compact()
        limit = _READ_BYTES  # modest: payload bytes read here are copied once more
        if self._probe:
            need = self._header_need()
            if need:
                limit = need
            else:
                self._probe = False
        return self._view[self._end:self._end + limit]

    def _header_need(self) -> int:
        """Bytes still to read to complete the next frame's bulk header; 0 if not bulk."""
        avail = self._end - self._start
        if avail < 4:
            return 4 + len(_DATA_HEAD) + 1 - avail  # the prefix, the fixed head, the id's type
        (n,) = _LEN.unpack_from(self._buf, self._start)
        if not self._direct < n <= self._max:
            return 0
        header_len = _bulk_header_len(self._view[self._start + 4:self._end])
        return max(0, header_len - (avail - 4)) if header_len is not None else 0

    def commit(self, n: int) -> None:
        """Record that ``n`` bytes were written at the start of the last ``get_buffer()``."""
        if self._big is not None:
            self._big_filled += n
        else:
            self._end += n

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes | Bulk]:
        """Take received bytes (copying them) and return the frame bodies they complete.

        Raises:
            WireError: ``frame_too_large`` if a length prefix is over the limit,
                ``protocol_error`` for an empty frame.
        """
        bodies: list[bytes | Bulk] = []
        view = memoryview(data).cast("B")
        while view.nbytes:
            want = self._bulk_need
            if want:
                n = min(want, view.nbytes)
                self.add_bulk(bytes(view[:n]))
            else:
                target = self.get_buffer()
                n = min(target.nbytes, view.nbytes)
                target[:n] = view[:n]
                self.commit(n)
            view = view[n:]
            bodies.extend(b if isinstance(b, Bulk) else bytes(b) for b in iter_bodies(self))
        return bodies

    def _compact(self) -> None:
        n = self._end - self._start
        if self._start:
            self._buf[:n] = self._buf[self._start:self._end]
        self._start, self._end = 0, n

    def next_body(self) -> Body | None:
        """The next complete frame body, or None if more bytes are needed.

        A view is valid until the next call on this decoder; a ``Bulk`` owns its bytes.

        Raises:
            WireError: ``frame_too_large`` for a length prefix above the limit,
                ``protocol_error`` for a zero length.
        """
        if self._bulk is not None:
            if self._bulk_need:
                return None
            (kind, rid, n), pieces = self._bulk, self._pieces
            self._bulk, self._pieces = None, []
            self._probe = True
            payload = pieces[0] if len(pieces) == 1 else b"".join(pieces)
            return Bulk(kind=kind, id=rid, payload=payload, nbytes=n)
        big = self._big
        if big is not None:
            if self._big_filled < len(big):
                return None
            self._big = None
            self._big_filled = 0
            return big
        avail = self._end - self._start
        if avail < 4:
            if self._start and self._end == len(self._buf):
                self._compact()
            return None
        start = self._start
        (n,) = _LEN.unpack_from(self._buf, start)
        if n > self._max:
            raise WireError("frame_too_large",
                            f"frame of {n} bytes exceeds the {self._max}-byte limit")
        if n == 0:
            raise WireError("protocol_error", "empty frame")
        if avail >= 4 + n:
            body = self._view[start + 4:start + 4 + n]
            self._start = start + 4 + n
            if self._start == self._end:
                self._start = self._end = 0
            return body
        if n <= self._direct:
            if start + 4 + n > len(self._buf):
                self._compact()  # make room: it will fit in the buffer
            return None
        body_start = start + 4
        header = self._view[body_start:self._end]
        header_len = _bulk_header_len(header)
        if header_len is not None and len(header) < header_len:
            return None  # wait for the whole header
        parsed = None if header_len is None else _parse_bulk_header(header, n)
        if parsed is not None:
            kind, rid, header_len = parsed
            have = avail - 4 - header_len
            self._bulk = (kind, rid, n)
            self._pieces = [bytes(self._view[body_start + header_len:self._end])] if have else []
            self._bulk_need = n - header_len - have
            self._start = self._end = 0
            return None
        have = avail - 4
        if len(self._big_buf) < n:
            self._big_buf = bytearray(self._max)
        big = memoryview(self._big_buf)[:n]
        big[:have] = self._view[body_start:self._end]
        self._big, self._big_filled = big, have
        self._start = self._end = 0
        return None


BULK_PIECE_BYTES = 256 << 10
"""Read size for a bulk payload that has not fully arrived yet (see ``bulk_read_size``)."""


def bulk_read_size(fd: int, want: int) -> int:
    """How much of a bulk payload to ``recv`` now on socket ``fd``.

    If all ``want`` bytes are queued in the socket (``FIONREAD``), all of
    them: one ``recv`` then yields the whole payload as one bytes object and
    the decoder needs no join. Otherwise a piece of at most
    ``BULK_PIECE_BYTES``: the reader is ahead of the writer, so the later
    join costs nothing that matters. This is the drivers' only syscall
    besides send and receive.
    """
    queued = array.array("i", [0])
    try:
        fcntl.ioctl(fd, termios.FIONREAD, queued, True)
    except OSError:
        return min(want, BULK_PIECE_BYTES)
    return want if queued[0] >= want else min(want, BULK_PIECE_BYTES)


def iter_bodies(decoder: FrameDecoder) -> Iterator[Body]:
    """Every complete body currently in ``decoder``; a view is valid until the next is taken.

    Raises ``WireError`` like ``next_body``.
    """
    while (body := decoder.next_body()) is not None:
        yield body


# --------------------------------------------------------------------------- flow control


class FlowControlError(WireError):
    """A peer sent beyond its credit or granted credit beyond the window."""

    def __init__(self, message: str) -> None:
        super().__init__("protocol_error", message)


@dataclass(slots=True)
class RecvWindow:
    """Receiver side of one request's stream: how much may arrive, when to grant more.

    ``window`` bytes are granted implicitly at the start. Each arriving frame
    costs its body length (``on_receive``); when the consumer takes a frame
    (``on_consume``), its cost is freed and handed back as credit once at least
    ``window // 4`` bytes are free. Since ``window >= 2 * MAX_FRAME_BYTES``, a
    sender blocked for credit always gets it once the consumer drains the
    buffer, so the stream cannot deadlock; and the buffer never holds more
    than ``window`` bytes.

    Attributes:
        window: the window, bytes.
        outstanding: credit the sender holds or has in flight, bytes.
        buffered: bytes received and not yet consumed.
        freed: bytes consumed and not yet granted back.
        peak_buffered: the largest ``buffered`` seen, bytes.
    """

    window: int
    outstanding: int = -1
    buffered: int = 0
    freed: int = 0
    peak_buffered: int = 0

    def __post_init__(self) -> None:
        if self.outstanding < 0:
            self.outstanding = self.window

    def on_receive(self, cost: int) -> None:
        """A frame of ``cost`` body bytes arrived. Raises ``FlowControlError`` beyond credit."""
        if cost > self.outstanding:
            raise FlowControlError(
                f"peer sent a {cost}-byte frame with only {self.outstanding} bytes of credit")
        self.outstanding -= cost
        self.buffered += cost
        self.peak_buffered = max(self.peak_buffered, self.buffered)

    def on_consume(self, cost: int) -> int:
        """The consumer took a frame of ``cost`` bytes; returns bytes to grant now (0 = none)."""
        self.buffered -= cost
        self.freed += cost
        if self.freed >= self.window // 4:
            grant, self.freed = self.freed, 0
            self.outstanding += grant
            return grant
        return 0


@dataclass(slots=True)
class SendCredit:
    """Sender side of one request's stream: the credit left, in bytes of frame body.

    Attributes:
        window: the receiver's window, bytes (the initial credit).
        available: credit left, bytes.
    """

    window: int
    available: int = -1

    def __post_init__(self) -> None:
        if self.available < 0:
            self.available = self.window

    def can_send(self, cost: int) -> bool:
        """True if a frame of ``cost`` bytes fits in the credit."""
        return cost <= self.available

    def spend(self, cost: int) -> None:
        """Take ``cost`` bytes of credit (the caller checked ``can_send``)."""
        if cost > self.available:
            raise ValueError(f"spending {cost} bytes with only {self.available} of credit")
        self.available -= cost

    def grant(self, nbytes: int) -> None:
        """The receiver granted ``nbytes``. Raises ``FlowControlError`` above the window."""
        if self.available + nbytes > self.window:
            raise FlowControlError(
                f"credit overflow: a grant of {nbytes} bytes lifts credit to "
                f"{self.available + nbytes}, above the {self.window}-byte window")
        self.available += nbytes

