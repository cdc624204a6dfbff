"""The RPC tests' shared harness: test handlers that record what they saw, the
payload pattern and the thread helpers the server tests call the blocking client with."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from pinfold.daemon.rpc import wire as w
from pinfold.daemon.rpc.connection import RpcConnection
from pinfold.daemon.rpc.server import Call, RpcServer

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

