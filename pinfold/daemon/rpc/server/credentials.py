"""Who is at the other end of a Unix socket (``SO_PEERCRED``,
``SO_PEERGROUPS``) and group lookup for ``rpc.allowed_group``.

Imports the standard library and the config errors."""

from __future__ import annotations

import errno
import grp
import socket
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import trio

_SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)
_UCRED = struct.Struct("3i")


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerCredentials:
    """Who is at the other end of a Unix socket (as the kernel saw it at ``connect``).

    Attributes:
        pid: the peer's process ID.
        uid: its effective user ID.
        gid: its effective group ID.
        groups: ``gid`` plus its supplementary group IDs.
    """

    pid: int
    uid: int
    gid: int
    groups: frozenset[int]


def peer_credentials(sock: socket.socket | trio.socket.SocketType) -> PeerCredentials:
    """The credentials of a connected Unix-socket peer (``SO_PEERCRED``, ``SO_PEERGROUPS``).

    Supplementary groups come from ``SO_PEERGROUPS``; on kernels without it,
    from ``/proc/<pid>/status`` (the peer's groups now, not at connect time).

    Raises:
        OSError: the socket has no peer credentials (not a connected Unix socket).
    """
    pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                  _UCRED.size))
    groups = {gid}
    size = 64 * 4
    while True:
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, _SO_PEERGROUPS, size)
            groups.update(struct.unpack(f"{len(raw) // 4}I", raw[: len(raw) // 4 * 4]))
            break
        except OSError as exc:
            if exc.errno == errno.ERANGE and size < 65536 * 4:
                size *= 4
                continue
            groups.update(_proc_groups(pid))
            break
    return PeerCredentials(pid=pid, uid=uid, gid=gid, groups=frozenset(groups))


def _proc_groups(pid: int) -> set[int]:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return {int(g) for g in line.split()[1:]}
    except OSError:
        pass
    return set()


def resolve_group(name: str) -> int | None:
    """The gid of ``rpc.allowed_group`` (a group name or a numeric gid); None for "".

    Raises:
        ConfigError: no such group.
    """
    from pinfold.config import ConfigError

    name = name.strip()
    if not name:
        return None
    try:
        return int(name) if name.isdigit() else grp.getgrnam(name).gr_gid
    except KeyError:
        raise ConfigError("rpc.allowed_group", f"no such group {name!r}") from None

