"""Commands that move content in and out or look at it: ``add``, ``cat``, ``get``,
``ls``, ``stat`` and the ``block`` and ``dag`` subcommands. ``cat``, ``get``,
``ls``, ``stat`` and ``dag export`` take ``CID`` or ``CID/path/in/dag``.

Imports the CLI's local I/O, the pin helpers (``add --pin``), the client's
``ref_basename`` and nothing of the daemon: the work is done through the ``Client``.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from pinfold.daemon.cli.commands.base import subcommands
from pinfold.daemon.cli.commands.pins import (
    pin_summary,
    pin_with_wait,
    replication_kwargs,
    wait_kwargs,
)
from pinfold.daemon.cli.localio import Output, read_input, write_file, write_stdout
from pinfold.daemon.cli.parser import UsageError
from pinfold.client_paths import ref_basename
from pinfold.daemon.cli.progressbar import TransferBar


def add(c, args: argparse.Namespace, out: Output) -> int:
    """``pinfold add PATH``: add a file, stdin or (``-r``) a folder; prints the root CID."""
    opts: dict[str, Any] = {}
    for key in ("chunk_size", "cid_version", "raw_leaves", "max_links", "name"):
        if getattr(args, key) is not None:
            opts[key] = getattr(args, key)
    repl = replication_kwargs(args)
    wait = wait_kwargs(args)
    if (repl or wait) and not args.pin:
        raise UsageError("--pin=false cannot be combined with replication or --wait options")
    if args.name is not None and not args.pin:
        raise UsageError("--name names the pin: it cannot be combined with --pin=false")
    pin = args.pin
    path = args.path
    if path != "-" and os.path.isdir(path):
        if not args.recursive:
            raise UsageError(f"{path} is a directory: use -r to add it")
        with TransferBar("add") as bar:
            res = c.add_dir(path, pin=pin, dereference=args.dereference,
                            progress=bar.advance if bar.enabled else None, **repl, **opts)
    else:
        total = None if path == "-" else os.path.getsize(path)
        with TransferBar("add", total=total) as bar:
            res = c.add_stream(read_input(path), pin=pin,
                               progress=bar.advance if bar.enabled else None, **repl, **opts)
    if "pin" in res:
        try:
            res["pin"] = pin_with_wait(c, res["cid"], wait, res["pin"])
        except Exception:
            # The content is added and pinned whatever the wait says: stdout gets the
            # CID (scripts read it) before the wait's error goes to stderr.
            out.doc(res, res["cid"])
            raise
        if not out.json and "holders_pinned" in res["pin"]:
            # stdout stays the CID alone (scripts read it); the pin's state goes beside it.
            print(pin_summary(res["cid"], res["pin"]), file=sys.stderr)
    out.doc(res, res["cid"])  # the CID alone, for `CID=$(pinfold add FILE)`
    return 0


def cat(c, args: argparse.Namespace, out: Output) -> int:
    """``pinfold cat CID[/PATH]``: a file's bytes (or a range of them) on stdout; a progress
    bar on stderr when it is a terminal and stdout is not."""
    with TransferBar("cat", content_on_stdout=True) as bar:
        kw = {"offset": args.offset, "length": args.length, "timeout": args.timeout,
              "on_progress": bar.on_event}
        if sys.stdout.isatty():
            write_stdout(c.cat(args.cid, **kw))
            return 0
        # A file or pipe: the daemon writes to our stdout directly.
        sys.stdout.flush()
        try:
            c.cat_to_fd(args.cid, sys.stdout.fileno(), **kw)
        except Exception as exc:
            if getattr(exc, "code", None) == "output_closed":
                return 0  # like `cat | head`: the reader had enough
            raise
    return 0


def get(c, args: argparse.Namespace, out: Output) -> int:
    """``pinfold get CID[/PATH] [-o PATH]``: a file or directory tree written to disk
    (by default under the last name of the path, or the CID)."""
    if args.output == "-":  # a file's bytes to stdout, as `cat`
        with TransferBar("get", content_on_stdout=True) as bar:
            write_stdout(c.cat(args.cid, timeout=args.timeout, on_progress=bar.on_event))
        return 0
    target = args.output or ref_basename(args.cid)
    with TransferBar("get") as bar:
        res = c.get(args.cid, target, timeout=args.timeout, on_progress=bar.on_event)
    out.doc(res, f"saved {res['cid']} to {res.get('path', target)}")
    return 0


def _size_text(size: Any) -> str:
    return "-" if size is None else str(size)


def ls(c, args: argparse.Namespace, out: Output) -> int:
    """``pinfold ls CID[/PATH] [-r]``: one line per entry, ``CID SIZE TYPE NAME``
    (as ``ipfs ls``; ``-r``: the path below the listed directory instead of the name)."""
    def fmt(e: dict[str, Any]) -> str:
        name = e.get("path", e["name"]) + ("/" if e["type"] == "dir" else "")
        return f"{e['cid']} {_size_text(e['size']):>12} {e['type']:<7} {name}"

    out.lines(c.ls(args.path, recursive=args.recursive), fmt)
    return 0


def stat(c, args: argparse.Namespace, out: Output) -> int:
    """``pinfold stat CID[/PATH]``: type, size, blocks, and how much is here."""
    res = c.stat(args.path)
    blocks = str(res["blocks"]) + ("" if res["blocks_exact"] else "+ (missing blocks hide more)")
    here = "complete" if res["complete"] else "incomplete"
    out.doc(res, "\n".join([
        f"path:   {res['path']}", f"cid:    {res['cid']}", f"type:   {res['type']}",
        f"size:   {_size_text(res['size'])}", f"blocks: {blocks}",
        f"local:  {res['local_blocks']} blocks, {res['local_bytes']} bytes ({here})"]))
    return 0


def block_put(c, args: argparse.Namespace, out: Output) -> int:
    limit = 2 * 1024 * 1024  # Bitswap's block limit; refuse before reading more
    data = bytearray()
    for chunk in read_input(args.file):
        data += chunk
        if len(data) > limit:
            raise ValueError(f"{args.file}: block exceeds the limit of {limit} bytes "
                             "(use `pinfold add` for larger files)")
    res = c.block_put(bytes(data), codec=args.codec, cid_version=args.cid_version)
    out.doc(res, res["cid"])
    return 0


def block_get(c, args: argparse.Namespace, out: Output) -> int:
    sys.stdout.buffer.write(c.block_get(args.cid))
    sys.stdout.buffer.flush()
    return 0


def block_stat(c, args: argparse.Namespace, out: Output) -> int:
    res = c.block_stat(args.cid)
    out.doc(res, f"{res['cid']} {res['size']}")
    return 0


def block_rm(c, args: argparse.Namespace, out: Output) -> int:
    res = c.block_rm(args.cid)
    out.doc(res, f"removed {res['cid']}")
    return 0


def dag_import(c, args: argparse.Namespace, out: Output) -> int:
    res = c.dag_import_stream(read_input(args.file), pin_roots=args.pin_roots)
    out.doc(res, "\n".join(f"imported root {r}" for r in res["roots"])
            + f"\n{res['blocks']} blocks, {res['bytes']} bytes")
    return 0


def dag_export(c, args: argparse.Namespace, out: Output) -> int:
    chunks = c.dag_export(args.cid)
    if args.output and args.output != "-":
        n = write_file(args.output, chunks, force=args.force)
        out.doc({"cid": args.cid, "bytes": n, "path": args.output},
                f"exported {args.cid} to {args.output} ({n} bytes)")
    else:
        write_stdout(chunks)
    return 0


block = subcommands("block", {"put": block_put, "get": block_get, "stat": block_stat,
                              "rm": block_rm})
dag = subcommands("dag", {"import": dag_import, "export": dag_export})
