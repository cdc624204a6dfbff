"""The identity key file: written without py-libp2p, read by it with the same peer ID."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID
from pinfold.daemon.p2p.identity import (
    IdentityError,
    create_identity,
    key_file_peer_id,
    load_identity,
    peer_id_of,
)

from tests.support.daemon import PYTHON


def test_created_key_loads_in_py_libp2p_with_the_returned_peer_id(tmp_path: Path) -> None:
    path = tmp_path / "identity.key"
    peer_id = create_identity(path)
    assert path.stat().st_mode & 0o777 == 0o600
    kp = load_identity(path)
    assert peer_id_of(kp).to_base58() == peer_id == key_file_peer_id(path)
    assert peer_id.startswith("12D3KooW")
    # The same bytes py-libp2p writes for this key.
    assert path.read_bytes() == kp.private_key.serialize()


def test_peer_id_of_a_py_libp2p_written_key_matches_libp2p(tmp_path: Path) -> None:
    for _ in range(5):
        kp = create_new_key_pair()
        path = tmp_path / "k"
        path.write_bytes(kp.private_key.serialize())
        os.chmod(path, 0o600)
        assert key_file_peer_id(path) == ID.from_pubkey(kp.public_key).to_base58()
        path.unlink()


def test_key_file_peer_id_refuses_an_open_mode_and_garbage(tmp_path: Path) -> None:
    path = tmp_path / "k"
    create_identity(path)
    os.chmod(path, 0o644)
    with pytest.raises(IdentityError, match="readable by others"):
        key_file_peer_id(path)
    os.chmod(path, 0o600)
    path.write_bytes(b"not a key")
    with pytest.raises(IdentityError, match="not a libp2p private key"):
        key_file_peer_id(path)
    with pytest.raises(IdentityError, match="run `pinfold init` first"):
        key_file_peer_id(tmp_path / "missing")


def test_init_does_not_import_libp2p(tmp_path: Path) -> None:
    code = ("import sys; from pinfold.daemon.cli.main import main; "
            f"rc = main(['--home', {str(tmp_path / 'h')!r}, 'init']); "
            "assert 'libp2p' not in sys.modules, 'libp2p imported'; sys.exit(rc)")
    res = subprocess.run([PYTHON, "-c", code], capture_output=True, timeout=60, check=False)
    assert res.returncode == 0, res.stderr.decode()
