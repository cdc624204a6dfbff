"""The RPC server: the ``pinfold-rpc`` protocol (``rpc.wire``) on a Unix socket, in trio.

Parts: ``listener`` (``RpcServer``, limits, statistics), ``session`` (one
connection's reader and writer tasks), ``requests`` (``Call`` and per-request
state), ``credentials`` (peer credentials) and ``socketfile`` (lock, bind,
unlink). This module re-exports the names the node and tests import.

One ``RpcServer`` owns the socket path. Each connection runs three kinds of
tasks in its own nursery: one reader (decodes frames, files upload chunks and
credit into per-request state; it never waits on a handler or on the socket's
write side, so one slow request cannot stall the others), one writer (the only
task writing to the socket; gathers queued frames into ``sendmsg`` calls) and
one task per request running its handler. Memory per connection is bounded by
the flow-control windows (``rpc.wire``, "Flow control").

Handlers::

    async def add(call: Call) -> dict:
        total = 0
        async for chunk in call.upload():      # bytes, backpressured
            total += len(chunk)
            await call.send({"bytes": total})  # a progress item, backpressured
        return {"bytes": total}                # the final result

    server = RpcServer(path, {"add": add}, daemon_version="0.1.0")
    await nursery.start(server.run)

Access: the socket file is mode 0660 (owner and group), and every accepted
connection's peer credentials (``SO_PEERCRED``, ``SO_PEERGROUPS``) are checked
as well: root, the daemon's own user and members of the socket's group (the
daemon's group, or ``rpc.allowed_group``) are served; anyone else gets a
``permission_denied`` error and is closed, even if the file's permissions were
widened by hand.

A handler's exception becomes an error reply: ``exc.code`` if it has a valid
snake_case ``code`` attribute (``blockstore.errors`` classes, ``RpcError``),
otherwise ``internal`` (logged with its traceback). A handler whose request
is cancelled by the client, or whose connection closes, is cancelled.
"""

from __future__ import annotations

from pinfold.daemon.rpc.server.credentials import PeerCredentials, peer_credentials, resolve_group
from pinfold.daemon.rpc.server.limits import RpcLimits, RpcServerStats
from pinfold.daemon.rpc.server.listener import RpcServer
from pinfold.daemon.rpc.server.requests import (
    UNKNOWN_METHOD_LABEL,
    Call,
    Handler,
    RequestDone,
    _error_reply,
)
from pinfold.daemon.rpc.server.session import MAX_PASSED_FDS
from pinfold.daemon.rpc.server.socketfile import RpcServerError

__all__ = [
    "MAX_PASSED_FDS",
    "UNKNOWN_METHOD_LABEL",
    "Call",
    "Handler",
    "PeerCredentials",
    "RequestDone",
    "RpcLimits",
    "RpcServer",
    "RpcServerError",
    "RpcServerStats",
    "_error_reply",
    "peer_credentials",
    "resolve_group",
]
