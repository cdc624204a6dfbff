"""Fixtures shared by every test folder (the helpers they use live in tests/support)."""

from __future__ import annotations

import os
import resource
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import DaemonProcess, running
from tests.support.forkserver import ForkServer


def _cpu_s() -> float:
    """CPU seconds of this process, its reaped children and the fork server's children."""
    total = ForkServer.children_cpu_s
    if ForkServer._instance is not None and ForkServer._owner == os.getpid():
        total += ForkServer._instance.own_cpu_s()
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """With ``PINFOLD_TEST_CPU=FILE``, append ``CPU-SECONDS TEST-ID`` per test to FILE
    (setup, call and teardown, so a module's shared daemons count in its first and last test)."""
    path = os.environ.get("PINFOLD_TEST_CPU")
    before = _cpu_s() if path else 0.0
    yield
    if path:
        with open(path, "a") as f:
            f.write(f"{_cpu_s() - before:.3f} {item.nodeid}\n")


@pytest.fixture(scope="module")
def module_daemon(request: pytest.FixtureRequest,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """One running daemon for a module marked ``shared_daemon`` (``config=`` TOML merged
    into its config.toml)."""
    marker = request.node.get_closest_marker("shared_daemon")
    config = marker.kwargs.get("config", "") if marker is not None else ""
    with running(tmp_path_factory.mktemp("shared"), config=config) as d:
        yield d


@pytest.fixture
def daemon(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DaemonProcess]:
    """One running daemon (name "a"): this test's own (home under ``tmp_path``), or in a
    module marked ``pytestmark = pytest.mark.shared_daemon`` the module's (``module_daemon``),
    for tests that each add their own content and depend on nothing the others stored."""
    if request.node.get_closest_marker("shared_daemon") is not None:
        yield request.getfixturevalue("module_daemon")
        return
    with running(tmp_path) as d:
        yield d
