"""``RpcConnection``: the blocking RPC client (plain sockets, no trio) under
``pinfold.client`` and the CLI, with ``RpcStream`` for reply streams and
file descriptors passed with a request (``SCM_RIGHTS``).

Imports ``rpc.wire`` and ``common``."""

from __future__ import annotations

import array
import os
import select
import socket
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Self

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
    _IOV_MAX,
    _SOCKET_BUFFER_BYTES,
    _check_params,
    _check_window,
    _connect_error,
    _handshake_reply,
    _pieces,
)

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
        window_bytes: per-request reply window, bytes (``rpc.wire`` bounds).

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
             upload: Iterable[Chunk] | None = None, pass_fd: int | None = None,
             on_progress: Callable[[dict[str, Any]], None] | None = None) -> Any:
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
            on_progress: called with each progress event (see ``stream``).

        Returns:
            The handler's result (any msgpack value).

        Raises:
            RpcError: the daemon's error reply (``code``, ``message``), or a
                transport failure (``RpcConnectionClosed``, ``RpcProtocolError``,
                code ``timeout``).
            Exception: whatever the upload iterable raised (the request is
                cancelled first).
        """
        with self.stream(method, params, upload=upload, pass_fd=pass_fd,
                         on_progress=on_progress) as stream:
            for _ in stream:
                pass
            return stream.result

    def stream(self, method: str, params: Mapping[str, Any] | None = None, *,
               upload: Iterable[Chunk] | None = None, pass_fd: int | None = None,
               on_progress: Callable[[dict[str, Any]], None] | None = None) -> RpcStream:
        """Start a request whose reply is a stream of items; see ``RpcStream``.

        Arguments as ``call``; ``on_progress(event)`` is called with each
        progress event while the stream is read (ask for them with
        ``progress: True`` in ``params``; without a callback they are dropped).
        The request is sent before this returns.
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
        stream.on_progress = on_progress
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
            raise RpcError("timeout", f"the daemon did not read within {self._sock.gettimeout():g} s") from None
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
                               f"no reply from the daemon within {self._sock.gettimeout():g} s") from None
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
        #: called with each progress event read (None: they are dropped).
        self.on_progress: Callable[[dict[str, Any]], None] | None = None

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
        while kind == "progress":
            if self.on_progress is not None:
                self.on_progress(value)
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
        """One step: ``("item", x)``, ``("progress", event)``, ``("result", None)`` or
        ``("error", exception)``."""
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
                if isinstance(msg, Progress):
                    self._recv.on_receive(cost)
                    self._unacked = cost  # handed back at the next step, as an item's
                    return "progress", msg.progress
                if isinstance(msg, Credit):
                    self._credit.grant(msg.nbytes)
                else:
                    raise RpcProtocolError("protocol_error",
                                           f"unexpected {type(msg).__name__} from the daemon")
            except WireError as exc:
                raise RpcProtocolError(exc.code, str(exc)) from exc


# =========================================================================== trio
