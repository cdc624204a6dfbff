"""CAR (Content Addressable aRchive) v1: writer and a streaming, verifying reader.

Spec: ipld/ipld ``specs/transport/car/carv1`` (and ``carv2`` for unwrapping).

A CARv1 is ``uvarint(len(header)) || header`` where the header is DAG-CBOR
``{"roots": [CID, ...], "version": 1}``, then any number of sections
``uvarint(len(cid) + len(block)) || binary CID || block``.

``CarReader`` is sans-IO: feed it bytes as they arrive and it returns each
block as soon as its section is complete, after checking the block against
its CID. It holds at most one section (<= 2 MiB + a CID) plus the unparsed
tail of the last feed. A CARv2 file is unwrapped: its pragma and 40-byte
header are read, and only the CARv1 payload they point at is parsed (the
index after it is ignored).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Final

from pinfold.blockstore.cid import CID, IDENTITY, MAX_BLOCK_SIZE, verify_block
from pinfold.blockstore.dag import cbor_decode, cbor_encode, walk_blocks
from pinfold.blockstore.dagpb import decode_cid
from pinfold.blockstore.varint import encode_uvarint, try_read_uvarint
from pinfold.blockstore.errors import BlockTooLarge, DecodeError, InvalidCID

__all__ = ["CARV2_PRAGMA", "CarReader", "car_header", "car_section", "export_car", "read_car"]

#: The 11 bytes a CARv2 file starts with: a CARv1-style header ``{"version": 2}``.
CARV2_PRAGMA: Final = bytes.fromhex("0aa16776657273696f6e02")
_CARV2_HEADER_SIZE: Final = 40
#: A CID is at most a few varints and a digest; 256 bytes is far above any real one.
_MAX_CID_BYTES: Final = 256
_MAX_HEADER_BYTES: Final = 1024 * 1024


def car_header(roots: Sequence[CID]) -> bytes:
    """The length-prefixed CARv1 header naming ``roots``.

    Raises:
        ValueError: ``roots`` is empty or holds something that is not a CID.
    """
    roots = list(roots)
    if not roots:
        raise ValueError("a CAR needs at least one root")
    for root in roots:
        if not isinstance(root, CID):
            raise TypeError(f"CAR roots must be CIDs, got {type(root).__name__}")
    header = cbor_encode({"roots": roots, "version": 1})
    return encode_uvarint(len(header)) + header


def car_section(cid: CID, data: bytes | bytearray | memoryview) -> bytes:
    """One CAR section: ``uvarint(len) || binary CID || data``.

    The caller vouches that ``data`` matches ``cid``.

    Raises:
        BlockTooLarge: ``data`` exceeds 2 MiB.
    """
    if len(data) > MAX_BLOCK_SIZE:
        raise BlockTooLarge(len(data), MAX_BLOCK_SIZE)
    raw = bytes(cid)
    return b"".join((encode_uvarint(len(raw) + len(data)), raw, data))


async def export_car(
    get_block: Callable[[CID], Awaitable[bytes]], root: CID
) -> AsyncIterator[bytes]:
    """Yield a CARv1 of the whole DAG under ``root``: the header, then one piece per block.

    Blocks come in ``dag.walk`` order (pre-order DFS, each CID once, identity
    CIDs left out), as Kubo's ``dag export`` writes them.

    Raises:
        BlockNotFound: as ``get_block`` raises it for a missing block.
        DecodeError: a block of the DAG is malformed.
    """
    yield car_header([root])
    async for cid, data in walk_blocks(get_block, root):
        yield car_section(cid, data)


def _try_uvarint(buf: bytearray | bytes, pos: int, what: str, at: int) -> tuple[int, int] | None:
    """A minimal varint at ``pos`` if complete, ``None`` if more bytes are needed."""
    return try_read_uvarint(buf, pos, what=f"CAR: {what}", minimal=True, base=at - pos)


def _cid_length(section: bytearray | bytes, start: int, at: int) -> int:
    """Length of the binary CID at the start of a section."""
    if len(section) - start >= 2 and section[start] == 0x12 and section[start + 1] == 0x20:
        return 34
    pos = start
    values = []
    for what in ("CID version", "CID codec", "CID hash code", "CID digest length"):
        got = _try_uvarint(section, pos, what, at)
        if got is None:
            raise DecodeError(f"CAR: section at byte {at} is too short for its CID")
        values.append(got[0])
        pos = got[1]
    if values[0] != 1:
        raise DecodeError(f"CAR: section at byte {at} has a CID of unsupported version {values[0]}")
    return pos - start + values[3]


class CarReader:
    """Streaming CAR reader: bytes in, verified ``(CID, block)`` pairs out.

    Example::

        reader = CarReader()
        for piece in pieces:
            store.put_many(reader.feed(piece))
        reader.finish()
        roots = reader.roots

    Blocks with identity CIDs are checked and then dropped (never stored).
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0  # parse position inside _buf
        self._base = 0  # absolute offset of _buf[0] in the input
        self._roots: tuple[CID, ...] | None = None
        self._version: int | None = None
        self._state = "header"  # header | v2header | v2skip | sections | v2tail
        self._payload_end: int | None = None  # absolute end of a CARv2's v1 payload
        self._v2_data_offset = 0
        self._blocks = 0
        self._finished = False

    @property
    def roots(self) -> tuple[CID, ...] | None:
        """The header's roots, or ``None`` until the header has been read."""
        return self._roots

    @property
    def version(self) -> int | None:
        """1 or 2 once known (a CARv2's payload is read as CARv1)."""
        return self._version

    @property
    def blocks_read(self) -> int:
        """Sections read so far (identity ones included)."""
        return self._blocks

    def feed(self, data: bytes | bytearray | memoryview) -> list[tuple[CID, bytes]]:
        """Add input bytes.

        Returns:
            The ``(CID, block)`` pairs whose sections completed, in file order.

        Raises:
            DecodeError: malformed header or section, CARv1 header without
                roots or with a version other than 1 (or a CARv2 wrapper),
                a bad CARv2 header.
            BlockCorrupt: a block does not hash to its CID.
            BlockTooLarge: a section holds a block over 2 MiB.
            RuntimeError: called after ``finish``.
        """
        if self._finished:
            raise RuntimeError("CarReader.feed called after finish()")
        self._buf += data
        out: list[tuple[CID, bytes]] = []
        while self._step(out):
            pass
        # bytearray drops a prefix in O(1) (it moves its start pointer).
        del self._buf[: self._pos]
        self._base += self._pos
        self._pos = 0
        return out

    def finish(self) -> None:
        """Declare the input complete.

        Raises:
            DecodeError: the input was empty, ended inside the header or a
                section, or a CARv2 ended before its payload did.
        """
        self._finished = True
        at = self._base + self._pos
        if self._state in ("header", "v2header", "v2skip"):
            if at == 0 and not self._buf:
                raise DecodeError("CAR: empty input")
            raise DecodeError(
                f"CAR: input ended at byte {self._base + len(self._buf)} "
                "before the header was complete"
            )
        if self._state == "sections":
            if self._payload_end is not None and at < self._payload_end:
                raise DecodeError(
                    f"CAR: CARv2 payload should end at byte {self._payload_end}, "
                    f"input ended at {at}"
                )
            if self._pos < len(self._buf):
                raise DecodeError(
                    f"CAR: input ended mid-section at byte {at} "
                    f"({len(self._buf) - self._pos} bytes of an incomplete section)"
                )

    # -- internals ---------------------------------------------------------------------

    def _avail(self) -> int:
        return len(self._buf) - self._pos

    def _step(self, out: list[tuple[CID, bytes]]) -> bool:
        """Parse one item if enough bytes are buffered; True if progress was made."""
        state = self._state
        if state == "header":
            return self._read_header()
        if state == "v2header":
            return self._read_v2_header()
        if state == "v2skip":
            skip = min(self._v2_data_offset - (self._base + self._pos), self._avail())
            self._pos += skip
            if self._base + self._pos == self._v2_data_offset:
                self._state = "header"
                return True
            return False
        if state == "v2tail":
            self._pos = len(self._buf)  # the index after a CARv2 payload is not needed
            return False
        return self._read_section(out)

    def _read_header(self) -> bool:
        at = self._base + self._pos
        got = _try_uvarint(self._buf, self._pos, "header length", at)
        if got is None:
            return False
        length, start = got
        if length == 0:
            raise DecodeError(f"CAR: zero-length header at byte {at}")
        if length > _MAX_HEADER_BYTES:
            raise DecodeError(f"CAR: header of {length} bytes at byte {at} is larger than 1 MiB")
        if len(self._buf) - start < length:
            return False
        raw = bytes(self._buf[start : start + length])
        self._pos = start + length
        inner = self._payload_end is not None
        if not inner and at == 0 and encode_uvarint(length) + raw == CARV2_PRAGMA:
            self._version = 2
            self._state = "v2header"
            return True
        try:
            header = cbor_decode(raw)
        except DecodeError as exc:
            raise DecodeError(f"CAR: header is not valid DAG-CBOR: {exc}") from None
        if not isinstance(header, dict):
            raise DecodeError(f"CAR: header is a {type(header).__name__}, expected a map")
        version = header.get("version")
        if version == 2:
            raise DecodeError(
                "CAR: CARv2 header in an unexpected place (nested CARv2 is not supported)"
            )
        if version != 1:
            raise DecodeError(f"CAR: header version is {version!r}, expected 1")
        extra = set(header) - {"roots", "version"}
        if extra:
            raise DecodeError(f"CAR: header has unexpected keys {sorted(extra)}")
        roots = header.get("roots")
        if not isinstance(roots, list) or not roots:
            raise DecodeError("CAR: header must list at least one root")
        for root in roots:
            if not isinstance(root, CID):
                raise DecodeError(f"CAR: header root {root!r} is not a CID")
        self._roots = tuple(roots)
        if self._version is None:
            self._version = 1
        self._state = "sections"
        return True

    def _read_v2_header(self) -> bool:
        if self._avail() < _CARV2_HEADER_SIZE:
            return False
        raw = bytes(self._buf[self._pos : self._pos + _CARV2_HEADER_SIZE])
        self._pos += _CARV2_HEADER_SIZE
        data_offset = int.from_bytes(raw[16:24], "little")
        data_size = int.from_bytes(raw[24:32], "little")
        here = len(CARV2_PRAGMA) + _CARV2_HEADER_SIZE
        if data_offset < here:
            raise DecodeError(f"CARv2: data offset {data_offset} points inside the CARv2 header")
        if data_size == 0:
            raise DecodeError("CARv2: data size is 0, the file holds no CARv1 payload")
        self._v2_data_offset = data_offset
        self._payload_end = data_offset + data_size
        self._state = "v2skip"
        return True

    def _read_section(self, out: list[tuple[CID, bytes]]) -> bool:
        at = self._base + self._pos
        if self._payload_end is not None and at >= self._payload_end:
            if at > self._payload_end:
                raise DecodeError(
                    f"CARv2: a section runs past the payload end at byte {self._payload_end}"
                )
            self._state = "v2tail"
            return True
        got = _try_uvarint(self._buf, self._pos, "section length", at)
        if got is None:
            return False
        length, start = got
        if length == 0:
            raise DecodeError(f"CAR: zero-length section at byte {at}")
        if length > MAX_BLOCK_SIZE + _MAX_CID_BYTES:
            raise BlockTooLarge(length, MAX_BLOCK_SIZE)
        if len(self._buf) - start < length:
            return False
        end = start + length
        if self._payload_end is not None and self._base + end > self._payload_end:
            raise DecodeError(
                f"CARv2: section at byte {at} runs past the payload end at byte {self._payload_end}"
            )
        cid_len = _cid_length(self._buf, start, at)
        if cid_len > length:
            raise DecodeError(f"CAR: section at byte {at} is shorter ({length} bytes) than its CID")
        cid = decode_cid(self._buf[start : start + cid_len], what=f"CAR section CID at byte {at}")
        data = bytes(self._buf[start + cid_len : end])
        self._pos = end
        if len(data) > MAX_BLOCK_SIZE:
            raise BlockTooLarge(len(data), MAX_BLOCK_SIZE)
        try:
            verify_block(cid, data)
        except InvalidCID as exc:
            raise DecodeError(f"CAR: section at byte {at}: {exc}") from None
        self._blocks += 1
        if cid.hashfun.code != IDENTITY:
            out.append((cid, data))
        return True


def read_car(
    data: bytes | bytearray | memoryview,
) -> tuple[tuple[CID, ...], list[tuple[CID, bytes]]]:
    """Read a whole in-memory CAR: ``(roots, blocks)``. Raises as ``CarReader``."""
    reader = CarReader()
    blocks = reader.feed(data)
    reader.finish()
    assert reader.roots is not None
    return reader.roots, blocks
