"""``--expire-in`` on a standalone node: the pin is removed once the time has passed
(IPFS Cluster's ``--expire-in``), as in a cluster. A real daemon, the real CLI.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.support.daemon import DaemonProcess, cli_json, run_cli
from tests.support.wait import wait_until


def _pinned(home: Path) -> set[str]:
    out = run_cli(home, "--json", "pin", "ls").stdout.decode()
    return {json.loads(line)["cid"] for line in out.splitlines()}


def test_standalone_pin_add_expire_in_removes_the_pin_after_the_time(
        daemon: DaemonProcess) -> None:
    expiring = cli_json(daemon.home, "add", "--pin=false", "-", input=b"expires soon")["cid"]
    kept = cli_json(daemon.home, "add", "-", input=b"pinned for good")["cid"]
    started = time.monotonic()
    res = cli_json(daemon.home, "pin", "add", expiring, "--expire-in", "2")
    assert float(res["metadata"]["expire_at"]) > time.time()
    assert _pinned(daemon.home) == {expiring, kept}
    wait_until(lambda: expiring not in _pinned(daemon.home), timeout_s=60,
               what="the pin added with --expire-in 2 to be removed")
    assert time.monotonic() - started >= 2  # not before its time
    assert _pinned(daemon.home) == {kept}
    # Unpinned, its blocks go at the next GC; the other pin keeps its own.
    assert cli_json(daemon.home, "repo", "gc")["blocks_freed"] >= 1
    assert run_cli(daemon.home, "cat", kept).stdout == b"pinned for good"


def test_standalone_expire_in_expires_after_a_restart_too(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path, "a")
    with d:
        cid = cli_json(d.home, "add", "--pin=false", "-", input=b"short-lived")["cid"]
        cli_json(d.home, "pin", "add", cid, "--expire-in", "3")
        assert cid in _pinned(d.home)
    # The expiry is kept with the pin: a restarted node removes it when due.
    with d:
        wait_until(lambda: cid not in _pinned(d.home), timeout_s=60,
                   what="the pin to expire after the restart")
