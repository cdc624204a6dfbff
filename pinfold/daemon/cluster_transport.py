"""The replication ``Transport`` over libp2p (DESIGN.md "Replication").

``LibP2PTransport`` is what the replication manager (``pinfold.replication.manager``)
sends and receives through, over the node's libp2p host:

- gossip on the gossipsub topic ``/pinfold/<cluster name>/cluster/1``
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
- ``/pinfold/sync/1``: request/response frames (uvarint length + msgpack,
  at most 4 MiB) on a stream (``LibP2PSyncSession``); streams from untrusted
  peers are reset and counted.
- cluster peers are dialled from ``node.bootstrap`` (the host keeps those)
  and from the addresses their heartbeats announce, and redialled with
  backoff when lost. ``block``/``unblock`` cut a peer off (disconnect and
  refuse it) - an operator's tool, and how the tests partition a cluster.

Imports the host and replication's transport protocol; nothing of the node.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, Final

import msgpack
import trio
from libp2p.crypto.keys import KeyPair
from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, PROTOCOL_ID_V12, GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.tools.anyio_service import background_trio_service
from libp2p.utils.varint import encode_uvarint, read_varint_prefixed_bytes_limited
from pinfold.replication.messages import KINDS
from pinfold.replication.transport import ClusterHandler, TransportError

from pinfold.daemon.p2p.host import DialError, Host, HostError

log = logging.getLogger("pinfold.cluster")

__all__ = [
    "MAX_FRAME",
    "SYNC_PROTOCOL",
    "LibP2PSyncSession",
    "LibP2PTransport",
    "TransportStats",
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


class _GuardedPubsub(Pubsub):
    """py-libp2p's ``Pubsub``, except that what a peer sends cannot end the service.

    - An inbound message that makes ``push_msg`` raise is dropped: py-libp2p 0.8
      runs it as a task of the Pubsub service, where an exception ends the
      service and the node (a ``key`` field that is not a protobuf public key
      makes ``signature_validator`` raise ``DecodeError``). ``on_dropped`` counts it.
    - A pubsub stream whose frames do not parse (``DecodeError`` from
      ``RPC.ParseFromString``), whose control part makes the router raise, or
      whose length prefix is over the inbound limit is reset and its peer
      dropped from pubsub (``_handle_dead_peer`` re-opens pubsub streams to it
      while it stays connected); py-libp2p's ``stream_handler``
      lets ``DecodeError`` escape into the swarm, which ends the node.
      ``on_bad_stream`` counts it.

    Our own publishes still raise (``LibP2PTransport.publish`` reports them).
    """

    on_dropped: Callable[[], None] = staticmethod(lambda: None)
    on_bad_stream: Callable[[], None] = staticmethod(lambda: None)

    async def stream_handler(self, stream: Any) -> None:
        peer_id = stream.muxed_conn.peer_id
        watched = _ResetWatch(stream)
        try:
            await self.continuously_read_stream(watched)
            if watched.was_reset:  # py-libp2p reset it: a frame over the inbound limit
                self.on_bad_stream()
        except trio.Cancelled:
            raise
        except Exception as exc:  # noqa: BLE001 - a peer's malformed frame: drop its stream
            self.on_bad_stream()
            log.warning("reset the pubsub stream of %s: malformed frame (%s: %s)",
                        peer_id, type(exc).__name__, exc)
            with trio.move_on_after(2):
                try:
                    await stream.reset()
                except Exception:  # noqa: BLE001, S110 - resetting a broken stream
                    pass
            self._handle_dead_peer(peer_id)

    async def push_msg(self, msg_forwarder: ID, msg: Any) -> None:
        if msg_forwarder == self.host.get_id():
            await super().push_msg(msg_forwarder, msg)
            return
        try:
            await super().push_msg(msg_forwarder, msg)
        except Exception as exc:  # noqa: BLE001 - a malformed message from a peer: drop it
            self.on_dropped()
            log.debug("dropped a malformed gossip message from %s: %s", msg_forwarder, exc)


class _ResetWatch:
    """A stream that notes whether its reader reset it (everything else is the stream's)."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.was_reset = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    async def reset(self) -> None:
        self.was_reset = True
        await self._stream.reset()


@dataclass(frozen=True, slots=True, kw_only=True)
class TransportStats:
    """Counters of the cluster transport (metrics).

    Attributes:
        published: gossip messages sent.
        received: gossip messages delivered to the manager.
        untrusted_dropped: messages and sync streams from peers outside
            ``cluster.trusted_peers`` (or blocked), dropped.
        forged_dropped: messages whose envelope or signature did not verify.
        malformed_streams: pubsub streams reset for a frame that did not parse
            or was over the inbound size limit.
        sessions_served: sync sessions answered.
        dials: dials to cluster peers learned from heartbeats.
    """

    published: int
    received: int
    untrusted_dropped: int
    forged_dropped: int
    malformed_streams: int
    sessions_served: int
    dials: int


class LibP2PSyncSession:
    """One ``/pinfold/sync/1`` stream we opened (replication's ``SyncSession``)."""

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
        self._pubsub.on_bad_stream = self._count_malformed
        self._malformed = 0
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

    async def open_session(self, peer_id: str) -> LibP2PSyncSession:
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
        return LibP2PSyncSession(stream, peer_id, self.session_timeout_s)

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

    def _count_malformed(self) -> None:
        self._malformed += 1

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
                              malformed_streams=self._malformed,
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
