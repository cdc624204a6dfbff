"""From a user's content reference (``CID``, ``CID/a/b``, ``/ipfs/CID/a/b``) to
the CID it names, its listing and its local presence: the one entry point every
RPC that takes a CID goes through (``cat``, ``get``, ``pin add``, ``dag
export``, ``ls``, ``stat``, ``resolve``; the gateway and fsspec reach it
through those).

``to_content_path`` is the one place a reference string becomes a
``ContentPath``: a name ref (``NAME``, ``NAME@3``, ``NAME@main/config.json``)
through the node's ``NameBook.resolve``, else a CID path. ``Resolver`` binds
the core resolver of ``blockstore/unixfs/paths.py`` to the node's block
source: ``get_block`` reads the local store, else fetches the block from peers
over Bitswap (stored like any fetched block, not pinned); ``has_block`` and
``local_size`` only look at the store, so ``stat`` never fetches below the
path it resolves.

Imports the blockstore (paths, dag links, CIDs) and trio (to yield to other
tasks while walking a large DAG).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import re

import trio

from pinfold.blockstore import dag as dagmod
from pinfold.blockstore.cid import CID, IDENTITY, RAW, cid_text, parse_cid
from pinfold.blockstore.unixfs.data import ReadLocal
from pinfold.blockstore.unixfs.paths import (
    ContentPath,
    DirEntry,
    Resolved,
    list_dir,
    InvalidPathCID,
    parse_path,
    resolve,
    resolve_listing,
)
from pinfold.names.book import MAX_NAME_SEGMENTS, NameBook, NameNotFound
from pinfold.names.records import NameError_

__all__ = ["Resolver", "ipns_content_path", "to_content_path"]

#: Blocks ``stat`` walks between checkpoints (lets other tasks run on a big DAG).
_STAT_YIELD_EVERY = 256


_NAME_LIKE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def to_content_path(text: str, book: NameBook | None = None) -> ContentPath:
    """Parse a user's reference into a ``ContentPath``.

    Accepts ``CID``, ``CID/path/in/dag``, ``/ipfs/CID/path``,
    ``ipfs://CID/path`` and, when ``book`` is given, name refs ``NAME``,
    ``NAME@VERSION``, ``NAME@TAG`` with an optional ``/path``, and ``NAME/path``
    (the longest known name, at ``main``: ``NameBook.parse_known``).

    Raises:
        InvalidPathCID: the first segment is not a CID nor a known name
            (code ``invalid_cid``).
        InvalidPath: empty text or a segment that is not allowed (code
            ``invalid_path``); the message names the reference.
        NameError_, NameNotFound: a malformed or unknown name ref.
    """
    if book is not None:
        cp = book.resolve(text)
        if cp is not None:
            return cp
    try:
        return parse_path(text)
    except InvalidPathCID as exc:
        if book is not None and "/" not in text and _NAME_LIKE.fullmatch(text):
            raise InvalidPathCID(f"{exc}; nor is it a name of this cluster") from None
        if book is not None and "@" not in text:
            raise InvalidPathCID(f"{exc}; nor does it start with a name of this cluster "
                                 "(a path in a name: NAME@REF/path)") from None
        raise


def ipns_content_path(text: str, book: NameBook | None) -> tuple[ContentPath, bool]:
    """The gateway's ``/ipns/TEXT``: ``NAME@REF[/path]``, or ``NAME[/path]`` for the
    version ``main`` points at (the newest without ``main``), where ``NAME`` is the
    longest known name among the first segments (names may hold ``/``).

    Returns:
        ``(content path, immutable)``: ``immutable`` when ``REF`` is a version
        number (a version never changes; a tag moves).

    Raises:
        NameNotFound (a ``LookupError``): no such name, version or tag, or this
            node keeps no names.
        NameError_ (a ``ValueError``): a malformed name ref.
    """
    t = text.strip().strip("/")
    if book is None:
        raise NameNotFound(f"{t!r}: this node keeps no names")
    try:
        parsed = book.parse_known(t)  # NAME/path: the longest known name, at main
    except NameError_:
        segs = t.split("/")
        if "@" in t or any(book.knows("/".join(segs[:k]))
                           for k in range(1, min(MAX_NAME_SEGMENTS, len(segs)) + 1)):
            raise  # a malformed ref, or a bad path segment under a known name
        raise NameNotFound(f"no name {t!r} in this cluster") from None
    if parsed is None:
        raise NameNotFound(f"{t!r} is a CID path, not a name; request it under /ipfs/")
    if parsed.ref is None and not book.knows(parsed.name):
        raise NameNotFound(f"no name {t!r} in this cluster")
    rec = book.lookup(parsed)
    return ContentPath(root=parse_cid(rec.root), segments=parsed.segments), \
        isinstance(parsed.ref, int)


def entry_dict(entry: DirEntry, path: str | None = None) -> dict[str, Any]:
    """The RPC shape of one listed entry: ``{name, type, size, cid, tsize}`` and,
    in a recursive listing, ``path`` (below the listed directory)."""
    d: dict[str, Any] = {"name": entry.name, "type": entry.kind, "size": entry.size,
                         "cid": cid_text(entry.cid), "tsize": entry.tsize}
    if path is not None:
        d["path"] = path
    return d


class Resolver:
    """Resolves references against one node's blocks.

    Args:
        get_block: ``await get_block(cid) -> bytes``: the store, else peers;
            raises ``BlockNotFound`` (or a ``FetchTimeout``) when neither has it.
        has_block: ``has_block(cid) -> bool``: the block is in the store.
        local_size: ``local_size(cid) -> int``: bytes of a block in the store.
        book: ``book() -> NameBook | None``: the node's name book, if names run.
        read_local: reads many local blocks in one store transaction
            (``unixfs.data.ReadLocal``), so a listing of thousands of entries
            costs one read per batch, not one per entry.
    """

    def __init__(self, get_block: Callable[[CID], Awaitable[bytes]],
                 has_block: Callable[[CID], bool], local_size: Callable[[CID], int],
                 book: Callable[[], NameBook | None] = lambda: None,
                 read_local: ReadLocal | None = None) -> None:
        self.get_block = get_block
        self.read_local = read_local
        self.has_block = has_block
        self.local_size = local_size
        self.book = book

    def content_path(self, text: str) -> ContentPath:
        """``to_content_path`` with this node's name book."""
        return to_content_path(text, self.book())

    async def resolve_ref(self, text: str) -> Resolved:
        """The CID, kind and size ``text`` names; reads (or fetches) one block per
        path segment, plus HAMT shards on the way, and the target's root block.

        Raises:
            InvalidPath: as ``to_content_path`` (``InvalidPathCID`` for a bad CID).
            PathNotFound: a segment names no entry ("no entry 'x' in directory
                CID/a"), or the path goes through a file.
            BlockNotFound: a block on the path is neither local nor on a peer.
            DecodeError: a malformed node on the path.
        """
        return await resolve(self.get_block, self.content_path(text))

    async def resolve_dict(self, text: str) -> dict[str, Any]:
        """``resolve_ref`` as the ``resolve`` RPC's result: ``{path, cid, type, size}``."""
        r = await self.resolve_ref(text)
        return {"path": str(self.content_path(text)), "cid": str(r.cid), "type": r.kind,
                "size": r.size}

    async def ls(self, text: str, *, recursive: bool = False) -> AsyncIterator[dict[str, Any]]:
        """The entries of the directory ``text`` names, as ``entry_dict``s in link order;
        with ``recursive`` every entry below, a directory before its children, each
        with ``path``. A file (or symlink) lists as its one entry.

        Raises:
            As ``resolve_ref``; DecodeError for an unsafe entry name.
        """
        _, entries = await self.listing(text, recursive=recursive)
        async for entry in entries:
            yield entry

    async def listing(self, text: str, *, recursive: bool = False
                      ) -> tuple[Resolved, AsyncIterator[dict[str, Any]]]:
        """What ``text`` resolves to and its ``ls`` entries (the path is resolved and
        its directory read once for both).

        Raises:
            As ``ls``: resolving and reading the top directory happen here, below
            it (``recursive``) as the entries are iterated.
        """
        path = self.content_path(text)
        r, top = await resolve_listing(self.get_block, path, read_local=self.read_local)
        return r, self._entries(path, r, top, recursive)

    async def _entries(self, path: ContentPath, r: Resolved, top: list[DirEntry] | None,
                       recursive: bool) -> AsyncIterator[dict[str, Any]]:
        if top is None:
            name = path.segments[-1] if path.segments else str(r.cid)
            yield entry_dict(DirEntry(name=name, cid=r.cid, kind=r.kind, size=r.size,
                                      tsize=None), name if recursive else None)
            return
        stack: list[tuple[str, list[DirEntry] | CID]] = [("", top)]
        while stack:
            prefix, listed = stack.pop()
            children = listed if isinstance(listed, list) else await list_dir(
                self.get_block, listed, read_local=self.read_local)
            below: list[tuple[str, list[DirEntry] | CID]] = []
            for entry in children:
                rel = f"{prefix}/{entry.name}" if prefix else entry.name
                yield entry_dict(entry, rel if recursive else None)
                if recursive and entry.kind == "dir":
                    below.append((rel, entry.cid))
            stack.extend(reversed(below))

    async def stat(self, text: str) -> dict[str, Any]:
        """What ``text`` names and how much of it is here.

        Resolves the path (fetching the blocks on it if needed), then walks the
        DAG below the target through local blocks only: a missing block is
        counted but its children are unknown.

        Returns:
            ``{path, cid, type, size, blocks, blocks_exact, local_blocks,
            local_bytes, complete}``: ``size`` in bytes (file, symlink; ``None``
            for a directory); ``blocks``: distinct blocks of the DAG found
            (identity CIDs excluded); ``blocks_exact``: every interior block was
            local, so ``blocks`` is the whole DAG; ``local_blocks``/``local_bytes``:
            those in the store; ``complete``: the whole DAG is here.

        Raises:
            As ``resolve_ref``.
        """
        path = self.content_path(text)
        r = await resolve(self.get_block, path)
        blocks = local = local_bytes = 0
        exact = True
        stack = [r.cid]
        seen: set[bytes] = set()
        while stack:
            cid = stack.pop()
            key = bytes(cid)
            if key in seen:
                continue
            seen.add(key)
            if cid.hashfun.code == IDENTITY:
                stack.extend(dagmod.links(cid, bytes(cid.raw_digest)))
                continue
            blocks += 1
            if blocks % _STAT_YIELD_EVERY == 0:
                await trio.sleep(0)
            if not self.has_block(cid):
                exact = exact and cid.codec.code == RAW
                continue
            local += 1
            local_bytes += self.local_size(cid)
            if cid.codec.code != RAW:
                stack.extend(dagmod.links(cid, await self.get_block(cid)))
        return {"path": str(path), "cid": str(r.cid), "type": r.kind, "size": r.size,
                "blocks": blocks, "blocks_exact": exact, "local_blocks": local,
                "local_bytes": local_bytes, "complete": exact and local == blocks}

