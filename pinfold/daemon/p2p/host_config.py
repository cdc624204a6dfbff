"""What the libp2p host is configured with and reports: settings, records, errors.

``HostConfig`` (validated on construction), the ``PeerEvent``/``ConnectedPeer``/
``HostStats`` records, the host's errors, and the multiaddr and peer-ID parsing
they share. Pure data and parsing; imports multiaddr and libp2p's peer ID only.
"""

from __future__ import annotations

from dataclasses import dataclass

import multiaddr
from libp2p.peer.id import ID
from multiformats import multihash

__all__ = [
    "ConnectedPeer",
    "DialError",
    "HostConfig",
    "HostError",
    "HostStats",
    "PeerEvent",
    "as_peer_id",
    "parse_multiaddr",
    "root_causes",
    "strip_p2p",
]


class HostError(Exception):
    """Base of the errors the host raises."""

    code = "host_error"


class DialError(HostError):
    """A dial failed: the address is bad, nothing listens there, the handshake
    failed (e.g. the peer offers no Noise/Yamux), or the dial timed out."""

    code = "dial_error"


def parse_multiaddr(value: str | multiaddr.Multiaddr, *, need_peer_id: bool = False) -> multiaddr.Multiaddr:
    """Parse a multiaddr, naming the problem on failure.

    Args:
        value: e.g. ``/ip4/127.0.0.1/tcp/4101/p2p/12D3KooW...``.
        need_peer_id: require a trailing ``/p2p/<peer ID>``.

    Raises:
        HostError: not a multiaddr, or no ``/p2p/`` part when one is needed.
    """
    if isinstance(value, multiaddr.Multiaddr):
        ma = value
    else:
        try:
            ma = multiaddr.Multiaddr(value.strip())
        except Exception as exc:
            raise HostError(f"invalid multiaddr {value!r}: {exc}") from exc
    if need_peer_id and ma.get_peer_id() is None:
        raise HostError(f"multiaddr {ma} has no /p2p/<peer ID> part; the peer ID is needed to dial")
    return ma


def strip_p2p(addr: str) -> multiaddr.Multiaddr:
    """``addr`` without its ``/p2p/<peer ID>`` part (py-libp2p appends its own)."""
    return multiaddr.Multiaddr(addr.split("/p2p/", 1)[0])


def root_causes(exc: BaseException) -> str:
    """The innermost reasons py-libp2p chains under a dial error, joined with "; ".

    Its own message says only "no addresses established a successful connection
    (with exceptions)"; the reason a user can act on (connection refused, no
    route, a handshake failure) is at the end of each ``__cause__`` chain, under
    its exception groups and ``errors`` lists. Only messages, no class names.
    """
    found: list[str] = []
    todo: list[BaseException] = [exc]
    while todo and len(found) < 4:
        e = todo.pop(0)
        inner = getattr(e, "errors", None) or getattr(e, "exceptions", None)
        if isinstance(inner, (list, tuple)) and inner:
            todo.extend(x for x in inner if isinstance(x, BaseException))
            continue
        if e.__cause__ is not None:
            todo.append(e.__cause__)
            continue
        text = e.strerror if isinstance(e, OSError) and e.strerror else str(e).strip()
        if text and text not in found:
            found.append(text)
    return "; ".join(found) or str(exc) or "the connection failed"


@dataclass(frozen=True, slots=True, kw_only=True)
class HostConfig:
    """Settings of the libp2p host.

    Attributes:
        listen: TCP multiaddrs to listen on (``/ip4/<addr>/tcp/<port>``; port 0 picks one).
        bootstrap: full ``/p2p/`` multiaddrs dialled at start and kept connected.
        announce: multiaddrs peers should dial instead of the listen addresses (as
            Kubo's ``Addresses.Announce``: behind NAT, a port forward or a proxy);
            empty = announce the listen addresses.
        max_connections: total connection limit (inbound + outbound); further
            dials fail and inbound connections are refused.
        dial_timeout_s: seconds a dial (TCP + Noise + Yamux) may take.
        bootstrap_backoff_min_s: first retry delay after a bootstrap peer is lost, seconds.
        bootstrap_backoff_max_s: cap of the doubling retry delay, seconds.
        bootstrap_check_interval_s: how often connected bootstrap peers are checked, seconds.
        max_inbound_streams_per_peer: streams one peer may have open to us at once;
            further ones are reset at once. Without it a single peer could hold all
            of py-libp2p's global stream slots (10000) and no other peer could open a
            stream (found by the reliability campaign).
        fast_channel: Noise and Yamux from ``pinfold.daemon.p2p.transport`` (buffered
            receive path, frames that fit one Noise message; same wire format);
            False = py-libp2p's stock classes.
    """

    listen: tuple[str, ...] = ("/ip4/0.0.0.0/tcp/4101",)  # DESIGN.md [node] listen default
    bootstrap: tuple[str, ...] = ()
    announce: tuple[str, ...] = ()
    max_connections: int = 256  # ample for a cluster; bounds memory and handshakes
    dial_timeout_s: float = 10.0  # py-libp2p's own dial default
    bootstrap_backoff_min_s: float = 1.0
    bootstrap_backoff_max_s: float = 60.0  # at most a minute between tries to a lost peer
    bootstrap_check_interval_s: float = 1.0
    max_inbound_streams_per_peer: int = 128  # go-libp2p's per-peer default is 256 (incl. outbound)
    close_timeout_s: float = 5.0  # a clean close takes ~0.2 s (two 0.1 s sleeps in py-libp2p)
    fast_channel: bool = True

    def __post_init__(self) -> None:
        if not self.listen:
            raise ValueError("host.listen: at least one listen multiaddr is needed")
        for a in self.listen:
            ma = parse_multiaddr(a)
            names = [p.name for p in ma.protocols()]
            if "tcp" not in names or names[0] not in ("ip4", "ip6"):
                raise ValueError(f"host.listen: {a!r} is not a TCP multiaddr (/ip4/.../tcp/PORT)")
        for a in self.bootstrap:
            parse_multiaddr(a, need_peer_id=True)
        for a in self.announce:
            parse_multiaddr(a)
        if self.max_connections < 1:
            raise ValueError(f"host.max_connections: must be >= 1, got {self.max_connections}")
        if self.dial_timeout_s <= 0:
            raise ValueError(f"host.dial_timeout_s: must be > 0, got {self.dial_timeout_s}")
        if self.close_timeout_s <= 0:
            raise ValueError(f"host.close_timeout_s: must be > 0, got {self.close_timeout_s}")
        if self.max_inbound_streams_per_peer < 1:
            raise ValueError("host.max_inbound_streams_per_peer: must be >= 1, "
                             f"got {self.max_inbound_streams_per_peer}")
        if not 0 < self.bootstrap_backoff_min_s <= self.bootstrap_backoff_max_s:
            raise ValueError("host.bootstrap_backoff_min_s must be > 0 and <= bootstrap_backoff_max_s")


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerEvent:
    """A peer connected (``connected=True``) or lost its last connection."""

    peer_id: ID
    connected: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectedPeer:
    """One connected peer for ``peers ls``.

    Attributes:
        peer_id: the peer's ID.
        addrs: the remote multiaddrs of its connections (text).
        direction: "inbound" or "outbound" (of its first connection).
    """

    peer_id: ID
    addrs: tuple[str, ...]
    direction: str


@dataclass(frozen=True, slots=True, kw_only=True)
class HostStats:
    """Counters for metrics (``pinfold_host_*``).

    Attributes:
        peers: peers connected now.
        connections_opened: connections established since start.
        connections_closed: connections closed since start.
        dials: dials attempted via ``connect``.
        dial_failures: of those, how many failed.
        bootstrap_connected: bootstrap peers connected now.
        bootstrap_total: bootstrap peers configured.
        streams_refused: inbound streams reset for ``max_inbound_streams_per_peer``.
    """

    peers: int
    connections_opened: int
    connections_closed: int
    dials: int
    dial_failures: int
    bootstrap_connected: int
    bootstrap_total: int
    streams_refused: int = 0


def as_peer_id(value: ID | str) -> ID:
    if isinstance(value, ID):
        return value
    try:
        pid = ID.from_base58(value.strip())
        multihash.unwrap(pid.to_bytes())  # a peer ID is a multihash of the public key
    except Exception as exc:
        raise HostError(f"invalid peer ID {value!r}: {exc}") from exc
    return pid
