"""Commands about pins: the ``pin`` subcommands and ``recover``, and the
replication and ``--wait`` options that ``add`` shares with ``pin add``.

Imports the CLI's parser and output; the work is done through the ``Client``.
"""

from __future__ import annotations

import argparse
from typing import Any

from pinfold.daemon.cli.commands.base import subcommands
from pinfold.daemon.cli.format import EXIT_ERROR
from pinfold.daemon.cli.localio import Output, WaitProgress
from pinfold.daemon.cli.parser import UsageError
from pinfold.daemon.cli.progressbar import TransferBar


def replication_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """``--replicas/--rmin/--rmax/--availability`` as ``Client.pin`` keywords.

    Raises:
        UsageError: a combination that contradicts itself.
    """
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


def wait_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """``--wait/--wait-timeout`` as ``{"wait": True, "wait_timeout": s}``, or ``{}``."""
    if not (args.wait or args.wait_timeout is not None):
        return {}
    return {"wait": True, "wait_timeout": args.wait_timeout}


def pin_summary(cid: str, pin: dict[str, Any]) -> str:
    """What is true of a pin just written: pinned, or queued with N of rmin holders."""
    if "holders_pinned" not in pin:
        return f"pinned {cid} {pin.get('mode', '')}".rstrip()
    n, want = pin["holders_pinned"], pin["holders_wanted"]
    if n >= want:
        return f"pinned {cid}; {n} of {want} holders pinned"
    return f"queued {cid}; {n} of {want} holders pinned (--wait waits for them)"


def pin_with_wait(c, cid: str, wait: dict[str, Any], pin: dict[str, Any]) -> dict[str, Any]:
    """After ``pin`` was written: wait for its holders as ``wait`` asks (CLI progress)."""
    if not wait:
        return pin
    progress = WaitProgress()
    try:
        status = c.wait_pinned(cid, timeout=wait["wait_timeout"], progress=progress)
    finally:
        progress.close()
    return {**pin, "status": status, "holders_pinned": status["healthy"]}


def _pin_state_text(item: dict[str, Any], blocks_key: str = "blocks",
                    present_key: str = "blocks_present") -> str:
    """A pin's state as shown: ``pinned``, ``incomplete: 3 of 5 blocks``, ``pin_error``..."""
    if item.get(present_key) is not None and item.get(blocks_key) is not None \
            and item[present_key] < item[blocks_key]:
        return f"incomplete: {item[present_key]} of {item[blocks_key]} blocks"
    return str(item.get("state", ""))


def _version_label(versions: list[dict[str, Any]]) -> str:
    """``'org/m@2' [main], 'org/m@1'``: the live versions at a root with their
    tags; only when all are retired, those with ``(retired)``."""
    live = [v for v in versions if not v["retired"]]
    return ", ".join(
        repr(v["ref"]) + (f" [{', '.join(v['tags'])}]" if v["tags"] else "")
        + (" (retired)" if v["retired"] else "") for v in live or versions)


def _name_label(p: dict[str, Any]) -> str:
    """A pin's name as ``pin ls`` and ``pin status`` show it: ``'org/m@2' [main]``
    for a version's root (``push`` names the pin NAME; NAME@N says which
    version), with ``(pinned as 'mine')`` when the pin has another name;
    else the pin's name quoted, or ``""``."""
    versions = p.get("versions") or []
    if not versions:
        return repr(p["name"]) if p.get("name") else ""
    text = _version_label(versions)
    if p.get("name") and p["name"] not in {v["name"] for v in versions}:
        text += f" (pinned as {p['name']!r})"
    return text


def _fmt_pin(p: dict[str, Any]) -> str:
    text = f"{p['cid']} {p.get('mode', '')} {_pin_state_text(p)}"
    if label := _name_label(p):
        text += f" name={label}"
    if p.get("error"):
        text += f" error: {p['error']}"
    return text


def pin_add(c, args: argparse.Namespace, out: Output) -> int:
    wait = wait_kwargs(args)
    with TransferBar("pin add") as bar:
        res = c.pin(args.cid, recursive=not args.direct, name=args.name,
                    expire_in=args.expire_in, timeout=args.timeout, on_progress=bar.on_event,
                    **replication_kwargs(args))
    res = pin_with_wait(c, res["cid"], wait, res)
    text = pin_summary(res["cid"], res)
    if res.get("path"):  # a CID/PATH: the CID it names was pinned
        text += f" (resolved from {res['path']})"
    out.doc(res, text)
    return 0


def pin_rm(c, args: argparse.Namespace, out: Output) -> int:
    res = c.unpin(args.cid, force=args.force)
    out.doc(res, f"unpinned {res['cid']}")
    return 0


def pin_ls(c, args: argparse.Namespace, out: Output) -> int:
    """``pinfold pin ls [--state S] [--all]``: pins; name-record pins with ``--all``."""
    out.lines(c.pins(state=args.state, records=args.records), _fmt_pin)
    return 0


def pin_status(c, args: argparse.Namespace, out: Output) -> int:
    res = c.status(args.cid)
    lines = [f"cid: {res['cid']}"]
    if res.get("versions"):
        lines.append(f"name: {_name_label(res)}")
    elif res.get("name"):
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
    return 0


pin = subcommands("pin", {"add": pin_add, "rm": pin_rm, "ls": pin_ls, "status": pin_status})


def recover(c, args: argparse.Namespace, out: Output) -> int:
    """``pinfold recover CID|--all``: retry pins in error; exit 1 if a retry failed."""
    if not args.all and not args.cid:
        raise UsageError("recover needs a CID or --all")
    res = c.recover(None if args.all else args.cid)
    retried = res.get("pins", [{"cid": x} for x in res.get("cids", [])])
    out.doc(res, f"retrying {len(retried)} pin(s)" + "".join(
        f"\n  {p['cid']}" + (f" (last error: {p['error']})" if p.get("error") else "")
        + (f": {p['result']}" if p.get("result") else "") for p in retried))
    if any(str(p.get("result", "")).startswith("failed") for p in retried):
        return EXIT_ERROR
    return 0
