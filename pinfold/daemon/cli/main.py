"""The ``pinfold`` entry point (DESIGN.md, Interface): parse the line
(``parser``), run the command from the table (``commands``), report errors.

Every command and subcommand takes ``--json`` (anywhere on the line) and then
prints one JSON document (JSON lines for listings) on stdout. Errors go to
stderr as one line, ``pinfold: error: ...``, or with ``--json`` as
``{"error": {"code": ..., "message": ...}}``; the exit status follows the
table in ``format.py`` (1 error, 2 usage, 3 no daemon, 4 not found, 5 timeout,
6 store full, 7 refused). Never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from pinfold.daemon.cli.commands import CLIENT_COMMANDS, LOCAL_COMMANDS
from pinfold.daemon.cli.format import EXIT_INTERRUPTED, EXIT_USAGE
from pinfold.daemon.cli.localio import Output
from pinfold.daemon.cli.parser import UsageError, build_parser, check_spaced_pin


def _client(args: argparse.Namespace):
    from pinfold.client import Client

    return Client(home=args.home)


def run_command(args: argparse.Namespace, out: Output) -> int:
    """Run ``args.command`` from the command tables; returns its exit status.

    Raises:
        UsageError: the command is not in the tables.
    """
    local = LOCAL_COMMANDS.get(args.command)
    if local is not None:
        return local(args, out)
    command = CLIENT_COMMANDS.get(args.command)
    if command is None:
        raise UsageError(f"unknown command {args.command!r}")
    with _client(args) as c:
        return command(c, args, out)


def _wants_json(argv: list[str]) -> bool:
    """``--json`` on the command line (before any ``--``), for errors found while parsing."""
    if "--" in argv:
        argv = argv[:argv.index("--")]
    return "--json" in argv


def report_error(exc: BaseException, *, as_json: bool) -> int:
    """Print ``exc`` to stderr (one line, or one JSON document) and return its exit status."""
    from pinfold.daemon.cli.format import code_for, exit_code_for, message_for

    code = code_for(exc)
    message = message_for(exc)
    status = exit_code_for(exc)
    if as_json:
        print(json.dumps({"error": {"code": code, "message": message, "exit": status}},
                         sort_keys=True), file=sys.stderr)
    elif status == EXIT_INTERRUPTED:
        print("pinfold: interrupted", file=sys.stderr)
    elif isinstance(exc, UsageError) and exc.parser is not None:
        exc.parser.print_usage(sys.stderr)
        print(f"{exc.parser.prog}: error: {message}", file=sys.stderr)
    else:
        print(f"pinfold: error: {message}", file=sys.stderr)
    return status


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pinfold`` console script; returns the exit status (``format.py``)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    try:
        check_spaced_pin(argv)
        args = parser.parse_args(argv)
    except UsageError as exc:
        return report_error(exc, as_json=_wants_json(argv))
    as_json = bool(getattr(args, "json", False))
    if args.version:
        from importlib.metadata import version

        print(json.dumps({"version": version("pinfold")}) if as_json else version("pinfold"))
        return 0
    if not args.command:
        if as_json:
            return report_error(UsageError("a command is needed (pinfold --help lists them)"),
                                as_json=True)
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    out = Output(as_json)
    try:
        return run_command(args, out)
    except (Exception, KeyboardInterrupt, BaseExceptionGroup) as exc:  # noqa: BLE001
        # Every error becomes one line (or one JSON document); the status says which kind.
        from pinfold.daemon.cli.format import leaves

        if all(isinstance(e, BrokenPipeError) for e in leaves(exc)):
            # stdout closed early (e.g. `pinfold cat CID | head`): not an error.
            try:
                sys.stdout = open(os.devnull, "w")  # noqa: SIM115
            except OSError:
                pass
            return 0
        return report_error(exc, as_json=as_json)


if __name__ == "__main__":
    sys.exit(main())
