"""``make run``: a node in the foreground, on loopback, on ports that are free.

On a shared machine the embedded defaults (``/ip4/0.0.0.0/tcp/4101``, metrics
on ``127.0.0.1:9401``) expose the node to the network and collide with anyone
else's node. For a home without ``config.toml`` this initialises one listening
on 127.0.0.1 only, on port 4101, metrics 9401 and gateway 8080 when they are free, else on a
free port the kernel picks (said on stderr), then runs ``pinfold daemon``. A
home that has a config is run as it is; the daemon names the key to change if
its port is taken.

Usage: ``python tools/run_node.py --home DIR [--pinfold PATH] [--p2p-port N]
[--metrics-port N] [--gateway-port N]`` (the ports wanted, 4101, 9401 and 8080
by default).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from pathlib import Path

#: The ports the README's walkthrough uses when they are free.
P2P_PORT = 4101
METRICS_PORT = 9401
GATEWAY_PORT = 8080


def free_port(preferred: int, host: str = "127.0.0.1") -> int:
    """``preferred`` if nothing listens on ``host:preferred``, else a free port the kernel picks."""
    for port in (preferred, 0):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise OSError(f"no free TCP port on {host}")


def init_args(p2p_port: int, metrics_port: int, gateway_port: int = GATEWAY_PORT) -> list[str]:
    """The ``pinfold init`` options of a loopback node on these ports."""
    return ["--listen", f"/ip4/127.0.0.1/tcp/{p2p_port}", "--metrics", f"127.0.0.1:{metrics_port}",
            "--gateway", f"127.0.0.1:{gateway_port}"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", required=True, type=Path)
    ap.add_argument("--pinfold", default=str(Path(sys.executable).with_name("pinfold")))
    ap.add_argument("--p2p-port", type=int, default=P2P_PORT, help="libp2p port when free")
    ap.add_argument("--metrics-port", type=int, default=METRICS_PORT, help="metrics port when free")
    ap.add_argument("--gateway-port", type=int, default=GATEWAY_PORT, help="gateway port when free")
    args = ap.parse_args(argv)
    home = args.home.expanduser()
    if not (home / "config.toml").exists():
        p2p, metrics = free_port(args.p2p_port), free_port(args.metrics_port)
        gateway = free_port(args.gateway_port)
        for want, got, what in ((args.p2p_port, p2p, "libp2p"),
                                (args.metrics_port, metrics, "metrics"),
                                (args.gateway_port, gateway, "gateway")):
            if want != got:
                print(f"make run: port {want} ({what}) is taken on 127.0.0.1; using {got}",
                      file=sys.stderr)
        done = subprocess.run([args.pinfold, "--home", str(home), "init",
                               *init_args(p2p, metrics, gateway)], check=False)
        if done.returncode != 0:
            return done.returncode
        print(f"make run: {home} listens on 127.0.0.1:{p2p} only (set node.listen in "
              f"{home / 'config.toml'} to accept other machines); metrics on "
              f"http://127.0.0.1:{metrics}/metrics; gateway on http://127.0.0.1:{gateway}/ipfs/",
              file=sys.stderr)
    os.execv(args.pinfold, [args.pinfold, "--home", str(home), "daemon"])
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
