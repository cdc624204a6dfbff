"""Inbound Bitswap streams: read each until the peer closes it, decode, hand messages on.

Every inbound stream is read to its end, as a pipeline of three stages that
overlap:

1. the reader takes the stream's data as it was decrypted (``read_chunks``:
   no joining copy), splits it into messages (each body copied at most once)
   and decodes them: block data stay views into the body. A message of many
   fields or a big wantlist (``costly_to_decode``) is decoded in a worker thread;
2. the processor hands each message to the exchange (``on_message``), which
   answers wants and presences and hashes the blocks (in a worker thread for
   a big message) and returns a ``StoreStep`` for the wanted ones;
3. each ``StoreStep`` runs as its own task: it queues the blocks at the
   single writer and delivers them once committed. The processor does not
   wait for the commit, so while one message's blocks are being written the
   next are hashed, and the writer commits several messages in one
   transaction. At most ``store_steps`` steps wait at once (for all streams),
   bounding the block data held to about that many messages (4 MiB each).

Kubo and Helia send every reply on a stream of its own that carries one
message and ends. So the first messages of every stream go through stage 2
on the stream's own task as soon as they are read; if by then the peer has
closed the stream (its end came right after the data), their blocks are
stored on that task too and nothing more is started: no processor task, no
queue, no nursery for the steps. Otherwise the pipeline takes over.

At most ``inbound_queue_messages`` decoded messages wait between stages 1
and 2 per stream. Garbage or oversize frames cut the peer off at once. What
a message means is the exchange's business (``InboundOwner.on_message``).

On the fast channel such one-message streams (those that select the protocol
in their first bytes, as Kubo's and Helia's do) skip py-libp2p's streams
altogether: the connection's reader hands their bytes to ``open_direct``'s
receivers (``transport/direct.py``), which split them into messages in the
reader and queue the bodies for one task, ``run_direct``, that decodes and
hands them to the exchange in arrival order and runs their ``StoreStep``s as
above. A peer's queued bodies are bounded by ``direct_queue_bytes``: past it,
its stream is reset and the peer cut off (it sent far more than we asked for).
Imports the wire codec, the exchange's config and the transport's reader.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
import hashlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import trio
from libp2p.abc import INetStream
from libp2p.peer.id import ID

from pinfold.blockstore.cid import SHA2_256
from pinfold.daemon.p2p.bitswap.config import ExchangeConfig
from pinfold.daemon.p2p.bitswap.errors import MessageTooLarge, RemoteProtocolError
from pinfold.daemon.p2p.bitswap.framing import MAX_MESSAGE_SIZE, FrameDecoder
from pinfold.daemon.p2p.bitswap.message import Block, Message, costly_to_decode, decode_message
from pinfold.daemon.p2p.bitswap.outbound import ended_cleanly, reset_stream
from pinfold.daemon.p2p.transport import at_end, read_chunks

__all__ = ["DIRECT_BATCH_MESSAGES", "DIRECT_QUEUE_BYTES", "InboundOwner", "InboundStreams",
           "StoreStep", "digests", "hash_blocks"]

logger = logging.getLogger(__name__)

#: direct streams' messages ``run_direct`` takes at once, at most
DIRECT_BATCH_MESSAGES = 16
#: message bytes of one peer's direct streams waiting for ``run_direct``, at most:
#: 16 want-blocks in flight of up to 4 MiB messages, with room to spare
DIRECT_QUEUE_BYTES = 128 * 1024 * 1024

StoreStep = Callable[[], Awaitable[None]]
"""The second half of handling a message's blocks: ``await step()`` stores the
blocks the exchange already verified (one request to the batch writer), then
hands them to the fetches that wanted them. Raises what the writer raises
(``StoreFull``, ``StoreClosed``, ...; the reader logs it and the blocks stay
wanted); cancelled before the writer took the request, nothing of it is stored."""



def hash_blocks(blocks: Sequence[Block]) -> list[bytes | None]:
    """The SHA2-256 digest of each block's data (32 bytes), or None for a block whose
    CID prefix names another hash function (no other is accepted). Releases the
    GIL while hashing, so it may run in a worker thread."""
    out: list[bytes | None] = []
    sha256 = hashlib.sha256
    for b in blocks:
        out.append(sha256(b.data).digest() if b.prefix.mh_code == SHA2_256 else None)
    return out


async def digests(blocks: Sequence[Block], in_thread_bytes: int) -> list[bytes | None]:
    """``hash_blocks(blocks)``, in a worker thread when their data add up to
    ``in_thread_bytes`` or more (ExchangeConfig.hash_in_thread_bytes)."""
    if sum(len(b.data) for b in blocks) >= in_thread_bytes:
        return await trio.to_thread.run_sync(hash_blocks, blocks)
    return hash_blocks(blocks)


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

    async def on_message(self, peer: ID, msg: Message,
                         digests: Sequence[bytes | None] | None = None) -> StoreStep | None:
        """Handle ``msg``; for wanted blocks, the step that stores them (run later).
        ``digests``: ``hash_blocks(msg.blocks)`` when the caller has them already."""
        ...

    async def cut_off(self, peer: ID, exc: RemoteProtocolError) -> None: ...

    def stream_broke(self, peer: ID) -> None:
        """A stream from ``peer`` ended uncleanly: messages on it may be lost."""
        ...


class InboundStreams:
    """The stream handler for every Bitswap protocol.

    Args:
        owner: the exchange.
        config: read sizes and queue bound.
        counters: the exchange's counters (``messages_received``,
            ``inbound_streams``, ``one_message_streams``).
    """

    def __init__(self, owner: InboundOwner, config: ExchangeConfig, counters: Counter[str]) -> None:
        self._owner = owner
        self._config = config
        self._c = counters
        self._store_slots = trio.Semaphore(config.store_steps)
        # bodies of direct streams' messages, in arrival order, for run_direct
        self._direct_send, self._direct_recv = trio.open_memory_channel[
            tuple[ID, bytes | memoryview | None]](math.inf)
        self._direct_bytes: Counter[ID] = Counter()  # per peer, queued
        self._direct_refused: list[tuple[ID, RemoteProtocolError]] = []  # to cut off

    # ------------------------------------------------------------ direct streams

    def open_direct(self, peer: ID) -> _DirectStream | None:
        """A receiver for a stream from ``peer`` served by the connection's reader
        (``transport.DirectOpener``); None (py-libp2p's stream and ``handle``,
        which refuses it) when we do not exchange or ``peer`` is banned."""
        owner = self._owner
        if not owner.running or owner.is_banned(peer):
            return None
        owner.peer_seen(peer)
        self._c["inbound_streams"] += 1
        return _DirectStream(self, peer)

    def _queue_direct(self, peer: ID, body: bytes | memoryview) -> bool:
        """Queue a direct stream's message body; False when ``peer`` is over its bound."""
        queued = self._direct_bytes[peer] + len(body)
        if queued > DIRECT_QUEUE_BYTES:
            self._refuse_direct(peer, MessageTooLarge(
                f"{queued} bytes of messages queued from one peer (limit {DIRECT_QUEUE_BYTES})"))
            return False
        self._direct_bytes[peer] = queued
        self._direct_send.send_nowait((peer, body))
        return True

    def _refuse_direct(self, peer: ID, exc: RemoteProtocolError) -> None:
        """Cut ``peer`` off (from ``run_direct``: the reader cannot await)."""
        self._direct_refused.append((peer, exc))
        self._direct_send.send_nowait((peer, None))  # wakes run_direct

    async def run_direct(self) -> None:
        """Hand the direct streams' messages to the exchange, in arrival order, and
        store their blocks as ``_process`` does. Runs until cancelled.

        Messages that queued up meanwhile (up to ``DIRECT_BATCH_MESSAGES``) are
        taken together and their blocks hashed in one worker-thread call: Kubo
        sends one block a message, and a thread round trip costs the event loop
        about half as much as hashing the block."""
        owner = self._owner
        recv = self._direct_recv
        async with trio.open_nursery() as steps:
            while True:
                batch = [await recv.receive()]
                while len(batch) < DIRECT_BATCH_MESSAGES:
                    try:
                        batch.append(recv.receive_nowait())
                    except trio.WouldBlock:
                        break
                while self._direct_refused:
                    bad, exc = self._direct_refused.pop(0)
                    await owner.cut_off(bad, exc)
                msgs: list[tuple[ID, Message]] = []
                for peer, body in batch:
                    if body is None:  # a wake-up for the cut-offs above
                        continue
                    self._unqueue_direct(peer, len(body))
                    if not owner.is_up(peer):  # cut off meanwhile
                        continue
                    try:
                        msgs.append((peer, await self._decode(body)))
                    except RemoteProtocolError as exc:
                        await owner.cut_off(peer, exc)
                hashed = await digests([b for _, msg in msgs for b in msg.blocks],
                                       self._config.hash_in_thread_bytes)
                pos = 0
                for peer, msg in msgs:
                    mine = hashed[pos:pos + len(msg.blocks)]
                    pos += len(msg.blocks)
                    if not owner.is_up(peer):
                        continue
                    try:
                        step = await owner.on_message(peer, msg, mine)
                    except RemoteProtocolError as exc:
                        await owner.cut_off(peer, exc)
                        continue
                    if step is not None:
                        await self._store_slots.acquire()
                        steps.start_soon(self._store, peer, step)

    def _unqueue_direct(self, peer: ID, nbytes: int) -> None:
        queued = self._direct_bytes
        left = queued[peer] - nbytes
        if left > 0:
            queued[peer] = left
        else:
            queued.pop(peer, None)

    # ------------------------------------------------------------ py-libp2p streams

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
        self._c["inbound_streams"] += 1
        try:
            clean = await self._serve(peer, stream)
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

    async def _serve(self, peer: ID, stream: INetStream) -> bool:
        """Read and handle ``stream`` to its end; whether it ended cleanly (False
        also when the peer was cut off and the read cancelled).

        The first messages are handled on this task as soon as they are read;
        if the stream has ended by then (a one-message stream), their blocks
        are stored here too and that is all. Otherwise the pipeline takes over,
        starting with those blocks.
        """
        decoder = FrameDecoder(MAX_MESSAGE_SIZE)
        first = await self._read_first(peer, stream, decoder)
        if first is None:
            return False  # reset, broken or cut off
        msgs, ended = first
        owner = self._owner
        steps: list[StoreStep] = []
        try:
            for msg in msgs:
                step = await owner.on_message(peer, msg)
                if step is not None:
                    steps.append(step)
                if not owner.is_up(peer):  # cut off meanwhile
                    return False
        except RemoteProtocolError as exc:
            await owner.cut_off(peer, exc)
            return False
        if ended or (not decoder.pending and at_end(stream) and ended_cleanly(stream)):
            self._c["one_message_streams"] += 1
            for step in steps:
                await self._store_slots.acquire()
                await self._store(peer, step)
            return True
        clean = False  # stays so when the processor cut the peer off and cancelled the read
        send, recv = trio.open_memory_channel[Message](self._config.inbound_queue_messages)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._process, peer, recv, nursery.cancel_scope, steps)
            async with send:
                clean = await self._read(peer, stream, send, decoder)
        return clean

    async def _read_first(
        self, peer: ID, stream: INetStream, decoder: FrameDecoder
    ) -> tuple[list[Message], bool] | None:
        """Read until at least one message is decoded: ``(messages, False)``; or
        ``([], True)`` for a stream that ended cleanly before any message. None
        when the stream broke or the peer was cut off."""
        msgs: list[Message] = []
        try:
            while self._owner.running:
                pieces = await self._next_pieces(stream)
                if isinstance(pieces, bool):
                    return (msgs, True) if pieces else None
                for piece in pieces:
                    decoder.feed(piece)
                while (body := decoder.next_frame()) is not None:
                    msgs.append(await self._decode(body))
                if msgs:
                    return msgs, False
        except RemoteProtocolError as exc:
            await self._owner.cut_off(peer, exc)
        return None

    async def _next_pieces(self, stream: INetStream) -> list[memoryview | bytes] | bool:
        """The next chunks read from ``stream``; at its end, whether it ended cleanly
        (True: the peer closed it on a live connection; False: reset or broken)."""
        try:
            pieces = await read_chunks(stream, self._config.read_chunk_bytes)
        except trio.Cancelled:
            raise
        except EOFError:  # py-libp2p's StreamEOF; also raised on a closed connection
            return ended_cleanly(stream)
        except Exception:  # noqa: BLE001 - reset, connection error
            return False
        return pieces or ended_cleanly(stream)

    async def _decode(self, body: memoryview | bytes) -> Message:
        if costly_to_decode(body):
            # a message of many wants or presences (up to ~100k in 4 MiB) is
            # decoded off the trio thread, so one peer cannot stall the daemon
            msg = await trio.to_thread.run_sync(decode_message, body)
        else:
            msg = decode_message(body)
        self._c["messages_received"] += 1
        return msg

    async def _read(
        self, peer: ID, stream: INetStream, send: trio.MemorySendChannel[Message],
        decoder: FrameDecoder,
    ) -> bool:
        """Read ``stream`` into ``send`` until it ends (``decoder`` may hold the
        start of a message already).

        Returns:
            True when the peer closed the stream cleanly on a live connection;
            False when it was reset, its connection closed, or we stopped reading.
        """
        try:
            while self._owner.running:
                pieces = await self._next_pieces(stream)
                if isinstance(pieces, bool):
                    return pieces
                for piece in pieces:
                    decoder.feed(piece)
                while (body := decoder.next_frame()) is not None:
                    msg = await self._decode(body)
                    try:
                        await send.send(msg)
                    except trio.BrokenResourceError:  # the processor cut the peer off
                        return False
        except RemoteProtocolError as exc:
            await self._owner.cut_off(peer, exc)
        return False

    async def _process(
        self, peer: ID, recv: trio.MemoryReceiveChannel[Message], scope: trio.CancelScope,
        first: list[StoreStep],
    ) -> None:
        owner = self._owner
        async with recv, trio.open_nursery() as steps:
            for step in first:  # the first messages' blocks, handled by _serve
                await self._store_slots.acquire()
                steps.start_soon(self._store, peer, step)
            try:
                async for msg in recv:
                    step = await owner.on_message(peer, msg)
                    if step is not None:
                        await self._store_slots.acquire()
                        steps.start_soon(self._store, peer, step)
                    if not owner.is_up(peer):  # cut off meanwhile
                        scope.cancel()
                        return
            except RemoteProtocolError as exc:
                await owner.cut_off(peer, exc)
                scope.cancel()

    async def _store(self, peer: ID, step: StoreStep) -> None:
        """Run ``step``. If the store refuses its blocks (full, closed, an I/O
        error), the step has failed the fetches that wanted them; the error is
        logged and the peer gets our remaining wants again, as after a broken
        stream; the stream goes on."""
        try:
            await step()
        except Exception as exc:  # noqa: BLE001 - logged; the stream goes on
            logger.warning("bitswap: storing blocks received from %s failed: %s", peer, exc)
            self._c["store_failures"] += 1
            self._owner.stream_broke(peer)
        finally:
            self._store_slots.release()


async def _close_quietly(stream: INetStream) -> None:
    try:
        with trio.move_on_after(1.0):
            await stream.close()
    except Exception:
        pass



class _DirectStream:
    """One direct stream's receiver (``transport.DirectReceiver``): splits its bytes
    into messages as the reader hands them over and queues the bodies."""

    __slots__ = ("_decoder", "_inbound", "_messages", "_peer")

    def __init__(self, inbound: InboundStreams, peer: ID) -> None:
        self._inbound = inbound
        self._peer = peer
        self._decoder = FrameDecoder(MAX_MESSAGE_SIZE)
        self._messages = 0

    def feed(self, data: memoryview | bytes) -> bool:
        decoder = self._decoder
        decoder.feed(data)
        try:
            while (body := decoder.next_frame()) is not None:
                self._messages += 1
                if not self._inbound._queue_direct(self._peer, body):
                    return False
        except RemoteProtocolError as exc:  # garbage or an oversize length prefix
            self._inbound._refuse_direct(self._peer, exc)
            return False
        return True

    def end(self, clean: bool) -> None:
        inbound = self._inbound
        if clean and self._messages == 1:
            inbound._c["one_message_streams"] += 1
        if not clean and inbound._owner.running:
            inbound._owner.stream_broke(self._peer)
