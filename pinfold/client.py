"""The Python client: ``Client(home=...)`` speaks the daemon's RPC socket.

Usable from a plain script or a notebook: no trio, no event loop needed by the
caller. It mirrors the CLI (DESIGN.md, Interface)::

    from pinfold import Client
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
``Client`` per thread. A ``Client`` stays usable after any error a call
raises: a bad argument is refused before anything is sent, and a call that
broke the connection (an interrupt, a failed upload source) makes the next
call connect again.

Two kinds of progress: ``progress(nbytes)`` (``add``, ``get``) is called with
the bytes this client just sent or received; ``on_progress(event)`` (``cat``,
``get``, ``pin``) is called with the daemon's progress events of the transfer
it runs, ``{"bytes", "total", "blocks", "fetched_blocks", "fetched_bytes",
"peers", "elapsed_s"}`` (bytes done of ``total`` expected, from the root's
UnixFS sizes; the last has ``"done": True``). ``timeout`` (seconds) bounds
``cat``, ``get`` and ``pin``'s fetch on the daemon; past it ``RpcError`` with
code ``timeout`` says what timed out, which CID and what had arrived.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, Self

from pinfold.clientargs import (ADD_OPTIONS, DIR_OPTIONS, check_options, replication_params,
                                transfer_params)
from pinfold.client_names import NamesMixin
from pinfold.config import load

from pinfold.client_get import GetMixin
from pinfold.client_paths import PathsMixin
from pinfold.daemon.home import Home, resolve_home
from pinfold.localtree import LinkError, dir_header, walk_local_tree
from pinfold.daemon.rpc.connection import DaemonNotRunning, RpcConnection, RpcConnectionClosed, RpcError
from pinfold.client_errors import PinFailed, PinWaitTimeout

__all__ = ["ADD_OPTIONS", "Client", "DaemonNotRunning", "LinkError", "PinFailed", "PinWaitTimeout",
           "RpcConnectionClosed", "RpcError", "walk_local_tree"]

CHUNK = 1 << 20


def _file_chunks(f: BinaryIO, progress: Callable[[int], None] | None) -> Iterator[bytes]:
    while chunk := f.read(CHUNK):
        if progress:
            progress(len(chunk))
        yield chunk


#: Flags of a file ``get`` writes: created or truncated, written from the start.


class Client(GetMixin, PathsMixin, NamesMixin):
    """A connection to the daemon of one home (or an explicit socket path).

    Every method that takes a CID takes ``CID/path/in/dag`` and ``NAME@REF[/path]``
    too; ``ls``, ``stat``, ``resolve``, ``read`` and ``open`` come from
    ``PathsMixin``, the names methods (push, pull, versions, ...) from ``NamesMixin``."""

    def __init__(self, home: str | os.PathLike[str] | None = None, *,
                 socket_path: str | os.PathLike[str] | None = None) -> None:
        if socket_path is None:
            h = Home(root=resolve_home(home))
            config = load(h.config_path)
            socket_path = h.socket_path(config)
        self.socket_path = Path(socket_path)
        self._conn: RpcConnection | None = None

    # ------------------------------------------------------------------ plumbing

    @property
    def conn(self) -> RpcConnection:
        """The connection, opened on first use and opened anew after an error closed it.

        A call that fails half-way (an interrupt, a transport error, an upload
        source that raised) may leave the old connection's framing unknown; it
        is then closed, and the next call connects again, so a ``Client``
        stays usable after any error a call raises.
        """
        if self._conn is None or self._conn.closed:
            self._conn = RpcConnection(self.socket_path)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, method: str, params: dict[str, Any] | None = None, *,
             upload: Iterable[bytes] | None = None) -> Any:
        """Call ``method`` and return its result."""
        return self.conn.call(method, params or {}, upload=upload)

    def stream(self, method: str, params: dict[str, Any] | None = None, *,
               upload: Iterable[bytes] | None = None,
               on_progress: Callable[[dict[str, Any]], None] | None = None) -> Iterator[Any]:
        """Call ``method`` and yield its streamed items (``on_progress``: see the module)."""
        return self.conn.stream(method, params or {}, upload=upload, on_progress=on_progress)

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

        The root is pinned unless ``pin=False`` (as Kubo's ``add``). ``opts``
        (``ADD_OPTIONS``): chunk_size (bytes), cid_version (0|1), raw_leaves
        (bool), max_links, and the pin's options name, rmin, rmax, availability
        (cluster-wide in a cluster), expire_in (seconds); the daemon refuses pin
        options with ``pin=False``. ``progress(nbytes)`` is called with the size
        of each chunk as it is sent (a delta, so ``progress=tqdm_bar.update``
        works).

        Raises:
            TypeError: an option not in ``ADD_OPTIONS`` (all unknown ones are named).
            RpcError: the daemon refused the data or an option.
        """
        check_options("add_stream", opts)

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
            availability: float | None = None, wait: bool = False,
            wait_timeout: float | None = None,
            progress: Callable[[int], None] | None = None, **opts: Any) -> str:
        """Add a file or directory (path, bytes or binary file object); returns the root CID text.

        The root is pinned unless ``pin=False``; ``replicas``/``rmin``/``rmax``/
        ``availability`` set how many copies the cluster keeps. With ``wait``
        (implied by ``wait_timeout``, seconds) this returns once rmin holders
        report the pin pinned (``add_info``). ``progress(nbytes)`` is called with
        the number of bytes just sent, as they are sent (file data only). See
        ``add_stream`` for ``opts`` (``name`` names the pin).

        Raises:
            TypeError: an unknown keyword argument (all unknown ones are named).
            ValueError: ``wait_timeout`` is not > 0, or waiting with ``pin=False``.
            FileNotFoundError: ``source`` is a path that does not exist.
            PinWaitTimeout: the wait timed out (the content is added and pinned).
            PinFailed: every holder failed to pin it.
            RpcError: the daemon refused the data or an option.
        """
        check_options("add", opts, DIR_OPTIONS)
        return self.add_info(source, pin=pin, replicas=replicas, rmin=rmin, rmax=rmax,
                             availability=availability, wait=wait, wait_timeout=wait_timeout,
                             progress=progress, **opts)["cid"]

    def add_info(self, source: str | os.PathLike[str] | bytes | BinaryIO, *, pin: bool = True,
                 replicas: int | None = None, rmin: int | None = None, rmax: int | None = None,
                 availability: float | None = None, wait: bool = False,
                 wait_timeout: float | None = None,
                 progress: Callable[[int], None] | None = None,
                 **opts: Any) -> dict[str, Any]:
        """Like ``add`` but returns ``{"cid", "bytes", "blocks"}`` (plus ``"files"``
        for a directory, and ``pin`` when pinned).

        With ``wait`` (implied by ``wait_timeout``, seconds) the pin is made and
        this returns once rmin holders report it pinned, as ``pin(wait=True)``.

        Raises:
            TypeError: an unknown keyword argument (all unknown ones are named).
            ValueError: ``wait_timeout`` is not > 0, or waiting with ``pin=False``
                (before anything is sent).
            PinWaitTimeout: the timeout passed first.
        """
        check_options("add_info", opts, DIR_OPTIONS)
        _check_timeout(wait_timeout)
        repl = replication_params(replicas, rmin, rmax, availability)
        waiting = wait or wait_timeout is not None
        if waiting and not pin:
            raise ValueError("wait waits for the pin's holders: it cannot be combined with pin=False")
        dereference = bool(opts.pop("dereference", False))
        if isinstance(source, (bytes, bytearray, memoryview)):
            data = bytes(source)
            chunks: Iterable[bytes] = (data[i:i + CHUNK] for i in range(0, len(data), CHUNK))
            res = self.add_stream(chunks, pin=pin, progress=progress, **repl, **opts)
        elif hasattr(source, "read"):
            res = self.add_stream(_file_chunks(source, None), pin=pin, progress=progress,
                                  **repl, **opts)
        elif Path(source).is_dir():
            res = self.add_dir(Path(source), pin=pin, dereference=dereference, progress=progress,
                               **repl, **opts)
        else:
            with open(Path(source), "rb") as f:
                res = self.add_stream(_file_chunks(f, None), pin=pin, progress=progress,
                                      **repl, **opts)
        if waiting:
            res["pin"]["status"] = self.wait_pinned(res["cid"], timeout=wait_timeout)
            res["pin"]["holders_pinned"] = res["pin"]["status"]["healthy"]
        return res

    def add_dir(self, path: str | os.PathLike[str], *, pin: bool = True,
                dereference: bool = False,
                progress: Callable[[int], None] | None = None,
                **opts: Any) -> dict[str, Any]:
        """Add a directory tree; returns ``{"cid", "bytes", "blocks", "files", "symlinks"}``.

        A symbolic link is stored as a UnixFS symlink node holding its target
        (Kubo's ``ipfs add -r`` does the same, and the CIDs are equal) when it
        is relative and leads to something inside the folder. With
        ``dereference`` every link is followed instead and what it points to
        is stored as a plain file or folder under the link's name (Hugging
        Face cache snapshots are links into ``../../blobs``).

        ``progress(nbytes)`` is called as file data is sent; ``opts`` as ``add_stream``.

        Raises:
            TypeError: an option not in ``ADD_OPTIONS``.
            NotADirectoryError: ``path`` is not a directory.
            LinkError: without ``dereference``, a link is absolute, dangles or
                leads outside the folder; with it, a link dangles or leads back
                to a folder that contains it (a cycle). The message names the link.
            ValueError: a name is not valid UTF-8, or an entry is neither a
                file, a folder nor a symlink (a FIFO, a socket, a device).
        """
        check_options("add_dir", opts)
        root = Path(path)
        if not root.is_dir():
            raise NotADirectoryError(f"{root}: not a directory")

        def entries() -> Iterator[bytes]:
            for kind, rel, full, extra in walk_local_tree(root, dereference=dereference):
                if kind == "dir":
                    yield dir_header(rel, "dir", 0)
                elif kind == "symlink":
                    yield dir_header(rel, "symlink", 0, target=extra)
                else:
                    size = extra
                    yield dir_header(rel, "file", size)
                    with open(full, "rb") as f:
                        left = size
                        while left:
                            chunk = f.read(min(CHUNK, left))
                            if not chunk:
                                raise OSError(f"{full} shrank while being added")
                            left -= len(chunk)
                            if progress:
                                progress(len(chunk))
                            yield chunk

        params = {k: v for k, v in opts.items() if v is not None}
        params["pin"] = pin
        return self.call("add_dir", params, upload=entries())

    def cat(self, cid: str, *, offset: int = 0, length: int | None = None,
            timeout: float | None = None,
            on_progress: Callable[[dict[str, Any]], None] | None = None) -> Iterator[bytes]:
        """The bytes of the file ``cid`` (or ``CID/path``) from ``offset`` (bytes), at
        most ``length`` bytes, as chunks; only the blocks covering the range are read.

        ``timeout`` (seconds) bounds the daemon's fetch; ``on_progress`` gets its
        progress events (module docstring) as the chunks are read.

        Raises:
            ValueError: ``timeout`` is not > 0 (before anything is sent).
            RpcError: ``timeout`` when it passed, ``not_found``, ``not_a_file``...
        """
        params = transfer_params(cid, timeout, on_progress)
        params["offset"] = offset
        if length is not None:
            params["length"] = length
        return self.stream("cat", params, on_progress=on_progress)

    def cat_to_fd(self, cid: str, fd: int, *, offset: int = 0,
                  length: int | None = None, timeout: float | None = None,
                  on_progress: Callable[[dict[str, Any]], None] | None = None
                  ) -> dict[str, Any]:
        """Have the daemon write the file's bytes straight to ``fd`` (a file, pipe or
        terminal of this process, passed over the socket with SCM_RIGHTS); returns
        ``{"cid", "bytes"}``. Saves a copy through the socket and this process.
        ``timeout`` and ``on_progress`` as ``cat``."""
        params = transfer_params(cid, timeout, on_progress)
        params.update({"offset": offset, "to_fd": True})
        if length is not None:
            params["length"] = length
        return self.conn.call("cat", params, pass_fd=fd, on_progress=on_progress)

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
            expire_in: float | None = None, wait: bool = False,
            wait_timeout: float | None = None,
            progress: Callable[[dict[str, Any]], None] | None = None,
            timeout: float | None = None,
            on_progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Pin ``cid`` (cluster-wide in a cluster); returns the pin record.

        In a cluster the record says how many holders had it pinned when the
        pin was written (``holders_pinned`` of ``holders_wanted`` = rmin); the
        others fetch it afterwards. With ``wait`` (implied by ``wait_timeout``)
        this returns only once rmin holders report pinned, the record then
        holding the final ``status``; see ``wait_pinned`` for ``progress``.
        ``timeout`` (seconds) bounds the pin's fetch (standalone: the whole DAG
        is fetched before this returns) and ``on_progress`` gets its progress
        events (module docstring).

        Raises:
            ValueError: ``wait_timeout`` or ``timeout`` is not > 0 seconds (before
                anything is sent).
            PinWaitTimeout: ``wait_timeout`` seconds passed first.
            RpcError: the daemon refused the pin (e.g. ``invalid_argument``).
        """
        _check_timeout(wait_timeout)
        params = transfer_params(cid, timeout, on_progress)
        params["recursive"] = recursive
        params.update(replication_params(replicas, rmin, rmax, availability))
        if name is not None:
            params["name"] = name
        if expire_in is not None:
            params["expire_in"] = expire_in
        res = self.conn.call("pin_add", params, on_progress=on_progress)
        if wait or wait_timeout is not None:
            res["status"] = self.wait_pinned(res["cid"], timeout=wait_timeout,
                                             progress=progress)
            res["holders_pinned"] = res["status"]["healthy"]
        return res

    def wait_pinned(self, cid: str, *, timeout: float | None = None,
                    progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Wait until rmin holders of ``cid`` report pinned on alive peers (as
        ``ipfs-cluster-ctl pin add --wait``); returns the ``status`` record.

        Args:
            cid: a pinned CID.
            timeout: seconds (> 0) to wait at most; None waits as long as it takes.
            progress: called with ``{"pinned", "wanted", "total", "holders"}`` at
                the start and whenever the count, a holder's state or the bytes
                known of it change (``total``: the DAG's bytes or None; each
                holder: ``peer_id``, ``state``, ``peer_status``, and where known
                ``bytes`` it has and ``sent_bytes`` this node sent it; DESIGN.md).

        Raises:
            ValueError: ``timeout`` is not > 0.
            PinWaitTimeout: the timeout passed first; ``.status`` is the last
                status and the message names the holders behind and their state.
            PinFailed: every holder failed to pin it (e.g. no peer has the
                content) and none is trying again soon; the message names the
                holders and their errors.
            RpcError: ``not_pinned`` when the pin is removed meanwhile.
        """
        _check_timeout(timeout)
        params: dict[str, Any] = {"cid": str(cid)}
        if timeout is not None:
            params["timeout"] = float(timeout)
        stream = self.conn.stream("pin_wait", params)
        for item in stream:
            if progress is not None:
                progress(item)
        res = dict(stream.result)
        done = res.pop("done", False)
        if res.pop("failed", False):
            raise PinFailed(str(cid), res)
        if not done:
            raise PinWaitTimeout(str(cid), timeout or 0.0, res)
        return res

    def unpin(self, cid: str, *, force: bool = False) -> dict[str, Any]:
        """Remove the pin of ``cid``.

        Raises:
            RpcError: ``pin_in_use`` when ``cid`` is the root of a live version of
                a name (the message names it and ``pinfold versions rm NAME@N``);
                ``force=True`` unpins it anyway. ``not_pinned``.
        """
        params: dict[str, Any] = {"cid": str(cid)}
        if force:
            params["force"] = True
        return self.call("pin_rm", params)

    def pins(self, state: str | None = None, *, records: bool = False
             ) -> Iterator[dict[str, Any]]:
        """Pins, streamed, optionally only those in ``state``: each a dict with ``cid``,
        ``name``, ``mode`` and ``state`` (``pinned``, ``incomplete`` with
        ``blocks_present`` of ``blocks``, or a cluster state; ``pin_error`` with
        ``error``). ``state="error"`` lists failed pins. The pins that carry name
        records (named ``name:NAME KIND ...``) are listed only with ``records``."""
        params: dict[str, Any] = {"state": state} if state else {}
        if records:
            params["records"] = True
        return self.stream("pin_ls", params)

    def status(self, cid: str) -> dict[str, Any]:
        """``{"cid", "name", "mode", "rmin", "rmax", "healthy", "availability",
        "local_state", "holders": [...]}``; a holder counts as ``pinned`` only with
        every block of the pin. The root of a version of a name also has
        ``"versions": [{"name", "version", "ref", "tags", "retired"}]``, as ``pins``."""
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


def _check_timeout(timeout: float | None) -> None:
    if timeout is not None and not 0 < timeout < float("inf"):
        raise ValueError(f"wait timeout must be > 0 seconds, got {timeout}")
