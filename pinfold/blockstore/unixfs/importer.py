"""The streaming file importer (``FileImporter``, ``import_bytes``): a byte
stream to blocks with a fixed-size chunker and Kubo's balanced layout, under
``ImportParams``.

Imports ``data``, ``cid`` and ``dagpb``; sans-IO."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Final

from pinfold.blockstore.cid import CID, DAG_PB, RAW, check_block_size
from pinfold.blockstore.dagpb import encode_link, new_cid
from pinfold.blockstore.varint import encode_uvarint
from pinfold.blockstore.unixfs.data import MAX_CHUNK_SIZE, MAX_LINKS



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
