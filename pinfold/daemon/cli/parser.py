"""The ``pinfold`` command line's grammar: ``build_parser`` (argparse), the option
value types, and ``UsageError`` for a bad command line.

Imports only the standard library; ``main`` and the commands import it.
"""

from __future__ import annotations

import argparse
import re
import os
from typing import Any


class UsageError(Exception):
    """Bad command line: an unknown option, a missing argument, a bad combination.

    Attributes:
        code: ``usage`` (exit status 2).
        parser: the (sub)parser whose usage line fits, when known.
    """

    code = "usage"

    def __init__(self, message: str, *, parser: argparse.ArgumentParser | None = None) -> None:
        super().__init__(message)
        self.parser = parser


def _bool(text: str) -> bool:
    low = text.lower()
    if low in ("true", "1", "yes", "on"):
        return True
    if low in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


_BOOL_WORDS = ("true", "false", "1", "0", "yes", "no", "on", "off")


def check_spaced_pin(argv: list[str]) -> None:
    """Refuse ``add --pin false`` (a space, not ``=``) with the right syntax.

    ``--pin`` is a flag, so argparse would read ``false`` as the path to add and
    then complain about the real one. A word that is an existing path is left
    alone (``add --pin false`` may name a file called ``false``, as Kubo reads it).

    Raises:
        UsageError: ``--pin`` followed by a true/false word that is not a path.
    """
    if "add" not in argv:
        return
    for i, tok in enumerate(argv[:-1]):
        word = argv[i + 1]
        if tok == "--pin" and word.lower() in _BOOL_WORDS and not os.path.exists(word):
            value = "false" if not _bool(word) else "true"
            raise UsageError(f"--pin takes no separate value: write --pin={value} "
                             f"(got --pin {word})")


def _probability(text: str) -> float:
    try:
        p = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a probability, got {text!r}") from None
    if not 0.0 < p < 1.0:
        raise argparse.ArgumentTypeError(f"availability must be in (0, 1), got {text}")
    return p


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def _nonneg_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 0 <= n < 2**63:
        raise argparse.ArgumentTypeError(f"must be between 0 and 2^63 - 1, got {n}")
    return n


def _positive_seconds(text: str) -> float:
    try:
        s = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not 0 < s < float("inf"):
        raise argparse.ArgumentTypeError(f"must be > 0 seconds, got {text}")
    return s


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds in ``text``: a plain number of seconds (``30``, ``2.5``) or a Go
    duration as Kubo's ``--timeout`` takes (``30s``, ``2m``, ``1h30m``, ``500ms``).

    Raises:
        argparse.ArgumentTypeError: not a duration, or not > 0.
    """
    t = text.strip()
    try:
        seconds = float(t)
    except ValueError:
        pos, seconds = 0, 0.0
        for m in _DURATION_PART.finditer(t):
            if m.start() != pos:
                break
            seconds += float(m.group(1)) * _UNIT_S[m.group(2)]
            pos = m.end()
        if pos != len(t) or not t:
            raise argparse.ArgumentTypeError(
                f"expected a duration such as 30, 30s, 2m or 1h30m, got {text!r}") from None
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, got {text!r}")
    return seconds


def _timeout_option(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--timeout", type=parse_duration, metavar="DURATION",
                   help=f"give up {what} after DURATION (seconds, or 30s, 2m, 1h30m as "
                   "Kubo's --timeout); exit 5 naming the CID and what arrived")


#: ``pin ls --state`` values: the cluster's local states, ``error`` (= ``pin_error``)
#: and ``incomplete`` (a local pin missing some of its blocks).
PIN_STATES = ("queued", "pinning", "pinned", "pin_error", "error", "incomplete", "unpinning",
              "remote")


def _positive_float(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (x > 0 and x != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return x


def _nonneg_float(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (x >= 0 and x != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return x


def _online_fractions(text: str) -> float | tuple[float, ...]:
    """``0.9`` (every node) or ``0.9,0.8,0.95`` (one online fraction per node), each in (0, 1]."""
    values = []
    for part in text.split(","):
        try:
            x = float(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a probability, got {part!r}") from None
        if not 0.0 < x <= 1.0:
            raise argparse.ArgumentTypeError(f"online fraction must be in (0, 1], got {part}")
        values.append(x)
    return values[0] if len(values) == 1 else tuple(values)


def _replication_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("replication (cluster-wide; default rmin/rmax from config)")
    g.add_argument("--replicas", type=_positive_int, metavar="K", help="hold K copies (rmin = rmax = K)")
    g.add_argument("--rmin", type=_positive_int, metavar="A", help="repair below A healthy copies")
    g.add_argument("--rmax", type=_positive_int, metavar="B", help="hold at most B copies")
    g.add_argument("--availability", type=_probability, metavar="P",
                   help="hold enough copies that 1 - prod(1 - p_i) >= P")


def _wait_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("waiting for the holders (as ipfs-cluster-ctl --wait)")
    g.add_argument("--wait", action="store_true",
                   help="return once rmin holders report pinned (progress on a terminal)")
    g.add_argument("--wait-timeout", type=_positive_seconds, metavar="SECONDS",
                   help="with --wait (implied): give up after SECONDS, exit non-zero and "
                   "name the holders behind")


def _name_commands(cmd: Any) -> None:
    """``push``, ``pull``, ``tag``, ``versions``, ``names``, ``name grant``, ``key``."""
    def key_option(p: argparse.ArgumentParser) -> None:
        p.add_argument("--key", metavar="KEY", help="sign with this key (default: self, "
                       "the node's key; others from `pinfold key gen`)")

    p = cmd("push", "add a file or folder (links followed) as the next version of NAME")
    p.add_argument("name", help="like org/model")
    p.add_argument("path")
    p.add_argument("--tag", action="append", metavar="TAG", help="also move TAG to it")
    p.add_argument("--no-main", action="store_true", help="do not move the main tag")
    p.add_argument("-m", "--message", help="what changed")
    p.add_argument("--meta", action="append", metavar="KEY=VALUE", help="a metadata label")
    key_option(p)
    _replication_options(p)
    _wait_options(p)

    p = cmd("pull", "download a version: NAME, NAME@VERSION, NAME@TAG[/path]")
    p.add_argument("ref")
    p.add_argument("-o", "--output", metavar="DIR", help="a new or empty folder "
                   "(default: the name's last part)")
    p.add_argument("--hf-cache", nargs="?", const="", metavar="DIR",
                   help="lay it out as a Hugging Face hub cache (default: huggingface_hub's)")

    p = cmd("tag", "move TAG to NAME@VERSION")
    p.add_argument("ref", metavar="NAME@VERSION")
    p.add_argument("tag")
    key_option(p)

    p = cmd("versions", "a name's history, or one version's (versions rm NAME@N: "
            "unpin a version; refused while a tag points at it)")
    p.add_argument("words", nargs="+", metavar="NAME[@REF] | rm NAME@N")
    p.add_argument("--force", action="store_true",
                   help="with rm: retire even a version a tag points at (the tag then "
                   "names a retired version; `pinfold tag` moves it)")
    key_option(p)
    p.intermixed = True  # type: ignore[attr-defined]  # `versions rm --force NAME@N`

    cmd("names", "list the names of the cluster: each one's newest live version, how many "
        "versions are live (and retired), its tags")

    name = cmd("name", "name ownership").add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
    p = name.add_parser("grant", help="let KEY publish under NAME")
    p.add_argument("name")
    p.add_argument("grantee", metavar="KEY", help="a key ID (12D3KooW...)")
    key_option(p)

    key = cmd("key", "signing keys").add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
    p = key.add_parser("gen", help="create a named Ed25519 key in the home")
    p.add_argument("key_name", metavar="NAME")
    key.add_parser("ls", help="the node's key (self) and named keys")


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors raise ``UsageError`` (so ``main`` reports
    them, as JSON with ``--json``) instead of printing and exiting.

    A (sub)command parser with ``intermixed`` set reads options between its
    positionals (``versions rm --force NAME@N``): plain argparse stops a
    ``nargs="+"`` positional at the first option and leaves what follows as
    unrecognized. Such a parser has no subcommands (argparse's
    ``parse_known_intermixed_args`` refuses them).
    """

    intermixed = False
    _mixing = False

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        if not self.intermixed or self._mixing:
            return super().parse_known_args(args, namespace)
        self._mixing = True  # parse_known_intermixed_args calls back in here
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._mixing = False

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(message, parser=self)


#: Options every command and subcommand accepts, wherever they appear on the line.
_EVERYWHERE: tuple[tuple[str, dict[str, Any]], ...] = (
    ("--json", {"action": "store_true", "default": argparse.SUPPRESS,
                "help": "print JSON on stdout (and errors as JSON on stderr)"}),
)


def _accept_everywhere(parser: argparse.ArgumentParser) -> None:
    """Add the ``_EVERYWHERE`` options to every subparser below ``parser``, at any depth.

    Their default is SUPPRESS, so an option given before the command is not
    reset by a subparser that did not see it.
    """
    seen: set[int] = set()
    todo = [parser]
    while todo:
        p = todo.pop()
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    if id(sub) in seen:
                        continue
                    seen.add(id(sub))
                    for flag, kwargs in _EVERYWHERE:
                        if flag not in sub._option_string_actions:
                            sub.add_argument(flag, **kwargs)
                    todo.append(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pinfold",
        description="pinfold: a peer-to-peer block storage daemon that keeps every pin "
        "at replication factor k.",
    )
    parser.add_argument("--home", help="home directory (default $PINFOLD_HOME or ~/.pinfold)")
    parser.add_argument("--json", action="store_true", help="print JSON on stdout")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def cmd(name: str, help_: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_, description=help_)

    p = cmd("init", "create the home: config.toml with defaults and the identity key "
            "(on an existing home, only the one that is missing)")
    p.add_argument("--listen", action="append", metavar="MULTIADDR", help="libp2p listen address")
    p.add_argument("--metrics", metavar="ADDR", help='metrics HOST:PORT ("" = off)')
    p.add_argument("--gateway", metavar="ADDR",
                   help='HTTP gateway HOST:PORT ("" = off, port 0 = any free port)')
    p.add_argument("--cluster", metavar="NAME", help="cluster name")
    p.add_argument("--bootstrap", action="append", metavar="MULTIADDR", help="peer to dial")

    p = cmd("daemon", "run the node in the foreground")
    p.add_argument("--allow-empty-store", action="store_true",
                   help="start even though the store this home used is missing or was "
                        "replaced by an empty one (its data is not coming back)")
    cmd("id", "peer ID, listen addresses, version")

    p = cmd("add", "add a file or directory; prints the root CID")
    p.add_argument("path", help="file, directory (with -r) or - for standard input")
    p.add_argument("-r", "--recursive", action="store_true", help="add a directory tree")
    p.add_argument("-L", "--dereference", action="store_true",
                   help="with -r: follow symbolic links and store what they point to "
                   "(default: store relative links into the tree as links)")
    # `--pin` stays a plain flag (`add --pin FILE` keeps working); argparse matches a
    # whole option string before splitting at "=", so `--pin=false` is its own flag.
    p.add_argument("--pin", dest="pin", action="store_true", default=True,
                   help="pin the root (the default; cluster-wide in a cluster)")
    p.add_argument("--pin=false", dest="pin", action="store_false",
                   help="only store the blocks, do not pin (as Kubo's add --pin=false)")
    p.add_argument("--pin=true", dest="pin", action="store_true", help=argparse.SUPPRESS)
    _replication_options(p)
    _wait_options(p)
    p.add_argument("--name", help="pin name (shown by pin ls and pin status)")
    p.add_argument("--chunk-size", type=_positive_int, metavar="BYTES")
    p.add_argument("--cid-version", type=int, choices=(0, 1))
    p.add_argument("--raw-leaves", type=_bool, metavar="BOOL")
    p.add_argument("--max-links", type=_positive_int, metavar="N")

    p = cmd("cat", "write a file's bytes to stdout")
    p.add_argument("cid", metavar="CID[/PATH]")
    p.add_argument("--offset", type=_nonneg_int, default=0,
                   help="first byte to write (only the blocks the range covers are read)")
    p.add_argument("--length", type=_nonneg_int, help="bytes to write at most")
    _timeout_option(p, "fetching the file")

    p = cmd("get", "write a file or directory tree to disk")
    p.add_argument("cid", metavar="CID[/PATH]")
    p.add_argument("-o", "--output", metavar="PATH",
                   help="a new path or an empty folder (default: the CID); - writes a "
                   "file to stdout")
    _timeout_option(p, "fetching the DAG")

    p = cmd("ls", "list a directory (name, type, size, CID); a file lists as itself")
    p.add_argument("path", metavar="CID[/PATH]")
    p.add_argument("-r", "--recursive", action="store_true",
                   help="every entry below, with its path")

    p = cmd("stat", "type, size, block count and how much of it is stored here")
    p.add_argument("path", metavar="CID[/PATH]")

    block = cmd("block", "raw blocks").add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
    p = block.add_parser("put", help="store a file as one block; prints its CID")
    p.add_argument("file", help="path or -")
    p.add_argument("--codec", choices=("raw", "dag-pb", "dag-cbor"), default="raw")
    p.add_argument("--cid-version", type=int, choices=(0, 1), default=1)
    p = block.add_parser("get", help="write a block's bytes to stdout")
    p.add_argument("cid")
    p = block.add_parser("stat", help="a block's size")
    p.add_argument("cid")
    p = block.add_parser("rm", help="remove an unpinned block")
    p.add_argument("cid")

    dag = cmd("dag", "DAGs as CAR files").add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
    p = dag.add_parser("import", help="import a CAR v1 file and pin its roots")
    p.add_argument("file", help="path or -")
    p.add_argument("--pin-roots", type=_bool, default=True, metavar="BOOL")
    p = dag.add_parser("export", help="export a DAG as a CAR v1 file")
    p.add_argument("cid", metavar="CID[/PATH]")
    p.add_argument("-o", "--output", metavar="FILE.car",
                   help="default or -: stdout; an existing file needs --force")
    p.add_argument("-f", "--force", action="store_true", help="overwrite an existing -o FILE")

    pin = cmd("pin", "pins").add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
    p = pin.add_parser("add", help="pin a CID, or the CID a CID/PATH names "
                       "(fetching it if needed)")
    p.add_argument("cid", metavar="CID[/PATH]")
    _replication_options(p)
    _wait_options(p)
    p.add_argument("--name")
    p.add_argument("--direct", action="store_true", help="pin only the root block")
    p.add_argument("--expire-in", type=_positive_seconds, metavar="SECONDS")
    _timeout_option(p, "fetching the DAG (standalone; in a cluster the holders fetch later)")
    p = pin.add_parser("rm", help="unpin a CID (refused for the root of a live version "
                       "of a name: use `versions rm NAME@N`)")
    p.add_argument("cid")
    p.add_argument("--force", action="store_true",
                   help="unpin even the root of a live version (`repo gc` then deletes it)")
    p = pin.add_parser("ls", help="list pins (--all: with the pins of name records)")
    p.add_argument("--state", choices=PIN_STATES,
                   help="only pins in this local state (error: failed pins, with the reason)")
    p.add_argument("--all", action="store_true", dest="records",
                   help="also the pins that carry name records (name:NAME version N, "
                   "tag, retire, grant, claim), hidden by default")
    p = pin.add_parser("status", help="holders, states and achieved availability of a pin")
    p.add_argument("cid")

    repo = cmd("repo", "the local store").add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
    repo.add_parser("stat", help="blocks, bytes, pins, map usage")
    repo.add_parser("gc", help="delete blocks no pin holds")
    p = repo.add_parser("verify", help="re-hash every block")
    p.add_argument("--heal", action="store_true", help="drop corrupt blocks and re-fetch them")

    peers = cmd("peers", "libp2p peers").add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
    peers.add_parser("ls", help="connected peers")
    p = peers.add_parser("connect", help="dial a peer")
    p.add_argument("multiaddr")
    p = peers.add_parser("disconnect", help="close connections to a peer")
    p.add_argument("peer_id")

    cluster = cmd("cluster", "the cluster").add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
    cluster.add_parser("peers", help="cluster peers: state, availability, capacity")
    cluster.add_parser("status", help="pins under-replicated, repairing, in error")

    p = cmd("recover", "retry pins in error")
    p.add_argument("cid", nargs="?")
    p.add_argument("--all", action="store_true")

    p = cmd("simulate", "measure availability with the real planner on a simulated clock")
    p.add_argument("--nodes", type=_positive_int, default=10)
    p.add_argument("--p", type=_online_fractions, default=0.9, metavar="P[,P...]",
                   help="each node's online fraction, or one value per node (comma-separated)")
    p.add_argument("--k", type=_positive_int, default=None,
                   help="replication factor (default 3, at most --nodes)")
    p.add_argument("--target", "--availability", dest="target", type=_probability, metavar="P",
                   help="target availability instead of --k")
    p.add_argument("--rmax", type=_positive_int, default=None, help="holders allocated at most")
    p.add_argument("--pins", type=_positive_int, default=200)
    p.add_argument("--repair", type=_bool, default=True, metavar="BOOL")
    p.add_argument("--duration", type=_positive_float, default=None, metavar="SECONDS",
                   help="simulated time")
    p.add_argument("--session", type=_positive_float, default=None, metavar="SECONDS",
                   help="mean online session length (offline: session x (1 - p) / p)")
    p.add_argument("--session-dist", choices=("exponential", "fixed"), default=None,
                   help="session length distribution")
    p.add_argument("--grace", type=_nonneg_float, default=None, metavar="SECONDS",
                   help="repair grace after a peer turns suspect")
    p.add_argument("--heartbeat", type=_positive_float, default=None, metavar="SECONDS",
                   help="heartbeat interval (suspect after 2 x this)")
    p.add_argument("--repair-bandwidth", type=_positive_float, default=None, metavar="BYTES/S",
                   help="a node's fetch speed for repairs")
    p.add_argument("--pin-size", type=_nonneg_int, default=None, metavar="BYTES",
                   help="size of every pinned DAG")
    p.add_argument("--p-prior", type=_probability, default=None, metavar="P",
                   help="availability assumed for a node before it is observed")
    p.add_argument("--confidence", type=_probability, default=None, metavar="C",
                   help="confidence level of the interval (default 0.99)")
    p.add_argument("--seed", type=int, default=0)

    _name_commands(cmd)
    cmd("shutdown", "stop the daemon")
    _accept_everywhere(parser)
    return parser

