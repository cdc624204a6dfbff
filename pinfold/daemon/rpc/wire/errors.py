"""The RPC errors: ``RpcError`` and its kinds (what a caller sees) and
``WireError`` (a frame broke the protocol), with the error-code checks.

Imports ``limits``."""

from __future__ import annotations

from pinfold.daemon.rpc.wire.limits import _CODE_RE


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

