"""A store removed or replaced under a home, met by a real daemon.

A running daemon stops with an error naming the store instead of writing into
an unlinked file; a start on a home whose store is missing, or was replaced by
an empty one, is refused (``<home>/store.json`` remembers which store the home
used) until the store is restored or ``--allow-empty-store`` is given.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from pinfold.blockstore.lmdbstore import LmdbBlockStore
from pinfold.client import DaemonNotRunning, RpcError

from tests.support.daemon import PYTHON, DaemonProcess
from tests.support.wait import wait_until

MiB = 1024 * 1024


def _pins(d: DaemonProcess) -> list[str]:
    with d.client() as c:
        return [p["cid"] for p in c.pins()]


def _wait_exit(d: DaemonProcess) -> int:
    assert d.proc is not None
    return wait_until(lambda: d.proc.poll() is not None, timeout_s=30,
                    what=f"daemon {d.name} to stop") and d.proc.returncode


def _refused_start(d: DaemonProcess) -> str:
    """``pinfold daemon`` on ``d``'s home, which must exit 1 at once; its stderr."""
    res = subprocess.run([PYTHON, "-m", "pinfold.daemon.cli", "--home", str(d.home), "daemon"],
                         check=False, capture_output=True, timeout=60)
    err = res.stderr.decode()
    assert res.returncode == 1, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def _error_lines(d: DaemonProcess) -> list[str]:
    return [line for line in d.log().splitlines() if line.startswith("pinfold: error:")]


def test_store_removed_under_a_running_daemon_stops_it_with_an_error_naming_the_store(
        tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path, "rm")
    with d, d.client() as c:
        c.add_stream([b"kept before the removal"], pin=True)
        shutil.rmtree(d.home / "store")
        # A write after the removal is refused, never acknowledged and then lost.
        with pytest.raises((RpcError, DaemonNotRunning, OSError)) as info:
            c.add_stream([b"written after the removal"], pin=True)
        if isinstance(info.value, RpcError):
            assert info.value.code in ("store_gone", "connection_closed"), info.value
        assert _wait_exit(d) == 1, d.log()
    (line,) = _error_lines(d)
    assert f"the blockstore at {d.home / 'store'} was removed or replaced" in line
    assert "data.mdb is missing" in line and "--allow-empty-store" in line
    assert "Traceback" not in d.log()


def test_store_replaced_under_a_running_daemon_stops_it_and_the_restored_copy_starts(
        tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path, "mv")
    with d, d.client() as c:
        cid = c.add_stream([b"kept across the copy"], pin=True)["cid"]
        store = d.home / "store"
        copy = d.home / "store.copy"
        shutil.copytree(store, copy)
        shutil.rmtree(store)
        copy.rename(store)  # same name, other files
        assert _wait_exit(d) == 1, d.log()
    (line,) = _error_lines(d)
    assert "is another file than the one opened" in line, line
    # The copy is the same store (same store ID): it starts without a flag.
    with d:
        assert _pins(d) == [cid]


def test_start_on_a_home_whose_store_is_missing_is_refused_until_allowed(
        tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path, "gone")
    with d, d.client() as c:  # a fresh home's first start needs no flag
        c.add_stream([b"a pinned file"], pin=True)
    record = json.loads((d.home / "store.json").read_text())
    assert record["pins"] == 1 and record["blocks"] == 1
    shutil.rmtree(d.home / "store")

    err = _refused_start(d)
    assert f"the blockstore {d.home / 'store'} is missing" in err, err
    assert record["store_id"] in err and "1 pin" in err and str(d.home / "store.json") in err
    assert "Restore the store directory from a backup" in err
    assert f"pinfold --home {d.home} daemon --allow-empty-store" in err

    d.start(args=("--allow-empty-store",))
    try:
        assert _pins(d) == []
    finally:
        assert d.stop() == 0
    assert json.loads((d.home / "store.json").read_text())["store_id"] != record["store_id"]
    with d:  # the new store is the home's store now: no flag needed again
        assert _pins(d) == []


def test_start_on_a_home_whose_store_was_replaced_by_an_empty_one_is_refused(
        tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path, "empty")
    with d, d.client() as c:
        c.add_stream([b"a pinned file"], pin=True)
    shutil.rmtree(d.home / "store")
    LmdbBlockStore(d.home / "store", max_size_bytes=64 * MiB).close()

    err = _refused_start(d)
    assert f"the blockstore {d.home / 'store'} is empty and is not the store this home used" \
        in err, err
    assert "--allow-empty-store" in err
