"""The RPC server: the ``pinfold-rpc`` protocol (``rpcwire``) on a Unix socket, in trio.

One ``RpcServer`` owns the socket path. Each connection runs three kinds of
tasks in its own nursery: one reader (decodes frames, files upload chunks and
credit into per-request state; it never waits on a handler or on the socket's
write side, so one slow request cannot stall the others), one writer (the only
task writing to the socket; gathers queued frames into ``sendmsg`` calls) and
one task per request running its handler. Memory per connection is bounded by
the flow-control windows (``rpcwire``, "Flow control").

Handlers::

    async def add(call: Call) -> dict:
        total = 0
        async for chunk in call.upload():      # bytes, backpressured
            total += len(chunk)
            await call.send({"bytes": total})  # a progress item, backpressured
        return {"bytes": total}                # the final result

    server = RpcServer(path, {"add": add}, daemon_version="0.1.0")
    await nursery.start(server.run)

Access: the socket file is mode 0660 (owner and group), and every accepted
connection's peer credentials (``SO_PEERCRED``, ``SO_PEERGROUPS``) are checked
as well: root, the daemon's own user and members of the socket's group (the
daemon's group, or ``rpc.allowed_group``) are served; anyone else gets a
``permission_denied`` error and is closed, even if the file's permissions were
widened by hand.

A handler's exception becomes an error reply: ``exc.code`` if it has a valid
snake_case ``code`` attribute (``blockstore.errors`` classes, ``RpcError``),
otherwise ``internal`` (logged with its traceback). A handler whose request
is cancelled by the client, or whose connection closes, is cancelled.
"""

from __future__ import annotations

import errno
import fcntl
import grp
import logging
import math
import os
import socket
import stat
import struct
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
from pinfold.replication.errors import describe

from pinfold.daemon.rpc.wire import (
    DEFAULT_WINDOW_BYTES,
    MAX_WINDOW_BYTES,
    MIN_WINDOW_BYTES,
    Body,
    Cancel,
    Credit,
    Data,
    End,
    ErrorReply,
    FrameDecoder,
    Hello,
    Item,
    RecvWindow,
    Request,
    Result,
    SendCredit,
    Welcome,
    WireError,
    bulk_read_size,
    decode_client_message,
    encode,
    error_code_of,
)


#: File descriptors a connection may hold passed and not yet taken by a handler.
MAX_PASSED_FDS = 4
_FD_CMSG_SPACE = socket.CMSG_SPACE(MAX_PASSED_FDS * 4)

log = logging.getLogger("pinfold.daemon.rpc")

Handler = Callable[["Call"], Awaitable[Any]]
"""A method handler: takes the ``Call``, returns the final result (any msgpack value)."""

RequestDone = Callable[[str, str, float], None]
"""``on_request_done(method, outcome, seconds)``: outcome is ``ok`` or the error code."""

UNKNOWN_METHOD_LABEL = "(unknown)"
"""The ``method`` passed to ``on_request_done`` for unknown methods (keeps labels bounded)."""

_IOV_MAX = 1024
_WRITE_BATCH_BYTES = 8 << 20
_SOCKET_BUFFER_BYTES = 4 << 20


class RpcServerError(Exception):
    """The server cannot start on its socket path.

    Attributes:
        code: ``already_running``, ``socket_path_invalid`` or ``socket_bind_failed``.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True, kw_only=True)
class RpcLimits:
    """Bounds on what clients may make the server hold.

    Memory a connection can pin is at most about ``max_requests_per_connection
    * window_bytes`` of upload data plus the same of queued replies (reply
    credit is the client's window, at most ``rpcwire.MAX_WINDOW_BYTES``).

    Attributes:
        max_connections: concurrent connections; more are answered
            ``too_many_connections`` and closed.
        max_requests_per_connection: requests in flight on one connection;
            more are answered ``too_many_requests``.
        window_bytes: upload window per request, bytes (``rpcwire`` limits).
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


class Call:
    """One request as its handler sees it.

    Attributes:
        method: the method name.
        params: the request's parameters (a dict with str keys, as sent).
        request_id: the client's id for the request (unique on its connection).
        has_upload: True if the client streams upload data with the request.
    """

    __slots__ = ("_req", "_upload_taken", "has_upload", "method", "params", "request_id")

    def __init__(self, req: _RequestState) -> None:
        self.method = req.method
        self.params = req.params
        self.request_id = req.id
        self.has_upload = req.upload_open
        self._req = req
        self._upload_taken = False

    def take_fd(self) -> int | None:
        """The oldest file descriptor the client passed on this connection (SCM_RIGHTS)
        and not yet taken, or None. The caller owns it and must close it."""
        fds = self._req.conn.fds
        return fds.popleft() if fds else None

    def upload(self) -> _Upload:
        """The upload stream: ``async for chunk in call.upload()`` yields bytes chunks.

        Each chunk holds 1..1 MiB bytes, in the order sent. Taking a chunk
        returns its credit to the client, so at most the upload window is
        buffered. Empty if the request has no upload. Can be iterated once.
        Cancellation while waiting leaves the stream consistent.

        Raises:
            RuntimeError: ``upload()`` was called twice.
        """
        if self._upload_taken:
            raise RuntimeError("call.upload() can be iterated only once")
        self._upload_taken = True
        return _Upload(self._req)

    async def send(self, item: Any) -> None:
        """Stream one reply item to the client, waiting for its credit.

        Bytes are sent as msgpack bin without a copy, as are memoryview slices
        of bytes (``memoryview(data)[i:j]``); bytearray and other memoryviews
        are copied first, so the caller may reuse them once this returns.

        Args:
            item: any msgpack-serializable value; its frame is at most
                ``rpcwire.MAX_FRAME_BYTES`` (a 1 MiB bytes item fits).

        Raises:
            ValueError: the item's frame would exceed the frame limit.
            TypeError: the item is not msgpack-serializable.
        """
        if isinstance(item, bytearray) or (
                isinstance(item, memoryview) and not isinstance(item.obj, bytes)):
            item = bytes(item)  # mutable (or borrowed) memory: copy before queueing
        req = self._req
        bufs, cost = encode(Item(id=req.id, item=item))
        await trio.lowlevel.checkpoint()
        while not req.credit.can_send(cost):
            await req.credit_lot.park()
        req.credit.spend(cost)
        req.conn.enqueue(bufs, cost)


class _Upload:
    __slots__ = ("_req",)

    def __init__(self, req: _RequestState) -> None:
        self._req = req

    def __aiter__(self) -> _Upload:
        return self

    async def __anext__(self) -> bytes:
        req = self._req
        await trio.lowlevel.checkpoint()
        while not req.chunks:
            if not req.upload_open:
                raise StopAsyncIteration
            await req.upload_lot.park()
        chunk, cost = req.chunks.popleft()
        req.conn.upload_taken(cost)
        grant = req.recv.on_consume(cost)
        if grant:
            req.conn.enqueue_control(Credit(id=req.id, nbytes=grant))
        return chunk


class _RequestState:
    __slots__ = (
        "chunks",
        "conn",
        "credit",
        "credit_lot",
        "id",
        "method",
        "params",
        "recv",
        "scope",
        "upload_lot",
        "upload_open",
    )

    def __init__(self, conn: _Connection, msg: Request, upload_window: int,
                 reply_window: int) -> None:
        self.id = msg.id
        self.method = msg.method
        self.params = msg.params
        self.conn = conn
        self.scope = trio.CancelScope()
        self.upload_open = msg.upload
        self.chunks: deque[tuple[bytes, int]] = deque()
        self.recv = RecvWindow(window=upload_window)
        self.upload_lot = trio.lowlevel.ParkingLot()
        self.credit = SendCredit(window=reply_window)
        self.credit_lot = trio.lowlevel.ParkingLot()


class _Connection:
    """One client connection: reader, writer and request tasks."""

    def __init__(self, server: RpcServer, sock: trio.socket.SocketType) -> None:
        self.server = server
        self.limits = server.limits
        self.sock = sock
        self.decoder = FrameDecoder()
        self.send_channel, self.recv_channel = trio.open_memory_channel[
            tuple[list[Any], int, bool]](math.inf)
        self.queued_bytes = 0
        self.queued_control = 0
        self.active: dict[int, _RequestState] = {}
        self.max_id = 0
        self.reply_window = 0
        self.greeted = False
        self.handshake_scope = trio.CancelScope()
        self.outer_scope = trio.CancelScope()
        self.handlers: trio.Nursery | None = None
        self.pending: list[Any] = []  # buffers the writer has taken but not yet fully sent
        # File descriptors the client passed (SCM_RIGHTS), oldest first; a handler
        # takes one with ``Call.take_fd`` (e.g. ``cat`` writing straight to the
        # client's stdout). Closed when the connection ends.
        self.fds: deque[int] = deque()

    # ----------------------------------------------------------------- lifecycle

    async def serve(self) -> None:
        with self.outer_scope:
            async with trio.open_nursery() as outer:
                outer.start_soon(self._writer)
                error: WireError | None = None
                async with trio.open_nursery() as handlers:
                    self.handlers = handlers
                    try:
                        await self._read_loop()
                    except WireError as exc:
                        error = exc
                    handlers.cancel_scope.cancel()
                if error is not None:
                    if error.code == "protocol_error" or error.code == "frame_too_large":
                        self.server._protocol_errors += 1
                    log.info("RPC connection closed: %s: %s", error.code, error)
                    self.enqueue(*encode(ErrorReply(id=None, code=error.code,
                                                    message=str(error))))
                self.send_channel.close()
                self.close_passed_fds()
                # The writer flushes what is queued, within the flush timeout.
                self.outer_scope.deadline = trio.current_time() + self.limits.close_flush_timeout_s

    async def _read_loop(self) -> None:
        self.handshake_scope.deadline = trio.current_time() + self.limits.handshake_timeout_s
        with self.handshake_scope:
            decoder = self.decoder
            sock = self.sock
            server = self.server
            while True:
                try:
                    if want := decoder.bulk_wanted():
                        data = await sock.recv(bulk_read_size(sock.fileno(), want))
                        n = len(data)
                        if n:
                            decoder.add_bulk(data)
                    else:
                        n, ancdata, _flags, _addr = await sock.recvmsg_into(
                            [decoder.get_buffer()], _FD_CMSG_SPACE)
                        if ancdata:
                            self._take_passed_fds(ancdata)
                        decoder.commit(n)
                except OSError:
                    return
                if n == 0:
                    return
                server._bytes_in += n
                while (body := decoder.next_body()) is not None:
                    self._on_body(body)
        if self.handshake_scope.cancelled_caught:
            raise WireError("handshake_timeout",
                            f"no hello within {self.limits.handshake_timeout_s:g} seconds")

    def _take_passed_fds(self, ancdata: list[tuple[int, int, bytes]]) -> None:
        """Keep file descriptors passed with SCM_RIGHTS, at most ``MAX_PASSED_FDS``."""
        for level, kind, data in ancdata:
            if level != socket.SOL_SOCKET or kind != socket.SCM_RIGHTS:
                continue
            fds = [int(fd) for fd in memoryview(data)[: len(data) - len(data) % 4].cast("i")]
            for fd in fds:
                if len(self.fds) >= MAX_PASSED_FDS:
                    os.close(fd)
                    self.close_passed_fds()
                    raise WireError("protocol_error",
                                    f"more than {MAX_PASSED_FDS} file descriptors passed "
                                    "and not used")
                self.fds.append(fd)

    def close_passed_fds(self) -> None:
        while self.fds:
            try:
                os.close(self.fds.popleft())
            except OSError:
                pass

    # ----------------------------------------------------------------- reading

    def _on_body(self, body: Body) -> None:
        msg = decode_client_message(body)
        if not self.greeted:
            if not isinstance(msg, Hello):
                raise WireError("protocol_error", "the first frame must be hello")
            self.greeted = True
            self.reply_window = msg.window
            self.handshake_scope.deadline = math.inf
            self.enqueue(*encode(Welcome(daemon_version=self.server.daemon_version,
                                         window=self.limits.window_bytes)))
            return
        if isinstance(msg, Data):
            req = self._lookup(msg.id)
            if req is None:
                return
            if not req.upload_open:
                raise WireError("protocol_error",
                                f"data for request {msg.id}, which has no open upload")
            cost = body.nbytes
            req.recv.on_receive(cost)
            req.chunks.append((msg.data, cost))
            self.server._upload_received(req.recv.peak_buffered, cost)
            req.upload_lot.unpark_all()
        elif isinstance(msg, Credit):
            req = self._lookup(msg.id)
            if req is not None:
                req.credit.grant(msg.nbytes)
                req.credit_lot.unpark_all()
        elif isinstance(msg, Request):
            self._on_request(msg)
        elif isinstance(msg, End):
            req = self._lookup(msg.id)
            if req is None:
                return
            if not req.upload_open:
                raise WireError("protocol_error",
                                f"end for request {msg.id}, which has no open upload")
            req.upload_open = False
            req.upload_lot.unpark_all()
        elif isinstance(msg, Cancel):
            req = self._lookup(msg.id)
            if req is not None:
                req.scope.cancel()
        else:
            raise WireError("protocol_error", "hello sent twice")

    def _lookup(self, rid: int) -> _RequestState | None:
        req = self.active.get(rid)
        if req is None and rid > self.max_id:
            raise WireError("protocol_error", f"frame for request {rid}, which was never opened")
        return req  # None: the request finished; late frames are dropped

    def _on_request(self, msg: Request) -> None:
        server = self.server
        if msg.id <= self.max_id:
            raise WireError("protocol_error",
                            f"request id {msg.id} reused or not increasing (last was {self.max_id})")
        self.max_id = msg.id
        server._requests_total += 1
        handler = server.handlers.get(msg.method)
        if handler is None:
            self.enqueue_control(ErrorReply(id=msg.id, code="unknown_method",
                                            message=f"unknown method {msg.method[:100]!r}"))
            server._request_done(UNKNOWN_METHOD_LABEL, "unknown_method", 0.0)
            return
        if len(self.active) >= self.limits.max_requests_per_connection:
            self.enqueue_control(ErrorReply(
                id=msg.id, code="too_many_requests",
                message=f"more than {self.limits.max_requests_per_connection} concurrent "
                        "requests on one connection"))
            server._request_done(msg.method, "too_many_requests", 0.0)
            return
        req = _RequestState(self, msg, self.limits.window_bytes, self.reply_window)
        self.active[msg.id] = req
        assert self.handlers is not None
        self.handlers.start_soon(self._run_request, req, handler, name=f"rpc {msg.method}")

    # ----------------------------------------------------------------- requests

    async def _run_request(self, req: _RequestState, handler: Handler) -> None:
        server = self.server
        start = trio.current_time()
        outcome = "cancelled"
        try:
            final: Result | ErrorReply | None = None
            with req.scope:
                try:
                    result = await handler(Call(req))
                except Exception as exc:  # noqa: BLE001 - every handler failure becomes a reply
                    final = _error_reply(req, exc)
                else:
                    final = Result(id=req.id, result=result)
            if final is None:
                final = ErrorReply(id=req.id, code="cancelled",
                                   message=f"{req.method} cancelled by the client")
            try:
                bufs, n = encode(final)
            except (TypeError, ValueError) as exc:
                log.error("RPC %s: cannot send its reply: %s", req.method, exc)
                final = ErrorReply(id=req.id, code="internal",
                                   message=f"the {req.method} reply cannot be sent: {exc}")
                bufs, n = encode(final)
            outcome = "ok" if isinstance(final, Result) else final.code
            self.enqueue(bufs, n)
        finally:
            del self.active[req.id]
            if req.chunks:
                self.server._upload_dropped(sum(cost for _, cost in req.chunks))
                req.chunks.clear()
            server._request_done(req.method, outcome, trio.current_time() - start)

    # ----------------------------------------------------------------- writing

    def enqueue(self, bufs: list[Any], nbytes: int, control: bool = False) -> None:
        """Queue a frame for the writer (never blocks; callers bound the volume)."""
        self.queued_bytes += nbytes
        self.server._send_queue_peak = max(self.server._send_queue_peak, self.queued_bytes)
        if control:
            self.queued_control += 1
            if self.queued_control > self.limits.max_pending_control_frames:
                raise WireError("protocol_error",
                                "client does not read its replies "
                                f"({self.queued_control} control frames pending)")
        self.send_channel.send_nowait((bufs, nbytes, control))

    def enqueue_control(self, msg: Credit | ErrorReply) -> None:
        self.enqueue(*encode(msg), control=True)

    def upload_taken(self, cost: int) -> None:
        self.server._upload_buffered -= cost

    async def _writer(self) -> None:
        try:
            try:
                while True:
                    try:
                        first = await self.recv_channel.receive()
                    except trio.EndOfChannel:
                        return
                    self._take(first)
                    await self._write_pending()
            except trio.Cancelled:
                # Best effort: deliver what handlers already queued (e.g. the reply of a
                # "shutdown" request) before the connection goes away.
                with trio.CancelScope(shield=True) as flush:
                    flush.deadline = trio.current_time() + self.limits.close_flush_timeout_s
                    while True:
                        await self._write_pending()
                        try:
                            self._take(self.recv_channel.receive_nowait())
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
                raise
        except OSError:  # the client went away; end the connection
            self.outer_scope.cancel()

    def _take(self, first: tuple[list[Any], int, bool]) -> None:
        """Move queued frames into ``pending``: the first plus whatever is ready, up to a batch."""
        batch = [first]
        total = first[1]
        while total < _WRITE_BATCH_BYTES and len(self.pending) + 2 * len(batch) < _IOV_MAX:
            try:
                nxt = self.recv_channel.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            batch.append(nxt)
            total += nxt[1]
        for bufs, nbytes, control in batch:
            self.pending.extend(bufs)
            self.queued_bytes -= nbytes
            if control:
                self.queued_control -= 1

    async def _write_pending(self) -> None:
        pending = self.pending
        server = self.server
        while pending:
            n = await self.sock.sendmsg(pending[:_IOV_MAX])
            server._bytes_out += n
            i = 0
            while i < len(pending) and n >= len(pending[i]):
                n -= len(pending[i])
                i += 1
            del pending[:i]
            if n:
                pending[0] = memoryview(pending[0])[n:]


def _leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) groups, in order; ``[exc]`` for a plain one."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def _main_error(exc: BaseException) -> BaseException:
    """The one error a reply reports for ``exc``.

    A handler's nursery may fail with several errors at once (two write
    batches in flight both hit a full store); the first that has an error
    code of its own is the one the user can act on, else the first of all.
    """
    leaves = [e for e in _leaves(exc) if not isinstance(e, trio.Cancelled)] or [exc]
    return next((e for e in leaves if error_code_of(e) != "internal"), leaves[0])


#: Error codes an operator should see in the daemon's log, not only the client.
_LOGGED_CODES = frozenset({"store_full"})


def _error_reply(req: _RequestState, exc: Exception) -> ErrorReply:
    """The reply for a handler's exception: the code and message of the error the
    user can act on (``_main_error``), never an exception group or a class name.
    An uncoded error is ``internal``, with every error's message, and is logged
    with its traceback."""
    leaf = _main_error(exc)
    code = error_code_of(leaf)
    if code == "internal":
        log.error("RPC %s failed", req.method, exc_info=exc)
        message = f"internal error in {req.method}: {describe(exc)}"
    else:
        message = describe(leaf)
        if code in _LOGGED_CODES:
            log.warning("RPC %s failed: %s", req.method, message)
    return ErrorReply(id=req.id, code=code, message=message)


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


# --------------------------------------------------------------------------- peer credentials

#: ``SO_PEERGROUPS`` (Linux >= 4.13): the peer's supplementary groups at connect time.
_SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)
_UCRED = struct.Struct("3i")


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerCredentials:
    """Who is at the other end of a Unix socket (as the kernel saw it at ``connect``).

    Attributes:
        pid: the peer's process ID.
        uid: its effective user ID.
        gid: its effective group ID.
        groups: ``gid`` plus its supplementary group IDs.
    """

    pid: int
    uid: int
    gid: int
    groups: frozenset[int]


def peer_credentials(sock: socket.socket | trio.socket.SocketType) -> PeerCredentials:
    """The credentials of a connected Unix-socket peer (``SO_PEERCRED``, ``SO_PEERGROUPS``).

    Supplementary groups come from ``SO_PEERGROUPS``; on kernels without it,
    from ``/proc/<pid>/status`` (the peer's groups now, not at connect time).

    Raises:
        OSError: the socket has no peer credentials (not a connected Unix socket).
    """
    pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                  _UCRED.size))
    groups = {gid}
    size = 64 * 4
    while True:
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, _SO_PEERGROUPS, size)
            groups.update(struct.unpack(f"{len(raw) // 4}I", raw[: len(raw) // 4 * 4]))
            break
        except OSError as exc:
            if exc.errno == errno.ERANGE and size < 65536 * 4:
                size *= 4
                continue
            groups.update(_proc_groups(pid))
            break
    return PeerCredentials(pid=pid, uid=uid, gid=gid, groups=frozenset(groups))


def _proc_groups(pid: int) -> set[int]:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return {int(g) for g in line.split()[1:]}
    except OSError:
        pass
    return set()


def resolve_group(name: str) -> int | None:
    """The gid of ``rpc.allowed_group`` (a group name or a numeric gid); None for "".

    Raises:
        ConfigError: no such group.
    """
    from pinfold.config import ConfigError

    name = name.strip()
    if not name:
        return None
    try:
        return int(name) if name.isdigit() else grp.getgrnam(name).gr_gid
    except KeyError:
        raise ConfigError("rpc.allowed_group", f"no such group {name!r}") from None


# --------------------------------------------------------------------------- socket file


def _lock(path: Path, mode: int) -> int:
    lock_path = f"{path}.lock"
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, mode)
    except OSError as exc:
        raise RpcServerError("socket_bind_failed", f"cannot open {lock_path}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RpcServerError("already_running",
                             f"another daemon is already running on {path} (it holds {lock_path})"
                             ) from None
    return fd


def _clear_stale(path: Path) -> None:
    """Remove a stale socket file at ``path``; refuse if a server answers on it."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise RpcServerError("socket_path_invalid",
                             f"refusing to replace {path}: it exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(os.fspath(path))
    except ConnectionRefusedError:
        log.warning("replacing stale RPC socket %s (nothing listens on it)", path)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return
    except FileNotFoundError:
        return
    except (TimeoutError, BlockingIOError):
        pass  # a listener exists but its backlog is full: it is running
    except OSError as exc:
        raise RpcServerError("socket_bind_failed",
                             f"cannot probe existing socket {path}: {exc.strerror}") from exc
    finally:
        probe.close()
    raise RpcServerError("already_running", f"another daemon is already running on {path}")


def _bind(path: Path, mode: int, group: int | None = None) -> socket.socket:
    raw = os.fsencode(path)
    if len(raw) > 107:
        raise RpcServerError("socket_path_invalid",
                             f"socket path is {len(raw)} bytes, over the 107-byte AF_UNIX "
                             f"limit: {path}")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # bind() creates the file as 0o777 & ~umask: narrow the umask around it so the
        # socket never exists with wider permissions than ``mode``.
        old_umask = os.umask(0o777 & ~mode)
        try:
            sock.bind(raw)
        finally:
            os.umask(old_umask)
        if group is not None and os.stat(path).st_gid != group:
            os.chown(path, -1, group)
        os.chmod(path, mode)
        sock.listen(socket.SOMAXCONN)  # a burst of clients beyond 128 must not get EAGAIN
    except OSError as exc:
        sock.close()
        raise RpcServerError("socket_bind_failed",
                             f"cannot listen on {path}: {exc.strerror or exc}") from exc
    return sock


def _unlink_if_ours(path: Path, identity: os.stat_result) -> None:
    try:
        st = os.lstat(path)
        if (st.st_dev, st.st_ino) == (identity.st_dev, identity.st_ino):
            os.unlink(path)
    except FileNotFoundError:
        pass
