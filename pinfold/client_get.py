"""The Python client's ``get``: a file or directory tree written to a local path,
mixed into ``Client`` (``client.py``). Standard library only.

Each file goes to ``NAME.part`` (``.NAME-HASH.part`` when that is longer than
the file system allows) and is renamed when complete; symlinks are made
last, so no entry is ever written through a link; on an error nothing written
is left behind.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pinfold.client_paths import ref_basename
from pinfold.clientargs import transfer_params

__all__ = ["GetMixin", "part_name"]

_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC


def part_name(dest: str) -> str:
    """Where ``get`` writes ``dest`` until it is complete: ``dest.part``, or, when
    that name is over 255 bytes (a name of 251-255 bytes), a short hidden name in
    the same folder derived from the name."""
    folder, name = os.path.split(dest)
    if len(os.fsencode(name)) + 5 <= 255:
        return dest + ".part"
    digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:16]
    return os.path.join(folder, f".pinfold-get-{digest}.part")


class GetMixin:
    """``Client.get``. Needs ``stream`` from ``Client``."""

    stream: Any

    def get(self, cid: str, path: str | os.PathLike[str], *,
            progress: Callable[[int], None] | None = None, timeout: float | None = None,
            on_progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Write the file or directory tree ``cid`` to ``path``; returns
        ``{"cid", "files", "bytes", "path"}`` (``path``: where it was written).

        ``path`` must not exist, or be an empty folder: a tree is written into
        it, a single file as ``path/<cid>``. Each file is written to
        ``NAME.part`` and renamed when complete; ``progress(nbytes)`` is called
        as data arrives. On an error nothing written is left behind (an empty
        folder given as ``path`` is kept, empty). ``timeout`` and ``on_progress``
        as ``cat`` (the event's bytes are the DAG's block bytes).

        Raises:
            FileExistsError: ``path`` is a file, a link, or a folder that is not
                empty (the message names its first entry).
            FileNotFoundError: the parent folder of ``path`` does not exist.
            RpcError: the daemon's error (e.g. ``not_found``, ``invalid_cid``, ``timeout``).
            ValueError: ``timeout`` is not > 0.
        """
        params = transfer_params(cid, timeout, on_progress)
        target = Path(path)
        into_dir = False
        if target.is_symlink() or (target.exists() and not target.is_dir()):
            raise FileExistsError(errno.EEXIST, "already exists; choose another -o PATH",
                                  str(target))
        if target.is_dir():
            entries = sorted(os.listdir(target))
            if entries:
                raise FileExistsError(
                    errno.EEXIST, f"the folder is not empty (it holds {entries[0]!r}); "
                    "get writes into a new or an empty folder", str(target))
            into_dir = True
        elif not target.parent.is_dir():
            raise FileNotFoundError(errno.ENOENT, "parent directory does not exist",
                                    str(target.parent))
        out: int | None = None  # descriptor of the file being written
        seen: set[str] = set()
        made: set[str] = set()  # folders known to exist (one mkdir each, not one a file)
        root = os.fspath(target)
        current: str | None = None
        written = target
        files = 0
        total = 0
        links: list[tuple[str, str]] = []

        def finish() -> None:
            nonlocal out, current
            if out is not None and current is not None:
                os.close(out)
                out = None
                os.replace(part_name(current), current)
            out, current = None, None

        def folder(path: str) -> None:
            if path not in made:
                os.makedirs(path, exist_ok=True)
                made.add(path)

        try:
            for item in self.stream("get", params, on_progress=on_progress):
                if isinstance(item, dict):
                    finish()
                    rel = item["path"]
                    if rel.startswith("/") or ".." in rel.split("/"):
                        raise ValueError(f"daemon sent an unsafe path {rel!r}")
                    if rel in seen:
                        raise ValueError(f"the directory holds the name {rel!r} twice")
                    seen.add(rel)
                    dest = os.path.join(root, rel) if rel else root
                    if not rel and into_dir and item["type"] != "dir":
                        written = target / ref_basename(cid)  # one file into the folder
                        dest = os.fspath(written)
                    if item["type"] == "dir":
                        folder(dest)
                    elif item["type"] == "symlink":
                        # Made last, so no later entry is ever written through a link.
                        links.append((dest, item.get("target", "")))
                    else:
                        folder(os.path.dirname(dest))
                        current = dest
                        # os.open: open() adds an fstat, an isatty ioctl and an lseek a file.
                        out = os.open(part_name(dest), _NEW_FILE, 0o666)
                        files += 1
                else:
                    assert out is not None, "file data before a file header"
                    view = memoryview(item)
                    while view:
                        view = view[os.write(out, view):]
                    total += len(item)
                    if progress:
                        progress(len(item))
            finish()
            for dest, link_target in links:
                folder(os.path.dirname(dest))
                os.symlink(link_target, dest)
        except BaseException:
            if out is not None:
                os.close(out)
                out = None
            # Leave nothing half-written behind: the target did not exist or was empty.
            if into_dir:
                for child in target.iterdir():
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child, ignore_errors=True)
                    else:
                        child.unlink(missing_ok=True)
            elif target.is_dir() and not target.is_symlink():
                shutil.rmtree(target, ignore_errors=True)
            else:
                for leftover in (target, Path(part_name(os.fspath(target)))):
                    if leftover.exists() or leftover.is_symlink():
                        leftover.unlink()
            raise
        finally:
            if out is not None:
                os.close(out)
        return {"cid": str(cid), "files": files, "bytes": total, "path": str(written)}
