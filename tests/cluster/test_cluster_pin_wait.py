"""Cluster pins say what is true: ``pin add`` / ``add --replicas`` report how many
holders have the pin (not "pinned" while they fetch), ``--wait`` waits for rmin
of them (and ends, exit 7, naming each holder's error when all failed; ``add``
still prints the CID when the wait times out), and requests no placement can
satisfy are refused (exit 7) before anything moves.

Two real daemons in subprocesses, one cluster, short timers (heartbeat 0.5 s).
"""

from __future__ import annotations

import json
import os
import pty
import random
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pinfold.blockstore.cid import RAW, make_cid
from pinfold.config import load, render, replace
from pinfold.client import PinFailed, PinWaitTimeout, RpcError
from pinfold.daemon.home import Home
from pinfold.daemon.p2p.identity import load_identity, peer_id_of

from tests.support.cluster import replication
from tests.support.daemon import DaemonProcess, cli_json, run_cli, stop_all
from tests.support.wait import wait_until

REPLICATION = replication(rmin=1, rmax=2, p_prior=0.9)


def _configure(d: DaemonProcess, *, bootstrap: list[str], trusted: list[str]) -> None:
    path = d.home / "config.toml"
    cfg = replace(load(path), cluster={"name": "waittest", "trusted_peers": trusted},
                  replication=REPLICATION, node={"bootstrap": bootstrap})
    path.write_text(render(cfg))


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("waitcluster")
    ds = [DaemonProcess(root, f"n{i}") for i in range(2)]
    for d in ds:
        d.init()
    ids = [peer_id_of(load_identity(Home(root=d.home).identity_path)).to_base58() for d in ds]
    _configure(ds[0], bootstrap=[], trusted=ids)
    try:
        ds[0].start()
        with ds[0].client() as c:
            seed = c.id()["addresses"][0]
        _configure(ds[1], bootstrap=[seed], trusted=ids)
        ds[1].start()

        def all_alive() -> bool:
            for d in ds:
                with d.client() as c:
                    alive = sorted(p["peer_id"] for p in c.cluster_peers()
                                   if p["state"] == "alive")
                if alive != sorted(ids):
                    return False
            return True

        wait_until(all_alive, timeout_s=60, what="both nodes to see 2 alive cluster peers")
        yield ds
    finally:
        stop_all(ds)


def _unfetchable() -> str:
    """A CID no node has: its holders stay queued/pinning, never pinned."""
    return str(make_cid(random.randbytes(64), RAW))


def _content(d: DaemonProcess, seed: int) -> str:
    with d.client() as c:
        return c.add(random.Random(seed).randbytes(300_000 + seed), pin=False)


def _unpin(d: DaemonProcess, cid: str) -> None:
    with d.client() as c:
        c.unpin(cid)


# ---------------------------------------------------------------- what pin add says


def test_pin_add_says_queued_while_holders_have_not_pinned(nodes: list[DaemonProcess]) -> None:
    a = nodes[0]
    cid = _unfetchable()
    out = run_cli(a.home, "pin", "add", cid, "--replicas", "2")
    assert out.stdout.decode().strip() == f"queued {cid}; 0 of 2 holders pinned " \
                                           "(--wait waits for them)"
    other = _unfetchable()
    res = cli_json(a.home, "pin", "add", other, "--replicas", "2")
    assert (res["holders_pinned"], res["holders_wanted"]) == (0, 2)
    _unpin(a, cid)
    _unpin(a, other)


def test_add_replicas_reports_holders_beside_the_cid(nodes: list[DaemonProcess],
                                                     tmp_path: Path) -> None:
    a = nodes[0]
    f = tmp_path / "blob"
    f.write_bytes(random.Random(5).randbytes(200_000))
    out = run_cli(a.home, "add", "--replicas", "2", str(f))
    cid = out.stdout.decode().strip()
    note = out.stderr.decode().strip()
    assert cid.startswith("baf") and "\n" not in cid
    # Only the origin can hold it this early; never "pinned" with fewer than 2 holders.
    assert note.startswith(f"queued {cid}; ") or note == f"pinned {cid}; 2 of 2 holders pinned"
    assert " of 2 holders pinned" in note
    _unpin(a, cid)


# ---------------------------------------------------------------- --wait


def test_pin_add_wait_returns_once_rmin_holders_report_pinned(
        nodes: list[DaemonProcess], tmp_path: Path) -> None:
    a, b = nodes
    cid = _content(a, 1)
    out = run_cli(b.home, "pin", "add", cid, "--replicas", "2", "--wait", "--wait-timeout", "60")
    assert out.stdout.decode().strip() == f"pinned {cid}; 2 of 2 holders pinned"
    assert b"holders pinned" not in out.stderr  # no progress line when not a terminal

    def a_agrees() -> bool:
        # b's --wait saw both holders pinned; a learns it by gossip (eventually consistent)
        with a.client() as c:
            st = c.status(cid)
        return st["healthy"] == 2 and {h["state"] for h in st["holders"]} == {"pinned"}

    wait_until(a_agrees, timeout_s=20, what="node a to see both holders pinned")
    _unpin(a, cid)

    f = tmp_path / "file"
    f.write_bytes(random.Random(2).randbytes(400_000))
    res = cli_json(a.home, "add", "--replicas", "2", "--wait", str(f))
    assert res["pin"]["holders_pinned"] == 2 and res["pin"]["status"]["healthy"] == 2
    _unpin(a, res["cid"])

    with b.client() as c:
        cid3 = _content(a, 3)
        seen: list[dict] = []
        rec = c.pin(cid3, replicas=2, wait=True, wait_timeout=60, progress=seen.append)
    assert rec["status"]["healthy"] == 2 and seen[-1]["pinned"] == 2
    assert all(item["wanted"] == 2 for item in seen)
    _unpin(a, cid3)


def test_pin_add_wait_timeout_exits_nonzero_naming_holders_behind(
        nodes: list[DaemonProcess]) -> None:
    a = nodes[0]
    cid = _unfetchable()
    started = time.monotonic()
    out = run_cli(a.home, "pin", "add", cid, "--replicas", "2", "--wait-timeout", "2",
                  check=False)
    took = time.monotonic() - started
    err = out.stderr.decode()
    assert out.returncode == 5, err  # the exit-code table's timeout
    assert 2 <= took < 30
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert f"{cid}: timed out after 2 s with 0 of 2 holders pinned; behind: " in err
    _unpin(a, cid)

    cid = _unfetchable()
    with a.client() as c, pytest.raises(PinWaitTimeout) as info:
        c.pin(cid, replicas=2, wait_timeout=3)
    # Within 3 s both members have the pin queued or fetching; each is named with its state.
    behind = dict(info.value.behind)
    assert behind and all(st.split(",")[0] in {"queued", "pinning", "pin_error"}
                          for st in behind.values()), behind
    for peer, st in behind.items():
        assert f"{peer} {st}" in str(info.value)
    _unpin(a, cid)


def test_pin_add_wait_ends_naming_each_holders_error_when_no_peer_has_the_content(
        nodes: list[DaemonProcess]) -> None:
    a, _ = nodes
    cid = _unfetchable()
    started = time.monotonic()
    # No --wait-timeout: the wait must end by itself once every holder failed.
    out = run_cli(a.home, "pin", "add", cid, "--replicas", "2", "--wait", check=False,
                  timeout=180)
    err = out.stderr.decode()
    assert out.returncode == 7, err  # a failed pin: the exit-code table's "refused"
    assert time.monotonic() - started < 120
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"pinfold: error: {cid}: pin failed with 0 of 2 holders pinned; "), err
    with a.client() as c:
        a_id = c.id()["peer_id"]
    # This node's holder comes with its own error, which names the CID as the user gave it.
    assert f"{a_id} pin_error (" in err and f"block {cid}" in err, err
    assert err.count(" pin_error (") == 2, err
    assert "zb2" not in err and "zdj7" not in err, err  # never another spelling of the CID
    _unpin(a, cid)


def test_wait_progress_lists_only_as_many_holders_as_the_pin_has_places(
        nodes: list[DaemonProcess]) -> None:
    a, _ = nodes
    cid = _unfetchable()
    seen: list[dict] = []
    with a.client() as c, pytest.raises(PinFailed) as info:
        c.pin(cid, replicas=1, wait=True, progress=seen.append)
    assert seen and all(len(item["holders"]) <= 1 for item in seen), seen
    assert len(info.value.failed) == 1
    _unpin(a, cid)


def test_add_wait_timeout_still_prints_the_cid_on_stdout_for_scripts(
        nodes: list[DaemonProcess], tmp_path: Path) -> None:
    a = nodes[0]
    f = tmp_path / "blob"
    f.write_bytes(random.Random(9).randbytes(500_000))
    # 1 ms: no second holder fetches and reports that fast, so the wait times out.
    out = run_cli(a.home, "add", "--replicas", "2", "--wait-timeout", "0.001", str(f),
                  check=False)
    err = out.stderr.decode()
    assert out.returncode == 5, err
    cid = out.stdout.decode().strip()
    assert cid.startswith("baf") and "\n" not in cid, out.stdout  # the CID alone, as add prints
    assert len(err.strip().splitlines()) == 1 and f"{cid}: timed out after" in err, err
    res = json.loads(run_cli(a.home, "--json", "add", "--replicas", "2", "--wait-timeout",
                             "0.001", str(f), check=False).stdout)
    assert res["cid"] == cid
    _unpin(a, cid)


def test_pin_add_wait_shows_progress_on_a_terminal(nodes: list[DaemonProcess]) -> None:
    a, b = nodes
    cid = _content(a, 4)
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pinfold.daemon.cli", "--home", str(b.home), "pin", "add",
             cid, "--replicas", "2", "--wait", "--wait-timeout", "60"],
            stdout=subprocess.DEVNULL, stderr=slave)
        os.close(slave)
        seen = b""
        while True:
            ready, _, _ = select.select([master], [], [], 60)
            assert ready, "no output from pin add --wait"
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        assert proc.wait(timeout=60) == 0
    finally:
        os.close(master)
    assert b"of 2 holders pinned" in seen and b"2 of 2 holders pinned" in seen, seen
    assert b" kB" in seen, seen  # the DAG's size (about 300 kB), not only holder counts
    _unpin(a, cid)


def test_wait_progress_reports_the_dag_size_and_bytes_sent_to_each_holder(
        nodes: list[DaemonProcess]) -> None:
    """Waiting on the origin: each item carries the DAG's size (``total``); pinned
    holders have all its bytes, and the holder that fetched from this node shows
    the bytes this node sent it during the wait."""
    a, b = nodes
    cid = _content(a, 12)
    with a.client() as c:
        a_id = c.id()["peer_id"]
    with b.client() as c:
        b_id = c.id()["peer_id"]
    seen: list[dict] = []
    with a.client() as c:
        rec = c.pin(cid, replicas=2, wait=True, wait_timeout=60, progress=seen.append)
        size = c.status(cid)["size_bytes"]
    assert rec["status"]["healthy"] == 2
    assert size is not None and size >= 300_000 + 12, size  # the origin knows its size
    assert all(item["total"] == size for item in seen), seen
    last = {h["peer_id"]: h for h in seen[-1]["holders"]}
    assert set(last) == {a_id, b_id}, last
    assert all(h["state"] == "pinned" and h["bytes"] == size for h in last.values()), last
    # b fetched the DAG from a after the wait began: a counts what it sent b.
    assert last[b_id].get("sent_bytes", 0) >= 1, last
    _unpin(a, cid)


def test_wait_line_shows_each_holders_bytes_where_known() -> None:
    from pinfold.daemon.cli.localio import wait_line

    item = {"pinned": 1, "wanted": 2, "total": 3_400_000, "holders": [
        {"peer_id": "12D3KooWaaaaaaK3XaQ2", "state": "pinned", "bytes": 3_400_000},
        {"peer_id": "12D3KooWbbbbbbPq9zR1", "state": "pinning", "bytes": 1_200_000,
         "sent_bytes": 1_234_567},
        {"peer_id": "12D3KooWccccccZZZZZZ", "state": "queued"}]}
    assert wait_line(item) == ("1 of 2 holders pinned, 3.4 MB: ..K3XaQ2 pinned, "
                               "..Pq9zR1 pinning 1.2 MB/3.4 MB (sent 1.2 MB), ..ZZZZZZ queued")
    # Size unknown (the root is not here yet): counts and states only.
    assert wait_line({"pinned": 0, "wanted": 1, "total": None, "holders": [
        {"peer_id": "12D3KooWaaaaaaK3XaQ2", "state": "pinning", "bytes": 512}]}) \
        == "0 of 1 holders pinned: ..K3XaQ2 pinning 512 bytes"


# ---------------------------------------------------------------- impossible requests


def test_impossible_pin_requests_are_refused_at_once_with_the_reason(
        nodes: list[DaemonProcess]) -> None:
    a = nodes[0]
    cid = _content(a, 6)
    out = run_cli(a.home, "pin", "add", cid, "--replicas", "3", check=False)
    assert out.returncode == 7, out.stderr
    assert b"3 copies (--replicas/--rmin) is more than the 2 cluster member(s)" in out.stderr
    out = run_cli(a.home, "pin", "add", cid, "--availability", "0.9999", check=False)
    err = out.stderr.decode()
    assert out.returncode == 7, err
    # p_i start at the prior 0.9: two copies reach 0.99, 0.9999 needs four such copies.
    assert "availability 0.9999 cannot be reached" in err and "reaches 0.99" in err, err
    assert "k=4 copies" in err, err
    out = run_cli(a.home, "pin", "add", cid, "--availability", "0.999", "--rmax", "1",
                  check=False)
    assert out.returncode == 7 and b"at most rmax=1" in out.stderr, out.stderr
    with a.client() as c, pytest.raises(RpcError, match="not in the cluster pinset"):
        c.status(cid)

    # add refuses before reading the upload, not after 64 MiB arrived.
    sent = 0

    def chunks():
        nonlocal sent
        for _ in range(64):
            sent += 1
            yield random.randbytes(1 << 20)

    with a.client() as c:
        before = c.repo_stat()["blocks"]
        with pytest.raises(RpcError, match="more than the 2 cluster member"):
            c.add_stream(chunks(), pin=True, rmin=5, rmax=5)
        assert sent < 16, sent
        assert c.repo_stat()["blocks"] == before


def test_a_direct_pin_over_a_recursive_one_exits_with_the_refused_code(
        nodes: list[DaemonProcess]) -> None:
    a = nodes[0]
    cid = _content(a, 8)
    run_cli(a.home, "pin", "add", cid, "--replicas", "2")
    out = run_cli(a.home, "pin", "add", cid, "--direct", check=False)
    err = out.stderr.decode()
    assert out.returncode == 7, err  # refused, as the exit-code table says; not 1
    assert f"{cid} is already pinned recursively" in err, err
    _unpin(a, cid)


@pytest.mark.parametrize(("args", "needle"), [
    (("pin", "add", "{cid}", "--wait-timeout", "0"), "must be > 0 seconds"),
    (("pin", "add", "{cid}", "--wait-timeout", "-3"), "must be > 0 seconds"),
    (("add", "--replicas", "2", "--wait-timeout", "0", "{file}"), "must be > 0 seconds"),
    (("pin", "add", "{cid}", "--replicas", "0"), "must be >= 1"),
    (("pin", "add", "{cid}", "--replicas", "-2"), "must be >= 1"),
    (("pin", "add", "{cid}", "--expire-in", "0"), "must be > 0 seconds"),
    (("add", "--chunk-size", "0", "{file}"), "must be >= 1"),
    (("add", "--chunk-size", "-1", "{file}"), "must be >= 1"),
])
def test_zero_or_negative_sizes_and_timeouts_are_refused(
        nodes: list[DaemonProcess], tmp_path: Path, args: tuple[str, ...], needle: str) -> None:
    a = nodes[0]
    f = tmp_path / "f"
    f.write_bytes(b"x")
    cid = _unfetchable()
    argv = [x.format(cid=cid, file=f) for x in args]
    out = run_cli(a.home, *argv, check=False)
    assert out.returncode == 2 and needle.encode() in out.stderr, (argv, out.stderr)
    with a.client() as c, pytest.raises(RpcError, match="not in the cluster pinset"):
        c.status(cid)


def test_client_and_rpc_refuse_nonpositive_wait_timeouts(nodes: list[DaemonProcess]) -> None:
    a = nodes[0]
    cid = _unfetchable()
    with a.client() as c:
        for bad in (0, -1.5, float("inf")):
            with pytest.raises(ValueError, match="must be > 0 seconds"):
                c.pin(cid, replicas=2, wait_timeout=bad)
        with pytest.raises(RpcError, match="not in the cluster pinset"):
            c.status(cid)
        with pytest.raises(RpcError, match="timeout must be > 0 seconds"):
            c.call("pin_wait", {"cid": cid, "timeout": 0})


def test_recover_of_a_cid_not_in_the_cluster_pinset_exits_not_pinned(
        nodes: list[DaemonProcess]) -> None:
    a = nodes[0]
    cid = _unfetchable()
    out = run_cli(a.home, "recover", cid, check=False)
    err = out.stderr.decode()
    assert out.returncode == 4, err
    assert f"{cid} is not pinned" in err, err
