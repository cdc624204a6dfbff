"""Content paths: ``CID/path/in/dag`` parsed, and resolved through UnixFS
directories (basic and HAMT-sharded) to the CID they name.

One resolver for every reader: the CLI, the Python client, the gateway and
fsspec all go through ``parse_path`` and ``resolve``. Plain ``async def`` over
a ``get_block`` coroutine like ``reader``; no trio.

Spec: ipfs/specs ``src/unixfs.md`` ("Paths", "HAMTDirectory") and
``src/http-gateways/path-gateway.md`` (the ``/ipfs/{cid}/{path}`` form).

Imports ``cid``, ``dagpb``, ``errors``, ``unixfs.data``, ``unixfs.hamt`` and
``unixfs.reader``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import unquote

from pinfold.blockstore import dagpb
from pinfold.blockstore.cid import CID, DAG_PB, IDENTITY, RAW, parse_cid
from pinfold.blockstore.errors import BlockstoreError, DecodeError, InvalidCID
from pinfold.blockstore.unixfs.data import (
    IDENTITY_MAX_BYTES,
    DataType,
    GetBlock,
    ReadLocal,
    UnixFSData,
    decode_data,
)
from pinfold.blockstore.unixfs.hamt import (
    MURMUR3_X64_64,
    bucket_index,
    hamt_hash,
    link_prefix,
    prefix_width,
)
from pinfold.blockstore.unixfs.reader import _check_name, _hamt_entries

#: Most path segments resolved in one path (a DAG deeper than this is hostile).
MAX_SEGMENTS: Final = 256
#: Entries whose root blocks ``list_dir`` reads in one ``read_local`` call.
LOCAL_BATCH: Final = 1024


class InvalidPath(BlockstoreError, ValueError):
    """A content path could not be parsed: no CID, a bad CID, or an unsafe segment."""

    code = "invalid_path"


class InvalidPathCID(InvalidPath, InvalidCID):
    """A content path whose first segment is not a CID (an ``InvalidCID`` too, with its code)."""

    code = "invalid_cid"


class PathNotFound(BlockstoreError, KeyError):
    """A path segment names no entry of its directory, or goes through a file."""

    code = "path_not_found"

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


@dataclass(frozen=True, slots=True)
class ContentPath:
    """A root CID and the path segments below it.

    Attributes:
        root: the CID the path starts at.
        segments: directory entry names, each non-empty, not ``.``/``..``,
            without ``/`` or NUL; ``()`` names the root itself.
    """

    root: CID
    segments: tuple[str, ...] = ()

    def __str__(self) -> str:
        return "/".join((str(self.root), *self.segments))

    @property
    def ipfs_path(self) -> str:
        """The gateway form, ``/ipfs/{cid}[/{path}]``."""
        return "/ipfs/" + str(self)


def parse_path(text: str) -> ContentPath:
    """Parse ``CID``, ``CID/a/b``, ``/ipfs/CID/a/b`` or ``ipfs://CID/a/b``.

    Empty segments (``CID//a``, a trailing ``/``) are dropped; segments are
    taken literally (no percent-decoding; ``parse_url_path`` does that).

    Raises:
        InvalidPath: empty text, a bad CID (``InvalidPathCID``, the message names it), or a ``.``,
            ``..`` or NUL-holding segment.
    """
    if not isinstance(text, str) or not text.strip():
        raise InvalidPath("empty content path; expected CID or CID/path/in/dag")
    # Only leading blanks go: a name may end in a space (``CID/a ``); a bare
    # CID's trailing blanks are dropped by ``parse_cid``.
    rest = text.lstrip()
    if rest.startswith("ipfs://"):
        rest = rest[len("ipfs://"):]
    elif rest.startswith("/ipfs/"):
        rest = rest[len("/ipfs/"):]
    elif rest.startswith("/"):
        raise InvalidPath(f"content path {text!r}: only /ipfs/ paths are supported")
    head, _, tail = rest.partition("/")
    try:
        root = parse_cid(head)
    except (InvalidCID, ValueError) as exc:
        if not tail and rest == text.lstrip():  # a bare CID: the CID's own message
            raise InvalidPathCID(str(exc)) from None
        raise InvalidPathCID(f"content path {text!r}: {head!r} is not a CID ({exc})") from None
    segments = tuple(s for s in tail.split("/") if s)
    for s in segments:
        if s in (".", "..") or "\x00" in s:
            raise InvalidPath(f"content path {text!r}: segment {s!r} is not allowed")
    if len(segments) > MAX_SEGMENTS:
        raise InvalidPath(f"content path {text!r}: more than {MAX_SEGMENTS} segments")
    return ContentPath(root, segments)


def parse_url_path(url_path: str) -> ContentPath:
    """Parse a gateway URL path ``/ipfs/{cid}/{path}``, percent-decoding each segment.

    Raises:
        InvalidPath: as ``parse_path``; also a path not under ``/ipfs/``.
    """
    if not url_path.startswith("/ipfs/"):
        raise InvalidPath(f"{url_path!r} is not an /ipfs/ path")
    parts = url_path[len("/ipfs/"):].split("/")
    decoded = [parts[0]] + [unquote(p, errors="strict") for p in parts[1:]]
    if any("/" in p for p in decoded[1:]):
        raise InvalidPath(f"{url_path!r}: a segment holds an encoded '/'")
    return parse_path("/".join(decoded))


@dataclass(frozen=True, slots=True, kw_only=True)
class Resolved:
    """Where a content path ends.

    Attributes:
        cid: the CID the path names.
        kind: ``"file"``, ``"dir"``, ``"symlink"`` or ``"other"`` (a node
            that is not UnixFS, e.g. dag-cbor; only a bare root can be one).
        size: file bytes (file), target bytes (symlink), ``None`` otherwise.
        path_blocks: CIDs of the blocks read to get there, root first, the
            target's own block last (a trustless gateway sends these).
    """

    cid: CID
    kind: Literal["file", "dir", "symlink", "other"]
    size: int | None
    path_blocks: tuple[CID, ...]


async def _load(get_block: GetBlock, cid: CID) -> bytes:
    if cid.hashfun.code == IDENTITY:
        data = bytes(cid.raw_digest)
        if len(data) > IDENTITY_MAX_BYTES:
            raise DecodeError(f"identity CID {cid} inlines {len(data)} bytes")
        return data
    return await get_block(cid)


def _kind(cid: CID, block: bytes) -> tuple[Literal["file", "dir", "symlink", "other"], int | None, dagpb.PBNode | None, UnixFSData | None]:
    """``(kind, size, node, data)`` of one block."""
    if cid.codec.code == RAW:
        return "file", len(block), None, None
    if cid.codec.code != DAG_PB:
        return "other", None, None, None
    node = dagpb.decode(block)
    ufs = decode_data(node.data)
    if ufs.type in (DataType.FILE, DataType.RAW):
        size = ufs.filesize
        if size is None:
            size = len(ufs.data or b"") + sum(ufs.blocksizes)
        return "file", size, node, ufs
    if ufs.type == DataType.SYMLINK:
        return "symlink", len(ufs.data or b""), node, ufs
    if ufs.type in (DataType.DIRECTORY, DataType.HAMT_SHARD):
        return "dir", None, node, ufs
    return "other", None, node, ufs


async def _hamt_child(
    get_block: GetBlock, shard_cid: CID, node: dagpb.PBNode, ufs: UnixFSData, name: str,
    visited: list[CID],
) -> CID | None:
    """The CID of entry ``name`` of a HAMT-sharded directory, or ``None``.

    The hash is consumed ``log2(fanout)`` bits at a time from its most
    significant end; each level's link names start with the bucket index as
    upper-case hex, padded to the width of ``fanout - 1``.
    """
    h = hamt_hash(name)
    used = 0
    while True:
        if ufs.hash_type is not None and ufs.hash_type != MURMUR3_X64_64:
            raise DecodeError(f"HAMT shard {shard_cid}: hash function {ufs.hash_type:#x} is not murmur3")
        fanout = ufs.fanout or 256
        bits = fanout.bit_length() - 1
        if fanout != 1 << bits:
            raise DecodeError(f"HAMT shard {shard_cid}: fanout {fanout} is not a power of two")
        try:
            index = bucket_index(h, used, bits)
        except ValueError:
            raise DecodeError(f"HAMT shard {shard_cid}: deeper than a 64-bit hash allows") from None
        used += bits
        width = prefix_width(fanout)
        prefix = link_prefix(index, fanout)
        sub: CID | None = None
        for link in node.links:
            lname = link.name or ""
            if not lname.startswith(prefix):
                continue
            if len(lname) == width:
                sub = link.hash
                break
            if lname[width:] == name:
                return link.hash
        if sub is None:
            return None
        block = await _load(get_block, sub)
        visited.append(sub)
        node = dagpb.decode(block)
        ufs = decode_data(node.data)
        if ufs.type != DataType.HAMT_SHARD:
            raise DecodeError(f"HAMT shard {shard_cid}: sub-shard {sub} is not a shard")
        shard_cid = sub


async def resolve(get_block: GetBlock, path: ContentPath | str) -> Resolved:
    """Follow ``path`` from its root through UnixFS directories.

    Reads one block per segment (plus the HAMT shards on the way); a file's
    own blocks are not read beyond its root. Symlinks inside the path are not
    followed (like Kubo's gateway); a symlink at the end is returned as one.

    Raises:
        InvalidPath: ``path`` is a string that does not parse.
        PathNotFound: a segment names no entry, or the path goes through a
            file, symlink or non-UnixFS node (the message names the segment).
        DecodeError: a malformed node on the way.
        BlockNotFound: whatever ``get_block`` raises for a missing block.
    """
    resolved, _, _ = await _resolve(get_block, path)
    return resolved


async def _resolve(get_block: GetBlock, path: ContentPath | str
                   ) -> tuple[Resolved, dagpb.PBNode | None, UnixFSData | None]:
    """``resolve``, and the target's decoded node and UnixFS data (when dag-pb)."""
    if isinstance(path, str):
        path = parse_path(path)
    cid = path.root
    visited: list[CID] = []
    block = await _load(get_block, cid)
    visited.append(cid)
    kind, size, node, ufs = _kind(cid, block)
    for i, segment in enumerate(path.segments):
        where = "/".join((str(path.root), *path.segments[:i]))
        if kind != "dir":
            raise PathNotFound(f"{where} is a {kind if kind != 'other' else 'non-UnixFS node'}, "
                               f"not a directory; cannot look up {segment!r}")
        assert node is not None and ufs is not None
        child: CID | None = None
        if ufs.type == DataType.DIRECTORY:
            for link in node.links:
                if link.name == segment:
                    child = link.hash
                    break
        else:
            child = await _hamt_child(get_block, cid, node, ufs, segment, visited)
        if child is None:
            raise PathNotFound(f"no entry {segment!r} in directory {where}")
        cid = child
        block = await _load(get_block, cid)
        visited.append(cid)
        kind, size, node, ufs = _kind(cid, block)
    return Resolved(cid=cid, kind=kind, size=size, path_blocks=tuple(visited)), node, ufs


@dataclass(frozen=True, slots=True, kw_only=True)
class DirEntry:
    """One entry of a directory, as ``list_dir`` gives it.

    Attributes:
        name: the entry's name in its directory.
        cid: the entry's CID.
        kind: as ``Resolved.kind``.
        size: file bytes, symlink target bytes, else ``None``.
        tsize: the link's Tsize (bytes of the whole sub-DAG, as the writer said).
    """

    name: str
    cid: CID
    kind: Literal["file", "dir", "symlink", "other"]
    size: int | None
    tsize: int | None


def _entry_kind(cid: CID, block: bytes | memoryview
                ) -> tuple[Literal["file", "dir", "symlink", "other"], int | None]:
    """``(kind, size)`` of an entry from its root block (a raw block's is its length)."""
    if cid.codec.code == RAW:
        return "file", len(block)
    kind, size, _, _ = _kind(cid, bytes(block))
    return kind, size


async def list_dir(get_block: GetBlock, cid: CID, *,
                   read_local: ReadLocal | None = None) -> list[DirEntry]:
    """The entries of the UnixFS directory ``cid`` (basic or HAMT-sharded), in link order.

    Reads the directory's blocks and each entry's root block (for its kind
    and size). Within one directory the first of several same-named entries
    wins (UnixFS spec). Entry names are all checked before any entry's block
    is read. With ``read_local``, the entries' root blocks that are local are
    read ``LOCAL_BATCH`` at a time in one store read each (a raw block is not
    even copied); the others through ``get_block``.

    Raises:
        PathNotFound: ``cid`` is not a directory.
        DecodeError: a malformed node or an unsafe entry name.
    """
    block = await _load(get_block, cid)
    kind, _, node, ufs = _kind(cid, block)
    if kind != "dir":
        raise PathNotFound(f"{cid} is a {kind}, not a directory")
    assert node is not None and ufs is not None
    return await _entries(get_block, cid, node, ufs, read_local)


async def resolve_listing(get_block: GetBlock, path: ContentPath | str, *,
                          read_local: ReadLocal | None = None
                          ) -> tuple[Resolved, list[DirEntry] | None]:
    """``resolve`` then, when the path names a directory, its ``list_dir`` entries
    (else ``None``), decoding the directory's root block once for both.

    Raises:
        As ``resolve`` and ``list_dir``.
    """
    resolved, node, ufs = await _resolve(get_block, path)
    if resolved.kind != "dir":
        return resolved, None
    assert node is not None and ufs is not None
    return resolved, await _entries(get_block, resolved.cid, node, ufs, read_local)


async def _entries(get_block: GetBlock, cid: CID, node: dagpb.PBNode, ufs: UnixFSData,
                   read_local: ReadLocal | None) -> list[DirEntry]:
    """``list_dir`` of the directory ``cid`` whose root block decodes to ``node``/``ufs``."""
    links: list[tuple[str | None, CID, int | None]]
    if ufs.type == DataType.DIRECTORY:
        links = [(link.name, link.hash, link.tsize) for link in node.links]
    else:
        links = list(await _hamt_entries(get_block, cid, node, ufs))
    entries: list[tuple[str, CID, int | None]] = []
    seen: set[str] = set()
    for name, child, tsize in links:
        name = _check_name(name, cid)
        if name not in seen:
            seen.add(name)
            entries.append((name, child, tsize))
    kinds: list[tuple[Literal["file", "dir", "symlink", "other"], int | None] | None]
    # A raw child is a file whose size is its block's, which its link's Tsize
    # states: nothing to read (or fetch from a peer) for it.
    kinds = [("file", tsize) if child.codec.code == RAW and tsize is not None else None
             for _, child, tsize in entries]
    if read_local is not None:
        batchable = [i for i, (_, child, _) in enumerate(entries)
                     if kinds[i] is None and child.hashfun.code != IDENTITY]
        for lo in range(0, len(batchable), LOCAL_BATCH):
            part = batchable[lo:lo + LOCAL_BATCH]
            got = read_local([entries[i][1] for i in part], _entry_kind)
            for i, k in zip(part, got):
                kinds[i] = k
    out: list[DirEntry] = []
    for (name, child, tsize), known in zip(entries, kinds):
        child_kind, size = known if known is not None else _entry_kind(
            child, await _load(get_block, child))
        out.append(DirEntry(name=name, cid=child, kind=child_kind, size=size, tsize=tsize))
    return out
