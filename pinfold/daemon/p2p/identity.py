"""The node's libp2p identity: an Ed25519 key pair.

File format: the libp2p ``PrivateKey`` protobuf (libp2p peer-id spec,
"Keys": ``KeyType`` Ed25519 = 1, ``Data`` the key bytes), as py-libp2p's
``serialize()`` writes it, in a file of mode 0600. The peer ID is the identity
multihash of the public key (peer-id spec, "Peer Ids"), printed base58btc
(``12D3KooW...``).

``create_identity`` and ``key_file_peer_id`` use PyNaCl directly, not
py-libp2p, whose package import takes about a second: ``pinfold init`` needs
neither a host nor a libp2p key object. ``load_identity`` (the daemon) returns
py-libp2p's ``KeyPair`` and imports it then.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

import base58
from nacl.bindings import crypto_core_ed25519_is_valid_point
from nacl.signing import SigningKey

if TYPE_CHECKING:
    from libp2p.crypto.keys import KeyPair
    from libp2p.peer.id import ID

#: libp2p ``KeyType`` of Ed25519 (peer-id spec, "Keys").
_ED25519 = 1


class IdentityError(Exception):
    """The identity key file is missing, unreadable, too open, or not a libp2p private key."""

    code = "identity_error"


def _key_protobuf(data: bytes) -> bytes:
    """The libp2p ``PublicKey``/``PrivateKey`` protobuf of an Ed25519 key: field 1
    ``Type`` = 1, field 2 ``Data`` (at most 127 bytes, so one-byte lengths)."""
    return bytes([0x08, _ED25519, 0x12, len(data)]) + data


def _new_signing_key() -> SigningKey:
    """A fresh Ed25519 key whose public key is a valid curve point (as py-libp2p checks)."""
    for _ in range(100):
        key = SigningKey.generate()
        if crypto_core_ed25519_is_valid_point(bytes(key.verify_key)):
            return key
    raise RuntimeError("failed to generate a valid Ed25519 key after 100 attempts")


def create_identity(path: Path) -> str:
    """Create a new Ed25519 key pair and write it to ``path`` with mode 0600 (never wider).

    The file is what py-libp2p's ``Ed25519PrivateKey.serialize()`` writes (the
    32-byte seed as ``Data``). Returns the new peer ID (base58btc).
    """
    key = _new_signing_key()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(_key_protobuf(bytes(key)))
        f.flush()
        os.fsync(f.fileno())
    return _peer_id(bytes(key.verify_key))


def _peer_id(public_key: bytes) -> str:
    """The base58btc peer ID of an Ed25519 public key: the identity multihash
    (code 0x00, length) of its ``PublicKey`` protobuf."""
    proto = _key_protobuf(public_key)
    return base58.b58encode(bytes([0x00, len(proto)]) + proto).decode()


def _read_key_file(path: Path) -> bytes:
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
    return data


def key_file_peer_id(path: Path) -> str:
    """The peer ID (base58btc) of the key at ``path``, without importing py-libp2p for
    an Ed25519 key in py-libp2p's layout (32-byte seed); other keys go through
    ``load_identity``.

    Raises:
        IdentityError: as ``load_identity``.
    """
    data = _read_key_file(path)
    if len(data) == 36 and data[:4] == bytes([0x08, _ED25519, 0x12, 32]):
        return _peer_id(bytes(SigningKey(data[4:]).verify_key))
    return peer_id_of(load_identity(path)).to_base58()


def load_identity(path: Path) -> KeyPair:
    """Read the key pair at ``path``.

    Raises:
        IdentityError: missing file, group/other-readable file, or bad contents.
    """
    from libp2p.crypto.keys import KeyPair
    from libp2p.crypto.serialization import deserialize_private_key

    data = _read_key_file(path)
    try:
        private = deserialize_private_key(data)
    except Exception as exc:
        raise IdentityError(f"identity key {path} is not a libp2p private key: {exc}") from exc
    return KeyPair(private, private.get_public_key())


def peer_id_of(kp: KeyPair) -> ID:
    """The peer ID of ``kp``."""
    from libp2p.peer.id import ID

    return ID.from_pubkey(kp.public_key)
