"""Unsigned varints (multiformats ``unsigned-varint``, protobuf base-128): the one codec.

Every codec in pinfold (dag-pb, UnixFS, CAR, CIDs, the Bitswap wire format)
reads and writes its varints here. A varint is little-endian base-128, seven
bits a byte, high bit set on every byte but the last; at most 10 bytes and 64
bits. Pure functions on bytes; imports only ``pinfold.blockstore.errors``.
"""

from __future__ import annotations

from typing import Final

from pinfold.blockstore.errors import DecodeError

__all__ = ["MAX_UINT64", "encode_uvarint", "read_uvarint", "try_read_uvarint"]

MAX_UINT64: Final = (1 << 64) - 1


def encode_uvarint(value: int) -> bytes:
    """``value`` as a minimal unsigned varint (1 to 10 bytes).

    Raises:
        ValueError: ``value`` is negative or does not fit in 64 bits.
    """
    if value < 0x80:
        if value < 0:
            raise ValueError(f"varint must be >= 0, got {value}")
        return bytes((value,))
    if value > MAX_UINT64:
        raise ValueError(f"varint must fit in 64 bits, got {value}")
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def read_uvarint(
    buf: bytes | bytearray | memoryview,
    pos: int,
    end: int | None = None,
    *,
    what: str = "varint",
    minimal: bool = False,
    error: type[Exception] = DecodeError,
    base: int = 0,
) -> tuple[int, int]:
    """Read an unsigned varint from ``buf[pos:end]``.

    Args:
        buf: the bytes.
        pos: offset of the first varint byte.
        end: offset the varint may not reach (default ``len(buf)``).
        what: name used in error messages.
        minimal: reject non-minimal encodings (multiformats rule; protobuf
            itself tolerates them).
        error: the exception class raised (a codec's own ``DecodeError`` kind).
        base: added to ``pos`` for the byte offset an error message names.

    Returns:
        ``(value, offset just past the varint)``.

    Raises:
        error: the varint is truncated, longer than 10 bytes, exceeds 64 bits,
            or (``minimal``) ends in a redundant zero byte.
    """
    if end is None:
        end = len(buf)
    result = 0
    shift = 0
    start = pos
    while True:
        if pos >= end:
            raise error(f"truncated {what} at byte {start + base}")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            break
        shift += 7
        if shift >= 70:
            raise error(f"{what} at byte {start + base} is longer than 10 bytes")
    if result > MAX_UINT64:
        raise error(f"{what} at byte {start + base} exceeds 64 bits")
    if minimal and b == 0 and pos - start > 1:
        raise error(f"{what} at byte {start + base} is not minimally encoded")
    return result, pos


def try_read_uvarint(
    buf: bytes | bytearray | memoryview,
    pos: int,
    *,
    what: str = "varint",
    minimal: bool = False,
    error: type[Exception] = DecodeError,
    base: int = 0,
    max_bytes: int = 10,
) -> tuple[int, int] | None:
    """Like ``read_uvarint`` for a stream: ``None`` while the varint is incomplete.

    ``max_bytes`` (at most 10) caps the varint's length, e.g. 9 for a
    multiformats ``unsigned-varint`` length prefix.

    Raises:
        error: as ``read_uvarint`` for a varint that can never become valid.
    """
    end = min(len(buf), pos + max_bytes)
    for i in range(pos, end):
        if buf[i] < 0x80:
            return read_uvarint(buf, pos, i + 1, what=what, minimal=minimal, error=error,
                                base=base)
    if end - pos >= max_bytes:
        raise error(f"{what} at byte {pos + base} is longer than {max_bytes} bytes")
    return None
