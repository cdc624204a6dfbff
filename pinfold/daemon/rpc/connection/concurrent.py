"""``AsyncRpcConnection`` (``open_rpc_connection``): the trio RPC client that
runs many requests at once on one connection (tests, tools), with
``AsyncRpcStream`` for uploads and reply streams.

Imports trio, ``rpc.wire`` and ``common``."""

from __future__ import annotations

import os
import socket
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Any, Self

import trio

from pinfold.daemon.rpc.wire import (
    Cancel,
    Credit,
    DEFAULT_WINDOW_BYTES,
    Data,
    End,
    ErrorReply,
    FrameDecoder,
    Hello,
    Item,
    Progress,
    RecvWindow,
    Request,
    Result,
    RpcConnectionClosed,
    RpcError,
    RpcProtocolError,
    SendCredit,
    ServerMessage,
    Welcome,
    WireError,
    bulk_read_size,
    decode_server_message,
    encode,
)
from pinfold.daemon.rpc.connection.common import (
    Chunk,
    _ABANDON_TIMEOUT_S,
    _IOV_MAX,
    _check_params,
    _check_window,
    _connect_error,
    _handshake_reply,
    _pieces,
)

class _AsyncRequest:
    __slots__ = ("credit", "final", "id", "items", "lot", "recv", "unacked")

    def __init__(self, rid: int, reply_window: int, upload_window: int) -> None:
        self.id = rid
        self.items: deque[tuple[Any, int]] = deque()
        self.lot = trio.lowlevel.ParkingLot()
        self.recv = RecvWindow(window=reply_window)
        self.credit = SendCredit(window=upload_window)
        self.final: Result | ErrorReply | None = None


class AsyncRpcConnection:
    """A trio connection running many requests at once; make one with ``open_rpc_connection``.

    Safe to use from many tasks of one trio run. A reader task files each
    incoming frame under its request (never blocking on a consumer, since the
    daemon sends items only within the credit this side grants), and writes
    from all tasks are serialized by a lock.

    Attributes:
        daemon_version: the daemon's version string from the handshake.
        protocol_version: the protocol version spoken.
    """

    def __init__(self, sock: trio.socket.SocketType, path: str, window_bytes: int) -> None:
        self._sock = sock
        self._path = path
        self._window = window_bytes
        self._upload_window = 0
        self._decoder = FrameDecoder()
        self._write_lock = trio.Lock()
        self._requests: dict[int, _AsyncRequest] = {}
        self._abandoned: set[int] = set()  # ids left before their final reply
        self._next_id = 1
        self._broken: RpcError | None = None
        self._nursery: trio.Nursery | None = None
        self.daemon_version = ""
        self.protocol_version = 0

    async def call(self, method: str, params: Mapping[str, Any] | None = None, *,
                   upload: Iterable[Chunk] | AsyncIterable[Chunk] | None = None) -> Any:
        """Run one request; return its result (items are discarded). See ``RpcConnection.call``.

        Cancelling the calling task cancels the request on the daemon.

        Raises:
            RpcError: the daemon's error reply or a transport failure.
        """
        async with self.stream(method, params, upload=upload) as stream:
            async for _ in stream:
                pass
            return stream.result

    def stream(self, method: str, params: Mapping[str, Any] | None = None, *,
               upload: Iterable[Chunk] | AsyncIterable[Chunk] | None = None,
               on_progress: Callable[[dict[str, Any]], None] | None = None) -> AsyncRpcStream:
        """A request as an async context manager and async iterator of its items.

        ``async with conn.stream(m, p) as s: async for item in s: ...`` then
        ``s.result``. Leaving the block early cancels the request.
        ``on_progress(event)`` gets the progress events read meanwhile (asked
        for with ``progress: True`` in ``params``).
        """
        stream = AsyncRpcStream(self, method, _check_params(params), upload)
        stream.on_progress = on_progress
        return stream

    async def aclose(self) -> None:
        """Close the connection; unfinished requests fail with ``RpcConnectionClosed``."""
        self._fail(RpcConnectionClosed("the connection was closed by this client"))
        self._sock.close()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()
        await trio.lowlevel.checkpoint()

    # ------------------------------------------------------------------ internals

    def _fail(self, exc: RpcError) -> None:
        if self._broken is None:
            self._broken = exc
        for req in self._requests.values():
            req.lot.unpark_all()

    async def _send(self, msg: Any) -> None:
        bufs, _ = encode(msg)
        await self._send_bufs(bufs)

    async def _send_bufs(self, bufs: list[Any]) -> None:
        if self._broken is not None:
            raise self._broken
        async with self._write_lock:
            try:
                # A frame must go out whole even if the sending task is cancelled midway.
                with trio.CancelScope(shield=True):
                    while bufs:
                        n = await self._sock.sendmsg(bufs[:_IOV_MAX])
                        i = 0
                        while i < len(bufs) and n >= len(bufs[i]):
                            n -= len(bufs[i])
                            i += 1
                        bufs = bufs[i:]
                        if n:
                            bufs[0] = memoryview(bufs[0])[n:]
            except OSError as exc:
                self._fail(RpcConnectionClosed(f"the daemon closed the connection ({exc})"))
                raise self._broken from None  # type: ignore[misc]

    async def _read_message(self) -> tuple[ServerMessage, int] | None:
        decoder = self._decoder
        while True:
            try:
                body = decoder.next_body()
                if body is not None:
                    return decode_server_message(body), body.nbytes
            except WireError as exc:
                raise RpcProtocolError(exc.code, f"bad frame from the daemon: {exc}") from exc
            try:
                if want := decoder.bulk_wanted():
                    data = await self._sock.recv(bulk_read_size(self._sock.fileno(), want))
                    n = len(data)
                    if n:
                        decoder.add_bulk(data)
                else:
                    n = await self._sock.recv_into(decoder.get_buffer())
                    decoder.commit(n)
            except OSError:
                return None
            if n == 0:
                return None

    async def _reader(self) -> None:
        try:
            while True:
                got = await self._read_message()
                if got is None:
                    self._fail(RpcConnectionClosed("the daemon closed the connection"))
                    return
                msg, cost = got
                if isinstance(msg, ErrorReply) and msg.id is None:
                    self._fail(RpcError(msg.code, msg.message))
                    return
                rid = getattr(msg, "id", 0)
                if rid in self._abandoned:
                    if isinstance(msg, Result | ErrorReply):
                        self._abandoned.discard(rid)
                    continue
                req = self._requests.get(rid)
                if req is None or isinstance(msg, Welcome):
                    raise RpcProtocolError("protocol_error",
                                           f"unexpected {type(msg).__name__} from the daemon")
                if isinstance(msg, Item | Progress):
                    try:
                        req.recv.on_receive(cost)
                    except WireError as exc:
                        raise RpcProtocolError(exc.code, str(exc)) from exc
                    # A progress event is filed as the message itself, told apart when read.
                    req.items.append((msg.item if isinstance(msg, Item) else msg, cost))
                elif isinstance(msg, Credit):
                    try:
                        req.credit.grant(msg.nbytes)
                    except WireError as exc:
                        raise RpcProtocolError(exc.code, str(exc)) from exc
                else:
                    req.final = msg  # type: ignore[assignment]
                req.lot.unpark_all()
        except RpcProtocolError as exc:
            self._fail(exc)
            self._sock.close()


class AsyncRpcStream:
    """One request on an ``AsyncRpcConnection``; see ``AsyncRpcConnection.stream``.

    Attributes:
        request_id: the request's id (0 until the block is entered).
        done: True once the final reply arrived.
    """

    def __init__(self, conn: AsyncRpcConnection, method: str, params: dict[str, Any],
                 upload: Iterable[Chunk] | AsyncIterable[Chunk] | None) -> None:
        self._conn = conn
        self._method = method
        self._params = params
        self._upload = upload
        self._req: _AsyncRequest | None = None
        self._upload_scope = trio.CancelScope()
        self._upload_error: BaseException | None = None
        self.request_id = 0
        self.done = False
        self._result: Any = None
        self._has_result = False
        #: called with each progress event read (None: they are dropped).
        self.on_progress: Callable[[dict[str, Any]], None] | None = None

    @property
    def result(self) -> Any:
        """The final result. Raises ``RuntimeError`` before the stream is exhausted."""
        if not self._has_result:
            raise RuntimeError("the result is available once the stream is exhausted")
        return self._result

    async def __aenter__(self) -> Self:
        conn = self._conn
        if conn._broken is not None:
            raise conn._broken
        rid = conn._next_id
        conn._next_id += 1
        self.request_id = rid
        self._req = req = _AsyncRequest(rid, conn._window, conn._upload_window)
        conn._requests[rid] = req
        try:
            await conn._send(Request(id=rid, method=self._method, params=self._params,
                                     upload=self._upload is not None))
        except BaseException:
            del conn._requests[rid]
            raise
        if self._upload is not None:
            assert conn._nursery is not None
            conn._nursery.start_soon(self._uploader)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        conn = self._conn
        req = self._req
        assert req is not None
        self._upload_scope.cancel()
        try:
            if req.final is None and conn._broken is None:
                # Wait (bounded) for the daemon to confirm, so the id's last frames are
                # accounted for; past the deadline its late frames are dropped.
                with trio.CancelScope(shield=True) as wait:
                    wait.deadline = trio.current_time() + _ABANDON_TIMEOUT_S
                    await conn._send(Cancel(id=req.id))
                    while req.final is None and conn._broken is None:
                        await req.lot.park()
        finally:
            conn._requests.pop(req.id, None)
            if req.final is None:
                conn._abandoned.add(req.id)

    def __aiter__(self) -> AsyncRpcStream:
        return self

    async def __anext__(self) -> Any:
        conn = self._conn
        req = self._req
        assert req is not None, "use the stream in `async with`"
        await trio.lowlevel.checkpoint()
        while True:
            if self._upload_error is not None:
                raise self._upload_error
            if req.items:
                item, cost = req.items.popleft()
                grant = req.recv.on_consume(cost)
                if grant:
                    await conn._send(Credit(id=req.id, nbytes=grant))
                if isinstance(item, Progress):
                    if self.on_progress is not None:
                        self.on_progress(item.progress)
                    continue
                return item
            if req.final is not None:
                self.done = True
                if isinstance(req.final, ErrorReply):
                    raise RpcError(req.final.code, req.final.message)
                self._result = req.final.result
                self._has_result = True
                raise StopAsyncIteration
            if conn._broken is not None:
                raise conn._broken
            await req.lot.park()

    async def _uploader(self) -> None:
        conn = self._conn
        req = self._req
        assert req is not None and self._upload is not None
        with self._upload_scope:
            try:
                if isinstance(self._upload, AsyncIterable):
                    async for chunk in self._upload:
                        if not await self._send_chunk(req, chunk):
                            return
                else:
                    for chunk in self._upload:
                        if not await self._send_chunk(req, chunk):
                            return
                if req.final is None:
                    await conn._send(End(id=req.id))
            except RpcError:
                return  # the reader has recorded the failure; __anext__ raises it
            except Exception as exc:  # noqa: BLE001 - re-raised from the stream's iteration
                # The upload source failed: report it from the iteration, cancel the request.
                self._upload_error = exc
                if req.final is None and conn._broken is None:
                    await conn._send(Cancel(id=req.id))
                req.lot.unpark_all()

    async def _send_chunk(self, req: _AsyncRequest, chunk: Chunk) -> bool:
        conn = self._conn
        if not isinstance(chunk, bytes):
            chunk = bytes(chunk)  # the producer may reuse its buffer once we yield
        for piece in _pieces(chunk):
            bufs, cost = encode(Data(id=req.id, data=piece))
            while not req.credit.can_send(cost):
                if req.final is not None or conn._broken is not None:
                    return False
                await req.lot.park()
            if req.final is not None:
                return False
            req.credit.spend(cost)
            await conn._send_bufs(bufs)
        return True


@asynccontextmanager
async def open_rpc_connection(socket_path: str | os.PathLike[str], *,
                              window_bytes: int = DEFAULT_WINDOW_BYTES,
                              connect_timeout: float = 5.0,
                              ) -> AsyncIterator[AsyncRpcConnection]:
    """Connect to the daemon's socket from trio; the connection closes on exit.

    Args:
        socket_path: the daemon's socket.
        window_bytes: per-request reply window, bytes.
        connect_timeout: seconds for connecting and the handshake.

    Yields:
        The connection, usable from any task in this trio run.

    Raises:
        DaemonNotRunning: nothing listens on the socket.
        RpcError: the handshake was refused (``unsupported_version``,
            ``too_many_connections``) or timed out (``timeout``).
    """
    _check_window(window_bytes)
    path = os.fspath(socket_path)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with sock:
        conn = AsyncRpcConnection(sock, path, window_bytes)
        with trio.move_on_after(connect_timeout) as scope:
            try:
                await sock.connect(path)
            except OSError as exc:
                raise _connect_error(path, exc) from None
            await conn._send(Hello(window=window_bytes))
            got = await conn._read_message()
            if got is None:
                raise RpcConnectionClosed(f"{path} closed the connection during the handshake")
            welcome = _handshake_reply(got[0], path)
        if scope.cancelled_caught:
            raise RpcError("timeout", f"connecting to {path} timed out")
        conn.daemon_version = welcome.daemon_version
        conn.protocol_version = welcome.version
        conn._upload_window = welcome.window
        async with trio.open_nursery() as nursery:
            conn._nursery = nursery
            nursery.start_soon(conn._reader)
            try:
                yield conn
            finally:
                conn._fail(RpcConnectionClosed("the connection was closed by this client"))
                nursery.cancel_scope.cancel()
