"""The table of ``pinfold`` commands: each command name to the function that
runs it. ``LOCAL_COMMANDS`` run in the CLI process; ``CLIENT_COMMANDS`` get a
connected ``Client``. Commands with subcommands are tables themselves
(``base.subcommands``).

One module per area: ``node`` (init, daemon, id, shutdown), ``content`` (add,
cat, get, ls, stat, block, dag), ``pins`` (pin, recover), ``repo``, ``cluster`` (peers,
cluster, simulate), ``names`` (push, pull, tag, versions, names, name grant, key).
"""

from __future__ import annotations

from pinfold.daemon.cli.commands import cluster, content, names, node, pins, repo
from pinfold.daemon.cli.commands.base import ClientCommand, LocalCommand

LOCAL_COMMANDS: dict[str, LocalCommand] = {
    "init": node.init,
    "daemon": node.daemon,
    "simulate": cluster.simulate,
}

CLIENT_COMMANDS: dict[str, ClientCommand] = {
    "id": node.node_id,
    "add": content.add,
    "cat": content.cat,
    "get": content.get,
    "ls": content.ls,
    "stat": content.stat,
    "block": content.block,
    "dag": content.dag,
    "pin": pins.pin,
    "repo": repo.repo,
    "peers": cluster.peers,
    "cluster": cluster.cluster,
    "recover": pins.recover,
    "push": names.push,
    "pull": names.pull,
    "tag": names.tag,
    "versions": names.versions,
    "names": names.names,
    "name": names.name,
    "key": names.key,
    "shutdown": node.shutdown,
}

__all__ = ["CLIENT_COMMANDS", "LOCAL_COMMANDS", "ClientCommand", "LocalCommand"]
