"""The node's network side: the libp2p host and Bitswap, as one component.

``Network`` is the node's ``Exchange`` (``daemon/parts.py``: reads content the
store does not hold, ``get_block``, ``ensure_dag``), serves the ``peers_*`` RPC
methods, and exports the host/Bitswap metric families. It is handed the
config, the store and the writer, never the node. Blocks fetched for a pin are registered with
the pin's GC protection as they are stored, so GC cannot delete them between
their arrival and the pin's commit.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import trio
from libp2p.crypto.keys import KeyPair
from libp2p.peer.id import ID
from pinfold.blockstore.cid import CID, cid_key
from pinfold.blockstore.errors import BlockNotFound
from pinfold.blockstore.lmdbstore import LmdbBlockStore
from pinfold.blockstore.pins import Protection
from pinfold.blockstore.writer import BatchWriter
from pinfold.config import Config

from pinfold.daemon.errors import NetworkError, param_str
from pinfold.daemon.p2p.bitswap import (
    Bitswap,
    ClientConfig,
    ExchangeConfig,
    FetchStats,
    ServerConfig,
)
from pinfold.daemon.p2p.host import Host, HostConfig, HostError
from pinfold.daemon.metrics import counter, counter_by, gauge, gauge_by, histogram

log = logging.getLogger("pinfold.network")


class Network:
    """Host + Bitswap for one node. Start with ``await nursery.start(network.run)``."""

    def __init__(self, config: Config, store: LmdbBlockStore, writer: BatchWriter,
                 key_pair: KeyPair, *, config_path: str = "config.toml") -> None:
        cfg = config
        self.config = config
        self.store = store
        self.writer = writer
        self.config_path = config_path
        self.host = Host(key_pair, HostConfig(
            listen=tuple(cfg.node.listen),
            bootstrap=tuple(cfg.node.bootstrap),
            announce=tuple(cfg.node.announce),
            max_connections=cfg.node.max_connections,
            bootstrap_backoff_max_s=cfg.node.reconnect_max_backoff_s,
            fast_channel=cfg.node.fast_channel,
        ))
        self._protections: set[Protection] = set()
        self.bitswap = Bitswap(
            self.host, store, self._put_many,
            config=ExchangeConfig(
                server=ServerConfig(max_wantlist_entries=cfg.bitswap.max_wantlist),
                client=ClientConfig(adaptive_holders=not cfg.bitswap.spread_holders),
                default_timeout_s=cfg.bitswap.fetch_timeout_s,
            ),
        )

    async def _put_many(self, blocks: list[tuple[CID, bytes | memoryview]]) -> None:
        for protection in self._protections:
            for cid, _ in blocks:
                protection.add(cid_key(cid))
        await self.writer.put_many(blocks)

    def check_listen_ports(self) -> None:
        """Refuse to start on a TCP port another process already listens on.

        py-libp2p binds with SO_REUSEPORT, so a second daemon on the same port
        would start silently and the kernel would split incoming connections
        between the two. A plain bind (no SO_REUSEPORT) fails in that case.

        Raises:
            NetworkError: a fixed listen port is in use (names the key and address).
        """
        import socket

        for addr in self.config.node.listen:
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
                                   f"set node.listen in {self.config_path})") from exc
            finally:
                probe.close()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.check_listen_ports()
        async with trio.open_nursery() as nursery:
            try:
                await nursery.start(self.host.run)
            except HostError as exc:
                raise NetworkError(f"node.listen: {exc} (set node.listen in "
                                   f"{self.config_path})") from exc
            await nursery.start(self.bitswap.run)
            task_status.started()

    def addresses(self) -> list[str]:
        """Full ``/p2p/`` multiaddrs peers should dial: ``node.announce`` if set, else
        the listen addresses with an unspecified address (0.0.0.0, ::) expanded into
        one address per local interface, as ``ipfs id`` shows them."""
        import socket

        import psutil

        if self.config.node.announce:
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

    async def get_block(self, cid: CID, *, timeout_s: float | None = None,
                        wait_for_peers: bool = False) -> bytes:
        """Fetch one block from connected peers (verified, stored); ``timeout_s``:
        seconds without progress before it fails (default ``bitswap.fetch_timeout_s``).
        With ``wait_for_peers`` (a transfer that peers were already serving), no
        connected peer means waiting for one to (re)connect, as ``ensure_dag``
        does once under way.

        Raises:
            BlockNotFound: no peer is connected and not ``wait_for_peers`` (fails
                at once rather than wait).
            FetchTimeout: no peer delivered it in time.
        """
        if not wait_for_peers:
            self._require_peers(cid)
        return await self.bitswap.get_block(cid, timeout_s=timeout_s)

    async def ensure_dag(self, root: CID, *, protection: Protection | None = None,
                         peers: Iterable[ID] | None = None,
                         on_visit: Callable[[CID], None] | None = None,
                         on_fetched: Callable[[CID, int], None] | None = None,
                         timeout_s: float | None = None) -> FetchStats:
        """Fetch every missing block of ``root``'s DAG; returns Bitswap's ``FetchStats``.

        With ``protection`` (a store ``Protection``), every block stored by the
        fetch is added to it as it arrives. ``on_visit`` is called once with each
        block of the DAG, local or fetched (Bitswap's ``fetch_dag``), ``on_fetched``
        with ``(cid, size)`` of each fetched one before its visit (``on_block``);
        ``timeout_s`` as ``get_block``.
        """
        if not self.store.has(root) and not self.host.connected_peers():
            self._require_peers(root)
        if protection is not None:
            self._protections.add(protection)
        try:
            return await self.bitswap.fetch_dag(root, peers=peers, on_visit=on_visit,
                                                on_block=on_fetched, timeout_s=timeout_s)
        finally:
            self._protections.discard(protection)

    def fetch_blocks(self, cids: list[CID], *, timeout_s: float | None = None
                     ) -> AsyncIterator[Any]:
        """Want ``cids`` from peers; yields as they arrive (Bitswap's ``fetch_blocks``)."""
        return self.bitswap.fetch_blocks(cids, timeout_s=timeout_s)

    def received(self) -> tuple[int, int, dict[str, int]]:
        """Wanted blocks received so far: ``(blocks, bytes, blocks by peer ID)``;
        counters for the progress of transfers (``daemon/transfer.py``)."""
        bs = self.bitswap.statistics()
        return bs.blocks_received, bs.bytes_received, self.bitswap.received_by_peer()

    def sent_by_peer(self) -> dict[str, int]:
        """Block bytes sent to each peer so far (peer ID text -> bytes), from the
        ledgers; ``pin add --wait`` shows what this node sent each holder."""
        return {str(s.peer): s.bytes_sent for s in self.bitswap.ledgers()}

    def blocks_added(self, cids: list[CID]) -> None:
        """Blocks were stored outside Bitswap (add, import): serve peers waiting for them."""
        self.bitswap.blocks_added(cids)

    def refused_wants(self) -> int:
        """Wants dropped from peers not allowed to fetch (``bitswap.serve``)."""
        return self.bitswap.statistics().refused_wants

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
        addr = param_str(call.params, "multiaddr")
        peer = await self.host.connect(addr)
        return {"peer_id": peer.to_base58(), "multiaddr": addr}

    async def peers_disconnect(self, call: Any) -> dict[str, Any]:
        peer = param_str(call.params, "peer_id")
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
        yield counter("pinfold_bitswap_messages_received", "Bitswap messages received",
                      bs.messages_received)
        yield counter_by("pinfold_bitswap_inbound_streams", "Bitswap streams peers opened "
                         "to us: those with one message, ended at the first read (Kubo's "
                         "and Helia's replies), and the others", "kind",
                         {"one_message": bs.one_message_streams,
                          "long": bs.inbound_streams - bs.one_message_streams})
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
        yield counter_by("pinfold_bitswap_wantlist_rebroadcasts", "Messages sending open wants "
                         "again: on the rebroadcast timer, or to a newly connected peer",
                         "reason", dict(bs.wantlist_rebroadcasts))
        yield counter("pinfold_bitswap_late_reasks", "Want-blocks sent to another peer because "
                      "the first was (or would be) late", bs.late_reasks)
        yield counter("pinfold_bitswap_wants_moved", "Want-blocks moved off a peer that "
                      "disconnected, went silent or answered DONT_HAVE", bs.wants_moved)
        yield counter("pinfold_bitswap_messages_received", "Bitswap messages received and "
                      "decoded", bs.messages_received)
        decisions = {"admitted": 0, "kept": 0, "dropped": 0, "trials": 0, "demoted": 0,
                     "held": 0}
        decisions.update(bs.holder_decisions)
        yield counter_by("pinfold_bitswap_holder_decisions", "Holder admission: holders "
                         "probed (admitted), kept, dropped, members tried out, silent "
                         "ones demoted, probes held back for want of headroom",
                         "decision", decisions)
        buckets = [(b, c) for b, c in bs.fetch_latency_buckets]
        buckets.append((float("inf"), bs.fetch_latency_count))
        yield histogram("pinfold_bitswap_fetch_duration_seconds",
                        "Time from wanting a block to receiving it", buckets,
                        bs.fetch_latency_sum_s)
