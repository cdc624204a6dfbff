"""Where the gateway's blocks come from, and a content path walked for its
headers: the node's local store, else a Bitswap fetch (stored, not pinned),
each block bounded by ``gateway.timeout_s``.

``ContentSource`` is the narrow view of the node the gateway is handed (STYLE.md
3); ``BlockReader`` adds the timeout and turns "could not get the block" into
HTTP statuses; ``walk_path`` resolves ``/ipfs/CID/a/b`` one segment at a time
through the core resolver (``unixfs.paths.resolve``), keeping the CID of each
segment (``X-Ipfs-Roots``) and every block read on the way (a CAR's path blocks).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from pinfold.blockstore.cid import CID
from pinfold.blockstore.errors import BlockNotFound, DecodeError, StoreFull
from pinfold.blockstore.unixfs.paths import ContentPath, PathNotFound, Resolved, resolve

from pinfold.daemon.gateway.http import HttpError


class ContentSource(Protocol):
    """What the gateway reads from the node (``daemon/node.py``'s ``Node``)."""

    async def get_block(self, cid: CID) -> bytes:
        """The block, from the store or fetched from peers (stored unpinned).
        Raises ``BlockNotFound`` (a ``FetchTimeout`` when no peer had it in time)."""
        ...

    def has_block(self, cid: CID) -> bool:
        """True if the block is in the local store."""
        ...

    def read_local(self, cids: Sequence[CID],
                   fn: Callable[[CID, bytes | memoryview], Any]) -> list[Any]:
        """``fn(cid, block)`` for each of ``cids`` stored locally, all in one store
        read (``unixfs.data.ReadLocal``, ``TxnBlockStore.read_each``); ``None``
        for the others. ``block`` is valid only while ``fn`` runs."""
        ...

    def prefetcher(self) -> AbstractAsyncContextManager[Callable[[list[CID]], None]]:
        """A ``prefetch(cids)`` callback for ``unixfs.cat`` wanting missing blocks ahead."""
        ...

    def resolve_name(self, text: str) -> tuple[ContentPath, bool]:
        """``/ipns/TEXT`` (``NAME@REF[/path]`` or ``NAME[/path]``) as ``(content path,
        immutable)``; ``immutable`` when it names a version number, not a tag.
        Raises ``LookupError`` (no such name, version or tag) or ``ValueError``
        (a malformed name ref), each with a message naming it."""
        ...


class BlockReader:
    """``await reader(cid) -> bytes`` with the gateway's per-block timeout.

    Raises (from ``__call__``):
        HttpError: 504 when the block did not arrive within ``timeout_s`` seconds,
            or the exchange gave up on it (no peer has it, its own deadline passed);
            507 when it arrived but the node's store is full.
    """

    def __init__(self, source: ContentSource, timeout_s: float) -> None:
        self.source = source
        self.timeout_s = timeout_s
        self.blocks_read = 0

    async def __call__(self, cid: CID) -> bytes:
        with trio.move_on_after(self.timeout_s):
            try:
                data = await self.source.get_block(cid)
            except (BlockNotFound, TimeoutError) as exc:  # the exchange's FetchTimeout
                # and BlockUnavailable (every peer said DONT_HAVE) are TimeoutErrors
                raise HttpError(504, f"retrieval failed: {exc}",
                                (("Retry-After", "60"),)) from None
            except StoreFull as exc:  # fetched, but this node has no room to keep it
                raise HttpError(507, f"block {cid} cannot be stored: {exc}") from None
            self.blocks_read += 1
            return data
        raise HttpError(504, f"block {cid} was not retrieved within {self.timeout_s:g} s "
                        "(gateway.timeout_s)", (("Retry-After", "60"),))


@dataclass(frozen=True, slots=True, kw_only=True)
class Walked:
    """A content path resolved for a response.

    Attributes:
        path: the parsed path.
        target: where it ends (``Resolved``: cid, kind, size).
        roots: the CID of the root and of each segment (``X-Ipfs-Roots``).
        path_blocks: every block read from the root to the target, the
            target's own block last, each once (HAMT shards included).
        shown_root: how the user wrote the root: ``/ipfs/CID``, or the
            ``/ipns/NAME@REF`` it was resolved from.
    """

    path: ContentPath
    target: Resolved
    roots: tuple[CID, ...]
    path_blocks: tuple[CID, ...]
    shown_root: str

    @property
    def shown(self) -> str:
        """The path as the user asked for it (decoded): ``shown_root`` and the
        segments. Error messages and ``X-Ipfs-Path`` name this, not the CID an
        ``/ipns/`` path resolved to."""
        return "/".join((self.shown_root, *self.path.segments))


async def walk_path(get_block: BlockReader, path: ContentPath, *,
                    shown_root: str | None = None) -> Walked:
    """Resolve ``path`` segment by segment with ``unixfs.paths.resolve``.
    ``shown_root`` is how the user named the root (default ``/ipfs/CID``; the
    ``/ipns/NAME@REF`` it came from), used in messages and ``Walked.shown``.

    Raises:
        HttpError: 404 (a segment is missing, or goes through a file; the message
            names the user's path up to it), 502 (a malformed block on the way),
            504 (a block not retrieved in time).
    """
    root_text = shown_root if shown_root is not None else f"/ipfs/{path.root}"
    shown = "/".join((root_text, *path.segments))
    try:
        step = await resolve(get_block, ContentPath(path.root))
        roots = [step.cid]
        blocks = list(step.path_blocks)
        for i, segment in enumerate(path.segments):
            try:
                step = await resolve(get_block, ContentPath(step.cid, (segment,)))
            except PathNotFound:
                where = "/".join((root_text, *path.segments[:i]))
                raise HttpError(404, f"{shown}: no entry {segment!r} in {where}"
                                + (" (not a directory)" if step.kind != "dir" else "")) from None
            roots.append(step.cid)
            blocks.extend(c for c in step.path_blocks[1:] if c not in blocks)
    except DecodeError as exc:
        raise HttpError(502, f"{shown}: malformed block on the path: {exc}") from None
    return Walked(path=path, target=step, roots=tuple(roots), path_blocks=tuple(blocks),
                  shown_root=root_text)
