"""Bitswap block prefixes: a CID without its digest (``Block.prefix``, 1.1.0+).

ipfs/specs ``src/bitswap-protocol.md``, "Bitswap 1.1.0": a block travels as its
data and a prefix (CID version, codec, multihash code and digest length, four
uvarints); the receiver hashes the data and rebuilds the CID from the prefix.
``CidPrefix`` does that, checking each distinct prefix once; ``V0_PREFIX`` is the
prefix of every CIDv0 block (1.0.0 sends blocks without prefixes). Pure: no I/O.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Final

from pinfold.blockstore.cid import CID
from pinfold.blockstore.varint import encode_uvarint

from pinfold.daemon.p2p.bitswap.errors import MalformedMessage

__all__ = ["V0_PREFIX", "CidPrefix"]


@dataclass(frozen=True, slots=True, kw_only=True)
class CidPrefix:
    """A CID without its digest (``Block.prefix``): version, codec, hash code, digest length."""

    version: int
    codec: int
    mh_code: int
    mh_length: int

    def to_bytes(self) -> bytes:
        """The prefix as four uvarints."""
        return b"".join(
            encode_uvarint(v) for v in (self.version, self.codec, self.mh_code, self.mh_length)
        )

    @classmethod
    def of(cls, cid: CID) -> CidPrefix:
        """The prefix of ``cid``."""
        return cls(
            version=cid.version,
            codec=cid.codec.code,
            mh_code=cid.hashfun.code,
            mh_length=len(cid.raw_digest),
        )

    def key_for_digest(self, digest: bytes) -> bytes:
        """The store key (multihash bytes) of the CID with this prefix and raw
        ``digest``, checked as ``cid_for_digest`` checks it, without building a
        CID: the prefix is checked once, by building one CID per distinct prefix.

        Raises:
            MalformedMessage: as ``cid_for_digest``.
        """
        if len(digest) != self.mh_length:
            raise MalformedMessage(
                f"block prefix says a {self.mh_length}-byte digest, hash gives {len(digest)}"
            )
        return _checked_mh_header(self) + digest

    def cid_for_digest(self, digest: bytes) -> CID:
        """The CID with this prefix and raw ``digest``.

        Raises:
            MalformedMessage: the prefix names an impossible CID (bad version,
                CIDv0 that is not dag-pb/sha2-256, digest length mismatch).
        """
        if len(digest) != self.mh_length:
            raise MalformedMessage(
                f"block prefix says a {self.mh_length}-byte digest, hash gives {len(digest)}"
            )
        mh = encode_uvarint(self.mh_code) + encode_uvarint(self.mh_length) + digest
        try:
            if self.version == 0:
                if (self.codec, self.mh_code) != (0x70, 0x12):
                    raise ValueError("CIDv0 must be dag-pb with sha2-256")
                return CID("base58btc", 0, "dag-pb", mh)
            if self.version != 1:
                raise ValueError(f"CID version {self.version}")
            return CID("base32", 1, self.codec, mh)
        except Exception as exc:
            raise MalformedMessage(f"block prefix names no valid CID: {exc}") from exc


@functools.lru_cache(maxsize=64)
def _checked_mh_header(prefix: CidPrefix) -> bytes:
    """``<code><length>`` of ``prefix``'s multihash, once ``prefix`` named a valid CID
    (errors are not cached)."""
    prefix.cid_for_digest(bytes(prefix.mh_length))
    return encode_uvarint(prefix.mh_code) + encode_uvarint(prefix.mh_length)


#: prefix of every CIDv0 block (Bitswap 1.0.0 sends blocks without prefixes)
V0_PREFIX: Final = CidPrefix(version=0, codec=0x70, mh_code=0x12, mh_length=32)
