"""The Bitswap exchange: the trio driver wiring the sans-IO cores to streams and the store.

``Bitswap`` wires ``ServerEngine`` (what to send whom), ``WantManager`` (whom
to ask for what) and ``PeerLedger`` (whom to refuse, whom to leave alone,
which blocks count against a peer) to libp2p streams (``outbound``: our stream
to each peer; ``inbound``: theirs to us), the block store (``serving``: the
engine's answers, and the serve filter), the batched writer and the fetch
sessions (``fetch``). It decides nothing itself: it reads,
decodes, hashes, stores, writes, and feeds events to the cores.

Trust: every received block is hashed (sha2-256) and must match a CID we
want; unsolicited blocks are dropped and never stored; blocks that match
nothing we asked for count against the peer, which is disconnected after
``max_bad_blocks``; garbage, oversize messages and wantlist floods disconnect
at once. Such peers are refused for ``ban_s`` seconds while the others are
served as usual.

Who may fetch: with a serve filter (``set_serve_filter``; the node installs
the cluster's membership test when ``bitswap.serve = "cluster"``) the wants
of a peer the filter refuses are counted (``refused_wants``) and dropped on
arrival: they never reach the engine, so no ledger entry, no answer and no
memory is kept for them. Our own fetching from such peers is unaffected.
Refused peers get silence, not DONT_HAVE even when they ask ``sendDontHave``:
both answers are the same whatever we hold, so neither tells what we hold,
but silence also reveals nothing else (not even that a policy applies), costs
no bytes and no outbox memory per want (a want flood cannot make us queue
replies), and gives a probe no reply timing to measure. The price: an
outsider's fetch waits for its own timeout instead of failing at once.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections import Counter
from collections.abc import AsyncGenerator, Callable, Iterable, Sequence
from types import MappingProxyType
from typing import Any

import trio
from libp2p.peer.id import ID
from pinfold.blockstore.cid import CID, cid_key
from pinfold.blockstore.errors import BlockstoreError
from pinfold.blockstore.store import BlockStore

from pinfold.daemon.p2p.bitswap.client_types import SendWants, WantFailed
from pinfold.daemon.p2p.bitswap.config import BitswapHost, ExchangeConfig, PutMany, ServeFilter
from pinfold.daemon.p2p.bitswap.errors import BitswapNotRunning, RemoteProtocolError
from pinfold.daemon.p2p.bitswap.fetch import Fetches
from pinfold.daemon.p2p.bitswap.inbound import InboundStreams, StoreStep
from pinfold.daemon.p2p.bitswap.inbound import digests as hash_digests
from pinfold.daemon.p2p.bitswap.ledger import BlockVerdict, PeerLedger
from pinfold.daemon.p2p.bitswap.load import LoadSampler
from pinfold.daemon.p2p.bitswap.message import (
    PROTOCOLS,
    Block,
    Message,
)
from pinfold.daemon.p2p.bitswap.outbound import Outbound, Outbox
from pinfold.daemon.p2p.bitswap.server import LedgerStat, ServerEngine
from pinfold.daemon.p2p.bitswap.serving import Serving
from pinfold.daemon.p2p.bitswap.schedule import PeerPerf
from pinfold.daemon.p2p.bitswap.stats import BitswapStats, FetchStats, LatencyHistogram
from pinfold.daemon.p2p.bitswap.wants import WantManager

__all__ = ["Bitswap"]

logger = logging.getLogger(__name__)


class Bitswap:
    """Bitswap 1.2.0 (answering 1.1.0 and 1.0.0) over a libp2p host.

    Args:
        host: the libp2p host (``pinfold.daemon.p2p.host.Host``).
        store: where blocks are served from (sync ``has``/``get``/``get_size``).
        put_many: async writer for received blocks (``await put_many([(cid, data), ...])``);
            called only with blocks verified against their CIDs.
        config: tuning and limits.

    Start with ``await nursery.start(bitswap.run)``; fetch with ``fetch_blocks``,
    ``fetch_dag`` or ``get_block``; read counters with ``statistics()``.
    """

    def __init__(
        self,
        host: BitswapHost,
        store: BlockStore,
        put_many: PutMany,
        *,
        config: ExchangeConfig | None = None,
    ) -> None:
        self.config = cfg = config or ExchangeConfig()
        self._host = host
        self._store = store
        self._put_many = put_many
        self._engine = ServerEngine(cfg.server)
        self._wants = WantManager(cfg.client)
        self._ledger = PeerLedger(ban_s=cfg.ban_s, max_bad_blocks=cfg.max_bad_blocks,
                                  unusable_retry_s=cfg.unusable_retry_s)
        self._c: Counter[str] = Counter()
        self._rejected: Counter[str] = Counter()
        self._received_from: Counter[ID] = Counter()  # wanted blocks by sender, kept
        self._latency = LatencyHistogram()
        self._out = Outbound(host, self._engine, self._wants, self._ledger, cfg, self._c,
                             wake_server=self._wake_server, on_unusable=self._peer_unusable)
        self._outboxes: dict[ID, Outbox] = self._out.boxes
        self._inbound = InboundStreams(self, cfg, self._c)
        self._fetches = Fetches(self._wants, store, cfg, self._apply, self._check_running)
        self._serving = Serving(self._engine, store, self._out, cfg)
        self._nursery: trio.Nursery | None = None
        self._running = False

    # ------------------------------------------------------------ service

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve Bitswap until cancelled; ``task_status.started()`` once the handlers are set.

        Cancellation closes every stream and fails every open fetch with ``BitswapNotRunning``.
        """
        events = self._host.subscribe()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = self._out.nursery = nursery
                self._running = True
                for proto in PROTOCOLS:
                    self._host.set_stream_handler(proto, self._inbound.handle, receive_only=True,
                                                  direct=self._inbound.open_direct)
                for peer in self._host.connected_peers():
                    self._peer_up(peer)
                nursery.start_soon(self._peer_events, events)
                nursery.start_soon(self._inbound.run_direct)
                nursery.start_soon(self._serving.loop)
                nursery.start_soon(self._ticker)
                nursery.start_soon(self._rebroadcaster)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._running = False
            self._nursery = self._out.nursery = None
            self._fetches.stop_all(BitswapNotRunning("bitswap stopped"))
            self._outboxes.clear()

    @property
    def running(self) -> bool:
        """Whether ``run`` is serving."""
        return self._running

    def _check_running(self) -> None:
        if not self._running:
            raise BitswapNotRunning("bitswap is not running (start Bitswap.run first)")

    def _wake_server(self) -> None:
        self._serving.wake()

    # ------------------------------------------------------------ public API

    async def get_block(self, cid: CID | str, *, timeout_s: float | None = None,
                        peers: Iterable[ID] | None = None) -> bytes:
        """One block: from the store if present, else fetched, verified and stored.

        Raises:
            FetchTimeout: no peer delivered it within ``timeout_s`` (default config).
            InvalidCID: ``cid`` is not a CID.
            BitswapNotRunning: the service is not running.
        """
        async with contextlib.aclosing(
            self.fetch_blocks([cid], timeout_s=timeout_s, peers=peers)
        ) as blocks:
            async for _cid, data in blocks:
                return data
        raise AssertionError("fetch_blocks ended without the block")  # pragma: no cover

    def fetch_blocks(
        self,
        cids: Iterable[CID | str],
        *,
        peers: Iterable[ID] | None = None,
        timeout_s: float | None = None,
    ) -> AsyncGenerator[tuple[CID, bytes], None]:
        """Yield ``(cid, data)`` for every CID, local ones first, then in arrival order.

        Missing blocks are wanted from ``peers`` (default: every connected peer)
        in one session, at most ``session_window`` at a time; each is verified
        and stored before it is yielded. Duplicate CIDs are yielded once.

        Args:
            cids: the blocks wanted.
            peers: restrict to these peers (they must be connected to be asked).
            timeout_s: a block fails when the fetch made no progress for this
                long, seconds (default ``config.default_timeout_s``).

        Raises:
            FetchTimeout: a block did not arrive in time (the message names it,
                the deadline, the peers asked and how many said DONT_HAVE).
            InvalidCID: a CID does not parse.
            BitswapNotRunning: the service is not running or stopped meanwhile.

        Breaking out of the loop early cancels the remaining wants (use
        ``contextlib.aclosing`` to do it at once).
        """
        return self._fetches.blocks(cids, peers=peers, timeout_s=timeout_s)

    async def fetch_dag(
        self,
        root: CID | str,
        *,
        peers: Iterable[ID] | None = None,
        timeout_s: float | None = None,
        on_block: Callable[[CID, int], None] | None = None,
        on_visit: Callable[[CID], None] | None = None,
    ) -> FetchStats:
        """Fetch every block of the DAG under ``root`` that is not in the store.

        A session walks the DAG: each arriving dag-pb node's links are wanted
        at once (up to ``session_window`` in flight), so a large DAG streams
        without a round trip per block. Blocks already stored are read locally
        and their links followed. Every fetched block is verified and stored.

        Args:
            root: the DAG root.
            peers: restrict to these peers; default every connected peer.
            timeout_s: a block fails when the walk made no progress for this long, seconds.
            on_block: called with (cid, size in bytes) for each fetched block.
            on_visit: called with each block of the DAG (identity CIDs excepted),
                local or fetched, once, as the walk reaches it: the DAG's block
                set, without a second walk.

        Returns:
            Counts, bytes, elapsed seconds and blocks per peer.

        Raises:
            FetchTimeout: a block did not arrive in time.
            DecodeError: a dag-pb node does not parse.
            BitswapNotRunning: the service is not running.
        """
        return await self._fetches.dag(root, peers=peers, timeout_s=timeout_s, on_block=on_block,
                                       on_visit=on_visit)

    def blocks_added(self, cids: Iterable[CID]) -> None:
        """Tell the server that blocks were stored by someone else (add, import):
        peers waiting for them are served."""
        woken = self._engine.blocks_added(cid_key(c) for c in cids)
        if woken:
            self._serving.wake()

    def statistics(self) -> BitswapStats:
        """A frozen snapshot of the counters."""
        return BitswapStats(
            peers=len(self._outboxes),
            blocks_sent=self._c["blocks_sent"],
            bytes_sent=self._c["bytes_sent"],
            blocks_received=self._c["blocks_received"],
            bytes_received=self._c["bytes_received"],
            duplicate_blocks=self._c["duplicate_blocks"],
            duplicate_bytes=self._c["duplicate_bytes"],
            messages_received=self._c["messages_received"],
            inbound_streams=self._c["inbound_streams"],
            one_message_streams=self._c["one_message_streams"],
            wantlist_size=self._wants.wantlist_size(),
            peer_wantlist_entries=sum(s.wantlist_size for s in self._engine.ledgers()),
            rejected=MappingProxyType(dict(self._rejected)),
            peers_cut_off=self._c["peers_cut_off"],
            refused_wants=self._c["refused_wants"],
            wantlist_resends=self._c["wantlist_resends"],
            wantlist_rebroadcasts=MappingProxyType({
                "timer": self._wants.counters["rebroadcasts_timer"],
                "connect": self._wants.counters["rebroadcasts_connect"],
            }),
            late_reasks=self._wants.counters["late_reasks"],
            wants_moved=self._wants.counters["wants_moved"],
            holder_decisions=MappingProxyType(dict(self._wants.scheduler.admission.decisions)),
            fetch_latency_buckets=self._latency.cumulative(),
            fetch_latency_sum_s=self._latency.sum_s,
            fetch_latency_count=self._latency.count,
        )

    def peer_perf(self) -> list[PeerPerf]:
        """What the holder scheduler measured of each peer we exchange with
        (blocks in flight, time per block, latency, late wants)."""
        return self._wants.perf()

    def ledgers(self) -> list[LedgerStat]:
        """Per-peer ledgers (wantlist size, queued and sent/received bytes)."""
        return self._engine.ledgers()

    def received_by_peer(self) -> dict[str, int]:
        """Wanted blocks each peer sent since the exchange started (peer ID text ->
        blocks), kept after it disconnects (a ledger is not); one entry per peer
        that ever delivered a wanted block."""
        return {str(p): n for p, n in self._received_from.items()}

    # ------------------------------------------------------------ who may fetch

    def set_serve_filter(self, allowed: ServeFilter | None) -> int:
        """Answer wants only from peers for which ``allowed(peer)`` is true (None: every peer).

        The filter is called once per received message that carries wants, on the
        trio thread, so it must be cheap and must not block; it may read state
        that changes (membership, config): call ``recheck_serve`` after such a
        change so wants already held for peers now refused are dropped. A
        filter that raises refuses the peer (fails closed).

        Returns:
            Wants dropped because their peers are refused now (``recheck_serve``).
        """
        self._serving.filter = allowed
        return self.recheck_serve()

    def recheck_serve(self) -> int:
        """Drop the wants held for peers the serve filter refuses now, and the blocks
        queued for them and not yet written. Peers keep their connections, and our
        wants to them stand.

        Returns:
            How many wants were dropped.
        """
        return self._serving.recheck()

    # ------------------------------------------------------------ core actions

    def _apply(self, actions: Iterable[SendWants | WantFailed]) -> None:
        for a in actions:
            if isinstance(a, SendWants):
                box = self._out.live(a.peer)  # type: ignore[arg-type]
                if box is not None:
                    box.add_wants(a.entries)
                    self._ledger.asked(cid_key(e.cid) for e in a.entries if not e.cancel)
            else:
                self._fetches.fail(a)

    # ------------------------------------------------------------ peers

    async def _peer_events(self, events: trio.MemoryReceiveChannel[Any]) -> None:
        async with events:
            async for ev in events:
                if ev.connected:
                    self._peer_up(ev.peer_id)
                else:
                    self._peer_down(ev.peer_id)

    def _peer_up(self, peer: ID) -> None:
        if peer in self._outboxes or self._nursery is None:
            return
        if not self._ledger.admit(peer, trio.current_time()):
            self._nursery.start_soon(self.disconnect, peer)
            return
        self._out.open(peer)
        self._engine.peer_connected(peer)
        self._apply(self._wants.peer_connected(peer, trio.current_time()))

    def _peer_down(self, peer: ID) -> None:
        if not self._out.close(peer):
            return
        self._engine.peer_disconnected(peer)
        self._ledger.forget(peer)
        self._apply(self._wants.peer_disconnected(peer, trio.current_time()))

    async def disconnect(self, peer: ID) -> None:
        """Close our connection to ``peer`` (quietly if it is already gone)."""
        try:
            await self._host.disconnect(peer)
        except Exception as exc:  # the connection may already be gone
            logger.debug("disconnect %s: %s", peer, exc)

    async def cut_off(self, peer: ID, exc: RemoteProtocolError) -> None:
        """Disconnect a misbehaving peer and refuse it for ``ban_s``."""
        self._rejected[exc.reason] += 1
        self._c["peers_cut_off"] += 1
        logger.warning("bitswap: disconnecting peer %s: %s", peer, exc)
        self._ledger.ban(peer, trio.current_time())
        self._peer_down(peer)
        await self.disconnect(peer)

    def _peer_unusable(self, peer: ID) -> None:
        """We cannot open or write a Bitswap stream to ``peer``: stop using it for
        the ledger's backoff (0.25 s doubling up to ``unusable_retry_s``), then use
        it again if it is still connected.

        Not dropped for good: a connection that survives a bad moment (streams
        reset, a write timed out) brings no new "connected" event, and a fetch
        whose only holder is this peer would never ask it again.
        """
        delay = self._ledger.unusable(peer)
        logger.info("bitswap: cannot send to %s; retrying in %g s", peer, delay)
        self._peer_down(peer)
        if self._nursery is not None:
            self._nursery.start_soon(self._retry_peer, peer, delay)

    async def _retry_peer(self, peer: ID, delay: float) -> None:
        await trio.sleep(delay)
        if peer not in self._outboxes and peer in self._host.connected_peers():
            self._peer_up(peer)

    # ------------------------------------------------------------ inbound (InboundOwner)

    def is_banned(self, peer: ID) -> bool:
        """Whether ``peer`` is refused now (cut off within ``ban_s``)."""
        return self._ledger.is_banned(peer, trio.current_time())

    def is_up(self, peer: ID) -> bool:
        """Whether we exchange with ``peer`` now."""
        return peer in self._outboxes

    def peer_seen(self, peer: ID) -> None:
        """``peer`` opened a stream to us: exchange with it if we do not yet."""
        if peer not in self._outboxes:
            self._peer_up(peer)

    def stream_broke(self, peer: ID) -> None:
        """A stream with ``peer`` ended uncleanly: send it our wants again."""
        self._out.resend_wants(peer)

    async def on_message(self, peer: ID, msg: Message,
                         digests: Sequence[bytes | None] | None = None) -> StoreStep | None:
        """Feed one decoded message from ``peer`` to the cores.

        Received blocks are hashed and checked here; storing them is the
        returned ``StoreStep``, which the stream reader runs while it goes on
        with the next messages.

        Returns:
            None, or the step that stores this message's wanted blocks and then
            hands them to the fetches.

        Raises:
            TooManyBadBlocks: ``peer`` sent too many blocks we never asked for.
            MalformedMessage: a block's CID prefix names no valid CID.
        """
        return await self._on_message(peer, msg, digests)

    async def _on_message(self, peer: ID, msg: Message,
                          digests: Sequence[bytes | None] | None = None) -> StoreStep | None:
        now = trio.current_time()
        if msg.wantlist or msg.full:
            if not self._serving.may_serve(peer):
                # Refused (bitswap.serve = "cluster"): no answer, not even DONT_HAVE, and
                # nothing kept; wants it held from before were dropped by recheck_serve.
                refused = sum(1 for e in msg.wantlist if not e.cancel)
                self._c["refused_wants"] += refused
                if refused:
                    logger.debug("bitswap: refused %d wants from %s (not allowed to fetch)",
                                 refused, peer)
            elif self._engine.receive_wantlist(peer, msg.wantlist, full=msg.full):
                self._serving.wake()
        if msg.presences:
            self._apply(self._wants.on_presences(peer, msg.presences, now))
        if msg.blocks:
            return await self._verify_blocks(peer, msg.blocks, digests)
        return None

    async def _verify_blocks(self, peer: ID, blocks: Sequence[Block],
                             digests: Sequence[bytes | None] | None = None) -> StoreStep | None:
        """Hash ``blocks`` (in a worker thread for a big message) and keep the wanted ones.

        Keys are multihash bytes made from the digests; the CID stored under is
        the one we asked for (no CID is built per block, no block data copied).
        """
        if digests is None:
            digests = await hash_digests(blocks, self.config.hash_in_thread_bytes)
        accepted: list[tuple[CID, bytes | memoryview]] = []
        keys: list[bytes] = []
        seen: set[bytes] = set()
        bad = 0
        for blk, digest in zip(blocks, digests, strict=True):
            if digest is None:
                self._rejected["unsupported_hash"] += 1
                bad += 1
                continue
            key = blk.prefix.key_for_digest(digest)
            if key in seen:
                continue
            verdict = self._ledger.classify(key, wanted=self._wants.is_wanted(key))
            if verdict is BlockVerdict.WANTED:
                accepted.append((self._wants.wanted_cid(key) or blk.prefix.cid_for_digest(digest),
                                 blk.data))
                keys.append(key)
                seen.add(key)
            elif verdict is BlockVerdict.LATE:
                self._c["duplicate_blocks"] += 1
                self._c["duplicate_bytes"] += len(blk.data)
            else:
                self._rejected["unwanted"] += 1
                bad += 1
        self._ledger.add_bad_blocks(peer, bad)
        if not accepted:
            return None
        return functools.partial(self._store_blocks, peer, accepted, keys)

    async def _store_blocks(self, peer: ID, accepted: list[tuple[CID, bytes | memoryview]],
                            keys: list[bytes]) -> None:
        """Store verified blocks (one writer request), then count and deliver them.

        Raises:
            BlockstoreError: the store refused them (full disk or
                ``blockstore.max_size_bytes``, a store removed on disk); the fetches
                that wanted them fail with it first, so a full store ends a fetch
                at once instead of having the same blocks sent again until it
                times out.
        """
        nbytes = sum(len(d) for _, d in accepted)
        try:
            await self._put_many(accepted)
        except BlockstoreError as exc:
            self._fetches.fail_sessions(self._wants.sessions_wanting(keys), exc)
            raise
        self._engine.record_received(peer, len(accepted), nbytes)
        if self._engine.blocks_added(keys):
            self._serving.wake()
        now = trio.current_time()
        for key, (_cid, data) in zip(keys, accepted, strict=True):
            res = self._wants.on_block(peer, key, now, len(data))
            self._ledger.received(key)
            if res is None:  # fetched meanwhile through another peer
                self._c["duplicate_blocks"] += 1
                self._c["duplicate_bytes"] += len(data)
                continue
            want_cid, sids, actions = res
            self._c["blocks_received"] += 1
            self._received_from[peer] += 1
            self._c["bytes_received"] += len(data)
            dt = self._fetches.took(key, now)
            if dt is not None:
                self._latency.observe(dt)
            self._apply(actions)
            self._fetches.deliver(sids, peer, want_cid, data)

    async def _ticker(self) -> None:
        load = LoadSampler()  # created here: it measures this (the trio) thread
        while True:
            await trio.sleep(self.config.tick_interval_s)
            now = trio.current_time()
            self._wants.machine(*load.sample())
            self._apply(self._wants.tick(now))
            self._ledger.expire(now)

    async def _rebroadcaster(self) -> None:
        """Every ``rebroadcast_interval_s``, send each peer again the wants asked
        of it that long ago and still open (boxo's message queue does likewise)."""
        interval = self.config.rebroadcast_interval_s
        while True:
            await trio.sleep(interval)
            self._apply(self._wants.rebroadcast(trio.current_time(), interval))
