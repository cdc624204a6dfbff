"""The node: composes store, writer, network (libp2p host + Bitswap), the pin
path (``pinning``), the cluster when configured, metrics and the RPC server,
and runs them in one trio nursery, in dependency order (STYLE.md 4). It is the
only module that imports the parts; each part is handed the narrow interface
it uses (``daemon/parts.py``), never the node.

``run_daemon(home)`` is ``pinfold daemon``: it refuses a second daemon on the
same home (the store's lock and the live socket), stops cleanly on SIGINT or
SIGTERM or the ``shutdown`` RPC (in-flight writes finish or roll back; nothing
committed is lost), and tells systemd when it is ready (``sd_notify``).

The store must be the one the home used, and its files are watched while
the daemon runs (``daemon/home_store.py``).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from functools import partial
from dataclasses import asdict, is_dataclass
from importlib.metadata import version as _dist_version
from typing import Any

import trio

from pinfold.blockstore.cid import CID
from pinfold.blockstore.errors import NotPinned
from pinfold.blockstore.lmdbstore import LmdbBlockStore
from pinfold.blockstore.pins import PinRecord, Protection
from pinfold.blockstore.unixfs.paths import ContentPath
from pinfold.blockstore.writer import BatchWriter
from pinfold.config import Config, ConfigError
from pinfold.replication.types import pin_key

from pinfold.daemon.api import Api
from pinfold.daemon.cluster import Cluster, ClusterPin, replication_metric_families
from pinfold.daemon.cluster_pins import NodePins
from pinfold.daemon.cluster_rpc import cluster_handlers, standalone_handlers
from pinfold.daemon.names.rpc import name_handlers
from pinfold.daemon.names.service import NameService
from pinfold.daemon.errors import InvalidArgument
from pinfold.daemon.gateway import Gateway
from pinfold.daemon.expiry import LocalExpiry
from pinfold.daemon.home import Home
from pinfold.daemon.home_store import (STORE_CHECK_INTERVAL_S, check_store_files, open_store,
                                       record_store, watch_store)
from pinfold.daemon.metrics import Metrics, counter, store_metric_families
from pinfold.daemon.network import Network
from pinfold.daemon.p2p.identity import load_identity, peer_id_of
from pinfold.daemon.parts import Handler
from pinfold.daemon.pinning import Blocks, LocalPin, Pinned, Pinner
from pinfold.daemon.resolver import ipns_content_path
from pinfold.daemon.rpc.server import RpcLimits, RpcServer, RpcServerError, resolve_group

log = logging.getLogger("pinfold.node")

try:
    VERSION = _dist_version("pinfold")
except Exception:  # running from a source tree without metadata
    VERSION = "0.0.0"


def _jsonable(value: Any) -> Any:
    if is_dataclass(value):
        value = asdict(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, CID):
        return str(value)
    return value


class Node:
    """One pinfold node. Build with ``Node(home, config)``, run with ``await nursery.start(node.run)``.

    ``allow_empty_store``: start even if the store this home used is missing
    or was replaced by an empty one (``pinfold daemon --allow-empty-store``).
    """

    def __init__(self, home: Home, config: Config, *, allow_empty_store: bool = False) -> None:
        self.home = home
        self.config = config
        self.allow_empty_store = allow_empty_store
        self.metrics = Metrics()
        self.store: LmdbBlockStore | None = None
        self.writer: BatchWriter | None = None
        self.blocks: Blocks | None = None
        self.pinner: Pinner | None = None
        self.expiry: LocalExpiry | None = None
        self.socket_path = home.socket_path(config)
        self.metrics_address: tuple[str, int] | None = None
        self.started_at = time.time()
        self._stop = trio.Event()
        self.peer_id = ""
        self.addresses: list[str] = []
        # The network side (host + Bitswap), the node's Exchange; set by ``run``.
        self.network: Network | None = None
        # The replication manager and its transport when cluster.name is set.
        self.cluster: Cluster | None = None
        # The HTTP gateway when gateway.listen is set; set by ``run``.
        self.gateway: Gateway | None = None
        self.names: NameService | None = None  # the name book (pinfold/daemon/names/)

    # ------------------------------------------------------------------ lifecycle

    def request_stop(self) -> None:
        """Ask the node to stop; ``run`` returns after a clean shutdown."""
        self._stop.set()

    def extra_handlers(self) -> dict[str, Handler]:
        """RPC methods contributed by the parts (network, cluster)."""
        assert self.store is not None and self.pinner is not None
        table = self.network.handlers() if self.network is not None else {}
        if self.cluster is not None:
            table.update(cluster_handlers(self.cluster, refused_wants=self._refused_wants))
        else:
            table.update(standalone_handlers(
                peer_id=self.peer_id, config=lambda: self.config, store=self.store,
                pinner=self.pinner, refused_wants=self._refused_wants,
                connected=self._connected_count))
        if self.names is not None:
            table.update(name_handlers(self.names, pin_status=self.pin_status, unpin=self.unpin))
        return table

    def _connected_count(self) -> int:
        """Peers connected now (0 without a network)."""
        return len(self.network.host.connected_peers()) if self.network is not None else 0

    def _refused_wants(self) -> int:
        return self.network.refused_wants() if self.network is not None else 0

    def apply_config(self, config: Config) -> None:
        """Live keys of a reload (``pinfold/daemon/service.py``): the cluster's trust and
        replication, and who may fetch (``bitswap.serve``, ``cluster.trusted_peers``):
        wants held for peers refused now are dropped."""
        self.config = config
        if self.cluster is not None:
            self.cluster.apply_config(config)
        if self.network is not None:
            self.network.bitswap.recheck_serve()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Open everything, serve until stopped, then close in reverse order."""
        keypair = load_identity(self.home.identity_path)
        self.peer_id = peer_id_of(keypair).to_base58()
        bs = self.config.blockstore
        self.store = await trio.to_thread.run_sync(partial(
            open_store, self.home, bs, allow_empty_store=self.allow_empty_store))
        try:
            store = self.store
            self.writer = writer = BatchWriter(store, max_batch_bytes=16 * 1024 * 1024)
            self.network = network = Network(self.config, store, writer, keypair,
                                             config_path=str(self.home.config_path))
            self.blocks = Blocks(store, network)
            self.pinner = Pinner(self.blocks, writer)
            self.expiry = LocalExpiry(store, self.pinner)  # pin add --expire-in, standalone
            if self.config.cluster.name:
                pins = NodePins(self.pinner, store, connected=network.host.connected_peers,
                                capacity_bytes=self._capacity_bytes)
                self.cluster = Cluster(self.config, peer_id=self.peer_id, key_pair=keypair,
                                       host=network.host, store=store, writer=writer, pins=pins)
                # bitswap.serve = "cluster" (read live by the filter): only members fetch.
                network.bitswap.set_serve_filter(self.cluster.may_fetch)
            self.names = NameService(home_root=self.home.root, identity=keypair, store=store,
                                     writer=writer, pinner=self.pinner, cluster=self.cluster,
                                     members=self.config.cluster.trusted_peers)
            self._register_metrics()
            self.metrics.add_source(self.names.metric_families)
            self.metrics.add_source(network.metric_families)
            self.metrics.add_source(lambda: replication_metric_families(
                self.cluster, self.config.replication.repair_grace_s))
            if self.config.metrics.listen:
                try:
                    self.metrics_address = self.metrics.serve(self.config.metrics.listen)
                except OSError as exc:
                    raise ConfigError("metrics.listen", f"{self.config.metrics.listen}: "
                                      f"{exc.strerror or exc}") from exc
            api = Api(self)
            server = RpcServer(self.socket_path, api.handlers(), daemon_version=VERSION,
                               group=resolve_group(self.config.rpc.allowed_group),
                               limits=RpcLimits(max_connections=self.config.rpc.max_connections),
                               on_request_done=self.metrics.rpc_done)
            async with trio.open_nursery() as nursery:
                await nursery.start(self.writer.run)
                await nursery.start(self.network.run)
                self.addresses = self.network.addresses()
                if self.cluster is not None:
                    await nursery.start(self.cluster.run)
                await nursery.start(self.names.run)
                try:
                    await nursery.start(server.run)
                except RpcServerError as exc:
                    # The socket is this daemon's other listen address: name its key.
                    raise RpcServerError(exc.code, f"rpc.socket: {exc} (set rpc.socket in "
                                         f"{self.home.config_path})") from exc
                if self.config.gateway.listen:
                    self.gateway = Gateway(self.config.gateway, self,
                                           on_request_done=self.metrics.gateway_done)
                    await nursery.start(self.gateway.run)
                if bs.gc_interval_s > 0:
                    nursery.start_soon(self._gc_loop, bs.gc_interval_s)
                nursery.start_soon(watch_store, self.home, store, STORE_CHECK_INTERVAL_S)
                await nursery.start(self.expiry.run)
                log.info("pinfold %s ready: peer %s, socket %s, metrics %s, gateway %s",
                         VERSION, self.peer_id, self.socket_path,
                         "%s:%d" % self.metrics_address if self.metrics_address else "off",
                         self.gateway.url if self.gateway else "off")
                task_status.started()
                await self._stop.wait()
                log.info("stopping")
                server.begin_stop()
                nursery.cancel_scope.cancel()
            check_store_files(self.home, store)
            record_store(self.home, store)
        finally:
            self.metrics.close()
            store, self.store = self.store, None
            if store is not None:
                store.close()

    def _capacity_bytes(self) -> int:
        """The bytes offered to the cluster (``replication.capacity_bytes`` or the store's
        ceiling), read live."""
        cfg = self.config
        return getattr(cfg.replication, "capacity_bytes", 0) or cfg.blockstore.max_size_bytes

    async def _gc_loop(self, interval_s: float) -> None:
        while True:
            await trio.sleep(interval_s)
            await self.gc()

    # ------------------------------------------------------------------ info

    def identity_info(self) -> dict[str, Any]:
        metrics = "%s:%d" % self.metrics_address if self.metrics_address else ""
        return {"peer_id": self.peer_id, "addresses": list(self.addresses), "version": VERSION,
                "metrics": metrics, "socket": str(self.socket_path),
                "gateway": self.gateway.url if self.gateway else ""}

    def _register_metrics(self) -> None:
        store = self.store
        writer = self.writer
        assert store is not None and writer is not None
        self.metrics.add_source(lambda: store_metric_families(store, writer))

        def serve_metrics():
            yield counter("pinfold_bitswap_refused_wants", "Wants from peers not allowed to "
                          "fetch (bitswap.serve = \"cluster\" and not a cluster member), "
                          "dropped unanswered", self._refused_wants())

        self.metrics.add_source(serve_metrics)

    # ------------------------------------------------------------------ blocks

    def has_block(self, cid: CID) -> bool:
        """True if the block is local (identity CIDs always are)."""
        assert self.blocks is not None
        return self.blocks.has(cid)

    def read_local(self, cids: Sequence[CID],
                   fn: Callable[[CID, bytes | memoryview], Any]) -> list[Any]:
        """``fn(cid, block)`` for each local block of ``cids`` in one store read,
        ``None`` for the others (``TxnBlockStore.read_each``; the gateway's listings)."""
        return self.store.read_each(cids, fn)

    def resolve_name(self, text: str) -> tuple[ContentPath, bool]:
        """The gateway's ``/ipns/`` resolver: ``resolver.ipns_content_path`` on the book."""
        return ipns_content_path(text, self.names.book if self.names is not None else None)

    def blocks_added(self, cids: list[CID]) -> None:
        """Tell the exchange that blocks were stored outside it (peers may be waiting)."""
        if self.network is not None:
            self.network.blocks_added(cids)

    async def get_block(self, cid: CID, *, timeout_s: float | None = None,
                        wait_for_peers: bool = False) -> bytes:
        """The block's bytes, from the store or from peers (``Blocks.get``;
        ``timeout_s``: seconds a fetch may make no progress, None: the default;
        ``wait_for_peers``: wait for a peer when none is connected).

        Raises:
            BlockNotFound: not local and no network, or a ``FetchTimeout`` subclass
                when no peer had it in time.
        """
        assert self.blocks is not None
        return await self.blocks.get(cid, timeout_s=timeout_s, wait_for_peers=wait_for_peers)

    def received(self) -> tuple[int, int, dict[str, int]]:
        """Blocks received from peers so far: ``(blocks, bytes, blocks by peer ID)``."""
        return self.network.received() if self.network is not None else (0, 0, {})

    def sent_by_peer(self) -> dict[str, int]:
        """Block bytes sent to each peer so far: ``{peer ID: bytes}``."""
        return self.network.sent_by_peer() if self.network is not None else {}

    @asynccontextmanager
    async def prefetcher(self, *, timeout_s: float | None = None
                         ) -> AsyncIterator[Callable[[list[CID]], list[CID]]]:
        """A ``prefetch(cids)`` callback for ``unixfs.cat``: missing blocks are wanted
        from peers in the background as soon as their parent is read, so a remote
        file streams without a round trip per block; it returns the blocks it
        wanted (a transfer's progress counts the others as local). Pending wants
        are cancelled when the context exits. ``timeout_s`` as ``get_block``."""
        network = self.network
        if network is None:
            yield lambda cids: []
            return

        async def drain(cids: list[CID]) -> None:
            try:
                async for _ in network.fetch_blocks(cids, timeout_s=timeout_s):
                    pass
            except Exception as exc:  # the reader's own get_block reports failures
                log.debug("prefetch of %d blocks stopped: %s", len(cids), exc)

        async with trio.open_nursery() as nursery:
            def prefetch(cids: list[CID]) -> list[CID]:
                missing = [c for c in cids if not self.has_block(c)]
                if missing:
                    nursery.start_soon(drain, missing)
                return missing

            yield prefetch
            nursery.cancel_scope.cancel()

    async def ensure_dag(self, root: CID, *, protection: Protection | None = None) -> None:
        """Make every block of ``root``'s DAG local (fetching when a network is attached).

        Blocks fetched are added to ``protection`` (a store ``Protection``) as they arrive.
        """
        if self.network is not None:
            await self.network.ensure_dag(root, protection=protection)

    # ------------------------------------------------------------------ pins

    async def pin(self, cid: CID, *, recursive: bool = True, name: str = "",
                  fetch: bool = True, rmin: int | None = None, rmax: int | None = None,
                  availability: float | None = None, expire_at: float | None = None,
                  metadata: dict[str, str] | None = None, timeout_s: float | None = None,
                  on_visit: Callable[[CID], None] | None = None,
                  on_fetched: Callable[[CID, int], None] | None = None) -> Pinned | ClusterPin:
        """Pin ``cid``: in a cluster, a pin of the shared pinset; standalone, a local
        pin (``Pinner.pin``, the one local pin path; ``timeout_s`` and ``on_visit``
        are its fetch's, unused in a cluster, whose holders fetch later).

        In a cluster the pin is written to the shared pinset (rmin/rmax or the
        availability target, defaults from ``[replication]``) and the cluster's
        planners pick its holders; when the DAG is complete locally (it was
        just added here) an origin copy is kept until enough holders have it.

        Returns:
            The new pin state: ``Pinned`` (standalone) or ``ClusterPin``.

        Raises:
            BlockNotFound: standalone: a block of the DAG is missing and cannot be fetched.
            StoreFull: standalone: no room to fetch the DAG.
            InvalidArgument: standalone, with replication options.
            InvalidPin: cluster: a replication option is out of range.
        """
        if self.cluster is not None:
            return await self.cluster.pin(cid, recursive=recursive, name=name, rmin=rmin,
                                          rmax=rmax, availability=availability,
                                          expire_at=expire_at, metadata=metadata)
        self.check_pin_request(rmin=rmin, rmax=rmax, availability=availability)
        assert self.pinner is not None
        done = await self.pinner.pin(cid, recursive=recursive, name=name, fetch=fetch,
                                     expire_at=expire_at, metadata=metadata,
                                     timeout_s=timeout_s, on_visit=on_visit,
                                     on_fetched=on_fetched)
        if expire_at is not None and self.expiry is not None:
            self.expiry.wake()
        return done

    def check_pin_request(self, *, rmin: int | None = None, rmax: int | None = None,
                          availability: float | None = None, **_: object) -> None:
        """Refuse at once a pin request that ``pin`` would refuse for its replication
        options, so ``add`` refuses before reading the upload.

        Raises:
            InvalidArgument: standalone, with replication options.
            InvalidPin: cluster: ``Cluster.check_request``.
        """
        if self.cluster is not None:
            self.cluster.check_request(rmin=rmin, rmax=rmax, availability=availability)
            return
        if (rmin or 1) > 1 or (rmax or 1) > 1 or availability is not None:
            raise InvalidArgument(
                "replication options (--replicas, --rmin, --rmax, --availability) need a "
                "cluster: this node is standalone (set cluster.name in config.toml)")

    async def wait_pin_change(self, timeout_s: float) -> None:
        """Return at the next change of the cluster's pins or holders' states, or
        after ``timeout_s`` seconds (at once on a standalone node: nothing changes
        behind a local pin)."""
        if self.cluster is None:
            await trio.lowlevel.checkpoint()
            return
        with trio.move_on_after(timeout_s):
            await self.cluster.manager.changed().wait()

    async def unpin(self, cid: CID) -> PinRecord | bytes:
        """Unpin ``cid``: a tombstone in the cluster pinset (returns the pin's key), or
        the local pin (also on a cluster node, for a local pin made before it joined;
        returns its record as it was). Raises ``NotPinned``."""
        assert self.store is not None and self.pinner is not None
        if self.cluster is not None:
            try:
                return await self.cluster.unpin(cid)
            except NotPinned:
                rec = self.store.pin_get(cid)
                if rec is None or "local" not in rec.holds:
                    raise
        return await self.pinner.unpin(cid)

    async def pin_list(self, state: str | None) -> AsyncIterator[LocalPin | ClusterPin]:
        """Pins filtered by ``state``: the cluster pinset with this node's state of each
        pin, or (standalone) the local pins, state ``pinned`` or ``incomplete``."""
        if self.cluster is not None:
            async for item in self.cluster.pin_list(state):
                yield item
            return
        if state not in (None, "pinned", "incomplete"):
            return
        assert self.store is not None
        pins = self.store.pin_ls_presence()  # one lookup per held block: read in a thread
        while True:
            batch = await trio.to_thread.run_sync(lambda: list(itertools.islice(pins, 512)))
            for rec, present in batch:
                item = LocalPin(record=rec, present=present)
                if state is None or item.state == state:
                    yield item
            if len(batch) < 512:
                return

    async def pin_status(self, cid: CID) -> dict[str, Any]:
        """The DESIGN.md ``pin status`` record (the cluster's view, or this node alone).

        This node counts as holding the pin (state ``pinned``) only when every
        block the pin holds is in the store; otherwise its state is
        ``incomplete`` with ``blocks_present`` of ``blocks``, and it is not healthy.
        """
        if self.cluster is not None:
            return await self.cluster.pin_status(cid)
        rec = self.store.pin_get(cid)
        presence = await trio.to_thread.run_sync(self.store.pin_presence, cid)
        if rec is None or presence is None:
            raise NotPinned(f"{cid} is not pinned")
        p = self.config.replication.p_prior
        present, blocks = presence
        holder: dict[str, Any] = {"peer_id": self.peer_id, "state": "pinned", "p": p,
                                  "blocks": blocks, "blocks_present": present}
        complete = present == blocks
        if not complete:
            holder["state"] = "incomplete"
        return {"cid": str(cid), "name": rec.name, "mode": rec.mode, "rmin": 1, "rmax": 1,
                "healthy": int(complete), "availability": p if complete else 0.0,
                "local_state": holder["state"], "holds": dict(rec.holds), "holders": [holder]}

    # ------------------------------------------------------------------ repo

    async def repo_stat(self) -> dict[str, Any]:
        st = self.store.stat()
        d = _jsonable(st)
        d["pins"] = sum(self.store.pin_counts().values())
        d["path"] = str(self.home.store_path)
        return d

    async def gc(self) -> dict[str, Any]:
        res = await trio.to_thread.run_sync(self.store.gc)
        self.metrics.gc_runs.inc()
        self.metrics.gc_freed_bytes.inc(res.bytes_freed)
        self.metrics.gc_freed_blocks.inc(res.blocks_freed)
        return _jsonable(res)

    async def verify(self, *, heal: bool = False) -> dict[str, Any]:
        res = await trio.to_thread.run_sync(lambda: self.store.verify(drop=heal))
        corrupt = [str(c) for c in res.corrupt]
        healed = 0
        if heal and self.network is not None:
            for c in res.corrupt:
                try:
                    await self.network.get_block(c)
                    healed += 1
                except Exception as exc:
                    log.warning("could not re-fetch corrupt block %s: %s", c, exc)
        incomplete = await trio.to_thread.run_sync(self.store.incomplete_pins)
        if self.cluster is not None:
            self.cluster.manager.local_incomplete(
                [pin_key(rec.cid) for rec, _ in incomplete if "cluster" in rec.holds])
        return {"checked": res.checked, "corrupt": corrupt, "healed": healed,
                "incomplete": [{"cid": str(rec.cid), "name": rec.name, "mode": rec.mode,
                                "blocks": rec.blocks, "blocks_present": present}
                               for rec, present in incomplete]}
