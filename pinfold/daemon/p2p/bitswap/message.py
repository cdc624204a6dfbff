"""Bitswap wire format: the message records and a hand-written, strict protobuf codec.

Follows ipfs/specs ``src/bitswap-protocol.md``:

* "Protocol Format": every message on a stream is prefixed with its length as
  an unsigned varint (multiformats/unsigned-varint, at most 9 bytes); messages
  MUST be <= 4 MiB.
* "Bitswap 1.2.0: Wire Format"::

    message Message {
      message Wantlist {
        enum WantType { Block = 0; Have = 1; }
        message Entry {
          bytes block = 1; int32 priority = 2; bool cancel = 3;
          WantType wantType = 4; bool sendDontHave = 5;
        }
        repeated Entry entries = 1; bool full = 2;
      }
      message Block { bytes prefix = 1; bytes data = 2; }
      enum BlockPresenceType { Have = 0; DontHave = 1; }
      message BlockPresence { bytes cid = 1; BlockPresenceType type = 2; }
      Wantlist wantlist = 1;
      repeated bytes blocks = 2;          // 1.0.0: CIDv0 (dag-pb, sha2-256) blocks
      repeated Block payload = 3;         // 1.1.0+
      repeated BlockPresence blockPresences = 4;
      int32 pendingBytes = 5;
    }

Strictness: wire types must match the schema, lengths must fit, varints must be
minimal-length-bounded (<= 10 bytes) and CIDs must parse; unknown fields with a
valid wire type are skipped (protobuf forward compatibility); groups are refused.
Blocks over 2 MiB are refused. Errors are ``MalformedMessage`` /
``MessageTooLarge`` (the peer broke the protocol).

Everything here is pure: bytes in, values out. Framing (the length prefix on
a stream) is ``framing``; ``FrameDecoder``, ``frame`` and ``MAX_MESSAGE_SIZE``
are re-exported here, as is ``CidPrefix`` from ``prefix`` (a block's CID prefix).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from pinfold.blockstore.cid import CID, MAX_BLOCK_SIZE, cid_key
from pinfold.blockstore.dagpb import decode_cid
from pinfold.blockstore.varint import encode_uvarint, read_uvarint

from pinfold.daemon.p2p.bitswap.errors import MalformedMessage, MessageTooLarge
from pinfold.daemon.p2p.bitswap.framing import MAX_MESSAGE_SIZE, FrameDecoder, frame
from pinfold.daemon.p2p.bitswap.prefix import V0_PREFIX, CidPrefix

__all__ = [
    "MAX_MESSAGE_SIZE",
    "PROTOCOLS",
    "PROTOCOL_1_0_0",
    "PROTOCOL_1_1_0",
    "PROTOCOL_1_2_0",
    "Block",
    "BlockPresence",
    "CidPrefix",
    "FrameDecoder",
    "Message",
    "PresenceType",
    "WantEntry",
    "WantType",
    "block_size_on_wire",
    "decode_message",
    "encode_framed",
    "encode_message",
    "encode_uvarint",
    "costly_to_decode",
    "entry_size",
    "frame",
]

PROTOCOL_1_2_0: Final = "/ipfs/bitswap/1.2.0"
PROTOCOL_1_1_0: Final = "/ipfs/bitswap/1.1.0"
PROTOCOL_1_0_0: Final = "/ipfs/bitswap/1.0.0"
#: Protocols we answer and dial, most preferred first.
PROTOCOLS: Final = (PROTOCOL_1_2_0, PROTOCOL_1_1_0, PROTOCOL_1_0_0)

_V0_PREFIX: Final = b"\x00\x70\x12\x20"  # CIDv0: version 0, dag-pb, sha2-256, 32 bytes


class WantType(enum.IntEnum):
    """``Wantlist.WantType``: send the block, or only say whether you have it."""

    BLOCK = 0
    HAVE = 1


class PresenceType(enum.IntEnum):
    """``BlockPresenceType``."""

    HAVE = 0
    DONT_HAVE = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class WantEntry:
    """One ``Wantlist.Entry``.

    Attributes:
        cid: the CID wanted (or cancelled).
        priority: higher is served first; spec default 1.
        cancel: True revokes an earlier want for ``cid``.
        want_type: BLOCK or HAVE (1.2.0; absent means BLOCK).
        send_dont_have: ask for DONT_HAVE when the block is missing (1.2.0).
    """

    cid: CID
    priority: int = 1
    cancel: bool = False
    want_type: WantType = WantType.BLOCK
    send_dont_have: bool = False

    def __post_init__(self) -> None:
        if not -(2**31) <= self.priority < 2**31:
            raise ValueError(f"want priority {self.priority} does not fit an int32")


@dataclass(frozen=True, slots=True, kw_only=True)
class BlockPresence:
    """One ``BlockPresence``: HAVE or DONT_HAVE for ``cid``."""

    cid: CID
    type: PresenceType


@dataclass(frozen=True, slots=True, kw_only=True)
class Block:
    """A block on the wire: the CID prefix and the data (bytes or a view into a frame)."""

    prefix: CidPrefix
    data: bytes | memoryview


@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    """One Bitswap message.

    Attributes:
        wantlist: wantlist entries (wants and cancels).
        full: True when ``wantlist`` replaces the receiver's copy of our wantlist.
        blocks: blocks sent (``payload``; ``blocks`` on 1.0.0).
        presences: HAVE/DONT_HAVE answers (1.2.0).
        pending_bytes: bytes the sender still has queued for the receiver (1.2.0).
    """

    wantlist: tuple[WantEntry, ...] = ()
    full: bool = False
    blocks: tuple[Block, ...] = ()
    presences: tuple[BlockPresence, ...] = ()
    pending_bytes: int = 0

    def is_empty(self) -> bool:
        """True when the message carries nothing (and is not a full-wantlist reset)."""
        return not (self.wantlist or self.blocks or self.presences or self.full)


# ---------------------------------------------------------------- varints


def _read_varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    return read_uvarint(buf, pos, end, error=MalformedMessage)


def _key(field_no: int, wire: int) -> bytes:
    return encode_uvarint((field_no << 3) | wire)


def _len_field(field_no: int, payload: bytes) -> bytes:
    return _key(field_no, 2) + encode_uvarint(len(payload)) + payload


def _int32_varint(value: int) -> bytes:
    # protobuf int32: negatives are sign-extended to 64 bits (10-byte varint)
    return encode_uvarint(value if value >= 0 else value + (1 << 64))


# ---------------------------------------------------------------- encoding


def _encode_entry(e: WantEntry) -> bytes:
    # priority is always written: proto3 would omit 0, and the spec reads absence as 1
    parts = [_len_field(1, bytes(e.cid)), _key(2, 0) + _int32_varint(e.priority)]
    if e.cancel:
        parts.append(b"\x18\x01")
    if e.want_type != WantType.BLOCK:
        parts.append(b"\x20" + encode_uvarint(int(e.want_type)))
    if e.send_dont_have:
        parts.append(b"\x28\x01")
    return b"".join(parts)


def entry_size(e: WantEntry) -> int:
    """Bytes ``e`` takes inside a message (for packing messages under the limit)."""
    body = len(_encode_entry(e))
    return 1 + len(encode_uvarint(body)) + body + 2  # + wantlist overhead share


def block_size_on_wire(prefix_len: int, data_len: int) -> int:
    """Bytes a block with a ``prefix_len`` prefix and ``data_len`` data takes in a message."""
    body = 2 + prefix_len + 1 + len(encode_uvarint(data_len)) + data_len
    return 1 + len(encode_uvarint(body)) + body


def encode_message(msg: Message, *, protocol: str = PROTOCOL_1_2_0) -> bytes:
    """Serialize ``msg`` for a peer speaking ``protocol``.

    On 1.0.0 blocks go in the ``blocks`` field (only CIDv0 blocks are sent; others
    are left out) and HAVE wants, presences and pendingBytes are dropped; on
    1.1.0 presences and pendingBytes are dropped.

    Returns:
        The protobuf bytes (without the length prefix).
    """
    return b"".join(_encode_parts(msg, protocol))


def encode_framed(msg: Message, *, protocol: str = PROTOCOL_1_2_0) -> bytes:
    """``msg`` serialized for ``protocol`` with its uvarint length prefix, in one buffer.

    Raises:
        ValueError: the message is over 4 MiB (the caller must split it).
    """
    parts = _encode_parts(msg, protocol)
    n = sum(len(p) for p in parts)
    if n > MAX_MESSAGE_SIZE:
        raise ValueError(f"message of {n} bytes exceeds the {MAX_MESSAGE_SIZE}-byte limit")
    parts.insert(0, encode_uvarint(n))
    return b"".join(parts)


def _encode_parts(msg: Message, protocol: str) -> list[bytes]:
    parts: list[bytes] = []
    v12 = protocol == PROTOCOL_1_2_0
    if msg.wantlist or msg.full:
        entries = msg.wantlist
        if not v12:
            entries = tuple(e for e in entries if e.want_type == WantType.BLOCK)
        wl = [_len_field(1, _encode_entry(e)) for e in entries]
        if msg.full:
            wl.append(b"\x10\x01")
        parts.append(_len_field(1, b"".join(wl)))
    for blk in msg.blocks:
        if protocol == PROTOCOL_1_0_0:
            if blk.prefix != V0_PREFIX:
                continue
            parts.append(_key(2, 2) + encode_uvarint(len(blk.data)))
            parts.append(blk.data)  # type: ignore[arg-type]
        else:
            prefix = blk.prefix.to_bytes()
            inner_len = 2 + len(prefix) + 1 + len(encode_uvarint(len(blk.data))) + len(blk.data)
            parts.append(_key(3, 2) + encode_uvarint(inner_len))
            parts.append(b"\x0a" + encode_uvarint(len(prefix)) + prefix)
            parts.append(b"\x12" + encode_uvarint(len(blk.data)))
            parts.append(blk.data)  # type: ignore[arg-type]
    if v12:
        for p in msg.presences:
            body = _len_field(1, bytes(p.cid))
            if p.type != PresenceType.HAVE:
                body += b"\x10" + encode_uvarint(int(p.type))
            parts.append(_len_field(4, body))
        if msg.pending_bytes:
            parts.append(_key(5, 0) + _int32_varint(min(msg.pending_bytes, 2**31 - 1)))
    return parts


# ---------------------------------------------------------------- decoding


def _skip(buf: memoryview, pos: int, end: int, wire: int) -> int:
    if wire == 0:
        return _read_varint(buf, pos, end)[1]
    if wire == 1:
        pos += 8
    elif wire == 2:
        n, pos = _read_varint(buf, pos, end)
        pos += n
    elif wire == 5:
        pos += 4
    else:
        raise MalformedMessage(f"protobuf wire type {wire} (groups/invalid) is not allowed")
    if pos > end:
        raise MalformedMessage("truncated field")
    return pos


def _read_len(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    n, pos = _read_varint(buf, pos, end)
    if pos + n > end:
        raise MalformedMessage("length-delimited field runs past the end of its message")
    return pos, pos + n


def _parse_cid(raw: memoryview, what: str) -> CID:
    # dagpb's binary CID decoder: ~8 us a CID where multiformats' CID.decode takes
    # ~230 us, which let one 4 MiB message of ~100k wants stall the daemon ~20 s.
    try:
        return decode_cid(raw, what=what)
    except Exception as exc:
        raise MalformedMessage(f"{what} is not a CID: {exc}") from exc


def _int32(value: int) -> int:
    value &= (1 << 64) - 1
    if value >= 1 << 63:
        value -= 1 << 64
    if not -(2**31) <= value < 2**31:
        raise MalformedMessage(f"int32 field out of range: {value}")
    return value


def _bool(value: int, what: str) -> bool:
    if value > 1:
        raise MalformedMessage(f"{what} is not a bool: {value}")
    return bool(value)


def _decode_entry(buf: memoryview, pos: int, end: int) -> WantEntry:
    cid = None
    priority = 1  # spec: "default to 1" when absent
    cancel = False
    want_type = WantType.BLOCK
    sdh = False
    while pos < end:
        key, pos = _read_varint(buf, pos, end)
        fno, wire = key >> 3, key & 7
        if fno == 1 and wire == 2:
            s, pos = _read_len(buf, pos, end)
            cid = _parse_cid(buf[s:pos], "wantlist entry block")
        elif fno == 2 and wire == 0:
            v, pos = _read_varint(buf, pos, end)
            priority = _int32(v)
        elif fno == 3 and wire == 0:
            v, pos = _read_varint(buf, pos, end)
            cancel = _bool(v, "cancel")
        elif fno == 4 and wire == 0:
            v, pos = _read_varint(buf, pos, end)
            try:
                want_type = WantType(v)
            except ValueError:
                raise MalformedMessage(f"unknown wantType {v}") from None
        elif fno == 5 and wire == 0:
            v, pos = _read_varint(buf, pos, end)
            sdh = _bool(v, "sendDontHave")
        elif fno in (1, 2, 3, 4, 5):
            raise MalformedMessage(f"wantlist entry field {fno} has wire type {wire}")
        else:
            pos = _skip(buf, pos, end, wire)
    if cid is None:
        raise MalformedMessage("wantlist entry without a block CID")
    return WantEntry(
        cid=cid, priority=priority, cancel=cancel, want_type=want_type, send_dont_have=sdh
    )


def _decode_wantlist(buf: memoryview, pos: int, end: int) -> tuple[list[WantEntry], bool]:
    entries: list[WantEntry] = []
    full = False
    while pos < end:
        key, pos = _read_varint(buf, pos, end)
        fno, wire = key >> 3, key & 7
        if fno == 1 and wire == 2:
            s, pos = _read_len(buf, pos, end)
            entries.append(_decode_entry(buf, s, pos))
        elif fno == 2 and wire == 0:
            v, pos = _read_varint(buf, pos, end)
            full = _bool(v, "full")
        elif fno in (1, 2):
            raise MalformedMessage(f"wantlist field {fno} has wire type {wire}")
        else:
            pos = _skip(buf, pos, end, wire)
    return entries, full


def _decode_prefix(raw: memoryview) -> CidPrefix:
    pos, end = 0, len(raw)
    vals = []
    for _ in range(4):
        v, pos = _read_varint(raw, pos, end)
        vals.append(v)
    if pos != end:
        raise MalformedMessage("block prefix has trailing bytes")
    return CidPrefix(version=vals[0], codec=vals[1], mh_code=vals[2], mh_length=vals[3])


def _check_block_len(n: int) -> None:
    if n > MAX_BLOCK_SIZE:
        raise MessageTooLarge(f"block of {n} bytes exceeds the {MAX_BLOCK_SIZE}-byte limit")


def _decode_block(buf: memoryview, pos: int, end: int) -> Block:
    prefix = None
    data: memoryview | None = None
    while pos < end:
        key, pos = _read_varint(buf, pos, end)
        fno, wire = key >> 3, key & 7
        if fno == 1 and wire == 2:
            s, pos = _read_len(buf, pos, end)
            prefix = _decode_prefix(buf[s:pos])
        elif fno == 2 and wire == 2:
            s, pos = _read_len(buf, pos, end)
            _check_block_len(pos - s)
            data = buf[s:pos]
        elif fno in (1, 2):
            raise MalformedMessage(f"block field {fno} has wire type {wire}")
        else:
            pos = _skip(buf, pos, end, wire)
    if prefix is None:
        raise MalformedMessage("payload block without a CID prefix")
    return Block(prefix=prefix, data=data if data is not None else memoryview(b""))


def _decode_presence(buf: memoryview, pos: int, end: int) -> BlockPresence:
    cid = None
    ptype = PresenceType.HAVE
    while pos < end:
        key, pos = _read_varint(buf, pos, end)
        fno, wire = key >> 3, key & 7
        if fno == 1 and wire == 2:
            s, pos = _read_len(buf, pos, end)
            cid = _parse_cid(buf[s:pos], "block presence cid")
        elif fno == 2 and wire == 0:
            v, pos = _read_varint(buf, pos, end)
            try:
                ptype = PresenceType(v)
            except ValueError:
                raise MalformedMessage(f"unknown block presence type {v}") from None
        elif fno in (1, 2):
            raise MalformedMessage(f"block presence field {fno} has wire type {wire}")
        else:
            pos = _skip(buf, pos, end, wire)
    if cid is None:
        raise MalformedMessage("block presence without a CID")
    return BlockPresence(cid=cid, type=ptype)


def decode_message(data: bytes | bytearray | memoryview) -> Message:
    """Parse one Bitswap message (without its length prefix).

    Block data in the result are views into ``data`` (no copy).

    Raises:
        MalformedMessage: not a valid ``Message``.
        MessageTooLarge: ``data`` over 4 MiB, or a block over 2 MiB.
    """
    buf = memoryview(data)
    end = len(buf)
    if end > MAX_MESSAGE_SIZE:
        raise MessageTooLarge(f"message of {end} bytes exceeds {MAX_MESSAGE_SIZE}")
    pos = 0
    wantlist: list[WantEntry] = []
    full = False
    blocks: list[Block] = []
    presences: list[BlockPresence] = []
    pending = 0
    while pos < end:
        key, pos = _read_varint(buf, pos, end)
        fno, wire = key >> 3, key & 7
        if fno == 1 and wire == 2:
            s, pos = _read_len(buf, pos, end)
            entries, f = _decode_wantlist(buf, s, pos)
            # protobuf merges repeated occurrences of a message field
            wantlist.extend(entries)
            full = full or f
        elif fno == 2 and wire == 2:
            s, pos = _read_len(buf, pos, end)
            _check_block_len(pos - s)
            blocks.append(Block(prefix=V0_PREFIX, data=buf[s:pos]))
        elif fno == 3 and wire == 2:
            s, pos = _read_len(buf, pos, end)
            blocks.append(_decode_block(buf, s, pos))
        elif fno == 4 and wire == 2:
            s, pos = _read_len(buf, pos, end)
            presences.append(_decode_presence(buf, s, pos))
        elif fno == 5 and wire == 0:
            v, pos = _read_varint(buf, pos, end)
            pending = max(0, _int32(v))
        elif fno in (1, 2, 3, 4, 5):
            raise MalformedMessage(f"message field {fno} has wire type {wire}")
        else:
            pos = _skip(buf, pos, end, wire)
    return Message(
        wantlist=tuple(wantlist),
        full=full,
        blocks=tuple(blocks),
        presences=tuple(presences),
        pending_bytes=pending,
    )


def costly_to_decode(data: bytes | bytearray | memoryview, *, max_fields: int = 64,
                     max_other_bytes: int = 64 * 1024) -> bool:
    """Whether decoding ``data`` is worth a worker thread: over ``max_fields`` top-level
    fields (each block and presence is one) or ``max_other_bytes`` outside blocks (wants).
    Reads at most ``max_fields`` + 1 field headers; malformed answers False."""
    buf = memoryview(data)
    end = len(buf)
    pos = other = 0
    try:
        for _ in range(max_fields + 1):
            if pos >= end:
                return False
            key, start = _read_varint(buf, pos, end)
            pos = _skip(buf, start, end, key & 7)
            if key >> 3 not in (2, 3):
                other += pos - start
                if other > max_other_bytes:
                    return True
    except MalformedMessage:
        return False
    return True


def presences_for(cids: Iterable[CID], ptype: PresenceType) -> tuple[BlockPresence, ...]:
    """BlockPresence records of one type for ``cids``."""
    return tuple(BlockPresence(cid=c, type=ptype) for c in cids)


def keys_of(cids: Sequence[CID]) -> list[bytes]:
    """Store keys (multihash bytes) of ``cids``."""
    return [cid_key(c) for c in cids]
