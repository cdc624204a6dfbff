"""The gateway's HTTP/1.1 server: h11 (the sans-IO protocol) under a small trio
loop, after h11's own ``examples/trio-server.py``. No HTTP parsing here: h11
turns bytes into events and responses into bytes; this module moves them,
and enforces the limits:

- requests served at once: ``gateway.max_requests``; one more gets 503 with
  ``Retry-After`` at once (not queued);
- request line and headers: ``gateway.max_header_bytes`` (h11's
  ``max_incomplete_event_size``); more gets 431;
- slow or silent clients: each request head (however it trickles in) and
  each write of the response may take ``gateway.idle_timeout_s``; then the
  connection closes.
  A body is written one piece (at most one block) at a time and the next
  piece is read only when the socket took the last, so a slow reader holds
  one block and the kernel's socket buffer, never the file.

Errors before the headers are sent become a short error response (text, or
JSON when asked); after, the connection is closed mid-body (the client sees
a short or unterminated body, as the trustless spec describes for CARs).
"""

from __future__ import annotations

import logging
import string
from collections.abc import Callable
from http import HTTPStatus
from typing import Final
from urllib.parse import parse_qsl, quote, urlsplit

import h11
import trio

from pinfold.config import ConfigError, GatewayConfig
from pinfold.config.schema import split_host_port

from pinfold.daemon.gateway.content import ContentSource
from pinfold.daemon.gateway.http import HttpError, Request, Response, error_response
from pinfold.daemon.gateway.routes import Router

log = logging.getLogger("pinfold.gateway")

#: Bytes read from a socket at once.
RECEIVE_BYTES: Final = 64 * 1024
#: Request body bytes read and dropped at most (GET and HEAD have none); more closes.
MAX_DISCARDED_BODY: Final = 64 * 1024
_HEADER_SAFE: Final = "".join(c for c in string.printable if c not in "%\r\n\x0b\x0c")

#: ``on_request_done(route, status, body_bytes, ttfb_s)``; ``ttfb_s`` is None when
#: nothing was sent.
RequestDone = Callable[[str, int, int, "float | None"], None]


def _leaf(exc: Exception) -> Exception:
    """The one exception inside nested single-member exception groups (else ``exc``)."""
    while isinstance(exc, ExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


class _Abort(Exception):
    """The response cannot be completed after its headers went out: close the connection."""


def _header_value(value: str) -> bytes:
    try:
        return value.encode("ascii")
    except UnicodeEncodeError:  # a UTF-8 file name in X-Ipfs-Path: percent-encode it
        return quote(value, safe=_HEADER_SAFE).encode("ascii")


def _to_request(event: h11.Request) -> Request:
    target = event.target.decode("latin-1")
    if not target.startswith("/"):  # absolute-form (a proxy's request)
        try:
            parts = urlsplit(target)
        except ValueError:
            parts = urlsplit("/")
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    path, _, query_string = target.partition("?")
    query: dict[str, str] = {}
    for k, v in parse_qsl(query_string, keep_blank_values=True):
        query.setdefault(k, v)
    headers: dict[str, str] = {}
    for name, value in event.headers:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return Request(method=event.method.decode("latin-1").upper(), path=path, query=query,
                   query_string=query_string, headers=headers)


class Gateway:
    """The HTTP gateway of one node.

    Args:
        config: the ``[gateway]`` section (``listen`` non-empty).
        source: the node's blocks.
        on_request_done: called once per request with its route label, status,
            body bytes sent and seconds to the first byte (metrics).
    """

    def __init__(self, config: GatewayConfig, source: ContentSource, *,
                 on_request_done: RequestDone | None = None) -> None:
        self.config = config
        self.router = Router(source, timeout_s=config.timeout_s)
        self.on_request_done = on_request_done
        self.address: tuple[str, int] | None = None
        self.active = 0

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` the gateway listens on (after ``run`` started), else ``""``."""
        if self.address is None:
            return ""
        host, port = self.address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    async def run(self, *, task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Listen on ``config.listen`` and serve until cancelled; ``started`` with the
        bound ``(host, port)``.

        Raises:
            ConfigError: ``gateway.listen`` cannot be bound (in use, not an address here).
        """
        hp = split_host_port(self.config.listen)
        assert hp is not None  # the config validated it
        host, port = hp
        try:
            listeners = await trio.open_tcp_listeners(port, host=host)
        except OSError as exc:
            raise ConfigError("gateway.listen", f"{self.config.listen}: "
                              f"{exc.strerror or exc}") from exc
        name = listeners[0].socket.getsockname()
        self.address = (name[0], name[1])
        log.info("gateway listening on %s", self.url)
        task_status.started(self.address)
        await trio.serve_listeners(self._connection, listeners)

    # ------------------------------------------------------------------ connection

    async def _next_event(self, conn: h11.Connection, stream: trio.SocketStream):
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            with trio.fail_after(self.config.idle_timeout_s):
                data = await stream.receive_some(RECEIVE_BYTES)
            conn.receive_data(data)

    async def _connection(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER,
                              max_incomplete_event_size=self.config.max_header_bytes)
        try:
            while True:
                try:
                    # The whole request head, not only each read, within the idle
                    # timeout: a client trickling header bytes cannot hold a task.
                    with trio.fail_after(self.config.idle_timeout_s):
                        event = await self._next_event(conn, stream)
                except h11.RemoteProtocolError as exc:
                    await self._protocol_error(conn, stream, exc)
                    return
                if not isinstance(event, h11.Request):
                    return  # ConnectionClosed (or PAUSED on a broken cycle)
                if not await self._serve_one(conn, stream, event):
                    return
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError,
                h11.LocalProtocolError, h11.RemoteProtocolError, _Abort):
            pass  # the client went away, stalled, or the body could not be completed
        except Exception:  # a bug in one connection must not stop the node
            log.exception("gateway: connection failed")
        finally:
            with trio.move_on_after(1) as scope:
                scope.shield = True
                await stream.aclose()

    async def _protocol_error(self, conn: h11.Connection, stream: trio.SocketStream,
                              exc: h11.RemoteProtocolError) -> None:
        """Answer a malformed request (or too-large headers: 431) if h11 still allows."""
        status = exc.error_status_hint
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        message = ("request headers exceed gateway.max_header_bytes "
                   f"({self.config.max_header_bytes} bytes)" if status == 431
                   else f"malformed HTTP request: {exc}")
        resp = error_response(status, message, as_json=False)
        start = trio.current_time()
        sent = await self._write(conn, stream, resp, head=False, start=start)
        self._done(resp.route, status, *sent)

    async def _discard_body(self, conn: h11.Connection, stream: trio.SocketStream) -> bool:
        """Read the request to its end (dropping any body); False if it is too long."""
        dropped = 0
        while True:
            event = await self._next_event(conn, stream)
            if isinstance(event, h11.EndOfMessage):
                return True
            if isinstance(event, h11.Data):
                dropped += len(event.data)
                if dropped > MAX_DISCARDED_BODY:
                    return False
            elif isinstance(event, h11.ConnectionClosed):
                return False

    async def _serve_one(self, conn: h11.Connection, stream: trio.SocketStream,
                         event: h11.Request) -> bool:
        """Answer one request; False when the connection must close afterwards."""
        start = trio.current_time()
        req = _to_request(event)
        complete = await self._discard_body(conn, stream)
        # h11 bounds headers still arriving; a request that came whole in one read is
        # measured here, so the limit does not depend on how the bytes were split.
        size = len(event.target) + sum(len(k) + len(v) + 4 for k, v in event.headers)
        if size > self.config.max_header_bytes:
            resp = error_response(431, "request headers exceed gateway.max_header_bytes "
                                  f"({self.config.max_header_bytes} bytes)",
                                  as_json=req.wants_json)
            sent = await self._write(conn, stream, resp, head=req.method == "HEAD", start=start)
            self._done(resp.route, 431, *sent)
            return False
        if self.active >= self.config.max_requests:
            resp = error_response(503, f"the gateway is serving {self.active} requests "
                                  "(gateway.max_requests); retry shortly",
                                  as_json=req.wants_json, route="overload",
                                  headers=(("Retry-After", "1"),))
            sent = await self._write(conn, stream, resp, head=req.method == "HEAD", start=start)
            self._done(resp.route, 503, *sent)
            return complete
        self.active += 1
        status, route, sent = 500, "error", (0, None)
        try:
            try:
                resp = await self.router.route(req)
            except HttpError as exc:
                resp = error_response(exc.status, exc.message, as_json=req.wants_json,
                                      headers=exc.headers)
            except Exception:
                log.exception("gateway: %s %s failed", req.method, req.path)
                resp = error_response(500, "internal error (the daemon's log has the details)",
                                      as_json=req.wants_json)
            status, route = resp.status, resp.route
            try:
                sent = await self._write(conn, stream, resp, head=req.method == "HEAD",
                                         start=start)
            except _Failed as failed:
                resp = failed.response(req)
                status, route = resp.status, resp.route
                sent = await self._write(conn, stream, resp, head=req.method == "HEAD",
                                         start=start)
        finally:
            self.active -= 1
            self._done(route, status, *sent)
        return complete

    def _done(self, route: str, status: int, nbytes: int, ttfb: float | None) -> None:
        if self.on_request_done is not None:
            self.on_request_done(route, status, nbytes, ttfb)

    # ------------------------------------------------------------------ writing

    async def _send(self, stream: trio.SocketStream, data: bytes) -> None:
        with trio.fail_after(self.config.idle_timeout_s):
            await stream.send_all(data)

    async def _write(self, conn: h11.Connection, stream: trio.SocketStream, resp: Response,
                     *, head: bool, start: float) -> tuple[int, float | None]:
        """Send ``resp``; returns ``(body bytes sent, seconds to the first byte)``.

        Raises:
            _Failed: the body failed before anything was sent (send its error instead).
            _Abort: the body failed after the headers were sent.
        """
        sent = 0
        first: float | None = None

        async def send_head() -> None:
            nonlocal first
            headers = [(k.encode("ascii"), _header_value(v)) for k, v in resp.headers]
            length = resp.content_length()
            if length is not None and resp.status not in (204, 304):
                headers.append((b"Content-Length", str(length).encode()))
            headers.append((b"Server", b"pinfold"))
            await self._send(stream, conn.send(h11.Response(
                status_code=resp.status, headers=headers,
                reason=HTTPStatus(resp.status).phrase.encode())))
            first = trio.current_time() - start

        async def send(piece: bytes) -> None:
            nonlocal sent
            if not piece:
                return
            if first is None:
                await send_head()
            # h11 frames the piece without copying it (a block is up to 2 MiB).
            for part in conn.send_with_data_passthrough(h11.Data(data=piece)):
                await self._send(stream, part)
            sent += len(piece)

        if head or isinstance(resp.body, bytes):
            await send_head()
            if not head and resp.body and resp.status not in (204, 304):
                await send(resp.body)  # type: ignore[arg-type]
        else:
            try:
                await resp.body(send)
            except Exception as group:
                exc = _leaf(group)  # the prefetcher's nursery wraps what the body raised
                if isinstance(exc, HttpError):
                    if first is None:
                        raise _Failed(exc) from None
                    log.info("gateway: response cut after %d bytes: %s", sent, exc.message)
                    raise _Abort() from None
                if isinstance(exc, (trio.BrokenResourceError, trio.ClosedResourceError,
                                    trio.TooSlowError)):
                    raise exc from None  # the client went away or stalled
                log.exception("gateway: response body failed")
                if first is None:
                    raise _Failed(HttpError(500, "internal error (the daemon's log has the "
                                                 "details)")) from exc
                raise _Abort() from exc
            if first is None:
                await send_head()
        await self._send(stream, conn.send(h11.EndOfMessage()))
        return sent, first


class _Failed(Exception):
    """A streamed body failed before its first byte: its error is sent instead."""

    def __init__(self, error: HttpError) -> None:
        super().__init__(error.message)
        self.error = error

    def response(self, req: Request) -> Response:
        return error_response(self.error.status, self.error.message, as_json=req.wants_json,
                              headers=self.error.headers)
