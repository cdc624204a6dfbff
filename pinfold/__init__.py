"""pinfold: a peer-to-peer block storage daemon that keeps every pin at replication factor k.

The public Python entry point is ``Client``, which talks to a running daemon
over its Unix socket (no event loop needed)::

    from pinfold import Client

    with Client() as c:              # the daemon of $PINFOLD_HOME or ~/.pinfold
        cid = c.add("model.safetensors", progress=print)
        c.pin(cid, replicas=3)

Errors a call raises:

- ``RpcError``: the daemon answered with an error; ``.code`` is a short
  snake_case code (``not_found``, ``invalid_cid``, ``store_full``, ``timeout``...)
  and ``str(exc)`` the message.
- ``DaemonNotRunning`` (an ``RpcError``, code ``daemon_not_running``): nothing
  listens on the socket.
- ``RpcConnectionClosed`` (an ``RpcError``): the daemon went away mid-call.
- ``ConfigError``: the home's ``config.toml`` is invalid (names the key).

The subpackages ``pinfold.daemon``, ``pinfold.blockstore``,
``pinfold.replication`` and ``pinfold.config`` hold the implementation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["Client", "ConfigError", "DaemonNotRunning", "RpcConnectionClosed", "RpcError"]

if TYPE_CHECKING:
    from pinfold.config import ConfigError
    from pinfold.client import Client, DaemonNotRunning, RpcConnectionClosed, RpcError

# Loaded on first use, so ``import pinfold.blockstore`` does not pull in the client.
_EXPORTS = {
    "Client": "pinfold.client",
    "DaemonNotRunning": "pinfold.client",
    "RpcConnectionClosed": "pinfold.client",
    "RpcError": "pinfold.client",
    "ConfigError": "pinfold.config",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pinfold' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
