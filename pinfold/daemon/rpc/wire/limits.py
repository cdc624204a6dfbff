"""The RPC protocol's name, version and numeric limits (frame, chunk, window,
request id sizes) and its connection-level error codes. Imports nothing of pinfold."""

from __future__ import annotations

import re
import struct

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

