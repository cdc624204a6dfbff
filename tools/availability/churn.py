"""Real-process availability: daemons killed and restarted on a seeded churn schedule.

``run_churn(ChurnParams(...), root) -> ChurnResult`` starts N real ``pinfold
daemon`` processes on 127.0.0.1 (fixed ports, so a restarted node is found at
the same multiaddr with the same peer ID) and one *gateway* daemon, places
pins at factor k, then for ``duration_s`` seconds:

- the **churn driver** follows a schedule drawn from a seeded random stream
  per node (``churn_schedule``): alternating online/offline sessions,
  exponential with means ``mean_up_s`` and ``mean_up_s * (1 - p) / p``, started
  in the stationary state (online with probability p), so each node is up a
  fraction p of the time. Going offline is SIGKILL; coming back is a new
  process, spawned ahead of the scheduled time by the measured start-up latency
  so the node answers at about the scheduled moment. A node counts as *up* from
  the moment its RPC answers ``id`` until it is killed; those observed
  intervals give each node's realized online fraction.
- the **prober** works in rounds at fixed times (every ``fetch_timeout_s +
  round_slack_s`` seconds, whatever the outcomes, so it samples time
  uniformly): each round picks ``probes_per_round`` pins at random (seeded; 0 =
  all, in random order) and asks the gateway for each block at once (``block
  get``: Bitswap from the connected peers, with the gateway's
  ``bitswap.fetch_timeout_s = fetch_timeout_s``). A probe succeeds when the
  right bytes arrive within the timeout. The gateway then deletes its copy
  (``block rm``), and the round ends before the next starts, so every probe goes
  to the network and a pin is never probed twice at once. (Picking pins one at
  a time while skipping those still in flight would bias the result upwards:
  the probes still in flight are the failing ones.) A probe launched while no
  holder is up can still succeed when one comes back within the timeout; the
  short default timeout keeps that bias small, and the oracle below shows it.

The gateway holds none of the pins and is never allocated any: it is a
standalone node (``cluster.name = ""``, not a cluster member), connected to
every churning node through ``node.bootstrap`` (and each node dials it back on
start). It never churns.

Placement modes:

- ``static``: the harness places each pin itself - the block is put and pinned
  on the top k nodes of the real allocator's ranking
  (``RendezvousAllocator``, equal weights) - and nothing re-replicates. This is
  the setting the formula describes, and needs only standalone daemons.
- ``cluster``: the nodes form a pinfold cluster (``[cluster] name``, short
  ``[replication]`` intervals) and each pin is added with ``pin add --replicas
  k`` on one node; the cluster chooses holders and repairs lost copies.

Reported per k: the probes' success fraction with a confidence interval
(``mean_ci`` over the probe series in time order: it accounts for the time
correlation of sessions), next to the formula ``1 - (1 - p)^k``, the formula with
each node's realized online fraction, the oracle (static mode: the exact
fraction of time at least one holder was up, from the observed intervals) and
the simulator's figure for the same settings.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from .churn_driver import ChurnRun
from .churn_model import (
    NodeSchedule,
    churn_schedule,
    covered_fraction,
    merge_intervals,
    run_spread,
    static_holders,
)
from .churn_records import ChurnParams, ChurnResult, KResult

__all__ = [
    "ChurnParams",
    "ChurnResult",
    "KResult",
    "NodeSchedule",
    "churn_schedule",
    "covered_fraction",
    "merge_intervals",
    "run_churn",
    "run_spread",
    "static_holders",
]


def run_churn(params: ChurnParams, root: Path | None = None, *,
              log: Callable[[str], None] | None = None) -> ChurnResult:
    """Run one real-process experiment (module docstring).

    Args:
        params: the experiment.
        root: directory for the daemons' homes and logs (a temporary directory,
            removed afterwards, when None).
        log: called with progress lines.

    Returns:
        The measurement.

    Raises:
        TimeoutError: a daemon did not answer, the gateway did not connect or
            the cluster did not place the pins in time.
        RuntimeError: a daemon exited during start-up (its log is in the message).
    """
    say = log or (lambda line: None)
    if root is not None:
        return ChurnRun(params, root, say).run()
    tmp = Path(tempfile.mkdtemp(prefix="pinfold-churn-"))
    try:
        return ChurnRun(params, tmp, say).run()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def format_result(res: ChurnResult) -> list[str]:
    """Lines of text: one per k, and a summary."""
    prm = res.params
    lines = [(f"real daemons: N={prm.nodes} p={prm.p} mode={prm.mode} {prm.duration_s:.0f} s, "
              f"realized p {statistics.fmean(res.realized_p):.3f} "
              f"(scheduled {statistics.fmean(res.scheduled_p):.3f}), {res.restarts} restarts, "
              f"start-up {res.startup_s:.2f} s")]
    for r in res.rows:
        oracle = f" oracle {r.oracle:.4f}" if r.oracle is not None else ""
        lines.append(f"  k={r.k}: probes {r.successes}/{r.probes} = {r.measured:.4f} "
                     f"[{r.ci_low:.4f}, {r.ci_high:.4f}] formula {r.formula:.4f} "
                     f"(realized p: {r.formula_realized:.4f}){oracle} sim {r.sim:.4f}")
    if res.probe_errors:
        lines.append(f"  failed probes: {res.probe_errors}")
    return lines


def main(argv: list[str] | None = None) -> int:
    d = ChurnParams()
    ap = argparse.ArgumentParser(description="real-process availability experiment")
    ap.add_argument("--nodes", type=int, default=d.nodes)
    ap.add_argument("--p", type=float, default=d.p)
    ap.add_argument("--ks", default=",".join(map(str, d.ks)))
    ap.add_argument("--pins-per-k", type=int, default=d.pins_per_k)
    ap.add_argument("--duration", type=float, default=d.duration_s)
    ap.add_argument("--mean-up", type=float, default=d.mean_up_s)
    ap.add_argument("--mode", choices=("static", "cluster"), default="static")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", metavar="DIR", help="keep homes and logs in DIR")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    prm = ChurnParams(nodes=a.nodes, p=a.p, ks=tuple(int(x) for x in a.ks.split(",")),
                      pins_per_k=a.pins_per_k, duration_s=a.duration, mean_up_s=a.mean_up,
                      mode=a.mode, seed=a.seed)
    root = Path(a.keep) if a.keep else None
    if root is not None:
        root.mkdir(parents=True, exist_ok=True)
    res = run_churn(prm, root, log=lambda s: print(s, file=sys.stderr, flush=True))
    if a.json:
        print(json.dumps(res.as_dict(), sort_keys=True))
    else:
        print("\n".join(format_result(res)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
