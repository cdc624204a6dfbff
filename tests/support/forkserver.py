"""A preloaded parent that forks test daemons and CLI runs, so each skips the imports.

Starting ``python -m pinfold.daemon.cli ... daemon`` costs about 1.5 CPU-seconds,
nearly all of it importing py-libp2p and trio; a CLI command about 0.15. The
suite starts hundreds of both on a 2-core machine. ``ForkServer`` is one process
per test process that has imported the CLI and the daemon (no trio run, no
thread, no open store) and forks a child for each request: the child sets its
argv, environment, working directory and stdio, and runs the same
``pinfold.daemon.cli.main.main`` as the console script. The daemon is still a
separate process with its own pid, signals, LMDB environment and Unix socket;
only the interpreter start-up is shared. Tests of the ``pinfold`` entry point
itself (tests/node/test_home_init.py, tests/e2e/test_daemon_e2e.py, ...) keep
running the real command, and ``PINFOLD_TEST_FORK=0`` runs every daemon and CLI
command that way.

Protocol (one Unix-socket connection per child): the client sends a JSON
request ``{"argv", "env", "cwd"}`` with the child's stdin, stdout and stderr as
passed file descriptors; the server answers ``{"pid"}``, and when the child
exits, ``{"status", "cpu_s"}`` (a ``subprocess`` return code: negative for a
signal; the CPU seconds it used, which ``ForkServer.children_cpu_s`` sums).
``ForkedProcess`` gives the parts of ``subprocess.Popen`` the tests use.

Run as ``python -m tests.support.forkserver SOCKET``; it exits when its stdin
(a pipe from the test process) closes.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

PYTHON = sys.executable
_MAX_REQUEST = 1 << 20


def _recv_line(sock: socket.socket, *, fds: int = 0,
               pending: bytearray | None = None) -> tuple[dict[str, Any], list[int]]:
    """One JSON line from ``sock`` (and up to ``fds`` passed descriptors with its first bytes).

    Bytes after the line's newline (the server may write the exit status right
    behind the pid) stay in ``pending`` for the next call; without ``pending``
    they are an error.
    """
    data = pending if pending is not None else bytearray()
    got: list[int] = []
    while b"\n" not in data:
        if fds:
            chunk, new, _flags, _addr = socket.recv_fds(sock, 65536, fds)
            got += new
        else:
            chunk = sock.recv(65536)
        if not chunk:
            raise EOFError("fork server connection closed")
        data += chunk
        if len(data) > _MAX_REQUEST:
            raise ValueError("fork server request too long")
    end = data.index(b"\n") + 1
    line = bytes(data[:end])
    del data[:end]
    if data and pending is None:
        raise ValueError("fork server sent more than one line")
    return json.loads(line), got


def _status(wait_status: int) -> int:
    """``os.waitpid`` status as a ``subprocess`` return code."""
    return os.waitstatus_to_exitcode(wait_status)


# -- the server ---------------------------------------------------------------------------

def _child(server_files: list[Any], request: dict[str, Any], fds: list[int]) -> None:
    """In the forked child: become ``pinfold ARGV`` and exit with its status."""
    code: Any = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for f in server_files:
            if isinstance(f, int):
                os.close(f)
            else:
                f.close()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = [request["argv0"], *request["argv"]]
        from pinfold.daemon.cli.main import main

        try:
            code = main(request["argv"])
        except SystemExit as exc:
            code = exc.code
        except BaseException:  # noqa: BLE001 - what the interpreter would print
            import traceback

            traceback.print_exc()
            code = 1
        if code is None:
            code = 0
        elif not isinstance(code, int):
            print(code, file=sys.stderr)
            code = 1
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001, S110 - a closed pipe; the status still goes out
                pass
        os._exit(code if isinstance(code, int) else 1)


def serve(path: str) -> None:
    """Accept fork requests on the Unix socket ``path`` until stdin closes."""
    import pinfold.daemon.cli.main  # noqa: F401 - the CLI
    import pinfold.daemon.process  # noqa: F401 - the daemon: py-libp2p, trio, LMDB

    assert threading.active_count() == 1, "forking needs a single-threaded parent"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    children: dict[int, socket.socket] = {}
    print("ready", flush=True)
    while True:
        readable, _, _ = select.select([listener, wake_r, sys.stdin], [], [])
        if sys.stdin in readable and not os.read(sys.stdin.fileno(), 1):
            return
        if wake_r in readable:
            os.read(wake_r, 4096)
        while children:
            try:
                pid, wait_status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            conn = children.pop(pid, None)
            if conn is not None:
                reply = {"status": _status(wait_status), "cpu_s": usage.ru_utime + usage.ru_stime}
                try:
                    conn.sendall(json.dumps(reply).encode() + b"\n")
                except OSError:
                    pass
                conn.close()
        if listener in readable:
            conn, _ = listener.accept()
            request, fds = _recv_line(conn, fds=3)
            pid = os.fork()
            if pid == 0:
                _child([conn, listener, wake_r, wake_w, *children.values()], request, fds)
            for fd in fds:
                os.close(fd)
            children[pid] = conn
            conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")


# -- the client ---------------------------------------------------------------------------

class ForkedProcess:
    """A child of the fork server, with the ``subprocess.Popen`` methods the tests use."""

    def __init__(self, conn: socket.socket, pid: int, args: list[str],
                 pending: bytearray) -> None:
        self._conn = conn
        self._pending = pending
        self.pid = pid
        self.args = args
        self.returncode: int | None = None

    def _collect(self, timeout: float | None) -> int | None:
        if self.returncode is None:
            if b"\n" not in self._pending:
                readable, _, _ = select.select([self._conn], [], [], timeout)
                if not readable:
                    return None
            try:
                reply, _ = _recv_line(self._conn, pending=self._pending)
                self.returncode = int(reply["status"])
                ForkServer.children_cpu_s += float(reply["cpu_s"])
            except EOFError:
                # The fork server is gone (the test process is exiting); its child with it.
                self.returncode = -signal.SIGKILL
            self._conn.close()
        return self.returncode

    def poll(self) -> int | None:
        return self._collect(0)

    def __del__(self) -> None:
        # A child replaced before its status was read: close the connection quietly.
        self._conn.close()

    def wait(self, timeout: float | None = None) -> int:
        code = self._collect(timeout)
        if code is None:
            raise subprocess.TimeoutExpired(self.args, timeout or 0)
        return code

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ForkServer:
    """The fork server of this test process (``get()``), started on first use."""

    _instance: ForkServer | None = None
    _owner: int = 0
    #: CPU seconds (user + system) of the exited children of this process's servers.
    children_cpu_s: float = 0.0

    def __init__(self) -> None:
        self._dir = tempfile.mkdtemp(prefix="pinfold-fork-")
        self.path = os.path.join(self._dir, "fork.sock")
        self._log = open(os.path.join(self._dir, "server.log"), "wb")  # noqa: SIM115
        self._proc = subprocess.Popen(
            [PYTHON, "-m", "tests.support.forkserver", self.path], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self._log, cwd=Path(__file__).parents[2])
        assert self._proc.stdout is not None
        if self._proc.stdout.readline() != b"ready\n":
            self._proc.wait(timeout=30)
            raise RuntimeError("fork server did not start: "
                               + Path(self._dir, "server.log").read_text(errors="replace"))
        atexit.register(self.close)

    @classmethod
    def get(cls) -> ForkServer:
        if cls._instance is None or cls._owner != os.getpid():
            cls._instance = cls()
            cls._owner = os.getpid()
        return cls._instance

    def own_cpu_s(self) -> float:
        """CPU seconds the running server itself has used (its children not included)."""
        try:
            fields = Path(f"/proc/{self._proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def spawn(self, argv: list[str], *, stdin: int, stdout: int, stderr: int,
              env: dict[str, str] | None = None, cwd: str | None = None) -> ForkedProcess:
        """Fork ``pinfold ARGV`` with these descriptors as its stdio (the caller keeps its own)."""
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(self.path)
            request = {"argv": argv, "argv0": PYTHON,
                       "env": dict(os.environ if env is None else env), "cwd": cwd or os.getcwd()}
            socket.send_fds(conn, [json.dumps(request).encode() + b"\n"], [stdin, stdout, stderr])
            pending = bytearray()
            reply, _ = _recv_line(conn, pending=pending)
        except BaseException:
            conn.close()
            raise
        return ForkedProcess(conn, int(reply["pid"]), [PYTHON, "-m", "pinfold.daemon.cli", *argv],
                             pending)

    def close(self) -> None:
        if self._proc.poll() is None:
            assert self._proc.stdin is not None
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        self._log.close()
        for name in ("fork.sock", "server.log"):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self._dir, name))
        with contextlib.suppress(OSError):
            os.rmdir(self._dir)


def run(argv: list[str], *, input: bytes | None = None, timeout: float | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    """``subprocess.run(["pinfold", *argv], input=input, capture_output=True, timeout=timeout)``
    with the child forked from the server: stdio are pipes, stdin at EOF after ``input``.

    Raises:
        subprocess.TimeoutExpired: the command ran longer than ``timeout`` seconds (it is killed).
    """
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        proc = ForkServer.get().spawn(argv, stdin=in_r, stdout=out_w, stderr=err_w, env=env)
    except BaseException:
        for fd in (in_w, out_r, err_r):
            os.close(fd)
        raise
    finally:
        for fd in (in_r, out_w, err_w):
            os.close(fd)
    pending = memoryview(input or b"")
    chunks: dict[int, list[bytes]] = {out_r: [], err_r: []}
    deadline = None if timeout is None else time.monotonic() + timeout
    writers = [in_w] if pending else []
    if not pending:
        os.close(in_w)
    readers = [out_r, err_r]
    try:
        while readers or writers:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                proc.kill()
                proc.wait()
                raise subprocess.TimeoutExpired(proc.args, timeout or 0,
                                                b"".join(chunks[out_r]), b"".join(chunks[err_r]))
            readable, writable, _ = select.select(readers, writers, [], left)
            for fd in readable:
                data = os.read(fd, 1 << 16)
                if data:
                    chunks[fd].append(data)
                else:
                    readers.remove(fd)
            if writable:
                try:
                    sent = os.write(in_w, pending[:1 << 16])
                except BrokenPipeError:
                    sent = len(pending)
                pending = pending[sent:]
                if not pending:
                    writers.clear()
                    os.close(in_w)
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            code = proc.wait(left)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
    finally:
        for fd in (out_r, err_r, *writers):
            os.close(fd)
    return subprocess.CompletedProcess(proc.args, code, b"".join(chunks[out_r]),
                                       b"".join(chunks[err_r]))


def enabled() -> bool:
    """Whether test daemons and CLI runs fork from the server (``PINFOLD_TEST_FORK``, default 1)."""
    return os.environ.get("PINFOLD_TEST_FORK", "1") != "0"


if __name__ == "__main__":
    serve(sys.argv[1])
