"""RPC flow control and concurrency: uploads and downloads larger than the window,
many requests and connections at once, limits, and cancelling calls from either client."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trio
from pinfold.daemon.rpc import wire as w
from pinfold.daemon.rpc.connection import RpcConnection, open_rpc_connection
from pinfold.daemon.rpc.server import RpcLimits

from tests.rpc.rpc_harness import (
    SMALL_WINDOW, Harness, MiB, call_once, in_thread, pattern, wait_until,
)


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
