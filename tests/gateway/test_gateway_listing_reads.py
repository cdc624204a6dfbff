"""The gateway's directory listing reads the entries' root blocks as ``ls`` does:
the local ones ``LOCAL_BATCH`` to one store read (``TxnBlockStore.read_each``),
only the missing ones one at a time through the node.

A real LMDB store under the gateway's ``Router``; the source counts how the
listing reads it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from pinfold.blockstore.cid import CID
from pinfold.blockstore.lmdbstore import LmdbBlockStore
from pinfold.blockstore.unixfs import DirectoryBuilder, ImportParams, import_bytes
from pinfold.blockstore.unixfs.paths import LOCAL_BATCH
from pinfold.daemon.gateway.http import HttpError, Request
from pinfold.daemon.gateway.routes import Router

ENTRIES = 2 * LOCAL_BATCH + 452


class CountingSource:
    """The gateway's ``ContentSource`` over a real store, recording each single-block
    read (``get_block``) and the size of each batched one (``read_local``)."""

    def __init__(self, store: LmdbBlockStore) -> None:
        self.store = store
        self.single: list[CID] = []
        self.batches: list[int] = []

    async def get_block(self, cid: CID) -> bytes:
        self.single.append(cid)
        return self.store.get(cid)

    def has_block(self, cid: CID) -> bool:
        return self.store.has(cid)

    def read_local(self, cids: Any, fn: Callable[[CID, Any], Any]) -> list[Any]:
        self.batches.append(len(cids))
        return self.store.read_each(cids, fn)

    @asynccontextmanager
    async def prefetcher(self) -> AsyncIterator[Callable[[list[CID]], None]]:
        yield lambda cids: None

    def resolve_name(self, text: str) -> Any:
        raise LookupError(f"no name {text!r}")


def _folder(n: int, missing_every: int = 0) -> tuple[list[tuple[CID, bytes]], CID, list[CID]]:
    """A folder of ``n`` one-block CIDv0 files (dag-pb leaves, Kubo's classic layout):
    ``(blocks, root, entry CIDs)``."""
    params = ImportParams(cid_version=0, raw_leaves=False)
    blocks: list[tuple[CID, bytes]] = []
    entries: list[CID] = []
    b = DirectoryBuilder()
    for i in range(n):
        data = b"%d\n" % i
        blks, root, tsize = import_bytes(data, params)
        blocks += blks
        entries.append(root)
        b.add_file(f"f{i:05d}.txt", root, len(data), tsize)
    dir_blocks, top = b.finish()
    return blocks + list(dir_blocks), top, entries


async def test_gateway_listing_reads_local_entries_in_batches_as_ls_does(tmp_path: Path) -> None:
    blocks, root, entries = _folder(ENTRIES)
    assert all(c.codec.name == "dag-pb" for c in entries)  # each one must be read
    with LmdbBlockStore(tmp_path / "store", max_size_bytes=1 << 30) as store:
        store.put_many(blocks)
        source = CountingSource(store)
        resp = await Router(source, timeout_s=30).route(
            Request(method="GET", path=f"/ipfs/{root}/"))
        assert (resp.status, resp.route) == (200, "directory")
        assert isinstance(resp.body, bytes)
        page = resp.body.decode()
        assert page.count('<td class="size">2 B</td>') == 10  # f00000..f00009: "0\n".."9\n"
        assert f"{ENTRIES} entries" in page and '<a href="f02499.txt">' in page
        assert source.batches == [LOCAL_BATCH, LOCAL_BATCH, ENTRIES - 2 * LOCAL_BATCH]
        assert not set(entries) & set(source.single), "an entry was read on its own"


async def test_gateway_listing_reads_only_the_missing_entries_one_by_one(tmp_path: Path) -> None:
    """Entries not in the store (to be fetched from peers) go through ``get_block``
    (here the store alone, so the first missing one is a 504 naming the retrieval)."""
    blocks, root, entries = _folder(40)
    gone = set(entries[::4])
    with LmdbBlockStore(tmp_path / "store", max_size_bytes=1 << 30) as store:
        store.put_many([(c, d) for c, d in blocks if c not in gone])
        source = CountingSource(store)
        with pytest.raises(HttpError) as info:
            await Router(source, timeout_s=30).route(Request(method="GET", path=f"/ipfs/{root}/"))
        assert info.value.status == 504 and "retrieval failed" in str(info.value), info.value
        assert source.batches == [40]
        # The first missing entry went to get_block (and failed the listing).
        assert [c for c in source.single if c in set(entries)] == [entries[0]]
