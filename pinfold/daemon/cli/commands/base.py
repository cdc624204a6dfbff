"""What a command is: ``LocalCommand`` (runs in the CLI process) and
``ClientCommand`` (talks to the daemon through a ``Client``), and
``subcommands`` that turns a table of subcommands into one command.

Imports the CLI's parser (``UsageError``) and output; nothing else.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from typing import Any

from pinfold.daemon.cli.localio import Output
from pinfold.daemon.cli.parser import UsageError

#: ``run(args, out) -> exit status``: a command that needs no daemon.
LocalCommand = Callable[[argparse.Namespace, Output], int]
#: ``run(client, args, out) -> exit status``: a command sent to the daemon.
ClientCommand = Callable[[Any, argparse.Namespace, Output], int]


def subcommands(name: str, table: Mapping[str, ClientCommand]) -> ClientCommand:
    """One ``ClientCommand`` that runs ``table[args.subcommand]``.

    Raises:
        UsageError: no subcommand was given (names the choices, in table order).
    """

    def run(c: Any, args: argparse.Namespace, out: Output) -> int:
        command = table.get(args.subcommand)
        if command is None:
            raise UsageError(f"{name} needs a subcommand: {', '.join(table)}")
        return command(c, args, out)

    return run
