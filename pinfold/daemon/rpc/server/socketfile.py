"""The socket file: a lock beside it (one daemon a path), clearing a stale
socket, binding with its mode and group, and unlinking it only if ours.

Imports the standard library."""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import stat
from pathlib import Path

log = logging.getLogger("pinfold.daemon.rpc")



class RpcServerError(Exception):
    """The server cannot start on its socket path.

    Attributes:
        code: ``already_running``, ``socket_path_invalid`` or ``socket_bind_failed``.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code



def _lock(path: Path, mode: int) -> int:
    lock_path = f"{path}.lock"
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, mode)
    except OSError as exc:
        raise RpcServerError("socket_bind_failed", f"cannot open {lock_path}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RpcServerError("already_running",
                             f"another daemon is already running on {path} (it holds {lock_path})"
                             ) from None
    return fd


def _clear_stale(path: Path) -> None:
    """Remove a stale socket file at ``path``; refuse if a server answers on it."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise RpcServerError("socket_path_invalid",
                             f"refusing to replace {path}: it exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(os.fspath(path))
    except ConnectionRefusedError:
        log.warning("replacing stale RPC socket %s (nothing listens on it)", path)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return
    except FileNotFoundError:
        return
    except (TimeoutError, BlockingIOError):
        pass  # a listener exists but its backlog is full: it is running
    except OSError as exc:
        raise RpcServerError("socket_bind_failed",
                             f"cannot probe existing socket {path}: {exc.strerror}") from exc
    finally:
        probe.close()
    raise RpcServerError("already_running", f"another daemon is already running on {path}")


def _bind(path: Path, mode: int, group: int | None = None) -> socket.socket:
    raw = os.fsencode(path)
    if len(raw) > 107:
        raise RpcServerError("socket_path_invalid",
                             f"socket path is {len(raw)} bytes, over the 107-byte AF_UNIX "
                             f"limit: {path}")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # bind() creates the file as 0o777 & ~umask: narrow the umask around it so the
        # socket never exists with wider permissions than ``mode``.
        old_umask = os.umask(0o777 & ~mode)
        try:
            sock.bind(raw)
        finally:
            os.umask(old_umask)
        if group is not None and os.stat(path).st_gid != group:
            os.chown(path, -1, group)
        os.chmod(path, mode)
        sock.listen(socket.SOMAXCONN)  # a burst of clients beyond 128 must not get EAGAIN
    except OSError as exc:
        sock.close()
        raise RpcServerError("socket_bind_failed",
                             f"cannot listen on {path}: {exc.strerror or exc}") from exc
    return sock


def _unlink_if_ours(path: Path, identity: os.stat_result) -> None:
    try:
        st = os.lstat(path)
        if (st.st_dev, st.st_ino) == (identity.st_dev, identity.st_ino):
            os.unlink(path)
    except FileNotFoundError:
        pass
