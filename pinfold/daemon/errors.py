"""The daemon's own error types, each with the RPC ``code`` its reply carries.

What owns it: errors raised by the daemon's parts (api, network, cluster
RPC) for requests and for start-up; the RPC server turns ``code`` into a
structured error reply and the CLI maps it to an exit code. Errors of the
lower layers (blockstore, replication, config) keep their own modules. Imports
only ``pinfold.blockstore.errors`` (the shared ``BlockstoreError`` base).
"""

from __future__ import annotations

from typing import Any

from pinfold.blockstore.errors import BlockstoreError

__all__ = ["InvalidArgument", "NetworkError", "OutputClosed", "PinInUse", "param_str"]


class InvalidArgument(BlockstoreError, ValueError):
    """A request parameter is missing or wrong; the message names it."""

    code = "invalid_argument"


class PinInUse(BlockstoreError):
    """``pin rm`` of a CID that something else still needs (the root of a live
    version of a name, as Kubo refuses an indirect pin), or ``versions rm`` of a
    version a tag points at; the message names the user (versions, tags) and
    how to remove it. Nothing is unpinned or retired."""

    code = "pin_in_use"


class OutputClosed(BlockstoreError):
    """The client's output (the file descriptor it passed) was closed by its reader."""

    code = "output_closed"


class NetworkError(Exception):
    """The network side cannot start (e.g. its listen port is taken)."""

    code = "network_error"


def param_str(params: dict[str, Any], key: str) -> str:
    """``params[key]`` as text.

    Raises:
        InvalidArgument: the parameter is missing or not a string.
    """
    value = params.get(key)
    if not isinstance(value, str):
        raise InvalidArgument(f"missing parameter {key!r}")
    return value
