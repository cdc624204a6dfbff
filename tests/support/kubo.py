"""Drive the Kubo v0.22 peer (``kubo_peer.py``) from tests over JSON lines.

Usage::

    with kubo_peer(tmp_path / "kubo") as kubo:
        cid = kubo.request("add", path=str(file))["cid"]

``skip_reason()`` says why Kubo cannot run here (kubo-python or cffi not
installed, not Linux x86-64, the library does not load), or None.

The peer runs in its own process (the Go runtime stays out of pytest's) and is
driven synchronously: the pinfold side of these tests is a real daemon driven
through its blocking CLI and client, so there is no event loop to share.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import selectors
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parents[1] / "interop"
SCRIPT = HERE / "kubo_peer.py"

_reason: list[str | None] = []


def skip_reason() -> str | None:
    """Why Kubo cannot run here, or None when it can (asked once, in a subprocess that
    loads the library and exits)."""
    if not _reason:
        try:
            out = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True,
                                 text=True, timeout=60)
            _reason.append(None if out.returncode == 0 else
                           (out.stdout.strip() or out.stderr.strip()[-500:]
                            or f"kubo_peer.py --check exited {out.returncode}"))
        except (OSError, subprocess.TimeoutExpired) as exc:
            _reason.append(f"cannot run kubo_peer.py --check: {exc}")
    return _reason[0]


class KuboError(Exception):
    """The Kubo peer answered a request with an error, or exited."""


class KuboPeer:
    """A running Kubo peer process."""

    def __init__(self, proc: subprocess.Popen[bytes], repo: Path, log_path: Path) -> None:
        self._proc = proc
        self._repo = repo
        self._log_path = log_path
        self._ids = itertools.count(1)
        self._buf = b""
        self._sel = selectors.DefaultSelector()
        assert proc.stdout is not None
        self._sel.register(proc.stdout, selectors.EVENT_READ)
        self.peer_id = ""
        self.addrs: list[str] = []

    @property
    def pid(self) -> int:
        """The peer process's ID (its CPU time is Kubo's)."""
        return self._proc.pid

    def log(self) -> str:
        """The last 4000 characters of the peer's stderr and of the library's kubo.log."""
        out = []
        for path in (self._log_path, self._repo / "kubo.log"):
            try:
                out.append(f"--- {path.name}\n" + path.read_text(errors="replace")[-4000:])
            except FileNotFoundError:
                pass
        return "\n".join(out)

    def _read_line(self, deadline: float, what: str) -> bytes:
        assert self._proc.stdout is not None
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"Kubo peer: no answer to {what} in time\n{self.log()}")
            if not self._sel.select(left):
                continue
            chunk = self._proc.stdout.read1(1 << 16)
            if not chunk:
                raise KuboError(f"Kubo peer exited during {what}\n{self.log()}")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line

    def _start(self, timeout_s: float = 60.0) -> None:
        ready = json.loads(self._read_line(time.monotonic() + timeout_s, "start"))
        if not ready.get("ready"):
            raise KuboError(f"Kubo peer did not start: {ready.get('error')}\n{self.log()}")
        self.peer_id = ready["peer_id"]
        self.addrs = ready["addrs"]

    def request(self, cmd: str, *, timeout_s: float = 60.0, **args: Any) -> dict[str, Any]:
        """Send one command and wait for its reply.

        Raises:
            KuboError: the peer answered ``ok: false`` or exited.
            TimeoutError: no reply within ``timeout_s`` seconds.
        """
        rid = next(self._ids)
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps({"id": rid, "cmd": cmd, **args}).encode() + b"\n")
        self._proc.stdin.flush()
        deadline = time.monotonic() + timeout_s
        while True:
            reply = json.loads(self._read_line(deadline, cmd))
            if reply.get("id") == rid:
                break
        if not reply.get("ok"):
            raise KuboError(f"kubo {cmd}: {reply.get('error')}\n{self.log()}")
        return reply


@contextlib.contextmanager
def kubo_peer(repo: Path) -> Iterator[KuboPeer]:
    """Start a Kubo peer with a new repo in ``repo`` (created; the library's log is
    ``repo/kubo.log``, the process's stderr ``repo`` + ``.log``) on 127.0.0.1 for the
    duration of the block."""
    repo.mkdir(parents=True)
    log_path = repo.with_name(repo.name + ".log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, str(SCRIPT), str(repo)], cwd=str(repo),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log)
    peer = KuboPeer(proc, repo, log_path)
    try:
        peer._start()
        yield peer
    finally:
        try:
            if proc.poll() is None:
                peer.request("stop", timeout_s=10)
            proc.wait(timeout=10)
        except (OSError, KuboError, TimeoutError, subprocess.TimeoutExpired):
            pass
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()
            peer._sel.close()
