"""The node's libp2p identity: an Ed25519 key pair.

File format: the libp2p ``PrivateKey`` protobuf (libp2p peer-id spec,
"Keys": ``KeyType`` Ed25519 = 1, ``Data`` the key bytes), as py-libp2p's
``serialize()`` writes it, in a file of mode 0600. The peer ID is the identity
multihash of the public key (peer-id spec, "Peer Ids"), printed base58btc
(``12D3KooW...``).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.serialization import deserialize_private_key
from libp2p.peer.id import ID


class IdentityError(Exception):
    """The identity key file is missing, unreadable, too open, or not a libp2p private key."""

    code = "identity_error"


def create_identity(path: Path) -> KeyPair:
    """Create a new Ed25519 key pair and write it to ``path`` with mode 0600 (never wider)."""
    kp = create_new_key_pair()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(kp.private_key.serialize())
        f.flush()
        os.fsync(f.fileno())
    return kp


def load_identity(path: Path) -> KeyPair:
    """Read the key pair at ``path``.

    Raises:
        IdentityError: missing file, group/other-readable file, or bad contents.
    """
    try:
        st = path.stat()
        data = path.read_bytes()
    except FileNotFoundError:
        raise IdentityError(f"no identity key at {path}: run `pinfold init` first") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise IdentityError(
            f"identity key {path} is readable by others (mode {stat.S_IMODE(st.st_mode):o}); "
            "chmod 600 it"
        )
    try:
        private = deserialize_private_key(data)
    except Exception as exc:
        raise IdentityError(f"identity key {path} is not a libp2p private key: {exc}") from exc
    return KeyPair(private, private.get_public_key())


def peer_id_of(kp: KeyPair) -> ID:
    """The peer ID of ``kp``."""
    return ID.from_pubkey(kp.public_key)
