"""Commands for names (DESIGN.md "Names"): ``push``, ``pull``, ``tag``,
``versions`` (and ``versions rm``), ``names``, ``name grant`` and ``key``
(``gen``/``ls``: keys are files of the daemon's home).

The work is done through the ``Client`` (``pinfold/client_names.py``).
"""

from __future__ import annotations

import argparse
import datetime
import errno
import os
import sys
from pathlib import Path
from typing import Any

from pinfold.daemon.cli.commands.base import subcommands
from pinfold.daemon.cli.commands.pins import pin_summary, replication_kwargs, wait_kwargs
from pinfold.daemon.cli.localio import Output
from pinfold.daemon.cli.progressbar import TransferBar
from pinfold.daemon.cli.parser import UsageError


def _meta(pairs: list[str] | None) -> dict[str, str]:
    out = {}
    for item in pairs or []:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise UsageError(f"--meta {item!r}: use KEY=VALUE")
        out[k] = v
    return out


def push(c, args: argparse.Namespace, out: Output) -> int:
    """``pinfold push NAME PATH``: a new version of NAME; prints ``NAME@N CID``.
    A missing PATH is exit 1 as for ``add``, or a usage error saying the order
    when NAME is the local path (the arguments swapped)."""
    repl = replication_kwargs(args)
    if "rmin" in repl and repl.get("rmin") != repl.get("rmax"):
        raise UsageError("push takes --replicas N or --availability P")
    wait = wait_kwargs(args)
    if not Path(args.path).exists():
        if Path(args.name).exists():
            # `push ./model org/m`: the arguments are swapped (usage, exit 2).
            raise UsageError(f"push {args.name} {args.path}: {args.path!r} is not a file or "
                             f"folder, but {args.name!r} is: the order is "
                             f"`pinfold push NAME PATH`, e.g. "
                             f"`pinfold push {args.path} {args.name}`")
        # As `add`: a missing input file is exit 1 (format.EXIT_CODES), not bad usage.
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), args.path)
    with TransferBar("push") as bar:
        res = c.push(args.name, args.path, tags=args.tag, message=args.message or "",
                     meta=_meta(args.meta), move_main=not args.no_main,
                     replicas=repl.get("rmin"), availability=repl.get("availability"),
                     key=args.key, progress=bar.advance, **wait)
    if not out.json and res.get("pin") and "holders_pinned" in res["pin"]:
        print(pin_summary(res["cid"], res["pin"]), file=sys.stderr)
    tags = f" ({', '.join(res['tags'])})" if res["tags"] else ""
    out.doc(res, f"{res['name']}@{res['version']} {res['cid']}{tags}")
    return 0


def pull(c, args: argparse.Namespace, out: Output) -> int:
    """``pinfold pull NAME[@REF] [-o DIR | --hf-cache [DIR]]``."""
    if args.hf_cache is not None and args.output is not None:
        raise UsageError("-o and --hf-cache are exclusive")
    hf: Any = None
    if args.hf_cache is not None:
        hf = True if args.hf_cache == "" else args.hf_cache
    with TransferBar("pull") as bar:
        res = c.pull(args.ref, args.output, hf_cache=hf, progress=bar.advance)
    out.doc(res, f"pulled {res['name']}@{res['version']} ({res['cid']}) to {res['path']}")
    return 0


def tag(c, args: argparse.Namespace, out: Output) -> int:
    """``pinfold tag NAME@VERSION TAG``: move TAG (``NAME@TAG`` also names a version;
    ``NAME`` alone is a usage error: which version was meant is not said)."""
    if "@" not in args.ref:
        raise UsageError(f"tag {args.ref} {args.tag}: name the version to tag, "
                         f"e.g. `pinfold tag {args.ref}@1 {args.tag}` (NAME@VERSION or "
                         "NAME@TAG)")
    res = c.tag(args.ref, args.tag, key=args.key)
    out.doc(res, f"{res['name']}@{res['tag']} -> version {res['version']}")
    return 0


def _when(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).strftime("%Y-%m-%d %H:%M")


def _retired_text(res: dict[str, Any]) -> str:
    """What ``versions rm`` did, and the root's pin as it is now."""
    ref, cid = f"{res['name']}@{res['version']}", res["cid"]
    head = f"{ref} was already retired" if res.get("already_retired") else f"retired {ref}"
    shared = res.get("shared_with") or []
    if res.get("unpinned"):
        pin = f"unpinned {cid}"
    elif shared:
        which = ", ".join(map(str, shared))
        pin = f"{cid} stays pinned: version{'s' if len(shared) > 1 else ''} {which} " \
              "has the same root"
    elif res.get("pinned"):
        pin = f"{cid} is still pinned"
    else:
        pin = f"{cid} is not pinned"
    tags = res.get("tags") or []
    if not tags:
        return f"{head} ({pin})"
    # Only with --force (or a version retired so before): say what now dangles.
    many = len(tags) > 1
    return (f"{head} ({pin}); tag{'s' if many else ''} {', '.join(tags)} still "
            f"point{'' if many else 's'} at this retired version: move "
            f"{'them' if many else 'it'} with `pinfold tag {res['name']}@N TAG`")


def versions(c, args: argparse.Namespace, out: Output) -> int:
    """``pinfold versions NAME``: the history, newest first; ``versions NAME@REF``:
    only the version REF (a number or a tag) names."""
    words = args.words
    if len(words) > 2 or (len(words) == 2 and words[0] != "rm"):
        raise UsageError("use `versions NAME[@VERSION|@TAG]` or "
                         "`versions rm [--force] NAME@VERSION`")
    if len(words) == 2:
        res = c.retire(words[1], key=args.key, force=args.force)
        out.doc(res, _retired_text(res))
        return 0
    if args.force:
        raise UsageError("--force goes with `versions rm NAME@VERSION`")
    res = c.versions(words[0])
    lines = [f"{res['name']} (creator {res['creator']})"]
    lines += [line for v in res["versions"] for line in _version_lines(v)]
    out.doc(res, "\n".join(lines))
    return 0


def _version_lines(v: dict[str, Any]) -> list[str]:
    """One version of ``versions``: its number, the tags at it now, ``retired``
    (with whether its root is still pinned), then its CID, size, time, holders,
    publisher and message. A tag that moved on from it (a push moving ``main``)
    leaves no mark: the version is as good as it was. Only a tag move to it
    that lost to a concurrent move (same Lamport clock: a race between
    publishers) gets a line, since someone meant the tag to be here."""
    tags = f" [{', '.join(v['tags'])}]" if v["tags"] else ""
    state = ""
    if v["retired"]:
        state = " retired (root still pinned)" if v["holders"] else " retired (not pinned)"
    lines = [f"  {v['version']:>4}{tags}{state}  {v['cid']}  {v['size']} B  "
             f"{_when(v['time_ms'])}  holders {len(v['holders'])} "
             f"avail {v['availability']:.4g}  by {v['publisher'][-8:]}  {v['message']}"]
    for s in v["superseded"]:
        if s.get("concurrent"):
            lines.append(f"        ({s['tag']} was moved here by {s['publisher'][-8:]} at "
                         f"{_when(s['time_ms'])}; a concurrent move to version "
                         f"{s['moved_to']} won)")
    return lines


def _name_line(n: dict[str, Any]) -> str:
    """One name of ``names``: ``org/m  v4  3 live versions (1 retired)  main=4
    stable=1``: ``v4`` is the newest live version, the count is of live versions,
    and a tag left at a retired version (``versions rm --force``) says so; with
    every version retired, ``no live version (2 retired)``."""
    live, retired = n["versions"], n.get("retired", 0)
    if n["latest"] is None:
        count = f"no live version ({retired} retired)"
    elif retired:
        count = f"v{n['latest']}  {live} live version{'' if live == 1 else 's'} " \
                f"({retired} retired)"
    else:
        count = f"v{n['latest']}  {live} version{'' if live == 1 else 's'}"
    stale = set(n.get("retired_tags", ()))  # moved onto a retired version: `versions rm --force`
    tags = " ".join(f"{t}={v}" + (" (retired)" if t in stale else "")
                    for t, v in n["tags"].items())
    return f"{n['name']}  {count}" + (f"  {tags}" if tags else "")


def names(c, args: argparse.Namespace, out: Output) -> int:
    """``pinfold names``: every name, its newest live version, how many versions
    are live (and retired) and its tags."""
    items = list(c.names())
    out.doc({"names": items}, "\n".join(_name_line(n) for n in items))
    return 0


def name_grant(c, args: argparse.Namespace, out: Output) -> int:
    res = c.grant(args.name, args.grantee, key=args.key)
    out.doc(res, f"granted {res['name']} to {res['grantee']}")
    return 0


name = subcommands("name", {"grant": name_grant})


def key_gen(c, args: argparse.Namespace, out: Output) -> int:
    """``pinfold key gen NAME``: a new named key in the daemon's home; prints its ID."""
    res = c.key_gen(args.key_name)
    out.doc(res, res["id"])
    return 0


def key_ls(c, args: argparse.Namespace, out: Output) -> int:
    """``pinfold key ls``: the node's key (``self``) and the named keys."""
    keys = c.keys()
    out.doc({"keys": keys}, "\n".join(f"{k['name']}  {k['id']}" for k in keys))
    return 0


key = subcommands("key", {"gen": key_gen, "ls": key_ls})
