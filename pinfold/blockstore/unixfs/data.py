"""The UnixFS ``Data`` message (``UnixFSData``, ``DataType``, ``UnixTime``):
encode, decode with the spec's checks, and the format's size limits.

Imports ``cid`` and ``varint``; no I/O."""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from pinfold.blockstore.cid import CID, MAX_BLOCK_SIZE
from pinfold.blockstore.varint import MAX_UINT64, encode_uvarint, read_uvarint
from pinfold.blockstore.errors import DecodeError

GetBlock = Callable[[CID], Awaitable[bytes]]

#: ``read_local(cids, fn)``: ``fn(cid, block)`` for each of ``cids`` whose block is
#: already local, in one store read, ``None`` for the others (which the reader then
#: gets through its ``GetBlock``); ``block`` is valid only while ``fn`` runs.
#: ``TxnBlockStore.read_each`` is one.
ReadLocal = Callable[[Sequence[CID], Callable[[CID, "bytes | memoryview"], Any]], list[Any]]

#: Largest chunk: 2 MiB - 256 B, so a dag-pb-wrapped leaf still fits in a
#: 2 MiB block (Kubo's chunker limit; ANCHORS.md section 0).
MAX_CHUNK_SIZE: Final = MAX_BLOCK_SIZE - 256
#: Most links a file node may have; 8192 links of ~50 bytes stay far under 2 MiB.
MAX_LINKS: Final = 8192
#: UnixFS spec, "Identity CID Size Limit": readers reject larger inline data.
IDENTITY_MAX_BYTES: Final = 128
#: HAMT fanout limit (UnixFS spec, HAMTDirectory; CVE-2023-23625).
_MAX_FANOUT: Final = 1024





class DataType(enum.IntEnum):
    """``Data.Type`` (UnixFS spec, "dag-pb Node")."""

    RAW = 0
    DIRECTORY = 1
    FILE = 2
    METADATA = 3
    SYMLINK = 4
    HAMT_SHARD = 5


@dataclass(frozen=True, slots=True, kw_only=True)
class UnixTime:
    """``UnixTime``: seconds since the epoch (signed) plus optional nanoseconds.

    Attributes:
        seconds: signed 64-bit seconds.
        nanos: ``FractionalNanoseconds`` in 1..999999999, or ``None`` (absent).
            The spec forbids an on-wire 0; pass ``None`` instead.
    """

    seconds: int
    nanos: int | None = None

    def __post_init__(self) -> None:
        if not -(1 << 63) <= self.seconds < (1 << 63):
            raise ValueError(f"UnixTime.seconds must fit in int64, got {self.seconds}")
        if self.nanos is not None and not 1 <= self.nanos <= 999_999_999:
            raise ValueError(f"UnixTime.nanos must be in 1..999999999 or None, got {self.nanos}")


@dataclass(frozen=True, slots=True, kw_only=True)
class UnixFSData:
    """The UnixFS ``Data`` protobuf message carried in ``PBNode.Data``.

    Attributes:
        type: the node type.
        data: file bytes (File/Raw), symlink target, HAMT bitfield; ``None`` = absent.
        filesize: total file bytes under this node (File/Raw); ``None`` = absent.
        blocksizes: file bytes under each link, one per link, in link order.
        hash_type: HAMT hash function multicodec (0x22 murmur3-x64-64).
        fanout: HAMT fanout.
        mode: POSIX mode bits (UnixFS 1.5), ``None`` = absent.
        mtime: modification time (UnixFS 1.5), ``None`` = absent.
    """

    type: DataType
    data: bytes | None = None
    filesize: int | None = None
    blocksizes: tuple[int, ...] = ()
    hash_type: int | None = None
    fanout: int | None = None
    mode: int | None = None
    mtime: UnixTime | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "type", DataType(self.type))
        if not isinstance(self.blocksizes, tuple):
            object.__setattr__(self, "blocksizes", tuple(self.blocksizes))
        for name in ("filesize", "hash_type", "fanout"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= MAX_UINT64:
                raise ValueError(f"UnixFSData.{name} must be in 0..2**64-1, got {value}")
        for size in self.blocksizes:
            if not 0 <= size <= MAX_UINT64:
                raise ValueError(f"UnixFSData.blocksizes must be in 0..2**64-1, got {size}")
        if self.mode is not None and not 0 <= self.mode <= 0xFFFFFFFF:
            raise ValueError(f"UnixFSData.mode must fit in uint32, got {self.mode}")


def encode_data(msg: UnixFSData) -> bytes:
    """Encode a UnixFS ``Data`` message: fields in field-number order, absent ones omitted.

    ``blocksizes`` are written unpacked (one key each), as Kubo and js do.
    """
    parts = [b"\x08", encode_uvarint(int(msg.type))]
    if msg.data is not None:
        parts += [b"\x12", encode_uvarint(len(msg.data)), msg.data]
    if msg.filesize is not None:
        parts += [b"\x18", encode_uvarint(msg.filesize)]
    for size in msg.blocksizes:
        parts += [b"\x20", encode_uvarint(size)]
    if msg.hash_type is not None:
        parts += [b"\x28", encode_uvarint(msg.hash_type)]
    if msg.fanout is not None:
        parts += [b"\x30", encode_uvarint(msg.fanout)]
    if msg.mode is not None:
        parts += [b"\x38", encode_uvarint(msg.mode)]
    if msg.mtime is not None:
        t = b"\x08" + encode_uvarint(msg.mtime.seconds & MAX_UINT64)  # int64: two's complement varint
        if msg.mtime.nanos is not None:
            t += b"\x15" + msg.mtime.nanos.to_bytes(4, "little")
        parts += [b"\x42", encode_uvarint(len(t)), t]
    return b"".join(parts)


_DATA_FIELDS: Final = {
    1: "Type",
    2: "Data",
    3: "filesize",
    4: "blocksizes",
    5: "hashType",
    6: "fanout",
    7: "mode",
    8: "mtime",
}


def _decode_unixtime(buf: bytes) -> UnixTime:
    pos, end = 0, len(buf)
    seconds: int | None = None
    nanos: int | None = None
    while pos < end:
        key, pos = read_uvarint(buf, pos, what="UnixFS mtime field key")
        field, wt = key >> 3, key & 7
        if field == 1 and wt == 0:
            if seconds is not None:
                raise DecodeError("UnixFS mtime: duplicate Seconds")
            raw, pos = read_uvarint(buf, pos, what="UnixFS mtime Seconds")
            seconds = raw - (1 << 64) if raw >= 1 << 63 else raw
        elif field == 2 and wt == 5:
            if nanos is not None:
                raise DecodeError("UnixFS mtime: duplicate FractionalNanoseconds")
            if pos + 4 > end:
                raise DecodeError("UnixFS mtime: truncated FractionalNanoseconds")
            nanos = int.from_bytes(buf[pos : pos + 4], "little")
            pos += 4
            if not 1 <= nanos <= 999_999_999:
                raise DecodeError(
                    f"UnixFS mtime: FractionalNanoseconds {nanos} outside 1..999999999"
                )
        else:
            raise DecodeError(f"UnixFS mtime: unexpected field {field} with wire type {wt}")
    if seconds is None:
        raise DecodeError("UnixFS mtime: missing Seconds")
    return UnixTime(seconds=seconds, nanos=nanos)


def decode_data(raw: bytes | bytearray | memoryview | None) -> UnixFSData:
    """Decode a UnixFS ``Data`` message strictly.

    Args:
        raw: ``PBNode.Data``.

    Returns:
        The message. ``blocksizes`` is accepted packed or unpacked (both are
        valid protobuf for a repeated uint64).

    Raises:
        DecodeError: data absent, malformed protobuf, unknown field, wrong wire
            type, duplicate singular field, missing or unknown Type, HAMT fanout
            that is not a power of two in 8..1024, or a bad mtime.
    """
    if raw is None:
        raise DecodeError("dag-pb node has no Data field, so it is not a UnixFS node")
    buf = bytes(raw)
    pos, end = 0, len(buf)
    seen: set[int] = set()
    values: dict[str, object] = {}
    blocksizes: list[int] = []
    while pos < end:
        key, pos = read_uvarint(buf, pos, what="UnixFS field key")
        field, wt = key >> 3, key & 7
        name = _DATA_FIELDS.get(field)
        if name is None:
            raise DecodeError(f"UnixFS Data: unknown field {field}")
        if field != 4:
            if field in seen:
                raise DecodeError(f"UnixFS Data: duplicate field {name}")
            seen.add(field)
        if field in (2, 8) or (field == 4 and wt == 2):
            if wt != 2:
                raise DecodeError(
                    f"UnixFS Data: {name} has wire type {wt}, expected length-delimited"
                )
            length, pos = read_uvarint(buf, pos, what=f"UnixFS {name} length")
            if pos + length > end:
                raise DecodeError(f"UnixFS Data: {name} claims {length} bytes, {end - pos} remain")
            chunk = buf[pos : pos + length]
            pos += length
            if field == 2:
                values["data"] = chunk
            elif field == 8:
                values["mtime"] = _decode_unixtime(chunk)
            else:  # packed blocksizes
                p = 0
                while p < len(chunk):
                    size, p = read_uvarint(chunk, p, what="UnixFS packed blocksizes")
                    blocksizes.append(size)
            continue
        if wt != 0:
            raise DecodeError(f"UnixFS Data: {name} has wire type {wt}, expected varint")
        value, pos = read_uvarint(buf, pos, what=f"UnixFS {name}")
        if field == 1:
            try:
                values["type"] = DataType(value)
            except ValueError:
                raise DecodeError(f"UnixFS Data: unknown Type {value}") from None
        elif field == 3:
            values["filesize"] = value
        elif field == 4:
            blocksizes.append(value)
        elif field == 5:
            values["hash_type"] = value
        elif field == 6:
            values["fanout"] = value
        else:
            if value > 0xFFFFFFFF:
                raise DecodeError(f"UnixFS Data: mode {value} does not fit in uint32")
            values["mode"] = value
    if "type" not in values:
        raise DecodeError("UnixFS Data: missing Type")
    msg = UnixFSData(blocksizes=tuple(blocksizes), **values)  # type: ignore[arg-type]
    if msg.type == DataType.HAMT_SHARD:
        fanout = msg.fanout
        if fanout is None or fanout < 8 or fanout > _MAX_FANOUT or fanout & (fanout - 1):
            raise DecodeError(
                f"UnixFS HAMT shard: fanout {fanout} is not a power of two in 8..1024"
            )
    return msg
