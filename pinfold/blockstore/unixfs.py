"""UnixFS v1: the Data message, a streaming file importer, directories, and an exporter.

Spec: ipfs/specs ``src/unixfs.md`` (UnixFS), on top of dag-pb (``dagpb.py``).

Importer (sans-IO): ``FileImporter`` turns a byte stream into blocks with a
fixed-size chunker and the *balanced* layout of Kubo (boxo
``ipld/unixfs/importer/balanced``) and js ``ipfs-unixfs-importer``: every leaf
at the same depth, nodes filled left to right with at most ``max_links``
children, the tree only as deep as needed, a one-chunk file is its own root
(the leaf itself), and the empty file is one empty leaf. Same bytes and same
``ImportParams`` give the same root CID as Kubo and Helia; tests/vectors/
holds CIDs produced by the real js importer to prove it.

Exporter: ``cat`` (file bytes, with ranges that fetch only the blocks they
overlap), ``walk_tree`` (a directory tree, directory before children) and
``stat``. They are plain ``async def`` over a ``get_block`` coroutine so the
daemon can back them with the local store and Bitswap; nothing here imports
trio. ``get_block`` is trusted to return bytes that match the CID (the store
and Bitswap verify); this module does not re-hash on read.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Final, Literal

from pinfold.blockstore import dagpb
from pinfold.blockstore.cid import CID, DAG_PB, IDENTITY, MAX_BLOCK_SIZE, RAW, check_block_size
from pinfold.blockstore.dag import walk
from pinfold.blockstore.dagpb import encode_link, new_cid
from pinfold.blockstore.varint import MAX_UINT64, encode_uvarint, read_uvarint
from pinfold.blockstore.errors import DecodeError, NotAFile

__all__ = [
    "IDENTITY_MAX_BYTES",
    "MAX_CHUNK_SIZE",
    "MAX_LINKS",
    "DataType",
    "DirectoryBuilder",
    "Entry",
    "FileImporter",
    "ImportParams",
    "Stat",
    "UnixFSData",
    "UnixTime",
    "cat",
    "decode_data",
    "encode_data",
    "import_bytes",
    "stat",
    "symlink_node",
    "walk_tree",
]

GetBlock = Callable[[CID], Awaitable[bytes]]

#: Largest chunk: 2 MiB - 256 B, so a dag-pb-wrapped leaf still fits in a
#: 2 MiB block (Kubo's chunker limit; ANCHORS.md section 0).
MAX_CHUNK_SIZE: Final = MAX_BLOCK_SIZE - 256
#: Most links a file node may have; 8192 links of ~50 bytes stay far under 2 MiB.
MAX_LINKS: Final = 8192
#: UnixFS spec, "Identity CID Size Limit": readers reject larger inline data.
IDENTITY_MAX_BYTES: Final = 128
#: HAMT fanout limit (UnixFS spec, HAMTDirectory; CVE-2023-23625).
_MAX_FANOUT: Final = 1024


# =========================================================================== Data message


class DataType(enum.IntEnum):
    """``Data.Type`` (UnixFS spec, "dag-pb Node")."""

    RAW = 0
    DIRECTORY = 1
    FILE = 2
    METADATA = 3
    SYMLINK = 4
    HAMT_SHARD = 5


@dataclass(frozen=True, slots=True, kw_only=True)
class UnixTime:
    """``UnixTime``: seconds since the epoch (signed) plus optional nanoseconds.

    Attributes:
        seconds: signed 64-bit seconds.
        nanos: ``FractionalNanoseconds`` in 1..999999999, or ``None`` (absent).
            The spec forbids an on-wire 0; pass ``None`` instead.
    """

    seconds: int
    nanos: int | None = None

    def __post_init__(self) -> None:
        if not -(1 << 63) <= self.seconds < (1 << 63):
            raise ValueError(f"UnixTime.seconds must fit in int64, got {self.seconds}")
        if self.nanos is not None and not 1 <= self.nanos <= 999_999_999:
            raise ValueError(f"UnixTime.nanos must be in 1..999999999 or None, got {self.nanos}")


@dataclass(frozen=True, slots=True, kw_only=True)
class UnixFSData:
    """The UnixFS ``Data`` protobuf message carried in ``PBNode.Data``.

    Attributes:
        type: the node type.
        data: file bytes (File/Raw), symlink target, HAMT bitfield; ``None`` = absent.
        filesize: total file bytes under this node (File/Raw); ``None`` = absent.
        blocksizes: file bytes under each link, one per link, in link order.
        hash_type: HAMT hash function multicodec (0x22 murmur3-x64-64).
        fanout: HAMT fanout.
        mode: POSIX mode bits (UnixFS 1.5), ``None`` = absent.
        mtime: modification time (UnixFS 1.5), ``None`` = absent.
    """

    type: DataType
    data: bytes | None = None
    filesize: int | None = None
    blocksizes: tuple[int, ...] = ()
    hash_type: int | None = None
    fanout: int | None = None
    mode: int | None = None
    mtime: UnixTime | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "type", DataType(self.type))
        if not isinstance(self.blocksizes, tuple):
            object.__setattr__(self, "blocksizes", tuple(self.blocksizes))
        for name in ("filesize", "hash_type", "fanout"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= MAX_UINT64:
                raise ValueError(f"UnixFSData.{name} must be in 0..2**64-1, got {value}")
        for size in self.blocksizes:
            if not 0 <= size <= MAX_UINT64:
                raise ValueError(f"UnixFSData.blocksizes must be in 0..2**64-1, got {size}")
        if self.mode is not None and not 0 <= self.mode <= 0xFFFFFFFF:
            raise ValueError(f"UnixFSData.mode must fit in uint32, got {self.mode}")


def encode_data(msg: UnixFSData) -> bytes:
    """Encode a UnixFS ``Data`` message: fields in field-number order, absent ones omitted.

    ``blocksizes`` are written unpacked (one key each), as Kubo and js do.
    """
    parts = [b"\x08", encode_uvarint(int(msg.type))]
    if msg.data is not None:
        parts += [b"\x12", encode_uvarint(len(msg.data)), msg.data]
    if msg.filesize is not None:
        parts += [b"\x18", encode_uvarint(msg.filesize)]
    for size in msg.blocksizes:
        parts += [b"\x20", encode_uvarint(size)]
    if msg.hash_type is not None:
        parts += [b"\x28", encode_uvarint(msg.hash_type)]
    if msg.fanout is not None:
        parts += [b"\x30", encode_uvarint(msg.fanout)]
    if msg.mode is not None:
        parts += [b"\x38", encode_uvarint(msg.mode)]
    if msg.mtime is not None:
        t = b"\x08" + encode_uvarint(msg.mtime.seconds & MAX_UINT64)  # int64: two's complement varint
        if msg.mtime.nanos is not None:
            t += b"\x15" + msg.mtime.nanos.to_bytes(4, "little")
        parts += [b"\x42", encode_uvarint(len(t)), t]
    return b"".join(parts)


_DATA_FIELDS: Final = {
    1: "Type",
    2: "Data",
    3: "filesize",
    4: "blocksizes",
    5: "hashType",
    6: "fanout",
    7: "mode",
    8: "mtime",
}


def _decode_unixtime(buf: bytes) -> UnixTime:
    pos, end = 0, len(buf)
    seconds: int | None = None
    nanos: int | None = None
    while pos < end:
        key, pos = read_uvarint(buf, pos, what="UnixFS mtime field key")
        field, wt = key >> 3, key & 7
        if field == 1 and wt == 0:
            if seconds is not None:
                raise DecodeError("UnixFS mtime: duplicate Seconds")
            raw, pos = read_uvarint(buf, pos, what="UnixFS mtime Seconds")
            seconds = raw - (1 << 64) if raw >= 1 << 63 else raw
        elif field == 2 and wt == 5:
            if nanos is not None:
                raise DecodeError("UnixFS mtime: duplicate FractionalNanoseconds")
            if pos + 4 > end:
                raise DecodeError("UnixFS mtime: truncated FractionalNanoseconds")
            nanos = int.from_bytes(buf[pos : pos + 4], "little")
            pos += 4
            if not 1 <= nanos <= 999_999_999:
                raise DecodeError(
                    f"UnixFS mtime: FractionalNanoseconds {nanos} outside 1..999999999"
                )
        else:
            raise DecodeError(f"UnixFS mtime: unexpected field {field} with wire type {wt}")
    if seconds is None:
        raise DecodeError("UnixFS mtime: missing Seconds")
    return UnixTime(seconds=seconds, nanos=nanos)


def decode_data(raw: bytes | bytearray | memoryview | None) -> UnixFSData:
    """Decode a UnixFS ``Data`` message strictly.

    Args:
        raw: ``PBNode.Data``.

    Returns:
        The message. ``blocksizes`` is accepted packed or unpacked (both are
        valid protobuf for a repeated uint64).

    Raises:
        DecodeError: data absent, malformed protobuf, unknown field, wrong wire
            type, duplicate singular field, missing or unknown Type, HAMT fanout
            that is not a power of two in 8..1024, or a bad mtime.
    """
    if raw is None:
        raise DecodeError("dag-pb node has no Data field, so it is not a UnixFS node")
    buf = bytes(raw)
    pos, end = 0, len(buf)
    seen: set[int] = set()
    values: dict[str, object] = {}
    blocksizes: list[int] = []
    while pos < end:
        key, pos = read_uvarint(buf, pos, what="UnixFS field key")
        field, wt = key >> 3, key & 7
        name = _DATA_FIELDS.get(field)
        if name is None:
            raise DecodeError(f"UnixFS Data: unknown field {field}")
        if field != 4:
            if field in seen:
                raise DecodeError(f"UnixFS Data: duplicate field {name}")
            seen.add(field)
        if field in (2, 8) or (field == 4 and wt == 2):
            if wt != 2:
                raise DecodeError(
                    f"UnixFS Data: {name} has wire type {wt}, expected length-delimited"
                )
            length, pos = read_uvarint(buf, pos, what=f"UnixFS {name} length")
            if pos + length > end:
                raise DecodeError(f"UnixFS Data: {name} claims {length} bytes, {end - pos} remain")
            chunk = buf[pos : pos + length]
            pos += length
            if field == 2:
                values["data"] = chunk
            elif field == 8:
                values["mtime"] = _decode_unixtime(chunk)
            else:  # packed blocksizes
                p = 0
                while p < len(chunk):
                    size, p = read_uvarint(chunk, p, what="UnixFS packed blocksizes")
                    blocksizes.append(size)
            continue
        if wt != 0:
            raise DecodeError(f"UnixFS Data: {name} has wire type {wt}, expected varint")
        value, pos = read_uvarint(buf, pos, what=f"UnixFS {name}")
        if field == 1:
            try:
                values["type"] = DataType(value)
            except ValueError:
                raise DecodeError(f"UnixFS Data: unknown Type {value}") from None
        elif field == 3:
            values["filesize"] = value
        elif field == 4:
            blocksizes.append(value)
        elif field == 5:
            values["hash_type"] = value
        elif field == 6:
            values["fanout"] = value
        else:
            if value > 0xFFFFFFFF:
                raise DecodeError(f"UnixFS Data: mode {value} does not fit in uint32")
            values["mode"] = value
    if "type" not in values:
        raise DecodeError("UnixFS Data: missing Type")
    msg = UnixFSData(blocksizes=tuple(blocksizes), **values)  # type: ignore[arg-type]
    if msg.type == DataType.HAMT_SHARD:
        fanout = msg.fanout
        if fanout is None or fanout < 8 or fanout > _MAX_FANOUT or fanout & (fanout - 1):
            raise DecodeError(
                f"UnixFS HAMT shard: fanout {fanout} is not a power of two in 8..1024"
            )
    return msg


# =========================================================================== importer


@dataclass(frozen=True, slots=True, kw_only=True)
class ImportParams:
    """How a file is cut into blocks; equal params + equal bytes = equal root CID.

    Attributes:
        chunk_size: bytes a leaf holds, 1..2 MiB-256. Default 1 MiB (Kubo's
            ``unixfs-v1-2025`` profile, Helia).
        cid_version: 0 or 1; the version of every dag-pb node's CID (raw leaves
            are always CIDv1). Default 1.
        raw_leaves: leaves are raw-codec blocks (True) or dag-pb UnixFS File
            nodes (False). CIDv0 cannot name raw blocks, so v0 requires False.
        max_links: most children an interior node has, 2..8192. Default 1024.
    """

    chunk_size: int = 1024 * 1024
    cid_version: int = 1
    raw_leaves: bool = True
    max_links: int = 1024

    def __post_init__(self) -> None:
        if type(self.chunk_size) is not int or not 1 <= self.chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(
                f"ImportParams.chunk_size must be an int in 1..{MAX_CHUNK_SIZE} bytes, "
                f"got {self.chunk_size!r}"
            )
        if type(self.cid_version) is not int or self.cid_version not in (0, 1):
            raise ValueError(f"ImportParams.cid_version must be 0 or 1, got {self.cid_version!r}")
        if not isinstance(self.raw_leaves, bool):
            raise ValueError(f"ImportParams.raw_leaves must be a bool, got {self.raw_leaves!r}")  # noqa: TRY004
        if type(self.max_links) is not int or not 2 <= self.max_links <= MAX_LINKS:
            raise ValueError(
                f"ImportParams.max_links must be an int in 2..{MAX_LINKS}, got {self.max_links!r}"
            )
        if self.cid_version == 0 and self.raw_leaves:
            raise ValueError(
                "ImportParams.raw_leaves must be False with cid_version 0 (CIDv0 names only dag-pb)"
            )

    @classmethod
    def kubo_classic(cls) -> ImportParams:
        """Kubo's historical default (``unixfs-v0-2015``).

        256 KiB chunks, CIDv0, dag-pb leaves, 174 links a node.
        """
        return cls(chunk_size=256 * 1024, cid_version=0, raw_leaves=False, max_links=174)


_SHA256_PREFIX: Final = b"\x12\x20"
# A child waiting for its parent: (CID, binary CID, Tsize bytes, file bytes under it).
_Child = tuple[CID, bytes, int, int]


class FileImporter:
    """Streaming, sans-IO UnixFS file importer (balanced layout).

    Feed bytes in any pieces; each call returns the blocks that became
    complete (leaves as soon as a chunk fills, interior nodes as soon as their
    subtree is full), in an order where children come before parents.
    ``finish`` returns the rest and the root. Memory is bounded by one
    chunk plus at most ``max_links`` pending links per tree level, whatever
    the file size; each block is hashed exactly once.

    Example::

        imp = FileImporter(ImportParams())
        for piece in pieces:
            store.put_many(imp.feed(piece))
        blocks, root, size = imp.finish()
        store.put_many(blocks)
    """

    def __init__(self, params: ImportParams | None = None) -> None:
        self._params = params if params is not None else ImportParams()
        # Partial chunk: valid bytes are _buf[:_fill]; _buf is reused, never shrunk.
        self._buf = bytearray()
        self._fill = 0
        self._levels: list[list[_Child]] = [[]]
        self._size = 0
        self._blocks = 0
        self._root: _Child | None = None
        self._leaf_codec = RAW if self._params.raw_leaves else DAG_PB
        self._leaf_version = 1 if self._params.raw_leaves else self._params.cid_version

    @property
    def params(self) -> ImportParams:
        """The parameters this importer uses."""
        return self._params

    @property
    def bytes_fed(self) -> int:
        """File bytes fed so far."""
        return self._size

    @property
    def blocks_made(self) -> int:
        """Blocks returned so far (leaves and interior nodes)."""
        return self._blocks

    @property
    def root_tsize(self) -> int:
        """Cumulative size of the finished DAG in bytes (the root link's Tsize).

        Raises:
            RuntimeError: ``finish`` has not been called.
        """
        if self._root is None:
            raise RuntimeError("FileImporter.root_tsize is known only after finish()")
        return self._root[2]

    def feed(self, data: bytes | bytearray | memoryview) -> list[tuple[CID, bytes]]:
        """Add file bytes.

        Args:
            data: the next bytes of the file (any length, may be empty).

        Returns:
            ``(CID, block bytes)`` pairs completed by this call, children first.

        Raises:
            RuntimeError: called after ``finish``.
        """
        if self._root is not None:
            raise RuntimeError("FileImporter.feed called after finish()")
        view = memoryview(data)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        n = len(view)
        self._size += n
        out: list[tuple[CID, bytes]] = []
        cs = self._params.chunk_size
        buf = self._buf
        fill = self._fill
        pos = 0
        if fill:
            # Complete the partial chunk in place (buf only grows up to chunk_size, once).
            take = min(cs - fill, n)
            buf[fill : fill + take] = view[:take]
            fill += take
            pos = take
            if fill == cs:
                self._leaf_from_buf(cs, out)
                fill = 0
        while n - pos >= cs:
            self._leaf(view[pos : pos + cs], out)
            pos += cs
        if pos < n:
            buf[fill : fill + n - pos] = view[pos:]
            fill += n - pos
        self._fill = fill
        return out

    def finish(self) -> tuple[list[tuple[CID, bytes]], CID, int]:
        """End the file.

        Returns:
            ``(blocks, root CID, file size in bytes)``: the blocks not yet
            returned by ``feed`` (children first; the root block is the last
            one unless the root is a leaf returned earlier).

        Raises:
            RuntimeError: called twice.
        """
        if self._root is not None:
            raise RuntimeError("FileImporter.finish called twice")
        out: list[tuple[CID, bytes]] = []
        if self._fill or self._size == 0:
            # The trailing short chunk; for the empty file, one empty leaf
            # (Kubo: NewLeafNode(nil); js: the chunker yields one empty chunk).
            self._leaf_from_buf(self._fill, out)
        self._buf = bytearray()
        self._fill = 0
        levels = self._levels
        level = 0
        while True:
            items = levels[level]
            if level == len(levels) - 1 and len(items) == 1:
                self._root = items[0]
                break
            if items:
                self._flush(level, out)
            level += 1
        self._levels = []
        return out, self._root[0], self._size

    # -- internals ---------------------------------------------------------------------

    def _leaf_from_buf(self, n: int, out: list[tuple[CID, bytes]]) -> None:
        with memoryview(self._buf) as whole:
            chunk = whole[:n]
            try:
                self._leaf(chunk, out)
            finally:
                chunk.release()

    def _leaf(self, chunk: memoryview, out: list[tuple[CID, bytes]]) -> None:
        n = len(chunk)
        if self._params.raw_leaves:
            block = bytes(chunk)
        elif n:
            # PBNode{Data: UnixFS{Type: File, Data: chunk, filesize: n}}, one copy of the chunk.
            size_v = encode_uvarint(n)
            ufs_len = 3 + len(size_v) + n + 1 + len(size_v)
            block = b"".join(
                (b"\x0a", encode_uvarint(ufs_len), b"\x08\x02\x12", size_v, chunk, b"\x18", size_v)
            )
        else:
            block = b"\x0a\x04\x08\x02\x18\x00"  # the empty file: Type File, filesize 0
        cid = new_cid(
            self._leaf_version, self._leaf_codec, _SHA256_PREFIX + hashlib.sha256(block).digest()
        )
        out.append((cid, block))
        self._blocks += 1
        self._push(0, (cid, bytes(cid), len(block), n), out)

    def _push(self, level: int, child: _Child, out: list[tuple[CID, bytes]]) -> None:
        levels = self._levels
        if level == len(levels):
            levels.append([])
        items = levels[level]
        items.append(child)
        if len(items) == self._params.max_links:
            self._flush(level, out)

    def _flush(self, level: int, out: list[tuple[CID, bytes]]) -> None:
        items = self._levels[level]
        self._levels[level] = []
        filesize = 0
        tsize = 0
        sizes = []
        links = []
        for _, cid_bytes, child_tsize, child_filesize in items:
            filesize += child_filesize
            tsize += child_tsize
            sizes.append(b"\x20" + encode_uvarint(child_filesize))
            links.append(encode_link(cid_bytes, b"", child_tsize))
        ufs = b"\x08\x02\x18" + encode_uvarint(filesize) + b"".join(sizes)
        block = b"".join(links) + b"\x0a" + encode_uvarint(len(ufs)) + ufs
        check_block_size(len(block))
        cid = new_cid(
            self._params.cid_version, DAG_PB, _SHA256_PREFIX + hashlib.sha256(block).digest()
        )
        out.append((cid, block))
        self._blocks += 1
        self._push(level + 1, (cid, bytes(cid), len(block) + tsize, filesize), out)


def import_bytes(
    data: bytes | bytearray | memoryview, params: ImportParams | None = None
) -> tuple[list[tuple[CID, bytes]], CID, int]:
    """Import a whole in-memory file: ``(blocks, root CID, root Tsize in bytes)``."""
    imp = FileImporter(params)
    blocks = imp.feed(data)
    rest, root, _ = imp.finish()
    blocks += rest
    return blocks, root, imp.root_tsize


# =========================================================================== directories

#: Longest symlink target stored (Linux PATH_MAX).
MAX_SYMLINK_TARGET: Final = 4096


def symlink_node(target: str, cid_version: int = 1) -> tuple[CID, bytes]:
    """The dag-pb node of a UnixFS symlink, as Kubo's ``ipfs add`` writes it.

    UnixFS spec, "Symlink": ``Data`` is ``{Type: Symlink, Data: target bytes}``
    (no filesize, no links), so the block is ``0x0a len (0x08 0x04 0x12 len
    target)``; boxo's ``unixfs.SymlinkData`` encodes the same bytes.

    Args:
        target: the link target as the link holds it (not resolved), UTF-8.
        cid_version: 0 (base58 ``Qm...``) or 1.

    Returns:
        ``(cid, block)``; the block's length is the link's Tsize in a directory.

    Raises:
        ValueError: the target is empty, longer than 4096 bytes, holds a NUL,
            or is not UTF-8.
    """
    try:
        raw = target.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"symlink target {target!r} is not valid UTF-8") from None
    if not raw or len(raw) > MAX_SYMLINK_TARGET or b"\x00" in raw:
        raise ValueError(f"symlink target {target!r} must be 1..{MAX_SYMLINK_TARGET} bytes "
                         "without NUL")
    block = dagpb.encode(dagpb.PBNode(links=(), data=encode_data(
        UnixFSData(type=DataType.SYMLINK, data=raw))))
    return new_cid(cid_version, DAG_PB, _SHA256_PREFIX + hashlib.sha256(block).digest()), block



@dataclass(frozen=True, slots=True)
class _FileRef:
    cid: CID
    size: int
    tsize: int


class _Dir:
    __slots__ = ("children", "explicit")

    def __init__(self) -> None:
        self.children: dict[str, _FileRef | _Dir] = {}
        self.explicit = False


def _split_path(path: str) -> list[str]:
    if not isinstance(path, str):
        raise TypeError(f"path must be a str, got {type(path).__name__}")
    if path == "":
        raise ValueError("path is empty")
    if path.startswith("/"):
        raise ValueError(f"path {path!r} is absolute; directory paths are relative, '/'-separated")
    parts = path.split("/")
    for part in parts:
        if part == "":
            raise ValueError(f"path {path!r} has an empty name (doubled or trailing '/')")
        if part in (".", ".."):
            raise ValueError(f"path {path!r} contains {part!r}")
        if "\x00" in part:
            raise ValueError(f"path {path!r} contains a NUL byte")
        try:
            part.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(f"path {path!r} is not valid UTF-8: {exc}") from None
    return parts


class DirectoryBuilder:
    """Builds UnixFS directory nodes (basic, never HAMT-sharded) over imported files.

    Add every file (with the root CID and sizes its ``FileImporter`` gave)
    and, for empty directories, the directory; intermediate directories are
    made as needed. ``finish`` writes one dag-pb Directory node per directory,
    links sorted by name bytes, each link's Tsize the child's cumulative size,
    as Kubo and js ``ipfs-unixfs-importer`` (``wrapWithDirectory``) do.

    A directory node is never sharded, so a directory whose node exceeds
    Kubo's 256 KiB sharding threshold gets a different CID than Kubo's; one
    over 2 MiB raises ``BlockTooLarge``.
    """

    def __init__(self, params: ImportParams | None = None) -> None:
        self._params = params if params is not None else ImportParams()
        self._root = _Dir()
        self._root.explicit = True
        self._root_tsize: int | None = None

    def _parent(self, parts: list[str], path: str) -> _Dir:
        node = self._root
        for i, name in enumerate(parts[:-1]):
            child = node.children.get(name)
            if child is None:
                child = node.children[name] = _Dir()
            elif not isinstance(child, _Dir):
                raise ValueError(
                    f"path {path!r}: {'/'.join(parts[: i + 1])!r} is a file, not a directory"
                )
            node = child
        return node

    def add_file(self, path: str, cid: CID, size_bytes: int, tsize_bytes: int) -> None:
        """Add a file at ``path``.

        Args:
            path: POSIX relative path, ``'/'``-separated (``"docs/a.txt"``).
            cid: the file's root CID.
            size_bytes: the file's size in bytes.
            tsize_bytes: cumulative size of the file's DAG in bytes
                (``FileImporter.root_tsize``).

        Raises:
            ValueError: ``path`` is empty, absolute, has an empty, ``.`` or
                ``..`` component or a NUL, passes through a file, or is
                already taken; a size is negative.
        """
        parts = _split_path(path)
        if not isinstance(cid, CID):
            raise TypeError(f"path {path!r}: cid must be a CID, got {type(cid).__name__}")
        if size_bytes < 0 or tsize_bytes < 0:
            raise ValueError(f"path {path!r}: sizes must be >= 0, got {size_bytes}, {tsize_bytes}")
        parent = self._parent(parts, path)
        if parts[-1] in parent.children:
            raise ValueError(f"path {path!r} was already added")
        parent.children[parts[-1]] = _FileRef(cid, size_bytes, tsize_bytes)

    def add_symlink(self, path: str, target: str) -> tuple[CID, bytes]:
        """Add a symbolic link at ``path`` that points to ``target`` (stored as is).

        Returns:
            ``(cid, block)`` of the symlink node (``symlink_node``); the caller
            stores the block, ``finish`` only links it.

        Raises:
            ValueError: as for ``add_file``, or a bad target (``symlink_node``).
        """
        parts = _split_path(path)
        cid, block = symlink_node(target, self._params.cid_version)
        parent = self._parent(parts, path)
        if parts[-1] in parent.children:
            raise ValueError(f"path {path!r} was already added")
        parent.children[parts[-1]] = _FileRef(cid, len(target.encode("utf-8")), len(block))
        return cid, block

    def add_dir(self, path: str) -> None:
        """Add a (possibly empty) directory at ``path``.

        Adding a directory already made implicitly by ``add_file`` is fine;
        adding the same directory twice, or over a file, is not.

        Raises:
            ValueError: as for ``add_file``.
        """
        parts = _split_path(path)
        parent = self._parent(parts, path)
        existing = parent.children.get(parts[-1])
        if existing is None:
            existing = parent.children[parts[-1]] = _Dir()
        elif not isinstance(existing, _Dir) or existing.explicit:
            raise ValueError(f"path {path!r} was already added")
        existing.explicit = True

    def finish(self) -> tuple[list[tuple[CID, bytes]], CID]:
        """Write the directory nodes.

        Returns:
            ``(blocks, root CID)``: each distinct directory block once, children
            before parents, the root's last; the root's CID version is
            ``params.cid_version``.

        Raises:
            BlockTooLarge: a directory node would exceed 2 MiB.
        """
        out: list[tuple[CID, bytes]] = []
        seen: set[bytes] = set()
        version = self._params.cid_version
        # Iterative post-order: (dir, its link list being built); avoid recursion limits.
        results: dict[int, tuple[CID, int]] = {}
        stack: list[tuple[_Dir, bool]] = [(self._root, False)]
        while stack:
            node, expanded = stack.pop()
            if not expanded:
                stack.append((node, True))
                stack.extend((c, False) for c in node.children.values() if isinstance(c, _Dir))
                continue
            links = []
            total = 0
            for name in sorted(node.children, key=lambda s: s.encode("utf-8")):
                child = node.children[name]
                if isinstance(child, _Dir):
                    cid, tsize = results.pop(id(child))
                else:
                    cid, tsize = child.cid, child.tsize
                total += tsize
                links.append(encode_link(bytes(cid), name.encode("utf-8"), tsize))
            block = b"".join(links) + b"\x0a\x02\x08\x01"  # Data: UnixFS{Type: Directory}
            check_block_size(len(block))
            cid = new_cid(version, DAG_PB, _SHA256_PREFIX + hashlib.sha256(block).digest())
            results[id(node)] = (cid, len(block) + total)
            key = bytes(cid)
            if key not in seen:
                seen.add(key)
                out.append((cid, block))
        root, self._root_tsize = results[id(self._root)]
        return out, root

    @property
    def root_tsize(self) -> int:
        """Cumulative size in bytes of the whole tree's DAG (the root link's Tsize).

        Raises:
            RuntimeError: ``finish`` has not been called.
        """
        if self._root_tsize is None:
            raise RuntimeError("DirectoryBuilder.root_tsize is known only after finish()")
        return self._root_tsize


# =========================================================================== exporter


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
) -> list[tuple[str, CID]]:
    """Entries of a HAMT-sharded directory, in shard link order (sub-shards inline)."""
    out: list[tuple[str, CID]] = []
    stack: list[tuple[CID, dagpb.PBNode, UnixFSData, int]] = [(cid, node, ufs, 0)]
    while stack:
        shard_cid, shard, data, i = stack.pop()
        assert data.fanout is not None  # decode_data checked it
        width = len(f"{data.fanout - 1:X}")
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
            out.append((name[width:], link.hash))
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
                children = await _hamt_entries(get_block, cid, node, ufs)
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
