"""Signed name records: their fields, canonical encoding, signature and key IDs
(DESIGN.md "Names").

A record is one immutable fact about a name, signed with an Ed25519 key:

- ``VersionRecord``: version N of NAME is the DAG at ``root`` (files, sizes,
  sha256 digests, message, metadata, parent version).
- ``TagRecord``: TAG of NAME now points at version N (a move).
- ``GrantRecord``: the key ``grantee`` may publish under NAME.
- ``RetireRecord``: version N was unpinned (``versions rm``); its record stays.

Every record carries the name, a Lamport clock (``lamport``: greater than that
of every record of the name its publisher had seen), the publisher's wall time
(``time_ms``, informational) and the publisher's raw 32-byte public key.

Encoding. The body is a DAG-CBOR map (canonical: sorted keys, shortest
integers), the signature covers ``SIGN_DOMAIN + cbor(body)``, and the record
block is ``cbor({"body": body, "sig": sig})``. The record's ID is the CIDv1
(dag-cbor, sha2-256) of that block, so a record is also an ordinary block.

Keys are written as libp2p peer IDs (``12D3KooW...``: the identity multihash
of the protobuf Ed25519 public key), so a node's key is its peer ID.

Pure: no I/O; ``cryptography`` verifies and signs.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import base58
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from pinfold.blockstore.cid import CID, DAG_CBOR, parse_cid
from pinfold.blockstore.dag import cbor_decode, cbor_encode

__all__ = [
    "MAX_RECORD_BYTES",
    "ClaimRecord",
    "SIGN_DOMAIN",
    "FileEntry",
    "GrantRecord",
    "KeySigner",
    "NameError_",
    "Record",
    "RecordError",
    "RetireRecord",
    "SignedRecord",
    "TagRecord",
    "VersionRecord",
    "check_name",
    "check_tag",
    "decode_record",
    "record_key",
    "key_from_text",
    "key_text",
    "sign_record",
]

#: Domain separation: a signature over a record can never pass for anything else.
SIGN_DOMAIN: Final = b"pinfold-name-record-v1\x00"
#: Largest encoded record (it travels inline in the pinset: 48 metadata chunks).
MAX_RECORD_BYTES: Final = 140 * 1024
_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}(/[A-Za-z0-9][A-Za-z0-9._-]{0,99}){0,3}")
_TAG_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9._-]{0,63}")
_CID_PREFIX: Final = bytes([1, DAG_CBOR, 0x12, 0x20])


class RecordError(ValueError):
    """A record is malformed, badly signed or too large; the message says which."""

    code = "invalid_record"


class NameError_(ValueError):  # noqa: N801 - ``NameError`` is a builtin
    """A bad name, tag, version or key given by the user; the message names it."""

    code = "invalid_name"


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid name (``org/model``: 1-4 segments of
    ``[A-Za-z0-9][A-Za-z0-9._-]*``, each <= 100 characters), else raise ``NameError_``."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise NameError_(f"invalid name {name!r}: use letters, digits, '.', '_', '-' in up to "
                         "4 '/'-separated parts (like org/model)")
    return name


def check_tag(tag: str) -> str:
    """Return ``tag`` if valid (a letter or ``_`` first, <= 64 characters; not all
    digits, which would read as a version number), else raise ``NameError_``."""
    if not isinstance(tag, str) or not _TAG_RE.fullmatch(tag):
        raise NameError_(f"invalid tag {tag!r}: start with a letter, then letters, digits, "
                         "'.', '_' or '-' (at most 64)")
    return tag


# ------------------------------------------------------------------- key IDs

_PB_ED25519: Final = b"\x08\x01\x12\x20"  # PublicKey{Type: Ed25519, Data: 32 bytes}


def key_text(key: bytes) -> str:
    """The peer-ID form (``12D3KooW...``) of a raw 32-byte Ed25519 public key."""
    return base58.b58encode(b"\x00\x24" + _PB_ED25519 + key).decode("ascii")


def key_from_text(text: str) -> bytes:
    """The raw public key of a peer-ID-form key. Raises ``NameError_`` naming ``text``."""
    try:
        raw = base58.b58decode(text.strip())
    except ValueError:
        raw = b""
    if len(raw) != 38 or raw[:2] != b"\x00\x24" or raw[2:6] != _PB_ED25519:
        raise NameError_(f"{text!r} is not an Ed25519 key ID (a peer ID like 12D3KooW...)")
    return raw[6:]


class KeySigner:
    """Signs records with an Ed25519 private key (raw 32-byte seed)."""

    def __init__(self, seed: bytes) -> None:
        self.seed = seed
        self._key = Ed25519PrivateKey.from_private_bytes(seed)
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        self.public_key: bytes = self._key.public_key().public_bytes(Encoding.Raw,
                                                                      PublicFormat.Raw)

    @classmethod
    def generate(cls) -> KeySigner:
        """A new random key."""
        from cryptography.hazmat.primitives.serialization import (
            Encoding,
            NoEncryption,
            PrivateFormat,
        )

        seed = Ed25519PrivateKey.generate().private_bytes(Encoding.Raw, PrivateFormat.Raw,
                                                          NoEncryption())
        return cls(seed)

    def sign(self, data: bytes) -> bytes:
        """The 64-byte signature of ``data``."""
        return self._key.sign(data)


# ------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True, kw_only=True)
class FileEntry:
    """One file of a version: ``path`` (``/``-separated, relative), ``size`` in
    bytes and ``sha256`` (64 lowercase hex digits, as hubs list them)."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True, slots=True, kw_only=True)
class _Common:
    name: str
    lamport: int
    time_ms: int
    key: bytes

    def _check(self) -> None:
        check_name(self.name)
        if type(self.lamport) is not int or not 1 <= self.lamport < 1 << 63:
            raise RecordError(f"lamport: must be an integer >= 1, got {self.lamport!r}")
        if type(self.time_ms) is not int or not 0 <= self.time_ms < 1 << 63:
            raise RecordError(f"time_ms: must be an integer >= 0, got {self.time_ms!r}")
        if type(self.key) is not bytes or len(self.key) != 32:
            raise RecordError("key: must be a 32-byte Ed25519 public key")


def _check_root(text: object) -> None:
    """Refuse a root that is not a sha2-256 CID's text (base32 CIDv1 of a raw,
    dag-pb or dag-cbor block, or base58 CIDv0): checked by hand, as
    multiformats' parser costs a millisecond a record."""
    try:
        if isinstance(text, str) and text.startswith("b") and len(text) == 59:
            raw = base64.b32decode(text[1:].upper() + "=" * (-(len(text) - 1) % 8))
            if raw[0] == 1 and raw[1] in (0x55, 0x70, 0x71) and raw[2:4] == b"\x12\x20" \
                    and len(raw) == 36:
                return
        elif isinstance(text, str) and text.startswith("Qm") and len(text) == 46:
            raw = base58.b58decode(text)
            if raw[:2] == b"\x12\x20" and len(raw) == 34:
                return
    except ValueError:
        pass
    raise RecordError(f"root: not a sha2-256 CID: {text!r}")


def _check_version(v: object) -> int:
    if type(v) is not int or not 1 <= v < 1 << 32:
        raise RecordError(f"version: must be an integer >= 1, got {v!r}")
    return v


@dataclass(frozen=True, slots=True, kw_only=True)
class VersionRecord(_Common):
    """Version ``version`` of ``name``: the DAG at ``root`` (a CID's text).

    ``parent`` is the version it was made from (0 for none), ``size`` the total
    file bytes, ``files`` each file's path, size and sha256, ``meta`` the
    user's ``--meta KEY=VALUE`` pairs (sorted).
    """

    version: int
    parent: int
    root: str
    size: int
    files: tuple[FileEntry, ...] = ()
    message: str = ""
    meta: tuple[tuple[str, str], ...] = ()
    kind: str = field(default="version", init=False)

    def __post_init__(self) -> None:
        self._check()
        _check_version(self.version)
        if type(self.parent) is not int or not 0 <= self.parent < self.version:
            raise RecordError(f"parent: must be 0 or an earlier version, got {self.parent!r}")
        _check_root(self.root)
        if type(self.size) is not int or self.size < 0:
            raise RecordError(f"size: must be an integer >= 0, got {self.size!r}")

    @property
    def root_cid(self) -> CID:
        """``root`` parsed."""
        return parse_cid(self.root)


@dataclass(frozen=True, slots=True, kw_only=True)
class TagRecord(_Common):
    """A move of ``tag`` of ``name`` to ``version``."""

    tag: str
    version: int
    kind: str = field(default="tag", init=False)

    def __post_init__(self) -> None:
        self._check()
        check_tag(self.tag)
        _check_version(self.version)


@dataclass(frozen=True, slots=True, kw_only=True)
class GrantRecord(_Common):
    """``grantee`` (a raw public key) may publish under ``name``."""

    grantee: bytes
    kind: str = field(default="grant", init=False)

    def __post_init__(self) -> None:
        self._check()
        if type(self.grantee) is not bytes or len(self.grantee) != 32:
            raise RecordError("grantee: must be a 32-byte Ed25519 public key")


@dataclass(frozen=True, slots=True, kw_only=True)
class RetireRecord(_Common):
    """Version ``version`` of ``name`` was unpinned; its record is kept."""

    version: int
    kind: str = field(default="retire", init=False)

    def __post_init__(self) -> None:
        self._check()
        _check_version(self.version)


@dataclass(frozen=True, slots=True, kw_only=True)
class ClaimRecord(_Common):
    """A cluster member (``key``, its node key) witnesses that ``name`` was
    created by ``creator``: the first creator it saw, never changed."""

    creator: bytes
    kind: str = field(default="claim", init=False)

    def __post_init__(self) -> None:
        self._check()
        if type(self.creator) is not bytes or len(self.creator) != 32:
            raise RecordError("creator: must be a 32-byte Ed25519 public key")


Record = VersionRecord | TagRecord | GrantRecord | RetireRecord | ClaimRecord


@dataclass(frozen=True, slots=True, kw_only=True)
class SignedRecord:
    """A record with its signature, block bytes and ID (``key``: the binary CIDv1,
    dag-cbor sha2-256, of the block; ``cid`` as a ``CID``).

    ``order`` is the total order used by every rule that picks one of several
    records: ``(lamport, signature)``.
    """

    record: Record
    sig: bytes
    block: bytes
    key: bytes

    @property
    def order(self) -> tuple[int, bytes]:
        return (self.record.lamport, self.sig)

    @property
    def cid(self) -> CID:
        return CID.decode(self.key)


def record_key(block: bytes) -> bytes:
    """The binary CIDv1 (dag-cbor, sha2-256) of a record block, built directly
    (``make_cid`` validates through multiformats, 50x slower)."""
    return _CID_PREFIX + hashlib.sha256(block).digest()


def _body(r: Record) -> dict[str, Any]:
    body: dict[str, Any] = {"kind": r.kind, "name": r.name, "lamport": r.lamport,
                            "time_ms": r.time_ms, "key": r.key}
    if isinstance(r, VersionRecord):
        body.update(version=r.version, parent=r.parent, root=r.root, size=r.size,
                    files=[[f.path, f.size, f.sha256] for f in r.files], message=r.message,
                    meta=dict(r.meta))
    elif isinstance(r, TagRecord):
        body.update(tag=r.tag, version=r.version)
    elif isinstance(r, GrantRecord):
        body["grantee"] = r.grantee
    elif isinstance(r, ClaimRecord):
        body["creator"] = r.creator
    else:
        body["version"] = r.version
    return body


def sign_record(record: Record, sign: Callable[[bytes], bytes]) -> SignedRecord:
    """Sign ``record`` with ``sign`` (an Ed25519 signer of ``record.key``).

    Raises:
        RecordError: the encoded record exceeds ``MAX_RECORD_BYTES`` (too many files).
    """
    encoded = cbor_encode(_body(record))
    sig = sign(SIGN_DOMAIN + encoded)
    block = _envelope(encoded, sig)
    if len(block) > MAX_RECORD_BYTES:
        raise RecordError(f"the record of {record.name} is {len(block)} bytes, over the limit "
                          f"of {MAX_RECORD_BYTES} (too many files in one version)")
    return SignedRecord(record=record, sig=sig, block=block, key=record_key(block))


_BODY_KEY: Final = cbor_encode("body")
_SIG_KEY: Final = cbor_encode("sig")


def _envelope(encoded_body: bytes, sig: bytes) -> bytes:
    """``cbor({"body": body, "sig": sig})`` from the body's encoding (DAG-CBOR
    sorts map keys by length first: "sig" before "body")."""
    return b"\xa2" + _SIG_KEY + cbor_encode(sig) + _BODY_KEY + encoded_body


def _fields(body: Mapping[str, Any], *keys: str) -> list[Any]:
    missing = [k for k in keys if k not in body]
    if missing:
        raise RecordError(f"record: missing field(s) {', '.join(missing)}")
    return [body[k] for k in keys]


def _record_from_body(body: Mapping[str, Any]) -> Record:
    kind, name, lamport, time_ms, key = _fields(body, "kind", "name", "lamport", "time_ms", "key")
    common = {"name": name, "lamport": lamport, "time_ms": time_ms, "key": key}
    try:
        if kind == "version":
            version, parent, root, size, files, message, meta = _fields(
                body, "version", "parent", "root", "size", "files", "message", "meta")
            if not isinstance(files, list) or not isinstance(meta, dict) or \
                    not isinstance(message, str):
                raise RecordError("record: files, meta or message has the wrong type")
            fs = []
            for f in files:
                if not (isinstance(f, list) and len(f) == 3 and isinstance(f[0], str)
                        and type(f[1]) is int and isinstance(f[2], str)):
                    raise RecordError("record: a file entry is not [path, size, sha256]")
                fs.append(FileEntry(path=f[0], size=f[1], sha256=f[2]))
            return VersionRecord(**common, version=version, parent=parent, root=root,
                                 size=size, files=tuple(fs), message=message,
                                 meta=tuple(sorted((str(k), str(v)) for k, v in meta.items())))
        if kind == "tag":
            tag, version = _fields(body, "tag", "version")
            return TagRecord(**common, tag=tag, version=version)
        if kind == "grant":
            (grantee,) = _fields(body, "grantee")
            return GrantRecord(**common, grantee=grantee)
        if kind == "claim":
            (creator,) = _fields(body, "creator")
            return ClaimRecord(**common, creator=creator)
        if kind == "retire":
            (version,) = _fields(body, "version")
            return RetireRecord(**common, version=version)
    except NameError_ as exc:
        raise RecordError(f"record: {exc}") from None
    raise RecordError(f"record: unknown kind {kind!r}")


def decode_record(block: bytes) -> SignedRecord:
    """Parse and verify a record block.

    Raises:
        RecordError: not a record, a field out of range, non-canonical
            encoding, or a signature that does not verify under ``body.key``.
    """
    if len(block) > MAX_RECORD_BYTES:
        raise RecordError(f"record: {len(block)} bytes, over {MAX_RECORD_BYTES}")
    try:
        obj = cbor_decode(block)
    except Exception as exc:
        raise RecordError(f"record: not DAG-CBOR ({exc})") from None
    if not isinstance(obj, dict) or set(obj) != {"body", "sig"} or \
            not isinstance(obj["body"], dict) or not isinstance(obj["sig"], bytes):
        raise RecordError("record: not a {body, sig} map")
    body, sig = obj["body"], obj["sig"]
    record = _record_from_body(body)
    encoded = cbor_encode(_body(record))
    if _envelope(encoded, sig) != block:  # also refuses fields the record does not know
        raise RecordError("record: not in canonical form")
    try:
        Ed25519PublicKey.from_public_bytes(record.key).verify(sig, SIGN_DOMAIN + encoded)
    except (InvalidSignature, ValueError):
        raise RecordError(f"record: bad signature for key {key_text(record.key)}") from None
    return SignedRecord(record=record, sig=sig, block=block, key=record_key(block))
