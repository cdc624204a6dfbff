"""The tests' fork server (tests/support/forkserver.py) reads each reply line
once, even when a quick child's exit status arrives in the same read as its pid."""

from __future__ import annotations

import socket

import pytest

from tests.support import forkserver
from tests.support.forkserver import _recv_line


def test_pid_and_status_in_one_read_are_two_replies() -> None:
    a, b = socket.socketpair()
    with a, b:
        a.sendall(b'{"pid": 7}\n{"status": 0, "cpu_s": 0.01}\n')
        pending = bytearray()
        assert _recv_line(b, pending=pending)[0] == {"pid": 7}
        assert _recv_line(b, pending=pending)[0] == {"status": 0, "cpu_s": 0.01}
        assert pending == b""


def test_a_line_split_over_reads_is_joined() -> None:
    a, b = socket.socketpair()
    with a, b:
        a.sendall(b'{"pid": ')
        a.sendall(b'8}\n')
        assert _recv_line(b, pending=bytearray())[0] == {"pid": 8}


@pytest.mark.skipif(not forkserver.enabled(), reason="PINFOLD_TEST_FORK=0")
def test_quick_commands_all_report_their_exit_status() -> None:
    for _ in range(20):
        proc = forkserver.run(["--help"], timeout=60)
        assert proc.returncode == 0
        assert b"usage" in proc.stdout.lower()
