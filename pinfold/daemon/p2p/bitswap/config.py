"""What an exchange is built from: ``ExchangeConfig`` and the parts it is given.

``ExchangeConfig`` holds the exchange's tuning and limits (the node fills it
from the config file's ``[bitswap]`` table, ``pinfold.config.BitswapConfig``);
``BitswapHost``, ``PutMany`` and ``ServeFilter`` say what the exchange needs
from the host, the block writer and the node's serve policy. Imports the
cores' configs (``server``, ``client_types``) and the libp2p types it names.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio
from libp2p.abc import INetStream
from libp2p.peer.id import ID
from pinfold.blockstore.cid import CID

from pinfold.daemon.p2p.bitswap.server import ServerConfig
from pinfold.daemon.p2p.bitswap.client_types import ClientConfig

__all__ = ["BitswapHost", "ExchangeConfig", "PutMany", "ServeFilter"]

PutMany = Callable[[list[tuple[CID, bytes | memoryview]]], Awaitable[Any]]
"""``await put_many([(cid, data), ...])``: store verified blocks; ``data`` may be a
read-only view into a received message (stored as is, not kept)."""

ServeFilter = Callable[[ID], bool]
"""``allowed(peer) -> bool``: may ``peer`` fetch blocks from us (have its wants answered)?"""


class BitswapHost(Protocol):
    """What Bitswap needs from the host (``pinfold.daemon.p2p.host.Host`` implements it)."""

    @property
    def peer_id(self) -> ID: ...

    def set_stream_handler(self, protocol: str, handler: Callable[[INetStream], Awaitable[None]], *,
                           receive_only: bool = False, direct: Any = None) -> None: ...

    async def new_stream(self, peer_id: ID, protocols: Sequence[str]) -> INetStream: ...

    async def disconnect(self, peer_id: ID) -> bool: ...

    def connected_peers(self) -> list[ID]: ...

    def subscribe(self, capacity: float = ...) -> trio.MemoryReceiveChannel[Any]: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class ExchangeConfig:
    """Settings of the exchange.

    Attributes:
        server: server-side limits (wantlist size, queued bytes, fairness quantum).
        client: client-side tuning (pipelining depth, stall timeout).
        default_timeout_s: fetch deadline when the caller gives none: a block
            fails when its fetch made no progress for this long, seconds.
        session_window: blocks one fetch keeps wanted at once (bounds memory).
        idle_stream_close_s: close our outbound stream to a peer after this many
            idle seconds (Helia aborts Bitswap streams idle for 5 s).
        stream_open_timeout_s: seconds to open and negotiate a Bitswap stream.
        write_timeout_s: seconds one message write may block on flow control.
        tick_interval_s: how often deadlines and stalls are checked, seconds.
        unusable_retry_s: after no stream to a peer could be opened or written, the
            peer is left alone, then used again if still connected: after 0.25 s,
            doubling on each failure in a row up to this many seconds.
        max_bad_blocks: blocks matching no CID we asked a peer for before it is cut off.
        ban_s: how long a cut-off peer is refused, seconds.
        read_chunk_bytes: bytes asked of the stream per read.
        hash_in_thread_bytes: hash a message's blocks in a worker thread when
            they total at least this many bytes (the main thread keeps reading).
        inbound_queue_messages: decoded messages per inbound stream waiting to
            be processed while the stream is read further (memory bound:
            4 MiB each).
        rebroadcast_interval_s: every this many seconds, wants asked of a peer
            at least that long ago and still open are sent to it again (boxo's
            message queue rebroadcasts every 30 s): a lost message does not
            leave a want waiting for ever, and a peer that said DONT_HAVE is
            asked again (a cluster holder may have the block by then).
        reply_delay_s: test hook, 0 in production: the server waits this long
            before each reply message (blocks and presences) it queues, to
            play a slow holder.
        store_steps: messages whose verified blocks may wait for the block
            writer at once, over all streams (memory bound: 4 MiB each); more
            than one lets the writer commit several in one transaction.
    """

    server: ServerConfig = field(default_factory=ServerConfig)
    client: ClientConfig = field(default_factory=ClientConfig)
    default_timeout_s: float = 30.0
    session_window: int = 512
    idle_stream_close_s: float = 2.0
    stream_open_timeout_s: float = 10.0
    write_timeout_s: float = 30.0
    tick_interval_s: float = 0.25
    unusable_retry_s: float = 5.0
    max_bad_blocks: int = 4
    ban_s: float = 60.0
    read_chunk_bytes: int = 1024 * 1024
    hash_in_thread_bytes: int = 256 * 1024
    inbound_queue_messages: int = 4  # up to 16 MiB decoded and waiting per stream
    rebroadcast_interval_s: float = 30.0  # boxo's defaultRebroadcastInterval
    reply_delay_s: float = 0.0
    store_steps: int = 8  # up to 32 MiB verified and waiting for the writer

    def __post_init__(self) -> None:
        for name in ("default_timeout_s", "idle_stream_close_s", "stream_open_timeout_s",
                     "write_timeout_s", "tick_interval_s", "unusable_retry_s",
                     "rebroadcast_interval_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"bitswap.{name}: must be > 0, got {getattr(self, name)}")
        if self.session_window < 1:
            raise ValueError(f"bitswap.session_window: must be >= 1, got {self.session_window}")
        if self.store_steps < 1:
            raise ValueError(f"bitswap.store_steps: must be >= 1, got {self.store_steps}")
        if self.max_bad_blocks < 0:
            raise ValueError("bitswap.max_bad_blocks: must be >= 0")
        if self.reply_delay_s < 0:
            raise ValueError(f"bitswap.reply_delay_s: must be >= 0, got {self.reply_delay_s}")
