"""The Python client's methods about content paths: ``resolve``, ``resolve_path``, ``ls``, ``stat``,
``read`` (a byte range) and ``open`` (a lazy, seekable file), mixed into
``Client`` (``client.py``).

A path is ``CID``, ``CID/path/in/dag``, ``/ipfs/CID/...`` or
``pinfold://CID/...``; the daemon resolves it (``daemon/resolver.py``).
Imports only the standard library; ``open`` loads ``pinfold.fsspec`` on use.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pinfold.fsspec import PinfoldFile

__all__ = ["PathsMixin", "ref_basename", "strip_scheme"]


def strip_scheme(path: str) -> str:
    """``path`` without a leading ``pinfold://`` (the fsspec form)."""
    text = str(path)
    return text[len("pinfold://"):] if text.startswith("pinfold://") else text


def ref_basename(ref: str) -> str:
    """The name ``get`` gives what ``ref`` names: its last path segment, else its CID;
    a name ref without a path gives the name's last part (``org/model@main`` -> ``model``)."""
    text = strip_scheme(ref)
    parts = [p for p in text.split("/") if p]
    if parts[:1] == ["ipfs"] and str(ref).startswith("/ipfs/"):
        parts = parts[1:]
    last = parts[-1] if parts else str(ref)
    at = text.find("@")
    if at >= 0 and "/" not in text[at:]:
        last = last.split("@", 1)[0] or last
    return last


class PathsMixin:
    """``Client`` methods that take a content path. Needs ``call``, ``stream`` and
    ``socket_path`` from ``Client``."""

    socket_path: Any
    call: Any
    stream: Any

    def resolve(self, ref: str) -> str:
        """The CID that ``ref`` (``CID``, ``CID/path``, ``NAME[@REF][/path]``) names.

        Raises:
            RpcError: as ``resolve_path``; a name ref's errors (``name_not_found``...).
        """
        return self.resolve_path(ref)["cid"]

    def resolve_path(self, path: str) -> dict[str, Any]:
        """What ``path`` names: ``{"path", "cid", "type", "size"}`` (``type``: file,
        dir, symlink or other; ``size`` in bytes, ``None`` for a directory).

        Raises:
            RpcError: ``invalid_cid``/``invalid_path`` for a malformed path,
                ``path_not_found`` when an entry is missing ("no entry 'x' in
                directory CID/a"), ``not_found`` when a block is on no peer.
        """
        return self.call("resolve", {"path": strip_scheme(path)})

    def ls(self, path: str, *, recursive: bool = False) -> Iterator[dict[str, Any]]:
        """The entries of the directory ``path`` (a file lists as itself), streamed:
        ``{"name", "type", "size", "cid", "tsize"}``; with ``recursive`` every entry
        below, a directory before its children, each with ``path`` (relative).

        Raises:
            RpcError: as ``resolve_path``.
        """
        return self.stream("ls", {"path": strip_scheme(path), "recursive": recursive})

    def stat(self, path: str) -> dict[str, Any]:
        """``{"path", "cid", "type", "size", "blocks", "blocks_exact", "local_blocks",
        "local_bytes", "complete"}``: what ``path`` names and how much of its DAG is
        in this node's store (``blocks_exact`` is false when a missing interior
        block hides part of the DAG). Fetches only the blocks on the path.

        Raises:
            RpcError: as ``resolve_path``.
        """
        return self.call("stat", {"path": strip_scheme(path)})

    def read(self, path: str, *, offset: int = 0, length: int | None = None
             ) -> tuple[bytes, dict[str, Any]]:
        """Bytes ``[offset, offset + length)`` of the file ``path`` and the daemon's
        summary ``{"cid", "bytes", "blocks"}`` (``blocks``: UnixFS blocks read for
        the range, the path's excluded). Only the blocks covering the range are
        read, locally or from peers.

        Raises:
            RpcError: as ``resolve_path``; ``not_a_file`` for a directory.
        """
        params: dict[str, Any] = {"cid": strip_scheme(path), "offset": offset}
        if length is not None:
            params["length"] = length
        items = self.stream("cat", params)
        data = b"".join(items)
        return data, dict(items.result)

    def open(self, path: str, mode: str = "rb", **kwargs: Any) -> PinfoldFile:
        """A read-only, seekable binary file over ``path`` that reads ranges lazily
        and caches the blocks it read (``pinfold.fsspec.PinfoldFile``; kwargs:
        ``block_size`` in bytes, ``cache_type``). It opens its own connections to
        this client's socket.

        Raises:
            ValueError: a mode other than ``rb``.
            FileNotFoundError: nothing at ``path``; IsADirectoryError: a directory.
        """
        from pinfold.fsspec import PinfoldFileSystem

        fs = PinfoldFileSystem(socket=str(self.socket_path))
        return fs.open(strip_scheme(path), mode, **kwargs)
