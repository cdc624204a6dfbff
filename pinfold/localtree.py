"""A local folder as ``Client.add_dir`` uploads it: ``walk_local_tree`` (entries
in upload order, with the symlink policy; ``LinkError`` when a link cannot be
stored as asked) and ``dir_header`` (the frame before each entry).

Imports the standard library and msgpack."""

from __future__ import annotations

import errno
import os
import stat
import struct
from collections.abc import Iterator
from typing import Any

import msgpack

__all__ = ["LinkError", "dir_header", "walk_local_tree"]


def dir_header(path: str, kind: str, size: int, **extra: Any) -> bytes:
    """One entry's header in an ``add_dir`` upload: a 4-byte big-endian length, then
    msgpack ``{path, type, size, ...extra}``."""
    body = msgpack.packb({"path": path, "type": kind, "size": size, **extra})
    return struct.pack(">I", len(body)) + body


class LinkError(ValueError):
    """A symbolic link under a folder being added cannot be stored as asked:
    it dangles, leads outside the folder (without ``dereference``), or leads
    back to a folder that contains it (with ``dereference``)."""


def _utf8_name(full: str, rel: str) -> None:
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{full!r}: the name is not valid UTF-8 "
                         "(UnixFS names are UTF-8)") from None


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def walk_local_tree(root: str | os.PathLike[str], *, dereference: bool = False
                    ) -> Iterator[tuple[str, str, str, Any]]:
    """The entries of a local folder in the order ``add_dir`` sends them.

    Yields ``(kind, rel, full, extra)``: ``kind`` is ``"dir"`` (``extra``
    None; every folder below ``root``, empty ones too), ``"file"`` (``extra``:
    its size in bytes; read it through ``full``, which may be a link when
    ``dereference``) or ``"symlink"`` (``extra``: the link's target text).
    ``rel`` is the ``'/'``-separated path under ``root``; names are sorted.

    Without ``dereference`` a link is yielded as a symlink only when its
    target is relative and resolves (through any further links) to an
    existing entry inside ``root``: such a link means the same thing wherever
    the folder is restored. With ``dereference`` links are followed; a folder
    reached through a link is walked under the link's name, and a link that
    leads to a folder containing it is refused, so a cycle never loops.

    Raises:
        LinkError, ValueError: as ``Client.add_dir`` says.
        OSError: a folder or link cannot be read.
    """
    top = os.fspath(root)
    top_real = os.path.realpath(top)
    st = os.stat(top)
    # (folder path on disk, rel, (dev, inode) of the folders from root down to it)
    stack: list[tuple[str, str, frozenset[tuple[int, int]]]] = [
        (top, "", frozenset({(st.st_dev, st.st_ino)}))]
    hint = "; add -L/--dereference to store the content it points to instead"
    while stack:
        folder, rel_dir, ancestors = stack.pop()
        if rel_dir:
            yield "dir", rel_dir, folder, None
        with os.scandir(folder) as it:
            names = sorted(e.name for e in it)
        subdirs = []
        for name in names:
            full = os.path.join(folder, name)
            rel = f"{rel_dir}/{name}" if rel_dir else name
            _utf8_name(full, rel)
            lst = os.lstat(full)
            is_link = stat.S_ISLNK(lst.st_mode)
            target = os.readlink(full) if is_link else None
            if is_link:
                try:
                    st = os.stat(full)
                except FileNotFoundError:
                    raise LinkError(f"{full}: symbolic link to {target!r} points to nothing "
                                    "(a dangling link)") from None
                except OSError as exc:
                    if exc.errno == errno.ELOOP:
                        raise LinkError(f"{full}: symbolic link to {target!r} is a cycle of "
                                        "links") from None
                    raise
                if not dereference:
                    if os.path.isabs(target):
                        raise LinkError(f"{full}: symbolic link to the absolute path "
                                        f"{target!r}; only relative links into the folder "
                                        f"are stored as links{hint}")
                    if not _inside(os.path.realpath(full), top_real):
                        raise LinkError(f"{full}: symbolic link to {target!r} points outside "
                                        f"{top}; only links into the folder are stored as "
                                        f"links{hint}")
                    try:
                        target.encode("utf-8")
                    except UnicodeEncodeError:
                        raise ValueError(f"{full!r}: the link target is not valid UTF-8 "
                                         "(UnixFS stores it as UTF-8)") from None
                    yield "symlink", rel, full, target
                    continue
            else:
                st = lst
            if stat.S_ISDIR(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if key in ancestors:
                    raise LinkError(f"{full}: symbolic link to {target!r} leads back to "
                                    f"{os.path.realpath(full)}, a folder that contains it "
                                    "(a cycle); -L cannot follow it")
                subdirs.append((full, rel, ancestors | {key}))
            elif stat.S_ISREG(st.st_mode):
                yield "file", rel, full, st.st_size
            else:
                raise ValueError(f"{full}: not a regular file, folder or symbolic link; "
                                 "only those can be added")
        stack.extend(reversed(subdirs))
