"""CID helpers on top of ``multiformats``.

The CID spec (multiformats/cid): CIDv0 is a bare base58btc sha2-256 multihash
naming a dag-pb block; CIDv1 is ``<version><codec><multihash>``. pinfold reads
both and writes CIDv1 (base32 text) unless asked for v0.

Blocks are keyed in the store by their *multihash* bytes (as Kubo does since
0.12), so the CIDv0 and CIDv1 spellings of one block are one entry and a block
is stored once whatever codec names it. Identity CIDs carry their data inline
and are never stored.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Final

import base58

from multiformats import CID, multihash

from pinfold.blockstore.errors import BlockCorrupt, BlockTooLarge, InvalidCID
from pinfold.blockstore.varint import encode_uvarint, read_uvarint

__all__ = [
    "CID",
    "RAW",
    "DAG_PB",
    "DAG_CBOR",
    "IDENTITY",
    "SHA2_256",
    "MAX_BLOCK_SIZE",
    "parse_cid",
    "cid_key",
    "cid_text",
    "make_cid",
    "cid_v1",
    "is_identity",
    "identity_data",
    "verify_block",
    "check_block_size",
]

RAW: Final = 0x55
DAG_PB: Final = 0x70
DAG_CBOR: Final = 0x71
IDENTITY: Final = 0x00
SHA2_256: Final = 0x12

#: Largest block pinfold stores or sends: 2 MiB (Bitswap spec, "Block Sizes";
#: Kubo's SoftBlockLimit since v0.40).
MAX_BLOCK_SIZE: Final = 2 * 1024 * 1024

_CODEC_NAMES: Final = {RAW: "raw", DAG_PB: "dag-pb", DAG_CBOR: "dag-cbor"}
_SUPPORTED_CODECS: Final = frozenset(_CODEC_NAMES)
_HASH_NAMES: Final = {SHA2_256: "sha2-256", IDENTITY: "identity"}


def parse_cid(value: str | bytes | CID) -> CID:
    """Parse a CID from its text form (v0 base58 or any multibase v1) or binary form.

    Args:
        value: ``"Qm..."``, ``"bafy..."``, the binary CID bytes, or a ``CID``.

    Returns:
        The ``CID``. A CIDv1 decoded from its binary form prints in base32
        (``bafy...``), its canonical text, never in another base.

    Raises:
        InvalidCID: the value is not a CID, or names a codec other than
            raw, dag-pb, dag-cbor, or a hash other than sha2-256 or identity.
    """
    if isinstance(value, CID):
        cid = value
    else:
        try:
            if isinstance(value, str):
                value = value.strip()
                if not value:
                    raise InvalidCID("invalid CID: empty string")
            cid = CID.decode(value)
        except InvalidCID:
            raise
        except Exception as exc:  # multiformats raises several types
            shown = value if isinstance(value, str) else bytes(value)[:64].hex()
            raise InvalidCID(f"invalid CID {shown!r}: {exc}") from exc
    if cid.codec.code not in _SUPPORTED_CODECS:
        raise InvalidCID(f"unsupported codec {cid.codec.name!r} in CID {cid}")
    # The hash code is read from the multihash bytes: multiformats loads a hash's
    # implementation (an optional package for some, e.g. keccak) when a CID is
    # rebuilt, so an unsupported hash must be refused before that.
    if read_uvarint(bytes(cid.digest), 0, error=InvalidCID)[0] not in _HASH_NAMES:
        raise InvalidCID(f"unsupported hash {cid.hashfun.name!r} in CID {cid}")
    if not isinstance(value, (str, CID)) and cid.version == 1 and cid.base.name != "base32":
        cid = CID("base32", 1, cid.codec, cid.digest)
    return cid


def cid_key(cid: CID) -> bytes:
    """The store key of ``cid``: its multihash bytes (``<code><len><digest>``)."""
    return bytes(cid.digest)


def cid_text(cid: CID) -> str:
    """``str(cid)`` at a small fraction of its cost: CIDv0 in base58btc, CIDv1 in
    base32 (lower case, no padding) encoded by the standard library; a CIDv1
    that carries another multibase falls back to ``str``.

    ``multiformats`` encodes text through a generic alphabet with type checks
    on every character (hundreds of microseconds a CID), which dominated
    listings and transfers of folders with thousands of entries.
    """
    version = cid.version
    if version == 0:
        return base58.b58encode(cid.digest).decode("ascii")
    if cid.base.name != "base32":
        return str(cid)
    code = cid.codec.code
    head = bytes((1, code)) if code < 0x80 else b"\x01" + encode_uvarint(code)
    text = base64.b32encode(head + cid.digest).decode("ascii")
    return "b" + text.lower().rstrip("=")


def cid_v1(cid: CID) -> CID:
    """The CIDv1 (base32) spelling of ``cid``."""
    if cid.version == 1 and cid.base.name == "base32":
        return cid
    return CID("base32", 1, cid.codec, cid.digest)


def make_cid(data: bytes | memoryview, codec: int = RAW, *, version: int = 1) -> CID:
    """The CID of ``data`` with sha2-256.

    Args:
        data: block bytes.
        codec: multicodec code, ``RAW`` or ``DAG_PB`` (CIDv0 requires ``DAG_PB``).
        version: 0 or 1.

    Raises:
        InvalidCID: version 0 with a codec other than dag-pb.
    """
    digest = hashlib.sha256(data).digest()
    mh = b"\x12\x20" + digest
    if version == 0:
        if codec != DAG_PB:
            raise InvalidCID("CIDv0 can only name dag-pb blocks")
        return CID("base58btc", 0, "dag-pb", mh)
    return CID("base32", 1, _CODEC_NAMES[codec], mh)


def is_identity(cid: CID) -> bool:
    """True when ``cid`` uses the identity hash (data inline, never stored)."""
    return cid.hashfun.code == IDENTITY


def identity_data(cid: CID) -> bytes:
    """The inline data of an identity CID."""
    return bytes(cid.raw_digest)


def verify_block(cid: CID, data: bytes | memoryview) -> None:
    """Check that ``data`` hashes to ``cid``'s multihash.

    Raises:
        BlockCorrupt: the hash differs.
        InvalidCID: the CID's hash function is not supported.
    """
    code = cid.hashfun.code
    if code == SHA2_256:
        if hashlib.sha256(data).digest() != bytes(cid.raw_digest):
            raise BlockCorrupt(cid)
    elif code == IDENTITY:
        if bytes(data) != bytes(cid.raw_digest):
            raise BlockCorrupt(cid, "identity data differs")
    else:
        try:
            ok = multihash.digest(bytes(data), cid.hashfun) == cid.digest
        except Exception as exc:
            raise InvalidCID(f"unsupported hash {cid.hashfun.name!r}") from exc
        if not ok:
            raise BlockCorrupt(cid)


def check_block_size(size: int, limit: int = MAX_BLOCK_SIZE) -> None:
    """Raise ``BlockTooLarge`` if ``size`` bytes exceeds ``limit``."""
    if size > limit:
        raise BlockTooLarge(size, limit)
