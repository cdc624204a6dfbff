"""The dag-pb codec: PBNode / PBLink, canonical encoder, strict decoder.

Spec: IPLD DAG-PB (ipld/ipld ``specs/codecs/dag-pb/spec.md``)::

    message PBLink { optional bytes Hash = 1; optional string Name = 2; optional uint64 Tsize = 3; }
    message PBNode { repeated PBLink Links = 2; optional bytes Data = 1; }

Encoding is canonical: every Link before Data (the spec's order, which does not
follow the field numbers), link fields in field-number order, absent optional
fields omitted, varints minimal. Links are written in the order given; callers
that build directories sort them by name bytes first (``sort_links``).

Decoding is strict as the spec's "Protobuf Strictness" section asks:
out-of-order PBLink fields, duplicate fields, unknown fields, wrong wire types,
a missing link Hash, a Hash that is not a CID, truncated data and trailing
garbage are rejected with ``DecodeError`` naming the problem. Following rule 2
of that section, a PBNode with Data *before* its Links is accepted (IPFS data
exists in both forms; js ``@ipld/dag-pb`` can write ``data-first``), but Links
split around Data (Links, Data, Links) is rejected.

Also here, because every codec module needs it: a fast binary CID decoder.
Varints come from ``pinfold.blockstore.varint``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from multiformats import CID, multibase, multicodec, multihash

from pinfold.blockstore.errors import DecodeError
from pinfold.blockstore.varint import MAX_UINT64, encode_uvarint, read_uvarint

__all__ = [
    "PBLink",
    "PBNode",
    "decode",
    "decode_cid",
    "encode",
    "new_cid",
    "sort_links",
]

# --------------------------------------------------------------------------- CIDs

_BASE32: Final = multibase.get("base32")
_BASE58: Final = multibase.get("base58btc")
_CODECS: dict[int, multicodec.Multicodec] = {}
_HASHES: dict[int, multihash.Multihash] = {}
#: CID._new_instance skips multiformats' re-validation (75 us -> 5 us a CID); we
#: validate the bytes ourselves first. Fall back to the public constructor if a
#: future multiformats renames it.
_new_instance = getattr(CID, "_new_instance", None)
#: The attributes a CID instance holds (multiformats 0.3). When they are these,
#: ``_instance`` fills them in directly: ``_new_instance`` also interns every CID
#: in a WeakValueDictionary keyed by hashes of its parts, which cost more than
#: the rest of decoding a directory entry. Equality and hashing compare the
#: parts, never identity, so an un-interned CID behaves the same.
_DIRECT: Final = set(getattr(CID, "__slots__", ())) >= {
    "_base", "_version", "_codec", "_hashfun", "_digest"}


def _instance(base: multibase.Multibase, version: int, codec: multicodec.Multicodec,
              hashfun: multihash.Multihash, mh: bytes) -> CID:
    """A CID from checked parts (``mh``: the multihash bytes)."""
    if _DIRECT:
        cid = object.__new__(CID)
        cid._base = base  # type: ignore[attr-defined]
        cid._version = version  # type: ignore[attr-defined]
        cid._codec = codec  # type: ignore[attr-defined]
        cid._hashfun = hashfun  # type: ignore[attr-defined]
        cid._digest = mh  # type: ignore[attr-defined]
        return cid
    if _new_instance is not None:  # pragma: no cover - another multiformats
        return _new_instance(CID, base, version, codec, hashfun, mh)
    return CID(base.name, version, codec.name, mh)  # pragma: no cover


def _codec(code: int) -> multicodec.Multicodec:
    mc = _CODECS.get(code)
    if mc is None:
        mc = _CODECS[code] = multicodec.get(code=code)
    return mc


def _hashfun(code: int) -> multihash.Multihash:
    mh = _HASHES.get(code)
    if mh is None:
        mh = _HASHES[code] = multihash.get(code=code)
    return mh


_hashfun(0x12)  # sha2-256: the one hash function of the fast paths


def new_cid(version: int, codec: int, mh: bytes) -> CID:
    """Build a CID from already-validated parts, fast.

    Args:
        version: 0 or 1 (v0 implies dag-pb; v1 is given base32 for text).
        codec: multicodec code (0x55 raw, 0x70 dag-pb, 0x71 dag-cbor, ...).
        mh: the multihash bytes ``<code><len><digest>``; the caller vouches
            that they are well formed (e.g. ``b"\\x12\\x20" + sha256 digest``).
    """
    mh = bytes(mh)
    base = _BASE58 if version == 0 else _BASE32
    hash_code = mh[0] if mh[0] < 0x80 else read_uvarint(mh, 0)[0]
    return _instance(base, version, _codec(codec), _hashfun(hash_code), mh)


def decode_cid(raw: bytes | bytearray | memoryview, *, what: str = "CID") -> CID:
    """Decode a binary CID (v0: a bare sha2-256 multihash; v1: version, codec, multihash).

    The whole of ``raw`` must be the CID. CIDv1 values get the base32 text form.

    Raises:
        DecodeError: not a well-formed CID (names ``what`` in the message),
            including an unknown codec or hash function, a digest length that
            differs from the multihash's length prefix, or trailing bytes.
    """
    raw = bytes(raw)
    n = len(raw)
    if n == 34 and raw[0] == 0x12 and raw[1] == 0x20:
        return new_cid(0, 0x70, raw)
    if (n == 36 and raw[0] == 1 and raw[1] < 0x80 and raw[2] == 0x12 and raw[3] == 0x20
            and raw[1] in _CODECS):
        # CIDv1, a one-byte codec already seen, sha2-256: nothing left to check.
        return _instance(_BASE32, 1, _CODECS[raw[1]], _HASHES[0x12], raw[2:])
    try:
        version, pos = read_uvarint(raw, 0, what=f"{what} version", minimal=True)
        if version != 1:
            raise DecodeError(f"{what}: unsupported CID version {version}")
        codec, pos = read_uvarint(raw, pos, what=f"{what} codec", minimal=True)
        mh_start = pos
        hash_code, pos = read_uvarint(raw, pos, what=f"{what} hash code", minimal=True)
        length, pos = read_uvarint(raw, pos, what=f"{what} digest length", minimal=True)
    except DecodeError as exc:
        raise DecodeError(f"malformed {what} {raw[:48].hex()}: {exc}") from None
    if n - pos != length:
        raise DecodeError(
            f"malformed {what} {raw[:48].hex()}: digest length prefix says {length} bytes, "
            f"{n - pos} present"
        )
    if hash_code == 0x12 and length != 32:
        raise DecodeError(f"malformed {what}: sha2-256 digest of {length} bytes")
    try:
        _codec(codec)
        _hashfun(hash_code)
    except (KeyError, ValueError) as exc:
        raise DecodeError(f"{what} names an unknown codec or hash function: {exc}") from None
    return new_cid(1, codec, raw[mh_start:])


# --------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True, kw_only=True)
class PBLink:
    """One dag-pb link.

    Attributes:
        hash: the CID linked to.
        name: the link name (UTF-8); ``None`` = field absent. Directory entries
            carry names; file chunks carry ``""`` (as Kubo and js write them).
        tsize: cumulative size of the linked DAG in bytes (its blocks' bytes),
            ``None`` = field absent.
    """

    hash: CID
    name: str | None = None
    tsize: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.hash, CID):
            raise TypeError(f"PBLink.hash must be a CID, got {type(self.hash).__name__}")
        if self.name is not None and not isinstance(self.name, str):
            raise TypeError(f"PBLink.name must be str or None, got {type(self.name).__name__}")
        if self.tsize is not None and not 0 <= self.tsize <= MAX_UINT64:
            raise ValueError(f"PBLink.tsize must be in 0..2**64-1, got {self.tsize}")


@dataclass(frozen=True, slots=True, kw_only=True)
class PBNode:
    """One dag-pb node.

    Attributes:
        links: the links, in stored order (a tuple; lists are converted).
        data: the opaque Data bytes; ``None`` = field absent, ``b""`` = present
            and empty (the two encode differently).
    """

    links: tuple[PBLink, ...] = ()
    data: bytes | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.links, tuple):
            object.__setattr__(self, "links", tuple(self.links))
        for link in self.links:
            if not isinstance(link, PBLink):
                raise TypeError(f"PBNode.links must hold PBLink, got {type(link).__name__}")
        if self.data is not None and not isinstance(self.data, bytes):
            if isinstance(self.data, (bytearray, memoryview)):
                object.__setattr__(self, "data", bytes(self.data))
            else:
                raise TypeError(
                    f"PBNode.data must be bytes or None, got {type(self.data).__name__}"
                )


def sort_links(links: Iterable[PBLink]) -> tuple[PBLink, ...]:
    """Links in the spec's order: ascending by UTF-8 name bytes, stable, absent name = ``""``."""
    return tuple(sorted(links, key=lambda link: (link.name or "").encode("utf-8")))


# --------------------------------------------------------------------------- encode


def encode_link(cid_bytes: bytes, name: bytes | None, tsize: int | None) -> bytes:
    """Encode one PBLink message body (without the outer field key), canonical order."""
    parts = [b"\x0a", encode_uvarint(len(cid_bytes)), cid_bytes]
    if name is not None:
        parts += [b"\x12", encode_uvarint(len(name)), name]
    if tsize is not None:
        parts += [b"\x18", encode_uvarint(tsize)]
    body = b"".join(parts)
    return b"\x12" + encode_uvarint(len(body)) + body


def encode(node: PBNode) -> bytes:
    """Encode ``node`` canonically: every Link, then Data.

    Returns:
        The block bytes (its CID is over exactly these bytes).
    """
    parts = [
        encode_link(
            bytes(link.hash),
            None if link.name is None else link.name.encode("utf-8"),
            link.tsize,
        )
        for link in node.links
    ]
    if node.data is not None:
        parts += [b"\x0a", encode_uvarint(len(node.data)), node.data]
    return b"".join(parts)


# --------------------------------------------------------------------------- decode

_WIRE_NAMES: Final = {
    0: "varint",
    1: "fixed64",
    2: "length-delimited",
    3: "start-group",
    4: "end-group",
    5: "fixed32",
}


def _wire(wt: int) -> str:
    return _WIRE_NAMES.get(wt, f"invalid ({wt})")


def _decode_link(buf: bytes, start: int, end: int, index: int) -> PBLink:
    link = _decode_link_fast(buf, start, end)
    return link if link is not None else _decode_link_strict(buf, start, end, index)


def _decode_link_fast(buf: bytes, start: int, end: int) -> PBLink | None:
    """The common link, decoded without building error texts: Hash, then optional
    Name and Tsize, one-byte field lengths. ``None`` for anything else (the
    strict decoder then decodes it or says what is wrong)."""
    if end - start < 2 or buf[start] != 0x0A or buf[start + 1] >= 0x80:
        return None
    pos = start + 2 + buf[start + 1]
    if pos > end:
        return None
    try:
        cid = decode_cid(buf[start + 2:pos])
    except DecodeError:
        return None
    name: str | None = None
    tsize: int | None = None
    if pos < end and buf[pos] == 0x12:
        if pos + 1 >= end or buf[pos + 1] >= 0x80:
            return None
        stop = pos + 2 + buf[pos + 1]
        if stop > end:
            return None
        try:
            name = buf[pos + 2:stop].decode("utf-8")
        except UnicodeDecodeError:
            return None
        pos = stop
    if pos < end and buf[pos] == 0x18:
        try:
            tsize, pos = read_uvarint(buf, pos + 1, end)
        except DecodeError:
            return None
    if pos != end:
        return None
    return PBLink(hash=cid, name=name, tsize=tsize)


def _decode_link_strict(buf: bytes, start: int, end: int, index: int) -> PBLink:
    pos = start
    cid: CID | None = None
    name: str | None = None
    tsize: int | None = None
    last_field = 0
    where = f"PBLink #{index}"
    while pos < end:
        key, pos = read_uvarint(buf, pos, what=f"{where} field key")
        field, wt = key >> 3, key & 7
        if field not in (1, 2, 3):
            raise DecodeError(f"{where}: unknown field {field} (expected Hash=1, Name=2, Tsize=3)")
        if field == last_field:
            raise DecodeError(f"{where}: duplicate field {('Hash', 'Name', 'Tsize')[field - 1]}")
        if field < last_field:
            raise DecodeError(
                f"{where}: fields out of order ({('Hash', 'Name', 'Tsize')[field - 1]} after "
                f"{('Hash', 'Name', 'Tsize')[last_field - 1]})"
            )
        last_field = field
        if field == 3:
            if wt != 0:
                raise DecodeError(f"{where}: Tsize has wire type {_wire(wt)}, expected varint")
            tsize, pos = read_uvarint(buf, pos, what=f"{where} Tsize")
            continue
        if wt != 2:
            label = "Hash" if field == 1 else "Name"
            raise DecodeError(
                f"{where}: {label} has wire type {_wire(wt)}, expected length-delimited"
            )
        length, pos = read_uvarint(buf, pos, what=f"{where} length")
        if pos + length > end:
            raise DecodeError(f"{where}: field {field} runs past the end of the link")
        value = buf[pos : pos + length]
        pos += length
        if field == 1:
            cid = decode_cid(value, what=f"{where} Hash")
        else:
            try:
                name = value.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DecodeError(f"{where}: Name is not valid UTF-8: {exc}") from None
    if pos != end:
        raise DecodeError(f"{where}: truncated")
    if cid is None:
        raise DecodeError(f"{where}: missing Hash")
    return PBLink(hash=cid, name=name, tsize=tsize)


def decode(data: bytes | bytearray | memoryview) -> PBNode:
    """Decode a dag-pb block strictly.

    Args:
        data: the block bytes.

    Returns:
        The ``PBNode``; links keep their stored order (never re-sorted).

    Raises:
        DecodeError: malformed protobuf, wrong wire type, unknown field,
            duplicate Data, Links split around Data, out-of-order or duplicate
            link fields, a link without Hash or with a Hash that is not a CID,
            a Name that is not UTF-8, truncation or trailing garbage.
    """
    buf = bytes(data)
    end = len(buf)
    pos = 0
    links: list[PBLink] = []
    node_data: bytes | None = None
    links_done = False  # a Link was followed by Data: no more Links allowed
    while pos < end:
        if not links_done and buf[pos] == 0x12 and pos + 1 < end and buf[pos + 1] < 0x80:
            # A link under 128 bytes (most directory entries): no varint to read.
            stop = pos + 2 + buf[pos + 1]
            if stop <= end:
                link = _decode_link_fast(buf, pos + 2, stop)
                if link is not None:
                    links.append(link)
                    pos = stop
                    continue
        key, pos = read_uvarint(buf, pos, what="PBNode field key")
        field, wt = key >> 3, key & 7
        if field not in (1, 2):
            raise DecodeError(
                f"PBNode: unknown field {field} at byte {pos - 1} (expected Data=1, Links=2)"
            )
        if wt != 2:
            label = "Data" if field == 1 else "Links"
            raise DecodeError(
                f"PBNode: {label} has wire type {_wire(wt)}, expected length-delimited"
            )
        length, pos = read_uvarint(buf, pos, what="PBNode field length")
        if pos + length > end:
            label = "Data" if field == 1 else f"PBLink #{len(links)}"
            raise DecodeError(
                f"PBNode: {label} claims {length} bytes but only {end - pos} remain "
                "(truncated block)"
            )
        if field == 1:
            if node_data is not None:
                raise DecodeError("PBNode: duplicate Data field")
            node_data = buf[pos : pos + length]
            if links:
                links_done = True
        else:
            if links_done:
                raise DecodeError("PBNode: Links after Data after Links (fields out of order)")
            links.append(_decode_link(buf, pos, pos + length, len(links)))
        pos += length
    return PBNode(links=tuple(links), data=node_data)
