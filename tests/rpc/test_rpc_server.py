"""The local RPC end to end: a real trio server on a real Unix socket, the blocking
client (in a worker thread) and the trio client, small test handlers."""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
import socket
import stat
import struct
import tempfile
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import msgpack
import pytest
import trio
import trio.lowlevel
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pinfold.daemon.rpc import wire as w
from pinfold.daemon.rpc.connection import RpcConnection, open_rpc_connection
from pinfold.daemon.rpc.server import Call, RpcLimits, RpcServer, RpcServerError

from tests.support.wait import wait_until_trio

wait_until = functools.partial(wait_until_trio, interval_s=0.001)  # a server on this loop

MiB = 1 << 20
SMALL_WINDOW = w.MIN_WINDOW_BYTES  # ~2 MiB: much smaller than the payloads below


class NotFoundError(Exception):
    code = "not_found"


@dataclass
class Handlers:
    """Test handlers plus what they observed."""

    gate: trio.Event = field(default_factory=trio.Event)
    cancelled: list[str] = field(default_factory=list)
    started: dict[str, trio.Event] = field(default_factory=dict)
    sent_minus_consumed: list[int] = field(default_factory=list)
    consumed: list[int] = field(default_factory=lambda: [0])  # updated by the client thread
    stop_server: trio.CancelScope | None = None

    def started_event(self, name: str) -> trio.Event:
        return self.started.setdefault(name, trio.Event())

    def table(self) -> dict[str, Callable[[Call], Any]]:
        return {name[2:]: getattr(self, name) for name in dir(self) if name.startswith("h_")}

    async def h_echo(self, call: Call) -> Any:
        return {"method": call.method, "params": call.params, "upload": call.has_upload}

    async def h_upload_sum(self, call: Call) -> dict[str, Any]:
        digest = hashlib.sha256()
        total = 0
        async for chunk in call.upload():
            assert isinstance(chunk, bytes)
            digest.update(chunk)
            total += len(chunk)
        return {"bytes": total, "sha256": digest.hexdigest()}

    async def h_gated_upload_sum(self, call: Call) -> dict[str, Any]:
        self.started_event("gated_upload_sum").set()
        await self.gate.wait()
        return await self.h_upload_sum(call)

    async def h_download(self, call: Call) -> dict[str, int]:
        """Send ``n`` bytes of a repeating pattern in ``chunk``-byte items."""
        n, size = call.params["n"], call.params.get("chunk", MiB)
        block = bytes(range(256)) * (size // 256 + 1)
        sent = 0
        while sent < n:
            piece = block[: min(size, n - sent)]
            await call.send(piece)
            sent += len(piece)
            self.sent_minus_consumed.append(sent - self.consumed[0])
        return {"bytes": sent}

    async def h_send_buffers(self, call: Call) -> int:
        """Views of bytes go out as they are; a bytearray reused after send() must not
        change what the client receives."""
        data = pattern(3 * MiB)
        view = memoryview(data)
        for i in range(0, len(data), MiB):
            await call.send(view[i:i + MiB])
        scratch = bytearray(b"a" * 1000)
        await call.send(scratch)
        scratch[:] = b"b" * 1000
        await call.send(memoryview(scratch))
        scratch[:] = b"c" * 1000
        return len(data)

    async def h_items(self, call: Call) -> int:
        for i in range(call.params["n"]):
            await call.send({"i": i})
        return call.params["n"]

    async def h_progress(self, call: Call) -> dict[str, int]:
        """``n`` 1 MiB items, a progress event after each (dropped when the credit is
        spent), then a last event that waits for credit."""
        sent = 0
        for i in range(call.params["n"]):
            await call.send(bytes(MiB))
            if await call.progress({"i": i}):
                sent += 1
        await call.progress({"i": call.params["n"], "done": True}, wait=True)
        return {"sent": sent + 1}

    async def h_echo_upload(self, call: Call) -> int:
        """Bidirectional: stream each upload chunk back as an item."""
        total = 0
        async for chunk in call.upload():
            total += len(chunk)
            await call.send(chunk)
        return total

    async def h_slow(self, call: Call) -> None:
        self.started_event("slow").set()
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            self.cancelled.append("slow")
            raise

    async def h_fail_not_found(self, call: Call) -> None:
        raise NotFoundError(f"block not found: {call.params.get('cid')}")

    async def h_fail_internal(self, call: Call) -> None:
        raise ValueError("boom")

    async def h_fail_group(self, call: Call) -> None:
        async with trio.open_nursery() as nursery:
            async def fail() -> None:
                raise NotFoundError("inside a nursery")
            nursery.start_soon(fail)

    async def h_fail_two_at_once(self, call: Call) -> None:
        """Two tasks fail together, as two write batches of one add hitting a full store."""
        async def fail(exc: Exception) -> None:
            raise exc  # no checkpoint first: a cancelled sibling still raises its own

        async with trio.open_nursery() as nursery:
            nursery.start_soon(fail, ValueError("not the one to report"))
            nursery.start_soon(fail, NotFoundError("first with a code"))
            nursery.start_soon(fail, NotFoundError("second with a code"))

    async def h_bad_result(self, call: Call) -> object:
        return object()

    async def h_too_big_item(self, call: Call) -> None:
        await call.send(b"x" * w.MAX_FRAME_BYTES)

    async def h_upload_twice(self, call: Call) -> None:
        call.upload()
        call.upload()

    async def h_shutdown(self, call: Call) -> str:
        assert self.stop_server is not None
        self.stop_server.cancel()
        return "bye"


@dataclass
class Harness:
    server: RpcServer
    path: Path
    handlers: Handlers
    done: list[tuple[str, str, float]]


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # AF_UNIX paths are limited to 107 bytes; pytest's tmp_path can be longer.
    path = Path(tempfile.mkdtemp(prefix="rpc", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def start(nursery: trio.Nursery, short_dir: Path
                ) -> AsyncIterator[Callable[..., Any]]:
    """Start a server: ``await start(limits=..., name=...) -> Harness``."""

    async def _start(*, limits: RpcLimits | None = None, name: str = "rpc.sock",
                     mode: int = 0o660) -> Harness:
        limits = limits or RpcLimits()
        handlers = Handlers()
        done: list[tuple[str, str, float]] = []
        path = short_dir / name
        server = RpcServer(path, handlers.table(), daemon_version="9.9.9-test", mode=mode,
                           limits=limits,
                           on_request_done=lambda m, o, s: done.append((m, o, s)))
        scope = trio.CancelScope()
        handlers.stop_server = scope

        async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with scope:
                await server.run(task_status=task_status)

        await nursery.start(run)
        return Harness(server, path, handlers, done)

    yield _start


@pytest.fixture
async def rpc(start: Callable[..., Any]) -> Harness:
    return await start()


async def in_thread(fn: Callable[[], Any]) -> Any:
    return await trio.to_thread.run_sync(fn)


def call_once(path: Path, method: str, params: dict[str, Any] | None = None) -> Any:
    with RpcConnection(path) as conn:
        return conn.call(method, params)


def pattern(n: int, size: int = MiB) -> bytes:
    block = bytes(range(256)) * (size // 256 + 1)
    out = bytearray()
    while len(out) < n:
        out += block[: min(size, n - len(out))]
    return bytes(out)


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


# ------------------------------------------------------------------ streaming


async def test_upload_larger_than_window_is_bounded(start: Callable[..., Any]) -> None:
    """64 MiB through a ~2 MiB window: the server never buffers more than the window,
    and the client pulls its iterator only as credit arrives."""
    h = await start(limits=RpcLimits(window_bytes=SMALL_WINDOW))
    total = 64 * MiB
    pulled = [0]

    def chunks() -> Iterator[bytes]:
        block = pattern(MiB)
        for _ in range(total // MiB):
            pulled[0] += 1
            yield block

    def upload() -> Any:
        with RpcConnection(h.path) as conn:
            return conn.call("gated_upload_sum", upload=chunks())

    async with trio.open_nursery() as nursery:
        result: list[Any] = []

        async def client() -> None:
            result.append(await in_thread(upload))

        nursery.start_soon(client)
        await h.handlers.started_event("gated_upload_sum").wait()
        # With the handler not reading, the client stalls once the window is full.
        await wait_until(lambda: h.server.statistics().upload_buffered_bytes
                         > SMALL_WINDOW - w.MAX_FRAME_BYTES, what="the window filled")
        stats = h.server.statistics()
        assert stats.upload_buffered_bytes <= SMALL_WINDOW
        assert pulled[0] <= 3  # two chunks buffered, one waiting for credit
        h.handlers.gate.set()
    digest = hashlib.sha256(pattern(MiB) * (total // MiB)).hexdigest()
    assert result == [{"bytes": total, "sha256": digest}]
    stats = h.server.statistics()
    assert stats.upload_buffered_peak_bytes <= SMALL_WINDOW
    assert stats.upload_buffered_bytes == 0


async def test_download_larger_than_window_is_incremental(rpc: Harness) -> None:
    """The daemon runs at most one window ahead of what the client consumed."""
    total = 48 * MiB
    window = w.MIN_WINDOW_BYTES

    def download() -> tuple[int, Any]:
        digest = hashlib.sha256()
        with RpcConnection(rpc.path, window_bytes=window) as conn:
            stream = conn.stream("download", {"n": total, "chunk": MiB})
            for item in stream:
                digest.update(item)
                rpc.handlers.consumed[0] += len(item)
            return rpc.handlers.consumed[0], (stream.result, digest.hexdigest())

    got, (result, digest) = await in_thread(download)
    assert got == total
    assert result == {"bytes": total}
    assert digest == hashlib.sha256(pattern(total)).hexdigest()
    assert max(rpc.handlers.sent_minus_consumed) <= window
    assert rpc.server.statistics().send_queue_peak_bytes <= window + 4096


async def test_many_small_items(rpc: Harness) -> None:
    def run() -> tuple[list[Any], Any]:
        with RpcConnection(rpc.path) as conn:
            stream = conn.stream("items", {"n": 5000})
            return list(stream), stream.result

    items, result = await in_thread(run)
    assert items == [{"i": i} for i in range(5000)]
    assert result == 5000


async def test_buffer_items_are_sent_safely(rpc: Harness) -> None:
    def run() -> tuple[list[bytes], Any]:
        with RpcConnection(rpc.path) as conn:
            stream = conn.stream("send_buffers")
            return list(stream), stream.result

    items, result = await in_thread(run)
    assert b"".join(items[:3]) == pattern(3 * MiB) and result == 3 * MiB
    assert items[3:] == [b"a" * 1000, b"b" * 1000]


async def test_bidirectional_streaming_sync_client(start: Callable[..., Any]) -> None:
    """Upload and download at once through small windows, from one thread, no deadlock."""
    h = await start(limits=RpcLimits(window_bytes=SMALL_WINDOW))
    data = pattern(24 * MiB, size=MiB - 3)

    def run() -> tuple[bytes, Any]:
        back = bytearray()
        with RpcConnection(h.path, window_bytes=SMALL_WINDOW) as conn:
            pieces = (data[i:i + MiB - 3] for i in range(0, len(data), MiB - 3))
            stream = conn.stream("echo_upload", upload=pieces)
            for item in stream:
                back += item
            return bytes(back), stream.result

    back, result = await in_thread(run)
    assert result == len(data)
    assert back == data


async def test_oversize_upload_chunks_are_split(rpc: Harness) -> None:
    data = pattern(5 * MiB + 123)

    def run() -> Any:
        with RpcConnection(rpc.path) as conn:
            return conn.call("upload_sum", upload=[memoryview(data), b"", bytearray(b"tail")])

    result = await in_thread(run)
    assert result == {"bytes": len(data) + 4,
                      "sha256": hashlib.sha256(data + b"tail").hexdigest()}


async def test_upload_source_failure_cancels_the_request(rpc: Harness) -> None:
    def chunks() -> Iterator[bytes]:
        yield b"x" * MiB
        raise OSError("disk read failed")

    def run() -> Any:
        with RpcConnection(rpc.path) as conn:
            with pytest.raises(OSError, match="disk read failed"):
                conn.call("gated_upload_sum", upload=chunks())
            return conn.call("echo", {"after": True})["params"]

    assert await in_thread(run) == {"after": True}
    assert ("gated_upload_sum", "cancelled") in [(m, o) for m, o, _ in rpc.done]


# ------------------------------------------------------------------ concurrency


async def test_many_concurrent_requests_on_one_connection(rpc: Harness) -> None:
    results: dict[str, Any] = {}
    async with open_rpc_connection(rpc.path, window_bytes=SMALL_WINDOW) as conn, \
            trio.open_nursery() as nursery:
            async def echo(i: int) -> None:
                results[f"echo{i}"] = (await conn.call("echo", {"i": i}))["params"]["i"]

            async def upload(i: int) -> None:
                data = pattern(3 * MiB + i)
                results[f"up{i}"] = (await conn.call("upload_sum", upload=[data]))["bytes"]

            async def download(i: int) -> None:
                total = 0
                async with conn.stream("download", {"n": 3 * MiB + i, "chunk": 65536}) as s:
                    async for item in s:
                        total += len(item)
                results[f"down{i}"] = (total, s.result["bytes"])

            for i in range(20):
                nursery.start_soon(echo, i)
                nursery.start_soon(upload, i)
                nursery.start_soon(download, i)
    for i in range(20):
        assert results[f"echo{i}"] == i
        assert results[f"up{i}"] == 3 * MiB + i
        assert results[f"down{i}"] == (3 * MiB + i, 3 * MiB + i)
    assert rpc.server.statistics().requests_total == 60


async def test_a_stalled_stream_does_not_stall_others(rpc: Harness) -> None:
    """A download nobody reads fills its window and stops; the connection's other
    requests, uploads included, still complete."""
    async with open_rpc_connection(rpc.path) as conn, \
            conn.stream("download", {"n": 64 * MiB}) as stalled:
        first = await stalled.__anext__()
        assert len(first) == MiB
        for i in range(5):
            assert (await conn.call("upload_sum", upload=[pattern(4 * MiB)]))["bytes"] \
                == 4 * MiB
            assert (await conn.call("echo", {"i": i}))["params"] == {"i": i}
        # Nobody consumed anything: the daemon stopped one window ahead.
        assert max(rpc.handlers.sent_minus_consumed) <= w.DEFAULT_WINDOW_BYTES
    # Leaving the block early cancelled the stalled download.
    await wait_until(lambda: ("download", "cancelled") in [(m, o) for m, o, _ in rpc.done],
                     what="the abandoned download was cancelled")


async def test_many_concurrent_connections(rpc: Harness) -> None:
    counts: list[int] = []

    async def async_client(i: int) -> None:
        async with open_rpc_connection(rpc.path) as conn:
            for j in range(3):
                assert (await conn.call("echo", {"i": i, "j": j}))["params"] == {"i": i, "j": j}
            counts.append(1)

    def sync_client(i: int) -> None:
        with RpcConnection(rpc.path) as conn:
            assert conn.call("upload_sum", upload=[pattern(MiB + i)])["bytes"] == MiB + i
        counts.append(1)

    async with trio.open_nursery() as nursery:
        for i in range(40):
            nursery.start_soon(async_client, i)
        for i in range(8):
            nursery.start_soon(in_thread, lambda i=i: sync_client(i))
    assert len(counts) == 48


async def test_connection_limit(start: Callable[..., Any]) -> None:
    h = await start(limits=RpcLimits(max_connections=2))
    async with open_rpc_connection(h.path) as a, open_rpc_connection(h.path) as b:
        with pytest.raises(w.RpcError) as err:
            async with open_rpc_connection(h.path):
                pass
        assert err.value.code == "too_many_connections"
        assert "at most 2" in str(err.value)
        assert (await a.call("echo"))["method"] == "echo"
        assert (await b.call("echo"))["method"] == "echo"
    assert h.server.statistics().connections_refused == 1


async def test_request_limit_per_connection(start: Callable[..., Any]) -> None:
    h = await start(limits=RpcLimits(max_requests_per_connection=2))
    async with open_rpc_connection(h.path) as conn:
        async with conn.stream("slow") as s1, conn.stream("slow") as s2:
            await h.handlers.started_event("slow").wait()
            with pytest.raises(w.RpcError) as err:
                await conn.call("echo")
            assert err.value.code == "too_many_requests"
            assert not s1.done and not s2.done
            assert h.server.statistics().requests_in_flight == 2
        assert (await conn.call("echo"))["method"] == "echo"


# ------------------------------------------------------------------ cancel


async def test_cancel_from_async_client_cancels_the_handler(rpc: Harness) -> None:
    async with open_rpc_connection(rpc.path) as conn:
        async with trio.open_nursery() as nursery:
            async def caller(task_status: trio.TaskStatus[trio.CancelScope]) -> None:
                with trio.CancelScope() as scope:
                    task_status.started(scope)
                    await conn.call("slow")

            scope = await nursery.start(caller)
            await rpc.handlers.started_event("slow").wait()
            scope.cancel()  # cancelling the calling task cancels the request on the daemon
        assert rpc.handlers.cancelled == ["slow"]
        assert (await conn.call("echo"))["method"] == "echo"
    assert ("slow", "cancelled") in [(m, o) for m, o, _ in rpc.done]


async def test_sync_stream_close_cancels(rpc: Harness) -> None:
    def run() -> Any:
        with RpcConnection(rpc.path) as conn:
            stream = conn.stream("download", {"n": 1 << 40})
            assert len(next(stream)) == MiB
            stream.close()
            assert stream.done
            # An abandoned stream is also cancelled by the next request.
            abandoned = conn.stream("download", {"n": 1 << 40})
            next(abandoned)
            return conn.call("echo", {"x": 1})["params"]

    assert await in_thread(run) == {"x": 1}
    outcomes = [(m, o) for m, o, _ in rpc.done]
    assert outcomes.count(("download", "cancelled")) == 2


async def test_cancel_mid_upload(rpc: Harness) -> None:
    def forever() -> Iterator[bytes]:
        block = b"z" * MiB
        while True:
            yield block

    async with open_rpc_connection(rpc.path) as conn:
        async with conn.stream("upload_sum", upload=forever()):
            await wait_until(lambda: rpc.server.statistics().bytes_in > 20 * MiB, what="upload ran")
        assert (await conn.call("echo"))["method"] == "echo"
    await wait_until(lambda: ("upload_sum", "cancelled") in [(m, o) for m, o, _ in rpc.done],
                     what="upload cancelled")


async def test_client_disconnect_cancels_its_handlers(rpc: Harness) -> None:
    conn = await in_thread(lambda: RpcConnection(rpc.path))
    conn.stream("slow")
    await rpc.handlers.started_event("slow").wait()
    conn.close()
    await wait_until(lambda: rpc.handlers.cancelled == ["slow"], what="handler cancelled")
    await wait_until(lambda: rpc.server.statistics().connections == 0, what="connection gone")


async def test_sync_client_timeout(rpc: Harness) -> None:
    def run() -> None:
        conn = RpcConnection(rpc.path, timeout=0.2)
        with pytest.raises(w.RpcError) as err:
            conn.call("slow")
        assert err.value.code == "timeout"
        assert conn.closed
        with pytest.raises(w.RpcConnectionClosed):
            conn.call("echo")

    await in_thread(run)


async def test_queued_reply_is_flushed_when_the_server_stops(rpc: Harness) -> None:
    """A "shutdown" handler stops the server and still gets its reply out."""
    assert await in_thread(lambda: call_once(rpc.path, "shutdown")) == "bye"
    await wait_until(lambda: not rpc.path.exists(), what="socket removed")


# ------------------------------------------------------------------ hostile clients


class RawClient:
    """A hand-driven client socket for sending arbitrary bytes."""

    def __init__(self, path: Path, hello: bool = True) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)  # a deadline: a hung server fails the test
        self.sock.connect(str(path))
        self.decoder = w.FrameDecoder()
        if hello:
            self.sock.sendall(w.encode_bytes(w.Hello()))
            assert isinstance(self.recv(), w.Welcome)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> bool:
        """Send; False if the server already closed the connection."""
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            return False
        return True

    def recv(self) -> w.ServerMessage | None:
        """The next server message, or None at EOF (or a reset)."""
        while True:
            body = self.decoder.next_body()
            if body is not None:
                return w.decode_server_message(body)
            try:
                n = self.sock.recv_into(self.decoder.get_buffer())
            except ConnectionResetError:
                return None
            if n == 0:
                return None
            self.decoder.commit(n)

    def recv_until_closed(self) -> list[w.ServerMessage]:
        out = []
        while (msg := self.recv()) is not None:
            out.append(msg)
        return out


def frame(obj: object) -> bytes:
    body = msgpack.packb(obj)
    return struct.pack(">I", len(body)) + body


CALL_1 = frame({"t": "call", "id": 1, "method": "gated_upload_sum", "upload": True})
HOSTILE = {
    "garbage": (b"\x00\x00\x00\x05hello", "protocol_error"),
    "huge_length": (b"\xff\xff\xff\xff" + b"x" * 100, "frame_too_large"),
    "zero_length": (b"\x00\x00\x00\x00", "protocol_error"),
    "not_a_map": (frame([1, 2, 3]), "protocol_error"),
    "unknown_type": (frame({"t": "explode", "id": 1}), "protocol_error"),
    "unknown_field": (frame({"t": "call", "id": 1, "method": "echo", "sudo": True}),
                      "protocol_error"),
    "wrong_type": (frame({"t": "call", "id": "1", "method": "echo"}), "protocol_error"),
    "id_reused": (frame({"t": "call", "id": 5, "method": "echo"})
                  + frame({"t": "call", "id": 5, "method": "echo"}), "protocol_error"),
    "id_decreasing": (frame({"t": "call", "id": 5, "method": "echo"})
                      + frame({"t": "call", "id": 4, "method": "echo"}), "protocol_error"),
    "data_unknown_id": (frame({"t": "data", "id": 9, "data": b"x"}), "protocol_error"),
    "credit_unknown_id": (frame({"t": "credit", "id": 9, "bytes": 10}), "protocol_error"),
    "cancel_unknown_id": (frame({"t": "cancel", "id": 9}), "protocol_error"),
    "data_without_upload": (frame({"t": "call", "id": 1, "method": "slow"})
                            + frame({"t": "data", "id": 1, "data": b"x"}), "protocol_error"),
    "end_twice": (CALL_1 + frame({"t": "end", "id": 1}) + frame({"t": "end", "id": 1}),
                  "protocol_error"),
    "credit_overflow": (frame({"t": "call", "id": 1, "method": "slow"})
                        + frame({"t": "credit", "id": 1, "bytes": 1}), "protocol_error"),
    "data_beyond_credit": (CALL_1 + frame({"t": "data", "id": 1, "data": b"x" * MiB}) * 5,
                           "protocol_error"),
    "msgpack_bomb": (frame({"t": "end", "id": 1, "x": [[]] * 20000}), "protocol_error"),
    "deep_nesting": (struct.pack(">I", 5001) + b"\x91" * 5000 + b"\xc0", "protocol_error"),
    "ext_type": (struct.pack(">I", 6) + b"\xd6\xff\x00\x00\x00\x01", "protocol_error"),
    "second_hello": (w.encode_bytes(w.Hello()), "protocol_error"),
    "welcome_from_client": (frame({"t": "welcome", "protocol": "pinfold-rpc", "version": 1,
                                   "daemon_version": "x", "window": w.DEFAULT_WINDOW_BYTES}),
                            "protocol_error"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
async def test_hostile_frames_get_an_error_and_close(rpc: Harness, case: str) -> None:
    payload, code = HOSTILE[case]

    def attack() -> list[w.ServerMessage]:
        with RawClient(rpc.path) as raw:
            raw.send(payload)
            return raw.recv_until_closed()

    def good_client() -> Any:
        with RpcConnection(rpc.path) as conn:
            return conn.call("upload_sum", upload=[b"ok"])

    async with open_rpc_connection(rpc.path) as bystander:
        async with bystander.stream("items", {"n": 3}) as before:
            replies = await in_thread(attack)
            assert [i async for i in before] == [{"i": 0}, {"i": 1}, {"i": 2}]
        errors = [m for m in replies if isinstance(m, w.ErrorReply) and m.id is None]
        assert len(errors) == 1, replies
        assert errors[0].code == code
        assert errors[0].message
        # The server still serves new clients and the bystander's connection.
        assert (await in_thread(good_client))["bytes"] == 2
        assert (await bystander.call("echo"))["method"] == "echo"


async def test_frame_before_hello_and_bad_versions(rpc: Harness) -> None:
    def attempt(first: bytes) -> list[w.ServerMessage]:
        with RawClient(rpc.path, hello=False) as raw:
            raw.send(first)
            return raw.recv_until_closed()

    replies = await in_thread(lambda: attempt(frame({"t": "call", "id": 1, "method": "echo"})))
    assert [(m.code, m.message) for m in replies] == [
        ("protocol_error", "the first frame must be hello")]
    replies = await in_thread(lambda: attempt(frame(
        {"t": "hello", "protocol": "pinfold-rpc", "version": 7, "window": 1})))
    assert replies[0].code == "unsupported_version"
    assert "version 1" in replies[0].message and "version 7" in replies[0].message


async def test_unsupported_version_via_client_raises(rpc: Harness) -> None:
    """What an old CLI sees against a newer daemon (or back): a clear refused handshake."""
    def run() -> None:
        with RawClient(rpc.path, hello=False) as raw:
            raw.send(frame({"t": "hello", "protocol": "pinfold-rpc", "version": 2,
                            "window": w.DEFAULT_WINDOW_BYTES}))
            (reply,) = raw.recv_until_closed()
        assert isinstance(reply, w.ErrorReply) and reply.id is None
        assert reply.code == "unsupported_version"

    await in_thread(run)


async def test_handshake_timeout(start: Callable[..., Any]) -> None:
    h = await start(limits=RpcLimits(handshake_timeout_s=0.05))

    def idle() -> list[w.ServerMessage]:
        with RawClient(h.path, hello=False) as raw:
            return raw.recv_until_closed()

    replies = await in_thread(idle)
    assert [m.code for m in replies] == ["handshake_timeout"]


async def test_client_that_never_reads_is_cut_off(start: Callable[..., Any]) -> None:
    """Requests to unknown methods, never reading the replies: the server bounds what
    it queues and closes the connection rather than growing without limit."""
    h = await start(limits=RpcLimits(max_pending_control_frames=50))

    def flood() -> bool:
        with RawClient(h.path) as raw:
            raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            for rid in range(1, 5_000_000):
                if not raw.send(frame({"t": "call", "id": rid, "method": "x" * 200})):
                    return True
            return False

    assert await in_thread(flood)
    assert h.server.statistics().protocol_errors == 1


async def test_late_frames_for_finished_requests_are_ignored(rpc: Harness) -> None:
    """Frames that crossed the final reply in flight (data, credit, cancel, end) are
    dropped without error."""
    def run() -> list[w.ServerMessage]:
        with RawClient(rpc.path) as raw:
            raw.send(frame({"t": "call", "id": 1, "method": "fail_internal",
                            "upload": True}))
            first = raw.recv()
            raw.send(frame({"t": "data", "id": 1, "data": b"late"})
                         + frame({"t": "credit", "id": 1, "bytes": 100})
                         + frame({"t": "cancel", "id": 1}) + frame({"t": "end", "id": 1})
                         + frame({"t": "call", "id": 2, "method": "echo"}))
            second = raw.recv()
            return [first, second]

    first, second = await in_thread(run)
    assert isinstance(first, w.ErrorReply) and first.id == 1
    assert isinstance(second, w.Result) and second.id == 2


async def test_statistics(rpc: Harness) -> None:
    def run() -> None:
        with RpcConnection(rpc.path) as conn:
            conn.call("upload_sum", upload=[b"a" * 1000])
            list(conn.stream("download", {"n": 5000}))

    await in_thread(run)
    stats = rpc.server.statistics()
    assert stats.requests_total == 2
    assert stats.requests_in_flight == 0
    assert stats.bytes_in > 1000 and stats.bytes_out > 5000
    assert stats.connections_total == 1


# ------------------------------------------------------------------ fuzz


class ServerThread:
    """A server in its own thread and trio run, for synchronous (Hypothesis) tests."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handlers = Handlers()
        self.failures: list[str] = []
        self._token: trio.lowlevel.TrioToken | None = None
        self._scope: trio.CancelScope | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: trio.run(self._main), daemon=True)

    async def _main(self) -> None:
        table = self.handlers.table()
        del table["shutdown"]
        server = RpcServer(self.path, table, daemon_version="fuzz",
                           limits=RpcLimits(handshake_timeout_s=5))
        self._token = trio.lowlevel.current_trio_token()
        with trio.CancelScope() as self._scope:
            async with trio.open_nursery() as nursery:
                await nursery.start(server.run)
                self._ready.set()

    def __enter__(self) -> Self:
        self._thread.start()
        assert self._ready.wait(10), "server did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._token is not None and self._scope is not None
        trio.from_thread.run_sync(self._scope.cancel, trio_token=self._token)
        self._thread.join(10)
        assert not self._thread.is_alive()


@pytest.fixture(scope="module")
def fuzz_server() -> Iterator[ServerThread]:
    path = Path(tempfile.mkdtemp(prefix="rpcfuzz", dir="/tmp"))
    failures: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("RPC connection failed"):
                failures.append(self.format(record))

    handler = Catch()
    logging.getLogger("pinfold.daemon.rpc").addHandler(handler)
    try:
        with ServerThread(path / "rpc.sock") as server:
            server.failures = failures
            yield server
    finally:
        logging.getLogger("pinfold.daemon.rpc").removeHandler(handler)
        shutil.rmtree(path, ignore_errors=True)


FUZZ_METHODS = ["echo", "upload_sum", "gated_upload_sum", "download", "items", "echo_upload",
                "slow", "fail_internal", "nope"]
junk = st.one_of(st.none(), st.booleans(), st.integers(-3, 2**64 - 1), st.text(max_size=8),
                 st.binary(max_size=8), st.lists(st.integers(-9, 9), max_size=3),
                 st.dictionaries(st.text(max_size=3), st.integers(-9, 9), max_size=2))
small_ids = st.integers(1, 6)
wire_maps = st.fixed_dictionaries(
    {"t": st.sampled_from(["hello", "call", "data", "end", "credit", "cancel", "welcome",
                           "item", "x"])},
    optional={
        "id": st.one_of(small_ids, junk),
        "method": st.one_of(st.sampled_from(FUZZ_METHODS), junk),
        "params": st.one_of(st.fixed_dictionaries({"n": st.integers(0, 3 * MiB)}), junk),
        "upload": st.one_of(st.booleans(), junk),
        "data": st.one_of(st.binary(min_size=1, max_size=2048), junk),
        "bytes": st.one_of(st.integers(1, 8 * MiB), junk),
        "protocol": st.one_of(st.just("pinfold-rpc"), junk),
        "version": st.one_of(st.just(1), junk),
        "window": st.one_of(st.just(w.DEFAULT_WINDOW_BYTES), junk),
        "zz": junk,
    },
)
valid_messages = st.one_of(
    st.builds(w.Request, id=small_ids, method=st.sampled_from(FUZZ_METHODS),
              params=st.fixed_dictionaries({"n": st.integers(0, 3 * MiB)}),
              upload=st.booleans()),
    st.builds(w.Data, id=small_ids, data=st.binary(min_size=1, max_size=4096)),
    st.builds(w.End, id=small_ids),
    st.builds(w.Credit, id=small_ids, nbytes=st.integers(1, 4 * MiB)),
    st.builds(w.Cancel, id=small_ids),
)
fuzz_chunks = st.one_of(
    valid_messages.map(w.encode_bytes),
    valid_messages.map(w.encode_bytes),
    wire_maps.map(frame),
    st.binary(max_size=40).map(lambda b: struct.pack(">I", len(b)) + b),
    st.binary(max_size=12),
    st.integers(0, 2**32 - 1).map(lambda n: struct.pack(">I", n)),
)


@given(hello=st.booleans(), chunks=st.lists(fuzz_chunks, max_size=10))
@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_fuzz_random_frames_never_break_the_server(
        fuzz_server: ServerThread, hello: bool, chunks: list[bytes]) -> None:
    with RawClient(fuzz_server.path, hello=hello) as raw:
        raw.send(b"".join(chunks))
        raw.sock.shutdown(socket.SHUT_WR)  # EOF: the server must finish and close
        replies = raw.recv_until_closed()
    for msg in replies:
        event(f"reply {type(msg).__name__} {getattr(msg, 'code', '')}")
        if isinstance(msg, w.ErrorReply):
            assert w.is_valid_code(msg.code) and msg.message
    with RpcConnection(fuzz_server.path) as conn:
        assert conn.call("echo", {"k": 1})["params"] == {"k": 1}
    assert fuzz_server.failures == []


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
