"""The Python client: ``Client(home=...)`` speaks the daemon's RPC socket.

Usable from a plain script or a notebook: no trio, no event loop needed by the
caller. It mirrors the CLI (DESIGN.md, Interface)::

    from pinfold.daemon.client import Client
    with Client() as c:
        cid = c.add("model.safetensors")
        data = b"".join(c.cat(cid))
        c.pin(cid, replicas=3)
        print(c.status(cid)["availability"])

Every method raises ``RpcError`` (with ``.code``, e.g. ``"not_found"``) for an
error the daemon reports, and ``DaemonNotRunning`` when nothing listens on the
socket. Streaming methods (``cat``, ``dag_export``, ``pins``) return iterators;
read them to the end (or close them) before the next call on the same client.
One ``Client`` is one connection and serves one call at a time; use one
``Client`` per thread.
"""

from __future__ import annotations

import errno
import os
import shutil
import struct
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import msgpack

from pinfold.config import ConfigError, load

from .home import Home, resolve_home
from .rpcclient import DaemonNotRunning, RpcConnection, RpcError

__all__ = ["Client", "RpcError", "DaemonNotRunning"]

CHUNK = 1 << 20


def _file_chunks(f: BinaryIO, progress: Callable[[int], None] | None) -> Iterator[bytes]:
    while chunk := f.read(CHUNK):
        if progress:
            progress(len(chunk))
        yield chunk


def _replication(replicas: int | None, rmin: int | None, rmax: int | None,
                 availability: float | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if replicas is not None:
        out["rmin"] = out["rmax"] = replicas
    if rmin is not None:
        out["rmin"] = rmin
    if rmax is not None:
        out["rmax"] = rmax
    if availability is not None:
        out["availability"] = availability
    return out


class Client:
    """A connection to the daemon of one home (or an explicit socket path)."""

    def __init__(self, home: str | os.PathLike[str] | None = None, *,
                 socket_path: str | os.PathLike[str] | None = None) -> None:
        if socket_path is None:
            h = Home(root=resolve_home(home))
            try:
                config = load(h.config_path)
            except ConfigError:
                raise
            socket_path = h.socket_path(config)
        self.socket_path = Path(socket_path)
        self._conn: RpcConnection | None = None

    # ------------------------------------------------------------------ plumbing

    @property
    def conn(self) -> RpcConnection:
        if self._conn is None:
            self._conn = RpcConnection(self.socket_path)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, method: str, params: dict[str, Any] | None = None, *,
             upload: Iterable[bytes] | None = None) -> Any:
        """Call ``method`` and return its result."""
        return self.conn.call(method, params or {}, upload=upload)

    def stream(self, method: str, params: dict[str, Any] | None = None, *,
               upload: Iterable[bytes] | None = None) -> Iterator[Any]:
        """Call ``method`` and yield its streamed items."""
        return self.conn.stream(method, params or {}, upload=upload)

    # ------------------------------------------------------------------ node

    def id(self) -> dict[str, Any]:
        """``{"peer_id", "addresses", "version"}``."""
        return self.call("id")

    def shutdown(self) -> dict[str, Any]:
        """Ask the daemon to stop."""
        return self.call("shutdown")

    # ------------------------------------------------------------------ add / read

    def add_stream(self, chunks: Iterable[bytes], *, pin: bool = True,
                   progress: Callable[[int], None] | None = None, **opts: Any) -> dict[str, Any]:
        """Add a file given as an iterable of byte chunks; returns ``{"cid", "bytes",
        "blocks", "pin"}`` (``pin``: the pin record, as ``pin`` returns it).

        The root is pinned unless ``pin=False`` (as Kubo's ``add``). ``opts``:
        chunk_size (bytes), cid_version (0|1), raw_leaves, max_links, and the pin's
        options name, rmin, rmax, availability (cluster-wide in a cluster); the
        daemon refuses pin options with ``pin=False``.
        """
        def counted() -> Iterator[bytes]:
            for c in chunks:
                if progress:
                    progress(len(c))
                yield c

        params = {k: v for k, v in opts.items() if v is not None}
        params["pin"] = pin
        return self.call("add", params, upload=counted())

    def add(self, source: str | os.PathLike[str] | bytes | BinaryIO, *, pin: bool = True,
            replicas: int | None = None, rmin: int | None = None, rmax: int | None = None,
            availability: float | None = None, **opts: Any) -> str:
        """Add a file (path, bytes or binary file object); returns the root CID text.

        The root is pinned unless ``pin=False``; ``replicas``/``rmin``/``rmax``/
        ``availability`` set how many copies the cluster keeps. See ``add_stream``
        for ``opts`` (``name`` names the pin).
        """
        return self.add_info(source, pin=pin, replicas=replicas, rmin=rmin, rmax=rmax,
                             availability=availability, **opts)["cid"]

    def add_info(self, source: str | os.PathLike[str] | bytes | BinaryIO, *, pin: bool = True,
                 replicas: int | None = None, rmin: int | None = None, rmax: int | None = None,
                 availability: float | None = None, **opts: Any) -> dict[str, Any]:
        """Like ``add`` but returns ``{"cid", "bytes", "blocks"}``."""
        repl = _replication(replicas, rmin, rmax, availability)
        if isinstance(source, (bytes, bytearray, memoryview)):
            data = bytes(source)
            chunks: Iterable[bytes] = (data[i:i + CHUNK] for i in range(0, len(data), CHUNK))
            return self.add_stream(chunks, pin=pin, **repl, **opts)
        if hasattr(source, "read"):
            return self.add_stream(_file_chunks(source, None), pin=pin, **repl, **opts)
        path = Path(source)
        if path.is_dir():
            return self.add_dir(path, pin=pin, **repl, **opts)
        with open(path, "rb") as f:
            return self.add_stream(_file_chunks(f, None), pin=pin, **repl, **opts)

    def add_dir(self, path: str | os.PathLike[str], *, pin: bool = True,
                **opts: Any) -> dict[str, Any]:
        """Add a directory tree; returns ``{"cid", "bytes", "blocks", "files"}``.

        Symbolic links are not followed (they are refused with an error naming them).
        """
        root = Path(path)
        if not root.is_dir():
            raise NotADirectoryError(f"{root}: not a directory")

        def entries() -> Iterator[bytes]:
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames.sort()
                rel_dir = Path(dirpath).relative_to(root)
                if str(rel_dir) != ".":
                    try:
                        rel_dir.as_posix().encode("utf-8")
                    except UnicodeEncodeError:
                        raise ValueError(f"{os.fsdecode(dirpath)!r}: the name is not valid "
                                         "UTF-8 (UnixFS names are UTF-8)") from None
                    yield _dir_header(rel_dir.as_posix(), "dir", 0)
                for name in sorted(filenames):
                    full = Path(dirpath) / name
                    if full.is_symlink():
                        raise ValueError(f"{full}: symbolic links are not supported")
                    rel = (rel_dir / name).as_posix()
                    try:
                        rel.encode("utf-8")
                    except UnicodeEncodeError:
                        raise ValueError(f"{os.fsdecode(full)!r}: the name is not valid "
                                         "UTF-8 (UnixFS names are UTF-8)") from None
                    size = full.stat().st_size
                    yield _dir_header(rel, "file", size)
                    with open(full, "rb") as f:
                        left = size
                        while left:
                            chunk = f.read(min(CHUNK, left))
                            if not chunk:
                                raise OSError(f"{full} shrank while being added")
                            left -= len(chunk)
                            yield chunk

        params = {k: v for k, v in opts.items() if v is not None}
        params["pin"] = pin
        return self.call("add_dir", params, upload=entries())

    def cat(self, cid: str, *, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        """The file's bytes from ``offset`` (bytes), at most ``length`` bytes, as chunks."""
        params: dict[str, Any] = {"cid": str(cid), "offset": offset}
        if length is not None:
            params["length"] = length
        return self.stream("cat", params)

    def cat_to_fd(self, cid: str, fd: int, *, offset: int = 0,
                  length: int | None = None) -> dict[str, Any]:
        """Have the daemon write the file's bytes straight to ``fd`` (a file, pipe or
        terminal of this process, passed over the socket with SCM_RIGHTS); returns
        ``{"cid", "bytes"}``. Saves a copy through the socket and this process."""
        params: dict[str, Any] = {"cid": str(cid), "offset": offset, "to_fd": True}
        if length is not None:
            params["length"] = length
        return self.conn.call("cat", params, pass_fd=fd)

    def get(self, cid: str, path: str | os.PathLike[str], *,
            progress: Callable[[int], None] | None = None) -> dict[str, Any]:
        """Write the file or directory tree ``cid`` to ``path``; returns ``{"cid", "files", "bytes"}``.

        A file is written to ``path.part`` and renamed when complete;
        ``progress(nbytes)`` is called as data arrives.
        """
        target = Path(path)
        if target.exists() or target.is_symlink():
            raise FileExistsError(errno.EEXIST, "already exists; choose another -o PATH",
                                  str(target))
        if not target.parent.is_dir():
            raise FileNotFoundError(errno.ENOENT, "parent directory does not exist",
                                    str(target.parent))
        out: BinaryIO | None = None
        seen: set[str] = set()
        current: Path | None = None
        files = 0
        total = 0
        links: list[tuple[Path, str]] = []

        def finish() -> None:
            nonlocal out, current
            if out is not None and current is not None:
                out.close()
                os.replace(current.with_name(current.name + ".part"), current)
            out, current = None, None

        try:
            for item in self.stream("get", {"cid": str(cid)}):
                if isinstance(item, dict):
                    finish()
                    rel = item["path"]
                    if rel.startswith("/") or ".." in rel.split("/"):
                        raise ValueError(f"daemon sent an unsafe path {rel!r}")
                    if rel in seen:
                        raise ValueError(f"the directory holds the name {rel!r} twice")
                    seen.add(rel)
                    dest = target / rel if rel else target
                    if item["type"] == "dir":
                        dest.mkdir(parents=True, exist_ok=True)
                    elif item["type"] == "symlink":
                        # Made last, so no later entry is ever written through a link.
                        links.append((dest, item.get("target", "")))
                    else:
                        dest.parent.mkdir(parents=True, exist_ok=True)
                        current = dest
                        out = open(dest.with_name(dest.name + ".part"), "wb")  # noqa: SIM115
                        files += 1
                else:
                    assert out is not None, "file data before a file header"
                    out.write(item)
                    total += len(item)
                    if progress:
                        progress(len(item))
            finish()
            for dest, link_target in links:
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(link_target, dest)
        except BaseException:
            if out is not None:
                out.close()
                out = None
            # Leave nothing half-written behind: the target did not exist before.
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target, ignore_errors=True)
            else:
                for leftover in (target, target.with_name(target.name + ".part")):
                    if leftover.exists() or leftover.is_symlink():
                        leftover.unlink()
            raise
        finally:
            if out is not None:
                out.close()
        return {"cid": str(cid), "files": files, "bytes": total}

    # ------------------------------------------------------------------ blocks

    def block_put(self, data: bytes, *, codec: str = "raw", cid_version: int = 1) -> dict[str, Any]:
        """Store one block (at most 2 MiB); returns ``{"cid", "size"}``."""
        return self.call("block_put", {"codec": codec, "cid_version": cid_version},
                         upload=[data] if data else [])

    def block_get(self, cid: str) -> bytes:
        """The block's bytes."""
        return b"".join(self.stream("block_get", {"cid": str(cid)}))

    def block_stat(self, cid: str) -> dict[str, Any]:
        """``{"cid", "size"}``."""
        return self.call("block_stat", {"cid": str(cid)})

    def block_rm(self, cid: str) -> dict[str, Any]:
        """Remove an unpinned block."""
        return self.call("block_rm", {"cid": str(cid)})

    # ------------------------------------------------------------------ CAR

    def dag_import_stream(self, chunks: Iterable[bytes], *, pin_roots: bool = True
                          ) -> dict[str, Any]:
        """Import a CAR v1 stream; returns ``{"roots", "blocks", "bytes", "pinned"}``."""
        return self.call("dag_import", {"pin_roots": pin_roots}, upload=chunks)

    def dag_import(self, path: str | os.PathLike[str], *, pin_roots: bool = True
                   ) -> dict[str, Any]:
        """Import a CAR v1 file."""
        with open(path, "rb") as f:
            return self.dag_import_stream(_file_chunks(f, None), pin_roots=pin_roots)

    def dag_export(self, cid: str) -> Iterator[bytes]:
        """The DAG of ``cid`` as CAR v1 bytes (chunks)."""
        return self.stream("dag_export", {"cid": str(cid)})

    # ------------------------------------------------------------------ pins

    def pin(self, cid: str, *, replicas: int | None = None, rmin: int | None = None,
            rmax: int | None = None, availability: float | None = None,
            recursive: bool = True, name: str | None = None,
            expire_in: float | None = None) -> dict[str, Any]:
        """Pin ``cid`` (cluster-wide in a cluster); returns the pin record."""
        params: dict[str, Any] = {"cid": str(cid), "recursive": recursive}
        params.update(_replication(replicas, rmin, rmax, availability))
        if name is not None:
            params["name"] = name
        if expire_in is not None:
            params["expire_in"] = expire_in
        return self.call("pin_add", params)

    def unpin(self, cid: str) -> dict[str, Any]:
        """Remove the pin of ``cid``."""
        return self.call("pin_rm", {"cid": str(cid)})

    def pins(self, state: str | None = None) -> Iterator[dict[str, Any]]:
        """Pins, streamed, optionally only those in ``state``: each a dict with ``cid``,
        ``name``, ``mode`` and ``state`` (``pinned``, ``incomplete`` with
        ``blocks_present`` of ``blocks``, or a cluster state; ``pin_error`` with
        ``error``). ``state="error"`` lists failed pins."""
        return self.stream("pin_ls", {"state": state} if state else {})

    def status(self, cid: str) -> dict[str, Any]:
        """``{"cid", "name", "mode", "rmin", "rmax", "healthy", "availability",
        "local_state", "holders": [...]}``; a holder counts as ``pinned`` only with
        every block of the pin."""
        return self.call("pin_status", {"cid": str(cid)})

    # ------------------------------------------------------------------ repo

    def repo_stat(self) -> dict[str, Any]:
        return self.call("repo_stat")

    def repo_gc(self) -> dict[str, Any]:
        return self.call("repo_gc")

    def repo_verify(self, *, heal: bool = False) -> dict[str, Any]:
        return self.call("repo_verify", {"heal": heal})

    # ------------------------------------------------------------------ network

    def peers(self) -> Iterator[dict[str, Any]]:
        return self.stream("peers_ls")

    def connect(self, multiaddr: str) -> dict[str, Any]:
        return self.call("peers_connect", {"multiaddr": multiaddr})

    def disconnect(self, peer_id: str) -> dict[str, Any]:
        return self.call("peers_disconnect", {"peer_id": peer_id})

    # ------------------------------------------------------------------ cluster

    def cluster_peers(self) -> Iterator[dict[str, Any]]:
        return self.stream("cluster_peers")

    def cluster_status(self) -> dict[str, Any]:
        return self.call("cluster_status")

    def recover(self, cid: str | None = None) -> dict[str, Any]:
        """Retry failed (cluster) or incomplete (standalone) pins, one CID or all:
        ``{"recovered", "cids", "pins": [{"cid", "error", "result"?}]}``."""
        return self.call("recover", {"cid": cid} if cid else {"all": True})


def _dir_header(path: str, kind: str, size: int) -> bytes:
    body = msgpack.packb({"path": path, "type": kind, "size": size})
    return struct.pack(">I", len(body)) + body
