"""Which response a request gets: the method check (read-only), ``/ipfs/{cid}[/path]``
parsed (``unixfs.paths.parse_url_path``) or ``/ipns/NAME[@REF][/path]`` resolved
through the source's ``resolve_name`` (the cluster's name book), the format negotiated (``?format=``
over ``Accept``, trustless-gateway spec "format"), then a trustless response
(``trustless.py``) or a deserialized one (``files.py``); ``If-None-Match``
answered with 304. Every failure is an ``HttpError`` with a short message.
"""

from __future__ import annotations

import dataclasses
from urllib.parse import unquote

from pinfold.blockstore.unixfs.paths import ContentPath, InvalidPath, parse_url_path

from pinfold.daemon.gateway.content import BlockReader, ContentSource, walk_path
from pinfold.daemon.gateway.files import directory_response, file_response
from pinfold.daemon.gateway.http import IMMUTABLE, MUTABLE, HttpError, Request, Response
from pinfold.daemon.gateway.trustless import (
    CAR_TYPE,
    RAW_TYPE,
    car_params,
    car_response,
    raw_response,
)

ALLOW = "GET, HEAD, OPTIONS"
_FORMATS = {"raw": RAW_TYPE, "car": CAR_TYPE}


def negotiate(req: Request) -> str | None:
    """The trustless type asked for (``RAW_TYPE``/``CAR_TYPE``) or ``None`` (deserialized).

    Raises:
        HttpError: 400 for a ``format`` this gateway does not produce.
    """
    fmt = req.query.get("format")
    if fmt is not None:
        if fmt not in _FORMATS:
            raise HttpError(400, f"format={fmt!r} is not supported; use raw or car "
                            "(or no format for the file itself)")
        return _FORMATS[fmt]
    accept = req.header("accept").lower()
    for kind in (RAW_TYPE, CAR_TYPE):
        if kind in accept:
            return kind
    return None


def _etag_matches(req: Request, etag: str) -> bool:
    wanted = req.header("if-none-match")
    if not wanted:
        return False
    tags = {t.strip().removeprefix("W/") for t in wanted.split(",")}
    return "*" in tags or etag.removeprefix("W/") in tags


class Router:
    """Turns a ``Request`` into a ``Response`` over a ``ContentSource``.

    Args:
        source: the node's blocks (local, else fetched from peers, unpinned).
        timeout_s: most seconds one block may take (``gateway.timeout_s``); then 504.
    """

    def __init__(self, source: ContentSource, *, timeout_s: float) -> None:
        self.source = source
        self.timeout_s = timeout_s

    async def route(self, req: Request) -> Response:
        """The response to ``req`` (its body is streamed later by the server).

        Raises:
            HttpError: 400 (bad CID or path, unsupported format), 404 (no such
                path), 405 (a method other than GET, HEAD, OPTIONS), 412
                (``only-if-cached`` and the root block is not local), 416, 502, 504.
        """
        if req.method == "OPTIONS":
            return Response(status=204, route="options", headers=(
                ("Allow", ALLOW), ("Access-Control-Allow-Origin", "*"),
                ("Access-Control-Allow-Methods", ALLOW),
                ("Access-Control-Allow-Headers", "Range, Accept, If-None-Match")))
        if req.method not in ("GET", "HEAD"):
            raise HttpError(405, f"{req.method} is not allowed: the gateway is read-only "
                            f"({ALLOW})", (("Allow", ALLOW),))
        if req.path.startswith("/ipns/") and req.path.rstrip("/") != "/ipns":
            return await self._ipns(req)
        if not req.path.startswith("/ipfs/") or req.path.rstrip("/") == "/ipfs":
            raise HttpError(404, f"{req.path!r}: no such resource; request /ipfs/{{cid}}[/path]")
        if req.header("service-worker") == "script":
            raise HttpError(400, "service worker registration is not allowed on /ipfs/ paths")
        try:
            path = parse_url_path(req.path)
        except InvalidPath as exc:
            raise HttpError(400, str(exc)) from None
        except ValueError:
            raise HttpError(400, f"{req.path!r}: a path segment is not valid UTF-8") from None
        return await self._serve(req, path)

    async def _ipns(self, req: Request) -> Response:
        """``/ipns/NAME[@REF][/path]``: served as the ``/ipfs/`` path it resolves to,
        with ``X-Ipfs-Path`` and error messages naming the ``/ipns/`` path (not the
        CID it resolved to) and ``Cache-Control`` immutable only for a version
        number (a tag moves: ``MUTABLE``)."""
        try:
            text = unquote(req.path[len("/ipns/"):], errors="strict")
        except UnicodeDecodeError:
            raise HttpError(400, f"{req.path!r}: a path segment is not valid UTF-8") from None
        try:
            path, immutable = self.source.resolve_name(text)
        except LookupError as exc:
            raise HttpError(404, f"/ipns/{text}: {exc.args[0] if exc.args else exc}") from None
        except ValueError as exc:
            raise HttpError(400, f"/ipns/{text}: {exc}") from None
        # The path's segments are the text's last ones; what precedes them is how
        # the user named the version (NAME, NAME@3, NAME@main).
        parts = [p for p in text.split("/") if p]
        kept = len(parts) - len(path.segments)
        shown_root = "/ipns/" + "/".join(parts[:kept]) if kept > 0 else None
        resp = await self._serve(req, path, shown_root=shown_root)
        headers = tuple((k, MUTABLE if k == "Cache-Control" and v == IMMUTABLE
                         and not immutable else v) for k, v in resp.headers)
        return dataclasses.replace(resp, headers=headers)

    async def _serve(self, req: Request, path: ContentPath, *,
                     shown_root: str | None = None) -> Response:
        kind = negotiate(req)
        dups = car_params(req.header("accept"), req.query) if kind == CAR_TYPE else False
        if "only-if-cached" in req.header("cache-control") and not self.source.has_block(
                path.root):
            raise HttpError(412, f"{path.root} is not in this node's store (only-if-cached)")
        reader = BlockReader(self.source, self.timeout_s)
        walked = await walk_path(reader, path, shown_root=shown_root)
        if kind == RAW_TYPE:
            resp = await raw_response(reader, walked, req)
        elif kind == CAR_TYPE:
            resp = car_response(reader, walked, req.query, dups=dups,
                                prefetcher=self.source.prefetcher)
        else:
            resp = await self._deserialized(reader, req, walked)
        if kind is not None and "format" not in req.query:
            # Negotiated by Accept: name the URL that gives this response by itself
            # (path-gateway "Content-Location"), so caches keep it apart.
            fmt = "raw" if kind == RAW_TYPE else "car"
            query = f"{req.query_string}&format={fmt}" if req.query_string else f"format={fmt}"
            resp = dataclasses.replace(resp, headers=(
                *resp.headers, ("Content-Location", f"{req.path}?{query}")))
        etag = dict(resp.headers).get("ETag")
        if etag and resp.status in (200, 206) and _etag_matches(req, etag):
            keep = {"ETag", "Cache-Control", "X-Ipfs-Path", "X-Ipfs-Roots", "Vary"}
            return Response(status=304, route=resp.route,
                            headers=tuple((k, v) for k, v in resp.headers if k in keep))
        return resp

    async def _deserialized(self, reader: BlockReader, req: Request, walked) -> Response:
        target = walked.target
        if target.kind == "dir":
            return await directory_response(reader, self.source.prefetcher, req, walked)
        if target.kind == "file":
            if req.path.endswith("/"):
                # A file named with a trailing slash: answered at the slash-less URL.
                location = req.path.rstrip("/") + (
                    f"?{req.query_string}" if req.query_string else "")
                return Response(status=301, route="redirect", headers=(
                    ("Location", location), ("Cache-Control", IMMUTABLE)))
            name = walked.path.segments[-1] if walked.path.segments else None
            return await file_response(reader, self.source.prefetcher, req, walked,
                                       target.cid, target.size or 0, name)
        if target.kind == "symlink":
            raise HttpError(501, f"{walked.shown} is a symlink; the gateway does not "
                            "follow symlinks (use format=raw or format=car)")
        raise HttpError(406, f"{walked.shown} is {target.cid.codec.name}, not UnixFS: "
                        "ask for it with format=raw or format=car")
