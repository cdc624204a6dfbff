"""A home that lacks one of its files: the daemon names it, and `pinfold init` completes it."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support.daemon import PYTHON, DaemonProcess, cli_json, run_cli


def _daemon_refusal(home: Path) -> subprocess.CompletedProcess[bytes]:
    """``pinfold daemon`` on ``home``, expected to exit at once."""
    return subprocess.run([PYTHON, "-m", "pinfold.daemon.cli", "--home", str(home), "daemon"],
                          check=False, capture_output=True, timeout=60)


def test_home_without_identity_key_says_so_and_init_adds_the_key_keeping_config(
        tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path, "h")
    d.init()
    config = d.home / "config.toml"
    config.write_text(config.read_text() + "\n# the operator's own notes\n")
    kept = config.read_bytes()
    (d.home / "identity.key").unlink()

    res = _daemon_refusal(d.home)
    err = res.stderr.decode()
    assert res.returncode == 1, err
    assert len(err.strip().splitlines()) == 1, err
    assert "identity.key is missing" in err and f"pinfold --home {d.home} init" in err, err
    assert "Traceback" not in err

    out = cli_json(d.home, "init")
    assert out["created"] == ["identity.key"]
    assert config.read_bytes() == kept
    assert (d.home / "identity.key").stat().st_mode & 0o777 == 0o600
    # Options would be ignored for a config that is kept: refused, not dropped.
    res = run_cli(d.home, "init", "--cluster", "x", check=False)
    assert res.returncode != 0 and b"already initialised" in res.stderr

    with d, d.client() as c:
        assert c.id()["peer_id"] == out["peer_id"]


def test_home_without_config_says_so_and_init_writes_it_keeping_the_key(
        tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path, "h")
    d.init()
    key = (d.home / "identity.key").read_bytes()
    (d.home / "config.toml").unlink()

    res = _daemon_refusal(d.home)
    err = res.stderr.decode()
    assert res.returncode == 1, err
    assert "config.toml is missing" in err and f"pinfold --home {d.home} init" in err, err

    out = cli_json(d.home, "init", "--listen", "/ip4/127.0.0.1/tcp/0", "--metrics",
                   "127.0.0.1:0", "--gateway", "127.0.0.1:0")
    assert out["created"] == ["config.toml"]
    assert (d.home / "identity.key").read_bytes() == key
    with d, d.client() as c:
        assert c.id()["peer_id"] == out["peer_id"]
