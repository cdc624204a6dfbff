"""What a command is: ``LocalCommand`` (runs in the CLI process) and
``ClientCommand`` (talks to the daemon through a ``Client``), and
``Subcommands`` that turns a table of subcommands into one command.

Imports the CLI's parser (``UsageError``) and output; nothing else.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pinfold.daemon.cli.localio import Output
from pinfold.daemon.cli.parser import UsageError

#: ``run(args, out) -> exit status``: a command that needs no daemon.
LocalCommand = Callable[[argparse.Namespace, Output], int]
#: ``run(client, args, out) -> exit status``: a command sent to the daemon.
ClientCommand = Callable[[Any, argparse.Namespace, Output], int]


@dataclass(frozen=True, slots=True)
class Subcommands:
    """A ``ClientCommand`` that runs ``table[args.subcommand]``.

    Attributes:
        name: the command (``pin``, ``repo``...), for the usage error.
        table: subcommand name -> ``ClientCommand``; its order is the order
            the usage error lists them in.
    """

    name: str
    table: Mapping[str, ClientCommand]

    def __call__(self, c: Any, args: argparse.Namespace, out: Output) -> int:
        """Raises ``UsageError`` when no subcommand was given (naming the choices)."""
        command = self.table.get(args.subcommand)
        if command is None:
            raise UsageError(f"{self.name} needs a subcommand: {', '.join(self.table)}")
        return command(c, args, out)


def subcommands(name: str, table: Mapping[str, ClientCommand]) -> Subcommands:
    """One ``ClientCommand`` that dispatches on ``args.subcommand`` through ``table``."""
    return Subcommands(name, dict(table))
