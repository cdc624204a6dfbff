"""The exporter: ``cat`` (a file's bytes, ranges fetch only the blocks they
overlap), ``walk_tree`` (a directory tree, directory before children) and
``stat``, as ``async def`` over a ``get_block`` coroutine (no trio).

Imports ``data``, ``hamt``, ``cid``, ``dag`` and ``dagpb``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Final, Literal

from pinfold.blockstore import dagpb
from pinfold.blockstore.cid import CID, DAG_PB, IDENTITY, RAW
from pinfold.blockstore.dag import walk
from pinfold.blockstore.errors import DecodeError, NotAFile
from pinfold.blockstore.unixfs.data import (
    IDENTITY_MAX_BYTES,
    DataType,
    GetBlock,
    UnixFSData,
    UnixTime,
    decode_data,
)
from pinfold.blockstore.unixfs.hamt import prefix_width



async def _load(get_block: GetBlock, cid: CID) -> bytes:
    """The block's bytes; identity CIDs yield their inline data without a read."""
    if cid.hashfun.code == IDENTITY:
        data = bytes(cid.raw_digest)
        if len(data) > IDENTITY_MAX_BYTES:
            raise DecodeError(
                f"identity CID {cid} inlines {len(data)} bytes, more than {IDENTITY_MAX_BYTES}"
            )
        return data
    return await get_block(cid)


def _file_node(node: dagpb.PBNode, ufs: UnixFSData, cid: CID) -> tuple[bytes, tuple[int, ...], int]:
    """Validate a dag-pb File/Raw node: ``(inline bytes, blocksizes, total file bytes)``."""
    if len(ufs.blocksizes) != len(node.links):
        raise DecodeError(
            f"UnixFS file node {cid}: {len(node.links)} links but {len(ufs.blocksizes)} blocksizes"
        )
    for i, link in enumerate(node.links):
        if link.name:
            raise DecodeError(f"UnixFS file node {cid}: link #{i} has a name ({link.name!r})")
    inline = ufs.data or b""
    total = len(inline) + sum(ufs.blocksizes)
    if ufs.filesize is not None and ufs.filesize != total:
        raise DecodeError(
            f"UnixFS file node {cid}: filesize {ufs.filesize} but data + blocksizes = {total}"
        )
    return inline, ufs.blocksizes, total


_KIND_NAMES: Final = {
    DataType.DIRECTORY: "a directory",
    DataType.HAMT_SHARD: "a HAMT-sharded directory",
    DataType.SYMLINK: "a symlink",
    DataType.METADATA: "a metadata node",
}


async def cat(
    get_block: GetBlock,
    root: CID,
    offset: int = 0,
    length: int | None = None,
    *,
    prefetch: Callable[[list[CID]], object] | None = None,
) -> AsyncIterator[bytes]:
    """Yield the bytes of the UnixFS file ``root``, in order, for ``[offset, offset+length)``.

    Only blocks whose content overlaps the range are read: ``blocksizes`` in
    each interior node tell which children to skip. Raw and dag-pb leaves,
    legacy ``Raw``-type nodes, inline data in interior nodes and identity CIDs
    are handled. A range past the end yields nothing (like ``head -c``).

    Args:
        get_block: ``await get_block(cid) -> bytes`` (raises ``BlockNotFound``
            or whatever the source raises for missing blocks).
        root: the file's root CID.
        offset: first byte to return, >= 0.
        length: most bytes to return, >= 0; ``None`` = to the end.
        prefetch: called, as soon as an interior node is decoded, with the
            CIDs of its children that this read will fetch, in read order; a
            driver can want them from peers ahead of time. Its return value
            is ignored; it must not block.

    Yields:
        Non-empty ``bytes`` pieces, at most one block's worth each.

    Raises:
        ValueError: negative ``offset`` or ``length``.
        NotAFile: ``root`` is a directory, symlink, or not UnixFS (e.g. dag-cbor).
        DecodeError: a malformed node, or sizes that disagree (blocksizes vs
            links, filesize vs content, a child's size vs its parent's blocksize).
    """
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    if length is not None and length < 0:
        raise ValueError(f"length must be >= 0, got {length}")
    if length == 0:
        return
    end: int | None = None if length is None else offset + length
    # Stack of (cid, file position of its first byte, size its parent says it has).
    stack: list[tuple[CID, int, int | None]] = [(root, 0, None)]
    is_root = True
    while stack:
        cid, start, expected = stack.pop()
        block = await _load(get_block, cid)
        codec = cid.codec.code
        if codec == RAW:
            if expected is not None and len(block) != expected:
                raise DecodeError(
                    f"raw leaf {cid} has {len(block)} bytes, its parent says {expected}"
                )
            if is_root:
                end = len(block) if end is None else min(end, len(block))
                is_root = False
            lo = max(offset - start, 0)
            hi = min(end - start, len(block))
            if lo < hi:
                yield block if (lo == 0 and hi == len(block)) else block[lo:hi]
            continue
        if codec != DAG_PB:
            if is_root:
                raise NotAFile(f"{cid} is {cid.codec.name}, not a UnixFS file")
            raise DecodeError(
                f"file chunk {cid} has codec {cid.codec.name}; expected raw or dag-pb"
            )
        node = dagpb.decode(block)
        ufs = decode_data(node.data)
        if ufs.type not in (DataType.FILE, DataType.RAW):
            what = _KIND_NAMES.get(ufs.type, ufs.type.name)
            if is_root:
                raise NotAFile(f"{cid} is {what}, not a file")
            raise DecodeError(f"file chunk {cid} is {what}")
        inline, sizes, total = _file_node(node, ufs, cid)
        if expected is not None and total != expected:
            raise DecodeError(f"file node {cid} holds {total} bytes, its parent says {expected}")
        if is_root:
            end = total if end is None else min(end, total)
            is_root = False
        lo = max(offset - start, 0)
        hi = min(end - start, len(inline))
        if lo < hi:
            yield inline[lo:hi]
        pos = start + len(inline)
        wanted: list[tuple[CID, int, int | None]] = []
        for link, size in zip(node.links, sizes):
            if pos >= end:
                break
            if pos + size > offset and size > 0:
                wanted.append((link.hash, pos, size))
            pos += size
        if prefetch is not None and wanted:
            prefetch([cid for cid, _, _ in wanted])
        stack.extend(reversed(wanted))


@dataclass(frozen=True, slots=True, kw_only=True)
class Entry:
    """One entry of a UnixFS tree, as ``walk_tree`` yields it.

    Attributes:
        path: ``""`` for the root, else the '/'-separated path below it.
            Every name is checked: never empty, ``.``, ``..``, nor holding
            ``/`` or NUL, so joining it under a target directory is safe.
        kind: ``"file"``, ``"dir"`` or ``"symlink"``.
        cid: the entry's CID.
        size: file bytes (file), target length in bytes (symlink), ``None`` (dir).
        target: the symlink target, else ``None``.
        mode: UnixFS mode bits if recorded, else ``None``.
        mtime: UnixFS mtime if recorded, else ``None``.
    """

    path: str
    kind: Literal["file", "dir", "symlink"]
    cid: CID
    size: int | None
    target: str | None = None
    mode: int | None = None
    mtime: UnixTime | None = None


def _check_name(name: str | None, dir_cid: CID) -> str:
    if not name or name in (".", "..") or "/" in name or "\x00" in name:
        raise DecodeError(f"directory {dir_cid} has an unsafe entry name {name!r}")
    return name


async def _hamt_entries(
    get_block: GetBlock, cid: CID, node: dagpb.PBNode, ufs: UnixFSData
) -> list[tuple[str, CID, int | None]]:
    """Entries of a HAMT-sharded directory as ``(name, cid, link Tsize)``, in shard
    link order (sub-shards inline)."""
    out: list[tuple[str, CID, int | None]] = []
    stack: list[tuple[CID, dagpb.PBNode, UnixFSData, int]] = [(cid, node, ufs, 0)]
    while stack:
        shard_cid, shard, data, i = stack.pop()
        assert data.fanout is not None  # decode_data checked it
        width = prefix_width(data.fanout)
        for j in range(i, len(shard.links)):
            link = shard.links[j]
            name = link.name or ""
            if len(name) < width:
                raise DecodeError(
                    f"HAMT shard {shard_cid}: link name {name!r} shorter than its prefix"
                )
            if len(name) == width:
                sub_block = await _load(get_block, link.hash)
                sub = dagpb.decode(sub_block)
                sub_data = decode_data(sub.data)
                if sub_data.type != DataType.HAMT_SHARD:
                    raise DecodeError(
                        f"HAMT shard {shard_cid}: sub-shard {link.hash} is not a shard"
                    )
                stack.append((shard_cid, shard, data, j + 1))
                stack.append((link.hash, sub, sub_data, 0))
                break
            out.append((name[width:], link.hash, link.tsize))
    return out


async def walk_tree(get_block: GetBlock, root: CID) -> AsyncIterator[Entry]:
    """Yield every entry of the UnixFS tree ``root``, a directory before its children.

    Order is depth-first, children in link order (name order for directories
    written by Kubo, Helia or pinfold), so a consumer can create each
    directory before writing into it. A file's own blocks are not walked
    (only its root is read, for its size). Within one directory the first of
    several entries with the same name wins, as the UnixFS spec says.

    Raises:
        NotAFile: never; a root that is a file yields one ``Entry(path="")``.
        DecodeError: malformed nodes, an unsafe entry name, or a node that is
            not UnixFS (dag-cbor, a Metadata node).
    """
    stack: list[tuple[str, CID]] = [("", root)]
    while stack:
        path, cid = stack.pop()
        block = await _load(get_block, cid)
        codec = cid.codec.code
        if codec == RAW:
            yield Entry(path=path, kind="file", cid=cid, size=len(block))
            continue
        if codec != DAG_PB:
            raise DecodeError(f"{path or cid}: {cid} is {cid.codec.name}, not UnixFS")
        node = dagpb.decode(block)
        ufs = decode_data(node.data)
        meta = {"mode": ufs.mode, "mtime": ufs.mtime}
        if ufs.type in (DataType.FILE, DataType.RAW):
            _, _, total = _file_node(node, ufs, cid)
            yield Entry(path=path, kind="file", cid=cid, size=total, **meta)
        elif ufs.type == DataType.SYMLINK:
            try:
                target = (ufs.data or b"").decode("utf-8")
            except UnicodeDecodeError:
                raise DecodeError(f"symlink {cid}: target is not UTF-8") from None
            yield Entry(
                path=path, kind="symlink", cid=cid, size=len(ufs.data or b""), target=target, **meta
            )
        elif ufs.type in (DataType.DIRECTORY, DataType.HAMT_SHARD):
            yield Entry(path=path, kind="dir", cid=cid, size=None, **meta)
            if ufs.type == DataType.DIRECTORY:
                children = [(link.name, link.hash) for link in node.links]
            else:
                children = [(name, child) for name, child, _ in
                            await _hamt_entries(get_block, cid, node, ufs)]
            names: set[str] = set()
            todo = []
            for name, child in children:
                name = _check_name(name, cid)
                if name in names:
                    continue
                names.add(name)
                todo.append((f"{path}/{name}" if path else name, child))
            stack.extend(reversed(todo))
        else:
            raise DecodeError(f"{path or cid}: {cid} is a UnixFS {ufs.type.name} node")


@dataclass(frozen=True, slots=True, kw_only=True)
class Stat:
    """What ``stat`` reports about a UnixFS DAG.

    Attributes:
        kind: ``"file"``, ``"dir"`` or ``"symlink"``.
        size: file bytes (file), total bytes of every file below (dir),
            target length (symlink).
        blocks: distinct blocks in the DAG (identity CIDs excluded).
        entries: entries below a directory (files, dirs, symlinks), 0 otherwise.
    """

    kind: Literal["file", "dir", "symlink"]
    size: int
    blocks: int
    entries: int = 0


async def stat(get_block: GetBlock, cid: CID) -> Stat:
    """Size and block count of the UnixFS DAG ``cid``.

    Reads every interior block of the DAG (raw leaves are counted, not read).

    Raises:
        DecodeError: as ``walk_tree``; ``BlockNotFound`` as ``get_block`` raises it.
    """
    kind: Literal["file", "dir", "symlink"] = "file"
    size = 0
    entries = -1
    async for entry in walk_tree(get_block, cid):
        entries += 1
        if entry.path == "":
            kind = entry.kind
        if entry.kind != "dir" and entry.size is not None:
            size += entry.size
    blocks = 0
    async for _ in walk(get_block, cid):
        blocks += 1
    return Stat(kind=kind, size=size, blocks=blocks, entries=entries)
