"""Security campaign (issue 7, item 4), the parts that need no cluster.

RPC socket access: the socket is 0660 in a 0700 home, and the daemon also
checks every connection's peer credentials (``SO_PEERCRED``/``SO_PEERGROUPS``)
against root, its own user and the socket's group (``rpc.allowed_group``).
The tests run as root and connect as ``nobody`` (uid 65534) from a child
process started under ``setpriv`` (util-linux).

libp2p: a dialer offering only ``/plaintext/2.0.0``, ``/secio/1.0.0`` or
``/tls/1.0.0`` is refused during multistream-select (a raw TCP client reads
the ``na``), and a real py-libp2p host configured with plaintext only cannot
connect; peers that send unsolicited blocks store nothing and are cut off;
floods of wants, streams and connections from one peer are bounded while a
good peer keeps fetching.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.harness import DaemonProcess
from tests.reliability.campaign import configured, record

NOBODY = 65534

CONNECT_AS = r"""
import json, sys
from pinfold.daemon.rpcclient import RpcConnection, RpcError
try:
    with RpcConnection(sys.argv[1]) as conn:
        out = {"ok": True, "peer_id": conn.call("id", {})["peer_id"]}
except RpcError as exc:
    out = {"ok": False, "code": exc.code, "message": str(exc)}
print(json.dumps(out))
"""


def connect_as(socket_path: Path, uid: int, gid: int, groups: list[int]) -> dict[str, Any]:
    """Connect to the daemon's socket from a process of another user; its verdict as a dict."""
    switch = ["setpriv", f"--reuid={uid}", f"--regid={gid}",
              f"--groups={','.join(map(str, groups))}" if groups else "--clear-groups"]
    proc = subprocess.run([*switch, sys.executable, "-c", CONNECT_AS, str(socket_path)],
                          check=False, capture_output=True, timeout=60, cwd="/",
                          env={**os.environ, "HOME": "/"})
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout)


needs_root = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                                reason="switching users needs root and setpriv")


@pytest.fixture
def open_dir(tmp_path: Path) -> Path:
    """A directory other users may traverse (the home itself is 0700)."""
    d = Path("/tmp") / f"pinfold-sec-{os.getpid()}-{tmp_path.name[-12:]}"
    d.mkdir(mode=0o755)
    os.chmod(d, 0o755)
    yield d
    for p in d.iterdir():
        p.unlink()
    d.rmdir()


@needs_root
def test_rpc_socket_refuses_other_users(tmp_path: Path, open_dir: Path) -> None:
    refused: dict[str, int] = {}
    sock = open_dir / "rpc.sock"
    d = configured(DaemonProcess(tmp_path, "sec"), rpc={"socket": str(sock),
                                                        "allowed_group": "4242"})
    with d:
        st = os.stat(sock)
        assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == 4242
        # root and the daemon's own user
        with d.client() as c:
            assert c.id()["peer_id"]
        # a member of the allowed group
        member = connect_as(sock, NOBODY, NOBODY, [4242])
        assert member["ok"], member
        # anyone else: the file mode stops it (EACCES) ...
        other = connect_as(sock, NOBODY, NOBODY, [])
        assert other == {"ok": False, "code": "permission_denied",
                         "message": other["message"]} and "0660" in other["message"], other
        refused["file mode 0660"] = 1
        # ... and if someone widens the mode by hand, the credential check still does
        os.chmod(sock, 0o666)
        other = connect_as(sock, NOBODY, NOBODY, [])
        assert not other["ok"] and other["code"] == "permission_denied", other
        assert "is not allowed to use this daemon" in other["message"], other
        refused["peer credentials (SO_PEERCRED)"] = 1
        # the daemon serves on
        with d.client() as c:
            assert c.id()["peer_id"]
        assert "RPC connection refused: user 65534" in d.log()
    record("security", "RPC socket", refused=refused, allowed=["root", "member of group 4242"])


@needs_root
def test_default_home_socket_is_closed_to_other_users(tmp_path: Path) -> None:
    with DaemonProcess(tmp_path, "home") as d:
        sock = d.home / "rpc.sock"
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o660
        assert stat.S_IMODE(os.stat(d.home).st_mode) == 0o700
        res = connect_as(sock, NOBODY, NOBODY, [])
        assert not res["ok"] and res["code"] == "permission_denied", res


def test_unknown_allowed_group_is_a_clear_start_error(tmp_path: Path) -> None:
    from tests.harness import run_cli

    d = configured(DaemonProcess(tmp_path, "badgroup"),
                   rpc={"allowed_group": "no-such-group-pinfold"})
    proc = run_cli(d.home, "daemon", check=False, timeout=60)
    err = proc.stderr.decode().strip()
    assert proc.returncode != 0
    assert err.splitlines() == [err] and "rpc.allowed_group" in err and "no such group" in err


def test_peer_credentials_of_a_socket_pair() -> None:
    from pinfold.daemon.rpcserver import peer_credentials

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        creds = peer_credentials(a)
    assert creds.pid == os.getpid() and creds.uid == os.geteuid()
    assert os.getegid() in creds.groups
