"""The Bitswap exchange: the trio driver around the sans-IO cores.

``Bitswap`` wires ``ServerEngine`` (what to send whom) and ``WantManager``
(whom to ask for what) to libp2p streams, the block store and the batched
writer. It decides nothing itself: it reads, decodes, hashes, stores, writes,
and feeds events to the cores.

Streams (bitswap-protocol.md, "Interaction Pattern"): we send every message to
a peer -- our wants and our answers to its wants -- on *our own* outbound
stream to it (``s_want`` / ``s_receive`` in the spec), reused while busy and
closed after ``idle_stream_close_s`` of silence (Helia aborts a Bitswap stream
idle for 5 s). Every inbound stream is read until the peer closes it, and our
outbound streams are drained too: py-libp2p's Yamux resets a stream whose
reader stalls for 5 s.

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
import hashlib
import logging
import math
from collections import Counter, OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

import trio
from libp2p.abc import INetStream
from libp2p.peer.id import ID
from pinfold.blockstore.cid import (
    CID,
    SHA2_256,
    cid_key,
    identity_data,
    is_identity,
    parse_cid,
)
from pinfold.blockstore.errors import BlockNotFound
from pinfold.blockstore.store import BlockStore

from pinfold.daemon.p2p.bitswap.wants import ClientConfig, SendWants, WantFailed, WantManager
from pinfold.daemon.p2p.bitswap.errors import (
    BitswapNotRunning,
    BlockUnavailable,
    FetchTimeout,
    RemoteProtocolError,
    TooManyBadBlocks,
)
from pinfold.daemon.p2p.bitswap.links import links as dag_links
from pinfold.daemon.p2p.bitswap.message import (
    MAX_MESSAGE_SIZE,
    PROTOCOL_1_2_0,
    PROTOCOLS,
    Block,
    BlockPresence,
    CidPrefix,
    FrameDecoder,
    Message,
    PresenceType,
    WantEntry,
    decode_message,
    encode_framed,
)
from pinfold.daemon.p2p.bitswap.server import LedgerStat, ServerConfig, ServerEngine

__all__ = [
    "Bitswap",
    "BitswapConfig",
    "BitswapHost",
    "BitswapStats",
    "FetchStats",
    "PutMany",
    "ServeFilter",
]

logger = logging.getLogger(__name__)

PutMany = Callable[[list[tuple[CID, bytes]]], Awaitable[Any]]

ServeFilter = Callable[[ID], bool]
"""``allowed(peer) -> bool``: may ``peer`` fetch blocks from us (have its wants answered)?"""

#: Upper bounds (seconds) of the fetch-latency histogram buckets.
LATENCY_BUCKETS_S: tuple[float, ...] = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0)


class BitswapHost(Protocol):
    """What Bitswap needs from the host (``pinfold.daemon.p2p.host.Host`` implements it)."""

    @property
    def peer_id(self) -> ID: ...

    def set_stream_handler(self, protocol: str, handler: Callable[[INetStream], Awaitable[None]]) -> None: ...

    async def new_stream(self, peer_id: ID, protocols: Sequence[str]) -> INetStream: ...

    async def disconnect(self, peer_id: ID) -> bool: ...

    def connected_peers(self) -> list[ID]: ...

    def subscribe(self, capacity: float = ...) -> trio.MemoryReceiveChannel[Any]: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class BitswapConfig:
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
            they total at least this many bytes (the main thread keeps reading);
            messages at least this long are also decoded in a worker thread.
        inbound_queue_messages: decoded messages per inbound stream waiting to
            be processed while the stream is read further (memory bound:
            4 MiB each).
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

    def __post_init__(self) -> None:
        for name in ("default_timeout_s", "idle_stream_close_s", "stream_open_timeout_s",
                     "write_timeout_s", "tick_interval_s", "unusable_retry_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"bitswap.{name}: must be > 0, got {getattr(self, name)}")
        if self.session_window < 1:
            raise ValueError(f"bitswap.session_window: must be >= 1, got {self.session_window}")
        if self.max_bad_blocks < 0:
            raise ValueError("bitswap.max_bad_blocks: must be >= 0")


@dataclass(frozen=True, slots=True, kw_only=True)
class BitswapStats:
    """Counters for Prometheus (``pinfold_bitswap_*``).

    Attributes:
        peers: peers we exchange with now.
        blocks_sent: blocks sent to peers.
        bytes_sent: block bytes sent.
        blocks_received: wanted blocks received, verified and stored.
        bytes_received: their bytes.
        duplicate_blocks: blocks received that we no longer wanted (arrived twice, or
            after we cancelled the want).
        duplicate_bytes: their bytes.
        messages_received: Bitswap messages decoded.
        wantlist_size: blocks we want now.
        peer_wantlist_entries: wants of all peers held on our ledgers.
        rejected: blocks/messages rejected, by reason ("unwanted",
            "unsupported_hash", "malformed", "oversize", "wantlist_flood", "bad_blocks").
        peers_cut_off: peers disconnected for misbehaviour.
        refused_wants: wants (cancels not counted) from peers the serve filter
            refuses, dropped unanswered (``bitswap.serve = "cluster"``).
        wantlist_resends: full wantlists sent again to a peer after a stream to
            or from it broke (messages on it may have been lost).
        fetch_latency_buckets: cumulative counts of want-to-block latencies per
            upper bound in seconds (Prometheus histogram buckets; +Inf = fetch_latency_count).
        fetch_latency_sum_s: sum of those latencies, seconds.
        fetch_latency_count: how many were observed.
    """

    peers: int
    blocks_sent: int
    bytes_sent: int
    blocks_received: int
    bytes_received: int
    duplicate_blocks: int
    duplicate_bytes: int
    messages_received: int
    wantlist_size: int
    peer_wantlist_entries: int
    rejected: MappingProxyType[str, int]
    peers_cut_off: int
    refused_wants: int
    wantlist_resends: int
    fetch_latency_buckets: tuple[tuple[float, int], ...]
    fetch_latency_sum_s: float
    fetch_latency_count: int


@dataclass(frozen=True, slots=True, kw_only=True)
class FetchStats:
    """What ``fetch_dag`` did.

    Attributes:
        root: the DAG's root CID.
        blocks: blocks in the DAG (fetched + already local).
        fetched_blocks: blocks fetched from peers.
        fetched_bytes: their bytes.
        local_blocks: blocks that were already in the store.
        elapsed_s: wall time of the fetch, seconds.
        blocks_by_peer: fetched blocks per peer ID (text).
    """

    root: CID
    blocks: int
    fetched_blocks: int
    fetched_bytes: int
    local_blocks: int
    elapsed_s: float
    blocks_by_peer: MappingProxyType[str, int]


# ---------------------------------------------------------------- outbox


@dataclass(slots=True)
class _Env:
    blocks: list[Block]
    presences: list[BlockPresence]
    block_bytes: int  # as accounted by the engine
    nblocks: int


class _Outbox:
    """Messages waiting to go out on our stream to one peer."""

    __slots__ = ("closed", "envs", "full", "peer", "protocol", "stream", "wake", "wants")

    def __init__(self, peer: ID) -> None:
        self.peer = peer
        self.wants: list[WantEntry] = []
        self.full = False  # the next message replaces the peer's copy of our wantlist
        self.envs: deque[_Env] = deque()
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

    def add_env(self, env: _Env) -> None:
        self.envs.append(env)
        self.wake.set()

    def pending(self) -> bool:
        return bool(self.wants or self.envs or self.full)

    def take(self, limit: int) -> tuple[Message, list[_Env]]:
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
        envs: list[_Env] = []
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


# ---------------------------------------------------------------- sessions


class _Session:
    __slots__ = ("by_peer", "recv", "send", "sid")

    def __init__(self, sid: int) -> None:
        self.sid = sid
        self.send, self.recv = trio.open_memory_channel[Any](math.inf)
        self.by_peer: Counter[str] = Counter()


def _hash_blocks(blocks: Sequence[Block]) -> list[bytes | None]:
    out: list[bytes | None] = []
    for b in blocks:
        if b.prefix.mh_code == SHA2_256:
            out.append(hashlib.sha256(b.data).digest())
        else:
            out.append(None)
    return out


# ---------------------------------------------------------------- the service


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
        config: BitswapConfig | None = None,
    ) -> None:
        self.config = config or BitswapConfig()
        self._host = host
        self._store = store
        self._put_many = put_many
        self._engine = ServerEngine(self.config.server)
        self._wants = WantManager(self.config.client)
        self._outboxes: dict[ID, _Outbox] = {}
        self._sessions: dict[int, _Session] = {}
        self._banned: dict[ID, float] = {}
        self._unusable_delay: dict[ID, float] = {}  # next retry delay after a failed send
        self._bad_blocks: Counter[ID] = Counter()
        self._recent: OrderedDict[bytes, None] = OrderedDict()  # keys received lately
        # keys we sent wants for lately: a block for one of them that arrives after
        # we cancelled the want (a fetch aborted or timed out, the cancel crossing
        # the block on the wire) is late, not unsolicited -- counting it against
        # the peer cut good cluster peers off under faults
        self._asked: OrderedDict[bytes, None] = OrderedDict()
        self._want_times: dict[bytes, float] = {}
        self._nursery: trio.Nursery | None = None
        self._server_wake = trio.Event()
        self._running = False
        self._serve_filter: ServeFilter | None = None
        # counters
        self._c: Counter[str] = Counter()
        self._rejected: Counter[str] = Counter()
        self._lat_counts = [0] * len(LATENCY_BUCKETS_S)
        self._lat_sum = 0.0
        self._lat_n = 0

    # ------------------------------------------------------------ service

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve Bitswap until cancelled; ``task_status.started()`` once the handlers are set.

        Cancellation closes every stream and fails every open fetch with ``BitswapNotRunning``.
        """
        events = self._host.subscribe()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._running = True
                for proto in PROTOCOLS:
                    self._host.set_stream_handler(proto, self._handle_stream)
                for peer in self._host.connected_peers():
                    self._peer_up(peer)
                nursery.start_soon(self._peer_events, events)
                nursery.start_soon(self._server_loop)
                nursery.start_soon(self._ticker)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._running = False
            self._nursery = None
            for sess in list(self._sessions.values()):
                sess.send.send_nowait(BitswapNotRunning("bitswap stopped"))
            self._outboxes.clear()

    def _check_running(self) -> None:
        if not self._running:
            raise BitswapNotRunning("bitswap is not running (start Bitswap.run first)")

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

    async def fetch_blocks(
        self,
        cids: Iterable[CID | str],
        *,
        peers: Iterable[ID] | None = None,
        timeout_s: float | None = None,
    ) -> AsyncIterator[tuple[CID, bytes]]:
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
        self._check_running()
        todo: deque[CID] = deque()
        seen: set[bytes] = set()
        local: list[CID] = []
        for raw in cids:
            cid = parse_cid(raw)
            key = cid_key(cid)
            if key in seen:
                continue
            seen.add(key)
            if is_identity(cid) or self._store.has(cid):
                local.append(cid)
            else:
                todo.append(cid)
        for cid in local:
            yield cid, (identity_data(cid) if is_identity(cid) else self._store.get(cid))
        if not todo:
            return
        sess = self._open_session(peers, timeout_s)
        try:
            in_flight = 0
            while todo or in_flight:
                batch = []
                while todo and in_flight + len(batch) < self.config.session_window:
                    batch.append(todo.popleft())
                if batch:
                    in_flight += len(batch)
                    self._want(sess, batch)
                item = await sess.recv.receive()
                if isinstance(item, BaseException):
                    raise item
                in_flight -= 1
                yield item[0], item[1]
        finally:
            self._close_session(sess)

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
        self._check_running()
        root = parse_cid(root)
        start = trio.current_time()
        seen = {cid_key(root)}
        todo: deque[CID] = deque([root])
        fetched = fetched_bytes = local = 0
        in_flight = 0
        sess: _Session | None = None

        def expand(cid: CID, data: bytes) -> None:
            for child in dag_links(cid, data):
                k = cid_key(child)
                if k not in seen:
                    seen.add(k)
                    todo.append(child)

        try:
            while todo or in_flight:
                batch: list[CID] = []
                while todo and in_flight + len(batch) < self.config.session_window:
                    cid = todo.popleft()
                    if is_identity(cid):
                        local += 1
                        expand(cid, identity_data(cid))
                    elif self._store.has(cid):
                        local += 1
                        if on_visit is not None:
                            on_visit(cid)
                        expand(cid, self._store.get(cid))
                        await trio.lowlevel.checkpoint()
                    else:
                        batch.append(cid)
                if batch:
                    if sess is None:
                        sess = self._open_session(peers, timeout_s)
                    in_flight += len(batch)
                    self._want(sess, batch)
                if not in_flight:
                    continue
                assert sess is not None
                item = await sess.recv.receive()
                if isinstance(item, BaseException):
                    raise item
                cid, data = item
                in_flight -= 1
                fetched += 1
                fetched_bytes += len(data)
                if on_block is not None:
                    on_block(cid, len(data))
                if on_visit is not None:
                    on_visit(cid)
                expand(cid, data)
        finally:
            if sess is not None:
                self._close_session(sess)
        return FetchStats(
            root=root,
            blocks=fetched + local,
            fetched_blocks=fetched,
            fetched_bytes=fetched_bytes,
            local_blocks=local,
            elapsed_s=trio.current_time() - start,
            blocks_by_peer=MappingProxyType(dict(sess.by_peer) if sess else {}),
        )

    def blocks_added(self, cids: Iterable[CID]) -> None:
        """Tell the server that blocks were stored by someone else (add, import):
        peers waiting for them are served."""
        woken = self._engine.blocks_added(cid_key(c) for c in cids)
        if woken:
            self._server_wake.set()

    def statistics(self) -> BitswapStats:
        """A frozen snapshot of the counters."""
        cum = []
        acc = 0
        for bound, n in zip(LATENCY_BUCKETS_S, self._lat_counts, strict=True):
            acc += n
            cum.append((bound, acc))
        return BitswapStats(
            peers=len(self._outboxes),
            blocks_sent=self._c["blocks_sent"],
            bytes_sent=self._c["bytes_sent"],
            blocks_received=self._c["blocks_received"],
            bytes_received=self._c["bytes_received"],
            duplicate_blocks=self._c["duplicate_blocks"],
            duplicate_bytes=self._c["duplicate_bytes"],
            messages_received=self._c["messages_received"],
            wantlist_size=self._wants.wantlist_size(),
            peer_wantlist_entries=sum(s.wantlist_size for s in self._engine.ledgers()),
            rejected=MappingProxyType(dict(self._rejected)),
            peers_cut_off=self._c["peers_cut_off"],
            refused_wants=self._c["refused_wants"],
            wantlist_resends=self._c["wantlist_resends"],
            fetch_latency_buckets=tuple(cum),
            fetch_latency_sum_s=self._lat_sum,
            fetch_latency_count=self._lat_n,
        )

    def ledgers(self) -> list[LedgerStat]:
        """Per-peer ledgers (wantlist size, queued and sent/received bytes)."""
        return self._engine.ledgers()

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
        self._serve_filter = allowed
        return self.recheck_serve()

    def recheck_serve(self) -> int:
        """Drop the wants held for peers the serve filter refuses now, and the blocks
        queued for them and not yet written. Peers keep their connections, and our
        wants to them stand.

        Returns:
            How many wants were dropped.
        """
        dropped = 0
        for peer in self._engine.peers():
            if self._may_serve(peer):  # type: ignore[arg-type]
                continue
            dropped += self._engine.drop_wants(peer)
            box = self._outboxes.get(peer)  # type: ignore[arg-type]
            if box is not None:
                for env in box.envs:
                    self._engine.envelope_sent(peer, env.block_bytes, env.nblocks,
                                               written=False)
                box.envs.clear()
        if dropped:
            logger.info("bitswap: dropped %d wants of peers no longer allowed to fetch", dropped)
        return dropped

    def _may_serve(self, peer: ID) -> bool:
        allowed = self._serve_filter
        if allowed is None:
            return True
        try:
            return bool(allowed(peer))
        except Exception:
            logger.exception("bitswap: serve filter failed for %s; refusing its wants", peer)
            return False

    # ------------------------------------------------------------ sessions

    def _open_session(self, peers: Iterable[ID] | None, timeout_s: float | None) -> _Session:
        self._check_running()
        t = self.config.default_timeout_s if timeout_s is None else timeout_s
        if t <= 0:
            raise ValueError(f"timeout_s must be > 0, got {t}")
        sid = self._wants.new_session(
            timeout_s=t, now=trio.current_time(), peers=list(peers) if peers is not None else None
        )
        sess = _Session(sid)
        self._sessions[sid] = sess
        return sess

    def _close_session(self, sess: _Session) -> None:
        self._sessions.pop(sess.sid, None)
        self._apply(self._wants.close_session(sess.sid))
        for key in [k for k in self._want_times if not self._wants.is_wanted(k)]:
            del self._want_times[key]

    def _want(self, sess: _Session, cids: list[CID]) -> None:
        now = trio.current_time()
        for c in cids:
            self._want_times.setdefault(cid_key(c), now)
        self._apply(self._wants.want(sess.sid, cids, now))

    def _apply(self, actions: Iterable[SendWants | WantFailed]) -> None:
        asked = self._asked
        for a in actions:
            if isinstance(a, SendWants):
                box = self._outboxes.get(a.peer)  # type: ignore[arg-type]
                if box is not None and not box.closed:
                    box.add_wants(a.entries)
                    for e in a.entries:
                        if not e.cancel:
                            key = cid_key(e.cid)
                            asked[key] = None
                            asked.move_to_end(key)
                    while len(asked) > 65536:
                        asked.popitem(last=False)
            else:
                self._want_times.pop(cid_key(a.cid), None)
                peers_asked = [str(p) for p in a.peers_asked]
                dont_have = [str(p) for p in a.dont_have]
                err: FetchTimeout = (
                    BlockUnavailable(a.cid, peers_asked=peers_asked, dont_have=dont_have)
                    if a.all_dont_have
                    else FetchTimeout(a.cid, timeout_s=a.timeout_s, peers_asked=peers_asked,
                                      dont_have=dont_have)
                )
                for sid in a.sessions:
                    sess = self._sessions.get(sid)
                    if sess is not None:
                        sess.send.send_nowait(err)

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
        until = self._banned.get(peer)
        if until is not None:
            if trio.current_time() < until:
                self._nursery.start_soon(self._disconnect, peer)
                return
            del self._banned[peer]
        box = _Outbox(peer)
        self._outboxes[peer] = box
        self._engine.peer_connected(peer)
        self._nursery.start_soon(self._sender, box)
        self._apply(self._wants.peer_connected(peer, trio.current_time()))

    def _peer_down(self, peer: ID) -> None:
        box = self._outboxes.pop(peer, None)
        if box is None:
            return
        box.closed = True
        box.wake.set()
        self._engine.peer_disconnected(peer)
        self._bad_blocks.pop(peer, None)
        self._apply(self._wants.peer_disconnected(peer, trio.current_time()))

    async def _disconnect(self, peer: ID) -> None:
        try:
            await self._host.disconnect(peer)
        except Exception as exc:  # the connection may already be gone
            logger.debug("disconnect %s: %s", peer, exc)

    async def _cut_off(self, peer: ID, exc: RemoteProtocolError) -> None:
        """Disconnect a misbehaving peer and refuse it for ``ban_s``."""
        self._rejected[exc.reason] += 1
        self._c["peers_cut_off"] += 1
        logger.warning("bitswap: disconnecting peer %s: %s", peer, exc)
        self._banned[peer] = trio.current_time() + self.config.ban_s
        self._peer_down(peer)
        await self._disconnect(peer)

    # ------------------------------------------------------------ sending

    async def _sender(self, box: _Outbox) -> None:
        """Write ``box``'s messages on our stream to the peer, opening it on demand
        and closing it when idle."""
        cfg = self.config
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
                    self._server_wake.set()
                if ok:
                    if self._unusable_delay:
                        self._unusable_delay.pop(box.peer, None)
                    self._c["blocks_sent"] += nb
                    self._c["bytes_sent"] += sum(e.block_bytes for e in envs)
                else:
                    self._peer_unusable(box.peer)
                    return
        finally:
            for env in box.envs:
                self._engine.envelope_sent(box.peer, env.block_bytes, env.nblocks, written=False)
            box.envs.clear()
            if box.stream is not None:
                with trio.CancelScope(shield=True):
                    await self._close_stream(box)

    async def _write(self, box: _Outbox, msg: Message) -> bool:
        """Write one message, reopening the stream once if the old one broke (and
        then sending our whole wantlist again: what the old one carried may be lost)."""
        for attempt in (1, 2):
            try:
                if box.stream is None:
                    with trio.fail_after(self.config.stream_open_timeout_s):
                        stream = await self._host.new_stream(box.peer, PROTOCOLS)
                    box.stream = stream
                    box.protocol = str(stream.get_protocol() or PROTOCOL_1_2_0)
                    if self._nursery is not None:
                        self._nursery.start_soon(self._drain, box, stream)
                data = encode_framed(msg, protocol=box.protocol)
                with trio.fail_after(self.config.write_timeout_s):
                    await box.stream.write(data)
                if attempt == 2 and not msg.full:
                    self._resend_wants(box.peer)
                return True
            except trio.Cancelled:
                raise
            except Exception as exc:
                logger.debug("bitswap: write to %s failed (attempt %d): %r", box.peer, attempt, exc)
                if box.stream is not None:
                    await self._reset_stream(box.stream)
                    box.stream = None
                if box.closed:
                    return False
        return False

    def _peer_unusable(self, peer: ID) -> None:
        """We cannot open or write a Bitswap stream to ``peer``: stop using it for
        ``unusable_retry_s``, then again if it is still connected.

        Dropping it for good wedged two nodes whose connection survived a bad
        moment (streams reset, a write timed out): each had stopped sending to the
        other, the connection stayed up so no new "connected" event came, and a
        pin's fetch asked every peer but its only holder until the end (found by
        the cluster fault campaign, under connection resets). The first retry comes
        after 0.25 s -- a reset connection is usually replaced within that, and a
        repair whose only source is this peer waits for it -- doubling on each
        failure in a row up to ``unusable_retry_s``.
        """
        if len(self._unusable_delay) > 4096:
            self._unusable_delay.clear()  # peers long gone; a bound, not a policy
        delay = self._unusable_delay.get(peer, 0.25)
        self._unusable_delay[peer] = min(2 * delay, self.config.unusable_retry_s)
        delay = min(delay, self.config.unusable_retry_s)
        logger.info("bitswap: cannot send to %s; retrying in %g s", peer, delay)
        self._peer_down(peer)
        if self._nursery is not None:
            self._nursery.start_soon(self._retry_peer, peer, delay)

    async def _retry_peer(self, peer: ID, delay: float) -> None:
        await trio.sleep(delay)
        if peer not in self._outboxes and peer in self._host.connected_peers():
            self._peer_up(peer)

    async def _close_stream(self, box: _Outbox) -> None:
        stream, box.stream = box.stream, None
        if stream is None:
            return
        try:
            with trio.move_on_after(1.0):
                await stream.close()
        except Exception:
            await self._reset_stream(stream)

    @staticmethod
    async def _reset_stream(stream: INetStream) -> None:
        try:
            with trio.move_on_after(1.0):
                await stream.reset()
        except Exception as exc:
            logger.debug("bitswap: stream reset failed: %r", exc)

    async def _drain(self, box: _Outbox, stream: INetStream) -> None:
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
            if _ended_cleanly(stream):
                return
        except trio.Cancelled:
            raise
        except EOFError:  # py-libp2p's StreamEOF
            if _ended_cleanly(stream):
                return
        except Exception:
            pass
        if box.stream is stream and not box.closed:
            box.stream = None
            await self._reset_stream(stream)
            self._resend_wants(box.peer)

    def _resend_wants(self, peer: ID) -> None:
        """Send ``peer`` our whole wantlist for it again (``full``), if we want
        anything from it: after a broken stream our wants or its blocks may be
        lost, and the want would otherwise wait out the stall timeout."""
        box = self._outboxes.get(peer)
        if box is None or box.closed:
            return
        entries = self._wants.wantlist_for(peer)
        if not entries:
            return
        self._c["wantlist_resends"] += 1
        logger.debug("bitswap: stream with %s broke; sending our %d wants again",
                     peer, len(entries))
        box.set_full(entries)

    # ------------------------------------------------------------ serving

    def _block_size(self, cid: CID) -> int | None:
        try:
            return self._store.get_size(cid)
        except BlockNotFound:
            return None
        except Exception as exc:
            logger.warning("bitswap: store size lookup for %s failed: %r", cid, exc)
            return None

    async def _server_loop(self) -> None:
        """Turn the engine's envelopes into messages on the peers' outboxes."""
        while True:
            env = self._engine.next_envelope(self._block_size)
            if env is None:
                await self._server_wake.wait()
                self._server_wake = trio.Event()
                continue
            box = self._outboxes.get(env.peer)  # type: ignore[arg-type]
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
            box.add_env(_Env(blocks=blocks, presences=presences,
                             block_bytes=env.block_bytes, nblocks=len(blocks)))
            await trio.lowlevel.checkpoint()

    # ------------------------------------------------------------ receiving

    async def _handle_stream(self, stream: INetStream) -> None:
        """Read one inbound Bitswap stream until the peer closes it."""
        peer = stream.muxed_conn.peer_id
        if not self._running:
            await self._reset_stream(stream)
            return
        until = self._banned.get(peer)
        if until is not None and trio.current_time() < until:
            await self._reset_stream(stream)
            await self._disconnect(peer)
            return
        if peer not in self._outboxes:
            self._peer_up(peer)
        # Reading and processing overlap: the reader keeps draining the stream
        # (Yamux window updates flow) while the processor hashes and stores the
        # previous messages; at most ``inbound_queue_messages`` wait in between.
        send, recv = trio.open_memory_channel[Message](self.config.inbound_queue_messages)
        clean = False  # stays so when the processor cut the peer off and cancelled the read
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._process_inbound, peer, recv, nursery.cancel_scope)
                async with send:
                    clean = await self._read_inbound(peer, stream, send)
        finally:
            with trio.CancelScope(shield=True):
                await self._close_quietly(stream)
        # Kubo and Helia open a new stream for every reply and close it cleanly:
        # that is no news. A reset, or an end because the connection went away
        # (another one may stay up, so no disconnect is seen), may have lost
        # messages with it: then our wants go again rather than wait out the
        # stall timeout.
        if not clean:
            self._resend_wants(peer)

    async def _read_inbound(
        self, peer: ID, stream: INetStream, send: trio.MemorySendChannel[Message]
    ) -> bool:
        """Read ``stream`` into ``send`` until it ends.

        Returns:
            True when the peer closed the stream cleanly on a live connection;
            False when it was reset, its connection closed, or we stopped reading.
        """
        decoder = FrameDecoder(MAX_MESSAGE_SIZE)
        chunk = self.config.read_chunk_bytes
        try:
            while self._running:
                try:
                    data = await stream.read(chunk)
                except trio.Cancelled:
                    raise
                except EOFError:  # py-libp2p's StreamEOF; also raised on a closed connection
                    return _ended_cleanly(stream)
                except Exception:  # reset, connection error
                    return False
                if not data:
                    return _ended_cleanly(stream)
                decoder.feed(data)
                while (body := decoder.next_frame()) is not None:
                    if len(body) >= self.config.hash_in_thread_bytes:
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
            await self._cut_off(peer, exc)
        return False

    async def _process_inbound(
        self, peer: ID, recv: trio.MemoryReceiveChannel[Message], scope: trio.CancelScope
    ) -> None:
        async with recv:
            try:
                async for msg in recv:
                    await self._on_message(peer, msg)
                    if peer not in self._outboxes:  # cut off meanwhile
                        scope.cancel()
                        return
            except RemoteProtocolError as exc:
                await self._cut_off(peer, exc)
                scope.cancel()

    async def _close_quietly(self, stream: INetStream) -> None:
        try:
            with trio.move_on_after(1.0):
                await stream.close()
        except Exception:
            pass

    async def _on_message(self, peer: ID, msg: Message) -> None:
        now = trio.current_time()
        if msg.wantlist or msg.full:
            if not self._may_serve(peer):
                # Refused (bitswap.serve = "cluster"): no answer, not even DONT_HAVE, and
                # nothing kept; wants it held from before were dropped by recheck_serve.
                refused = sum(1 for e in msg.wantlist if not e.cancel)
                self._c["refused_wants"] += refused
                if refused:
                    logger.debug("bitswap: refused %d wants from %s (not allowed to fetch)",
                                 refused, peer)
            elif self._engine.receive_wantlist(peer, msg.wantlist, full=msg.full):
                self._server_wake.set()
        if msg.presences:
            self._apply(self._wants.on_presences(peer, msg.presences, now))
        if msg.blocks:
            await self._receive_blocks(peer, msg.blocks)

    async def _receive_blocks(self, peer: ID, blocks: Sequence[Block]) -> None:
        total = sum(len(b.data) for b in blocks)
        if total >= self.config.hash_in_thread_bytes:
            digests = await trio.to_thread.run_sync(_hash_blocks, blocks)
        else:
            digests = _hash_blocks(blocks)
        accepted: list[tuple[CID, bytes]] = []
        accepted_keys: set[bytes] = set()
        bad = 0
        for blk, digest in zip(blocks, digests, strict=True):
            if digest is None:
                self._rejected["unsupported_hash"] += 1
                bad += 1
                continue
            cid = blk.prefix.cid_for_digest(digest)
            key = cid_key(cid)
            if key in accepted_keys:
                continue
            if self._wants.is_wanted(key):
                accepted.append((self._wants.wanted_cid(key) or cid, bytes(blk.data)))
                accepted_keys.add(key)
            elif key in self._recent or key in self._asked:
                self._c["duplicate_blocks"] += 1
                self._c["duplicate_bytes"] += len(blk.data)
            else:
                self._rejected["unwanted"] += 1
                bad += 1
        if bad:
            self._bad_blocks[peer] += bad
            if self._bad_blocks[peer] > self.config.max_bad_blocks:
                raise TooManyBadBlocks(
                    f"{self._bad_blocks[peer]} blocks matched no CID we asked for"
                )
        if not accepted:
            return
        nbytes = sum(len(d) for _, d in accepted)
        await self._put_many(accepted)
        self._engine.record_received(peer, len(accepted), nbytes)
        if self._engine.blocks_added(accepted_keys):
            self._server_wake.set()
        now = trio.current_time()
        for cid, data in accepted:
            key = cid_key(cid)
            res = self._wants.on_block(peer, key, now)
            self._recent[key] = None
            if len(self._recent) > 65536:
                self._recent.popitem(last=False)
            if res is None:  # fetched meanwhile through another peer
                self._c["duplicate_blocks"] += 1
                self._c["duplicate_bytes"] += len(data)
                continue
            want_cid, sids, actions = res
            self._c["blocks_received"] += 1
            self._c["bytes_received"] += len(data)
            t0 = self._want_times.pop(key, None)
            if t0 is not None:
                self._observe_latency(now - t0)
            self._apply(actions)
            for sid in sids:
                sess = self._sessions.get(sid)
                if sess is not None:
                    sess.by_peer[str(peer)] += 1
                    sess.send.send_nowait((want_cid, data))

    def _observe_latency(self, dt: float) -> None:
        self._lat_n += 1
        self._lat_sum += dt
        for i, bound in enumerate(LATENCY_BUCKETS_S):
            if dt <= bound:
                self._lat_counts[i] += 1
                break

    async def _ticker(self) -> None:
        while True:
            await trio.sleep(self.config.tick_interval_s)
            self._apply(self._wants.tick(trio.current_time()))
            now = trio.current_time()
            for peer, until in list(self._banned.items()):
                if until <= now:
                    del self._banned[peer]


def _ended_cleanly(stream: INetStream) -> bool:
    """Whether an EOF on ``stream`` is a clean end: the stream was not reset and
    its connection is still open (py-libp2p 0.8.1 raises StreamEOF for both).

    Reads py-libp2p's Yamux internals (``muxed_conn.is_closed``,
    ``muxed_stream.reset_received``); tests/test_libp2p_internals.py fails if
    they change.
    """
    if getattr(getattr(stream, "muxed_conn", None), "is_closed", False):
        return False
    return not getattr(getattr(stream, "muxed_stream", None), "reset_received", False)
