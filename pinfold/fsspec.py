"""``pinfold://``: an fsspec filesystem over the local daemon, so pandas, pyarrow,
safetensors or ``datasets`` can open one file of a DAG lazily::

    import fsspec, pandas
    with fsspec.open("pinfold://bafy.../data.csv", "rb") as f:   # seekable, lazy
        head = f.read(100)
    df = pandas.read_csv("pinfold://bafy.../data.csv")
    cid = fsspec.filesystem("pinfold").put("folder", recursive=True)

Registered through the ``fsspec.specs`` entry point (pyproject.toml). Paths are
``CID``, ``CID/path/in/dag``, ``NAME@VERSION|TAG[/path]`` or ``NAME/path``
(the daemon's resolver, ``daemon/resolver.py``); anything missing is
``FileNotFoundError``, content no peer sends in time ``TimeoutError``. Names
may hold ``/``: in ``pinfold://org/data/x.csv`` (no ``@``, first part not a
CID) the name is the longest run of leading parts that is a known name
(``org/data``), at its ``main`` (as Hugging Face's default revision), and the
rest is the path inside. When no leading run is
a known name the error is ``NameOrCIDNotFound`` (a ``FileNotFoundError`` and,
since the text may be a mistyped CID, a ``ValueError``) naming the URL and
suggesting ``NAME@REF/path``.
Everything goes through ``pinfold.Client`` over the daemon's Unix socket:
by default the one of ``$PINFOLD_HOME`` or ``~/.pinfold`` as the CLI finds it;
``storage_options={"socket": PATH}`` or ``{"home": DIR}`` choose another.

Reads: ``PinfoldFile._fetch_range`` asks the daemon for one byte range, which
reads (or fetches from peers) only the UnixFS blocks covering it; fsspec's
``blockcache`` keeps the last ``maxblocks`` ranges of ``block_size`` bytes
(default 1 MiB, pinfold's chunk size). Content is immutable, so nothing is
ever invalidated. The filesystem is read-only except ``put``, which adds
(and pins) and returns the new CID: content decides the address.

Imports fsspec and the client only.
"""

from __future__ import annotations

import errno
import os
import threading
import weakref
from typing import Any

from fsspec.spec import AbstractBufferedFile, AbstractFileSystem

from pinfold.blockstore.cid import parse_cid
from pinfold.client import Client, RpcError
from pinfold.client_paths import strip_scheme

__all__ = ["NameOrCIDNotFound", "PinfoldFile", "PinfoldFileSystem"]

#: Bytes a lazy file fetches per range (pinfold's default UnixFS chunk size).
DEFAULT_BLOCK_SIZE = 1 << 20
#: Ranges of ``block_size`` a lazy file keeps (fsspec ``blockcache``).
DEFAULT_MAX_BLOCKS = 32

#: A path, CID, name, version or tag that is not there: FileNotFoundError.
_NOT_FOUND = {"path_not_found", "not_found", "name_not_found"}
#: No peer delivered a block in time, or the request's own bound passed: TimeoutError.
_TIMEOUT = {"timeout", "fetch_timeout"}
#: A malformed CID, path or name ref: ValueError.
_INVALID = {"invalid_cid", "invalid_path", "invalid_argument", "invalid_name"}


def _close_all(clients: list[Client]) -> None:
    while clients:
        clients.pop().close()


class NameOrCIDNotFound(FileNotFoundError, ValueError):
    """A ``pinfold://`` path without ``@`` whose first part is not a CID and whose
    leading parts are no known name: missing (``exists`` is False) as a name,
    malformed as a CID. ``filename`` is the path asked for."""


def _is_cid(text: str) -> bool:
    try:
        parse_cid(text)
        return True
    except Exception:
        return False


def _translate(exc: RpcError, path: str) -> Exception:
    """The Python error fsspec callers expect for the daemon's error code: a missing
    path, name, version (``NAME@99``) or tag is ``FileNotFoundError`` whose message
    says what is missing and whose ``filename`` is the path asked for; a bare
    ``NAME/path`` of no known name is ``NameOrCIDNotFound``; content no peer
    delivered in time is ``TimeoutError``, as the standard library's I/O says."""
    if exc.code in _NOT_FOUND:
        return FileNotFoundError(2, str(exc), path)
    if exc.code in _TIMEOUT:
        return TimeoutError(errno.ETIMEDOUT, str(exc), path)
    head = path.split("/", 1)[0]
    if exc.code == "invalid_cid" and "@" not in path and head and not _is_cid(head):
        return NameOrCIDNotFound(
            2, f"pinfold://{path}: no name of this cluster starts this path and {head!r} "
            "is not a CID; a path in a name is NAME@REF/path (e.g. "
            "pinfold://org/data@main/file.csv; NAME/path reads the name's main)", path)
    if exc.code in _INVALID:
        return ValueError(str(exc))
    if exc.code == "not_a_file":
        return IsADirectoryError(21, str(exc), path)
    return exc


class PinfoldFileSystem(AbstractFileSystem):
    """The ``pinfold://`` filesystem: read-only paths inside CIDs, and ``put``.

    Args:
        socket: the daemon's RPC socket path (default: the home's, as the CLI).
        home: the home whose socket to use (default ``$PINFOLD_HOME`` or ``~/.pinfold``).
        block_size: bytes per range a lazy file fetches (default 1 MiB).

    Info dicts: ``{"name", "size" (bytes; 0 for a directory), "type" ("file" or
    "directory"; a symlink or non-UnixFS node is "other"), "cid"}``.
    One connection per thread (a ``Client`` serves one call at a time).
    """

    protocol = "pinfold"
    root_marker = ""
    #: Not cached by fsspec: the default socket comes from ``$PINFOLD_HOME`` when
    #: made, which the instance cache (keyed by arguments) would not see change.
    cachable = False

    def __init__(self, socket: str | os.PathLike[str] | None = None, *,
                 home: str | os.PathLike[str] | None = None,
                 block_size: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.socket = None if socket is None else str(socket)
        self.home = None if home is None else str(home)
        self.blocksize = block_size or DEFAULT_BLOCK_SIZE
        self._local = threading.local()
        self._clients: list[Client] = []
        # Each thread's connection is closed with the filesystem (or at exit).
        self._finalizer = weakref.finalize(self, _close_all, self._clients)

    @property
    def client(self) -> Client:
        """This thread's ``Client`` (opened on first use)."""
        c = getattr(self._local, "client", None)
        if c is None:
            c = Client(self.home, socket_path=self.socket)
            self._local.client = c
            self._clients.append(c)
        return c

    def close(self) -> None:
        """Close every connection this filesystem opened (it reconnects on next use)."""
        self._local = threading.local()
        _close_all(self._clients)

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        text = strip_scheme(str(path))
        if text.startswith("/ipfs/"):
            text = text[len("/ipfs/"):]
        return text.strip("/")

    # ------------------------------------------------------------------ metadata

    def _call(self, path: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RpcError as exc:
            raise _translate(exc, path) from exc

    @staticmethod
    def _info(name: str, kind: str, size: int | None, cid: str) -> dict[str, Any]:
        ftype = {"dir": "directory", "file": "file"}.get(kind, "other")
        return {"name": name, "size": size or 0, "type": ftype, "cid": cid}

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        """What ``path`` names.

        Raises:
            FileNotFoundError: no such path, or a ``NAME@REF`` whose name, version or
                tag does not exist (``exists`` is then False).
            ValueError: a malformed CID, path or name ref.
        """
        path = self._strip_protocol(path)
        r = self._call(path, self.client.resolve_path, path)
        return self._info(path, r["type"], r["size"], r["cid"])

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        """The entries of a directory (a file lists as itself), names as full paths."""
        path = self._strip_protocol(path)
        info = self.info(path)
        if info["type"] != "directory":
            out = [info]
        else:
            found = self._call(path, lambda: list(self.client.ls(path)))
            out = [self._info(f"{path}/{e['name']}", e["type"], e["size"], e["cid"])
                   for e in found]
        return out if detail else [e["name"] for e in out]

    def ukey(self, path: str) -> str:
        """The CID ``path`` names (content never changes under it)."""
        return self.info(path)["cid"]

    def checksum(self, path: str) -> int:
        return int.from_bytes(self.ukey(path).encode()[-8:], "big")

    # ------------------------------------------------------------------ reading

    def _open(self, path: str, mode: str = "rb", block_size: int | None = None,
              autocommit: bool = True, cache_options: dict[str, Any] | None = None,
              **kwargs: Any) -> PinfoldFile:
        if mode != "rb":
            raise ValueError(f"pinfold:// files are read-only (mode {mode!r}); "
                             "fs.put(local_path) adds a file and returns its CID")
        info = self.info(path)
        if info["type"] == "directory":
            raise IsADirectoryError(21, "is a directory", path)
        cache_options = {"maxblocks": DEFAULT_MAX_BLOCKS, **(cache_options or {})}
        return PinfoldFile(self, path, mode, block_size=block_size or self.blocksize,
                           cache_type=kwargs.pop("cache_type", "blockcache"),
                           cache_options=cache_options, size=info["size"], cid=info["cid"],
                           **kwargs)

    def cat_file(self, path: str, start: int | None = None, end: int | None = None,
                 **kwargs: Any) -> bytes:
        """Bytes ``[start, end)`` of a file (negative: from its end), read as one range."""
        path = self._strip_protocol(path)
        if (start is not None and start < 0) or (end is not None and end < 0):
            size = self.info(path)["size"]
            start = max(0, size + start) if start is not None and start < 0 else start
            end = max(0, size + end) if end is not None and end < 0 else end
        offset = start or 0
        length = None if end is None else max(0, end - offset)
        data, _ = self._call(path, self.client.read, path, offset=offset, length=length)
        return data

    def get_file(self, rpath: str, lpath: str, callback: Any = None, outfile: Any = None,
                 **kwargs: Any) -> None:
        """Write one file to ``lpath`` (a directory: create it), streamed."""
        rpath = self._strip_protocol(rpath)
        if self.isdir(rpath):
            os.makedirs(lpath, exist_ok=True)
            return
        close = outfile is None
        f = outfile if outfile is not None else open(lpath, "wb")  # noqa: SIM115
        try:
            for chunk in self._call(rpath, self.client.cat, rpath):
                f.write(chunk)
                if callback is not None:
                    callback.relative_update(len(chunk))
        finally:
            if close:
                f.close()

    # ------------------------------------------------------------------ writing

    def put_file(self, lpath: str, rpath: str | None = None, callback: Any = None,
                 mode: str = "overwrite", **kwargs: Any) -> str:
        """Add (and pin) the local file ``lpath``; returns its CID. See ``put``."""
        return self.put(lpath, rpath, **kwargs)

    def put(self, lpath: str, rpath: str | None = None, recursive: bool = False,
            callback: Any = None, maxdepth: int | None = None, **kwargs: Any) -> str:
        """Add (and pin) a local file, or a folder with ``recursive``; returns the root CID.

        Content decides the address, so there is no destination: ``rpath``
        must be empty (or ``pinfold://``). ``kwargs`` go to ``Client.add``
        (e.g. ``replicas``, ``pin=False``).

        Raises:
            ValueError: a destination path was given.
            IsADirectoryError: ``lpath`` is a folder and ``recursive`` is false.
        """
        if rpath and self._strip_protocol(rpath):
            raise ValueError(f"pinfold:// addresses content by CID: put takes no destination "
                             f"(got {rpath!r}); it returns the new CID")
        if os.path.isdir(lpath) and not recursive:
            raise IsADirectoryError(21, "is a directory (pass recursive=True)", str(lpath))
        return self.client.add(lpath, **kwargs)

    def _rm(self, path: str) -> None:
        raise NotImplementedError("pinfold:// is content-addressed: unpin with `pinfold pin rm`")

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        raise NotImplementedError("pinfold:// folders are made by put(folder, recursive=True)")


class PinfoldFile(AbstractBufferedFile):
    """A lazy, seekable read-only file of a ``pinfold://`` path.

    Attributes:
        cid: the file's CID (resolved once, when opened).
        ranges: ranges fetched from the daemon so far.
        blocks_read: UnixFS blocks the daemon read for them.
    """

    def __init__(self, fs: PinfoldFileSystem, path: str, mode: str = "rb", *,
                 cid: str, **kwargs: Any) -> None:
        self.cid = cid
        self.ranges = 0
        self.blocks_read = 0
        super().__init__(fs, path, mode, **kwargs)

    def _fetch_range(self, start: int, end: int) -> bytes:
        """Bytes ``[start, end)``: one ``cat`` of that range by the file's CID."""
        if end <= start:
            return b""
        fs: PinfoldFileSystem = self.fs
        data, summary = fs._call(self.path, fs.client.read, self.cid, offset=start,
                                 length=end - start)
        self.ranges += 1
        self.blocks_read += int(summary.get("blocks", 0))
        return data
