"""Child CIDs of a block, for DAG walks.

Uses ``pinfold.blockstore.dag.links(cid, data)`` when the blockstore layer
provides it; until then a minimal dag-pb reader (ipld/specs
``block-layer/codecs/dag-pb.md``: ``PBNode { repeated PBLink Links = 2; bytes
Data = 1; }``, ``PBLink { bytes Hash = 1; string Name = 2; uint64 Tsize = 3; }``)
that returns each link's ``Hash`` as a CID. Raw blocks have no links; other
codecs are treated as leaves.
"""

from __future__ import annotations

from collections.abc import Callable

from pinfold.blockstore.cid import CID, DAG_PB
from pinfold.blockstore.errors import DecodeError

__all__ = ["links"]


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(buf):
            raise DecodeError("dag-pb: truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift >= 64:
            raise DecodeError("dag-pb: varint too long")


def _field(buf: memoryview, pos: int, end: int) -> tuple[int, int, int, int]:
    """Read one field: (field number, wire type, value start/varint value, next pos)."""
    key, pos = _varint(buf, pos)
    fno, wire = key >> 3, key & 7
    if wire == 0:
        v, pos = _varint(buf, pos)
        return fno, wire, v, pos
    if wire == 2:
        n, pos = _varint(buf, pos)
        if pos + n > end:
            raise DecodeError("dag-pb: field runs past the end")
        return fno, wire, pos, pos + n
    raise DecodeError(f"dag-pb: unexpected wire type {wire}")


def _local_dagpb_links(data: bytes | memoryview) -> list[CID]:
    buf = memoryview(data)
    end = len(buf)
    pos = 0
    out: list[CID] = []
    while pos < end:
        fno, wire, start, pos = _field(buf, pos, end)
        if fno == 2 and wire == 2:
            lpos, lend = start, pos
            h = None
            while lpos < lend:
                lf, lw, ls, lpos = _field(buf, lpos, lend)
                if lf == 1 and lw == 2:
                    h = bytes(buf[ls:lpos])
            if h is None:
                raise DecodeError("dag-pb: link without a Hash")
            try:
                out.append(CID.decode(h))
            except Exception as exc:
                raise DecodeError(f"dag-pb: link Hash is not a CID: {exc}") from exc
        elif fno == 1 and wire == 2:
            pass
        else:
            raise DecodeError(f"dag-pb: unexpected field {fno}")
    return out


def _fallback(cid: CID, data: bytes | memoryview) -> list[CID]:
    if cid.codec.code != DAG_PB:
        return []
    return _local_dagpb_links(data)


def _resolve() -> Callable[[CID, bytes | memoryview], list[CID]]:
    try:
        from pinfold.blockstore.dag import links as store_links  # type: ignore[attr-defined]
    except ImportError:
        return _fallback

    def via_store(cid: CID, data: bytes | memoryview) -> list[CID]:
        return list(store_links(cid, bytes(data)))

    return via_store


def links(cid: CID, data: bytes | memoryview) -> list[CID]:
    """CIDs ``data`` (the block named ``cid``) links to, in link order.

    Raises:
        DecodeError: a dag-pb block that does not parse.
    """
    return _impl(cid, data)


_impl = _resolve()
