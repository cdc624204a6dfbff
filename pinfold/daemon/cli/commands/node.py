"""Commands about the node itself: ``init`` (create the home), ``daemon`` (run
the node), ``id`` and ``shutdown``.

Imports the config, the node's home and identity (``init``) and, only when
``pinfold daemon`` runs, the node's service.
"""

from __future__ import annotations

import argparse
from typing import Any

from pinfold.daemon.cli.localio import Output
from pinfold.daemon.cli.parser import UsageError


def init(args: argparse.Namespace, out: Output) -> int:
    """``pinfold init``: create config.toml and identity.key where missing."""
    from pinfold.config import Config, replace

    from pinfold.daemon.home import Home, init_home, resolve_home
    from pinfold.daemon.p2p.identity import key_file_peer_id

    cfg = Config()
    changes: dict[str, dict[str, Any]] = {}
    if args.listen:
        changes.setdefault("node", {})["listen"] = list(args.listen)
    if args.bootstrap:
        changes.setdefault("node", {})["bootstrap"] = list(args.bootstrap)
    if args.metrics is not None:
        changes["metrics"] = {"listen": args.metrics}
    if args.gateway is not None:
        changes["gateway"] = {"listen": args.gateway}
    if args.cluster is not None:
        changes["cluster"] = {"name": args.cluster}
    if changes:
        cfg = replace(cfg, **changes)
    root = resolve_home(args.home)
    missing = Home(root=root).missing_parts()
    if changes and "config.toml" not in missing and missing:
        raise UsageError(f"{root / 'config.toml'} exists and is kept: edit it instead of "
                         "passing --listen/--metrics/--gateway/--cluster/--bootstrap")
    home = init_home(root, cfg)
    peer_id = key_file_peer_id(home.identity_path)
    if len(missing) == 2:
        text = f"initialised {root}\npeer_id: {peer_id}"
    else:
        kept = "identity.key" if missing == ["config.toml"] else "config.toml"
        text = f"created {' and '.join(missing)} in {root} (kept {kept})\npeer_id: {peer_id}"
    out.doc({"home": str(root), "peer_id": peer_id, "config": str(home.config_path),
             "created": missing}, text)
    return 0


def daemon(args: argparse.Namespace, out: Output) -> int:
    """``pinfold daemon``: run the node in the foreground until stopped."""
    from pinfold.daemon.home import Home, resolve_home

    # An incomplete home or a bad config.toml is refused before the node's import
    # (py-libp2p, about a second of CPU); run_daemon checks both again.
    home = Home(root=resolve_home(args.home))
    home.check_initialised()
    home.load_config()
    from pinfold.daemon.process import run_daemon

    return run_daemon(home=args.home, allow_empty_store=args.allow_empty_store)


def node_id(c, args: argparse.Namespace, out: Output) -> int:
    """``pinfold id``: peer ID, listen addresses, version."""
    info = c.id()
    out.doc(info, "\n".join([f"peer_id: {info['peer_id']}", "addresses:",
                             *(f"  {a}" for a in info.get("addresses", [])),
                             f"version: {info.get('version', '')}",
                             f"gateway: {info.get('gateway') or 'off'}"]))
    return 0


def shutdown(c, args: argparse.Namespace, out: Output) -> int:
    """``pinfold shutdown``: ask the daemon to stop."""
    res = c.shutdown()
    out.doc(res, "daemon stopping")
    return 0
