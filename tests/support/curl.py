"""``curl`` as the gateway tests' HTTP client: a real, independent HTTP
implementation run as a subprocess, its response split into status, headers
and body.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

import pytest


@dataclass(frozen=True)
class Reply:
    """One HTTP response as curl received it (headers lower-case; the last value wins)."""

    status: int
    headers: dict[str, str]
    body: bytes

    def header(self, name: str) -> str:
        return self.headers.get(name.lower(), "")


def need_curl() -> str:
    """The curl binary, or skip the test with the reason."""
    path = shutil.which("curl")
    if path is None:
        pytest.skip("curl is not installed (apt-get install curl)")
    return path


def curl(url: str, *args: str, timeout: float = 60) -> Reply:
    """``curl -sS -i [ARGS] URL``: no redirects followed. ``-I`` in ``args`` sends HEAD."""
    proc = subprocess.run([need_curl(), "-sS", "-i", "--max-time", str(timeout), *args, url],
                          capture_output=True, timeout=timeout + 10)
    if proc.returncode != 0:
        raise AssertionError(f"curl {url} exited {proc.returncode}: {proc.stderr.decode()}")
    raw = proc.stdout
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep, f"no header end in curl output: {raw[:200]!r}"
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Reply(status, headers, body)
