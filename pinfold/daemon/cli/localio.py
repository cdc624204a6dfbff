"""The CLI's local side: reading a file or stdin in chunks, writing bytes to
stdout or to a file (atomically), ``Output`` (JSON or text on stdout) and the
``--wait`` progress line on stderr (transfers: ``progressbar``).

Imports only the standard library.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


class Output:
    """Writes results as JSON or as text."""

    def __init__(self, as_json: bool) -> None:
        self.json = as_json

    def doc(self, obj: Any, text: str | None = None) -> None:
        if self.json:
            print(json.dumps(obj, sort_keys=True))
        elif text is not None:
            print(text)
        else:
            for k, v in obj.items():
                print(f"{k}: {v}")

    def lines(self, items: Iterable[dict[str, Any]], fmt) -> int:
        n = 0
        for item in items:
            n += 1
            print(json.dumps(item, sort_keys=True) if self.json else fmt(item), flush=True)
        return n


def read_input(path: str) -> Iterator[bytes]:
    if path == "-":
        stream = sys.stdin.buffer
        while chunk := stream.read(1 << 20):
            yield chunk
        return
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            yield chunk


def write_stdout(chunks: Iterable[bytes]) -> int:
    out = sys.stdout.buffer
    n = 0
    for chunk in chunks:
        out.write(chunk)
        n += len(chunk)
    out.flush()
    return n


def write_file(path: str, chunks: Iterable[bytes], *, force: bool) -> int:
    """Write ``chunks`` to ``path`` through a temporary file renamed at the end; returns bytes.

    An existing ``path`` is refused unless ``force``; on an error (including
    the daemon's) nothing is left behind and an existing file is unchanged.

    Raises:
        FileExistsError: ``path`` exists and ``force`` is False.
        IsADirectoryError: ``path`` is a folder.
    """
    import errno
    import tempfile

    target = Path(path)
    if target.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a directory", path)
    if not force and (target.exists() or target.is_symlink()):
        raise FileExistsError(errno.EEXIST, "already exists; use --force to overwrite it", path)
    if not target.parent.is_dir():
        raise FileNotFoundError(errno.ENOENT, "parent directory does not exist",
                                str(target.parent))
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            n = sum(f.write(chunk) for chunk in chunks)
        if not force and (target.exists() or target.is_symlink()):
            raise FileExistsError(errno.EEXIST, "already exists; use --force to overwrite it",
                                  path)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return n


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class WaitProgress:
    """``N of M holders pinned`` on stderr while waiting, only when stderr is a terminal."""

    def __init__(self) -> None:
        self.enabled = sys.stderr.isatty()
        self._shown = False

    def __call__(self, item: dict[str, Any]) -> None:
        if not self.enabled:
            return
        busy = [h["state"] for h in item.get("holders", []) if h.get("state") != "pinned"]
        extra = f" ({', '.join(sorted(set(busy)))})" if busy else ""
        sys.stderr.write(f"\r{item['pinned']} of {item['wanted']} holders pinned{extra}\x1b[K")
        sys.stderr.flush()
        self._shown = True

    def close(self) -> None:
        if self._shown:
            sys.stderr.write("\n")
            sys.stderr.flush()

