"""Pins as a new user meets them (issue 13, items 1, 2, 12): real daemons, the real CLI.

- A pin is strengthened, never silently weakened: ``pin add --direct`` over a
  recursive pin is refused, and neither GC nor a cluster unpin takes blocks
  another pin still holds.
- ``pin status``/``pin ls`` say ``pinned`` only when every block is there;
  ``repo verify`` lists pins short of blocks.
- ``pinfold add`` pins (as Kubo's) and keeps ``--name``; failed cluster pins
  are listed with their reason and ``recover`` names what it retries.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from pinfold.blockstore import unixfs
from pinfold.blockstore.cid import parse_cid
from pinfold.blockstore.lmdbstore import LmdbBlockStore
from pinfold.config import load, render, replace
from pinfold.daemon.home import Home

from tests.support.cluster import HEARTBEAT_S
from tests.support.daemon import DaemonProcess, cli_json, run_cli
from tests.support.wait import wait_until

MB = 1_000_000


def _lines(home: Path, *args: str) -> list[dict[str, Any]]:
    out = run_cli(home, "--json", *args).stdout.decode()
    return [json.loads(line) for line in out.splitlines()]


def _file(tmp_path: Path, size: int = 5 * MB, seed: int = 1) -> tuple[Path, bytes]:
    data = random.Random(seed).randbytes(size)
    path = tmp_path / f"file-{seed}.bin"
    path.write_bytes(data)
    return path, data


def test_direct_pin_never_weakens_a_recursive_pin_so_gc_keeps_the_file(
        daemon: DaemonProcess, tmp_path: Path) -> None:
    """The trial's sequence: add 5 MB, pin, pin --direct, gc, cat."""
    path, data = _file(tmp_path)
    cid = cli_json(daemon.home, "add", str(path))["cid"]
    cli_json(daemon.home, "pin", "add", cid)
    weaker = run_cli(daemon.home, "pin", "add", "--direct", cid, check=False)
    assert weaker.returncode == 7  # refused (exit-code table)
    assert b"already pinned recursively" in weaker.stderr and cid.encode() in weaker.stderr
    assert [(p["cid"], p["mode"], p["state"]) for p in _lines(daemon.home, "pin", "ls")] == [
        (cid, "recursive", "pinned")]
    assert cli_json(daemon.home, "repo", "gc")["blocks_freed"] == 0
    assert cli_json(daemon.home, "pin", "status", cid)["holders"][0]["state"] == "pinned"
    assert run_cli(daemon.home, "cat", cid).stdout == data

    # A recursive pin over a direct one upgrades it; after an unpin a direct pin
    # holds the root block only, and GC frees the rest.
    cli_json(daemon.home, "pin", "rm", cid)
    assert cli_json(daemon.home, "pin", "add", "--direct", cid)["mode"] == "direct"
    assert cli_json(daemon.home, "pin", "add", cid)["mode"] == "recursive"
    assert cli_json(daemon.home, "repo", "gc")["blocks_freed"] == 0
    assert run_cli(daemon.home, "cat", cid).stdout == data
    cli_json(daemon.home, "pin", "rm", cid)
    cli_json(daemon.home, "pin", "add", "--direct", cid)
    assert cli_json(daemon.home, "repo", "gc")["blocks_freed"] == 5  # 5 leaves, root kept
    assert cli_json(daemon.home, "pin", "status", cid)["holders"][0]["state"] == "pinned"


def _drop_blocks(home: Path, cid: str, how_many: int, data: bytes) -> None:
    """Delete leaves of ``cid``'s DAG from the stopped node's store (as a disk fault
    or an old bug would), keeping the pin record."""
    blocks, root, _ = unixfs.import_bytes(data, unixfs.ImportParams())
    assert str(root) == cid
    leaves = [c for c, _ in blocks if c != root][:how_many]
    cfg = load(home / "config.toml")
    with LmdbBlockStore(Home(root=home).store_path,
                        max_size_bytes=cfg.blockstore.max_size_bytes) as store:
        for leaf in leaves:
            assert store.delete(leaf)
        assert store.pin_get(parse_cid(cid)) is not None


def test_pin_status_is_incomplete_when_blocks_are_missing_and_verify_lists_it(
        tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path, "a")
    path, data = _file(tmp_path)
    with d:
        cid = cli_json(d.home, "add", "--name", "model", str(path))["cid"]
        other = cli_json(d.home, "add", "-", input=b"small and whole")["cid"]
    _drop_blocks(d.home, cid, 2, data)
    cfg_path = d.home / "config.toml"
    cfg_path.write_text(render(replace(load(cfg_path), bitswap={"fetch_timeout_s": 1.0})))
    with d:
        st = cli_json(d.home, "pin", "status", cid)
        assert st["healthy"] == 0 and st["local_state"] == "incomplete"
        assert st["holders"][0]["state"] == "incomplete"
        assert (st["holders"][0]["blocks_present"], st["holders"][0]["blocks"]) == (4, 6)
        text = run_cli(d.home, "pin", "status", cid).stdout.decode()
        assert "incomplete: 4 of 6 blocks" in text and "name: model" in text

        pins = {p["cid"]: p for p in _lines(d.home, "pin", "ls")}
        assert pins[cid]["state"] == "incomplete" and pins[other]["state"] == "pinned"
        assert [p["cid"] for p in _lines(d.home, "pin", "ls", "--state", "incomplete")] == [cid]
        assert [p["cid"] for p in _lines(d.home, "pin", "ls", "--state", "pinned")] == [other]
        listed = run_cli(d.home, "pin", "ls").stdout.decode()
        assert f"{cid} recursive incomplete: 4 of 6 blocks name='model'" in listed

        verify = run_cli(d.home, "repo", "verify", check=False)
        assert verify.returncode == 1
        assert f"incomplete pin: {cid} recursive (4 of 6 blocks) name='model'" in \
            verify.stdout.decode()
        res = cli_json(d.home, "repo", "verify", check=False)
        assert [(p["cid"], p["blocks_present"], p["blocks"]) for p in res["incomplete"]] == [
            (cid, 4, 6)]
        assert cli_json(d.home, "pin", "status", other)["healthy"] == 1

        # recover fetches the missing blocks again; no peer has them here, so it says so.
        out = run_cli(d.home, "recover", "--all", check=False)
        assert out.returncode == 1
        lines = out.stdout.decode().splitlines()
        assert lines[0] == "retrying 1 pin(s)"
        assert lines[1].startswith(f"  {cid} (last error: missing 2 of 6 blocks): failed: ")
        # Adding the file again restores the blocks; the pin is whole again.
        cli_json(d.home, "add", str(path))
        assert cli_json(d.home, "pin", "status", cid)["local_state"] == "pinned"
        assert cli_json(d.home, "repo", "verify")["incomplete"] == []
        assert cli_json(d.home, "recover", "--all")["pins"] == []


def test_recover_without_peers_fails_at_once_and_refuses_a_cid_not_pinned(
        tmp_path: Path) -> None:
    import time

    d = DaemonProcess(tmp_path, "a")
    path, data = _file(tmp_path, 3 * MB, seed=4)
    with d:
        cid = cli_json(d.home, "add", str(path))["cid"]
    _drop_blocks(d.home, cid, 1, data)
    cfg_path = d.home / "config.toml"
    # A long fetch timeout: recover must not wait it out when there is no peer to ask.
    cfg_path.write_text(render(replace(load(cfg_path), bitswap={"fetch_timeout_s": 120.0})))
    with d:
        started = time.monotonic()
        out = run_cli(d.home, "recover", cid, check=False)
        assert time.monotonic() - started < 30
        assert out.returncode == 1, out.stderr
        assert "no peer to recover from" in out.stdout.decode(), out.stdout

        unpinned = cli_json(d.home, "add", "--pin=false", "-", input=b"stored, not pinned")["cid"]
        out = run_cli(d.home, "recover", unpinned, check=False)
        err = out.stderr.decode()
        assert out.returncode == 4, err  # the exit-code table's "not found (not pinned)"
        assert f"{unpinned} is not pinned" in err, err


def test_add_pins_by_default_and_keeps_its_name(daemon: DaemonProcess, tmp_path: Path) -> None:
    path, data = _file(tmp_path, 300_000)
    res = cli_json(daemon.home, "add", "--name", "weights v1", str(path))
    cid = res["cid"]
    assert res["pin"]["name"] == "weights v1" and res["pin"]["mode"] == "recursive"
    assert run_cli(daemon.home, "add", str(path)).stdout.decode().strip() == cid  # CID alone
    assert [(p["cid"], p["name"]) for p in _lines(daemon.home, "pin", "ls")] == [
        (cid, "weights v1")]  # a re-add without --name keeps the name
    assert "name='weights v1'" in run_cli(daemon.home, "pin", "ls").stdout.decode()
    assert cli_json(daemon.home, "pin", "status", cid)["name"] == "weights v1"
    with daemon.client() as c:
        assert [p["name"] for p in c.pins()] == ["weights v1"]
        assert c.status(cid)["name"] == "weights v1"
        loose = c.add(b"not pinned", pin=False)
        kept = c.add(b"pinned by default", name="by the client")
        assert {p["cid"]: p["name"] for p in c.pins()}[kept] == "by the client"
        assert loose not in {p["cid"] for p in c.pins()}
    assert cli_json(daemon.home, "repo", "gc")["blocks_freed"] == 1  # only `loose`
    assert run_cli(daemon.home, "cat", cid).stdout == data

    unpinned = cli_json(daemon.home, "add", "--pin=false", "-", input=b"scratch")["cid"]
    assert unpinned not in {p["cid"] for p in _lines(daemon.home, "pin", "ls")}
    refused = run_cli(daemon.home, "add", "--pin=false", "--name", "x", str(path), check=False)
    assert refused.returncode == 2 and b"--name" in refused.stderr


def _cluster_config(d: DaemonProcess, **replication: Any) -> None:
    path = d.home / "config.toml"
    cfg = replace(load(path), cluster={"name": "pins"}, bitswap={"fetch_timeout_s": 1.0},
                  replication={"heartbeat_interval_s": HEARTBEAT_S, "rmin": 1, "rmax": 1,
                               "retry_min_s": 60.0, "replan_interval_s": 5.0, **replication})
    path.write_text(render(cfg))


def _local_state(d: DaemonProcess, cid: str) -> str:
    return cli_json(d.home, "pin", "status", cid)["local_state"]


def test_cluster_unpin_keeps_a_local_pin_made_before_joining(tmp_path: Path) -> None:
    """A node's own pin survives the cluster pinning and unpinning the same CID."""
    d = DaemonProcess(tmp_path, "a")
    path, data = _file(tmp_path, 3 * MB)
    with d:
        added = cli_json(d.home, "add", "--name", "mine", str(path))
        cid = added["cid"]
    _cluster_config(d)
    with d:
        cli_json(d.home, "pin", "add", cid, "--replicas", "1", "--name", "shared")
        wait_until(lambda: _local_state(d, cid) == "pinned", timeout_s=60,
                 what="the cluster to hold the pin here")
        cli_json(d.home, "pin", "rm", cid)

        def released() -> bool:
            local = cli_json(d.home, "cluster", "status")["local"]
            return local.get("pinned", 0) == 0 and local.get("unpinning", 0) == 0

        wait_until(released, timeout_s=60, what="the cluster to release its copy")
        assert cli_json(d.home, "repo", "gc")["blocks_freed"] == 0
        assert run_cli(d.home, "cat", cid).stdout == data
    assert _holds(d, cid) == {"local": "recursive"}
    with d:
        cli_json(d.home, "pin", "rm", cid)  # the leftover local pin goes the usual way
        assert cli_json(d.home, "repo", "gc")["blocks_freed"] == added["blocks"] == 4
    assert _holds(d, cid) == {}


def _holds(d: DaemonProcess, cid: str) -> dict[str, str]:
    """Who holds ``cid`` in the stopped node's store."""
    cfg = load(d.home / "config.toml")
    with LmdbBlockStore(Home(root=d.home).store_path,
                        max_size_bytes=cfg.blockstore.max_size_bytes) as store:
        rec = store.pin_get(parse_cid(cid))
    return {} if rec is None else dict(rec.holds)


def test_failed_pins_are_listed_with_their_reason_and_recover_names_them(
        tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path, "a")
    d.init()
    _cluster_config(d)
    nowhere = str(unixfs.import_bytes(b"no peer has this", unixfs.ImportParams())[1])
    with d:
        cli_json(d.home, "pin", "add", nowhere, "--replicas", "1")
        wait_until(lambda: _local_state(d, nowhere) == "pin_error", timeout_s=60,
                 what="the fetch to fail")
        failed = _lines(d.home, "pin", "ls", "--state", "error")
        assert [p["cid"] for p in failed] == [nowhere] and failed[0]["error"]
        text = run_cli(d.home, "pin", "ls", "--state", "error").stdout.decode()
        assert text.startswith(f"{nowhere} recursive pin_error") and "error: " in text
        out = run_cli(d.home, "recover", "--all").stdout.decode()
        assert out.splitlines()[0] == "retrying 1 pin(s)"
        assert f"  {nowhere} (last error: " in out


def test_cluster_holder_missing_blocks_is_not_counted_as_holding(tmp_path: Path) -> None:
    """A cluster copy that lost blocks (found at start) is fetched again, not reported pinned."""
    d = DaemonProcess(tmp_path, "a")
    d.init()
    _cluster_config(d)
    path, data = _file(tmp_path, 3 * MB)
    with d:
        cid = cli_json(d.home, "add", "--replicas", "1", str(path))["cid"]
        wait_until(lambda: _local_state(d, cid) == "pinned", timeout_s=60, what="the pin")
    _drop_blocks(d.home, cid, 1, data)
    with d:
        st = cli_json(d.home, "pin", "status", cid)
        assert st["local_state"] != "pinned" and st["healthy"] == 0
        assert all(h["state"] != "pinned" for h in st["holders"])
        # No peer has the block: the re-fetch fails and is listed with its reason.
        wait_until(lambda: _local_state(d, cid) == "pin_error", timeout_s=60, what="the re-fetch")
        assert [p["cid"] for p in _lines(d.home, "pin", "ls", "--state", "error")] == [cid]
        verify = cli_json(d.home, "repo", "verify", check=False)
        assert [(p["cid"], p["blocks_present"]) for p in verify["incomplete"]] == [(cid, 3)]


def test_recover_fetches_the_missing_blocks_of_an_incomplete_pin(tmp_path: Path) -> None:
    a, b = DaemonProcess(tmp_path, "a"), DaemonProcess(tmp_path, "b")
    path, data = _file(tmp_path, 3 * MB)
    with a:
        cid = cli_json(a.home, "add", "--name", "model", str(path))["cid"]
    _drop_blocks(a.home, cid, 1, data)
    with a, b:
        assert cli_json(b.home, "add", str(path))["cid"] == cid
        cli_json(a.home, "peers", "connect", cli_json(b.home, "id")["addresses"][0])
        assert cli_json(a.home, "pin", "status", cid)["local_state"] == "incomplete"
        out = run_cli(a.home, "recover", cid).stdout.decode().splitlines()
        assert out == ["retrying 1 pin(s)", f"  {cid} (last error: missing 1 of 4 blocks): pinned"]
        st = cli_json(a.home, "pin", "status", cid)
        assert st["local_state"] == "pinned" and st["name"] == "model"
        assert run_cli(a.home, "cat", cid).stdout == data
