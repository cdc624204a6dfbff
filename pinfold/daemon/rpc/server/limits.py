"""The server's bounds (``RpcLimits``, validated when built) and its counters
(``RpcServerStats``) as frozen records.

Imports ``rpc.wire``'s window sizes."""

from __future__ import annotations

from dataclasses import dataclass

from pinfold.daemon.rpc.wire import DEFAULT_WINDOW_BYTES, MAX_WINDOW_BYTES, MIN_WINDOW_BYTES


@dataclass(frozen=True, slots=True, kw_only=True)
class RpcLimits:
    """Bounds on what clients may make the server hold.

    Memory a connection can pin is at most about ``max_requests_per_connection
    * window_bytes`` of upload data plus the same of queued replies (reply
    credit is the client's window, at most ``rpc.wire.MAX_WINDOW_BYTES``).

    Attributes:
        max_connections: concurrent connections; more are answered
            ``too_many_connections`` and closed.
        max_requests_per_connection: requests in flight on one connection;
            more are answered ``too_many_requests``.
        window_bytes: upload window per request, bytes (``rpc.wire`` limits).
        handshake_timeout_s: seconds a new connection has to send ``hello``.
        max_pending_control_frames: replies the reader may queue for a client
            that does not read them (errors, credit) before the connection is
            closed as abusive.
        close_flush_timeout_s: seconds spent flushing queued frames when a
            connection ends or the server stops.
    """

    max_connections: int = 256
    max_requests_per_connection: int = 64
    window_bytes: int = DEFAULT_WINDOW_BYTES
    handshake_timeout_s: float = 10.0
    max_pending_control_frames: int = 1024
    close_flush_timeout_s: float = 1.0

    def __post_init__(self) -> None:
        if self.max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {self.max_connections}")
        if self.max_requests_per_connection < 1:
            raise ValueError("max_requests_per_connection must be >= 1, "
                             f"got {self.max_requests_per_connection}")
        if not MIN_WINDOW_BYTES <= self.window_bytes <= MAX_WINDOW_BYTES:
            raise ValueError(f"window_bytes must be in {MIN_WINDOW_BYTES}..{MAX_WINDOW_BYTES}, "
                             f"got {self.window_bytes}")
        if not self.handshake_timeout_s > 0 or not self.close_flush_timeout_s >= 0:
            raise ValueError("timeouts must be positive")
        if self.max_pending_control_frames < 1:
            raise ValueError("max_pending_control_frames must be >= 1")


@dataclass(frozen=True, slots=True, kw_only=True)
class RpcServerStats:
    """Counters for metrics (``pinfold/daemon/metrics.py``).

    Attributes:
        connections: connections open now.
        connections_total: connections accepted since start (refused ones included).
        connections_refused: connections refused for ``max_connections``.
        connections_refused_credentials: connections refused because the peer's
            user is neither root, the daemon's user nor in the socket's group.
        requests_in_flight: requests whose handler runs now.
        requests_total: requests received since start (rejected ones included).
        protocol_errors: connections closed for a protocol violation.
        bytes_in: bytes read from clients.
        bytes_out: bytes written to clients.
        upload_buffered_bytes: upload bytes received and not yet taken by handlers.
        upload_buffered_peak_bytes: the most upload bytes one request ever had buffered.
        send_queue_peak_bytes: the most reply bytes one connection ever had queued.
    """

    connections: int
    connections_total: int
    connections_refused: int
    connections_refused_credentials: int
    requests_in_flight: int
    requests_total: int
    protocol_errors: int
    bytes_in: int
    bytes_out: int
    upload_buffered_bytes: int
    upload_buffered_peak_bytes: int
    send_queue_peak_bytes: int
