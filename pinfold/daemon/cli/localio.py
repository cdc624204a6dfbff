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


def _size(n: int) -> str:
    """Bytes in decimal units, as the transfer bar shows them: ``1.2 MB``."""
    if n < 1000:
        return f"{n} bytes"
    value = n / 1000
    for unit in ("kB", "MB", "GB"):
        if value < 1000:
            return f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


def wait_line(item: dict[str, Any]) -> str:
    """One ``pin_wait`` progress item as a line: the count, the DAG's size when
    known, then each holder (the last 6 characters of its peer ID) with its
    state and the bytes known of it: ``1 of 2 holders pinned, 3.4 MB: ..k3XaQ2
    pinned, ..Pq9zR1 pinning 1.2 MB/3.4 MB (sent 1.2 MB)``."""
    total = item.get("total")
    text = f"{item['pinned']} of {item['wanted']} holders pinned"
    if total:
        text += f", {_size(int(total))}"
    parts = []
    for h in item.get("holders", []):
        part = f"..{str(h.get('peer_id', ''))[-6:]} {h.get('state')}"
        if h.get("state") != "pinned" and h.get("bytes") is not None:
            part += f" {_size(int(h['bytes']))}" + (f"/{_size(int(total))}" if total else "")
        if h.get("sent_bytes") and h.get("state") != "pinned":
            part += f" (sent {_size(int(h['sent_bytes']))})"
        parts.append(part)
    return text + (": " + ", ".join(parts) if parts else "")


class WaitProgress:
    """The ``pin_wait`` progress (``wait_line``) on stderr while waiting, redrawn in
    place, only when stderr is a terminal: piped, nothing is printed."""

    def __init__(self) -> None:
        self.enabled = sys.stderr.isatty()
        self._shown = False

    def __call__(self, item: dict[str, Any]) -> None:
        if not self.enabled:
            return
        # Cut to the terminal's width: a wrapped line would not be redrawn in place.
        try:
            width = os.get_terminal_size(sys.stderr.fileno()).columns - 1
        except (OSError, ValueError):
            width = 0
        width = width if width >= 40 else 119  # a terminal that reports no size
        sys.stderr.write(f"\r{wait_line(item)[:width]}\x1b[K")
        sys.stderr.flush()
        self._shown = True

    def close(self) -> None:
        if self._shown:
            sys.stderr.write("\n")
            sys.stderr.flush()

