"""Deserialized responses (ipfs/specs ``http-gateways/path-gateway.md``): a
UnixFS file (content type, ``Range``), and a directory (the 301 to its
trailing-slash form, its ``index.html``, else a generated listing).

A file streams block by block through ``unixfs.reader.cat``: a range reads,
and fetches from peers, only the blocks that overlap it.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from urllib.parse import quote

from pinfold.blockstore.cid import CID
from pinfold.blockstore.errors import DecodeError
from pinfold.blockstore.unixfs.paths import ContentPath, PathNotFound, list_dir, resolve
from pinfold.blockstore.unixfs.reader import cat

from pinfold.daemon.gateway.content import BlockReader, Walked
from pinfold.daemon.gateway.http import (
    IMMUTABLE,
    HttpError,
    Request,
    Response,
    Send,
    path_header,
)
from pinfold.daemon.gateway.listing import LISTING_VERSION, render_listing
from pinfold.daemon.gateway.mime import SNIFF_BYTES, content_type
from pinfold.daemon.gateway.ranges import Unsatisfiable, parse_range

Prefetcher = Callable[[], AbstractAsyncContextManager[Callable[[list[CID]], None]]]


def _common(walked: Walked) -> tuple[tuple[str, str], ...]:
    return (("Cache-Control", IMMUTABLE), ("X-Ipfs-Path", path_header(walked.shown)),
            ("X-Ipfs-Roots", ",".join(map(str, walked.roots))))


def _disposition(req: Request, name: str | None) -> tuple[tuple[str, str], ...]:
    """``Content-Disposition`` for ``?filename=`` / ``?download=true`` (path-gateway spec)."""
    filename = req.query.get("filename") or name
    download = req.query.get("download") == "true"
    if not (download or "filename" in req.query):
        return ()
    kind = "attachment" if download else "inline"
    if not filename:
        return (("Content-Disposition", kind),)
    ascii_name = filename.encode("ascii", "replace").decode().replace('"', "_")
    return (("Content-Disposition",
             f"{kind}; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename)}"),)


async def _head_bytes(get_block: BlockReader, cid: CID) -> bytes:
    out = bytearray()
    async for piece in cat(get_block, cid, 0, SNIFF_BYTES):
        out += piece
    return bytes(out)


async def file_response(get_block: BlockReader, prefetcher: Prefetcher, req: Request,
                        walked: Walked, cid: CID, size: int, name: str | None,
                        *, route: str = "file") -> Response:
    """The file ``cid`` (``size`` bytes) named ``name``: 200, or 206 for a ``Range``.

    The content type comes from the name, else from the first bytes; a range
    that starts past byte 0 of a file with an unknown name is not sniffed (it
    would read a block outside the range) and is ``application/octet-stream``.

    Raises:
        HttpError: 416 for a range that starts past the end; 502 for a malformed
            block; 504 for a block not retrieved in time.
    """
    rng = None
    range_header = req.header("range")
    if range_header:
        try:
            rng = parse_range(range_header, size)
        except Unsatisfiable as exc:
            raise HttpError(416, f"{walked.shown}: {exc}",
                            (("Content-Range", f"bytes */{size}"),)) from None
    ctype = content_type(name, None)
    if ctype == "application/octet-stream" and (rng is None or rng.start == 0):
        try:
            ctype = content_type(name, await _head_bytes(get_block, cid))
        except DecodeError as exc:
            raise HttpError(502, f"{walked.shown}: malformed block: {exc}") from None
    start, length = (rng.start, rng.length) if rng else (0, size)
    etag = f'"{cid}"' if rng is None else f'"{cid}.{rng.start}-{rng.end}"'
    headers = [("Content-Type", ctype), ("ETag", etag), ("Accept-Ranges", "bytes"),
               *_common(walked), *_disposition(req, name)]
    if rng is not None:
        headers.append(("Content-Range", rng.content_range(size)))

    async def body(send: Send) -> None:
        try:
            async with prefetcher() as prefetch:
                async for piece in cat(get_block, cid, start, length, prefetch=prefetch):
                    await send(piece)
        except DecodeError as exc:
            raise HttpError(502, f"{walked.shown}: malformed block: {exc}") from None

    return Response(status=206 if rng else 200, route=route, headers=tuple(headers),
                    body=body, length=length)


async def directory_response(get_block: BlockReader, prefetcher: Prefetcher, req: Request,
                             walked: Walked) -> Response:
    """A directory: 301 to ``.../`` without the slash (Kubo's rule), then its
    ``index.html`` if it has one, else the HTML listing."""
    target = walked.target
    if not req.path.endswith("/"):
        location = req.path + "/" + (f"?{req.query_string}" if req.query_string else "")
        return Response(status=301, route="redirect", headers=(
            ("Location", location), ("Cache-Control", IMMUTABLE),
            ("Content-Type", "text/html; charset=utf-8"),
            ("X-Ipfs-Path", path_header(walked.shown))),
            body=f'<a href="{location}">Moved Permanently</a>.\n'.encode())
    try:
        index = await resolve(get_block, ContentPath(target.cid, ("index.html",)))
    except PathNotFound:
        index = None
    except DecodeError as exc:
        raise HttpError(502, f"{walked.shown}: malformed directory: {exc}") from None
    if index is not None and index.kind == "file":
        return await file_response(get_block, prefetcher, req, walked, index.cid,
                                   index.size or 0, "index.html", route="index")
    try:
        # Entries' root blocks that are local: LOCAL_BATCH to one store read, as `ls`.
        entries = await list_dir(get_block, target.cid, read_local=get_block.source.read_local)
    except DecodeError as exc:
        raise HttpError(502, f"{walked.shown}: malformed directory: {exc}") from None
    page = render_listing(walked.path.ipfs_path + "/", str(target.cid), entries)
    return Response(status=200, route="directory", body=page, headers=(
        ("Content-Type", "text/html; charset=utf-8"),
        ("ETag", f'"DirIndex-{LISTING_VERSION}_CID-{target.cid}"'), *_common(walked)))
