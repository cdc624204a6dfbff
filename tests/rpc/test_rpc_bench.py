"""Throughput of the local RPC data path: 1 GiB up and 1 GiB down through the Unix
socket, daemon side in its own process, against the add/cat baselines of
tools/bench/node_bench.py measured in the same run. Prints the figures.

A plain-socket transfer (1 MiB sendall -> recv_into, no framing) is measured
too: it is the ceiling of any socket data path, and on a busy 2-core machine it
can sit below 0.25 x a page-cache read by itself.

Run: .venv/bin/python -m pytest tests/rpc/test_rpc_bench.py -m slow -s
"""

from __future__ import annotations

import hashlib
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import lmdb
import pytest
from pinfold.daemon.rpc.connection import RpcConnection

MiB = 1 << 20
SIZE = 1024 * MiB

SERVER = r"""
import sys, trio
from pinfold.daemon.rpc.server import RpcServer

async def sink(call):
    total = 0
    async for chunk in call.upload():
        total += len(chunk)
    return total

async def source(call):
    block = b"\x5a" * (1 << 20)
    left = call.params["n"]
    while left:
        piece = block if left >= len(block) else block[:left]
        await call.send(piece)
        left -= len(piece)
    return call.params["n"]

async def main():
    server = RpcServer(sys.argv[1], {"sink": sink, "source": source}, daemon_version="bench")
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        print("READY", flush=True)
        await trio.to_thread.run_sync(sys.stdin.read)  # until the test closes stdin
        nursery.cancel_scope.cancel()

trio.run(main)
"""


RAW_SENDER = r"""
import socket, sys
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
sock.connect(sys.argv[1])
block = b"\x5a" * (1 << 20)
for _ in range(int(sys.argv[2])):
    sock.sendall(block)
sock.close()
"""


def raw_socket_mibs(tmp: Path) -> float:
    """MiB/s of plain 1 MiB sendall -> recv_into between two processes: the ceiling."""
    path = tmp / "raw.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with listener:
        listener.bind(str(path))
        listener.listen(1)
        proc = subprocess.Popen([sys.executable, "-c", RAW_SENDER, str(path), str(SIZE // MiB)])
        conn, _ = listener.accept()
        with conn:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            buf = memoryview(bytearray(MiB))
            got = 0
            t0 = time.perf_counter()
            while n := conn.recv_into(buf):
                got += n
            dt = time.perf_counter() - t0
        proc.wait(30)
    assert got == SIZE
    return SIZE / MiB / dt


def vmhwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def baselines(tmp: Path) -> tuple[float, float]:
    """(sha256+LMDB add MB/s, page-cache read MB/s) over a 1 GiB random file."""
    path = tmp / "random.bin"
    with open(path, "wb") as f:
        f.writelines(os.urandom(64 * MiB) for _ in range(SIZE // (64 * MiB)))
    env = lmdb.open(str(tmp / "baseline"), map_size=4 << 30, sync=True, metasync=True)
    t0 = time.perf_counter()
    with open(path, "rb") as f:
        batch = []
        while chunk := f.read(MiB):
            batch.append((hashlib.sha256(chunk).digest(), chunk))
            if len(batch) == 64:
                with env.begin(write=True) as txn:
                    for k, v in batch:
                        txn.put(k, v)
                batch = []
    add_s = time.perf_counter() - t0
    env.close()
    with open(path, "rb") as f:
        while f.read(8 * MiB):
            pass
    t0 = time.perf_counter()
    with open(path, "rb") as f:
        while f.read(MiB):
            pass
    read_s = time.perf_counter() - t0
    return SIZE / MiB / add_s, SIZE / MiB / read_s


@pytest.mark.slow
def test_rpc_throughput_1gib() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="rpcbench", dir="/tmp"))
    try:
        add_base, read_base = baselines(tmp)
        raw = raw_socket_mibs(tmp)
        sock = tmp / "rpc.sock"
        proc = subprocess.Popen([sys.executable, "-c", SERVER, str(sock)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        try:
            assert proc.stdout is not None and proc.stdout.readline() == b"READY\n"
            block = b"\xa5" * MiB

            def chunks() -> Iterator[bytes]:
                for _ in range(SIZE // MiB):
                    yield block

            client_rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            with RpcConnection(sock) as conn:
                t0 = time.perf_counter()
                assert conn.call("sink", upload=chunks()) == SIZE
                up = SIZE / MiB / (time.perf_counter() - t0)
                server_rss_up = vmhwm_mib(proc.pid)
                t0 = time.perf_counter()
                got = 0
                for item in conn.stream("source", {"n": SIZE}):
                    got += len(item)
                down = SIZE / MiB / (time.perf_counter() - t0)
                assert got == SIZE
            server_rss = vmhwm_mib(proc.pid)
            client_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        finally:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.close()
            proc.wait(30)
            proc.stdout.close()
        print(f"\nRPC upload 1 GiB:   {up:,.0f} MiB/s = {up / add_base:.2f} x sha256+LMDB add "
              f"baseline ({add_base:,.0f} MiB/s)")
        print(f"RPC download 1 GiB: {down:,.0f} MiB/s = {down / read_base:.2f} x page-cache "
              f"read ({read_base:,.0f} MiB/s)")
        print(f"plain socket 1 GiB: {raw:,.0f} MiB/s (download = {down / raw:.2f} x, upload = "
              f"{up / raw:.2f} x)")
        print(f"server peak RSS {server_rss_up:,.0f} MiB after upload, {server_rss:,.0f} MiB "
              f"after download; client peak RSS {client_rss0:,.0f} -> {client_rss:,.0f} MiB")
        # The RPC must not be the bottleneck of add, and must run near the socket's own
        # speed (the ceiling for cat through any socket). The machine is shared, hence
        # the margins.
        assert up >= add_base
        assert down >= 0.5 * raw
        # Nothing near the payload size is ever held.
        assert server_rss < 150
        assert client_rss - client_rss0 < 64
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
