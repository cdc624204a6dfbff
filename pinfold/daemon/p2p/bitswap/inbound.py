"""Inbound Bitswap streams: read each until the peer closes it, decode, hand messages on.

Every inbound stream is read to its end. Reading and processing overlap: the
reader keeps draining the stream (Yamux window updates flow) while the
processor handles earlier messages; at most ``inbound_queue_messages`` wait
in between. Garbage or oversize frames cut the peer off at once. What a
message means is the exchange's business (``InboundOwner.on_message``).
Imports the wire codec and the exchange's config.
"""

from __future__ import annotations

from collections import Counter
from typing import Protocol

import trio
from libp2p.abc import INetStream
from libp2p.peer.id import ID

from pinfold.daemon.p2p.bitswap.config import ExchangeConfig
from pinfold.daemon.p2p.bitswap.errors import RemoteProtocolError
from pinfold.daemon.p2p.bitswap.framing import MAX_MESSAGE_SIZE, FrameDecoder
from pinfold.daemon.p2p.bitswap.message import Message, decode_message
from pinfold.daemon.p2p.bitswap.outbound import ended_cleanly, reset_stream

__all__ = ["InboundOwner", "InboundStreams"]


class InboundOwner(Protocol):
    """What the stream reader needs from the exchange."""

    @property
    def running(self) -> bool: ...

    def is_banned(self, peer: ID) -> bool:
        """Whether ``peer`` is refused now (cut off lately)."""
        ...

    async def disconnect(self, peer: ID) -> None: ...

    def peer_seen(self, peer: ID) -> None:
        """``peer`` opened a stream: exchange with it if we do not yet."""
        ...

    def is_up(self, peer: ID) -> bool:
        """Whether we still exchange with ``peer`` (not cut off meanwhile)."""
        ...

    async def on_message(self, peer: ID, msg: Message) -> None: ...

    async def cut_off(self, peer: ID, exc: RemoteProtocolError) -> None: ...

    def stream_broke(self, peer: ID) -> None:
        """A stream from ``peer`` ended uncleanly: messages on it may be lost."""
        ...


class InboundStreams:
    """The stream handler for every Bitswap protocol.

    Args:
        owner: the exchange.
        config: read sizes and queue bound.
        counters: the exchange's counters (``messages_received``).
    """

    def __init__(self, owner: InboundOwner, config: ExchangeConfig, counters: Counter[str]) -> None:
        self._owner = owner
        self._config = config
        self._c = counters

    async def handle(self, stream: INetStream) -> None:
        """Read one inbound Bitswap stream until the peer closes it."""
        peer = stream.muxed_conn.peer_id
        owner = self._owner
        if not owner.running:
            await reset_stream(stream)
            return
        if owner.is_banned(peer):
            await reset_stream(stream)
            await owner.disconnect(peer)
            return
        owner.peer_seen(peer)
        send, recv = trio.open_memory_channel[Message](self._config.inbound_queue_messages)
        clean = False  # stays so when the processor cut the peer off and cancelled the read
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._process, peer, recv, nursery.cancel_scope)
                async with send:
                    clean = await self._read(peer, stream, send)
        finally:
            with trio.CancelScope(shield=True):
                await _close_quietly(stream)
        # Kubo and Helia open a new stream for every reply and close it cleanly:
        # that is no news. A reset, or an end because the connection went away
        # (another one may stay up, so no disconnect is seen), may have lost
        # messages with it: then our wants go again rather than wait out the
        # stall timeout.
        if not clean:
            owner.stream_broke(peer)

    async def _read(
        self, peer: ID, stream: INetStream, send: trio.MemorySendChannel[Message]
    ) -> bool:
        """Read ``stream`` into ``send`` until it ends.

        Returns:
            True when the peer closed the stream cleanly on a live connection;
            False when it was reset, its connection closed, or we stopped reading.
        """
        decoder = FrameDecoder(MAX_MESSAGE_SIZE)
        chunk = self._config.read_chunk_bytes
        try:
            while self._owner.running:
                try:
                    data = await stream.read(chunk)
                except trio.Cancelled:
                    raise
                except EOFError:  # py-libp2p's StreamEOF; also raised on a closed connection
                    return ended_cleanly(stream)
                except Exception:  # reset, connection error
                    return False
                if not data:
                    return ended_cleanly(stream)
                decoder.feed(data)
                while (body := decoder.next_frame()) is not None:
                    if len(body) >= self._config.hash_in_thread_bytes:
                        # a big message (up to ~100k wants in 4 MiB) is decoded off the
                        # trio thread, so one peer's message cannot stall the daemon
                        msg = await trio.to_thread.run_sync(decode_message, body)
                    else:
                        msg = decode_message(body)
                    self._c["messages_received"] += 1
                    try:
                        await send.send(msg)
                    except trio.BrokenResourceError:  # the processor cut the peer off
                        return False
        except RemoteProtocolError as exc:
            await self._owner.cut_off(peer, exc)
        return False

    async def _process(
        self, peer: ID, recv: trio.MemoryReceiveChannel[Message], scope: trio.CancelScope
    ) -> None:
        owner = self._owner
        async with recv:
            try:
                async for msg in recv:
                    await owner.on_message(peer, msg)
                    if not owner.is_up(peer):  # cut off meanwhile
                        scope.cancel()
                        return
            except RemoteProtocolError as exc:
                await owner.cut_off(peer, exc)
                scope.cancel()


async def _close_quietly(stream: INetStream) -> None:
    try:
        with trio.move_on_after(1.0):
            await stream.close()
    except Exception:
        pass

