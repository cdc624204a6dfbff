"""Directories and symlinks on import: ``DirectoryBuilder`` (a tree of named
files to dag-pb directory nodes, basic or HAMT-sharded) and ``symlink_node``.

Imports ``data``, ``hamt``, ``cid`` and ``dagpb``; sans-IO."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Final

from pinfold.blockstore import dagpb
from pinfold.blockstore.cid import CID, DAG_PB, check_block_size
from pinfold.blockstore.dagpb import encode_link, new_cid
from pinfold.blockstore.unixfs.data import DataType, UnixFSData, encode_data
from pinfold.blockstore.unixfs.hamt import Entry, build_shard, should_shard
from pinfold.blockstore.unixfs.importer import _SHA256_PREFIX, ImportParams


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
    """Builds UnixFS directory nodes over imported files, HAMT-sharding large ones as Kubo does.

    Add every file (with the root CID and sizes its ``FileImporter`` gave)
    and, for empty directories, the directory; intermediate directories are
    made as needed. ``finish`` writes each directory as one dag-pb Directory
    node, links sorted by name bytes, each link's Tsize the child's cumulative
    size, as Kubo and js ``ipfs-unixfs-importer`` (``wrapWithDirectory``) do;
    or, when its entries' name bytes + CID bytes sum to 256 KiB or more, as a
    HAMT shard tree exactly as Kubo v0.22 writes it (``hamt.build_shard``), so
    a folder of any size gets Kubo's CIDs and every block stays small.
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
            before parents (a sharded directory's sub-shards before its root
            shard), the root's last; every directory block's CID version is
            ``params.cid_version``.

        Raises:
            ShardTooDeep: two names in one large directory share all 64 bits of
                their HAMT hash (a ``ValueError``).
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
            entries: list[Entry] = []
            for name in sorted(node.children, key=lambda s: s.encode("utf-8")):
                child = node.children[name]
                if isinstance(child, _Dir):
                    cid, tsize = results.pop(id(child))
                else:
                    cid, tsize = child.cid, child.tsize
                entries.append((name.encode("utf-8"), bytes(cid), tsize))
            if should_shard(entries):
                blocks, cid, tsize = build_shard(entries, version)
            else:
                block = b"".join(encode_link(c, n, t) for n, c, t in entries)
                block += b"\x0a\x02\x08\x01"  # Data: UnixFS{Type: Directory}
                check_block_size(len(block))
                cid = new_cid(version, DAG_PB, _SHA256_PREFIX + hashlib.sha256(block).digest())
                blocks = [(cid, block)]
                tsize = len(block) + sum(t for _, _, t in entries)
            results[id(node)] = (cid, tsize)
            for bcid, block in blocks:
                key = bytes(bcid)
                if key not in seen:
                    seen.add(key)
                    out.append((bcid, block))
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
