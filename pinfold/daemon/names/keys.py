"""Signing keys for names: the node's identity key and named keys in the home.

``pinfold key gen NAME`` writes ``HOME/keys/NAME.key``: the raw 32-byte
Ed25519 seed, mode 0600, never overwritten. The key called ``self`` is the
node's identity key (``identity.key``), so by default a name is published by
the node's peer ID. Keys are shown in peer-ID form (``12D3KooW...``).
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from libp2p.crypto.keys import KeyPair

from pinfold.names.records import KeySigner, NameError_, key_text

__all__ = ["SELF", "KeyError_", "generate_key", "key_dir", "list_keys", "load_signer"]

#: The name of the node's own identity key.
SELF = "self"
_KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class KeyError_(NameError_):  # noqa: N801 - ``KeyError`` is a builtin
    """A named key is missing, exists already, is unreadable or too open."""

    code = "key_error"


def key_dir(home_root: Path) -> Path:
    """Where named keys live: ``HOME/keys``."""
    return home_root / "keys"


def _check_key_name(name: str) -> str:
    if name == SELF or not _KEY_NAME.fullmatch(name):
        raise KeyError_(f"invalid key name {name!r}: letters, digits, '.', '_', '-' "
                        f"(and not {SELF!r}, the node's own key)")
    return name


def generate_key(home_root: Path, name: str) -> str:
    """Create the named key; returns its ID. Raises ``KeyError_`` if it exists."""
    path = key_dir(home_root) / f"{_check_key_name(name)}.key"
    path.parent.mkdir(mode=0o700, exist_ok=True)
    signer = KeySigner.generate()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyError_(f"key {name!r} exists already ({path})") from None
    with os.fdopen(fd, "wb") as f:
        f.write(signer.seed)
        f.flush()
        os.fsync(f.fileno())
    return key_text(signer.public_key)


def load_signer(home_root: Path, name: str, identity: KeyPair) -> KeySigner:
    """The signer of key ``name`` (``self``: the node's identity).

    Raises:
        KeyError_: no such key, a group/other-readable file, or bad contents.
    """
    if name == SELF:
        return KeySigner(identity.private_key.to_bytes())
    path = key_dir(home_root) / f"{_check_key_name(name)}.key"
    try:
        st = path.stat()
        seed = path.read_bytes()
    except FileNotFoundError:
        raise KeyError_(f"no key {name!r}: create it with `pinfold key gen {name}`") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyError_(f"key file {path} is readable by others; chmod 600 it")
    if len(seed) != 32:
        raise KeyError_(f"key file {path} is not a 32-byte Ed25519 seed")
    return KeySigner(seed)


def list_keys(home_root: Path, identity: KeyPair | None) -> list[tuple[str, str]]:
    """``(name, key ID)`` of ``self`` (when ``identity`` is given) and every named key."""
    out = []
    if identity is not None:
        out.append((SELF, key_text(identity.public_key.to_bytes())))
    d = key_dir(home_root)
    for p in sorted(d.glob("*.key")) if d.is_dir() else []:
        try:
            out.append((p.stem, key_text(load_signer(home_root, p.stem, identity).public_key)))
        except KeyError_:
            continue
    return out
