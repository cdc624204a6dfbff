"""A fetch whose blocks the fetching node cannot store (its store is full) ends at
once with exit 6 and the store's error, instead of re-asking the holder for the
same blocks until the timeout. Real daemons in subprocesses, the real CLI."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from tests.support.daemon import DaemonProcess, cli_json, run_cli

SMALL = "[blockstore]\nmax_size_bytes = 16777216\n"  # the least the config allows
INTERNAL_NAME = re.compile(rb"\b[A-Z][A-Za-z]*(Error|Exception|Group)\b|nursery|Traceback")


def _holder_and_small(tmp_path: Path) -> tuple[DaemonProcess, DaemonProcess, str]:
    holder = DaemonProcess(tmp_path, "holder").start()
    small = DaemonProcess(tmp_path, "small", config=SMALL).start()
    data = tmp_path / "big.bin"
    data.write_bytes(random.Random(7).randbytes(24 * 1024 * 1024))
    cid = cli_json(holder.home, "add", str(data))["cid"]
    cli_json(small.home, "peers", "connect", cli_json(holder.home, "id")["addresses"][0])
    return holder, small, cid


def test_pin_add_into_a_full_store_exits_6_not_after_the_timeout(tmp_path: Path) -> None:
    holder, small, cid = _holder_and_small(tmp_path)
    try:
        # A timeout would exit 5 after 60 s; a full store must end the fetch itself.
        out = run_cli(small.home, "--json", "pin", "add", cid, "--timeout", "60",
                      check=False, timeout=50)
        lines = out.stderr.decode().strip().splitlines()
        assert len(lines) == 1, out.stderr
        err = json.loads(lines[0])["error"]
        assert out.returncode == 6 and err["code"] == "store_full", err
        # the fetch stopped: the pin is absent, and the node still answers
        assert cid not in run_cli(small.home, "pin", "ls").stdout.decode()
    finally:
        small.stop()
        holder.stop()


def test_cat_into_a_full_store_says_so_in_one_line(tmp_path: Path) -> None:
    holder, small, cid = _holder_and_small(tmp_path)
    try:
        out = run_cli(small.home, "cat", cid, "--timeout", "60", check=False, timeout=50)
        assert out.returncode == 6, out.stderr
        assert out.stderr.count(b"\n") == 1 and b"full" in out.stderr, out.stderr
        assert not INTERNAL_NAME.search(out.stderr), out.stderr
    finally:
        small.stop()
        holder.stop()


def test_gateway_get_into_a_full_store_ends_naming_the_store(tmp_path: Path) -> None:
    """507 before the first byte; after it the response is cut (the trustless
    gateway spec's rule) and the log names the full store, with no traceback."""
    import http.client
    import urllib.error
    import urllib.request

    holder, small, cid = _holder_and_small(tmp_path)
    try:
        gateway = cli_json(small.home, "id")["gateway"]
        try:
            with urllib.request.urlopen(f"{gateway}/ipfs/{cid}", timeout=50) as resp:
                resp.read()
            raise AssertionError("the gateway served a file its store cannot hold")
        except urllib.error.HTTPError as exc:
            body = exc.read()
            assert exc.code == 507, (exc.code, body)
            assert b"full" in body and not INTERNAL_NAME.search(body), body
        except http.client.IncompleteRead:
            pass  # cut mid-body
        log = small.log()
        assert "cannot be stored: blockstore full" in log, log[-2000:]
        assert "Traceback" not in log, log[-4000:]
    finally:
        small.stop()
        holder.stop()
