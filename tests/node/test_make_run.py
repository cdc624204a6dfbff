"""``make run`` on a shared machine (tools/run_node.py): a new home listens on
loopback only, and on free ports when the usual ones (4101, 9401) are taken.
A real daemon started the way ``make run`` starts it.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from pinfold.client import Client
from pinfold.config import load

from tests.support.wait import wait_until

ROOT = Path(__file__).resolve().parents[2]


def test_make_run_uses_loopback_and_free_ports_when_the_usual_ones_are_taken(
        tmp_path: Path) -> None:
    home = tmp_path / "home"
    held = [socket.socket(), socket.socket(), socket.socket()]
    try:
        for s in held:
            s.bind(("127.0.0.1", 0))
            s.listen()
        taken = [s.getsockname()[1] for s in held]
        log = tmp_path / "run.log"
        with open(log, "wb") as err_file:
            proc = subprocess.Popen(
                [sys.executable, str(ROOT / "tools" / "run_node.py"), "--home", str(home),
                 "--pinfold", str(Path(sys.executable).with_name("pinfold")),
                 "--p2p-port", str(taken[0]), "--metrics-port", str(taken[1]),
                 "--gateway-port", str(taken[2])],
                stdout=subprocess.DEVNULL, stderr=err_file)
        try:
            def answers() -> dict:
                assert proc.poll() is None, log.read_text()
                with Client(home=home) as c:
                    return c.id()

            info = wait_until(answers, timeout_s=60, what="the make run node to answer")
            cfg = load(home / "config.toml")
            assert [a.split("/")[2] for a in cfg.node.listen] == ["127.0.0.1"]
            assert all(f"/tcp/{taken[0]}/" not in a for a in info["addresses"])
            assert cfg.metrics.listen.startswith("127.0.0.1:")
            assert cfg.metrics.listen != f"127.0.0.1:{taken[1]}"
            assert cfg.gateway.listen.startswith("127.0.0.1:")
            assert cfg.gateway.listen != f"127.0.0.1:{taken[2]}"
            assert all(a.startswith("/ip4/127.0.0.1/") for a in info["addresses"]), info
            with Client(home=home) as c:
                c.shutdown()
            assert proc.wait(timeout=60) == 0
            err = log.read_text()
            assert f"port {taken[0]} (libp2p) is taken" in err, err
            assert f"port {taken[1]} (metrics) is taken" in err, err
            assert f"port {taken[2]} (gateway) is taken" in err, err
            assert f"gateway on http://{cfg.gateway.listen}/ipfs/" in err, err
            assert "127.0.0.1" in err and "node.listen" in err, err
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    finally:
        for s in held:
            s.close()
