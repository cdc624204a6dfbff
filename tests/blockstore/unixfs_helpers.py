"""The UnixFS tests' shared pieces: an in-memory block store that records reads,
``build`` (import bytes into one), ``read_all`` over ``cat``, and the vectors'
deterministic content ``stream``."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from pinfold.blockstore.cid import CID, make_cid
from pinfold.blockstore.errors import BlockNotFound
from pinfold.blockstore.unixfs import ImportParams, cat, import_bytes

KIB = 1024


def stream(seed: str, size: int) -> bytes:
    """The vectors' content: concat(sha256(utf8(seed) || uint64_be(k))), truncated to size."""
    prefix = seed.encode()
    n = (size + 31) // 32
    return b"".join(hashlib.sha256(prefix + k.to_bytes(8, "big")).digest() for k in range(n))[:size]


class Store:
    """In-memory blocks keyed by CID bytes; counts and records reads."""

    def __init__(self, blocks: Iterable[tuple[CID, bytes]] = ()) -> None:
        self.blocks: dict[bytes, bytes] = {}
        self.reads: list[CID] = []
        self.put(blocks)

    def put(self, blocks: Iterable[tuple[CID, bytes]]) -> None:
        for cid, data in blocks:
            if cid.hashfun.code == 0x12:
                assert hashlib.sha256(data).digest() == bytes(cid.raw_digest), (
                    "block does not match CID"
                )
            self.blocks[bytes(cid)] = data

    async def get(self, cid: CID) -> bytes:
        self.reads.append(cid)
        try:
            return self.blocks[bytes(cid)]
        except KeyError:
            raise BlockNotFound(cid) from None


async def read_all(store: Store, root: CID, offset: int = 0, length: int | None = None) -> bytes:
    return b"".join([piece async for piece in cat(store.get, root, offset, length)])


HELLO = make_cid(b"hello world\n")


def build(data: bytes, **params: object) -> tuple[Store, CID]:
    blocks, root, _ = import_bytes(data, ImportParams(**params))  # type: ignore[arg-type]
    return Store(blocks), root
