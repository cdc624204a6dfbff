"""Drive the Helia 7 peer (``helia_peer.mjs``) from trio tests over JSON lines.

Usage::

    async with helia_peer() as helia:
        cid = (await helia.request("add", path=str(file), chunk_size=65536))["cid"]

``skip_reason()`` says why the interop tests cannot run here (no ``node``, or
``npm ci --prefix tests/interop`` not done), or None.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import trio

HERE = Path(__file__).resolve().parents[1] / "interop"
SCRIPT = HERE / "helia_peer.mjs"


def skip_reason() -> str | None:
    """Why Helia cannot run here, or None when it can."""
    node = shutil.which("node")
    if node is None:
        return "node is not installed (Helia interop needs Node.js >= 20)"
    if not (HERE / "node_modules" / "helia").is_dir():
        return "Helia is not installed: run `npm ci --prefix tests/interop`"
    try:
        out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=10).stdout
        major = int(out.strip().lstrip("v").split(".")[0])
    except Exception as exc:  # noqa: BLE001 - any failure means "cannot run"
        return f"cannot run node: {exc}"
    if major < 20:
        return f"node {out.strip()} is too old (Helia 7 needs >= 20)"
    return None


class HeliaError(Exception):
    """The Helia peer answered a request with an error."""


class HeliaPeer:
    """A running Helia peer process."""

    def __init__(self, proc: trio.Process) -> None:
        self._proc = proc
        self._ids = itertools.count(1)
        self._waiters: dict[int, trio.MemorySendChannel[dict[str, Any]]] = {}
        self.peer_id = ""
        self.addrs: list[str] = []
        self._buf = b""

    async def _read_line(self) -> bytes:
        assert self._proc.stdout is not None
        while b"\n" not in self._buf:
            chunk = await self._proc.stdout.receive_some(1 << 16)
            if not chunk:
                raise HeliaError("Helia peer exited")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line

    async def _start(self) -> None:
        with trio.fail_after(60):
            ready = json.loads(await self._read_line())
        if not ready.get("ready"):
            raise HeliaError(f"Helia peer did not start: {ready}")
        self.peer_id = ready["peer_id"]
        self.addrs = ready["addrs"]

    async def _reader(self) -> None:
        while True:
            try:
                line = await self._read_line()
            except HeliaError:
                for ch in self._waiters.values():
                    ch.close()
                return
            msg = json.loads(line)
            ch = self._waiters.pop(msg.get("id"), None)
            if ch is not None:
                ch.send_nowait(msg)

    async def request(self, cmd: str, *, timeout_s: float = 60.0, **args: Any) -> dict[str, Any]:
        """Send one command and wait for its reply.

        Raises:
            HeliaError: the peer answered ``ok: false`` or exited.
            trio.TooSlowError: no reply within ``timeout_s``.
        """
        rid = next(self._ids)
        send, recv = trio.open_memory_channel[dict[str, Any]](1)
        self._waiters[rid] = send
        assert self._proc.stdin is not None
        await self._proc.stdin.send_all(json.dumps({"id": rid, "cmd": cmd, **args}).encode() + b"\n")
        with trio.fail_after(timeout_s):
            try:
                reply = await recv.receive()
            except trio.EndOfChannel:
                raise HeliaError(f"Helia peer exited during {cmd}") from None
        if not reply.get("ok"):
            raise HeliaError(f"helia {cmd}: {reply.get('error')}")
        return reply


@contextlib.asynccontextmanager
async def helia_peer() -> AsyncIterator[HeliaPeer]:
    """Start a Helia peer on 127.0.0.1 for the duration of the block."""
    node = shutil.which("node")
    assert node is not None
    async with trio.open_nursery() as nursery:
        proc = await trio.lowlevel.open_process(
            [node, str(SCRIPT)],
            cwd=str(HERE),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        peer = HeliaPeer(proc)
        try:
            await peer._start()
            nursery.start_soon(peer._reader)
            yield peer
        finally:
            with trio.CancelScope(shield=True):
                with trio.move_on_after(5):
                    try:
                        assert proc.stdin is not None
                        await proc.stdin.aclose()
                    except Exception:  # noqa: BLE001 - already gone
                        pass
                    await proc.wait()
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            nursery.cancel_scope.cancel()
