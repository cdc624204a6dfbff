"""Fixtures for the RPC tests: a short socket directory and a real trio server on it."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from pinfold.daemon.rpc.server import RpcLimits, RpcServer

from tests.rpc.rpc_harness import Handlers, Harness


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
