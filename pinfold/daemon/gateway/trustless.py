"""Trustless responses (ipfs/specs ``http-gateways/trustless-gateway.md``):
one raw block (``application/vnd.ipld.raw``, the block a path ends at) and CARv1 streams
(``application/vnd.ipld.car``) with ``dag-scope`` and ``entity-bytes``.

A CAR holds the blocks that resolve the path first (root to target), then the
blocks the scope asks for, in depth-first pre-order (``order=dfs``), each
once unless the client asked for ``dups=y``; identity CIDs never. Blocks are
written as they are read, so the response streams with the client's pace.
"""

from __future__ import annotations

import hashlib
from typing import Final

from pinfold.blockstore import car as carfmt
from pinfold.blockstore import dagpb
from pinfold.blockstore.cid import CID, DAG_PB, IDENTITY
from pinfold.blockstore.dag import walk_blocks
from pinfold.blockstore.errors import DecodeError
from pinfold.blockstore.unixfs import reader as unixfs_reader
from pinfold.blockstore.unixfs.data import DataType, decode_data

from pinfold.daemon.gateway.content import BlockReader, Walked
from pinfold.daemon.gateway.http import (
    IMMUTABLE,
    HttpError,
    Request,
    Response,
    Send,
    path_header,
)
from pinfold.daemon.gateway.ranges import (
    ByteRange,
    Unsatisfiable,
    entity_bytes_bounds,
    parse_entity_bytes,
    parse_range,
)

RAW_TYPE: Final = "application/vnd.ipld.raw"
CAR_TYPE: Final = "application/vnd.ipld.car"
SCOPES: Final = ("block", "entity", "all")
#: CAR bytes gathered before one write: small blocks share a send, big ones go alone.
CAR_WRITE_BYTES: Final = 256 * 1024


def car_params(accept: str, query: dict[str, str]) -> bool:
    """Check the CAR variant asked for (Accept parameters, ``car-*`` query); returns
    whether duplicates are wanted (``dups=y``).

    Raises:
        HttpError: 400 for a version other than 1 or an order other than dfs/unk.
    """
    params: dict[str, str] = {}
    for part in accept.split(","):
        fields = [f.strip() for f in part.split(";")]
        if fields[0].lower() == CAR_TYPE:
            for f in fields[1:]:
                k, _, v = f.partition("=")
                params[k.strip().lower()] = v.strip().strip('"').lower()
            break
    for key in ("version", "order", "dups"):
        if f"car-{key}" in query:
            params[key] = query[f"car-{key}"].lower()
    if params.get("version", "1") != "1":
        raise HttpError(400, f"CAR version {params['version']} is not supported; only version=1")
    if params.get("order", "dfs") not in ("dfs", "unk"):
        raise HttpError(400, f"CAR order {params['order']} is not supported; only order=dfs")
    if params.get("dups", "n") not in ("y", "n"):
        raise HttpError(400, f"CAR dups={params['dups']}: must be y or n")
    return params.get("dups", "n") == "y"


async def raw_response(get_block: BlockReader, walked: Walked, req: Request) -> Response:
    """``/ipfs/{cid}[/path]?format=raw``: the block the path ends at, as stored (its
    hash matches ``X-Ipfs-Roots``' last CID); a ``Range`` gives 206 of those bytes.

    The trustless spec serves raw blocks by CID only; the path gateway (path-gateway
    "Response Payload", Kubo, gateway-conformance ``TestGatewayBlock``) resolves the
    path first and returns its last element's block, which is what this does.
    ETag ``"CID.raw"`` of that block (``"CID.raw.START-END"`` for a range), the file
    name ``CID.bin`` unless ``?filename=`` names one.

    Raises:
        HttpError: 416 for a range that starts past the block's end; 504 as
            ``BlockReader``.
    """
    cid = walked.target.cid
    data = await get_block(cid)  # one block, also for HEAD (its Content-Length)
    rng = None
    if req.header("range"):
        try:
            rng = parse_range(req.header("range"), len(data))
        except Unsatisfiable as exc:
            raise HttpError(416, f"{walked.shown}?format=raw: {exc}",
                            (("Content-Range", f"bytes */{len(data)}"),)) from None
    name = (req.query.get("filename") or f"{cid}.bin").encode("ascii", "replace").decode()
    headers = [("Content-Type", RAW_TYPE), ("Cache-Control", IMMUTABLE),
               ("ETag", f'"{cid}.raw"' if rng is None else f'"{cid}.raw.{rng.start}-{rng.end}"'),
               ("X-Content-Type-Options", "nosniff"), ("Accept-Ranges", "bytes"),
               ("Content-Disposition", f'attachment; filename="{name.replace(chr(34), "_")}"'),
               ("X-Ipfs-Path", path_header(walked.shown)),
               ("X-Ipfs-Roots", ",".join(map(str, walked.roots))), ("Vary", "Accept")]
    if rng is None:
        return Response(status=200, route="raw", body=data, headers=tuple(headers))
    headers.append(("Content-Range", rng.content_range(len(data))))
    return Response(status=206, route="raw", body=data[rng.start:rng.end + 1],
                    headers=tuple(headers))


async def _dir_shards(get_block: BlockReader, cid: CID, emit) -> None:
    """Emit a directory's own blocks: its node and, when HAMT-sharded, every
    sub-shard (not the entries' blocks), in DFS pre-order."""
    data = await get_block(cid)
    await emit(cid, data)
    if cid.codec.code != DAG_PB:
        return
    node = dagpb.decode(data)
    ufs = decode_data(node.data)
    if ufs.type != DataType.HAMT_SHARD:
        return
    width = len(f"{(ufs.fanout or 256) - 1:X}")
    for link in node.links:
        if len(link.name or "") == width:
            await _dir_shards(get_block, link.hash, emit)


def _is_dir_or_file(kind: str) -> bool:
    return kind in ("dir", "file")


def entity_range(walked: Walked, query: dict[str, str]) -> tuple[str, ByteRange | None, bool]:
    """``(scope, range, ranged)`` of a CAR request: the scope to send, the byte range of
    the target file (``entity-bytes``), and whether ``entity-bytes`` applied.

    Raises:
        HttpError: 400 for an unknown ``dag-scope``, a malformed ``entity-bytes``
            (or one whose FROM is after its TO), or a range wholly outside the file.
    """
    scope = query.get("dag-scope", "all")
    if scope not in SCOPES:
        raise HttpError(400, f"dag-scope={scope!r}: must be one of {', '.join(SCOPES)}")
    text = query.get("entity-bytes")
    if text is None:
        return scope, None, False
    try:  # a malformed or inverted range is refused whatever the target is
        entity_bytes_bounds(text)
    except ValueError as exc:
        raise HttpError(400, str(exc)) from None
    target = walked.target
    if target.kind != "file":  # not a byte array: as dag-scope=entity (spec)
        return "entity", None, False
    size = target.size or 0
    try:
        rng = parse_entity_bytes(text, size)
    except Unsatisfiable as exc:
        raise HttpError(400, f"{walked.shown}: {exc}") from None
    except ValueError as exc:
        raise HttpError(400, str(exc)) from None
    if rng is None:  # empty range: as dag-scope=block (spec)
        return "block", None, True
    return "entity", rng, True


def car_response(get_block: BlockReader, walked: Walked, query: dict[str, str], *,
                 dups: bool, prefetcher) -> Response:
    """``/ipfs/{cid}[/path]?format=car``: the path's blocks, then the scope's.

    A block missing mid-stream ends the response early (the status is sent
    already); the client sees a CAR that does not verify as complete.

    Raises:
        HttpError: 400 as ``entity_range``.
    """
    scope, rng, ranged = entity_range(walked, query)
    target = walked.target
    key = "|".join((walked.path.ipfs_path, scope, f"{rng.start}-{rng.end}" if rng else "",
                    "dups" if dups else ""))
    etag = f'W/"{target.cid}.car.{hashlib.sha256(key.encode()).hexdigest()[:16]}"'

    async def body(send: Send) -> None:
        seen: set[CID] = set()
        pending = bytearray(carfmt.car_header([walked.path.root]))

        async def emit(cid: CID, data: bytes) -> None:
            if cid.hashfun.code == IDENTITY or (not dups and cid in seen):
                return
            seen.add(cid)
            pending.extend(carfmt.car_section(cid, data))
            if len(pending) >= CAR_WRITE_BYTES:
                chunk = bytes(pending)
                pending.clear()
                await send(chunk)

        async def recording(cid: CID) -> bytes:
            data = await get_block(cid)
            await emit(cid, data)
            return data

        for cid in walked.path_blocks[:-1]:
            await emit(cid, await get_block(cid))
        try:
            if scope == "block" or not _is_dir_or_file(target.kind) and scope == "entity":
                await emit(target.cid, await get_block(target.cid))
            elif scope == "entity" and target.kind == "dir":
                await _dir_shards(get_block, target.cid, emit)
            elif scope == "entity" or target.kind == "file":
                # The blocks `cat` reads for the range are exactly the ones that verify it.
                start = rng.start if rng else 0
                length = rng.length if rng else None
                async with prefetcher() as prefetch:
                    async for _ in unixfs_reader.cat(recording, target.cid, start, length,
                                                     prefetch=prefetch):
                        pass
            else:
                async with prefetcher() as prefetch:
                    async for cid, data in walk_blocks(get_block, target.cid,
                                                       prefetch=prefetch):
                        await emit(cid, data)
        except DecodeError as exc:
            raise HttpError(502, f"{walked.shown}: malformed block: {exc}") from None
        if pending:
            await send(bytes(pending))

    ctype = f"{CAR_TYPE}; version=1; order=dfs; dups={'y' if dups else 'n'}"
    return Response(status=200, route="car", body=body, length=None, headers=(
        ("Content-Type", ctype), ("Cache-Control", IMMUTABLE), ("ETag", etag),
        ("X-Content-Type-Options", "nosniff"), ("Accept-Ranges", "none"),
        ("Content-Disposition", f'attachment; filename="{target.cid}.car"'),
        ("X-Ipfs-Path", path_header(walked.shown)),
        ("X-Ipfs-Roots", ",".join(map(str, walked.roots))), ("Vary", "Accept")))
