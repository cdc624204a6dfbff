"""What both RPC clients share: the chunking of uploads, argument checks, the
handshake's reply check and the error for a failed connect.

Imports ``rpc.wire``; no I/O."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from pinfold.daemon.rpc.wire import (
    DaemonNotRunning,
    ErrorReply,
    MAX_CHUNK_BYTES,
    MAX_WINDOW_BYTES,
    MIN_WINDOW_BYTES,
    RpcError,
    RpcProtocolError,
    ServerMessage,
    Welcome,
)

Chunk = bytes | bytearray | memoryview
_SOCKET_BUFFER_BYTES = 4 << 20
_IOV_MAX = 1024
_ABANDON_TIMEOUT_S = 5.0


def _pieces(chunk: Chunk) -> Iterator[memoryview]:
    """Split an upload chunk into views of at most MAX_CHUNK_BYTES (no copy; empty -> none).

    Raises:
        TypeError: ``chunk`` is not bytes-like (raised here, not when iterated).
    """
    if not isinstance(chunk, bytes | bytearray | memoryview):
        raise TypeError(f"upload chunks must be bytes, got {type(chunk).__name__}")
    view = memoryview(chunk)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return (view[start:start + MAX_CHUNK_BYTES] for start in range(0, view.nbytes, MAX_CHUNK_BYTES))


def _check_window(window_bytes: int) -> None:
    if not MIN_WINDOW_BYTES <= window_bytes <= MAX_WINDOW_BYTES:
        raise ValueError(f"window_bytes must be in {MIN_WINDOW_BYTES}..{MAX_WINDOW_BYTES}, "
                         f"got {window_bytes}")


def _check_params(params: Mapping[str, Any] | None) -> dict[str, Any]:
    if params is None:
        return {}
    if not isinstance(params, Mapping) or not all(isinstance(k, str) for k in params):
        raise TypeError("params must be a mapping with str keys")
    return dict(params)


def _handshake_reply(msg: ServerMessage, path: str) -> Welcome:
    if isinstance(msg, ErrorReply) and msg.id is None:
        raise RpcError(msg.code, msg.message)
    if not isinstance(msg, Welcome):
        raise RpcProtocolError("protocol_error",
                               f"{path} answered the handshake with {type(msg).__name__}")
    return msg


def _connect_error(path: str, exc: OSError) -> RpcError:
    if isinstance(exc, FileNotFoundError):
        return DaemonNotRunning(path, "socket missing")
    if isinstance(exc, ConnectionRefusedError):
        return DaemonNotRunning(path, "connection refused")
    if isinstance(exc, PermissionError):
        return RpcError("permission_denied",
                        f"permission denied connecting to {path} (the socket is mode 0660: "
                        "run as the daemon's user or a member of its group)")
    if isinstance(exc, TimeoutError):
        return RpcError("timeout", f"connecting to {path} timed out")
    return RpcError("connection_failed", f"cannot connect to {path}: {exc.strerror or exc}")


# =========================================================================== blocking
