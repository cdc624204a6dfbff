"""The CLI's command table matches its grammar: every command and subcommand
the parser accepts has a function, and nothing in the table is unreachable.
No daemon, no trio."""

from __future__ import annotations

import argparse

import pytest

from pinfold.daemon.cli.commands import CLIENT_COMMANDS, LOCAL_COMMANDS
from pinfold.daemon.cli.commands.base import Subcommands
from pinfold.daemon.cli.localio import Output
from pinfold.daemon.cli.parser import UsageError, build_parser


def _choices(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_every_command_has_exactly_one_function():
    commands = _choices(build_parser())
    assert not set(LOCAL_COMMANDS) & set(CLIENT_COMMANDS)
    assert set(commands) == set(LOCAL_COMMANDS) | set(CLIENT_COMMANDS)


def test_every_subcommand_is_in_its_table():
    for name, sub in _choices(build_parser()).items():
        subs = _choices(sub)
        command = CLIENT_COMMANDS.get(name)
        if subs:
            assert isinstance(command, Subcommands), name
            assert command.name == name
            assert set(subs) == set(command.table), name
        else:
            assert not isinstance(command, Subcommands), name


@pytest.mark.parametrize(("name", "choices"), [
    ("block", "put, get, stat, rm"), ("dag", "import, export"),
    ("pin", "add, rm, ls, status"), ("repo", "stat, gc, verify"),
    ("peers", "ls, connect, disconnect"), ("cluster", "peers, status"),
])
def test_a_missing_subcommand_names_the_choices_in_order(name, choices):
    args = argparse.Namespace(subcommand=None)
    with pytest.raises(UsageError, match=f"^{name} needs a subcommand: {choices}$"):
        CLIENT_COMMANDS[name](object(), args, Output(False))
