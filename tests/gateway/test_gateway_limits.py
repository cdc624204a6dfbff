"""The gateway's limits on a real daemon: a stalled reader holds socket buffers,
not the file, and is cut after ``gateway.idle_timeout_s``; requests beyond
``gateway.max_requests`` get 503; an empty ``gateway.listen`` turns the
gateway off; a busy port stops the daemon with an error naming the key.
"""

from __future__ import annotations

import random
import socket
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.support.curl import curl, need_curl
from tests.support.daemon import PYTHON, DaemonProcess, cli_json, running
from tests.support.wait import wait_until

MiB = 1024 * 1024
FILE_BYTES = 48 * MiB


def test_stalled_reader_holds_socket_buffers_not_the_file_and_blocks_others_503(
        tmp_path: Path) -> None:
    need_curl()
    src = tmp_path / "big.bin"
    src.write_bytes(random.Random(1).randbytes(FILE_BYTES))
    config = "[gateway]\nmax_requests = 1\nidle_timeout_s = 3\n"
    with running(tmp_path, "a", config=config) as a:
        cid = cli_json(a.home, "add", str(src))["cid"]
        with a.client() as c:
            url = c.id()["gateway"]
        parts = urlsplit(url)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.connect((parts.hostname, parts.port))
        sock.sendall(f"GET /ipfs/{cid} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        try:
            # While the stalled request holds the only slot, another gets 503 at once.
            busy = wait_until(lambda: (r := curl(f"{url}/ipfs/{cid}", "-I")).status == 503
                              and r, timeout_s=30, what="a 503 while the slot is held")
            assert busy.header("retry-after") == "1"
            assert b"gateway.max_requests" in busy.body or busy.body == b""
            # The server stops producing when the socket is full and, after
            # idle_timeout_s without progress, gives the slot up and closes ...
            wait_until(lambda: curl(f"{url}/ipfs/{cid}", "-I").status == 200, timeout_s=60,
                       what="the stalled request to be cut and its slot freed")
            # ... so what the client can still read is what the socket buffers
            # held, far less than the file.
            sock.settimeout(30)
            received = 0
            try:
                while chunk := sock.recv(1 << 20):
                    received += len(chunk)
            except ConnectionResetError:
                pass
        finally:
            sock.close()
        assert 0 < received < FILE_BYTES // 2, received
        assert "Traceback" not in a.log()


def test_empty_listen_turns_the_gateway_off(tmp_path: Path) -> None:
    with running(tmp_path, "a", config='[gateway]\nlisten = ""\n') as a:
        with a.client() as c:
            assert c.id()["gateway"] == ""
    assert "gateway off" in a.log()


def test_a_busy_gateway_port_stops_the_daemon_naming_the_key(tmp_path: Path) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        d = DaemonProcess(tmp_path, "a", config=f'[gateway]\nlisten = "127.0.0.1:{port}"\n')
        d.init()
        proc = subprocess.run([PYTHON, "-m", "pinfold.daemon.cli", "--home", str(d.home),
                               "daemon"], capture_output=True, timeout=120)
    finally:
        holder.close()
    err = proc.stderr.decode()
    assert proc.returncode != 0
    assert f"gateway.listen: 127.0.0.1:{port}" in err and "Traceback" not in err, err


@pytest.mark.parametrize(("listen", "ok"), [("0.0.0.0:8080", False), ("[::]:8080", False),
                                             ("192.168.1.2:80", False), ("[::1]:8080", True),
                                             ("localhost:0", True), ("127.0.0.2:1", True)])
def test_non_loopback_listen_needs_allow_public(listen: str, ok: bool) -> None:
    from pinfold.config import ConfigError, from_mapping

    if ok:
        assert from_mapping({"gateway": {"listen": listen}}).gateway.listen == listen
        return
    with pytest.raises(ConfigError, match="gateway.listen: is not a loopback address"):
        from_mapping({"gateway": {"listen": listen}})
    cfg = from_mapping({"gateway": {"listen": listen, "allow_public": True}})
    assert cfg.gateway.allow_public
