"""The libp2p host: TCP, Noise, Yamux, identify, ping, bootstrap peers kept connected.

A thin trio service around py-libp2p 0.8.1's ``BasicHost`` (STYLE.md 4):
``await nursery.start(host.run)`` returns once every listen address is bound,
and the host stops when the nursery is cancelled.

Security and muxing are pinned: only Noise (``/noise``) and only Yamux
(``/yamux/1.0.0``) are offered, so plaintext, secio, TLS and mplex peers are
refused during negotiation (py-libp2p's defaults would accept insecure
connections). With ``fast_channel`` (the default) they are pinfold's own
subclasses in ``pinfold.daemon.p2p.transport`` (same wire format, a faster receive
path). One connection per peer (``max_connections_per_peer=1``; with more
py-libp2p waits 250 ms on every dial) and a total connection limit.

py-libp2p cuts its loggers off from the logging tree on import;
``route_libp2p_logs`` (``libp2p_logs``, re-exported here) puts them back under
the root logger so the daemon's logging configuration applies to them too.

Identity: ``pinfold.daemon.p2p.identity`` reads/writes the key file (libp2p
``PrivateKey`` protobuf, Ed25519, mode 0600); ``Host`` takes the ``KeyPair``.
Settings, records and errors live in ``host_config`` (re-exported here), the
parts plugged into py-libp2p's swarm in ``swarm_limits``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import IHost, INetConn, INetStream, INetwork, INotifee
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as _new_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.host.ping import ID as PING_PROTOCOL
from libp2p.host.ping import PING_LENGTH
from libp2p.network.config import ConnectionConfig
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux

from pinfold.daemon.p2p.host_config import (
    ConnectedPeer,
    DialError,
    HostConfig,
    HostError,
    HostStats,
    PeerEvent,
    as_peer_id,
    parse_multiaddr,
    root_causes,
    strip_p2p,
)
from pinfold.daemon.p2p import swarm_limits
from pinfold.daemon.p2p.libp2p_logs import route_libp2p_logs
from pinfold.daemon.p2p.swarm_limits import REAP_AGE_S, InboundSlots, TrackingTCP, raw_connection
from pinfold.daemon.p2p.transport import DirectOpener, DirectRoutes, FastNoiseTransport, FastYamux
from pinfold.daemon.p2p.transport import InboundSelector, install_muxer

__all__ = [
    "DialError",
    "Host",
    "HostConfig",
    "HostError",
    "HostStats",
    "PeerEvent",
    "ConnectedPeer",
    "parse_multiaddr",
    "route_libp2p_logs",
]

logger = logging.getLogger(__name__)

#: Protocols a pinfold host negotiates for security and muxing; nothing else is offered.
SECURITY_PROTOCOLS: Final = (str(NOISE_PROTOCOL_ID),)
MUXER_PROTOCOLS: Final = (str(YAMUX_PROTOCOL_ID),)


class _Notifee(INotifee):
    def __init__(self, host: Host) -> None:
        self._host = host

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        await self._host._on_stream_opened(stream)

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        self._host._on_connected(conn)

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        self._host._on_disconnected(conn)

    async def listen(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        return None

    async def listen_close(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        return None


StreamHandler = Callable[[INetStream], Awaitable[None]]


@dataclass(slots=True)
class _Counters:
    opened: int = 0
    closed: int = 0
    dials: int = 0
    dial_failures: int = 0
    streams_refused: int = 0


class Host:
    """A pinfold libp2p host (TCP + Noise + Yamux, identify, ping).

    Usage::

        host = Host(key_pair, HostConfig(listen=("/ip4/127.0.0.1/tcp/0",)))
        async with trio.open_nursery() as nursery:
            await nursery.start(host.run)
            print(host.addrs())          # full /p2p/ multiaddrs
            peer = await host.connect("/ip4/127.0.0.1/tcp/4101/p2p/12D3KooW...")

    Stream handlers (``set_stream_handler``) may be set before or after ``run``.
    """

    def __init__(self, key_pair: KeyPair, config: HostConfig | None = None, *, rng: random.Random | None = None) -> None:
        self.config = config or HostConfig()
        self.key_pair = key_pair
        self._rng = rng or random.Random()
        noise_class = FastNoiseTransport if self.config.fast_channel else NoiseTransport
        muxer_class = FastYamux if self.config.fast_channel else Yamux
        noise = noise_class(key_pair, noise_privkey=_new_x25519_key_pair().private_key)
        conn_config = ConnectionConfig(
            max_connections=self.config.max_connections,
            min_connections=0,
            low_watermark=0,
            high_watermark=self.config.max_connections,
            max_connections_per_peer=1,
            dial_timeout=self.config.dial_timeout_s,
        )
        self._listen = [parse_multiaddr(a) for a in self.config.listen]
        self._dialed: list[tuple[float, Any]] = []  # (when, RawConnection) of our outbound dials
        self.libp2p: IHost = new_host(
            key_pair=key_pair,
            sec_opt={NOISE_PROTOCOL_ID: noise},
            muxer_opt={YAMUX_PROTOCOL_ID: muxer_class},
            connection_config=conn_config,
            listen_addrs=self._listen,
            transports=[TrackingTCP(self._dialed)],
            # identify tells peers these instead of the listen addresses (Kubo's
            # Addresses.Announce), so they never learn an address they cannot reach
            announce_addrs=[strip_p2p(a) for a in self.config.announce] or None,
        )
        route_libp2p_logs()
        # py-libp2p's auto-connector redials every peer in the peerstore until it
        # holds (low + high watermark) / 2 connections -- including peers we cut
        # off. pinfold decides whom to dial (bootstrap peers, the cluster), so it
        # is switched off; pruning still applies above max_connections.
        network = self.libp2p.get_network()
        if self.config.fast_channel:
            # py-libp2p's own muxer negotiation would build its stock Yamux
            self._direct: DirectRoutes | None = DirectRoutes()
            install_muxer(network, {YAMUX_PROTOCOL_ID: FastYamux}, direct=self._direct)
            # a peer's new stream that selects a protocol in its first bytes is
            # answered in one write (transport/select.py)
            self._selector: InboundSelector | None = InboundSelector(
                self.libp2p.get_mux().handlers, self.libp2p._swarm_stream_handler)  # type: ignore[attr-defined]
            network.set_stream_handler(self._selector)
        else:
            self._selector = None
            self._direct = None
        if hasattr(network, "auto_connector"):
            network.auto_connector.maybe_connect = _no_auto_connect  # type: ignore[method-assign]
        # py-libp2p 0.8.1 holds an inbound slot until the *node* stops (its inbound handler
        # waits on manager.wait_finished() after the upgrade), so after max_connections
        # inbound connections over the node's life every new one was refused. A slot now
        # lasts as long as the handshake (found by the reliability campaign).
        if isinstance(getattr(network, "_inbound_limiter", None), trio.CapacityLimiter):
            self._inbound_slots = InboundSlots(
                limit=int(network._inbound_limiter.total_tokens),
                live=lambda: len(network.get_connections()),
                handshake_timeout_s=conn_config.inbound_upgrade_timeout)
            network._inbound_limiter = self._inbound_slots
        else:
            self._inbound_slots = None
        self._bootstrap = [parse_multiaddr(a, need_peer_id=True) for a in self.config.bootstrap]
        self._subscribers: list[trio.MemorySendChannel[PeerEvent]] = []
        self._counters = _Counters()
        self._connected: set[ID] = set()
        self._running = False
        self._stopped = False
        self.libp2p.get_network().register_notifee(_Notifee(self))
        swarm_limits.quiet_stream_notifications(network, no_ops=(_Notifee.closed_stream,))

    # ------------------------------------------------------------ identity

    @property
    def peer_id(self) -> ID:
        """This host's peer ID."""
        return self.libp2p.get_id()

    def addrs(self) -> list[str]:
        """Full listen multiaddrs, each ending in ``/p2p/<our peer ID>``.

        Wildcard listen addresses (0.0.0.0) are reported as bound; valid after ``run`` started.
        """
        out = []
        suffix = f"/p2p/{self.peer_id}"
        addrs = (self.libp2p.get_transport_addrs() if self.config.announce
                 else self.libp2p.get_addrs())
        for ma in addrs:
            text = str(ma)
            if "/p2p/" not in text:
                text += suffix
            out.append(text)
        return out

    def announced(self) -> list[str]:
        """What peers are told to dial: ``HostConfig.announce`` if set, else ``addrs()``;
        each ends in ``/p2p/<our peer ID>``."""
        if not self.config.announce:
            return self.addrs()
        suffix = f"/p2p/{self.peer_id}"  # ours, whatever /p2p/ part the config had
        return [str(strip_p2p(a)) + suffix for a in self.config.announce]

    # ------------------------------------------------------------ service

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen, keep the bootstrap peers connected, and serve until cancelled.

        Calls ``task_status.started()`` once every listen address is bound.

        Raises:
            HostError: a listen address could not be bound (e.g. port in use).
        """
        if self._running:
            raise HostError("Host.run called twice")
        self._running = True
        try:
            async with self.libp2p.run(self._listen):
                if not self.libp2p.get_addrs():
                    raise HostError(
                        f"could not listen on {', '.join(map(str, self._listen))} "
                        "(is the address in use?)"
                    )
                async with trio.open_nursery() as nursery:
                    for ma in self._bootstrap:
                        nursery.start_soon(self._keep_connected, ma)
                    task_status.started()
                    await trio.sleep_forever()
        finally:
            self._stopped = True
            self._reap_sockets(older_than_s=None, shutdown=True)
            for ch in self._subscribers:
                ch.close()
            self._subscribers.clear()

    # ------------------------------------------------------------ peers

    async def connect(self, addr: str | multiaddr.Multiaddr) -> ID:
        """Dial a peer (no-op when already connected) and return its peer ID.

        Args:
            addr: a full multiaddr with ``/p2p/<peer ID>``.

        Raises:
            HostError: the multiaddr is invalid or lacks the peer ID.
            DialError: the dial or handshake failed or took over ``dial_timeout_s``.
        """
        ma = parse_multiaddr(addr, need_peer_id=True)
        info = info_from_p2p_addr(ma)
        if info.peer_id == self.peer_id:
            raise DialError(f"refusing to dial our own peer ID {info.peer_id}")
        if self.is_connected(info.peer_id):
            return info.peer_id
        self._counters.dials += 1
        # py-libp2p dials only the first address per transport class it has for a
        # peer (MAX_ADDRS_PER_PEER), and identify puts the peer's listen addresses
        # first: a peer behind a proxy or NAT (node.announce) was then redialled at
        # an address we cannot reach, forever, whatever address we were given
        # (found by the cluster fault campaign). The address asked for is dialled.
        store = self.libp2p.get_peerstore()
        store.clear_addrs(info.peer_id)
        store.add_addrs(info.peer_id, info.addrs, 120)
        # py-libp2p refuses to redial a peer for 60 s after a failed dial; pinfold
        # applies its own backoff (bootstrap) or the user asked explicitly.
        negative = getattr(self.libp2p.get_network(), "_negative_peer_cache", None)
        if negative is not None:
            negative.evict(str(info.peer_id))
        try:
            with trio.fail_after(self.config.dial_timeout_s):
                await self.libp2p.connect(info)
        except trio.TooSlowError as exc:
            self._counters.dial_failures += 1
            raise DialError(f"dial {ma} timed out after {self.config.dial_timeout_s:g} s") from exc
        except trio.Cancelled:
            raise
        except Exception as exc:
            self._counters.dial_failures += 1
            raise DialError(f"dial {ma} failed: {root_causes(exc)}") from exc
        finally:
            self._reap_sockets(older_than_s=REAP_AGE_S)
        return info.peer_id

    async def disconnect(self, peer_id: ID | str) -> bool:
        """Close every connection to ``peer_id``; True if there was one.

        The close runs to its end even when the caller is cancelled meanwhile (it
        is shielded, for at most ``close_timeout_s``): py-libp2p 0.8.1's
        ``SwarmConn.close`` marks the connection closed before its first await,
        and every later close returns at once on that mark. Cancelled anywhere
        after it, the connection stayed in the swarm for good: still "connected",
        its new streams no longer accepted (the peer's stream negotiations timed
        out), and never removed, not even once the peer hung up (found by the live
        hostile Bitswap campaign: a peer cut off for a malformed message while its
        other stream's processing cancelled the cut-off). A close that does not
        finish in time (a peer that stopped reading blocks our goodbyes) is
        finished by force: sockets closed, connections dropped.

        Raises:
            HostError: ``peer_id`` is not a valid peer ID.
        """
        pid = as_peer_id(peer_id)
        network = self.libp2p.get_network()
        conns = list(network.get_connections(pid))
        with trio.CancelScope(shield=True):
            with trio.move_on_after(self.config.close_timeout_s) as scope:
                await self.libp2p.disconnect(pid)
            if scope.cancelled_caught:
                logger.info("closing the connection to %s took over %g s; dropping it",
                            pid, self.config.close_timeout_s)
                for conn in network.get_connections(pid):  # the close was cut short here
                    await self._drop(conn)
        return bool(conns)

    async def _drop(self, conn: INetConn) -> None:
        """Close ``conn``'s socket and remove it from the swarm, notifying as a close does."""
        raw = raw_connection(conn)
        with contextlib.suppress(OSError, AttributeError):  # closed already, or not TCP
            raw.stream.stream.socket.close()
        network = self.libp2p.get_network()
        network.remove_conn(conn)  # type: ignore[attr-defined]
        with trio.move_on_after(1.0):
            try:
                await network.notify_disconnected(conn)  # type: ignore[attr-defined]
            except Exception as exc:  # noqa: BLE001 - a notifee's failure is not ours
                logger.debug("disconnect notification for %s failed: %r",
                             conn.muxed_conn.peer_id, exc)

    def is_connected(self, peer_id: ID) -> bool:
        """True while at least one connection to ``peer_id`` is open."""
        return bool(self.libp2p.get_network().get_connections(peer_id))

    def connected_peers(self) -> list[ID]:
        """Peer IDs with an open connection."""
        return list(self.libp2p.get_network().get_connections_map().keys())

    def peers(self) -> list[ConnectedPeer]:
        """Connected peers with their remote addresses, sorted by peer ID."""
        out = []
        network = self.libp2p.get_network()
        for pid, conns in network.get_connections_map().items():
            if not conns:
                continue
            addrs: list[str] = []
            direction = "outbound"
            for conn in conns:
                try:
                    addrs.extend(str(a) for a in conn.get_transport_addresses())
                except Exception:  # a connection closing under us has no address
                    pass
                if getattr(getattr(conn, "muxed_conn", None), "is_initiator", True) is False:
                    direction = "inbound"
            out.append(ConnectedPeer(peer_id=pid, addrs=tuple(addrs), direction=direction))
        return sorted(out, key=lambda p: str(p.peer_id))

    async def ping(self, peer_id: ID | str, *, timeout_s: float = 10.0) -> float:
        """Round-trip time to a connected peer over ``/ipfs/ping/1.0.0``, seconds.

        Raises:
            HostError: not connected, the peer does not answer ping, or it echoed wrong bytes.
            trio.TooSlowError: no answer within ``timeout_s``.
        """
        pid = as_peer_id(peer_id)
        payload = random.randbytes(PING_LENGTH)
        with trio.fail_after(timeout_s):
            try:
                stream = await self.libp2p.new_stream(pid, [PING_PROTOCOL])
            except trio.Cancelled:
                raise
            except Exception as exc:
                raise HostError(f"ping {pid}: {exc}") from exc
            try:
                start = trio.current_time()
                await stream.write(payload)
                got = b""
                while len(got) < PING_LENGTH:
                    chunk = await stream.read(PING_LENGTH - len(got))
                    if not chunk:
                        break
                    got += chunk
                rtt = trio.current_time() - start
            finally:
                with trio.CancelScope(shield=True):
                    try:
                        await stream.reset()
                    except Exception:
                        pass
        if got != payload:
            raise HostError(f"ping {pid}: the peer echoed different bytes")
        return rtt

    # ------------------------------------------------------------ streams

    def set_stream_handler(self, protocol: str, handler: StreamHandler, *, receive_only: bool = False,
                           direct: DirectOpener | None = None) -> None:
        """Serve ``protocol`` with ``handler(stream)`` (one call per inbound stream).

        ``receive_only``: the handler never writes to the stream (Bitswap's), so on
        the fast channel our side is closed as the protocol is agreed. ``direct``
        (with it): such streams that select ``protocol`` in their first bytes go to
        ``direct(peer)``'s receiver from the connection's reader (``transport/direct.py``).
        """
        self.libp2p.set_stream_handler(TProtocol(protocol), handler)
        if self._selector is not None:
            if receive_only:
                self._selector.receive_only.add(protocol)
            else:
                self._selector.receive_only.discard(protocol)
        if self._direct is not None:
            self._direct.set(protocol, direct if receive_only else None)

    async def new_stream(self, peer_id: ID, protocols: Sequence[str]) -> INetStream:
        """Open a stream to a connected peer, negotiating the first protocol it supports.

        Raises:
            Exception: py-libp2p's stream errors (no connection, negotiation failed).
        """
        return await self.libp2p.new_stream(peer_id, [TProtocol(p) for p in protocols])

    def subscribe(self, capacity: float = math.inf) -> trio.MemoryReceiveChannel[PeerEvent]:
        """A channel of ``PeerEvent``s (connects and last-connection disconnects).

        The channel closes when the host stops. Peers already connected are not replayed:
        call ``connected_peers()`` after subscribing.
        """
        send, recv = trio.open_memory_channel[PeerEvent](capacity)
        if self._stopped:
            send.close()
        else:
            self._subscribers.append(send)
        return recv

    def statistics(self) -> HostStats:
        """Connection counters (a frozen record for metrics)."""
        connected = set(self.connected_peers())
        boot = {info_from_p2p_addr(ma).peer_id for ma in self._bootstrap}
        return HostStats(
            peers=len(connected),
            connections_opened=self._counters.opened,
            connections_closed=self._counters.closed,
            dials=self._counters.dials,
            dial_failures=self._counters.dial_failures,
            bootstrap_connected=len(boot & connected),
            bootstrap_total=len(boot),
            streams_refused=self._counters.streams_refused,
        )

    # ------------------------------------------------------------ internals

    def _publish(self, event: PeerEvent) -> None:
        alive = []
        for ch in self._subscribers:
            try:
                ch.send_nowait(event)
                alive.append(ch)
            except trio.WouldBlock:
                logger.warning("peer event subscriber is full; dropping it")
                ch.close()
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                pass
        self._subscribers = alive

    def _on_connected(self, conn: INetConn) -> None:
        self._counters.opened += 1
        if self._inbound_slots is not None and not getattr(conn.muxed_conn, "is_initiator", True):
            self._inbound_slots.upgraded()
        pid = conn.muxed_conn.peer_id
        if pid not in self._connected:
            self._connected.add(pid)
            self._publish(PeerEvent(peer_id=pid, connected=True))

    def _reap_sockets(self, *, older_than_s: float | None, shutdown: bool = False) -> None:
        """Close sockets of our outbound dials that py-libp2p dropped without
        closing (failed upgrades, remote-closed connections), so they do not leak.

        Args:
            older_than_s: only dials at least this old, seconds (a younger one may
                still be handshaking); None = every dial not in a live connection.
            shutdown: the host stopped: close every socket, live or not.
        """
        if not self._dialed:
            return
        live = set()
        conn_map = {} if shutdown else self.libp2p.get_network().get_connections_map()
        for conns in conn_map.values():
            for conn in conns:
                raw = raw_connection(conn)
                if raw is not None:
                    live.add(id(raw))
        now = trio.current_time()
        keep = []
        for when, raw in self._dialed:
            if id(raw) in live or (older_than_s is not None and now - when < older_than_s):
                keep.append((when, raw))
                continue
            try:
                raw.stream.stream.socket.close()
            except Exception:  # already closed or not a TCP stream
                pass
        self._dialed[:] = keep

    async def _on_stream_opened(self, stream: INetStream) -> None:
        """Reset an inbound stream that takes its peer over ``max_inbound_streams_per_peer``."""
        if getattr(stream.muxed_stream, "is_initiator", True):
            return  # ours
        pid = stream.muxed_conn.peer_id
        inbound = 0
        for conn in self.libp2p.get_network().get_connections(pid):
            for s in conn.get_streams():
                if not getattr(s.muxed_stream, "is_initiator", True):
                    inbound += 1
        if inbound <= self.config.max_inbound_streams_per_peer:
            return
        self._counters.streams_refused += 1
        if self._counters.streams_refused % 1000 == 1:
            logger.warning("peer %s opened more than %d streams; resetting the extra ones "
                           "(%d so far)", pid, self.config.max_inbound_streams_per_peer,
                           self._counters.streams_refused)
        try:
            await stream.reset()
        except Exception as exc:  # noqa: BLE001 - already gone is as good as reset
            logger.debug("reset of an extra stream from %s failed: %r", pid, exc)

    def _on_disconnected(self, conn: INetConn) -> None:
        self._counters.closed += 1
        pid = conn.muxed_conn.peer_id
        remaining = [c for c in self.libp2p.get_network().get_connections(pid) if c is not conn]
        if pid in self._connected and not remaining:
            self._connected.discard(pid)
            self._publish(PeerEvent(peer_id=pid, connected=False))

    async def _keep_connected(self, ma: multiaddr.Multiaddr) -> None:
        """Keep one bootstrap peer connected: dial, then redial with jittered
        exponential backoff (min..max seconds) whenever the connection is lost."""
        pid = info_from_p2p_addr(ma).peer_id
        delay = self.config.bootstrap_backoff_min_s
        while True:
            if not self.is_connected(pid):
                try:
                    await self.connect(ma)
                    logger.info("bootstrap peer %s connected", pid)
                    delay = self.config.bootstrap_backoff_min_s
                except DialError as exc:
                    logger.info("bootstrap peer %s: %s; retrying in %.1f s", pid, exc, delay)
                    await trio.sleep(delay * (0.5 + self._rng.random() / 2))
                    delay = min(delay * 2, self.config.bootstrap_backoff_max_s)
                    continue
            await trio.sleep(self.config.bootstrap_check_interval_s)


async def _no_auto_connect() -> None:
    return None
