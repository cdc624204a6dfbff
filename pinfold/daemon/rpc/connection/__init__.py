"""RPC client transports for the ``pinfold-rpc`` protocol (``rpc.wire``).

``RpcConnection`` is the blocking transport under ``pinfold.client``
and the CLI: no trio, plain sockets. ``open_rpc_connection`` is a trio
variant that runs many requests at once on one connection (tests, tools).

Both stream in both directions without holding whole payloads: an upload is
pulled from its iterator one chunk at a time as the daemon's credit allows, and
a reply stream is read one item at a time as the caller consumes it.

Data path: an upload chunk is written with one ``sendmsg`` of a small header
plus the caller's buffer (no copy); a 1 MiB reply item is received straight
into the bytes object handed to the caller (``MSG_WAITALL`` when no timeout
is set), one kernel copy in all.

Example::

    with RpcConnection(home / "rpc.sock") as conn:
        with open(path, "rb") as f:
            chunks = iter(lambda: f.read(1 << 20), b"")
            result = conn.call("add", {"pin": True}, upload=chunks)
        for chunk in conn.stream("cat", {"cid": result["cid"]}):
            sys.stdout.buffer.write(chunk)

Parts: ``blocking`` (``RpcConnection``, ``RpcStream``), ``concurrent`` (the
trio client) and ``common``; this module re-exports their names. The trio
names load on first use, so the CLI and ``pinfold.Client`` never import trio.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pinfold.daemon.rpc.connection.blocking import RpcConnection, RpcStream
from pinfold.daemon.rpc.wire import DaemonNotRunning, RpcConnectionClosed, RpcError, RpcProtocolError

if TYPE_CHECKING:
    from pinfold.daemon.rpc.connection.concurrent import (AsyncRpcConnection, AsyncRpcStream,
                                                          open_rpc_connection)

_CONCURRENT = ("AsyncRpcConnection", "AsyncRpcStream", "open_rpc_connection")


def __getattr__(name: str) -> Any:
    """The trio client's names, imported on first use: the blocking client (every
    CLI command) does not pay for importing trio."""
    if name in _CONCURRENT:
        from pinfold.daemon.rpc.connection import concurrent

        return getattr(concurrent, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "AsyncRpcConnection",
    "AsyncRpcStream",
    "DaemonNotRunning",
    "RpcConnection",
    "RpcConnectionClosed",
    "RpcError",
    "RpcProtocolError",
    "RpcStream",
    "open_rpc_connection",
]
