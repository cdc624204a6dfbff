"""The ``pinfold`` command line (DESIGN.md, Interface).

Every command and subcommand takes ``--json`` (anywhere on the line) and then
prints one JSON document (JSON lines for listings) on stdout. Errors go to
stderr as one line, ``pinfold: error: ...``, or with ``--json`` as
``{"error": {"code": ..., "message": ...}}``; the exit status follows the
table in ``errors.py`` (1 error, 2 usage, 3 no daemon, 4 not found, 5 timeout,
6 store full, 7 refused). Never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pinfold.daemon.cli.format import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_NO_DAEMON, EXIT_USAGE  # noqa: F401


def _bool(text: str) -> bool:
    low = text.lower()
    if low in ("true", "1", "yes", "on"):
        return True
    if low in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


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


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors raise ``UsageError`` (so ``main`` reports
    them, as JSON with ``--json``) instead of printing and exiting."""

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
    p.add_argument("cid")
    p.add_argument("--offset", type=_nonneg_int, default=0)
    p.add_argument("--length", type=_nonneg_int)

    p = cmd("get", "write a file or directory tree to disk")
    p.add_argument("cid")
    p.add_argument("-o", "--output", metavar="PATH",
                   help="a new path or an empty folder (default: the CID); - writes a "
                   "file to stdout")

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
    p.add_argument("cid")
    p.add_argument("-o", "--output", metavar="FILE.car",
                   help="default or -: stdout; an existing file needs --force")
    p.add_argument("-f", "--force", action="store_true", help="overwrite an existing -o FILE")

    pin = cmd("pin", "pins").add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
    p = pin.add_parser("add", help="pin a CID (fetching it if needed)")
    p.add_argument("cid")
    _replication_options(p)
    _wait_options(p)
    p.add_argument("--name")
    p.add_argument("--direct", action="store_true", help="pin only the root block")
    p.add_argument("--expire-in", type=_positive_seconds, metavar="SECONDS")
    p = pin.add_parser("rm", help="unpin a CID")
    p.add_argument("cid")
    p = pin.add_parser("ls", help="list pins")
    p.add_argument("--state", choices=PIN_STATES,
                   help="only pins in this local state (error: failed pins, with the reason)")
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

    cmd("shutdown", "stop the daemon")
    _accept_everywhere(parser)
    return parser


# ---------------------------------------------------------------- output helpers


class Output:
    """Writes results as JSON or as text."""

    def __init__(self, as_json: bool) -> None:
        self.json = as_json

    def doc(self, obj: Any, text: str | None = None) -> None:
        if self.json:
            print(json.dumps(obj, sort_keys=True))
        elif text is not None:
            print(text)
        else:
            for k, v in obj.items():
                print(f"{k}: {v}")

    def lines(self, items: Iterable[dict[str, Any]], fmt) -> int:
        n = 0
        for item in items:
            n += 1
            print(json.dumps(item, sort_keys=True) if self.json else fmt(item), flush=True)
        return n


def _read_input(path: str) -> Iterator[bytes]:
    if path == "-":
        stream = sys.stdin.buffer
        while chunk := stream.read(1 << 20):
            yield chunk
        return
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            yield chunk


def _write_stdout(chunks: Iterable[bytes]) -> int:
    out = sys.stdout.buffer
    n = 0
    for chunk in chunks:
        out.write(chunk)
        n += len(chunk)
    out.flush()
    return n


def _write_file(path: str, chunks: Iterable[bytes], *, force: bool) -> int:
    """Write ``chunks`` to ``path`` through a temporary file renamed at the end; returns bytes.

    An existing ``path`` is refused unless ``force``; on an error (including
    the daemon's) nothing is left behind and an existing file is unchanged.

    Raises:
        FileExistsError: ``path`` exists and ``force`` is False.
        IsADirectoryError: ``path`` is a folder.
    """
    import errno
    import tempfile

    target = Path(path)
    if target.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a directory", path)
    if not force and (target.exists() or target.is_symlink()):
        raise FileExistsError(errno.EEXIST, "already exists; use --force to overwrite it", path)
    if not target.parent.is_dir():
        raise FileNotFoundError(errno.ENOENT, "parent directory does not exist",
                                str(target.parent))
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            n = sum(f.write(chunk) for chunk in chunks)
        if not force and (target.exists() or target.is_symlink()):
            raise FileExistsError(errno.EEXIST, "already exists; use --force to overwrite it",
                                  path)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return n


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class Progress:
    """A progress line on stderr, only when stderr is a terminal."""

    def __init__(self, total: int | None, label: str) -> None:
        self.total = total
        self.label = label
        self.done = 0
        self.enabled = sys.stderr.isatty()
        self._last = 0

    def __call__(self, nbytes: int) -> None:
        self.done += nbytes
        if not self.enabled or self.done - self._last < (8 << 20):
            return
        self._last = self.done
        if self.total:
            pct = 100.0 * self.done / self.total
            sys.stderr.write(f"\r{self.label} {self.done / 2**20:,.0f} / "
                             f"{self.total / 2**20:,.0f} MiB ({pct:5.1f}%)")
        else:
            sys.stderr.write(f"\r{self.label} {self.done / 2**20:,.0f} MiB")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self._last:
            sys.stderr.write("\n")


def _replication_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    if args.replicas is not None and (args.rmin is not None or args.rmax is not None):
        raise UsageError("--replicas cannot be combined with --rmin/--rmax")
    if args.availability is not None and args.replicas is not None:
        raise UsageError("--availability cannot be combined with --replicas")
    out: dict[str, Any] = {}
    if args.replicas is not None:
        out["rmin"] = out["rmax"] = args.replicas
    if args.rmin is not None:
        out["rmin"] = args.rmin
    if args.rmax is not None:
        out["rmax"] = args.rmax
    if "rmin" in out and "rmax" in out and out["rmax"] < out["rmin"]:
        raise UsageError(f"--rmax ({out['rmax']}) must be >= --rmin ({out['rmin']})")
    if args.availability is not None:
        out["availability"] = args.availability
    return out


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


class WaitProgress:
    """``N of M holders pinned`` on stderr while waiting, only when stderr is a terminal."""

    def __init__(self) -> None:
        self.enabled = sys.stderr.isatty()
        self._shown = False

    def __call__(self, item: dict[str, Any]) -> None:
        if not self.enabled:
            return
        busy = [h["state"] for h in item.get("holders", []) if h.get("state") != "pinned"]
        extra = f" ({', '.join(sorted(set(busy)))})" if busy else ""
        sys.stderr.write(f"\r{item['pinned']} of {item['wanted']} holders pinned{extra}\x1b[K")
        sys.stderr.flush()
        self._shown = True

    def close(self) -> None:
        if self._shown:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _wait_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    if not (args.wait or args.wait_timeout is not None):
        return {}
    return {"wait": True, "wait_timeout": args.wait_timeout}


def _pin_summary(cid: str, pin: dict[str, Any]) -> str:
    """What is true of a pin just written: pinned, or queued with N of rmin holders."""
    if "holders_pinned" not in pin:
        return f"pinned {cid} {pin.get('mode', '')}".rstrip()
    n, want = pin["holders_pinned"], pin["holders_wanted"]
    if n >= want:
        return f"pinned {cid}; {n} of {want} holders pinned"
    return f"queued {cid}; {n} of {want} holders pinned (--wait waits for them)"


def _pin_with_wait(c, cid: str, wait: dict[str, Any], pin: dict[str, Any]) -> dict[str, Any]:
    """After ``pin`` was written: wait for its holders as ``wait`` asks (CLI progress)."""
    if not wait:
        return pin
    progress = WaitProgress()
    try:
        status = c.wait_pinned(cid, timeout=wait["wait_timeout"], progress=progress)
    finally:
        progress.close()
    return {**pin, "status": status, "holders_pinned": status["healthy"]}


# ---------------------------------------------------------------- commands


def _client(args: argparse.Namespace):
    from pinfold.client import Client

    return Client(home=args.home)


def run_command(args: argparse.Namespace, out: Output) -> int:
    command = args.command
    if command == "init":
        return _cmd_init(args, out)
    if command == "daemon":
        from pinfold.daemon.node import run_daemon

        return run_daemon(home=args.home, allow_empty_store=args.allow_empty_store)
    if command == "simulate":
        return _cmd_simulate(args, out)

    with _client(args) as c:
        if command == "id":
            info = c.id()
            out.doc(info, "\n".join([f"peer_id: {info['peer_id']}", "addresses:",
                                     *(f"  {a}" for a in info.get("addresses", [])),
                                     f"version: {info.get('version', '')}"]))
        elif command == "add":
            return _cmd_add(c, args, out)
        elif command == "cat":
            if sys.stdout.isatty():
                _write_stdout(c.cat(args.cid, offset=args.offset, length=args.length))
            else:
                # A file or pipe: the daemon writes to our stdout directly.
                sys.stdout.flush()
                try:
                    c.cat_to_fd(args.cid, sys.stdout.fileno(), offset=args.offset,
                                length=args.length)
                except Exception as exc:
                    if getattr(exc, "code", None) == "output_closed":
                        return 0  # like `cat | head`: the reader had enough
                    raise
        elif command == "get":
            if args.output == "-":  # a file's bytes to stdout, as `cat`
                _write_stdout(c.cat(args.cid))
                return 0
            target = args.output or args.cid
            progress = Progress(None, "received")
            try:
                res = c.get(args.cid, target, progress=progress)
            finally:
                progress.close()
            out.doc(res, f"saved {res['cid']} to {res.get('path', target)}")
        elif command == "block":
            return _cmd_block(c, args, out)
        elif command == "dag":
            return _cmd_dag(c, args, out)
        elif command == "pin":
            return _cmd_pin(c, args, out)
        elif command == "repo":
            return _cmd_repo(c, args, out)
        elif command == "peers":
            return _cmd_peers(c, args, out)
        elif command == "cluster":
            return _cmd_cluster(c, args, out)
        elif command == "recover":
            if not args.all and not args.cid:
                raise UsageError("recover needs a CID or --all")
            res = c.recover(None if args.all else args.cid)
            retried = res.get("pins", [{"cid": x} for x in res.get("cids", [])])
            out.doc(res, f"retrying {len(retried)} pin(s)" + "".join(
                f"\n  {p['cid']}" + (f" (last error: {p['error']})" if p.get("error") else "")
                + (f": {p['result']}" if p.get("result") else "") for p in retried))
            if any(str(p.get("result", "")).startswith("failed") for p in retried):
                return EXIT_ERROR
        elif command == "shutdown":
            res = c.shutdown()
            out.doc(res, "daemon stopping")
        else:
            raise UsageError(f"unknown command {command!r}")
    return 0


def _cmd_init(args: argparse.Namespace, out: Output) -> int:
    from pinfold.config import Config, replace

    from pinfold.daemon.home import Home, init_home, resolve_home
    from pinfold.daemon.p2p.identity import load_identity, peer_id_of

    cfg = Config()
    changes: dict[str, dict[str, Any]] = {}
    if args.listen:
        changes.setdefault("node", {})["listen"] = list(args.listen)
    if args.bootstrap:
        changes.setdefault("node", {})["bootstrap"] = list(args.bootstrap)
    if args.metrics is not None:
        changes["metrics"] = {"listen": args.metrics}
    if args.cluster is not None:
        changes["cluster"] = {"name": args.cluster}
    if changes:
        cfg = replace(cfg, **changes)
    root = resolve_home(args.home)
    missing = Home(root=root).missing_parts()
    if changes and "config.toml" not in missing and missing:
        raise UsageError(f"{root / 'config.toml'} exists and is kept: edit it instead of "
                         "passing --listen/--metrics/--cluster/--bootstrap")
    home = init_home(root, cfg)
    peer_id = peer_id_of(load_identity(home.identity_path)).to_base58()
    if len(missing) == 2:
        text = f"initialised {root}\npeer_id: {peer_id}"
    else:
        kept = "identity.key" if missing == ["config.toml"] else "config.toml"
        text = f"created {' and '.join(missing)} in {root} (kept {kept})\npeer_id: {peer_id}"
    out.doc({"home": str(root), "peer_id": peer_id, "config": str(home.config_path),
             "created": missing}, text)
    return 0


def _cmd_simulate(args: argparse.Namespace, out: Output) -> int:
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


def _cmd_add(c, args: argparse.Namespace, out: Output) -> int:
    opts: dict[str, Any] = {}
    for key in ("chunk_size", "cid_version", "raw_leaves", "max_links", "name"):
        if getattr(args, key) is not None:
            opts[key] = getattr(args, key)
    repl = _replication_kwargs(args)
    wait = _wait_kwargs(args)
    if (repl or wait) and not args.pin:
        raise UsageError("--pin=false cannot be combined with replication or --wait options")
    if args.name is not None and not args.pin:
        raise UsageError("--name names the pin: it cannot be combined with --pin=false")
    pin = args.pin
    path = args.path
    if path != "-" and os.path.isdir(path):
        if not args.recursive:
            raise UsageError(f"{path} is a directory: use -r to add it")
        res = c.add_dir(path, pin=pin, dereference=args.dereference, **repl, **opts)
    else:
        total = None if path == "-" else os.path.getsize(path)
        progress = Progress(total, "added")
        try:
            res = c.add_stream(_read_input(path), pin=pin, progress=progress, **repl, **opts)
        finally:
            progress.close()
    if "pin" in res:
        res["pin"] = _pin_with_wait(c, res["cid"], wait, res["pin"])
        if not out.json and "holders_pinned" in res["pin"]:
            # stdout stays the CID alone (scripts read it); the pin's state goes beside it.
            print(_pin_summary(res["cid"], res["pin"]), file=sys.stderr)
    out.doc(res, res["cid"])  # the CID alone, for `CID=$(pinfold add FILE)`
    return 0


def _cmd_block(c, args: argparse.Namespace, out: Output) -> int:
    sub = args.subcommand
    if sub == "put":
        limit = 2 * 1024 * 1024  # Bitswap's block limit; refuse before reading more
        data = bytearray()
        for chunk in _read_input(args.file):
            data += chunk
            if len(data) > limit:
                raise ValueError(f"{args.file}: block exceeds the limit of {limit} bytes "
                                 "(use `pinfold add` for larger files)")
        res = c.block_put(bytes(data), codec=args.codec, cid_version=args.cid_version)
        out.doc(res, res["cid"])
    elif sub == "get":
        sys.stdout.buffer.write(c.block_get(args.cid))
        sys.stdout.buffer.flush()
    elif sub == "stat":
        res = c.block_stat(args.cid)
        out.doc(res, f"{res['cid']} {res['size']}")
    elif sub == "rm":
        res = c.block_rm(args.cid)
        out.doc(res, f"removed {res['cid']}")
    else:
        raise UsageError("block needs a subcommand: put, get, stat, rm")
    return 0


def _cmd_dag(c, args: argparse.Namespace, out: Output) -> int:
    sub = args.subcommand
    if sub == "import":
        res = c.dag_import_stream(_read_input(args.file), pin_roots=args.pin_roots)
        out.doc(res, "\n".join(f"imported root {r}" for r in res["roots"])
                + f"\n{res['blocks']} blocks, {res['bytes']} bytes")
    elif sub == "export":
        chunks = c.dag_export(args.cid)
        if args.output and args.output != "-":
            n = _write_file(args.output, chunks, force=args.force)
            out.doc({"cid": args.cid, "bytes": n, "path": args.output},
                    f"exported {args.cid} to {args.output} ({n} bytes)")
        else:
            _write_stdout(chunks)
    else:
        raise UsageError("dag needs a subcommand: import, export")
    return 0


def _pin_state_text(item: dict[str, Any], blocks_key: str = "blocks",
                    present_key: str = "blocks_present") -> str:
    """A pin's state as shown: ``pinned``, ``incomplete: 3 of 5 blocks``, ``pin_error``..."""
    if item.get(present_key) is not None and item.get(blocks_key) is not None \
            and item[present_key] < item[blocks_key]:
        return f"incomplete: {item[present_key]} of {item[blocks_key]} blocks"
    return str(item.get("state", ""))


def _fmt_pin(p: dict[str, Any]) -> str:
    text = f"{p['cid']} {p.get('mode', '')} {_pin_state_text(p)}"
    if p.get("name"):
        text += f" name={p['name']!r}"
    if p.get("error"):
        text += f" error: {p['error']}"
    return text


def _cmd_pin(c, args: argparse.Namespace, out: Output) -> int:
    sub = args.subcommand
    if sub == "add":
        wait = _wait_kwargs(args)
        res = c.pin(args.cid, recursive=not args.direct, name=args.name,
                    expire_in=args.expire_in, **_replication_kwargs(args))
        res = _pin_with_wait(c, res["cid"], wait, res)
        out.doc(res, _pin_summary(res["cid"], res))
    elif sub == "rm":
        res = c.unpin(args.cid)
        out.doc(res, f"unpinned {res['cid']}")
    elif sub == "ls":
        out.lines(c.pins(state=args.state), _fmt_pin)
    elif sub == "status":
        res = c.status(args.cid)
        lines = [f"cid: {res['cid']}"]
        if res.get("name"):
            lines.append(f"name: {res['name']}")
        if res.get("mode"):
            lines.append(f"mode: {res['mode']}")
        lines += [f"rmin/rmax: {res['rmin']}/{res['rmax']}",
                  f"healthy: {res['healthy']}", f"availability: {res['availability']:.6f}"]
        if res.get("local_blocks_present") is not None:
            lines.append("here: " + _pin_state_text(res, "local_blocks", "local_blocks_present")
                         + f" (now {res.get('local_state', '')})")
        if res.get("target") is not None:
            lines.append(f"target: {res['target']}")
        lines.append("holders:")
        for h in res.get("holders", []):
            extra = [x for x in (h.get("peer_status"),) if x]
            if h.get("p") is not None:
                extra.append(f"p={h['p']:.4f}")
            lines.append(f"  {h['peer_id']} {_pin_state_text(h):<9}"
                         + (f" ({', '.join(extra)})" if extra else ""))
        out.doc(res, "\n".join(lines))
    else:
        raise UsageError("pin needs a subcommand: add, rm, ls, status")
    return 0


def _cmd_repo(c, args: argparse.Namespace, out: Output) -> int:
    sub = args.subcommand
    if sub == "stat":
        out.doc(c.repo_stat())
    elif sub == "gc":
        res = c.repo_gc()
        out.doc(res, f"freed {res['blocks_freed']} blocks, {res['bytes_freed']} bytes")
    elif sub == "verify":
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
    else:
        raise UsageError("repo needs a subcommand: stat, gc, verify")
    return 0


def _cmd_peers(c, args: argparse.Namespace, out: Output) -> int:
    sub = args.subcommand
    if sub == "ls":
        out.lines(c.peers(), lambda p: f"{p['peer_id']} {' '.join(p.get('addresses', []))}")
    elif sub == "connect":
        res = c.connect(args.multiaddr)
        out.doc(res, f"connected {res['peer_id']}")
    elif sub == "disconnect":
        res = c.disconnect(args.peer_id)
        out.doc(res, f"disconnected {res['peer_id']}")
    else:
        raise UsageError("peers needs a subcommand: ls, connect, disconnect")
    return 0


def _cmd_cluster(c, args: argparse.Namespace, out: Output) -> int:
    sub = args.subcommand
    if sub == "peers":
        out.lines(c.cluster_peers(), lambda p: (
            f"{p['peer_id']} {p['state']} p={p.get('p', 0):.3f} "
            f"free={p.get('free_bytes', 0)} pins={p.get('pins', 0)}"))
    elif sub == "status":
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
    else:
        raise UsageError("cluster needs a subcommand: peers, status")
    return 0


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
    """Entry point of the ``pinfold`` console script; returns the exit status (``errors.py``)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    try:
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
