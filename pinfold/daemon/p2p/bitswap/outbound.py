"""Our outbound stream to each peer: its message queue and the task that writes it.

Bitswap-protocol.md, "Interaction Pattern": every message we send a peer --
our wants and our answers to its wants -- goes on *our own* stream to it,
opened on demand, reused while busy and closed after ``idle_stream_close_s``
of silence (Helia aborts a Bitswap stream idle for 5 s). The stream is drained
too: py-libp2p's Yamux resets a stream whose reader stalls for 5 s. A stream
that breaks is replaced and our wantlist for the peer is sent again in full;
a peer no stream can be written to is handed to ``on_unusable``.

``Outbound`` owns the ``Outbox`` per peer; the exchange (``exchange.Bitswap``)
decides when a peer is up or down. Imports the cores and the wire codec.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import trio
from libp2p.abc import INetStream
from libp2p.peer.id import ID

from pinfold.daemon.p2p.bitswap.config import BitswapHost, ExchangeConfig
from pinfold.daemon.p2p.bitswap.ledger import PeerLedger
from pinfold.daemon.p2p.bitswap.message import (
    MAX_MESSAGE_SIZE,
    PROTOCOL_1_2_0,
    PROTOCOLS,
    Block,
    BlockPresence,
    Message,
    WantEntry,
    encode_framed,
)
from pinfold.daemon.p2p.bitswap.server import ServerEngine
from pinfold.daemon.p2p.bitswap.wants import WantManager

__all__ = ["Envelope", "Outbound", "Outbox", "ended_cleanly", "reset_stream"]

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class Envelope:
    """Blocks and presences the engine released for one peer, as one unit of accounting."""

    blocks: list[Block]
    presences: list[BlockPresence]
    block_bytes: int  # as accounted by the engine
    nblocks: int


class Outbox:
    """Messages waiting to go out on our stream to one peer."""

    __slots__ = ("closed", "envs", "full", "peer", "protocol", "stream", "wake", "wants")

    def __init__(self, peer: ID) -> None:
        self.peer = peer
        self.wants: list[WantEntry] = []
        self.full = False  # the next message replaces the peer's copy of our wantlist
        self.envs: deque[Envelope] = deque()
        self.wake = trio.Event()
        self.closed = False
        self.stream: INetStream | None = None
        self.protocol = PROTOCOL_1_2_0

    def add_wants(self, entries: Iterable[WantEntry]) -> None:
        self.wants.extend(entries)
        self.wake.set()

    def set_full(self, entries: list[WantEntry]) -> None:
        """Send ``entries`` as our whole wantlist next (pending updates are in it)."""
        self.wants = entries
        self.full = True
        self.wake.set()

    def add_env(self, env: Envelope) -> None:
        self.envs.append(env)
        self.wake.set()

    def pending(self) -> bool:
        return bool(self.wants or self.envs or self.full)

    def take(self, limit: int) -> tuple[Message, list[Envelope]]:
        """The next message (wants first, then whole envelopes), at most ``limit`` bytes."""
        budget = limit - 1024
        wants: list[WantEntry] = []
        if self.wants:
            size = 0
            n = 0
            for e in self.wants:
                size += len(bytes(e.cid)) + 16
                if size > budget // 2 and n:
                    break
                n += 1
            wants = self.wants[:n]
            del self.wants[:n]
            budget -= size
        envs: list[Envelope] = []
        blocks: list[Block] = []
        presences: list[BlockPresence] = []
        while self.envs:
            env = self.envs[0]
            cost = sum(len(b.data) + 64 for b in env.blocks) + 64 * len(env.presences)
            if cost > budget and (envs or wants):
                break
            self.envs.popleft()
            envs.append(env)
            blocks.extend(env.blocks)
            presences.extend(env.presences)
            budget -= cost
        full, self.full = self.full, False
        msg = Message(wantlist=tuple(wants), full=full, blocks=tuple(blocks),
                      presences=tuple(presences))
        return msg, envs


class Outbound:
    """The ``Outbox`` of every peer we exchange with, and the tasks writing them.

    Args:
        host: opens the streams.
        engine: told which envelopes were written (or dropped).
        wants: our wantlist per peer, sent again after a broken stream.
        ledger: told when a write succeeded (the peer's send backoff starts over).
        config: timeouts.
        counters: the exchange's counters (``blocks_sent``, ``bytes_sent``,
            ``wantlist_resends``).
        wake_server: called when written envelopes free room in the engine.
        on_unusable: called with a peer no stream could be opened or written to.
    """

    def __init__(
        self,
        host: BitswapHost,
        engine: ServerEngine,
        wants: WantManager,
        ledger: PeerLedger,
        config: ExchangeConfig,
        counters: Counter[str],
        wake_server: Callable[[], None],
        on_unusable: Callable[[ID], None],
    ) -> None:
        self.boxes: dict[ID, Outbox] = {}
        self.nursery: trio.Nursery | None = None  # set while the exchange runs
        self._host = host
        self._engine = engine
        self._wants = wants
        self._ledger = ledger
        self._config = config
        self._c = counters
        self._wake_server = wake_server
        self._on_unusable = on_unusable

    def open(self, peer: ID) -> None:
        """Start an outbox (and its writer task) for ``peer``; needs ``nursery``."""
        assert self.nursery is not None
        box = Outbox(peer)
        self.boxes[peer] = box
        self.nursery.start_soon(self._sender, box)

    def close(self, peer: ID) -> bool:
        """Stop ``peer``'s outbox (its writer closes the stream). False if it had none."""
        box = self.boxes.pop(peer, None)
        if box is None:
            return False
        box.closed = True
        box.wake.set()
        return True

    def live(self, peer: ID) -> Outbox | None:
        """``peer``'s outbox if it takes messages."""
        box = self.boxes.get(peer)
        return box if box is not None and not box.closed else None

    def drop_envelopes(self, peer: ID) -> None:
        """Forget the answers queued for ``peer`` and not yet written."""
        box = self.boxes.get(peer)
        if box is not None:
            for env in box.envs:
                self._engine.envelope_sent(peer, env.block_bytes, env.nblocks, written=False)
            box.envs.clear()

    def resend_wants(self, peer: ID) -> None:
        """Send ``peer`` our whole wantlist for it again (``full``), if we want
        anything from it: after a broken stream our wants or its blocks may be
        lost, and the want would otherwise wait out the stall timeout."""
        box = self.live(peer)
        if box is None:
            return
        entries = self._wants.wantlist_for(peer)
        if not entries:
            return
        self._c["wantlist_resends"] += 1
        logger.debug("bitswap: stream with %s broke; sending our %d wants again",
                     peer, len(entries))
        box.set_full(entries)

    async def _sender(self, box: Outbox) -> None:
        """Write ``box``'s messages on our stream to the peer, opening it on demand
        and closing it when idle."""
        cfg = self._config
        try:
            while not box.closed:
                if not box.pending():
                    box.wake = trio.Event()
                    if box.stream is not None:
                        with trio.move_on_after(cfg.idle_stream_close_s):
                            await box.wake.wait()
                        if not box.pending() and not box.closed:
                            await self._close_stream(box)
                    else:
                        await box.wake.wait()
                    continue
                msg, envs = box.take(MAX_MESSAGE_SIZE)
                ok = await self._write(box, msg)
                nb = 0
                for env in envs:
                    self._engine.envelope_sent(box.peer, env.block_bytes, env.nblocks, written=ok)
                    nb += env.nblocks
                if envs:
                    self._wake_server()
                if ok:
                    self._ledger.usable(box.peer)
                    self._c["blocks_sent"] += nb
                    self._c["bytes_sent"] += sum(e.block_bytes for e in envs)
                else:
                    self._on_unusable(box.peer)
                    return
        finally:
            for env in box.envs:
                self._engine.envelope_sent(box.peer, env.block_bytes, env.nblocks, written=False)
            box.envs.clear()
            if box.stream is not None:
                with trio.CancelScope(shield=True):
                    await self._close_stream(box)

    async def _write(self, box: Outbox, msg: Message) -> bool:
        """Write one message, reopening the stream once if the old one broke (and
        then sending our whole wantlist again: what the old one carried may be lost)."""
        for attempt in (1, 2):
            try:
                if box.stream is None:
                    with trio.fail_after(self._config.stream_open_timeout_s):
                        stream = await self._host.new_stream(box.peer, PROTOCOLS)
                    box.stream = stream
                    box.protocol = str(stream.get_protocol() or PROTOCOL_1_2_0)
                    if self.nursery is not None:
                        self.nursery.start_soon(self._drain, box, stream)
                data = encode_framed(msg, protocol=box.protocol)
                with trio.fail_after(self._config.write_timeout_s):
                    await box.stream.write(data)
                if attempt == 2 and not msg.full:
                    self.resend_wants(box.peer)
                return True
            except trio.Cancelled:
                raise
            except Exception as exc:
                logger.debug("bitswap: write to %s failed (attempt %d): %r", box.peer, attempt, exc)
                if box.stream is not None:
                    await reset_stream(box.stream)
                    box.stream = None
                if box.closed:
                    return False
        return False

    async def _close_stream(self, box: Outbox) -> None:
        stream, box.stream = box.stream, None
        if stream is None:
            return
        try:
            with trio.move_on_after(1.0):
                await stream.close()
        except Exception:
            await reset_stream(stream)

    async def _drain(self, box: Outbox, stream: INetStream) -> None:
        """Keep reading our outbound stream until it ends (peers send nothing on it,
        but an unread Yamux stream gets reset).

        A clean end is no news: after we closed it (idle), or a peer closing its
        side of our stream at once (js-libp2p peers such as Helia do). An error
        while the stream is still in use means it broke (reset, or the connection
        went while the peer stays connected over another): messages written on
        it may be lost, so the next message goes on a new stream and our
        wantlist for the peer is sent again in full.
        """
        try:
            while await stream.read(65536):
                pass
            if ended_cleanly(stream):
                return
        except trio.Cancelled:
            raise
        except EOFError:  # py-libp2p's StreamEOF
            if ended_cleanly(stream):
                return
        except Exception:
            pass
        if box.stream is stream and not box.closed:
            box.stream = None
            await reset_stream(stream)
            self.resend_wants(box.peer)


async def reset_stream(stream: INetStream) -> None:
    """Reset ``stream``, giving up quietly after 1 s or on error."""
    try:
        with trio.move_on_after(1.0):
            await stream.reset()
    except Exception as exc:
        logger.debug("bitswap: stream reset failed: %r", exc)


def ended_cleanly(stream: INetStream) -> bool:
    """Whether an EOF on ``stream`` is a clean end: the stream was not reset and
    its connection is still open (py-libp2p 0.8.1 raises StreamEOF for both).

    Reads py-libp2p's Yamux internals (``muxed_conn.is_closed``,
    ``muxed_stream.reset_received``); tests/p2p/test_libp2p_internals.py fails if
    they change.
    """
    if getattr(getattr(stream, "muxed_conn", None), "is_closed", False):
        return False
    return not getattr(getattr(stream, "muxed_stream", None), "reset_received", False)
