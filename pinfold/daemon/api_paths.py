"""The RPC methods about content paths: ``resolve``, ``ls`` and ``stat``.

=============  ===============================================================
``resolve``    {path} -> {path, cid, type, size}
``ls``         {path, recursive} -> stream of {name, type, size, cid, tsize
               [, path]} -> {path, cid, count}
``stat``       {path} -> {path, cid, type, size, blocks, blocks_exact,
               local_blocks, local_bytes, complete}
=============  ===============================================================

``path`` is anything ``resolver.to_content_path`` accepts (``CID``,
``CID/a/b``, ``/ipfs/CID/a/b``). Imports the resolver and the daemon's errors.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from pinfold.daemon.errors import InvalidArgument, param_str
from pinfold.daemon.resolver import Resolver

__all__ = ["path_handlers"]


def path_handlers(resolver: Resolver) -> dict[str, Callable[[Any], Awaitable[Any]]]:
    """Method name -> handler for ``resolve``, ``ls`` and ``stat``."""

    async def resolve(call: Any) -> dict[str, Any]:
        return await resolver.resolve_dict(param_str(call.params, "path"))

    async def ls(call: Any) -> dict[str, Any]:
        text = param_str(call.params, "path")
        recursive = call.params.get("recursive", False)
        if not isinstance(recursive, bool):
            raise InvalidArgument(f"parameter 'recursive' must be bool, got {recursive!r}")
        count = 0
        r, entries = await resolver.listing(text, recursive=recursive)
        async for entry in entries:
            await call.send(entry)
            count += 1
        return {"path": text, "cid": str(r.cid), "count": count}

    async def stat(call: Any) -> dict[str, Any]:
        return await resolver.stat(param_str(call.params, "path"))

    return {"resolve": resolve, "ls": ls, "stat": stat}
