"""The typed configuration: one frozen dataclass per component (STYLE.md 6).

Every field has a default, so a config file holds only what it changes. Each
field carries its documentation in ``metadata["doc"]``; ``pinfold init`` writes
the defaults out as a commented TOML file from these. Durations are seconds
(``_s`` suffix), sizes are bytes (``_bytes`` suffix).

Validation happens in ``__post_init__`` of each section and in
``pinfold.config.loader``; errors are ``ConfigError`` naming the dotted key.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, fields
from typing import Any

from pinfold.config.errors import ConfigError

GiB = 1024**3
MiB = 1024**2


def _f(default: Any, doc: str) -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda d=default: list(d), metadata={"doc": doc})
    return field(default=default, metadata={"doc": doc})


def _check(section: str, key: str, ok: bool, problem: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{section}.{key}", f"{problem}, got {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeConfig:
    """The libp2p host."""

    listen: list[str] = _f(
        ["/ip4/0.0.0.0/tcp/4101"], "libp2p listen multiaddrs (TCP; Noise + Yamux)"
    )
    bootstrap: list[str] = _f(
        [], "multiaddrs with /p2p/ dialled at start and kept connected (reconnect with backoff)"
    )
    announce: list[str] = _f(
        [], "multiaddrs peers are told to dial instead of the listen addresses (NAT, port "
        "forward, proxy), as Kubo's Addresses.Announce; [] announces the listen addresses"
    )
    max_connections: int = _f(256, "connections accepted at most; more are refused")
    reconnect_max_backoff_s: float = _f(60.0, "longest wait between reconnection attempts")
    fast_channel: bool = _f(
        True, "pinfold's Noise + Yamux receive path (large buffered reads, frames that fit one "
        "Noise message; same wire format); false = py-libp2p's stock channel"
    )

    def __post_init__(self) -> None:
        for addr in self.listen:
            _check("node", "listen", addr.startswith("/"),
                   "must be a multiaddr starting with '/'", addr)
        for addr in self.bootstrap:
            _check("node", "bootstrap", addr.startswith("/") and "/p2p/" in addr,
                   "must be a multiaddr with /p2p/<peer ID>", addr)
        for addr in self.announce:
            _check("node", "announce", addr.startswith("/") and "/tcp/" in addr,
                   "must be a TCP multiaddr starting with '/'", addr)
        _check("node", "max_connections", self.max_connections >= 1, "must be >= 1",
               self.max_connections)
        _check("node", "reconnect_max_backoff_s", self.reconnect_max_backoff_s >= 1.0,
               "must be >= 1 (the first retry waits 1 s)", self.reconnect_max_backoff_s)


@dataclass(frozen=True, slots=True, kw_only=True)
class RpcConfig:
    """The local control socket."""

    socket: str = _f("", "Unix socket path; \"\" means <home>/rpc.sock")
    max_connections: int = _f(256, "concurrent client connections at most")
    allowed_group: str = _f(
        "", "group (name or gid) given the socket (mode 0660) whose members may use the daemon;"
        " \"\" = the daemon's own group. Root and the daemon's user always may"
    )

    def __post_init__(self) -> None:
        _check("rpc", "max_connections", self.max_connections >= 1, "must be >= 1",
               self.max_connections)


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricsConfig:
    """The Prometheus endpoint."""

    listen: str = _f("127.0.0.1:9401", "host:port serving /metrics; \"\" turns the endpoint off")

    def __post_init__(self) -> None:
        if self.listen:
            host, sep, port = self.listen.rpartition(":")
            _check("metrics", "listen", bool(sep and host and port.isdigit()
                                               and 0 <= int(port) < 65536),
                   "must be HOST:PORT or \"\"", self.listen)


def split_host_port(text: str) -> tuple[str, int] | None:
    """``("127.0.0.1", 8080)`` from ``"127.0.0.1:8080"`` or ``"[::1]:8080"``; ``None`` if malformed."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not (sep and host and port.isdigit() and 0 <= int(port) < 65536):
        return None
    return host, int(port)


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback IP addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayConfig:
    """The read-only HTTP gateway (ipfs/specs path and trustless gateways)."""

    listen: str = _f("127.0.0.1:8080", "host:port of the HTTP gateway (Kubo's default); "
                     "\"\" turns it off; port 0 picks a free port (see `pinfold id`)")
    allow_public: bool = _f(
        False, "allow a listen address that is not loopback (the gateway then serves "
        "anyone who can reach it, and fetches from peers for them)")
    timeout_s: float = _f(60.0, "a block not retrieved (locally or from peers) by then ends "
                          "the request with 504 Gateway Timeout")
    max_requests: int = _f(64, "requests served at once; more get 503 with Retry-After")
    max_header_bytes: int = _f(16384, "request line + headers at most (h11's default); "
                               "larger gets 431")
    idle_timeout_s: float = _f(60.0, "a client that sends no request, or reads none of the "
                               "response, for this long is disconnected")

    def __post_init__(self) -> None:
        if self.listen:
            hp = split_host_port(self.listen)
            _check("gateway", "listen", hp is not None, "must be HOST:PORT or \"\"",
                   self.listen)
            assert hp is not None
            _check("gateway", "listen", self.allow_public or is_loopback_host(hp[0]),
                   "is not a loopback address; set gateway.allow_public = true to serve "
                   "the network", self.listen)
        _check("gateway", "timeout_s", self.timeout_s > 0, "must be > 0", self.timeout_s)
        _check("gateway", "max_requests", self.max_requests >= 1, "must be >= 1",
               self.max_requests)
        _check("gateway", "max_header_bytes", 1024 <= self.max_header_bytes <= 1024 * 1024,
               "must be in 1024..1048576", self.max_header_bytes)
        _check("gateway", "idle_timeout_s", self.idle_timeout_s > 0, "must be > 0",
               self.idle_timeout_s)


@dataclass(frozen=True, slots=True, kw_only=True)
class BlockstoreConfig:
    """The LMDB blockstore."""

    sync: bool = _f(True, "fsync on every commit; false risks the last commits on power loss")
    max_size_bytes: int = _f(
        1024 * GiB, "ceiling the LMDB map may grow to; writes past it fail with 'store full'"
    )
    gc_interval_s: float = _f(0.0, "run GC every this many seconds; 0 = only on `repo gc`")

    def __post_init__(self) -> None:
        _check("blockstore", "max_size_bytes", self.max_size_bytes >= 16 * MiB,
               "must be >= 16 MiB", self.max_size_bytes)
        _check("blockstore", "gc_interval_s", self.gc_interval_s >= 0, "must be >= 0",
               self.gc_interval_s)


@dataclass(frozen=True, slots=True, kw_only=True)
class ImportConfig:
    """UnixFS import defaults (Kubo's unixfs-v1-2025 profile, Helia's default)."""

    chunk_size_bytes: int = _f(1 * MiB, "fixed chunk size")
    cid_version: int = _f(1, "CID version of new DAGs (0 implies dag-pb leaves)")
    raw_leaves: bool = _f(True, "store file chunks as raw blocks")
    max_links: int = _f(1024, "links per interior node of the balanced layout")

    def __post_init__(self) -> None:
        _check("import", "chunk_size_bytes", 1 <= self.chunk_size_bytes <= 2 * MiB - 256,
               "must be between 1 and 2 MiB - 256", self.chunk_size_bytes)
        _check("import", "cid_version", self.cid_version in (0, 1), "must be 0 or 1",
               self.cid_version)
        _check("import", "max_links", 2 <= self.max_links <= 8192, "must be in 2..8192",
               self.max_links)
        _check("import", "raw_leaves", not (self.cid_version == 0 and self.raw_leaves),
               "must be false when cid_version is 0", self.raw_leaves)


@dataclass(frozen=True, slots=True, kw_only=True)
class BitswapConfig:
    """Block exchange (Bitswap 1.2.0)."""

    fetch_timeout_s: float = _f(30.0, "a wanted block not received by then fails the fetch")
    max_wantlist: int = _f(16384, "entries a peer may keep in its wantlist with us")
    serve: str = _f("all", "who may fetch blocks: \"all\" peers, or only \"cluster\" members"
                    " (cluster.trusted_peers if set, else peers known to the cluster);"
                    " needs cluster.name")
    spread_holders: bool = _f(False, "a fetch asks every holder for blocks at once, rather"
                              " than adding holders only while they raise its rate")

    def __post_init__(self) -> None:
        _check("bitswap", "fetch_timeout_s", self.fetch_timeout_s > 0, "must be > 0",
               self.fetch_timeout_s)
        _check("bitswap", "max_wantlist", self.max_wantlist >= 1, "must be >= 1",
               self.max_wantlist)
        _check("bitswap", "serve", self.serve in ("all", "cluster"),
               "must be \"all\" or \"cluster\"", self.serve)


_BASE58 = frozenset("123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz")


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterConfig:
    """Cluster membership."""

    name: str = _f("", "cluster name; \"\" = a standalone node")
    trusted_peers: list[str] = _f([], "peer IDs allowed to change the shared pinset")

    def __post_init__(self) -> None:
        _check("cluster", "name", len(self.name) <= 64 and "/" not in self.name,
               "must be at most 64 characters without '/'", self.name)
        for peer in self.trusted_peers:
            # Base58 peer IDs: Ed25519 keys (12D3KooW..., 52 chars) or sha2-256 (Qm..., 46).
            _check("cluster", "trusted_peers",
                   peer[:2] in ("12", "Qm") and 40 <= len(peer) <= 60 and set(peer) <= _BASE58,
                   "must be a list of peer IDs (12D3KooW... or Qm...)", peer)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicationConfig:
    """The replication manager (DESIGN.md, Replication)."""

    rmin: int = _f(2, "repair starts when healthy holders drop below this")
    rmax: int = _f(3, "holders allocated at most")
    heartbeat_interval_s: float = _f(5.0, "how often each peer publishes a heartbeat")
    peer_ttl_s: float = _f(0.0, "a peer is suspect after this silence; 0 = 2 x heartbeat")
    repair_grace_s: float = _f(60.0, "a suspect peer is dead (and repaired) after this more")
    p_prior: float = _f(0.9, "prior probability that a peer is online")
    concurrent_pins: int = _f(4, "pin fetches at once")
    tombstone_horizon_s: float = _f(7 * 86400.0, "unpins are forgotten after this")
    replan_interval_s: float = _f(30.0, "full re-plan at least this often")
    sync_interval_s: float = _f(30.0, "anti-entropy with a random cluster peer this often")
    retry_min_s: float = _f(5.0, "first wait before a failed pin is retried (doubles each time)")
    retry_max_s: float = _f(600.0, "longest wait between retries of a failed pin")
    capacity_bytes: int = _f(0, "storage offered to the cluster; 0 = blockstore.max_size_bytes")

    def __post_init__(self) -> None:
        _check("replication", "rmin", self.rmin >= 1, "must be >= 1", self.rmin)
        _check("replication", "rmax", self.rmax >= self.rmin, "must be >= rmin", self.rmax)
        _check("replication", "heartbeat_interval_s", self.heartbeat_interval_s > 0,
               "must be > 0", self.heartbeat_interval_s)
        _check("replication", "peer_ttl_s", self.peer_ttl_s >= 0, "must be >= 0",
               self.peer_ttl_s)
        _check("replication", "repair_grace_s", self.repair_grace_s >= 0, "must be >= 0",
               self.repair_grace_s)
        _check("replication", "p_prior", 0.0 < self.p_prior < 1.0, "must be in (0, 1)",
               self.p_prior)
        _check("replication", "concurrent_pins", self.concurrent_pins >= 1, "must be >= 1",
               self.concurrent_pins)
        _check("replication", "tombstone_horizon_s", self.tombstone_horizon_s > 0,
               "must be > 0", self.tombstone_horizon_s)
        _check("replication", "replan_interval_s", self.replan_interval_s > 0, "must be > 0",
               self.replan_interval_s)
        _check("replication", "sync_interval_s", self.sync_interval_s > 0, "must be > 0",
               self.sync_interval_s)
        _check("replication", "retry_min_s", self.retry_min_s > 0, "must be > 0",
               self.retry_min_s)
        _check("replication", "retry_max_s", self.retry_max_s >= self.retry_min_s,
               "must be >= retry_min_s", self.retry_max_s)
        _check("replication", "capacity_bytes", self.capacity_bytes >= 0, "must be >= 0",
               self.capacity_bytes)

    @property
    def effective_peer_ttl_s(self) -> float:
        """The suspect threshold in seconds (2 x heartbeat when unset)."""
        return self.peer_ttl_s or 2.0 * self.heartbeat_interval_s


@dataclass(frozen=True, slots=True, kw_only=True)
class LogConfig:
    """Logging."""

    level: str = _f("info", "debug, info, warning or error")

    def __post_init__(self) -> None:
        _check("log", "level", self.level in ("debug", "info", "warning", "error"),
               "must be one of debug, info, warning, error", self.level)


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """The whole configuration: one attribute per TOML section."""

    node: NodeConfig = field(default_factory=NodeConfig)
    rpc: RpcConfig = field(default_factory=RpcConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    blockstore: BlockstoreConfig = field(default_factory=BlockstoreConfig)
    import_: ImportConfig = field(default_factory=ImportConfig, metadata={"toml": "import"})
    bitswap: BitswapConfig = field(default_factory=BitswapConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    replication: ReplicationConfig = field(default_factory=ReplicationConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def __post_init__(self) -> None:
        # Checks across sections. A standalone node has no members to serve: serve =
        # "cluster" there would refuse every peer, almost surely a mistake.
        _check("bitswap", "serve", self.bitswap.serve != "cluster" or bool(self.cluster.name),
               "\"cluster\" needs a cluster: set cluster.name (this node is standalone)",
               self.bitswap.serve)


def section_name(f: Any) -> str:
    """The TOML table name of a ``Config`` field."""
    return f.metadata.get("toml", f.name)


SECTIONS = {section_name(f): f for f in fields(Config)}
