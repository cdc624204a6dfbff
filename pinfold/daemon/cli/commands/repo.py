"""The ``repo`` subcommands: the local store's ``stat``, ``gc`` and ``verify``.

Imports the CLI's output; the work is done through the ``Client``.
"""

from __future__ import annotations

import argparse

from pinfold.daemon.cli.commands.base import subcommands
from pinfold.daemon.cli.format import EXIT_ERROR
from pinfold.daemon.cli.localio import Output


def repo_stat(c, args: argparse.Namespace, out: Output) -> int:
    out.doc(c.repo_stat())
    return 0


def repo_gc(c, args: argparse.Namespace, out: Output) -> int:
    res = c.repo_gc()
    out.doc(res, f"freed {res['blocks_freed']} blocks, {res['bytes_freed']} bytes")
    return 0


def repo_verify(c, args: argparse.Namespace, out: Output) -> int:
    """Exit 1 unless every block checked out (or was healed) and no pin is incomplete."""
    res = c.repo_verify(heal=args.heal)
    incomplete = res.get("incomplete", [])
    out.doc(res, f"checked {res['checked']} blocks, {len(res['corrupt'])} corrupt, "
            f"{len(incomplete)} incomplete pins"
            + "".join(f"\n  corrupt: {x}" for x in res["corrupt"])
            + "".join(f"\n  incomplete pin: {p['cid']} {p.get('mode', '')} "
                      f"({p['blocks_present']} of {p['blocks']} blocks)"
                      + (f" name={p['name']!r}" if p.get("name") else "")
                      for p in incomplete))
    healed = not res["corrupt"] or res.get("healed") == len(res["corrupt"])
    return 0 if healed and not incomplete else EXIT_ERROR


repo = subcommands("repo", {"stat": repo_stat, "gc": repo_gc, "verify": repo_verify})
