"""The RPC server's socket file, the handshake and client basics, and error replies:
a real trio server on a real Unix socket, the blocking client (in a worker thread) and
the trio client."""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from pinfold.daemon.rpc import wire as w
from pinfold.daemon.rpc.connection import RpcConnection, open_rpc_connection
from pinfold.daemon.rpc.server import Call, RpcServer, RpcServerError

from tests.rpc.rpc_harness import Harness, MiB, call_once, in_thread


# ------------------------------------------------------------------ the socket file


async def test_socket_is_mode_0660_even_with_a_permissive_umask(start: Callable[..., Any]
                                                                ) -> None:
    old = os.umask(0)
    try:
        h = await start()
    finally:
        os.umask(old)
    st = os.stat(h.path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660


async def test_socket_mode_is_configurable(start: Callable[..., Any]) -> None:
    h = await start(mode=0o600)
    assert stat.S_IMODE(os.stat(h.path).st_mode) == 0o600


async def test_clean_shutdown_unlinks_the_socket(short_dir: Path) -> None:
    path = short_dir / "rpc.sock"
    server = RpcServer(path, {}, daemon_version="1")
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        assert path.exists()
        nursery.cancel_scope.cancel()
    assert not path.exists()


async def test_stale_socket_is_replaced(short_dir: Path) -> None:
    path = short_dir / "rpc.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))  # a crashed daemon's leftover: the file exists, nothing listens
    stale.close()
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    async def ping(call: Call) -> None:
        return None

    server = RpcServer(path, {"ping": ping}, daemon_version="1")
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        assert await in_thread(lambda: call_once(path, "ping")) is None
        nursery.cancel_scope.cancel()


async def test_second_server_is_refused_and_the_first_keeps_serving(rpc: Harness) -> None:
    second = RpcServer(rpc.path, {}, daemon_version="2")
    with pytest.raises(RpcServerError) as err:
        await second.run()
    assert err.value.code == "already_running"
    assert f"another daemon is already running on {rpc.path}" in str(err.value)
    assert rpc.path.exists()
    conn = await in_thread(lambda: RpcConnection(rpc.path))
    assert conn.daemon_version == "9.9.9-test"
    conn.close()


async def test_a_foreign_listener_is_not_replaced(short_dir: Path) -> None:
    path = short_dir / "rpc.sock"
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other.bind(str(path))
    other.listen(1)
    try:
        with pytest.raises(RpcServerError, match="another daemon is already running on"):
            await RpcServer(path, {}, daemon_version="1").run()
        assert path.exists()
    finally:
        other.close()


async def test_a_regular_file_is_never_replaced(short_dir: Path) -> None:
    path = short_dir / "rpc.sock"
    path.write_text("precious")
    with pytest.raises(RpcServerError, match="exists and is not a socket") as err:
        await RpcServer(path, {}, daemon_version="1").run()
    assert err.value.code == "socket_path_invalid"
    assert path.read_text() == "precious"


async def test_too_long_socket_path_is_a_clear_error(short_dir: Path) -> None:
    path = short_dir / ("x" * 120)
    with pytest.raises(RpcServerError, match="over the 107-byte AF_UNIX limit"):
        await RpcServer(path, {}, daemon_version="1").run()


# ------------------------------------------------------------------ client basics


def test_no_daemon_is_a_clear_error(short_dir: Path) -> None:
    path = short_dir / "rpc.sock"
    with pytest.raises(w.DaemonNotRunning) as err:
        RpcConnection(path)
    assert err.value.code == "daemon_not_running"
    assert str(path) in str(err.value) and "socket missing" in str(err.value)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()
    with pytest.raises(w.DaemonNotRunning, match="connection refused"):
        RpcConnection(path)


def test_client_window_is_checked_locally(short_dir: Path) -> None:
    with pytest.raises(ValueError, match="window_bytes must be in"):
        RpcConnection(short_dir / "rpc.sock", window_bytes=1000)


async def test_async_client_reports_no_daemon(short_dir: Path) -> None:
    with pytest.raises(w.DaemonNotRunning, match="socket missing"):
        async with open_rpc_connection(short_dir / "nope.sock"):
            pass


async def test_handshake_and_echo_both_clients(rpc: Harness) -> None:
    def sync() -> Any:
        with RpcConnection(rpc.path) as conn:
            assert (conn.daemon_version, conn.protocol_version) == ("9.9.9-test", 1)
            return conn.call("echo", {"a": [1, "two", b"\x03"], "n": None})

    assert await in_thread(sync) == {"method": "echo", "params": {"a": [1, "two", b"\x03"],
                                                                  "n": None}, "upload": False}
    async with open_rpc_connection(rpc.path) as conn:
        assert conn.daemon_version == "9.9.9-test"
        assert await conn.call("echo") == {"method": "echo", "params": {}, "upload": False}
    assert ("echo", "ok") in [(m, o) for m, o, _ in rpc.done]
    assert all(seconds >= 0 for _, _, seconds in rpc.done)


async def test_progress_events_reach_both_clients_only_when_asked(rpc: Harness) -> None:
    """Progress frames go to calls that ask, interleaved with items that stay
    intact; events that do not fit in the credit are dropped, the last one
    waits; a call that does not ask gets none."""
    n = 12  # 12 MiB of items through a ~2 MiB window: some events cannot fit

    def sync() -> tuple[list[Any], list[int], Any]:
        events: list[Any] = []
        with RpcConnection(rpc.path, window_bytes=w.MIN_WINDOW_BYTES) as conn:
            stream = conn.stream("progress", {"n": n, "progress": True},
                                 on_progress=events.append)
            sizes = [len(item) for item in stream]
            return events, sizes, stream.result

    events, sizes, result = await in_thread(sync)
    assert sizes == [MiB] * n
    assert events[-1] == {"i": n, "done": True} and len(events) == result["sent"]
    assert [e["i"] for e in events] == sorted(e["i"] for e in events)

    async with open_rpc_connection(rpc.path) as conn:
        seen: list[Any] = []
        async with conn.stream("progress", {"n": 3, "progress": True},
                               on_progress=seen.append) as s:
            assert [len(item) async for item in s] == [MiB] * 3
        assert seen[-1] == {"i": 3, "done": True}
        async with conn.stream("progress", {"n": 2}) as s:
            assert [len(item) async for item in s] == [MiB] * 2
        assert s.result == {"sent": 1}  # the handler's sends all returned False


# ------------------------------------------------------------------ errors


async def test_handler_failing_with_several_errors_replies_with_one_that_has_a_code(
        rpc: Harness) -> None:
    def sync() -> tuple[str, str]:
        with RpcConnection(rpc.path) as conn, pytest.raises(w.RpcError) as err:
            conn.call("fail_two_at_once", {})
        return err.value.code, err.value.message

    code, message = await in_thread(sync)
    assert code == "not_found" and message in ("first with a code", "second with a code")


async def test_error_replies_map_codes(rpc: Harness) -> None:
    def sync() -> list[tuple[str, str]]:
        out = []
        with RpcConnection(rpc.path) as conn:
            for method, params in [("fail_not_found", {"cid": "bafy1"}), ("fail_internal", {}),
                                   ("fail_group", {}), ("no_such_method", {}),
                                   ("bad_result", {}), ("too_big_item", {}),
                                   ("upload_twice", {})]:
                with pytest.raises(w.RpcError) as err:
                    conn.call(method, params)
                out.append((err.value.code, err.value.message))
            # The connection is still fine after error replies.
            assert conn.call("echo", {"ok": 1})["params"] == {"ok": 1}
        return out

    errors = await in_thread(sync)
    assert errors[0] == ("not_found", "block not found: bafy1")
    assert errors[1] == ("internal", "internal error in fail_internal: boom")
    assert errors[2] == ("not_found", "inside a nursery")
    assert errors[3] == ("unknown_method", "unknown method 'no_such_method'")
    assert errors[4][0] == "internal" and "reply cannot be sent" in errors[4][1]
    assert errors[5][0] == "internal" and "frame limit" in errors[5][1]
    assert errors[6] == ("internal",
                         "internal error in upload_twice: call.upload() can be iterated only once")
    outcomes = [(m, o) for m, o, _ in rpc.done]
    assert ("fail_not_found", "not_found") in outcomes
    assert ("(unknown)", "unknown_method") in outcomes


async def test_internal_errors_are_logged_with_traceback(
        rpc: Harness, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(w.RpcError):
        await in_thread(lambda: call_once(rpc.path, "fail_internal"))
    records = [r for r in caplog.records if r.name == "pinfold.daemon.rpc"]
    assert any(r.exc_info and "fail_internal" in r.getMessage() for r in records)


def test_a_daemon_that_never_answers_gives_a_timeout_naming_the_seconds(tmp_path) -> None:
    """A daemon that accepts but never answers (stopped with SIGSTOP): the client
    says how long it waited, in seconds, not "None"."""
    import socket as socketlib

    path = tmp_path / "silent.sock"
    listener = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    try:
        with pytest.raises(w.RpcError) as err:
            RpcConnection(path, connect_timeout=0.3)
        assert err.value.code == "timeout"
        assert "within 0.3 s" in err.value.message and "None" not in err.value.message
    finally:
        listener.close()
