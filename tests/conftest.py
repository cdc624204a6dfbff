"""Fixtures shared by every test folder (the helpers they use live in tests/support)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import DaemonProcess, running


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    """One running daemon (home under ``tmp_path``, name "a") for this test."""
    with running(tmp_path) as d:
        yield d
