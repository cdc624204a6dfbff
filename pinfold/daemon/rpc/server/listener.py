"""``RpcServer``: owns the socket path, accepts connections within
``RpcLimits``, checks each peer's credentials, starts a session for each,
and counts ``RpcServerStats``.

Imports trio, ``session``, ``credentials`` and ``socketfile``."""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections.abc import Mapping
from pathlib import Path

import trio

from pinfold.daemon.rpc.server.credentials import peer_credentials
from pinfold.daemon.rpc.server.limits import RpcLimits, RpcServerStats
from pinfold.daemon.rpc.server.requests import Handler, RequestDone
from pinfold.daemon.rpc.server.session import _Connection
from pinfold.daemon.rpc.server.socketfile import _bind, _clear_stale, _lock, _unlink_if_ours
from pinfold.daemon.rpc.wire import (
    ErrorReply,
    encode,
)

log = logging.getLogger("pinfold.daemon.rpc")

_SOCKET_BUFFER_BYTES = 4 << 20


class RpcServer:
    """Serves ``handlers`` on a Unix socket.

    Args:
        socket_path: where to listen; at most 107 bytes (the AF_UNIX limit).
        handlers: method name -> handler (copied; later changes are not seen).
        daemon_version: sent to clients in ``welcome``.
        mode: permissions of the socket file (default 0o660: owner and group).
        group: gid the socket file is given and whose members may connect
            (``resolve_group``); None = the daemon's effective gid. Root and the
            daemon's own user may always connect; other peers are refused with
            ``permission_denied`` after a ``SO_PEERCRED`` check.
        limits: connection, request and buffer bounds.
        on_request_done: called as ``(method, outcome, seconds)`` when a
            request ends; outcome is ``ok`` or the error code (``cancelled``
            when the client cancelled or went away). Unknown methods are
            reported as ``UNKNOWN_METHOD_LABEL``. Exceptions it raises are
            logged.

    Raises:
        ValueError: a handler name is not a non-empty str or a handler is not callable.
    """

    def __init__(self, socket_path: str | os.PathLike[str], handlers: Mapping[str, Handler], *,
                 daemon_version: str, mode: int = 0o660, group: int | None = None,
                 limits: RpcLimits = RpcLimits(),
                 on_request_done: RequestDone | None = None) -> None:
        self.socket_path = Path(socket_path)
        for name, fn in handlers.items():
            if not isinstance(name, str) or not name or not callable(fn):
                raise ValueError(f"bad RPC handler entry {name!r}: {fn!r}")
        if not 0 <= mode <= 0o777:
            raise ValueError(f"mode must be permission bits (0..0o777), got {mode:#o}")
        self.handlers: dict[str, Handler] = dict(handlers)
        self.daemon_version = daemon_version
        self.mode = mode
        self.group = os.getegid() if group is None else group
        self.limits = limits
        self.on_request_done = on_request_done
        self._connections: set[_Connection] = set()
        self._connections_total = 0
        self._connections_refused = 0
        self._refused_credentials = 0
        self._requests_total = 0
        self._protocol_errors = 0
        self._bytes_in = 0
        self._bytes_out = 0
        self._upload_buffered = 0
        self._upload_peak = 0
        self._send_queue_peak = 0
        self.stopping = False

    def statistics(self) -> RpcServerStats:
        """A snapshot of the server's counters."""
        return RpcServerStats(
            connections=len(self._connections),
            connections_total=self._connections_total,
            connections_refused=self._connections_refused,
            connections_refused_credentials=self._refused_credentials,
            requests_in_flight=sum(len(c.active) for c in self._connections),
            requests_total=self._requests_total,
            protocol_errors=self._protocol_errors,
            bytes_in=self._bytes_in,
            bytes_out=self._bytes_out,
            upload_buffered_bytes=self._upload_buffered,
            upload_buffered_peak_bytes=self._upload_peak,
            send_queue_peak_bytes=self._send_queue_peak,
        )

    def begin_stop(self) -> None:
        """The daemon is stopping: requests cancelled from now on (by the daemon,
        not by their client) reply ``shutting_down`` (CLI exit 7) before their
        connection closes, within ``limits.close_flush_timeout_s``."""
        self.stopping = True

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen and serve until cancelled; ``task_status.started()`` once accepting.

        A stale socket file (nothing answers on it) is replaced; the socket is
        created with ``mode`` and no moment of wider permissions, and removed
        when ``run`` ends. A lock file ``<socket_path>.lock`` (flock) makes two
        servers starting at once on one path safe; it is left in place.

        On cancellation, frames already queued for clients are flushed for up
        to ``limits.close_flush_timeout_s``, then connections are closed.

        Raises:
            RpcServerError: ``already_running`` (another server answers on the
                path, or holds the lock), ``socket_path_invalid`` (the path is
                too long, or exists and is not a socket) or
                ``socket_bind_failed`` (the OS refused, e.g. permissions).
        """
        lock_fd = _lock(self.socket_path, self.mode)
        try:
            await trio.to_thread.run_sync(_clear_stale, self.socket_path)
            std_sock = _bind(self.socket_path, self.mode, self.group)
            identity = os.stat(self.socket_path)
            listener = trio.socket.from_stdlib_socket(std_sock)
            try:
                async with trio.open_nursery() as nursery:
                    task_status.started()
                    log.info("RPC listening on %s", self.socket_path)
                    await self._accept_loop(listener, nursery)
            finally:
                listener.close()
                _unlink_if_ours(self.socket_path, identity)
        finally:
            os.close(lock_fd)

    async def _accept_loop(self, listener: trio.socket.SocketType, nursery: trio.Nursery) -> None:
        while True:
            try:
                sock, _ = await listener.accept()
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.error("RPC accept failed (%s); pausing accepts", exc)
                    await trio.sleep(0.1)  # descriptors free up as connections end
                    continue
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EINTR):
                    continue
                raise
            self._connections_total += 1
            refusal = self._check_peer(sock)
            if refusal is not None:
                self._refused_credentials += 1
                log.warning("RPC connection refused: %s", refusal)
                nursery.start_soon(self._refuse, sock, "permission_denied", refusal)
                continue
            for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
                sock.setsockopt(socket.SOL_SOCKET, opt, _SOCKET_BUFFER_BYTES)
            if len(self._connections) >= self.limits.max_connections:
                self._connections_refused += 1
                nursery.start_soon(
                    self._refuse, sock, "too_many_connections",
                    f"the daemon serves at most {self.limits.max_connections} RPC connections")
            else:
                nursery.start_soon(self._serve, sock)

    async def _serve(self, sock: trio.socket.SocketType) -> None:
        conn = _Connection(self, sock)
        self._connections.add(conn)
        try:
            await conn.serve()
        except Exception:  # one connection's failure must not take the server down
            log.exception("RPC connection failed")
        finally:
            self._connections.discard(conn)
            self._upload_buffered -= sum(cost for r in conn.active.values() for _, cost in r.chunks)
            sock.close()

    def _check_peer(self, sock: trio.socket.SocketType) -> str | None:
        """None if the connecting process may use the daemon, else why not (for the reply)."""
        try:
            creds = peer_credentials(sock)
        except OSError as exc:  # not a Unix socket peer we can identify: refuse
            return f"cannot read the peer's credentials: {exc.strerror or exc}"
        if creds.uid in (0, os.geteuid()) or self.group in creds.groups:
            return None
        return (f"user {creds.uid} (pid {creds.pid}) is not allowed to use this daemon: only "
                f"root, user {os.geteuid()} and members of group {self.group} may connect")

    async def _refuse(self, sock: trio.socket.SocketType, code: str, message: str) -> None:
        frame = b"".join(encode(ErrorReply(id=None, code=code, message=message))[0])
        with sock, trio.move_on_after(self.limits.close_flush_timeout_s):
            try:
                await sock.send(frame)
            except OSError:
                pass  # the client is gone already; nothing to tell it

    def _request_done(self, method: str, outcome: str, seconds: float) -> None:
        if self.on_request_done is not None:
            try:
                self.on_request_done(method, outcome, seconds)
            except Exception:
                log.exception("on_request_done callback failed")

    def _upload_received(self, peak: int, cost: int) -> None:
        self._upload_buffered += cost
        self._upload_peak = max(self._upload_peak, peak)

    def _upload_dropped(self, nbytes: int) -> None:
        self._upload_buffered -= nbytes

