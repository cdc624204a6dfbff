"""Nodes in their own network namespaces, linked only through a fault switch.

``FaultNet(n)`` builds, with iproute2 (needs root or CAP_NET_ADMIN)::

    node i  (netns pf<tag>n<i>)         switch (netns pf<tag>sw)
      eth0 10.213.<i>.2/24  <--veth-->  s<i> 10.213.<i>.1/24
      route 10.213.255.1 via .1         lo 10.213.255.1 (proxy address)

The switch namespace does not forward IP packets, so node i cannot reach node
j's own address: the only path between nodes is the fault proxy
(``tests.support.faultproxy``) listening on ``10.213.255.1:<7100 + j>`` in the switch,
which forwards to ``10.213.<j>.2:4101`` and tells links apart by the source
address. Every node announces its proxy address (``node.announce``), so cluster
peers, heartbeats and redials all go through the switch. The netem qdisc is
not available on this kernel, so faults are injected in the proxy (see its
docstring); this is the "TCP proxy" variant of the campaign, on real
namespaced links.

RPC still works from the test process: the daemons' sockets are filesystem
paths, which network namespaces do not separate.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Self

from tests.support.daemon import PYTHON, DaemonProcess

PROXY_IP = "10.213.255.1"
NODE_PORT = 4101
PROXY_PORT0 = 7100
PREFIX = "pf"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def available() -> str | None:
    """Why namespaces cannot be built here, or None if they can."""
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_NET_ADMIN)"
    probe = f"{PREFIX}probe{os.getpid()}"
    res = _ip("netns", "add", probe, check=False)
    if res.returncode != 0:
        return f"`ip netns add` failed: {res.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


def sweep_stale() -> None:
    """Delete namespaces left by runs whose process is gone (a killed test run)."""
    res = _ip("netns", "list", check=False)
    for line in res.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if not name.startswith(PREFIX) or "x" not in name:
            continue
        pid = name[len(PREFIX):].split("x", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            _ip("netns", "del", name, check=False)


class FaultNet:
    """``n`` namespaced nodes and the fault switch between them (module docstring).

    Use as a context manager; ``close`` deletes every namespace it made.
    """

    def __init__(self, n: int, *, seed: int, log_dir: Path) -> None:
        self.n = n
        self.seed = seed
        tag = f"{os.getpid()}x{id(self) % 100000}"
        self.switch_ns = f"{PREFIX}{tag}sw"
        self.node_ns = [f"{PREFIX}{tag}n{i}" for i in range(n)]
        self.log_dir = log_dir
        self.proxy: subprocess.Popen[str] | None = None

    # ------------------------------------------------------------------ setup

    def node_ip(self, i: int) -> str:
        return f"10.213.{i}.2"

    def listen_addr(self, i: int) -> str:
        return f"/ip4/{self.node_ip(i)}/tcp/{NODE_PORT}"

    def announce_addr(self, i: int) -> str:
        return f"/ip4/{PROXY_IP}/tcp/{PROXY_PORT0 + i}"

    def wrap(self, i: int) -> list[str]:
        return ["ip", "netns", "exec", self.node_ns[i]]

    def __enter__(self) -> Self:
        sweep_stale()
        try:
            self._build()
            self._start_proxy()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _build(self) -> None:
        sw = self.switch_ns
        _ip("netns", "add", sw)
        _ip("-n", sw, "link", "set", "lo", "up")
        _ip("-n", sw, "addr", "add", f"{PROXY_IP}/32", "dev", "lo")
        subprocess.run(["ip", "netns", "exec", sw, "sysctl", "-qw", "net.ipv4.ip_forward=0"],
                       check=True, capture_output=True)
        for i, ns in enumerate(self.node_ns):
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", sw, "link", "add", f"s{i}", "type", "veth", "peer", "name", "eth0",
                "netns", ns)
            _ip("-n", sw, "addr", "add", f"10.213.{i}.1/24", "dev", f"s{i}")
            _ip("-n", sw, "link", "set", f"s{i}", "up")
            _ip("-n", ns, "addr", "add", f"{self.node_ip(i)}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "route", "add", f"{PROXY_IP}/32", "via", f"10.213.{i}.1")

    def _start_proxy(self) -> None:
        cfg = {"listen_ip": PROXY_IP, "seed": self.seed,
               "nodes": [[self.node_ip(i), NODE_PORT, PROXY_PORT0 + i] for i in range(self.n)]}
        root = Path(__file__).resolve().parents[2]
        with open(self.log_dir / "faultproxy.log", "ab") as log:
            self.proxy = subprocess.Popen(
                ["ip", "netns", "exec", self.switch_ns, PYTHON, "-m", "tests.support.faultproxy",
                 json.dumps(cfg)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                text=True, cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
        ready = self._reply()
        if not ready.get("ready"):
            raise RuntimeError(f"fault proxy did not start: {ready}")

    def close(self) -> None:
        if self.proxy is not None:
            if self.proxy.poll() is None:
                self.proxy.kill()
                self.proxy.wait(timeout=10)
            for pipe in (self.proxy.stdin, self.proxy.stdout):
                if pipe is not None:
                    pipe.close()
        for ns in [*self.node_ns, self.switch_ns]:
            _ip("netns", "del", ns, check=False)

    # ------------------------------------------------------------------ nodes

    def daemon(self, root: Path, i: int) -> DaemonProcess:
        """Node ``i``'s daemon (not started), listening in its namespace and
        announcing its proxy address."""
        d = DaemonProcess(root, f"n{i}", wrap=self.wrap(i))
        return d

    # ------------------------------------------------------------------ faults

    def _reply(self) -> dict[str, Any]:
        assert self.proxy is not None and self.proxy.stdout is not None
        line = self.proxy.stdout.readline()
        if not line:
            log = (self.log_dir / "faultproxy.log").read_text(errors="replace")[-4000:]
            raise RuntimeError(f"fault proxy exited {self.proxy.poll()}:\n{log}")
        return json.loads(line)

    def _call(self, req: dict[str, Any]) -> dict[str, Any]:
        assert self.proxy is not None and self.proxy.stdin is not None
        self.proxy.stdin.write(json.dumps(req) + "\n")
        self.proxy.stdin.flush()
        reply = self._reply()
        if not reply.get("ok"):
            raise RuntimeError(f"fault proxy refused {req}: {reply.get('error')}")
        return reply

    def set_faults(self, links: list[tuple[int, int]] | str, **faults: Any) -> None:
        """Replace the faults of ``links`` (pairs of node indices, or ``"all"``)."""
        self._call({"op": "set", "links": links if links == "all" else [list(x) for x in links],
                    "faults": faults})

    def partition(self, side: set[int], mode: str = "blackhole") -> None:
        """Cut every link between ``side`` and the other nodes."""
        links = [(a, b) for a in side for b in range(self.n) if b not in side]
        self.set_faults(links, partition=mode)

    def heal(self) -> None:
        """Clear every fault."""
        self.set_faults("all")

    def stats(self) -> dict[str, Any]:
        return self._call({"op": "stats"})


if __name__ == "__main__":  # python -m tests.support.faultnet: can this machine build one?
    why = available()
    print(why or "network namespaces: available")
    sys.exit(1 if why else 0)
