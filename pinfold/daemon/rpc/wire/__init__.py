"""The local RPC wire protocol: frames, messages, validation, flow-control bookkeeping.

This package is sans-IO (STYLE.md 1): bytes go in, frozen messages come out, and
messages turn into buffers to write. ``rpc.server`` (trio) and ``rpc.connection``
(blocking sockets, and trio for tests) are the only I/O. Its parts: ``limits``
(name, version, sizes), ``errors``, ``messages`` (frozen types), ``codec``
(encode/decode), ``frames`` (``FrameDecoder``), ``flow`` (credit windows);
this module re-exports their public names, which is how the rest of pinfold
imports them.

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
* **Progress.** A call whose params hold ``progress: true`` may get
  ``progress`` frames before its final reply: a map of counters (DESIGN.md,
  "Progress events"). They cost credit like ``item`` frames; the server drops
  an event rather than wait for credit (the next one says more), and the
  client hands their credit back as soon as it reads them. A server never
  sends them to a call that did not ask, so older clients never see one.
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
      {t: "progress", id: int, progress: map(str -> any)}
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

from pinfold.daemon.rpc.wire.limits import (
    CONNECTION_ERROR_CODES,
    DEFAULT_WINDOW_BYTES,
    MAX_CHUNK_BYTES,
    MAX_CONTAINERS_PER_FRAME,
    MAX_ERROR_MESSAGE_CHARS,
    MAX_FRAME_BYTES,
    MAX_REQUEST_ID,
    MAX_WINDOW_BYTES,
    MIN_WINDOW_BYTES,
    PROTOCOL,
    SUPPORTED_VERSIONS,
    VERSION,
)
from pinfold.daemon.rpc.wire.errors import (
    DaemonNotRunning,
    RpcConnectionClosed,
    RpcError,
    RpcProtocolError,
    WireError,
    error_code_of,
    is_valid_code,
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
)
from pinfold.daemon.rpc.wire.codec import (
    Body,
    Bulk,
    decode_client_message,
    decode_server_message,
    encode,
    encode_bytes,
    unpack_body,
)
from pinfold.daemon.rpc.wire.frames import (
    BULK_PIECE_BYTES,
    FrameDecoder,
    bulk_read_size,
    iter_bodies,
)
from pinfold.daemon.rpc.wire.flow import (
    FlowControlError,
    RecvWindow,
    SendCredit,
)

__all__ = [
    "BULK_PIECE_BYTES",
    "Body",
    "Bulk",
    "CONNECTION_ERROR_CODES",
    "Cancel",
    "ClientMessage",
    "Credit",
    "DEFAULT_WINDOW_BYTES",
    "DaemonNotRunning",
    "Data",
    "End",
    "ErrorReply",
    "FlowControlError",
    "FrameDecoder",
    "Hello",
    "Item",
    "MAX_CHUNK_BYTES",
    "MAX_CONTAINERS_PER_FRAME",
    "MAX_ERROR_MESSAGE_CHARS",
    "MAX_FRAME_BYTES",
    "MAX_REQUEST_ID",
    "MAX_WINDOW_BYTES",
    "MIN_WINDOW_BYTES",
    "PROTOCOL",
    "Progress",
    "RecvWindow",
    "Request",
    "Result",
    "RpcConnectionClosed",
    "RpcError",
    "RpcProtocolError",
    "SUPPORTED_VERSIONS",
    "SendCredit",
    "ServerMessage",
    "VERSION",
    "Welcome",
    "WireError",
    "bulk_read_size",
    "decode_client_message",
    "decode_server_message",
    "encode",
    "encode_bytes",
    "error_code_of",
    "is_valid_code",
    "iter_bodies",
    "unpack_body",
]
