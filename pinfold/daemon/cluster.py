"""The cluster side of a node: the replication manager's driver (DESIGN.md "Replication").

``Cluster`` is built by ``Node`` when ``cluster.name`` is set. It wires the
replication manager (``pinfold.replication.manager``) to its transport
(``LibP2PTransport``, ``daemon/cluster_transport.py``) and its local pins
(``NodePins``, ``daemon/cluster_pins.py``), runs them, reconnects silent
peers, and answers the node's pin calls with typed results (``ClusterPin``);
its RPC methods are in ``daemon/cluster_rpc.py``.

``serve_allowed`` decides who may fetch blocks from this node when
``bitswap.serve = "cluster"``: the cluster's members (``Cluster.may_fetch``).

Replication metrics (``replication_metric_families``) are exported by every
node, zeros when standalone, under the names the deploy/ alerts and dashboard
use. Imports replication, the host and the cluster's transport; never the node.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator, Collection, Container, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import trio
from libp2p.crypto.keys import KeyPair
from libp2p.peer.id import ID
from pinfold.blockstore.cid import CID
from pinfold.blockstore.errors import BlockNotFound, NotPinned
from pinfold.blockstore.lmdbstore import LmdbBlockStore
from pinfold.blockstore.writer import BatchWriter
from pinfold.config import Config
from pinfold.replication.allocation import unreachable_availability
from pinfold.replication.errors import InvalidPin, PinNotFound
from pinfold.replication.manager import Manager, ManagerConfig
from pinfold.replication.persist import ReplicationDB
from pinfold.replication.types import PeerStatus, Pin, PinMode, PinState, cid_text, pin_key

from pinfold.daemon.cluster_pins import NodePins
from pinfold.daemon.cluster_transport import SYNC_PROTOCOL, LibP2PTransport, topic_name
from pinfold.daemon.errors import InvalidArgument
from pinfold.daemon.metrics import counter, counter_by, gauge, gauge_by, histogram
from pinfold.daemon.p2p.host import Host
from pinfold.daemon.transfer import expected_size

log = logging.getLogger("pinfold.cluster")

__all__ = [
    "SYNC_PROTOCOL",
    "Cluster",
    "ClusterPin",
    "LibP2PTransport",
    "replication_metric_families",
    "serve_allowed",
    "silent_peers",
    "topic_name",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterPin:
    """A pin of the shared pinset as this node sees it.

    Attributes:
        pin: the pinset's entry.
        state: this node's local state of it.
        error: why this node's last attempt failed (empty: none).
        holders_pinned: holders pinned on alive peers now (set by ``Cluster.pin``).
        holders_wanted: the holders wanted, ``rmin`` (set by ``Cluster.pin``).
    """

    pin: Pin
    state: PinState
    error: str = ""
    holders_pinned: int | None = None
    holders_wanted: int | None = None


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

    Args:
        config: the node's config (``apply_config`` replaces it on reload).
        peer_id: this node's peer ID (base58).
        key_pair: this node's identity (signs the gossip envelopes).
        host: the node's libp2p host.
        store: the node's store (the replication state is kept in it).
        writer: the store's writer.
        pins: the manager's ``LocalPins`` (``NodePins``).
    """

    def __init__(self, config: Config, *, peer_id: str, key_pair: KeyPair, host: Host,
                 store: LmdbBlockStore, writer: BatchWriter, pins: NodePins) -> None:
        self.config = config
        self.peer_id = peer_id
        self.name = config.cluster.name
        self.host = host
        self.store = store
        self.pins = pins
        self.transport = LibP2PTransport(
            host, key_pair, self.name, trusted=config.cluster.trusted_peers,
            heartbeat_interval_s=config.replication.heartbeat_interval_s)
        self.db = ReplicationDB(store, writer.submit)
        self.manager = Manager(peer_id, ManagerConfig.from_config(config), self.transport,
                               pins, db=self.db,
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
        host = self.host
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

    def apply_config(self, config: Config) -> None:
        """Live keys of a reload: trusted peers, replication settings, ``bitswap.serve``."""
        self.config = config
        self.transport.set_trusted(config.cluster.trusted_peers)
        self.manager.apply_config(ManagerConfig.from_config(config))

    def may_fetch(self, peer: ID) -> bool:
        """Bitswap's serve filter: ``serve_allowed`` with the live config, trust and
        membership (``bitswap.serve`` is read at each call, so a reload applies at once)."""
        serve = self.config.bitswap.serve
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
                  metadata: Mapping[str, object] | None = None,
                  stage: bool = True) -> ClusterPin:
        """Write the pin to the shared pinset; returns it with ``holders_pinned``
        (holders pinned on alive peers now) and ``holders_wanted`` (rmin). The
        holders fetch it afterwards: see ``pin_status``.

        Raises:
            InvalidPin: as ``check_request`` says, or a bad field.
        """
        key = pin_key(cid)
        self.check_request(rmin=rmin, rmax=rmax, availability=availability)
        pin = await self.manager.pin_add(
            key, name=name, mode=PinMode.RECURSIVE if recursive else PinMode.DIRECT, rmin=rmin,
            rmax=rmax, availability_target=availability, expire_at=expire_at,
            metadata={str(k): str(v) for k, v in (metadata or {}).items()}, stage=stage)
        st = self.manager.status(key)
        return ClusterPin(pin=pin, state=self.manager.local_state(key),
                          error=self.manager.local_error(key) or "",
                          holders_pinned=st.healthy if st is not None else 0,
                          holders_wanted=pin.rmin)

    async def unpin(self, cid: CID) -> bytes:
        """Remove the pin from the shared pinset (a tombstone); returns its key.

        Raises:
            NotPinned: not in the pinset.
        """
        key = pin_key(cid)
        try:
            await self.manager.pin_rm(key)
        except PinNotFound as exc:
            raise NotPinned(str(exc)) from exc
        return key

    async def pin_list(self, state: str | None) -> AsyncIterator[ClusterPin]:
        """The pinset with this node's state of each pin; ``state`` filters (``error``
        is ``pin_error``: failed pins, each with its ``error``).

        Raises:
            InvalidArgument: ``state`` is not a pin state.
        """
        want = None
        if state == "error":
            state = PinState.PIN_ERROR.value
        if state == "incomplete":
            return  # a cluster copy short of blocks is queued again, not kept incomplete
        if state is not None:
            try:
                want = PinState(state)
            except ValueError:
                raise InvalidArgument(
                    f"state must be one of {', '.join(s.value for s in PinState)}, got {state!r}"
                ) from None
        async for pin, st in self.manager.iter_pins(want):
            yield ClusterPin(pin=pin, state=st, error=self.manager.local_error(pin.cid) or "")

    async def pin_status(self, cid: CID) -> dict[str, Any]:
        """The cluster's view of a pin (this node's holder with its last ``error`` when it
        is in ``pin_error``), with the DAG's ``size_bytes`` when known (the pin's,
        else the root block's sizes when the root is here) and a holder's
        ``bytes`` where known: ``size_bytes`` for a pinned holder, the bytes
        this node's own fetch has reached while it runs. A local copy this
        node counted as ``pinned`` but that is missing blocks goes back to
        ``queued`` first (it is fetched again), so neither this answer nor the
        peers count it as held."""
        key = pin_key(cid)
        presence = None
        if self.manager.local_state(key) is PinState.PINNED:
            presence = await trio.to_thread.run_sync(self.store.pin_presence, cid)
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
        error = self.manager.local_error(key)
        if error:
            d["local_error"] = error
            for h in d["holders"]:
                if h["peer_id"] == self.peer_id and h["state"] == PinState.PIN_ERROR.value:
                    h["error"] = error
        if presence is not None and presence[0] < presence[1]:
            d["local_blocks"] = presence[1]
            d["local_blocks_present"] = presence[0]
        size = pin.size_bytes if pin is not None else None
        if size is None:
            size = self._dag_size(cid)
        d["size_bytes"] = size
        fetching = self.pins.fetching_bytes(key)
        for h in d["holders"]:
            if h["state"] == PinState.PINNED.value and size is not None:
                h["bytes"] = size
            elif h["peer_id"] == self.peer_id and fetching is not None:
                h["bytes"] = fetching
        return d

    def _dag_size(self, cid: CID) -> int | None:
        """The DAG bytes ``cid``'s root block announces, None when it is not here."""
        try:
            return expected_size(cid, self.store.get(cid), content=False)
        except BlockNotFound:
            return None


# ---------------------------------------------------------------------- metrics


def replication_metric_families(cluster: Cluster | None, grace_s: float) -> Iterable[Any]:
    """The replication and cluster metric families (zeros on a standalone node).

    Names are fixed by deploy/prometheus/alerts.yml and deploy/grafana/pinfold.json.

    Args:
        cluster: the node's cluster, None when standalone.
        grace_s: ``replication.repair_grace_s``.
    """
    grace = float(grace_s)
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
        malformed = 0
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
        malformed = ts.malformed_streams
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
    yield counter("pinfold_cluster_malformed_pubsub_streams", "Pubsub streams from peers reset "
                  "for a frame that did not parse or was over the size limit", malformed)
    yield counter("pinfold_replication_fetched_bytes", "Bytes fetched to pin allocated DAGs",
                  fetched)
    yield counter("pinfold_cluster_rejected_messages", "Cluster messages from trusted peers "
                  "rejected as malformed, impersonating or too far ahead in time", rejected)
    yield gauge("pinfold_replication_grace_seconds",
                "The configured replication.repair_grace_s", grace)
