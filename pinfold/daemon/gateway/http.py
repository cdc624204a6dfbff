"""The gateway's HTTP value types: ``Request`` in, ``Response`` out, ``HttpError``
for the statuses a handler ends with, and the error body (text or JSON).

No I/O here: the server (``server.py``) turns h11 events into a ``Request`` and
writes a ``Response``; the handlers (``routes.py``, ``files.py``,
``trustless.py``) only build these.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Final
from urllib.parse import quote

#: Sends one piece of a response body; returns when the client's socket took it
#: (the backpressure a slow reader exerts).
Send = Callable[[bytes], Awaitable[None]]
#: Writes a whole body through ``send``; the server calls it once, after the
#: headers are chosen, and sends the headers with the first piece.
BodyWriter = Callable[[Send], Awaitable[None]]

#: What a URL path keeps unencoded (RFC 3986 3.3 ``pchar`` and ``/``; letters,
#: digits and ``-._~`` are always kept): everything else is percent-encoded.
_PATH_SAFE: Final = "/!$&'()*+,;=:@"

#: ipfs/specs path-gateway "Cache-Control": every immutable ``/ipfs/`` response.
IMMUTABLE: Final = "public, max-age=29030400, immutable"
#: "Cache-Control" of an ``/ipns/`` response through a tag (it may move): one minute.
MUTABLE: Final = "public, max-age=60"


def path_header(path: str) -> str:
    """The ``X-Ipfs-Path`` value of a decoded content path (``/ipfs/CID/a b/ü``):
    percent-encoded as a URL path (RFC 3986 2.1, 3.3), as the request URL writes
    it, so a space or UTF-8 name is always ``%20``/``%C3%BC``, never raw."""
    return quote(path, safe=_PATH_SAFE)


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    """One HTTP request as the handlers see it.

    Attributes:
        method: upper-case, e.g. ``"GET"``.
        path: the URL path, still percent-encoded (``/ipfs/bafy.../a%20b``).
        query: query parameters, first value of each name, decoded.
        query_string: the raw query (without ``?``), for redirects.
        headers: header names lower-case, values decoded as latin-1; repeated
            headers joined with ``", "``.
    """

    method: str
    path: str
    query: dict[str, str] = field(default_factory=dict)
    query_string: str = ""
    headers: dict[str, str] = field(default_factory=dict)

    def header(self, name: str, default: str = "") -> str:
        """The value of header ``name`` (case-insensitive), or ``default``."""
        return self.headers.get(name.lower(), default)

    @property
    def wants_json(self) -> bool:
        """True when the client's Accept names JSON (errors are then JSON)."""
        return "application/json" in self.header("accept")


@dataclass(frozen=True, slots=True, kw_only=True)
class Response:
    """What a handler answers.

    Attributes:
        status: the HTTP status code.
        route: the metrics label of the handler that answered (``file``,
            ``directory``, ``raw``, ``car``, ``redirect``, ``error``, ...).
        headers: ``(name, value)`` pairs, sent in order.
        body: the whole body, or a ``BodyWriter`` streaming it (never called
            for HEAD).
        length: the body's length in bytes when known (``Content-Length``);
            ``None`` streams chunked.
    """

    status: int
    route: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | BodyWriter = b""
    length: int | None = None

    def content_length(self) -> int | None:
        """``Content-Length`` to send: ``len(body)`` or ``length``."""
        return len(self.body) if isinstance(self.body, bytes) else self.length


class HttpError(Exception):
    """A request that ends with an error status (4xx/5xx) and a short message.

    Attributes:
        status: the HTTP status code.
        message: one line for the client, naming what was wrong (the CID, the path).
        headers: extra headers (``Allow``, ``Retry-After``, ``Content-Range``).
    """

    def __init__(self, status: int, message: str,
                 headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def error_response(status: int, message: str, *, as_json: bool, route: str = "error",
                   headers: tuple[tuple[str, str], ...] = ()) -> Response:
    """A short error response: ``"<status> <reason>: <message>\\n"`` as text, or
    ``{"status": ..., "error": ..., "message": ...}`` when the client asked for JSON."""
    reason = HTTPStatus(status).phrase
    if as_json:
        body = json.dumps({"status": status, "error": reason, "message": message}).encode()
        ctype = "application/json"
    else:
        body = f"{status} {reason}: {message}\n".encode()
        ctype = "text/plain; charset=utf-8"
    return Response(status=status, route=route, body=body, headers=(
        ("Content-Type", ctype), ("X-Content-Type-Options", "nosniff"),
        ("Cache-Control", "no-store"), *headers))
