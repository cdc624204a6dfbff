"""`cat` writing straight to a file descriptor the client passes (SCM_RIGHTS)."""

from __future__ import annotations

import array
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pinfold.daemon.rpc.connection import RpcConnection, RpcError
from tests.support.daemon import DaemonProcess


# One daemon for the module (``daemon``, tests/conftest.py): each test adds its own
# content, and the hostile descriptor tests check that it keeps serving the tests after them.
pytestmark = pytest.mark.shared_daemon


def test_cat_to_file_and_pipe(daemon: DaemonProcess, tmp_path: Path) -> None:
    data = random.Random(5).randbytes(3 * 1024 * 1024 + 17)
    with daemon.client() as c:
        cid = c.add(data)
        out = tmp_path / "out"
        with open(out, "wb") as f:
            res = c.cat_to_fd(cid, f.fileno())
        assert res["bytes"] == len(data) and out.read_bytes() == data
        with open(out, "wb") as f:
            c.cat_to_fd(cid, f.fileno(), offset=1048570, length=20)
        assert out.read_bytes() == data[1048570:1048590]
        # The client can still use its connection afterwards.
        assert c.id()["peer_id"]


def test_cli_cat_into_a_pipe_closed_early(daemon: DaemonProcess) -> None:
    data = random.Random(6).randbytes(8 * 1024 * 1024)
    with daemon.client() as c:
        cid = c.add(data)
    cmd = [sys.executable, "-m", "pinfold.daemon.cli", "--home", str(daemon.home), "cat", cid]
    cat = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert cat.stdout is not None
    first = cat.stdout.read(100)
    cat.stdout.close()  # like `pinfold cat CID | head -c 100`
    rc = cat.wait(timeout=60)
    assert cat.stderr is not None
    err = cat.stderr.read()
    cat.stderr.close()
    assert rc == 0, err
    assert first == data[:100]
    with daemon.client() as c:  # the daemon is fine
        assert b"".join(c.cat(cid)) == data


def test_to_fd_without_a_descriptor_is_an_error(daemon: DaemonProcess) -> None:
    with daemon.client() as c:
        cid = c.add(b"x" * 100)
        with pytest.raises(RpcError) as info:
            c.call("cat", {"cid": cid, "to_fd": True})
        assert info.value.code == "invalid_argument"
        assert "no file descriptor" in str(info.value)


def test_too_many_unused_descriptors_close_the_connection(daemon: DaemonProcess) -> None:
    sock_path = daemon.home / "rpc.sock"
    conn = RpcConnection(sock_path)
    try:
        r, w = os.pipe()
        try:
            with pytest.raises(RpcError):
                for _ in range(10):  # each id call carries an unused descriptor
                    conn.call("id", pass_fd=w)
        finally:
            os.close(r)
            os.close(w)
    finally:
        conn.close()
    with daemon.client() as c:
        assert c.id()["peer_id"]


def test_descriptors_sent_with_bulk_data_do_not_leak(daemon: DaemonProcess) -> None:
    """A raw client that attaches a descriptor to arbitrary bytes gets a protocol
    error, and the daemon keeps serving."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(daemon.home / "rpc.sock"))
    r, w = os.pipe()
    try:
        s.sendmsg([b"\x00\x00\x00\x05garbage"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                                  array.array("i", [w]))])
        s.settimeout(10)
        while s.recv(65536):
            pass
    finally:
        s.close()
        os.close(r)
        os.close(w)
    with daemon.client() as c:
        assert c.id()["peer_id"]
