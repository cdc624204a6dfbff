"""Messages to msgpack frames (``encode``) and frame bodies back to validated
messages (``decode_client_message``, ``decode_server_message``), with the
limits against hostile input; ``Bulk`` is a body whose payload arrived whole.

Imports msgpack and the other ``wire`` modules; no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from pinfold.daemon.rpc.wire.errors import WireError
from pinfold.daemon.rpc.wire.errors import is_valid_code
from pinfold.daemon.rpc.wire.limits import (
    _LEN,
    MAX_CHUNK_BYTES,
    MAX_CONTAINERS_PER_FRAME,
    MAX_ERROR_MESSAGE_CHARS,
    MAX_FRAME_BYTES,
    MAX_WINDOW_BYTES,
    PROTOCOL,
    SUPPORTED_VERSIONS,
)
from pinfold.daemon.rpc.wire.messages import (
    Cancel,
    ClientMessage,
    Credit,
    Data,
    End,
    ErrorReply,
    Hello,
    Item,
    Progress,
    Request,
    Result,
    ServerMessage,
    Welcome,
    _check_id,
    _check_window,
)


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
        case Progress():
            return {"t": "progress", "id": msg.id, "progress": msg.progress}
        case Result():
            return {"t": "result", "id": msg.id, "result": msg.result}
        case ErrorReply():
            return {"t": "error", "id": msg.id, "code": msg.code,
                    "message": msg.message[:MAX_ERROR_MESSAGE_CHARS]}
    raise TypeError(f"not an RPC message: {msg!r:.80}")



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
        # The type first: a list or a map is not hashable, so not looked up in the set.
        if protocol != PROTOCOL or type(version) is not int or version not in SUPPORTED_VERSIONS:
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
    if kind == "progress":
        _fields(obj, "progress", ("id", "progress"))
        event = obj["progress"]
        if not isinstance(event, dict) or not all(isinstance(k, str) for k in event):
            raise WireError("protocol_error", "progress.progress must be a map with string keys")
        return Progress(id=_check_id(obj["id"]), progress=event)
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


