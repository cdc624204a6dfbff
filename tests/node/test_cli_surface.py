"""What a user of the ``pinfold`` command meets: ``--json`` anywhere, JSON errors and
the exit-code table, output files, and error messages that name the user's things.
Real daemons in subprocesses, the real CLI, the real socket."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.support.daemon import PYTHON, DaemonProcess, cli_json, run_cli

# Names of exception classes (ours or a library's) that must never reach a user.
INTERNAL_NAME = re.compile(rb"\b[A-Z][A-Za-z]*(Error|Exception|Group)\b|nursery|Traceback")


# The tests share one daemon (``daemon``, tests/conftest.py); each adds its own content.
pytestmark = pytest.mark.shared_daemon(config="[bitswap]\nfetch_timeout_s = 1.0\n")


def _json_error(proc: subprocess.CompletedProcess[bytes]) -> dict:
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1, proc.stderr
    err = json.loads(lines[0])["error"]
    assert set(err) >= {"code", "message"} and err["exit"] == proc.returncode
    return err


def _cli_in(cwd: Path, home: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([PYTHON, "-m", "pinfold.daemon.cli", "--home", str(home), *args],
                          cwd=cwd, capture_output=True, timeout=120, check=False)


# ------------------------------------------------------------------ item 9: --json


def test_json_is_accepted_after_nested_subcommands(daemon: DaemonProcess) -> None:
    cid = cli_json(daemon.home, "add", "--pin", "-", input=b"json anywhere\n")["cid"]
    for args in (("pin", "ls", "--json"), ("pin", "--json", "ls"), ("--json", "pin", "ls"),
                 ("pin", "ls", "--state", "pinned", "--json")):
        out = run_cli(daemon.home, *args).stdout.decode().splitlines()
        assert cid in [json.loads(line)["cid"] for line in out], args
    assert run_cli(daemon.home, "repo", "stat", "--json").stdout.startswith(b"{")
    assert json.loads(run_cli(daemon.home, "block", "stat", cid, "--json").stdout)["size"] == 14
    assert json.loads(run_cli(daemon.home, "peers", "ls", "--json").stdout or b"{}") is not None


def test_json_errors_are_json_with_the_documented_exit_codes(daemon: DaemonProcess,
                                                             tmp_path: Path) -> None:
    missing = "bafkreiaebgek5oebxexwnndg4xhtoi2msmtrulr57gabsif45f54cya4gq"
    usage = run_cli(daemon.home, "pin", "ls", "--state", "bogus", "--json", check=False)
    assert usage.returncode == 2 and _json_error(usage)["code"] == "usage"
    assert b"usage:" not in usage.stderr
    unknown = run_cli(daemon.home, "--json", "pin", "ls", "--bogus", check=False)
    assert unknown.returncode == 2 and "--bogus" in _json_error(unknown)["message"]
    nodaemon = run_cli(tmp_path / "elsewhere", "pin", "ls", "--json", check=False)
    assert nodaemon.returncode == 3
    assert _json_error(nodaemon)["code"] == "daemon_not_running"
    notfound = run_cli(daemon.home, "block", "stat", missing, "--json", check=False)
    err = _json_error(notfound)
    assert notfound.returncode == 4 and err["code"] == "not_found" and missing in err["message"]
    notpinned = run_cli(daemon.home, "pin", "rm", missing, "--json", check=False)
    assert notpinned.returncode == 4 and _json_error(notpinned)["code"] == "not_pinned"
    badcid = run_cli(daemon.home, "cat", "not-a-cid", "--json", check=False)
    assert badcid.returncode == 1 and _json_error(badcid)["code"] == "invalid_cid"
    # Without --json the same errors are one plain line, with the same exit codes.
    plain = run_cli(daemon.home, "block", "stat", missing, check=False)
    assert plain.returncode == 4 and plain.stderr.startswith(b"pinfold: error: block not found")


def test_exit_code_for_a_fetch_timeout_is_5(tmp_path: Path) -> None:
    """A peer that never answers (stopped with SIGSTOP, its connection open)
    makes the fetch wait out bitswap.fetch_timeout_s: exit 5, fetch_timeout."""
    a = DaemonProcess(tmp_path, "a", config="[bitswap]\nfetch_timeout_s = 2.0\n").start()
    silent = DaemonProcess(tmp_path, "silent").start()
    try:
        addr = cli_json(silent.home, "id")["addresses"][0]
        cli_json(a.home, "peers", "connect", addr)
        os.kill(silent.pid, signal.SIGSTOP)
        missing = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
        out = run_cli(a.home, "--json", "pin", "add", missing, check=False)
        err = _json_error(out)
        assert out.returncode == 5 and err["code"] == "fetch_timeout", err
        assert missing in err["message"]
    finally:
        os.kill(silent.pid, signal.SIGCONT)
        for d in (a, silent):
            d.stop()
            d.kill9()


def test_exit_code_when_every_peer_answers_dont_have_is_4(daemon: DaemonProcess,
                                                          tmp_path: Path) -> None:
    """Content no connected peer has is not found at once, not a timeout."""
    other = DaemonProcess(tmp_path, "b").start()
    try:
        addr = cli_json(other.home, "id")["addresses"][0]
        cli_json(daemon.home, "peers", "connect", addr)
        missing = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
        out = run_cli(daemon.home, "--json", "pin", "add", missing, check=False)
        err = _json_error(out)
        assert out.returncode == 4 and err["code"] == "not_found", err
        assert err["message"] == f"no peer has block {missing}: 1 peer asked: 1 DONT_HAVE"
    finally:
        other.stop()
        other.kill9()


def test_exit_code_for_a_full_store_is_6(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path, "small", config="[blockstore]\nmax_size_bytes = 16777216\n")
    with d:
        big = tmp_path / "big.bin"
        big.write_bytes(random.Random(1).randbytes(24 * 1024 * 1024))
        out = run_cli(d.home, "add", str(big), "--json", check=False)
        err = _json_error(out)
        assert out.returncode == 6 and err["code"] == "store_full", err


def test_exit_code_for_a_refused_request_is_7(daemon: DaemonProcess) -> None:
    second = run_cli(daemon.home, "daemon", "--json", check=False)
    err = _json_error(second)
    assert second.returncode == 7, err
    assert "another pinfold daemon" in err["message"] or "already running" in err["message"]


# ------------------------------------------------------------------ item 11: output files


def test_dag_export_refuses_to_overwrite_without_force(daemon: DaemonProcess,
                                                      tmp_path: Path) -> None:
    cid = cli_json(daemon.home, "add", "-", input=b"export me\n")["cid"]
    car = run_cli(daemon.home, "dag", "export", cid).stdout
    assert car
    target = tmp_path / "out.car"
    target.write_bytes(b"precious")
    out = run_cli(daemon.home, "dag", "export", cid, "-o", str(target), check=False)
    assert out.returncode == 1 and b"already exists" in out.stderr and b"--force" in out.stderr
    assert target.read_bytes() == b"precious"
    run_cli(daemon.home, "dag", "export", cid, "-o", str(target), "--force")
    assert target.read_bytes() == car
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.car"]  # no temporary left
    bad = run_cli(daemon.home, "dag", "export", "not-a-cid", "-o", str(tmp_path / "x.car"),
                  check=False)
    assert bad.returncode == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["out.car"]


def test_dash_output_writes_to_stdout_not_a_file_named_dash(daemon: DaemonProcess,
                                                           tmp_path: Path) -> None:
    cid = cli_json(daemon.home, "add", "-", input=b"to stdout\n")["cid"]
    car = run_cli(daemon.home, "dag", "export", cid).stdout
    out = _cli_in(tmp_path, daemon.home, "dag", "export", cid, "-o", "-")
    assert out.returncode == 0 and out.stdout == car
    got = _cli_in(tmp_path, daemon.home, "get", cid, "-o", "-")
    assert got.returncode == 0 and got.stdout == b"to stdout\n"
    assert not (tmp_path / "-").exists()


def test_get_into_an_empty_folder_is_allowed_a_non_empty_one_refused(
        daemon: DaemonProcess, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_bytes(b"a")
    (tree / "sub" / "b.txt").write_bytes(b"b")
    dir_cid = cli_json(daemon.home, "add", "-r", str(tree))["cid"]
    file_cid = cli_json(daemon.home, "add", "-", input=b"one file\n")["cid"]
    empty = tmp_path / "empty"
    empty.mkdir()
    run_cli(daemon.home, "get", dir_cid, "-o", str(empty))
    assert (empty / "a.txt").read_bytes() == b"a" and (empty / "sub" / "b.txt").read_bytes() == b"b"
    empty2 = tmp_path / "empty2"
    empty2.mkdir()
    res = cli_json(daemon.home, "get", file_cid, "-o", str(empty2))
    assert (empty2 / file_cid).read_bytes() == b"one file\n"
    assert res["path"] == str(empty2 / file_cid)
    out = run_cli(daemon.home, "get", dir_cid, "-o", str(empty), check=False)
    assert out.returncode == 1
    assert f"{empty}: the folder is not empty (it holds 'a.txt')".encode() in out.stderr
    assert sorted(p.name for p in empty.iterdir()) == ["a.txt", "sub"]
    # A failed get into an empty folder leaves it there, empty.
    empty3 = tmp_path / "empty3"
    empty3.mkdir()
    missing = "bafkreiaebgek5oebxexwnndg4xhtoi2msmtrulr57gabsif45f54cya4gq"
    out = run_cli(daemon.home, "get", missing, "-o", str(empty3), check=False)
    assert out.returncode == 4 and empty3.is_dir() and list(empty3.iterdir()) == []


# ------------------------------------------------------------------ item 13: messages


def test_dial_errors_name_the_address_not_library_classes(daemon: DaemonProcess) -> None:
    other = "12D3KooWJ2NidyDtN3n7gnqfTEup1QMuVpovRbYDJaqvsF8DtnYR"
    addr = f"/ip4/127.0.0.1/tcp/1/p2p/{other}"
    out = run_cli(daemon.home, "peers", "connect", addr, check=False)
    assert out.returncode == 1 and addr.encode() in out.stderr
    assert not INTERNAL_NAME.search(out.stderr), out.stderr
    assert out.stderr.endswith(b"Connection refused\n")  # the innermost cause


def test_listen_address_not_on_this_machine_names_key_and_config_file(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path, "elsewhere")
    d.init()
    cfg = d.home / "config.toml"
    cfg.write_text(cfg.read_text().replace("/ip4/127.0.0.1/tcp/0", "/ip4/192.0.2.1/tcp/4999"))
    out = run_cli(d.home, "daemon", check=False, timeout=60)
    assert out.returncode == 1
    line = out.stderr.decode().strip().splitlines()[-1]
    assert "node.listen: /ip4/192.0.2.1/tcp/4999" in line and str(cfg) in line, line
    assert "no network interface of this machine has that address" in line
    assert not INTERNAL_NAME.search(out.stderr)


def test_listen_address_in_use_names_address_key_and_config_file(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        d = DaemonProcess(tmp_path, "b")
        d.init()
        cfg = d.home / "config.toml"
        cfg.write_text(cfg.read_text().replace("/ip4/127.0.0.1/tcp/0",
                                               f"/ip4/127.0.0.1/tcp/{port}"))
        out = run_cli(d.home, "--json", "daemon", check=False, timeout=60)
    err = _json_error(out)
    assert out.returncode == 1
    assert err["message"].startswith(f"node.listen: /ip4/127.0.0.1/tcp/{port}: ")
    assert "listens there" in err["message"] and str(cfg) in err["message"]


def test_rpc_error_replies_never_show_exception_groups_or_class_names() -> None:
    from pinfold.blockstore.errors import BlockNotFound
    from pinfold.daemon.rpc.server import _error_reply

    req = SimpleNamespace(id=7, method="pin_add")
    group = ExceptionGroup("Exceptions from Trio nursery", [
        ExceptionGroup("Exceptions from Trio nursery", [BlockNotFound("bafyX")]),
        KeyError("k")])
    reply = _error_reply(req, group)
    assert reply.code == "not_found"
    assert "block not found: bafyX" in reply.message
    assert not INTERNAL_NAME.search(reply.message.encode()), reply.message
    internal = _error_reply(req, ExceptionGroup("Exceptions from Trio nursery",
                                                [RuntimeError("disk on fire"), OSError()]))
    assert internal.code == "internal"
    assert internal.message.startswith("internal error in pin_add: disk on fire")
    assert not INTERNAL_NAME.search(internal.message.encode()), internal.message


def test_pin_errors_recorded_for_users_never_show_exception_groups() -> None:
    from pinfold.replication.errors import describe

    exc = ExceptionGroup("Exceptions from Trio nursery",
                         [ExceptionGroup("Exceptions from Trio nursery",
                                         [TimeoutError(), ValueError("bad block")])])
    assert describe(exc) == "timed out; bad block"


def test_usage_errors_without_json_keep_the_usage_line(daemon: DaemonProcess) -> None:
    out = run_cli(daemon.home, "pin", "ls", "--state", "bogus", check=False)
    assert out.returncode == 2
    assert out.stderr.startswith(b"usage: pinfold pin ls")
    assert b"pinfold pin ls: error: argument --state: invalid choice" in out.stderr


def test_rpc_socket_in_use_names_the_path_and_rpc_socket_key(daemon: DaemonProcess,
                                                             tmp_path: Path) -> None:
    sock = daemon.home / "rpc.sock"
    other = DaemonProcess(tmp_path, "same-socket", config=f'[rpc]\nsocket = "{sock}"\n')
    other.init()
    out = run_cli(other.home, "daemon", "--json", check=False, timeout=60)
    err = _json_error(out)
    assert out.returncode == 7 and err["code"] == "already_running"
    assert err["message"].startswith(f"rpc.socket: another daemon is already running on {sock}")
    assert str(other.home / "config.toml") in err["message"]


def test_exit_code_table_is_the_one_readme_documents() -> None:
    from pinfold.blockstore.errors import StoreFull
    from pinfold.daemon.cli.format import EXIT_CODES, code_for, exit_code_for
    from pinfold.daemon.rpc.connection import DaemonNotRunning, RpcError

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    documented = {int(m) for m in re.findall(r"^\| (\d+) \| ", readme, re.MULTILINE)}
    assert documented == {0, 1, *EXIT_CODES.values()}
    assert exit_code_for(DaemonNotRunning("/x", "socket missing")) == 3
    assert exit_code_for(RpcError("not_found", "block not found: b")) == 4
    assert exit_code_for(RpcError("fetch_timeout", "no peer had block b")) == 5
    assert exit_code_for(ExceptionGroup("g", [StoreFull("full")])) == 6
    assert exit_code_for(RpcError("permission_denied", "socket")) == 7
    for refused in ("invalid_pin", "pin_error", "pin_failed"):  # refused or failed pins
        assert exit_code_for(RpcError(refused, "refused")) == 7
    assert exit_code_for(RpcError("name_not_found", "no version 9 of acme/m")) == 4
    assert exit_code_for(RpcError("not_allowed", "key may not publish acme/m")) == 7
    assert exit_code_for(RpcError("invalid_cid", "bad")) == 1
    assert code_for(FileNotFoundError(2, "No such file or directory", "f")) == "file_not_found"
    assert exit_code_for(FileNotFoundError(2, "No such file or directory", "f")) == 1


def test_add_pin_false_with_a_space_names_the_right_syntax(tmp_path: Path) -> None:
    f = tmp_path / "weights.bin"
    f.write_bytes(b"w")
    for argv in (("add", "--pin", "false", str(f)), ("add", str(f), "--pin", "false")):
        out = run_cli(tmp_path / "home", *argv, check=False)
        err = out.stderr.decode()
        assert out.returncode == 2, err
        assert "write --pin=false" in err and "Traceback" not in err, err


def test_client_add_names_every_keyword_it_takes_and_waits_with_wait(
        daemon: DaemonProcess) -> None:
    from pinfold.client import Client

    c = Client(socket_path=daemon.home / "no.sock")  # refused before anything is sent
    with pytest.raises(TypeError) as info:
        c.add(b"x", replica=2)
    for name in ("replicas", "rmin", "rmax", "availability", "wait", "wait_timeout", "pin",
                 "progress", "name"):
        assert f" {name}," in str(info.value) or f" {name})" in str(info.value), info.value
    with daemon.client() as c:
        cid = c.add(b"waited for", wait=True)
        assert c.status(cid)["healthy"] == 1
        with pytest.raises(ValueError, match="must be > 0 seconds"):
            c.add(b"never sent", wait_timeout=0)
