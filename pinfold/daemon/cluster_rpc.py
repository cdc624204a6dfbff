"""The cluster RPC methods: ``cluster_peers``, ``cluster_status``, ``recover``,
``peers_block`` and ``peers_unblock`` (the CLI's ``pinfold cluster ...``).

``cluster_handlers`` answers them from a node's ``Cluster``;
``standalone_handlers`` answers the first three on a node without one (a
cluster of itself). Each handler takes an RPC ``Call`` and returns a
msgpack-able dict. Imports the cluster driver, the pin path and the errors.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio
from pinfold.blockstore.cid import cid_key, parse_cid
from pinfold.blockstore.errors import NotPinned
from pinfold.blockstore.lmdbstore import LmdbBlockStore
from pinfold.config import Config
from pinfold.replication.types import cid_text, pin_key

from pinfold.daemon.cluster import Cluster
from pinfold.daemon.errors import InvalidArgument, param_str
from pinfold.daemon.parts import Handler
from pinfold.daemon.pinning import Pinner

__all__ = ["cluster_handlers", "standalone_handlers"]


def _recover_target(params: dict[str, Any]) -> str | None:
    """The CID text ``recover`` is asked for; None: every pin (``all``).

    Raises:
        InvalidArgument: ``cid`` is not text, or neither ``cid`` nor ``all`` is given.
    """
    cid = params.get("cid")
    if cid is not None and not isinstance(cid, str):
        raise InvalidArgument("parameter 'cid' must be a CID string")
    if cid is None and not params.get("all"):
        raise InvalidArgument("recover needs 'cid' or 'all'")
    return cid


def cluster_handlers(cluster: Cluster, *, refused_wants: Callable[[], int]
                     ) -> dict[str, Handler]:
    """The cluster methods of a cluster node.

    Args:
        cluster: the node's cluster.
        refused_wants: Bitswap's count of wants refused (``bitswap.serve``).
    """
    manager = cluster.manager
    transport = cluster.transport

    async def cluster_peers(call: Any) -> dict[str, Any]:
        peers = manager.cluster_peers()
        connected = set(transport.connected())
        for p in peers:
            d = p.as_dict()
            d["connected"] = p.peer_id in connected
            d["self"] = p.peer_id == cluster.peer_id
            await call.send(d)
        return {"count": len(peers)}

    async def cluster_status(call: Any) -> dict[str, Any]:
        d = manager.cluster_status().as_dict()
        st = manager.statistics()
        d["cluster"] = cluster.name
        d["serve"] = cluster.config.bitswap.serve
        d["refused_wants"] = refused_wants()
        d["local"] = st.local_states
        d["peers"] = st.peers
        d["repairs"] = st.repairs
        return d

    async def recover(call: Any) -> dict[str, Any]:
        cid = _recover_target(call.params)
        if cid is not None and manager.pinset.pin(pin_key(cid)) is None:
            raise NotPinned(f"{cid.strip()} is not pinned: not in the cluster pinset, "
                            "nothing to recover")
        done = manager.recover(None if cid is None else pin_key(cid))
        return {"recovered": len(done), "cids": [cid_text(c) for c in done],
                "pins": [{"cid": cid_text(c), "error": manager.local_error(c)} for c in done]}

    async def peers_block(call: Any) -> dict[str, Any]:
        peer = param_str(call.params, "peer_id")
        await transport.block(peer)
        return {"peer_id": peer, "blocked": True}

    async def peers_unblock(call: Any) -> dict[str, Any]:
        peer = param_str(call.params, "peer_id")
        transport.unblock(peer)
        return {"peer_id": peer, "blocked": False}

    return {"cluster_peers": cluster_peers, "cluster_status": cluster_status,
            "recover": recover, "peers_block": peers_block, "peers_unblock": peers_unblock}


def standalone_handlers(*, peer_id: str, config: Callable[[], Config], store: LmdbBlockStore,
                        pinner: Pinner, refused_wants: Callable[[], int],
                        connected: Callable[[], int] = lambda: 0) -> dict[str, Handler]:
    """``cluster peers``/``cluster status``/``recover`` on a node without a cluster.

    Args:
        peer_id: this node's peer ID.
        config: the node's live config.
        store: the node's store.
        pinner: the node's pin path (``recover`` pins again).
        refused_wants: Bitswap's count of wants refused (``bitswap.serve``).
        connected: how many peers are connected now (``recover`` fetches from them).
    """

    async def cluster_peers(call: Any) -> dict[str, Any]:
        await call.send({"peer_id": peer_id, "state": "alive",
                         "p": config().replication.p_prior, "self": True,
                         "pins": sum(store.pin_counts().values())})
        return {"count": 1, "cluster": ""}

    async def cluster_status(call: Any) -> dict[str, Any]:
        return {"cluster": "", "pins": sum(store.pin_counts().values()),
                "under_replicated": 0, "repairing": 0, "errors": 0, "standalone": True,
                "serve": config().bitswap.serve, "refused_wants": refused_wants()}

    async def recover(call: Any) -> dict[str, Any]:
        # A standalone pin commits whole or fails at once; what can need a retry is a
        # pin whose blocks went missing since (repo verify lists them): fetch them again.
        # Raises NotPinned for a CID that is not pinned (nothing to recover); with no
        # connected peer each incomplete pin fails at once rather than wait out a fetch.
        cid = _recover_target(call.params)
        only = None
        if cid is not None:
            target = parse_cid(cid)
            if store.pin_get(target) is None:
                raise NotPinned(f"{cid.strip()} is not pinned: nothing to recover")
            only = cid_key(target)
        pins = []
        recovered = []
        for rec, present in await trio.to_thread.run_sync(store.incomplete_pins):
            if only is not None and cid_key(rec.cid) != only:
                continue
            entry = {"cid": str(rec.cid),
                     "error": f"missing {rec.blocks - present} of {rec.blocks} blocks"}
            if not connected():
                entry["result"] = ("failed: no peer to recover from: this node is standalone "
                                   "and no peer is connected (`pinfold peers connect "
                                   "MULTIADDR` one that has the blocks)")
                pins.append(entry)
                continue
            try:
                for owner, mode in rec.holds.items():
                    await pinner.pin(rec.cid, recursive=mode == "recursive", name=rec.name,
                                     metadata=dict(rec.metadata), owner=owner)
                entry["result"] = "pinned"
                recovered.append(str(rec.cid))
            except trio.Cancelled:
                raise
            except Exception as exc:  # noqa: BLE001 - reported per pin; the others go on
                entry["result"] = f"failed: {exc}"
            pins.append(entry)
        return {"recovered": len(recovered), "cids": recovered, "pins": pins}

    return {"cluster_peers": cluster_peers, "cluster_status": cluster_status, "recover": recover}
