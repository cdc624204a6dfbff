"""Commands about other nodes: the ``peers`` and ``cluster`` subcommands, and
``simulate`` (the real planner on a simulated cluster, no daemon needed).

Imports the CLI's parser and output and, for ``simulate``, the replication
simulator.
"""

from __future__ import annotations

import argparse
from typing import Any

from pinfold.daemon.cli.commands.base import subcommands
from pinfold.daemon.cli.localio import Output
from pinfold.daemon.cli.parser import UsageError


def peers_ls(c, args: argparse.Namespace, out: Output) -> int:
    out.lines(c.peers(), lambda p: f"{p['peer_id']} {' '.join(p.get('addresses', []))}")
    return 0


def peers_connect(c, args: argparse.Namespace, out: Output) -> int:
    res = c.connect(args.multiaddr)
    out.doc(res, f"connected {res['peer_id']}")
    return 0


def peers_disconnect(c, args: argparse.Namespace, out: Output) -> int:
    res = c.disconnect(args.peer_id)
    out.doc(res, f"disconnected {res['peer_id']}")
    return 0


peers = subcommands("peers", {"ls": peers_ls, "connect": peers_connect,
                              "disconnect": peers_disconnect})


def cluster_peers(c, args: argparse.Namespace, out: Output) -> int:
    out.lines(c.cluster_peers(), lambda p: (
        f"{p['peer_id']} {p['state']} p={p.get('p', 0):.3f} "
        f"free={p.get('free_bytes', 0)} pins={p.get('pins', 0)}"))
    return 0


def cluster_status(c, args: argparse.Namespace, out: Output) -> int:
    res = c.cluster_status()
    if res.get("standalone"):
        out.doc(res, f"standalone node (no cluster): {res.get('pins', 0)} local pins")
        return 0
    text = [f"cluster: {res.get('cluster', '')}", f"pins: {res['pins']}",
            f"  at target:        {res.get('at_target', 0)}",
            (f"  under-replicated: {res['under_replicated']} "
             f"(repairing {res.get('repairing', 0)})"),
            f"  over-replicated:  {res.get('over', 0)}",
            f"  with errors:      {res['errors']}",
            f"min availability: {res.get('min_availability', 1.0):.6f}"]
    if res.get("serve") == "cluster":
        text.append(f"bitswap serves cluster members only "
                    f"({res.get('refused_wants', 0)} wants from others refused)")
    if res.get("peers"):
        text.append("peers: " + ", ".join(f"{k} {v}" for k, v in res["peers"].items()))
    if res.get("local"):
        text.append("here: " + ", ".join(f"{k} {v}" for k, v in res["local"].items() if v))
    text += [f"  under-replicated: {x}" for x in res.get("under_replicated_cids", [])[:20]]
    text += [f"  error: {x}" for x in res.get("error_cids", [])[:20]]
    out.doc(res, "\n".join(text))
    return 0


cluster = subcommands("cluster", {"peers": cluster_peers, "status": cluster_status})


def simulate(args: argparse.Namespace, out: Output) -> int:
    """``pinfold simulate``: measured vs formula availability on a simulated clock."""
    from pinfold.replication.simulate import SimParams, run_simulation

    if args.target is not None and args.k is not None:
        raise UsageError("--k cannot be combined with --target/--availability")
    kwargs: dict[str, Any] = {"nodes": args.nodes, "p": args.p, "pins": args.pins,
                              "repair": args.repair, "seed": args.seed}
    for option, key in (("target", "target"), ("k", "k"), ("rmax", "rmax"),
                        ("duration", "duration_s"), ("session", "session_mean_s"),
                        ("session_dist", "session_dist"), ("grace", "grace_s"),
                        ("heartbeat", "heartbeat_interval_s"),
                        ("repair_bandwidth", "repair_bandwidth_Bps"),
                        ("pin_size", "pin_size_bytes"), ("p_prior", "p_prior"),
                        ("confidence", "confidence")):
        value = getattr(args, option)
        if value is not None:
            kwargs[key] = value
    result = run_simulation(SimParams(**kwargs)).as_dict()
    level = f"{result['confidence'] * 100:g}%"
    out.doc(result, (f"formula  {result['formula']:.6f}\n"
                     f"measured {result['measured']:.6f}  "
                     f"({level} CI {result['ci_low']:.6f} .. {result['ci_high']:.6f})\n"
                     f"repairs  {result['repairs']}  mean holders {result['mean_holders']:.2f}"))
    return 0
