"""RPC client transports for the ``pinfold-rpc`` protocol (``rpcwire``).

``RpcConnection`` is the blocking transport under ``pinfold.client``
and the CLI: no trio, plain sockets. ``open_rpc_connection`` is a trio
variant that runs many requests at once on one connection (tests, tools).

Both stream in both directions without holding whole payloads: an upload is
pulled from its iterator one chunk at a time as the daemon's credit allows, and
a reply stream is read one item at a time as the caller consumes it.

Data path: an upload chunk is written with one ``sendmsg`` of a small header
plus the caller's buffer (no copy); a 1 MiB reply item is received straight
into the bytes object handed to the caller (``MSG_WAITALL`` when no timeout
is set), one kernel copy in all.

Example::

    with RpcConnection(home / "rpc.sock") as conn:
        with open(path, "rb") as f:
            chunks = iter(lambda: f.read(1 << 20), b"")
            result = conn.call("add", {"pin": True}, upload=chunks)
        for chunk in conn.stream("cat", {"cid": result["cid"]}):
            sys.stdout.buffer.write(chunk)
"""

from __future__ import annotations

import array
import os
import select
import socket
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, Self

import trio

from pinfold.daemon.rpc.wire import (
    DEFAULT_WINDOW_BYTES,
    MAX_CHUNK_BYTES,
    MAX_WINDOW_BYTES,
    MIN_WINDOW_BYTES,
    Cancel,
    Credit,
    DaemonNotRunning,
    Data,
    End,
    ErrorReply,
    FrameDecoder,
    Hello,
    Item,
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

__all__ = [
    "AsyncRpcConnection",
    "AsyncRpcStream",
    "DaemonNotRunning",
    "RpcConnection",
    "RpcConnectionClosed",
    "RpcError",
    "RpcProtocolError",
    "RpcStream",
    "open_rpc_connection",
]

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


class RpcConnection:
    """A blocking connection to the daemon's RPC socket.

    Connects and performs the handshake on construction. One request runs at
    a time: starting a request while a previous ``RpcStream`` is unfinished
    first cancels that stream. Not thread-safe: give each thread its own
    connection (or serialize calls with a lock).

    Args:
        socket_path: the daemon's socket.
        connect_timeout: seconds for connecting and the handshake.
        timeout: seconds any single wait for the daemon may take once
            connected (None: wait forever). When it passes, ``RpcError`` with
            code ``timeout`` is raised and the connection is closed.
        window_bytes: per-request reply window, bytes (``rpcwire`` bounds).

    Raises:
        ValueError: ``window_bytes`` is out of bounds.
        DaemonNotRunning: the socket is missing or nothing listens on it.
        RpcError: permission denied (``permission_denied``), a refused
            handshake (e.g. ``unsupported_version``, ``too_many_connections``)
            or a timeout (``timeout``).

    Attributes:
        socket_path: the path connected to.
        daemon_version: the daemon's version string from the handshake.
        protocol_version: the protocol version spoken.
    """

    def __init__(self, socket_path: str | os.PathLike[str], *, connect_timeout: float = 5.0,
                 timeout: float | None = None,
                 window_bytes: int = DEFAULT_WINDOW_BYTES) -> None:
        _check_window(window_bytes)
        self.socket_path = os.fspath(socket_path)
        self._window = window_bytes
        self._timeout = timeout
        self._decoder = FrameDecoder()
        self._next_id = 1
        self._current: RpcStream | None = None
        self._broken: RpcError | None = None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock = sock
        try:
            sock.settimeout(connect_timeout)
            for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
                sock.setsockopt(socket.SOL_SOCKET, opt, _SOCKET_BUFFER_BYTES)
            try:
                sock.connect(self.socket_path)
            except OSError as exc:
                raise _connect_error(self.socket_path, exc) from None
            self._send_msg(Hello(window=window_bytes))
            got = self._read_message(block=True)
            assert got is not None
            welcome = _handshake_reply(got[0], self.socket_path)
            sock.settimeout(timeout)
        except BaseException:
            sock.close()
            raise
        self._poll = select.poll()
        self._poll.register(sock, select.POLLIN)
        self.daemon_version = welcome.daemon_version
        self.protocol_version = welcome.version
        self._upload_window = welcome.window

    # ------------------------------------------------------------------ public

    def call(self, method: str, params: Mapping[str, Any] | None = None, *,
             upload: Iterable[Chunk] | None = None, pass_fd: int | None = None) -> Any:
        """Run one request and return its final result; streamed items are discarded.

        Args:
            method: the method name.
            params: the parameters (str keys, msgpack-serializable values).
            upload: optional iterable of bytes-like chunks, pulled lazily as
                credit allows (chunks over 1 MiB are split without copying).
                Each chunk is fully written before the next is pulled, so a
                producer may reuse its buffer.
            pass_fd: optional file descriptor sent with the request (SCM_RIGHTS);
                the daemon gets its own duplicate (e.g. ``cat`` writes to it).

        Returns:
            The handler's result (any msgpack value).

        Raises:
            RpcError: the daemon's error reply (``code``, ``message``), or a
                transport failure (``RpcConnectionClosed``, ``RpcProtocolError``,
                code ``timeout``).
            Exception: whatever the upload iterable raised (the request is
                cancelled first).
        """
        with self.stream(method, params, upload=upload, pass_fd=pass_fd) as stream:
            for _ in stream:
                pass
            return stream.result

    def stream(self, method: str, params: Mapping[str, Any] | None = None, *,
               upload: Iterable[Chunk] | None = None, pass_fd: int | None = None) -> RpcStream:
        """Start a request whose reply is a stream of items; see ``RpcStream``.

        Arguments as ``call``. The request is sent before this returns.
        """
        self._check_usable()
        params = _check_params(params)
        rid = self._next_id
        # Encoded before anything is sent: parameters msgpack cannot carry raise
        # TypeError here and leave the connection usable.
        request, _ = encode(Request(id=rid, method=method, params=params,
                                    upload=upload is not None))
        if self._current is not None and not self._current.done:
            self._current.close()
        self._next_id += 1
        stream = RpcStream(self, rid, method, upload)
        self._current = stream
        if pass_fd is None:
            self._guarded(self._send_bufs, request)
        else:
            self._guarded(self._send_bufs_with_fd, request, pass_fd)
        return stream

    def close(self) -> None:
        """Close the connection (the daemon cancels any unfinished request)."""
        if self._broken is None:
            self._broken = RpcConnectionClosed("the connection was closed by this client")
        self._sock.close()

    @property
    def closed(self) -> bool:
        """True once the connection is closed or broken."""
        return self._broken is not None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    def _check_usable(self) -> None:
        if self._broken is not None:
            raise self._broken

    def _guarded(self, fn: Any, *args: Any) -> Any:
        """Run an I/O step; a failure (transport error, interrupt) half-way leaves the
        connection's framing unknown, so it is closed and later calls raise."""
        try:
            return fn(*args)
        except RpcError as exc:
            if self._broken is None:
                self._broken = exc if isinstance(exc, RpcConnectionClosed) else \
                    RpcConnectionClosed(f"connection unusable after an error: {exc}")
            self._sock.close()
            raise
        except BaseException:
            self.close()
            raise

    def _send_msg(self, msg: Any) -> None:
        bufs, _ = encode(msg)
        self._send_bufs(bufs)

    def _send_bufs_with_fd(self, bufs: list[Any], fd: int) -> None:
        data = b"".join(bytes(b) for b in bufs)  # a request frame is small
        n = self._sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                         array.array("i", [fd]))])
        if n < len(data):
            self._send_bufs([memoryview(data)[n:]])

    def _send_bufs(self, bufs: list[Any]) -> None:
        try:
            while bufs:
                n = self._sock.sendmsg(bufs[:_IOV_MAX])
                i = 0
                while i < len(bufs) and n >= len(bufs[i]):
                    n -= len(bufs[i])
                    i += 1
                bufs = bufs[i:]
                if n:
                    bufs[0] = memoryview(bufs[0])[n:]
        except TimeoutError:
            raise RpcError("timeout", f"the daemon did not read within {self._timeout} s") from None
        except OSError as exc:
            # The daemon may have closed with an explanation already sent: prefer it.
            raise self._closing_reason(exc) from None

    def _closing_reason(self, exc: OSError) -> RpcError:
        try:
            self._sock.setblocking(False)
            self._poll = select.poll()  # the handshake may not have created it yet
            self._poll.register(self._sock, select.POLLIN)
            while True:
                got = self._read_message(block=False)
                if got is None:
                    break
                msg = got[0]
                if isinstance(msg, ErrorReply) and msg.id is None:
                    return RpcError(msg.code, msg.message)
        except (RpcError, OSError):
            pass  # nothing more to learn: report the send failure itself
        return RpcConnectionClosed(f"the daemon closed the connection ({exc.strerror or exc})")

    def _read_message(self, *, block: bool) -> tuple[ServerMessage, int] | None:
        """The next message and its body length, or None if ``block`` is False and none is ready."""
        decoder = self._decoder
        while True:
            try:
                body = decoder.next_body()
                if body is not None:
                    return decode_server_message(body), body.nbytes
            except WireError as exc:
                raise RpcProtocolError(exc.code, f"bad frame from the daemon: {exc}") from exc
            if not block and not self._poll.poll(0):
                return None
            try:
                if want := decoder.bulk_wanted():
                    if self._timeout is None:  # blocking: the kernel gathers it all
                        data = self._sock.recv(want, socket.MSG_WAITALL)
                    else:
                        data = self._sock.recv(bulk_read_size(self._sock.fileno(), want))
                    n = len(data)
                    if n:
                        decoder.add_bulk(data)
                else:
                    n = self._sock.recv_into(decoder.get_buffer())
                    decoder.commit(n)
            except TimeoutError:
                raise RpcError("timeout",
                               f"no reply from the daemon within {self._timeout} s") from None
            except BlockingIOError:
                return None
            except OSError as exc:
                raise RpcConnectionClosed(
                    f"the daemon closed the connection ({exc.strerror or exc})") from None
            if n == 0:
                raise RpcConnectionClosed("the daemon closed the connection")


class RpcStream:
    """A request in progress on an ``RpcConnection``: iterate it for the reply items.

    ``for item in stream`` yields each item as it arrives (reading it from
    the socket only then, so downloads are incremental and bounded by the
    window); the upload, if any, is sent as the daemon's credit allows while
    iterating. After the iteration ends, ``result`` holds the final result;
    an error reply is raised from the iteration as ``RpcError``. ``close()``
    (or leaving a ``with`` block) cancels an unfinished request.

    Attributes:
        request_id: the request's id on its connection.
        method: the method name.
        done: True once the final reply arrived (or the request was abandoned).
    """

    def __init__(self, conn: RpcConnection, rid: int, method: str,
                 upload: Iterable[Chunk] | None) -> None:
        self._conn = conn
        self.request_id = rid
        self.method = method
        self.done = False
        self._result: Any = None
        self._has_result = False
        self._recv = RecvWindow(window=conn._window)
        self._unacked = 0
        self._upload: Iterator[Chunk] | None = iter(upload) if upload is not None else None
        self._pieces: Iterator[memoryview] = iter(())
        self._frame: tuple[list[Any], int, bool] | None = None
        self._upload_error: Exception | None = None
        self._credit = SendCredit(window=conn._upload_window)

    @property
    def result(self) -> Any:
        """The final result. Raises ``RuntimeError`` before the stream is exhausted."""
        if not self._has_result:
            raise RuntimeError("the result is available once the stream is exhausted")
        return self._result

    def __iter__(self) -> RpcStream:
        return self

    def __next__(self) -> Any:
        if self.done:
            raise StopIteration
        self._conn._check_usable()
        kind, value = self._conn._guarded(self._advance)
        if kind == "item":
            return value
        if kind == "result":
            raise StopIteration
        raise value  # the daemon's error reply, or the upload source's exception

    def close(self) -> None:
        """Cancel the request if unfinished and wait for its final reply (discarded)."""
        if self.done:
            return
        conn = self._conn
        self.done = True
        if conn._broken is not None:
            return
        conn._guarded(self._cancel_and_drain)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    def _cancel_and_drain(self) -> None:
        conn = self._conn
        conn._send_msg(Cancel(id=self.request_id))
        while True:
            got = conn._read_message(block=True)
            assert got is not None
            if self._is_final(got[0]):
                return

    def _is_final(self, msg: ServerMessage) -> bool:
        if isinstance(msg, ErrorReply) and msg.id is None:
            raise RpcError(msg.code, msg.message)
        if isinstance(msg, Welcome) or msg.id != self.request_id:
            raise RpcProtocolError("protocol_error",
                                   f"the daemon sent {type(msg).__name__} for request "
                                   f"{getattr(msg, 'id', None)}; expected {self.request_id}")
        return isinstance(msg, Result | ErrorReply)

    def _next_frame(self) -> tuple[list[Any], int, bool] | None:
        """The next upload frame ``(buffers, cost, is_data)``, prepared once; None when done."""
        if self._frame is None and self._upload is not None:
            while True:
                piece = next(self._pieces, None)
                if piece is not None:
                    bufs, cost = encode(Data(id=self.request_id, data=piece))
                    self._frame = (bufs, cost, True)
                    break
                try:
                    chunk = next(self._upload)
                    self._pieces = _pieces(chunk)
                except StopIteration:
                    self._upload = None
                    self._frame = (encode(End(id=self.request_id))[0], 0, False)
                    break
                except Exception as exc:  # noqa: BLE001 - any source failure is re-raised below
                    # The upload source failed: cancel the request, wait for its end.
                    self._upload = None
                    self._upload_error = exc
                    break
        return self._frame

    def _advance(self) -> tuple[str, Any]:
        """One step: ``("item", x)``, ``("result", None)`` or ``("error", exception)``."""
        conn = self._conn
        if self._unacked:
            grant = self._recv.on_consume(self._unacked)
            self._unacked = 0
            if grant:
                conn._send_msg(Credit(id=self.request_id, nbytes=grant))
        while True:
            frame = self._next_frame()
            if self._upload_error is not None:
                self.done = True
                self._cancel_and_drain()
                return "error", self._upload_error
            sendable = frame is not None and (not frame[2] or self._credit.can_send(frame[1]))
            got = conn._read_message(block=not sendable)
            if got is None:
                assert frame is not None
                bufs, cost, is_data = frame
                if is_data:
                    self._credit.spend(cost)
                self._frame = None
                conn._send_bufs(bufs)
                continue
            msg, cost = got
            if self._is_final(msg):
                self.done = True
                self._upload = None
                self._frame = None
                if isinstance(msg, ErrorReply):
                    return "error", RpcError(msg.code, msg.message)
                assert isinstance(msg, Result)
                self._result = msg.result
                self._has_result = True
                return "result", None
            try:
                if isinstance(msg, Item):
                    self._recv.on_receive(cost)
                    self._unacked = cost
                    return "item", msg.item
                if isinstance(msg, Credit):
                    self._credit.grant(msg.nbytes)
                else:
                    raise RpcProtocolError("protocol_error",
                                           f"unexpected {type(msg).__name__} from the daemon")
            except WireError as exc:
                raise RpcProtocolError(exc.code, str(exc)) from exc


# =========================================================================== trio


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
               upload: Iterable[Chunk] | AsyncIterable[Chunk] | None = None) -> AsyncRpcStream:
        """A request as an async context manager and async iterator of its items.

        ``async with conn.stream(m, p) as s: async for item in s: ...`` then
        ``s.result``. Leaving the block early cancels the request.
        """
        return AsyncRpcStream(self, method, _check_params(params), upload)

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
                if isinstance(msg, Item):
                    try:
                        req.recv.on_receive(cost)
                    except WireError as exc:
                        raise RpcProtocolError(exc.code, str(exc)) from exc
                    req.items.append((msg.item, cost))
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
