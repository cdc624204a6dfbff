"""A daemon stopping while a command runs tells that command so: the reply is
``shutting_down`` (exit 7, "the daemon is stopping"), not a closed connection.
Real daemons in subprocesses, the real CLI; the fetch waits on a peer stopped
with SIGSTOP, so only the shutdown ends it."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

from tests.support.daemon import DaemonProcess, cli_json, metric, run_cli
from tests.support.wait import wait_until

MISSING = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"


def test_a_cat_in_flight_when_the_daemon_stops_exits_7_saying_it_is_stopping(
        tmp_path: Path) -> None:
    a = DaemonProcess(tmp_path, "a").start()
    silent = DaemonProcess(tmp_path, "silent").start()
    cli_json(a.home, "peers", "connect", cli_json(silent.home, "id")["addresses"][0])
    os.kill(silent.pid, signal.SIGSTOP)  # connected, and never answers
    out: list = []
    t = threading.Thread(target=lambda: out.append(run_cli(
        a.home, "--json", "cat", MISSING, "--timeout", "60", check=False, timeout=90)))
    try:
        t.start()
        wait_until(lambda: metric(a, "pinfold_bitswap_wantlist_entries", side="local") > 0,
                   timeout_s=30, what="the cat's want")
        run_cli(a.home, "shutdown")
        t.join(60)
        lines = out[0].stderr.decode().strip().splitlines()
        assert len(lines) == 1, out[0].stderr
        err = json.loads(lines[0])["error"]
        assert out[0].returncode == 7 and err["code"] == "shutting_down", err
        assert err["message"] == "cat: the daemon is stopping", err
        assert a.proc is not None and a.proc.wait(timeout=30) == 0
    finally:
        t.join(60)
        os.kill(silent.pid, signal.SIGCONT)
        for d in (a, silent):
            d.stop()
            d.kill9()
