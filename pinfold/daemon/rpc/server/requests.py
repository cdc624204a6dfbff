"""One request as the server runs it: the handler's view (``Call``, its upload
iterator and reply items, with flow control), the per-request state, and
how a handler's exception becomes an ``error`` reply.

Imports trio and ``rpc.wire``."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import trio
from pinfold.replication.errors import describe

from pinfold.daemon.rpc.wire import (
    Credit,
    ErrorReply,
    Item,
    Progress,
    RecvWindow,
    Request,
    SendCredit,
    encode,
    error_code_of,
)



class ConnectionSide(Protocol):
    """What a request uses of its connection (the session's ``_Connection``)."""

    fds: deque[int]

    def enqueue(self, bufs: list[Any], nbytes: int, control: bool = False) -> None: ...

    def enqueue_control(self, msg: Credit | ErrorReply) -> None: ...

    def upload_taken(self, cost: int) -> None: ...

log = logging.getLogger("pinfold.daemon.rpc")

Handler = Callable[["Call"], Awaitable[Any]]
"""A method handler: takes the ``Call``, returns the final result (any msgpack value)."""

RequestDone = Callable[[str, str, float], None]
"""``on_request_done(method, outcome, seconds)``: outcome is ``ok`` or the error code."""

UNKNOWN_METHOD_LABEL = "(unknown)"
"""The ``method`` passed to ``on_request_done`` for unknown methods (keeps labels bounded)."""

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
                ``rpc.wire.MAX_FRAME_BYTES`` (a 1 MiB bytes item fits).

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


    @property
    def wants_progress(self) -> bool:
        """True when the client asked for progress events (``progress: true`` in params)."""
        return self.params.get("progress") is True

    async def progress(self, event: dict[str, Any], *, wait: bool = False) -> bool:
        """Send one progress event (a small map of counters) if the client asked for them.

        Progress frames cost reply credit like items. Without ``wait`` an event
        that does not fit in the credit left is dropped (the next one carries
        newer counters), so reporting never holds up the reply stream; with
        ``wait`` (the last event) it waits for credit. Returns True if sent.
        """
        if not self.wants_progress:
            return False
        req = self._req
        bufs, cost = encode(Progress(id=req.id, progress=event))
        await trio.lowlevel.checkpoint()
        if not req.credit.can_send(cost):
            if not wait:
                return False
            while not req.credit.can_send(cost):
                await req.credit_lot.park()
        req.credit.spend(cost)
        req.conn.enqueue(bufs, cost)
        return True


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

    def __init__(self, conn: ConnectionSide, msg: Request, upload_window: int,
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

