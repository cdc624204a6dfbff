"""The cluster side of a node: the replication manager on libp2p (DESIGN.md "Replication").

``Cluster`` is built by ``Node`` when ``cluster.name`` is set. It wires the
replication manager (``pinfold.replication.manager``) to

- ``LibP2PTransport`` - the manager's ``Transport`` over the node's libp2p host:

  * gossip on the gossipsub topic ``/pinfold/<cluster name>/cluster/1``
    (py-libp2p's GossipSub 1.2 over our Noise+Yamux host with one connection
    per peer; messages are signed by their author, ``strict_signing``). Each
    message is an envelope ``{"v": 1, "k": kind, "b": body, "s": signature}``
    whose signature covers ``/pinfold/<cluster>/<kind>`` + body with the
    author's libp2p key, so a heartbeat is verified against its sender's key
    even apart from gossipsub; a body naming another peer is rejected by the
    manager. A topic validator rejects (and counts) messages whose author is
    not in ``cluster.trusted_peers`` (when the list is set) or whose
    signature does not verify, so such messages are neither delivered nor
    relayed.
  * ``/pinfold/sync/1``: request/response frames (uvarint length + msgpack,
    at most 4 MiB) on a stream; streams from untrusted peers are reset and
    counted.
  * cluster peers are dialled from ``node.bootstrap`` (the host keeps those)
    and from the addresses their heartbeats announce, and redialled with
    backoff when lost. ``block``/``unblock`` cut a peer off (disconnect and
    refuse it) - an operator's tool, and how the tests partition a cluster.

- ``NodePins`` - the manager's ``LocalPins`` over the node's store: fetch a DAG
  by Bitswap (from the holders first), pin it with block refcounts, unpin,
  keep an origin copy.

- ``Cluster.may_fetch`` - who may fetch blocks from this node when
  ``bitswap.serve = "cluster"`` (``serve_allowed``): the cluster's members.

Replication metrics (``replication_metric_families``) are exported by every
node, zeros when standalone, under the names the deploy/ alerts and dashboard
use.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Collection, Container, Iterable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import msgpack
import trio
from libp2p.crypto.keys import KeyPair
from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, PROTOCOL_ID_V12, GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.tools.anyio_service import background_trio_service
from libp2p.utils.varint import encode_uvarint, read_varint_prefixed_bytes_limited
from pinfold.blockstore import dag as dagmod
from pinfold.blockstore.cid import CID, parse_cid
from pinfold.blockstore.errors import BlockNotFound, NotPinned
from pinfold.replication.allocation import unreachable_availability
from pinfold.replication.errors import InvalidPin, PinNotFound, describe
from pinfold.replication.manager import Manager, ManagerConfig
from pinfold.replication.messages import KINDS
from pinfold.replication.persist import ReplicationDB
from pinfold.replication.transport import ClusterHandler, FetchFailed, TransportError
from pinfold.replication.types import PeerStatus, PinMode, PinState, cid_text, pin_key

from pinfold.daemon.p2p.host import DialError, Host, HostError
from pinfold.daemon.metrics import counter, counter_by, gauge, gauge_by, histogram

if TYPE_CHECKING:
    from pinfold.daemon.node import Node

log = logging.getLogger("pinfold.cluster")

__all__ = [
    "SYNC_PROTOCOL",
    "Cluster",
    "LibP2PTransport",
    "NodePins",
    "TransportStats",
    "replication_metric_families",
    "serve_allowed",
    "topic_name",
]

#: Anti-entropy protocol (pinfold/replication/sync.py, pinfold/replication/messages.py).
SYNC_PROTOCOL: Final = "/pinfold/sync/1"
#: Largest sync frame, bytes (the DESIGN.md stream message bound).
MAX_FRAME: Final = 4 * 1024 * 1024
_ENVELOPE_VERSION: Final = 1


def topic_name(cluster: str) -> str:
    """The gossipsub topic of a cluster."""
    return f"/pinfold/{cluster}/cluster/1"


def _signed_bytes(cluster: str, kind: str, body: bytes) -> bytes:
    return f"/pinfold/{cluster}/{kind}".encode() + b"\x00" + body


def serve_allowed(peer: str, *, serve: str, trusted: Collection[str], blocked: Container[str],
                  known: Container[str]) -> bool:
    """May ``peer`` fetch blocks from this node (have its Bitswap wants answered)? Pure.

    ``bitswap.serve = "all"``: every peer may. ``"cluster"``: only members of
    this node's cluster, never a blocked peer (``peers_block``):

    - with ``cluster.trusted_peers`` set, exactly those peer IDs (whether or not
      they have been heard from yet);
    - without it, the peers the cluster knows: those whose signed heartbeat on
      this cluster's topic the replication manager accepted (envelope signed by
      the sender's libp2p key, naming the sender), now or before a restart (the
      health view is kept in the store), whatever their state (alive, suspect
      or dead: a member that was down is served again as soon as it returns,
      as IPFS Cluster keeps a peer in its peerset until it is removed). Without
      trusted peers any peer that knows the cluster name can join, so this
      keeps out peers that never joined; ``cluster.trusted_peers`` is what keeps
      out everyone else. Wants a new member sends before its first heartbeat
      arrives are refused and not replayed; its retries (the manager retries
      failed pins) get through once it is known.

    Args:
        peer: the asking peer's ID (base58 text).
        serve: ``bitswap.serve``, "all" or "cluster".
        trusted: ``cluster.trusted_peers`` (empty: not set).
        blocked: peers cut off with ``peers_block``.
        known: peers the cluster's health view holds.

    Returns:
        True if the peer's wants are to be answered.
    """
    if serve == "all":
        return True
    if peer in blocked:
        return False
    if trusted:
        return peer in trusted
    return peer in known


class _GuardedPubsub(Pubsub):
    """py-libp2p's ``Pubsub``, except that an inbound message that makes it raise is dropped.

    py-libp2p 0.8 runs ``push_msg`` for each received message as a task of the
    Pubsub service, and an exception there ends the service, and with it the
    node: one gossipsub message from any connected peer, trusted or not, whose
    ``key`` field is not a protobuf public key makes ``signature_validator``
    raise ``DecodeError``. Such a message is a forgery; ``on_dropped`` counts it.
    Our own publishes still raise (``LibP2PTransport.publish`` reports them).
    """

    on_dropped: Callable[[], None] = staticmethod(lambda: None)

    async def push_msg(self, msg_forwarder: ID, msg: Any) -> None:
        if msg_forwarder == self.host.get_id():
            await super().push_msg(msg_forwarder, msg)
            return
        try:
            await super().push_msg(msg_forwarder, msg)
        except Exception as exc:  # noqa: BLE001 - a malformed message from a peer: drop it
            self.on_dropped()
            log.debug("dropped a malformed gossip message from %s: %s", msg_forwarder, exc)


@dataclass(frozen=True, slots=True, kw_only=True)
class TransportStats:
    """Counters of the cluster transport (metrics).

    Attributes:
        published: gossip messages sent.
        received: gossip messages delivered to the manager.
        untrusted_dropped: messages and sync streams from peers outside
            ``cluster.trusted_peers`` (or blocked), dropped.
        forged_dropped: messages whose envelope or signature did not verify.
        sessions_served: sync sessions answered.
        dials: dials to cluster peers learned from heartbeats.
    """

    published: int
    received: int
    untrusted_dropped: int
    forged_dropped: int
    sessions_served: int
    dials: int


class _Session:
    """One ``/pinfold/sync/1`` stream we opened (implements ``SyncSession``)."""

    def __init__(self, stream: Any, peer: str, timeout_s: float) -> None:
        self._stream = stream
        self._peer = peer
        self._timeout_s = timeout_s
        self._closed = False

    async def ask(self, request: bytes) -> bytes:
        if self._closed:
            raise TransportError(f"sync session with {self._peer} is closed")
        try:
            with trio.fail_after(self._timeout_s):
                await self._stream.write(encode_uvarint(len(request)) + request)
                return await read_varint_prefixed_bytes_limited(self._stream, MAX_FRAME)
        except trio.TooSlowError as exc:
            raise TransportError(f"{self._peer} did not answer within {self._timeout_s} s") from exc
        except trio.Cancelled:
            raise
        except Exception as exc:
            raise TransportError(f"sync session with {self._peer} broke: {exc}") from exc

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        with trio.move_on_after(2):
            try:
                await self._stream.close()
            except Exception:  # noqa: BLE001, S110 - closing a broken stream
                pass


class LibP2PTransport:
    """The replication ``Transport`` over the node's libp2p host (module docstring).

    Build it before the host runs (gossipsub must see the first connections);
    start it with ``await nursery.start(transport.run)`` after the host.

    Args:
        host: the node's host.
        key_pair: the node's identity (signs envelopes).
        cluster: the cluster name.
        trusted: peer IDs allowed to send (empty = any peer on the topic).
        heartbeat_interval_s: pace of the redial loop, seconds.
        session_timeout_s: a sync request without an answer fails after this, seconds.
    """

    def __init__(self, host: Host, key_pair: KeyPair, cluster: str, *,
                 trusted: Iterable[str] = (), heartbeat_interval_s: float = 5.0,
                 session_timeout_s: float = 30.0) -> None:
        self.host = host
        self.cluster = cluster
        self.topic = topic_name(cluster)
        self._key = key_pair.private_key
        self._me = host.peer_id
        self._me_text = self._me.to_base58()
        self.trusted: frozenset[str] = frozenset(trusted)
        self.blocked: set[str] = set()
        self.heartbeat_interval_s = heartbeat_interval_s
        self.session_timeout_s = session_timeout_s
        self._handler: ClusterHandler | None = None
        self._addrs: dict[str, tuple[str, ...]] = {}
        self._next_dial: dict[str, tuple[float, float]] = {}
        self._published = self._received = self._untrusted = self._forged = 0
        self._served = self._dials = 0
        self._router = GossipSub(
            protocols=[PROTOCOL_ID_V12, PROTOCOL_ID_V11], degree=6, degree_low=4, degree_high=12,
            heartbeat_interval=1, time_to_live=30,
            # Loopback test clusters have one IP and cluster peers are few and
            # trusted: the eclipse and per-topic rate guards only drop our own deltas.
            spam_protection_enabled=False, eclipse_protection_enabled=False)
        self._pubsub = _GuardedPubsub(host.libp2p, self._router, strict_signing=True)
        self._pubsub.on_dropped = self._count_forged
        # py-libp2p starts its seqno at int(time.time()) and adds one per message, so
        # after a restart it would reuse seqnos still in peers' seen-caches and its
        # first messages would be dropped as duplicates; nanoseconds cannot repeat.
        self._pubsub.counter = time.time_ns()
        self._pubsub.set_topic_validator(self.topic, self._validate, False)
        host.set_stream_handler(SYNC_PROTOCOL, self._serve_sync)

    # ------------------------------------------------------------------ Transport

    @property
    def peer_id(self) -> str:
        return self._me_text

    def attach(self, handler: ClusterHandler) -> None:
        self._handler = handler

    def connected(self) -> list[str]:
        return [p.to_base58() for p in self.host.connected_peers()]

    def addresses(self) -> tuple[str, ...]:
        return tuple(self.host.announced())

    def note_addresses(self, peer_id: str, addresses: Sequence[str]) -> None:
        if peer_id != self._me_text:
            self._addrs[peer_id] = tuple(a for a in addresses if "/p2p/" in a)

    async def publish(self, kind: str, body: bytes) -> None:
        env = msgpack.packb({"v": _ENVELOPE_VERSION, "k": kind, "b": body,
                             "s": self._key.sign(_signed_bytes(self.cluster, kind, body))},
                            use_bin_type=True)
        try:
            await self._pubsub.publish(self.topic, env)
        except trio.Cancelled:
            raise
        except Exception as exc:
            raise TransportError(f"gossip publish failed: {exc}") from exc
        self._published += 1

    async def open_session(self, peer_id: str) -> _Session:
        if peer_id in self.blocked:
            raise TransportError(f"{peer_id} is blocked")
        try:
            pid = ID.from_base58(peer_id)
            if not self.host.is_connected(pid):
                raise TransportError(f"not connected to {peer_id}")
            with trio.fail_after(self.session_timeout_s):
                stream = await self.host.new_stream(pid, [SYNC_PROTOCOL])
        except TransportError:
            raise
        except trio.Cancelled:
            raise
        except Exception as exc:
            raise TransportError(f"cannot open {SYNC_PROTOCOL} to {peer_id}: {exc}") from exc
        return _Session(stream, peer_id, self.session_timeout_s)

    # ------------------------------------------------------------------ trust

    def _allowed(self, peer: str) -> bool:
        if peer == self._me_text:
            return True
        if peer in self.blocked:
            return False
        return not self.trusted or peer in self.trusted

    def _open_envelope(self, author: ID, data: bytes) -> tuple[str, bytes] | None:
        try:
            env = msgpack.unpackb(data, raw=False)
            if (type(env) is not dict or env.get("v") != _ENVELOPE_VERSION
                    or env.get("k") not in KINDS or type(env.get("b")) is not bytes
                    or type(env.get("s")) is not bytes):
                return None
            key = author.extract_public_key()
            if key is None or not key.verify(_signed_bytes(self.cluster, env["k"], env["b"]),
                                             env["s"]):
                return None
            return env["k"], env["b"]
        except Exception:  # noqa: BLE001 - anything malformed is a forgery to drop
            return None

    def _count_forged(self) -> None:
        self._forged += 1

    def _validate(self, forwarder: ID, msg: Any) -> bool:
        """Gossipsub topic validator: drop (and do not relay) untrusted or forged messages."""
        try:
            author = ID(msg.from_id)
            text = author.to_base58()
        except Exception:  # noqa: BLE001 - a malformed author field
            self._forged += 1
            return False
        if not self._allowed(text):
            self._untrusted += 1
            return False
        if text == self._me_text:
            return True
        if self._open_envelope(author, msg.data) is None:
            self._forged += 1
            return False
        return True

    def set_trusted(self, trusted: Iterable[str]) -> None:
        """Replace the trusted peer set (config reload)."""
        self.trusted = frozenset(trusted)

    async def block(self, peer_id: str) -> None:
        """Cut a peer off: drop its messages and sessions and close its connections."""
        self.blocked.add(peer_id)
        try:
            await self.host.disconnect(peer_id)
        except HostError as exc:
            raise TransportError(str(exc)) from exc

    def unblock(self, peer_id: str) -> None:
        """Let a blocked peer back in (it is redialled from its announced addresses)."""
        self.blocked.discard(peer_id)
        self._next_dial.pop(peer_id, None)

    def statistics(self) -> TransportStats:
        """Counters for metrics."""
        return TransportStats(published=self._published, received=self._received,
                              untrusted_dropped=self._untrusted, forged_dropped=self._forged,
                              sessions_served=self._served, dials=self._dials)

    # ------------------------------------------------------------------ service

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run gossipsub, deliver messages and peer events, keep cluster peers dialled."""
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(background_trio_service(self._pubsub))
            await stack.enter_async_context(background_trio_service(self._router))
            await self._pubsub.wait_until_ready()
            sub = await self._pubsub.subscribe(self.topic)
            events = self.host.subscribe()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read_gossip, sub)
                nursery.start_soon(self._peer_events, events)
                nursery.start_soon(self._dial_loop)
                nursery.start_soon(self._enforce_blocks)
                task_status.started()
                await trio.sleep_forever()

    async def _read_gossip(self, sub: Any) -> None:
        while True:
            msg = await sub.get()
            try:
                author = ID(msg.from_id)
            except Exception:  # noqa: BLE001, S112 - validated already; defensive
                continue
            text = author.to_base58()
            if text == self._me_text or not self._allowed(text):
                continue
            opened = self._open_envelope(author, msg.data)
            if opened is None or self._handler is None:
                continue
            self._received += 1
            self._handler.on_message(text, opened[0], opened[1])

    async def _peer_events(self, events: Any) -> None:
        async for ev in events:
            text = ev.peer_id.to_base58()
            if ev.connected and text in self.blocked:
                with trio.move_on_after(5):
                    await self.host.disconnect(ev.peer_id)
                continue
            if self._handler is not None and (not ev.connected or self._allowed(text)):
                self._handler.on_peer(text, ev.connected)

    async def _enforce_blocks(self) -> None:
        """Close connections to blocked peers as soon as they appear (a bootstrap
        keeper or the peer itself may redial at any time)."""
        while True:
            if self.blocked:
                for pid in self.host.connected_peers():
                    if pid.to_base58() in self.blocked:
                        with trio.move_on_after(5):
                            await self.host.disconnect(pid)
            await trio.sleep(0.1)

    async def _dial_loop(self) -> None:
        """Keep every announced, allowed cluster peer connected (backoff 1..30 s)."""
        while True:
            now = trio.current_time()
            for peer, addrs in list(self._addrs.items()):
                if not addrs or not self._allowed(peer):
                    continue
                try:
                    pid = ID.from_base58(peer)
                except Exception:  # noqa: BLE001, S112 - a bad peer ID in a heartbeat
                    continue
                if self.host.is_connected(pid):
                    self._next_dial.pop(peer, None)
                    continue
                at, backoff = self._next_dial.get(peer, (0.0, 0.5))
                if now < at:
                    continue
                self._dials += 1
                ok = False
                for addr in addrs:
                    try:
                        await self.host.connect(addr)
                        ok = True
                        break
                    except (DialError, HostError) as exc:
                        log.debug("dial %s at %s: %s", peer, addr, exc)
                if ok:
                    self._next_dial.pop(peer, None)
                else:
                    backoff = min(backoff * 2, 30.0)
                    self._next_dial[peer] = (trio.current_time() + backoff, backoff)
            await trio.sleep(max(0.2, min(1.0, self.heartbeat_interval_s)))

    async def _serve_sync(self, stream: Any) -> None:
        peer = stream.muxed_conn.peer_id.to_base58()
        if not self._allowed(peer) or self._handler is None:
            self._untrusted += 1
            with trio.move_on_after(2):
                await stream.reset()
            return
        self._served += 1
        try:
            while True:
                with trio.fail_after(max(60.0, self.session_timeout_s)):
                    try:
                        request = await read_varint_prefixed_bytes_limited(stream, MAX_FRAME)
                    except Exception:  # noqa: BLE001 - EOF or a closed stream ends the session
                        return
                response = self._handler.answer(peer, request)
                await stream.write(encode_uvarint(len(response)) + response)
        except trio.Cancelled:
            raise
        except Exception as exc:  # noqa: BLE001 - a bad request or a broken stream ends it
            log.info("sync session from %s ended: %s", peer, exc)
            with trio.move_on_after(2):
                try:
                    await stream.reset()
                except Exception:  # noqa: BLE001, S110 - resetting a broken stream
                    pass
        else:
            with trio.move_on_after(2):
                await stream.close()


class NodePins:
    """The manager's ``LocalPins`` over a node's store, writer and Bitswap."""

    def __init__(self, node: Node) -> None:
        self.node = node

    @staticmethod
    def _cid(key: bytes) -> CID:
        return parse_cid(key)

    async def pin(self, cid: bytes, *, mode: PinMode, sources: Sequence[str]) -> int:
        node = self.node
        root = self._cid(cid)
        providers: list[ID] | None = None
        if sources and node.network is not None:
            connected = set(node.network.host.connected_peers())
            providers = [p for p in (ID.from_base58(s) for s in sources) if p in connected]
            providers = providers or None
        held = node.store.pin_get(root)
        if mode is PinMode.DIRECT and held is not None and \
                held.holds.get("cluster") == "recursive":
            return 0  # already held more strongly; a pin is never weakened
        try:
            rec = await node.pin_local(root, recursive=mode is PinMode.RECURSIVE,
                                       name="cluster", providers=providers, owner="cluster")
        except trio.Cancelled:
            raise
        except Exception as exc:
            raise FetchFailed(f"{root}: {describe(exc)}") from exc
        return int(rec.get("fetched_bytes", 0))

    async def unpin(self, cid: bytes) -> None:
        """Release the cluster's hold only: a local pin of the same CID keeps its blocks."""
        try:
            await self.node.unpin_local(self._cid(cid), owner="cluster")
        except NotPinned:
            pass

    async def stage(self, cid: bytes) -> int | None:
        """Hold a complete local DAG for the cluster (beside any local pin of it)."""
        node = self.node
        root = self._cid(cid)
        store = node.store
        held = store.pin_get(root)
        if not store.has(root) or (held is not None and "cluster" in held.holds):
            return None  # not here, or already held by the cluster

        async def local_only(c: CID) -> bytes:
            return store.get(c)

        blocks = []
        try:
            async for c in dagmod.walk(local_only, root, has_block=node.has_block):
                blocks.append(c)
        except BlockNotFound:
            return None
        rec = await node.writer.submit(
            lambda t: t.pin_add(root, recursive=True, blocks=blocks, name="cluster (origin copy)",
                                now=time.time(), owner="cluster"))
        return int(rec.bytes)

    def has_pin(self, cid: bytes) -> bool:
        """True when the cluster holds ``cid`` here and every block it holds is present."""
        return self.holds_complete(cid) is True

    def holds_complete(self, cid: bytes) -> bool | None:
        """Whether the cluster's local pin of ``cid`` has all its blocks (None: no such pin)."""
        store = self.node.store
        root = self._cid(cid)
        rec = store.pin_get(root)
        if rec is None or "cluster" not in rec.holds:
            return None
        presence = store.pin_presence(root)
        return presence is not None and presence[0] == presence[1]

    def capacity(self) -> tuple[int, int]:
        node = self.node
        cap = getattr(node.config.replication, "capacity_bytes", 0) or \
            node.config.blockstore.max_size_bytes
        used = node.store.stat().bytes if node.store is not None else 0
        return cap, max(0, cap - used)


def silent_peers(last_heard: Mapping[str, float], connected: Iterable[str], now: float,
                 period: float, next_at: dict[str, tuple[float, float]],
                 t: float) -> list[tuple[str, float]]:
    """Connected cluster peers whose heartbeats stopped ``period`` seconds ago, to
    reconnect now.

    Args:
        last_heard: per peer, when its last heartbeat arrived (``now``'s clock).
        connected: peer IDs connected now.
        now: the health view's clock, seconds.
        period: silence that calls for a reconnect, seconds.
        next_at: per peer ``(earliest next reconnect, backoff)`` on clock ``t``;
            updated in place (backoff doubles up to 600 s, reset once heard).
        t: the clock of ``next_at``, seconds.

    Returns:
        ``[(peer_id, silent seconds)]``.
    """
    out = []
    conn = set(connected)
    for peer, heard in last_heard.items():
        silent = now - heard
        if silent < period:
            next_at.pop(peer, None)
            continue
        if peer not in conn:
            continue
        at, backoff = next_at.get(peer, (t, period))
        if t < at:
            continue
        next_at[peer] = (t + backoff, min(2 * backoff, 600.0))
        out.append((peer, silent))
    return out


class Cluster:
    """The replication manager of a node and its libp2p transport.

    Build in ``Node.run`` before the network starts; run with
    ``await nursery.start(cluster.run)`` after it.
    """

    def __init__(self, node: Node, key_pair: KeyPair) -> None:
        cfg = node.config
        self.node = node
        self.name = cfg.cluster.name
        self.transport = LibP2PTransport(
            node.network.host, key_pair, self.name, trusted=cfg.cluster.trusted_peers,
            heartbeat_interval_s=cfg.replication.heartbeat_interval_s)
        self.db = ReplicationDB(node.store, node.writer.submit)
        self.manager = Manager(node.peer_id, ManagerConfig.from_config(cfg), self.transport,
                               NodePins(node), db=self.db,
                               wall_offset=time.time() - trio.current_time())

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.transport.run)
            await nursery.start(self.manager.run)
            nursery.start_soon(self._reconnect_silent_loop)
            log.info("cluster %r: %d pins, trusted peers: %s", self.name, len(self.manager.pinset),
                     ", ".join(sorted(self.transport.trusted)) or "any")
            task_status.started()

    async def _reconnect_silent_loop(self) -> None:
        """Drop the connections of cluster peers that stay connected but silent.

        Under connection resets the cluster fault campaign saw a node whose
        py-libp2p host stopped taking in anything on its connections -- no
        gossip, no sync streams -- while they stayed open and its own messages
        still went out: it counted every peer dead for good, and the cluster never
        converged (sync probes cannot help when nothing comes in). A peer
        connected but without a heartbeat for twice its TTL + grace gets its
        connections closed; the dial loop reconnects it and
        gossipsub opens fresh streams. Each peer at most once per that period,
        doubling while it stays silent (up to 10 minutes).
        """
        host = self.node.network.host
        next_at: dict[str, tuple[float, float]] = {}
        while True:
            cfg = self.manager.config
            await trio.sleep(cfg.heartbeat_interval_s)
            period = 2 * (cfg.ttl_s + cfg.repair_grace_s)
            now_w, now_t = self.manager.now(), trio.current_time()
            connected = {p.to_base58(): p for p in host.connected_peers()}
            members = {p: t for p, t in self.manager.last_heartbeat.items()
                       if p in self.manager.health and p not in self.transport.blocked}
            for peer, wait in silent_peers(members, connected, now_w, period, next_at, now_t):
                log.warning("cluster peer %s is connected but silent for %.0f s; "
                            "reconnecting it", peer, wait)
                with trio.move_on_after(5):
                    await host.disconnect(connected[peer])

    def apply_config(self, config: Any) -> None:
        """Live keys of a reload: trusted peers, replication settings."""
        self.transport.set_trusted(config.cluster.trusted_peers)
        self.manager.apply_config(ManagerConfig.from_config(config))

    def may_fetch(self, peer: ID) -> bool:
        """Bitswap's serve filter: ``serve_allowed`` with the live config, trust and
        membership (``bitswap.serve`` is read at each call, so a reload applies at once)."""
        serve = self.node.config.bitswap.serve
        if serve == "all":
            return True
        return serve_allowed(peer.to_base58(), serve=serve, trusted=self.transport.trusted,
                             blocked=self.transport.blocked, known=self.manager.health)

    # ------------------------------------------------------------------ node API

    def check_request(self, *, rmin: int | None = None, rmax: int | None = None,
                      availability: float | None = None) -> None:
        """Refuse a pin request no placement on the current members can satisfy.

        Members are the cluster peers not dead (this node included). Config
        defaults are not checked, so a first node can pin before its peers join.

        Raises:
            InvalidPin: ``rmin`` is more than the members (such a pin could never be
                healthy, as IPFS Cluster fails a pin it cannot allocate), or the
                ``availability`` target is out of reach even with a copy on each of
                the best ``rmax`` members (the message gives what they reach and the
                copies the target would need).
        """
        peers = [p for p in self.manager.cluster_peers() if p.state != PeerStatus.DEAD]
        if rmin is not None and rmin > len(peers):
            raise InvalidPin(
                f"{rmin} copies (--replicas/--rmin) is more than the {len(peers)} cluster "
                "member(s) that are not dead; a pin with more copies than members could "
                "never be healthy")
        if availability is not None:
            why = unreachable_availability(
                [self.manager.health.p_stable(p.peer_id) for p in peers], availability, rmax)
            if why is not None:
                raise InvalidPin(why)

    async def pin(self, cid: CID, *, recursive: bool = True, name: str = "",
                  rmin: int | None = None, rmax: int | None = None,
                  availability: float | None = None, expire_at: float | None = None,
                  metadata: dict[str, Any] | None = None, stage: bool = True) -> dict[str, Any]:
        """Write the pin to the shared pinset; returns the pin record with
        ``holders_pinned`` (holders pinned on alive peers now) and ``holders_wanted``
        (rmin). The holders fetch it afterwards: see ``pin_status``.

        Raises:
            InvalidPin: as ``check_request`` says, or a bad field.
        """
        key = pin_key(cid)
        self.check_request(rmin=rmin, rmax=rmax, availability=availability)
        pin = await self.manager.pin_add(
            key, name=name, mode=PinMode.RECURSIVE if recursive else PinMode.DIRECT, rmin=rmin,
            rmax=rmax, availability_target=availability, expire_at=expire_at,
            metadata={str(k): str(v) for k, v in (metadata or {}).items()}, stage=stage)
        d = self._pin_dict(pin, self.manager.local_state(key))
        st = self.manager.status(key)
        d["holders_pinned"] = st.healthy if st is not None else 0
        d["holders_wanted"] = pin.rmin
        return d

    async def unpin(self, cid: CID) -> dict[str, Any]:
        key = pin_key(cid)
        try:
            await self.manager.pin_rm(key)
        except PinNotFound as exc:
            raise NotPinned(str(exc)) from exc
        return {"cid": cid_text(key), "state": "unpinned"}

    def _pin_dict(self, pin: Any, state: PinState) -> dict[str, Any]:
        d: dict[str, Any] = {"cid": cid_text(pin.cid), "name": pin.name, "mode": pin.mode.value,
                             "rmin": pin.rmin, "rmax": pin.rmax, "state": state.value}
        if pin.availability is not None:
            d["availability"] = pin.availability
        if pin.expire_at is not None:
            d["expire_at"] = pin.expire_at
        if pin.metadata:
            d["metadata"] = dict(pin.metadata)
        if pin.size_bytes is not None:
            d["size_bytes"] = pin.size_bytes
        err = self.manager.local_error(pin.cid)
        if err:
            d["error"] = err
        return d

    async def pin_list(self, state: str | None) -> Any:
        """The pinset with this node's state of each pin; ``state`` filters (``error``
        is ``pin_error``: failed pins, each with its ``error``)."""
        want = None
        if state == "error":
            state = PinState.PIN_ERROR.value
        if state == "incomplete":
            return  # a cluster copy short of blocks is queued again, not kept incomplete
        if state is not None:
            try:
                want = PinState(state)
            except ValueError:
                from pinfold.daemon.api import InvalidArgument

                raise InvalidArgument(
                    f"state must be one of {', '.join(s.value for s in PinState)}, got {state!r}"
                ) from None
        async for pin, st in self.manager.iter_pins(want):
            yield self._pin_dict(pin, st)

    async def pin_status(self, cid: CID) -> dict[str, Any]:
        """The cluster's view of a pin. A local copy this node counted as ``pinned``
        but that is missing blocks goes back to ``queued`` first (it is fetched
        again), so neither this answer nor the peers count it as held."""
        key = pin_key(cid)
        presence = None
        if self.manager.local_state(key) is PinState.PINNED:
            presence = await trio.to_thread.run_sync(self.node.store.pin_presence, cid)
            if presence is None or presence[0] < presence[1]:
                self.manager.local_incomplete([key])
        st = self.manager.status(key)
        if st is None:
            raise NotPinned(f"not in the cluster pinset: {cid_text(key)}")
        d = st.as_dict()
        pin = self.manager.pinset.pin(key)
        if pin is not None:
            d["name"] = pin.name
            d["mode"] = pin.mode.value
        d["local_state"] = self.manager.local_state(key).value
        if presence is not None and presence[0] < presence[1]:
            d["local_blocks"] = presence[1]
            d["local_blocks_present"] = presence[0]
        return d

    # ------------------------------------------------------------------ RPC

    def handlers(self) -> dict[str, Callable[[Any], Any]]:
        return {"cluster_peers": self.rpc_cluster_peers, "cluster_status": self.rpc_cluster_status,
                "recover": self.rpc_recover, "peers_block": self.rpc_block,
                "peers_unblock": self.rpc_unblock}

    async def rpc_cluster_peers(self, call: Any) -> dict[str, Any]:
        peers = self.manager.cluster_peers()
        connected = set(self.transport.connected())
        for p in peers:
            d = p.as_dict()
            d["connected"] = p.peer_id in connected
            d["self"] = p.peer_id == self.node.peer_id
            await call.send(d)
        return {"count": len(peers)}

    async def rpc_cluster_status(self, call: Any) -> dict[str, Any]:
        d = self.manager.cluster_status().as_dict()
        st = self.manager.statistics()
        d["cluster"] = self.name
        d["serve"] = self.node.config.bitswap.serve
        d["refused_wants"] = self.node.network.bitswap.statistics().refused_wants
        d["local"] = st.local_states
        d["peers"] = st.peers
        d["repairs"] = st.repairs
        return d

    async def rpc_recover(self, call: Any) -> dict[str, Any]:
        cid = call.params.get("cid")
        if cid is not None and not isinstance(cid, str):
            from pinfold.daemon.api import InvalidArgument

            raise InvalidArgument("parameter 'cid' must be a CID string")
        if cid is None and not call.params.get("all"):
            from pinfold.daemon.api import InvalidArgument

            raise InvalidArgument("recover needs 'cid' or 'all'")
        done = self.manager.recover(None if cid is None else pin_key(cid))
        return {"recovered": len(done), "cids": [cid_text(c) for c in done],
                "pins": [{"cid": cid_text(c), "error": self.manager.local_error(c)}
                         for c in done]}

    async def rpc_block(self, call: Any) -> dict[str, Any]:
        peer = call.params.get("peer_id")
        if not isinstance(peer, str):
            from pinfold.daemon.api import InvalidArgument

            raise InvalidArgument("missing parameter 'peer_id'")
        await self.transport.block(peer)
        return {"peer_id": peer, "blocked": True}

    async def rpc_unblock(self, call: Any) -> dict[str, Any]:
        peer = call.params.get("peer_id")
        if not isinstance(peer, str):
            from pinfold.daemon.api import InvalidArgument

            raise InvalidArgument("missing parameter 'peer_id'")
        self.transport.unblock(peer)
        return {"peer_id": peer, "blocked": False}


# ---------------------------------------------------------------------- metrics


def replication_metric_families(node: Node) -> Iterable[Any]:
    """The replication and cluster metric families (zeros on a standalone node).

    Names are fixed by deploy/prometheus/alerts.yml and deploy/grafana/pinfold.json.
    """
    cluster: Cluster | None = getattr(node, "cluster", None)
    grace = float(node.config.replication.repair_grace_s)
    if cluster is None:
        local = dict.fromkeys(("queued", "pinning", "pinned", "pin_error", "unpinning",
                               "remote"), 0)
        pins = dict.fromkeys(("under_replicated", "at_target", "over_replicated"), 0)
        peers = dict.fromkeys(("alive", "suspect", "dead"), 0)
        repairs = dict.fromkeys(("started", "completed", "failed"), 0)
        buckets: list[tuple[float, int]] = [(math.inf, 0)]
        rsum = 0.0
        min_avail = 1.0
        queue = 0
        dropped = 0
        fetched = 0
        rejected = 0
    else:
        st = cluster.manager.last_statistics()  # this runs in the metrics thread
        ts = cluster.transport.statistics()
        local, pins, peers, repairs = st.local_states, st.cluster_pins, st.peers, st.repairs
        buckets = list(st.repair_buckets)
        rsum = st.repair_sum_s
        min_avail = st.min_availability
        queue = st.queue_length
        dropped = ts.untrusted_dropped + ts.forged_dropped
        fetched = st.bytes_fetched
        rejected = st.rejected_messages
    yield gauge_by("pinfold_cluster_pins", "Cluster pins by healthy holders against rmin/rmax, "
                   "as this node sees them", "status", pins)
    yield gauge_by("pinfold_cluster_peers", "Cluster peers by state (this node included)",
                   "state", peers)
    yield gauge_by("pinfold_replication_local_pins", "This node's pins by local state", "state",
                   local)
    yield counter_by("pinfold_replication_repairs", "Repair fetches by outcome", "outcome",
                     repairs)
    yield histogram("pinfold_replication_repair_duration_seconds",
                    "Time from a holder declared dead to its pins back at rmin", buckets, rsum)
    yield gauge("pinfold_replication_min_availability",
                "Lowest achieved availability 1 - prod(1 - p_i) over all pins", min_avail)
    yield gauge("pinfold_replication_pin_queue_length", "Pins queued or fetching here", queue)
    yield counter("pinfold_cluster_untrusted_messages_dropped",
                  "Cluster messages dropped: untrusted, blocked or forged senders", dropped)
    yield counter("pinfold_replication_fetched_bytes", "Bytes fetched to pin allocated DAGs",
                  fetched)
    yield counter("pinfold_cluster_rejected_messages", "Cluster messages from trusted peers "
                  "rejected as malformed, impersonating or too far ahead in time", rejected)
    yield gauge("pinfold_replication_grace_seconds",
                "The configured replication.repair_grace_s", grace)
