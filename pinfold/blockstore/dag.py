"""DAG traversal over any supported codec, and a minimal strict DAG-CBOR codec.

``links`` lists a block's outgoing CIDs (raw: none; dag-pb: its links;
dag-cbor: every tag-42 CID in it). ``walk`` visits every distinct CID of a
DAG in pre-order depth-first, links in stored order, each CID once: the order
Kubo's ``dag export`` writes a CAR in (go-ipld-prime traversal, DFS pre-order,
duplicates skipped). Recursive pins (refcounts over distinct blocks) and CAR
export use it.

The DAG-CBOR codec (spec: ipld/ipld ``specs/codecs/dag-cbor/spec.md``)
implements the strict subset: definite lengths only, minimal integer and
length encodings, map keys are unique text strings in canonical order
(shorter first, then bytewise), floats only as 64-bit and finite, tag 42
(a CID, byte string with a leading 0x00) is the only tag, simple values only
false/true/null. It is enough for CAR headers and for finding links; anything
outside it is a ``DecodeError`` that names the problem.
"""

from __future__ import annotations

import inspect
import math
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final

from pinfold.blockstore import dagpb
from pinfold.blockstore.cid import CID, DAG_CBOR, DAG_PB, IDENTITY, RAW
from pinfold.blockstore.dagpb import decode_cid
from pinfold.blockstore.errors import BlockNotFound, DecodeError

__all__ = ["cbor_decode", "cbor_encode", "links", "walk", "walk_blocks"]

GetBlock = Callable[[CID], Awaitable[bytes]]
HasBlock = Callable[[CID], bool | Awaitable[bool]]

#: Deepest nesting accepted; keeps the recursive decoder far from Python's recursion limit.
_MAX_DEPTH: Final = 256


# =========================================================================== DAG-CBOR


def _head(major: int, value: int) -> bytes:
    if value < 24:
        return bytes((major << 5 | value,))
    if value < 0x100:
        return bytes((major << 5 | 24, value))
    if value < 0x10000:
        return bytes((major << 5 | 25,)) + value.to_bytes(2, "big")
    if value < 0x100000000:
        return bytes((major << 5 | 26,)) + value.to_bytes(4, "big")
    if value < 1 << 64:
        return bytes((major << 5 | 27,)) + value.to_bytes(8, "big")
    raise ValueError(f"integer {value} does not fit in 64 bits")


def _map_key(key: str) -> tuple[int, bytes]:
    b = key.encode("utf-8")
    return (len(b), b)


def cbor_encode(value: Any) -> bytes:
    """Encode a value as canonical DAG-CBOR.

    Supports ``None``, ``bool``, ``int`` (-2**64..2**64-1), finite ``float``
    (as float64), ``bytes``, ``str``, ``list``/``tuple``, ``dict`` with
    ``str`` keys (sorted canonically) and ``CID`` (tag 42).

    Raises:
        ValueError: an unsupported type, non-string map key, NaN/Infinity,
            or an integer out of range.
    """
    out = bytearray()

    def enc(v: Any, depth: int) -> None:
        if depth > _MAX_DEPTH:
            raise ValueError("value nested too deeply")
        if v is None:
            out.append(0xF6)
        elif v is True:
            out.append(0xF5)
        elif v is False:
            out.append(0xF4)
        elif isinstance(v, int):
            out.extend(_head(0, v) if v >= 0 else _head(1, -1 - v))
        elif isinstance(v, float):
            if not math.isfinite(v):
                raise ValueError("DAG-CBOR forbids NaN and Infinity")
            out.append(0xFB)
            out.extend(struct.pack(">d", v))
        elif isinstance(v, CID):
            raw = b"\x00" + bytes(v)
            out.extend(b"\xd8\x2a")
            out.extend(_head(2, len(raw)))
            out.extend(raw)
        elif isinstance(v, (bytes, bytearray, memoryview)):
            b = bytes(v)
            out.extend(_head(2, len(b)))
            out.extend(b)
        elif isinstance(v, str):
            b = v.encode("utf-8")
            out.extend(_head(3, len(b)))
            out.extend(b)
        elif isinstance(v, (list, tuple)):
            out.extend(_head(4, len(v)))
            for item in v:
                enc(item, depth + 1)
        elif isinstance(v, dict):
            for k in v:
                if not isinstance(k, str):
                    raise TypeError(f"DAG-CBOR map keys must be strings, got {type(k).__name__}")
            out.extend(_head(5, len(v)))
            for k in sorted(v, key=_map_key):
                enc(k, depth + 1)
                enc(v[k], depth + 1)
        else:
            raise ValueError(f"cannot encode {type(v).__name__} as DAG-CBOR")

    enc(value, 0)
    return bytes(out)


class _CborReader:
    __slots__ = ("buf", "cids", "pos")

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.pos = 0
        self.cids: list[CID] = []

    def fail(self, msg: str, at: int | None = None) -> DecodeError:
        return DecodeError(f"DAG-CBOR: {msg} at byte {self.pos if at is None else at}")

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.buf):
            raise self.fail(f"truncated: needs {n} bytes, {len(self.buf) - self.pos} remain")
        b = self.buf[self.pos : self.pos + n]
        self.pos += n
        return b

    def head(self) -> tuple[int, int, int]:
        at = self.pos
        first = self.take(1)[0]
        major, info = first >> 5, first & 0x1F
        if major == 7:
            return major, info, at
        if info < 24:
            return major, info, at
        if info == 31:
            raise self.fail("indefinite-length item (forbidden in DAG-CBOR)", at)
        if info > 27:
            raise self.fail(f"reserved additional information {info}", at)
        size = 1 << (info - 24)
        value = int.from_bytes(self.take(size), "big")
        if value < (24 if info == 24 else 1 << (8 * (size // 2))):
            raise self.fail("integer or length not minimally encoded", at)
        return major, value, at

    def item(self, depth: int) -> Any:
        if depth > _MAX_DEPTH:
            raise self.fail(f"nesting deeper than {_MAX_DEPTH}")
        major, value, at = self.head()
        if major == 0:
            return value
        if major == 1:
            return -1 - value
        if major == 2:
            return self.take(value)
        if major == 3:
            try:
                return self.take(value).decode("utf-8")
            except UnicodeDecodeError:
                raise self.fail("text string is not valid UTF-8", at) from None
        if major == 4:
            items = []
            for _ in range(value):
                items.append(self.item(depth + 1))
            return items
        if major == 5:
            result: dict[str, Any] = {}
            last: tuple[int, bytes] | None = None
            for _ in range(value):
                key_at = self.pos
                key = self.item(depth + 1)
                if not isinstance(key, str):
                    raise self.fail(
                        f"map key is {type(key).__name__}, DAG-CBOR needs text strings", key_at
                    )
                sort_key = _map_key(key)
                if last is not None and sort_key <= last:
                    what = (
                        "duplicate map key"
                        if sort_key == last
                        else "map keys not in canonical order"
                    )
                    raise self.fail(f"{what} ({key!r})", key_at)
                last = sort_key
                result[key] = self.item(depth + 1)
            return result
        if major == 6:
            if value != 42:
                raise self.fail(f"tag {value} (DAG-CBOR allows only tag 42, CID)", at)
            content_at = self.pos
            content = self.item(depth + 1)
            if not isinstance(content, bytes) or not content or content[0] != 0:
                raise self.fail(
                    "tag 42 content must be a byte string starting with 0x00", content_at
                )
            cid = decode_cid(content[1:], what=f"DAG-CBOR CID at byte {content_at}")
            self.cids.append(cid)
            return cid
        # major 7
        if value == 20:
            return False
        if value == 21:
            return True
        if value == 22:
            return None
        if value == 27:
            (f,) = struct.unpack(">d", self.take(8))
            if not math.isfinite(f):
                raise self.fail("NaN or Infinity (forbidden in DAG-CBOR)", at)
            return f
        if value in (25, 26):
            raise self.fail("16- or 32-bit float (DAG-CBOR needs 64-bit)", at)
        raise self.fail(f"simple value {value} (only false, true, null allowed)", at)


def cbor_decode(data: bytes | bytearray | memoryview) -> Any:
    """Decode one DAG-CBOR value (the whole input); tag-42 values become ``CID``.

    Raises:
        DecodeError: the input is not strict DAG-CBOR (see module docstring),
            is truncated, or has trailing bytes.
    """
    return _decode_with_links(data)[0]


def _decode_with_links(data: bytes | bytearray | memoryview) -> tuple[Any, list[CID]]:
    reader = _CborReader(bytes(data))
    if not reader.buf:
        raise DecodeError("DAG-CBOR: empty input")
    value = reader.item(0)
    if reader.pos != len(reader.buf):
        raise DecodeError(
            f"DAG-CBOR: {len(reader.buf) - reader.pos} trailing bytes after the value"
        )
    return value, reader.cids


# =========================================================================== links & walk


def links(cid: CID, data: bytes | bytearray | memoryview) -> list[CID]:
    """The CIDs a block links to, in stored order (duplicates kept).

    Args:
        cid: the block's CID (its codec decides how ``data`` is read).
        data: the block bytes.

    Returns:
        raw: ``[]``; dag-pb: each link's Hash; dag-cbor: every tag-42 CID in
        document order.

    Raises:
        DecodeError: ``data`` is malformed for the codec, or the codec is one
            pinfold cannot read links from (e.g. dag-json).
    """
    code = cid.codec.code
    if code == RAW:
        return []
    if code == DAG_PB:
        return [link.hash for link in dagpb.decode(data).links]
    if code == DAG_CBOR:
        return _decode_with_links(data)[1]
    raise DecodeError(f"cannot read links of {cid}: codec {cid.codec.name} is not supported")


async def _has(has_block: HasBlock, cid: CID) -> bool:
    result = has_block(cid)
    if inspect.isawaitable(result):
        result = await result
    return bool(result)


async def _walk(
    get_block: GetBlock,
    root: CID,
    has_block: HasBlock | None,
    read_raw: bool,
    prefetch: Callable[[list[CID]], object] | None = None,
) -> AsyncIterator[tuple[CID, bytes | None]]:
    stack = [root]
    seen: set[bytes] = set()
    while stack:
        cid = stack.pop()
        key = bytes(cid)
        if key in seen:
            continue
        seen.add(key)
        if cid.hashfun.code == IDENTITY:
            # Inline data is never stored or yielded, but its links are part of the DAG.
            stack.extend(reversed(links(cid, bytes(cid.raw_digest))))
            continue
        if cid.codec.code == RAW and not read_raw:
            if has_block is not None and not await _has(has_block, cid):
                raise BlockNotFound(cid)
            yield cid, None
            continue
        data = await get_block(cid)
        yield cid, data
        children = links(cid, data)
        if prefetch is not None:
            wanted = {
                bytes(c): c
                for c in children
                if bytes(c) not in seen
                and c.hashfun.code != IDENTITY
                and (read_raw or c.codec.code != RAW)
            }
            if wanted:
                prefetch(list(wanted.values()))
        stack.extend(reversed(children))


async def walk(
    get_block: GetBlock,
    root: CID,
    *,
    has_block: HasBlock | None = None,
    prefetch: Callable[[list[CID]], object] | None = None,
) -> AsyncIterator[CID]:
    """Yield every distinct CID of the DAG under ``root`` (root included), pre-order DFS.

    Identity CIDs are skipped (their links are followed). Raw-codec blocks
    have no links, so they are not read: with ``has_block`` their presence is
    checked instead, without it they are yielded unchecked. Every other block
    is read once with ``get_block``, after which it is yielded.

    Args:
        get_block: ``await get_block(cid) -> bytes``; raises ``BlockNotFound``
            for an absent block (that propagates).
        root: the DAG root.
        has_block: ``has_block(cid) -> bool`` (plain or async), checked for
            raw-codec CIDs.
        prefetch: called after each block is read with the not-yet-visited
            children this walk will read (raw ones omitted, as ``walk`` does
            not read them), so a driver can want them from peers ahead of
            time. Must not block.

    Raises:
        BlockNotFound: a raw block is absent (``has_block`` said False), or
            ``get_block`` raised it.
        DecodeError: a block is malformed or of an unsupported codec.
    """
    async for cid, _ in _walk(get_block, root, has_block, read_raw=False, prefetch=prefetch):
        yield cid


async def walk_blocks(
    get_block: GetBlock,
    root: CID,
    *,
    prefetch: Callable[[list[CID]], object] | None = None,
) -> AsyncIterator[tuple[CID, bytes]]:
    """Like ``walk`` but yields ``(cid, block bytes)``, reading raw blocks too (for CAR export).

    ``prefetch`` is as for ``walk``, raw children included.
    """
    async for cid, data in _walk(get_block, root, None, read_raw=True, prefetch=prefetch):
        assert data is not None
        yield cid, data
