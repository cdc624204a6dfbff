"""``--timeout`` on ``cat``, ``get`` and ``pin add`` (and ``timeout=`` in the
Python client): the daemon's fetch ends within the bound, the error names the
command, the CID and what arrived, and the CLI exits 5 (timeout).

Real daemons in subprocesses; the peer that never answers is a daemon stopped
with SIGSTOP, its connection left open, so nothing says DONT_HAVE and only the
bound ends the fetch (bitswap.fetch_timeout_s stays at its 30 s default).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pinfold.blockstore.unixfs import ImportParams, import_bytes
from pinfold.client import RpcError
from pinfold.daemon.cli.parser import parse_duration

from tests.support.daemon import DaemonProcess, cli_json, run_cli
from tests.support.wait import wait_until

MISSING = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"


@pytest.fixture(scope="module")
def beside_a_silent_peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """A daemon connected to one peer that never answers (SIGSTOPped)."""
    root = tmp_path_factory.mktemp("silent")
    a = DaemonProcess(root, "a").start()
    silent = DaemonProcess(root, "silent").start()
    stopped = False
    try:
        addr = cli_json(silent.home, "id")["addresses"][0]
        cli_json(a.home, "peers", "connect", addr)
        os.kill(silent.pid, signal.SIGSTOP)
        stopped = True
        yield a
    finally:
        if stopped:
            os.kill(silent.pid, signal.SIGCONT)
        for d in (a, silent):
            d.stop()
            d.kill9()


@pytest.mark.parametrize("command", ["cat", "get", "pin add"])
def test_timeout_ends_a_fetch_nobody_answers_within_the_bound_and_names_the_cid(
        beside_a_silent_peer: DaemonProcess, tmp_path: Path, command: str) -> None:
    extra = ["-o", str(tmp_path / "out")] if command == "get" else []
    start = time.monotonic()
    out = run_cli(beside_a_silent_peer.home, "--json", *command.split(), MISSING, *extra,
                  "--timeout", "2s", check=False)
    took = time.monotonic() - start
    err = json.loads(out.stderr)["error"]
    assert out.returncode == 5 and err["code"] == "timeout", err
    assert err["message"].startswith(f"{command} {MISSING}: timed out after 2 s with 0 bytes done; "
                                     "0 blocks (0 bytes) arrived from 0 peers"), err
    # Well before bitswap.fetch_timeout_s (30 s), the other bound a fetch has.
    assert took < 15, took
    assert not (tmp_path / "out").exists()


def test_timeout_names_the_block_it_waited_for_and_the_size_from_the_root(
        beside_a_silent_peer: DaemonProcess) -> None:
    """The root is here, a leaf is nowhere: the error names the leaf it waited for
    and the total the root announced."""
    data = os.urandom(600_000)
    blocks, root, _ = import_bytes(data, ImportParams(chunk_size=256 * 1024))
    root_block = dict((str(c), b) for c, b in blocks)[str(root)]
    with beside_a_silent_peer.client() as c:
        assert c.block_put(root_block, codec="dag-pb")["cid"] == str(root)
        with pytest.raises(RpcError) as info:
            b"".join(c.cat(str(root), timeout=1.5))
    leaves = [str(c) for c, _ in blocks if str(c) != str(root)]
    message = str(info.value)
    assert info.value.code == "timeout", message
    assert message.startswith(f"cat {root}: timed out after 1.5 s with 0 of 600000 bytes done")
    assert message.endswith(f"; waiting for block {leaves[0]}"), message


def test_timeout_counts_the_peers_that_sent_blocks_after_they_left(
        beside_a_silent_peer: DaemonProcess, tmp_path: Path) -> None:
    """A holder sends part of a file and is killed: the timeout still says the
    blocks arrived from 1 peer (its ledger is gone, what it sent is not)."""
    import threading

    data = os.urandom(600_000)
    blocks, root, _ = import_bytes(data, ImportParams(chunk_size=256 * 1024))
    by_cid = dict((str(c), b) for c, b in blocks)
    leaf = next(str(c) for c, _ in blocks if str(c) != str(root))
    holder = DaemonProcess(tmp_path, "holder").start()
    try:
        with holder.client() as h:  # the root and one leaf; the others are nowhere
            h.block_put(by_cid[str(root)], codec="dag-pb")
            h.block_put(by_cid[leaf])
        fetcher = beside_a_silent_peer
        cli_json(fetcher.home, "peers", "connect", cli_json(holder.home, "id")["addresses"][0])
        stored = cli_json(fetcher.home, "repo", "stat")["blocks"]
        out: list = []
        t = threading.Thread(target=lambda: out.append(run_cli(
            fetcher.home, "--json", "pin", "add", str(root), "--timeout", "8", check=False)))
        t.start()
        try:
            # Count stored blocks: `block stat` would fetch the leaf itself, and
            # could do so before `pin add` has started.
            def fetched() -> bool:
                return cli_json(fetcher.home, "repo", "stat")["blocks"] >= stored + 2
            wait_until(fetched, timeout_s=30, what="the root and leaf to arrive from the holder")
            holder.kill9()
        finally:
            t.join(60)
        err = json.loads(out[0].stderr)["error"]
        assert out[0].returncode == 5 and err["code"] == "timeout", err
        assert "2 blocks (" in err["message"] and "arrived from 1 peer" in err["message"], err
    finally:
        holder.kill9()


def test_timeout_in_the_client_raises_timeout_naming_the_cid(
        beside_a_silent_peer: DaemonProcess) -> None:
    with beside_a_silent_peer.client() as c:
        with pytest.raises(RpcError) as info:
            b"".join(c.cat(MISSING, timeout=1.5))
        assert info.value.code == "timeout"
        assert f"cat {MISSING}: timed out after 1.5 s" in str(info.value)
        events: list[dict] = []
        with pytest.raises(RpcError) as info:  # with progress events asked for too
            c.pin(MISSING, timeout=1, on_progress=events.append)
        assert info.value.code == "timeout" and MISSING in str(info.value)
        assert all(e["bytes"] == 0 and not e.get("done") for e in events), events
        assert c.id()["peer_id"]  # the client stays usable


def test_errors_keep_their_code_when_progress_is_asked(daemon: DaemonProcess) -> None:
    """A failure inside a transfer that streams progress is still one coded error."""
    with daemon.client() as c:
        with pytest.raises(RpcError) as info:
            b"".join(c.cat(MISSING, on_progress=lambda e: None))
        assert info.value.code == "not_found" and MISSING in str(info.value)
        with pytest.raises(RpcError) as info:
            c.pin(MISSING, on_progress=lambda e: None)
        assert info.value.code == "not_found"


def test_timeout_is_not_reached_by_a_fetch_that_completes(daemon: DaemonProcess,
                                                          tmp_path: Path) -> None:
    data = os.urandom(300_000)
    cid = run_cli(daemon.home, "add", "-", input=data).stdout.decode().strip()
    assert run_cli(daemon.home, "cat", cid, "--timeout", "30").stdout == data
    with daemon.client() as c:
        assert b"".join(c.cat(cid, timeout=30)) == data
        with pytest.raises(ValueError, match="timeout must be > 0 seconds"):
            c.cat(cid, timeout=0)


def test_timeout_takes_seconds_or_kubo_durations() -> None:
    assert parse_duration("30") == 30.0
    assert parse_duration("2m") == 120.0
    assert parse_duration("1h30m") == 5400.0
    assert parse_duration("1500ms") == 1.5
    for bad in ("0", "-1s", "soon", "30x", "", "1h-3m", "nan"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_duration(bad)


def test_a_bad_timeout_is_a_usage_error_naming_the_value(tmp_path: Path) -> None:
    out = run_cli(tmp_path / "nohome", "cat", MISSING, "--timeout", "soon", check=False)
    assert out.returncode == 2
    assert "--timeout: expected a duration such as 30, 30s, 2m or 1h30m, got 'soon'" \
        in out.stderr.decode()
