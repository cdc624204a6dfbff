"""The node's network side: the libp2p host and Bitswap, as one component.

``Network`` implements what ``Node`` needs to read content it does not hold
(``get_block``, ``ensure_dag``), the ``peers_*`` RPC methods, and the
host/Bitswap metric families. Blocks fetched for a pin are registered with
the pin's GC protection as they are stored, so GC cannot delete them between
their arrival and the pin's commit.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import trio
from libp2p.peer.id import ID
from pinfold.blockstore.cid import CID, cid_key
from pinfold.blockstore.errors import BlockNotFound

from pinfold.daemon.p2p.bitswap import Bitswap, ExchangeConfig, ClientConfig, ServerConfig
from pinfold.daemon.p2p.host import Host, HostConfig, HostError
from pinfold.daemon.metrics import counter, counter_by, gauge, gauge_by, histogram

if TYPE_CHECKING:
    from pinfold.daemon.node import Node

log = logging.getLogger("pinfold.network")


class NetworkError(Exception):
    """The network side cannot start (e.g. its listen port is taken)."""

    code = "network_error"


class Network:
    """Host + Bitswap for one node. Start with ``await nursery.start(network.run)``."""

    def __init__(self, node: Node, key_pair: Any) -> None:
        cfg = node.config
        self.node = node
        self.host = Host(key_pair, HostConfig(
            listen=tuple(cfg.node.listen),
            bootstrap=tuple(cfg.node.bootstrap),
            announce=tuple(cfg.node.announce),
            max_connections=cfg.node.max_connections,
            bootstrap_backoff_max_s=cfg.node.reconnect_max_backoff_s,
            fast_channel=cfg.node.fast_channel,
        ))
        self._protections: set[Any] = set()
        self.bitswap = Bitswap(
            self.host, node.store, self._put_many,
            config=ExchangeConfig(
                server=ServerConfig(max_wantlist_entries=cfg.bitswap.max_wantlist),
                client=ClientConfig(),
                default_timeout_s=cfg.bitswap.fetch_timeout_s,
            ),
        )

    async def _put_many(self, blocks: list[tuple[CID, bytes]]) -> None:
        for protection in self._protections:
            for cid, _ in blocks:
                protection.add(cid_key(cid))
        await self.node.writer.put_many(blocks)

    def check_listen_ports(self) -> None:
        """Refuse to start on a TCP port another process already listens on.

        py-libp2p binds with SO_REUSEPORT, so a second daemon on the same port
        would start silently and the kernel would split incoming connections
        between the two. A plain bind (no SO_REUSEPORT) fails in that case.

        Raises:
            NetworkError: a fixed listen port is in use (names the key and address).
        """
        import socket

        for addr in self.node.config.node.listen:
            parts = addr.strip("/").split("/")
            if len(parts) < 4 or parts[0] not in ("ip4", "ip6") or parts[2] != "tcp":
                continue
            host, port = parts[1], int(parts[3])
            if port == 0:
                continue
            family = socket.AF_INET if parts[0] == "ip4" else socket.AF_INET6
            probe = socket.socket(family, socket.SOCK_STREAM)
            # SO_REUSEADDR (not SO_REUSEPORT): TIME_WAIT leftovers of our own last
            # run do not block a restart, a live listener still does.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    hint = "another pinfold daemon or program listens there"
                elif exc.errno == errno.EADDRNOTAVAIL:
                    hint = "no network interface of this machine has that address"
                else:
                    hint = "choose another address"
                raise NetworkError(f"node.listen: {addr}: {exc.strerror or exc} ({hint}; "
                                   f"set node.listen in {self._config_path()})") from exc
            finally:
                probe.close()

    def _config_path(self) -> str:
        home = getattr(self.node, "home", None)
        return str(home.config_path) if home is not None else "config.toml"

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.check_listen_ports()
        async with trio.open_nursery() as nursery:
            try:
                await nursery.start(self.host.run)
            except HostError as exc:
                raise NetworkError(f"node.listen: {exc} (set node.listen in "
                                   f"{self._config_path()})") from exc
            await nursery.start(self.bitswap.run)
            task_status.started()

    def addresses(self) -> list[str]:
        """Full ``/p2p/`` multiaddrs peers should dial: ``node.announce`` if set, else
        the listen addresses with an unspecified address (0.0.0.0, ::) expanded into
        one address per local interface, as ``ipfs id`` shows them."""
        import socket

        import psutil

        if self.node.config.node.announce:
            return self.host.announced()
        out: list[str] = []
        for addr in self.host.addrs():
            for wildcard, family in (("/ip4/0.0.0.0/", socket.AF_INET), ("/ip6/::/", socket.AF_INET6)):
                if addr.startswith(wildcard):
                    proto = wildcard.split("/")[1]
                    for nic_addrs in psutil.net_if_addrs().values():
                        for a in nic_addrs:
                            if a.family == family and not a.address.startswith("fe80"):
                                out.append(f"/{proto}/{a.address}/" + addr[len(wildcard):])
                    break
            else:
                out.append(addr)
        return sorted(dict.fromkeys(out), key=lambda a: ("/127." not in a and "/::1/" not in a, a))

    # ------------------------------------------------------------------ fetching

    def _require_peers(self, cid: CID) -> None:
        if not self.host.connected_peers():
            raise BlockNotFound(cid, "not in the local store and no peer is connected")

    async def get_block(self, cid: CID) -> bytes:
        """Fetch one block from connected peers (verified, stored).

        Raises:
            BlockNotFound: no peer is connected (fails at once rather than wait).
            FetchTimeout: no peer delivered it in time.
        """
        self._require_peers(cid)
        return await self.bitswap.get_block(cid)

    async def ensure_dag(self, root: CID, *, protection: Any = None,
                         peers: Iterable[ID] | None = None) -> Any:
        """Fetch every missing block of ``root``'s DAG; returns Bitswap's ``FetchStats``.

        With ``protection`` (a store ``Protection``), every block stored by the
        fetch is added to it as it arrives.
        """
        if not self.node.store.has(root) and not self.host.connected_peers():
            self._require_peers(root)
        if protection is not None:
            self._protections.add(protection)
        try:
            return await self.bitswap.fetch_dag(root, peers=peers)
        finally:
            self._protections.discard(protection)

    # ------------------------------------------------------------------ RPC

    def handlers(self) -> dict[str, Callable[[Any], Any]]:
        return {"peers_ls": self.peers_ls, "peers_connect": self.peers_connect,
                "peers_disconnect": self.peers_disconnect}

    async def peers_ls(self, call: Any) -> dict[str, Any]:
        peers = self.host.peers()
        for p in peers:
            await call.send({"peer_id": p.peer_id.to_base58(), "addresses": list(p.addrs),
                             "direction": p.direction})
        return {"count": len(peers)}

    async def peers_connect(self, call: Any) -> dict[str, Any]:
        addr = call.params.get("multiaddr")
        if not isinstance(addr, str):
            from pinfold.daemon.api import InvalidArgument

            raise InvalidArgument("missing parameter 'multiaddr'")
        peer = await self.host.connect(addr)
        return {"peer_id": peer.to_base58(), "multiaddr": addr}

    async def peers_disconnect(self, call: Any) -> dict[str, Any]:
        peer = call.params.get("peer_id")
        if not isinstance(peer, str):
            from pinfold.daemon.api import InvalidArgument

            raise InvalidArgument("missing parameter 'peer_id'")
        closed = await self.host.disconnect(peer)
        return {"peer_id": peer, "disconnected": bool(closed)}

    # ------------------------------------------------------------------ metrics

    def metric_families(self) -> Iterable[Any]:
        hs = self.host.statistics()
        bs = self.bitswap.statistics()
        yield gauge("pinfold_libp2p_peers_connected", "libp2p peers connected now", hs.peers)
        yield counter("pinfold_libp2p_dial_failures", "Outbound dials that failed",
                      hs.dial_failures)
        yield counter("pinfold_bitswap_blocks_sent", "Blocks sent to peers", bs.blocks_sent)
        yield counter("pinfold_bitswap_sent_bytes", "Block bytes sent to peers", bs.bytes_sent)
        yield counter("pinfold_bitswap_blocks_received", "Wanted blocks received and stored",
                      bs.blocks_received)
        yield counter("pinfold_bitswap_received_bytes", "Block bytes received and stored",
                      bs.bytes_received)
        yield counter("pinfold_bitswap_duplicate_blocks", "Blocks received after they were "
                      "no longer wanted", bs.duplicate_blocks)
        yield gauge_by("pinfold_bitswap_wantlist_entries", "Wantlist entries: ours (local) "
                       "and all peers' held on our ledgers (peers)", "side",
                       {"local": bs.wantlist_size, "peers": bs.peer_wantlist_entries})
        reasons = {"unwanted": 0, "unsupported_hash": 0, "malformed": 0, "oversize": 0,
                   "wantlist_flood": 0, "bad_blocks": 0}
        reasons.update(bs.rejected)
        yield counter_by("pinfold_bitswap_rejected_blocks", "Blocks or messages rejected, "
                         "by reason", "reason", reasons)
        yield counter("pinfold_bitswap_peers_cut_off", "Peers disconnected for misbehaviour",
                      bs.peers_cut_off)
        yield counter("pinfold_bitswap_wantlist_resends", "Full wantlists sent again to a "
                      "peer after a stream to or from it broke", bs.wantlist_resends)
        buckets = [(b, c) for b, c in bs.fetch_latency_buckets]
        buckets.append((float("inf"), bs.fetch_latency_count))
        yield histogram("pinfold_bitswap_fetch_duration_seconds",
                        "Time from wanting a block to receiving it", buckets,
                        bs.fetch_latency_sum_s)
