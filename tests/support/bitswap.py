"""Helpers for the host and Bitswap tests: a tiny dict store, hosts on 127.0.0.1,
in-process Bitswap nodes and peers, test DAGs. May import pinfold and
``tests.support.wait``; the daemon and campaign types only for annotations."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from pinfold.blockstore.cid import CID, RAW, cid_key, make_cid
from pinfold.blockstore.errors import BlockNotFound
from pinfold.blockstore.dag import links
from pinfold.daemon.p2p.bitswap import Bitswap, ExchangeConfig
from pinfold.daemon.p2p.bitswap.message import FrameDecoder, WantEntry, decode_message
from pinfold.daemon.p2p.host import Host, HostConfig

if TYPE_CHECKING:
    from tests.support.campaign import Content
    from tests.support.daemon import DaemonProcess

LOOPBACK = ("/ip4/127.0.0.1/tcp/0",)


@dataclass
class DictStore:
    """The BlockStore read seam plus an async ``put_many``, in a dict (test double)."""

    blocks: dict[bytes, bytes] = field(default_factory=dict)
    puts: int = 0

    def has(self, cid: CID) -> bool:
        return cid_key(cid) in self.blocks

    def get(self, cid: CID) -> bytes:
        try:
            return self.blocks[cid_key(cid)]
        except KeyError:
            raise BlockNotFound(cid) from None

    def get_size(self, cid: CID) -> int:
        return len(self.get(cid))

    def add(self, items: Iterable[tuple[CID, bytes]]) -> None:
        for cid, data in items:
            self.blocks[cid_key(cid)] = bytes(data)

    async def put_many(self, items: list[tuple[CID, bytes]]) -> None:
        self.puts += 1
        self.add(items)


def raw_blocks(n: int, size: int, *, seed: int = 0) -> list[tuple[CID, bytes]]:
    """``n`` distinct raw blocks of ``size`` bytes."""
    out = []
    for i in range(n):
        data = (seed.to_bytes(4, "big") + i.to_bytes(4, "big")) * (size // 8) + b"\0" * (size % 8)
        out.append((make_cid(data, RAW), data))
    return out


def random_bytes(n: int, seed: int = 0) -> bytes:
    """Deterministic pseudo-random bytes (no repeated chunks, so no deduplicated blocks)."""
    import random

    rng = random.Random(seed)
    return b"".join(rng.randbytes(min(1 << 20, n - i)) for i in range(0, n, 1 << 20))


def new_host(**kw) -> Host:
    return Host(create_new_key_pair(), HostConfig(listen=LOOPBACK, **kw))


@dataclass
class Node:
    host: Host
    store: DictStore
    bitswap: Bitswap

    @property
    def peer_id(self):
        return self.host.peer_id

    @property
    def addr(self) -> str:
        return self.host.addrs()[0]


@contextlib.asynccontextmanager
async def running_nodes(n: int, *, config: ExchangeConfig | None = None) -> AsyncIterator[list[Node]]:
    """``n`` hosts with Bitswap on 127.0.0.1, each with its own dict store."""
    async with trio.open_nursery() as nursery:
        nodes = []
        for _ in range(n):
            host = new_host()
            store = DictStore()
            bs = Bitswap(host, store, store.put_many, config=config)
            await nursery.start(host.run)
            await nursery.start(bs.run)
            nodes.append(Node(host, store, bs))
        try:
            yield nodes
        finally:
            nursery.cancel_scope.cancel()


async def wantlist_entries(stream) -> AsyncIterator[WantEntry]:
    """Every wantlist entry a peer sends on a py-libp2p ``stream`` of Bitswap
    messages, in order, until the stream ends or breaks."""
    decoder = FrameDecoder()
    while True:
        try:
            chunk = await stream.read(65536)
        except Exception:  # noqa: BLE001 - closed or reset by the peer: the end
            return
        if not chunk:
            return
        decoder.feed(chunk)
        while (body := decoder.next_frame()) is not None:
            for entry in decode_message(body).wantlist:
                yield entry


def env_flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


class Peer:
    """A raw libp2p host with its own Bitswap (dict store) in this process;
    ``scope.cancel()`` stops it (its connections close) while others run on."""

    def __init__(self, config: ExchangeConfig | None = None) -> None:
        self.host = new_host()
        self.store = DictStore()
        self.bitswap = Bitswap(self.host, self.store, self.store.put_many, config=config)
        self.scope = trio.CancelScope()

    @property
    def peer_id(self):
        return self.host.peer_id

    @property
    def addr(self) -> str:
        return self.host.addrs()[0]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with self.scope:
            async with trio.open_nursery() as n:
                await n.start(self.host.run)
                await n.start(self.bitswap.run)
                task_status.started()
                await trio.sleep_forever()


async def fetch_all(peer: Peer, content: Content, timeout_s: float = 60) -> float:
    """Fetch every block of ``content``; seconds taken."""
    start = trio.current_time()
    got = 0
    with trio.fail_after(timeout_s):
        async for _cid, _data in peer.bitswap.fetch_blocks([c for c, _ in content.blocks]):
            got += 1
    assert got == len(content.blocks)
    return trio.current_time() - start


def tcp_target(daemon: DaemonProcess) -> tuple[str, int, str]:
    """(host, port, multiaddr) of ``daemon``'s first listen address."""
    with daemon.client() as c:
        addr = c.id()["addresses"][0]
    parts = addr.split("/")
    return parts[2], int(parts[4]), addr


def file_bytes(store, root) -> bytes:
    """Reassemble a raw-leaves UnixFS file from ``store`` (depth-first link order)."""
    out = []
    stack = [root]
    while stack:
        cid = stack.pop()
        data = store.get(cid)
        if cid.codec.code == RAW:
            out.append(data)
        else:
            stack.extend(reversed(links(cid, data)))
    return b"".join(out)
