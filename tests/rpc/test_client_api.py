"""The public Python client (``from pinfold import Client``) against a real daemon process."""

from __future__ import annotations

import random
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from pinfold import Client, DaemonNotRunning, RpcError
from tests.support.daemon import DaemonProcess

REPO = Path(__file__).resolve().parents[2]


# The tests share one daemon (``daemon``, tests/conftest.py); each adds its own content.
pytestmark = pytest.mark.shared_daemon


def _rand(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def test_client_stays_usable_after_any_error_a_call_raises(daemon: DaemonProcess) -> None:
    with Client(home=daemon.home) as c:
        cid = c.add(b"still here\n")
        with pytest.raises(TypeError, match="upload chunks must be bytes"):
            c.add_stream(["text, not bytes"])
        assert c.id()["peer_id"]
        with pytest.raises(TypeError):
            c.pin(cid, name=object())  # msgpack cannot carry it
        assert b"".join(c.cat(cid)) == b"still here\n"
        with pytest.raises(RpcError) as info:
            list(c.cat("not-a-cid"))
        assert info.value.code == "invalid_cid"
        assert c.block_stat(cid)["size"] == 11

        def interrupted():
            yield b"x" * 1000
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            c.add_stream(interrupted())
        assert c.add(b"after an interrupt") and c.id()["peer_id"]


def test_add_refuses_unknown_keyword_arguments_naming_them(daemon: DaemonProcess) -> None:
    with Client(home=daemon.home) as c:
        for method in (c.add, c.add_info):
            with pytest.raises(TypeError, match=r"'chunk_sise', 'colour'"):
                method(b"data", chunk_sise=1024, colour="red")
        with pytest.raises(TypeError, match="'recurse'"):
            c.add_stream([b"data"], recurse=True)
        with pytest.raises(TypeError, match="'recurse'"):
            c.add_dir(REPO / "config", recurse=True)
        # Known options still reach the daemon.
        assert c.add(b"data", cid_version=0).startswith("Qm")


def test_add_progress_callback_counts_every_byte(daemon: DaemonProcess, tmp_path: Path) -> None:
    data = _rand(3 * 1024 * 1024 + 17)
    f = tmp_path / "blob.bin"
    f.write_bytes(data)
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.bin").write_bytes(data[:5000])
    (tree / "sub" / "b.bin").write_bytes(data[:70000])
    with Client(home=daemon.home) as c:
        for source, size in ((data, len(data)), (f, len(data)), (str(f), len(data)),
                             (tree, 75000)):
            seen: list[int] = []
            assert c.add(source, progress=seen.append)
            assert sum(seen) == size, source
        with open(f, "rb") as fh:
            seen = []
            c.add(fh, progress=seen.append)
            assert sum(seen) == len(data)


def test_from_pinfold_import_client_is_the_public_entry_point(tmp_path: Path) -> None:
    # Run outside the repository, so the installed package is what is imported.
    code = ("from pinfold import Client, RpcError, DaemonNotRunning, ConfigError\n"
            "import pinfold.client, pinfold.daemon.p2p.bitswap, pinfold.replication\n"
            "import pinfold.blockstore, pinfold.config\n"
            "assert pinfold.client.Client is Client\n"
            "assert issubclass(DaemonNotRunning, RpcError)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         timeout=60, check=False)
    assert out.returncode == 0, out.stderr.decode()
    with pytest.raises(DaemonNotRunning), Client(home=tmp_path / "nowhere") as c:
        c.id()


def test_wheel_lists_every_package_directory() -> None:
    """A normal (non-editable) install holds every package folder under pinfold/."""
    from setuptools import find_packages

    include = tomllib.loads((REPO / "pyproject.toml").read_text())[
        "tool"]["setuptools"]["packages"]["find"]["include"]
    listed = set(find_packages(str(REPO), include=include))
    found = {".".join(init.parent.relative_to(REPO).parts)
             for init in (REPO / "pinfold").rglob("__init__.py")
             if "__pycache__" not in init.parts}
    assert found <= listed, f"packages a wheel would miss: {sorted(found - listed)}"
    assert {"pinfold", "pinfold.daemon.p2p.bitswap", "pinfold.daemon.rpc"} <= listed
