"""One client connection on the server: the reader task (frames in, upload
chunks and credit filed per request, passed file descriptors), the writer
task (the only one writing; gathers frames into ``sendmsg``) and one task
per request running its handler.

Imports trio, ``rpc.wire`` and ``requests``."""

from __future__ import annotations

import logging
import math
import os
import socket
from collections import deque
from collections.abc import Mapping
from typing import Any, Protocol

import trio

from pinfold.daemon.rpc.server.limits import RpcLimits
from pinfold.daemon.rpc.server.requests import (
    UNKNOWN_METHOD_LABEL,
    Call,
    Handler,
    _error_reply,
    _RequestState,
)
from pinfold.daemon.rpc.wire import (
    Body,
    Cancel,
    Credit,
    Data,
    End,
    ErrorReply,
    FrameDecoder,
    Hello,
    Request,
    Result,
    Welcome,
    WireError,
    bulk_read_size,
    decode_client_message,
    encode,
)



class ServerSide(Protocol):
    """What a session reads from its server (``RpcServer``) and the counters it updates."""

    limits: RpcLimits
    handlers: Mapping[str, Handler]
    daemon_version: str
    _requests_total: int
    _protocol_errors: int
    _bytes_in: int
    _bytes_out: int
    _upload_buffered: int
    _send_queue_peak: int
    stopping: bool

    def _request_done(self, method: str, outcome: str, seconds: float) -> None: ...

    def _upload_received(self, peak: int, cost: int) -> None: ...

    def _upload_dropped(self, nbytes: int) -> None: ...

log = logging.getLogger("pinfold.daemon.rpc")

#: File descriptors a connection may hold passed and not yet taken by a handler.
MAX_PASSED_FDS = 4
_FD_CMSG_SPACE = socket.CMSG_SPACE(MAX_PASSED_FDS * 4)

_IOV_MAX = 1024
_WRITE_BATCH_BYTES = 8 << 20


class _Connection:
    """One client connection: reader, writer and request tasks."""

    def __init__(self, server: ServerSide, sock: trio.socket.SocketType) -> None:
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
        except BaseException:  # Cancelled, bare or in a handler's nursery's group
            if server.stopping and not req.scope.cancel_called:
                # The daemon is stopping: say so (exit 7), rather than let the
                # client see only its connection close; the writer flushes it.
                outcome = "shutting_down"
                self.enqueue(*encode(ErrorReply(
                    id=req.id, code="shutting_down",
                    message=f"{req.method}: the daemon is stopping")))
            raise
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
                        except trio.WouldBlock:
                            if not self.active:
                                break
                            await trio.sleep(0.005)  # a request unwinding may queue its reply
                        except trio.EndOfChannel:
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

