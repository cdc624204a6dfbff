"""Multi-node fixtures: the replication timers scaled for tests and helpers over
real daemons in one cluster (``tests.support.daemon.DaemonProcess``).

Every multi-node test takes its heartbeat, peer TTL and repair grace from
``TIMERS`` (``replication(...)`` adds a test's own settings), so the whole
suite runs on one time scale. May import pinfold and ``tests.support.daemon``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pinfold.config import load, render, replace
from pinfold.daemon.home import Home
from pinfold.daemon.p2p.identity import load_identity, peer_id_of

from tests.support.daemon import DaemonProcess
from tests.support.daemon import metric as daemon_metric

#: Seconds between heartbeats.
HEARTBEAT_S = 0.5
#: A silent peer is suspect after this (2 heartbeats: ``peer_ttl_s`` left unset).
TTL_S = 2 * HEARTBEAT_S
#: ... and dead (its pins repaired) this much later.
GRACE_S = 3.0
#: The replication timers of every multi-node test (``[replication]`` keys).
TIMERS: dict[str, float] = {
    "heartbeat_interval_s": HEARTBEAT_S,
    "repair_grace_s": GRACE_S,
    "sync_interval_s": 5.0,
    "retry_min_s": 1.0,
    "retry_max_s": 5.0,
    "replan_interval_s": 10.0,
}


def replication(**overrides: Any) -> dict[str, Any]:
    """``TIMERS`` with a test's own ``[replication]`` settings on top."""
    return {**TIMERS, **overrides}


@dataclass
class Cluster:
    """Daemons of one cluster, with their peer IDs in the same order."""

    nodes: list[DaemonProcess]
    ids: list[str]

    def up(self) -> list[DaemonProcess]:
        return [d for d in self.nodes if d.proc is not None and d.proc.poll() is None]

    def name_of(self, peer_id: str) -> DaemonProcess:
        return self.nodes[self.ids.index(peer_id)]


def configure(d: DaemonProcess, *, cluster: str, trusted: list[str], bootstrap: list[str],
              replication: dict[str, Any]) -> None:
    """Write ``d``'s cluster name, trusted peers, bootstrap list and ``[replication]``."""
    path = d.home / "config.toml"
    cfg = replace(load(path), cluster={"name": cluster, "trusted_peers": trusted},
                  replication=replication, node={"bootstrap": bootstrap})
    path.write_text(render(cfg))


def peer_id(d: DaemonProcess) -> str:
    """``d``'s peer ID (base58), read from its home's identity."""
    return peer_id_of(load_identity(Home(root=d.home).identity_path)).to_base58()


def status(d: DaemonProcess, cid: str) -> dict[str, Any] | None:
    """``d``'s cluster status of ``cid``, or None when it is not in the pinset."""
    with d.client() as c:
        try:
            return c.status(cid)
        except Exception as exc:
            if "not in the cluster pinset" in str(exc):
                return None
            raise


def local_state(d: DaemonProcess, cid: str) -> str:
    """``d``'s local state of ``cid`` ("absent" when not in the pinset)."""
    st = status(d, cid)
    return "absent" if st is None else st["local_state"]


def pinned_on(cl: Cluster, cid: str) -> set[str]:
    """Names of the running nodes of ``cl`` that hold ``cid`` pinned."""
    return {d.name for d in cl.up() if local_state(d, cid) == "pinned"}


def metric(d: DaemonProcess, name: str, labels: dict[str, str] | None = None) -> float:
    """``daemon.metric`` with the labels as one dict."""
    return daemon_metric(d, name, **(labels or {}))
