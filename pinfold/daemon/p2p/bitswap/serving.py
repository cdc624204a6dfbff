"""The exchange's serving side: the server engine's answers onto the peers' outboxes,
and who may fetch (the serve filter).

``ServerEngine`` (sans-IO) decides what to send whom; ``Serving.loop`` turns each
of its envelopes into blocks read from the store and HAVE/DONT_HAVE presences
(a block gone from the store meanwhile becomes a DONT_HAVE) and queues them on
the peer's outbox (``outbound``). The serve filter (``bitswap.serve =
"cluster"``) says whose wants are answered; ``Bitswap`` asks ``may_serve`` for
every received wantlist, and ``recheck`` drops what is held for peers refused
now. A part of ``exchange.Bitswap``; the module docstring of ``exchange`` says
why refused peers get silence.
"""

from __future__ import annotations

import logging

import trio
from libp2p.peer.id import ID
from pinfold.blockstore.cid import CID
from pinfold.blockstore.errors import BlockNotFound
from pinfold.blockstore.store import BlockStore

from pinfold.daemon.p2p.bitswap.config import ExchangeConfig, ServeFilter
from pinfold.daemon.p2p.bitswap.message import Block, BlockPresence, CidPrefix, PresenceType
from pinfold.daemon.p2p.bitswap.outbound import Envelope, Outbound
from pinfold.daemon.p2p.bitswap.server import ServerEngine

__all__ = ["Serving"]

logger = logging.getLogger(__name__)


class Serving:
    """Answers the engine's envelopes and holds the serve filter (a ``Bitswap`` part).

    Args:
        engine: the server core (what to send whom).
        store: where served blocks are read from (sync ``get``/``get_size``).
        out: the outbound part (each peer's outbox).
        config: the exchange's settings (``reply_delay_s``).
    """

    def __init__(self, engine: ServerEngine, store: BlockStore, out: Outbound,
                 config: ExchangeConfig) -> None:
        self._engine = engine
        self._store = store
        self._out = out
        self._config = config
        self._wake = trio.Event()
        #: whose wants are answered (None: every peer's); set through ``Bitswap.set_serve_filter``
        self.filter: ServeFilter | None = None

    def wake(self) -> None:
        """The engine may have something to send: run ``loop`` again."""
        self._wake.set()

    def may_serve(self, peer: ID) -> bool:
        """Whether ``peer``'s wants are answered; a filter that raises refuses (fails closed)."""
        allowed = self.filter
        if allowed is None:
            return True
        try:
            return bool(allowed(peer))
        except Exception:
            logger.exception("bitswap: serve filter failed for %s; refusing its wants", peer)
            return False

    def recheck(self) -> int:
        """Drop the wants held for peers the filter refuses now, and the answers queued
        for them and not yet written; returns how many wants were dropped."""
        dropped = 0
        for peer in self._engine.peers():
            if self.may_serve(peer):  # type: ignore[arg-type]
                continue
            dropped += self._engine.drop_wants(peer)
            self._out.drop_envelopes(peer)  # type: ignore[arg-type]
        if dropped:
            logger.info("bitswap: dropped %d wants of peers no longer allowed to fetch", dropped)
        return dropped

    def _block_size(self, cid: CID) -> int | None:
        try:
            return self._store.get_size(cid)
        except BlockNotFound:
            return None
        except Exception as exc:
            logger.warning("bitswap: store size lookup for %s failed: %r", cid, exc)
            return None

    async def loop(self) -> None:
        """Turn the engine's envelopes into messages on the peers' outboxes (runs until
        cancelled, waiting for ``wake`` when the engine has nothing to send)."""
        while True:
            env = self._engine.next_envelope(self._block_size)
            if env is None:
                await self._wake.wait()
                self._wake = trio.Event()
                continue
            box = self._out.boxes.get(env.peer)  # type: ignore[arg-type]
            if box is None or box.closed:
                self._engine.envelope_sent(env.peer, env.block_bytes, len(env.blocks), written=False)
                continue
            blocks: list[Block] = []
            presences = [BlockPresence(cid=c, type=PresenceType.HAVE) for c in env.haves]
            presences += [BlockPresence(cid=c, type=PresenceType.DONT_HAVE) for c in env.dont_haves]
            for cid in env.blocks:
                try:
                    data = self._store.get(cid)
                except BlockNotFound:
                    presences.append(BlockPresence(cid=cid, type=PresenceType.DONT_HAVE))
                    continue
                blocks.append(Block(prefix=CidPrefix.of(cid), data=data))
            if self._config.reply_delay_s:
                await trio.sleep(self._config.reply_delay_s)  # test hook: a slow holder
            box.add_env(Envelope(blocks=blocks, presences=presences,
                                 block_bytes=env.block_bytes, nblocks=len(blocks)))
            await trio.lowlevel.checkpoint()
