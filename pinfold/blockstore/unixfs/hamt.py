"""HAMT-sharded UnixFS directories: the hash and bucket rules shared by reader and
writer, Kubo's rule for when a directory is sharded, and the shard writer.

Spec: ipfs/specs ``src/unixfs.md`` ("HAMTDirectory"); the writer produces the
blocks boxo v0.11.0 (Kubo v0.22) writes (``ipld/unixfs/io/directory.go``,
``ipld/unixfs/hamt/hamt.go``, ``go-bitfield`` v1.1.0):

- a directory is sharded when the sum over its entries of ``len(name bytes) +
  len(CID bytes)`` is ``>= HAMT_SHARDING_BYTES`` (256 KiB), checked as entries
  are added; an import only adds, so the final sum decides;
- fanout 256, hash murmur3-x64-64 (multicodec 0x22): the first 64 bits of
  murmur3-x64-128 with seed 0, read 8 bits per level from the most significant;
- a bucket holding one entry is a link named ``"%02X" % index + name`` carrying
  the entry's own CID and Tsize; a bucket holding several is a sub-shard linked as
  ``"%02X" % index`` with Tsize = sub-shard block bytes + its links' Tsizes
  (insert-only, so the tree does not depend on insertion order);
- links in bucket order; ``Data`` = UnixFS ``{Type: HAMTShard, Data: bitfield,
  hashType: 0x22, fanout: 256}``, the bitfield big-endian with bit ``i`` set for
  each used bucket ``i`` and leading zero bytes dropped;
- every shard block gets the directory's CID version (dag-pb, sha2-256).

Imports ``cid``, ``dagpb``, ``varint``, ``unixfs.data`` and ``unixfs.importer``; sans-IO.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Final

import mmh3

from pinfold.blockstore.cid import CID, DAG_PB, check_block_size
from pinfold.blockstore.dagpb import encode_link, new_cid
from pinfold.blockstore.unixfs.data import DataType, UnixFSData, encode_data
from pinfold.blockstore.unixfs.importer import _SHA256_PREFIX
from pinfold.blockstore.varint import encode_uvarint

#: multicodec of murmur3-x64-64, the only HAMT hash function UnixFS defines.
MURMUR3_X64_64: Final = 0x22
#: Buckets per shard Kubo writes (boxo ``DefaultShardWidth``).
HAMT_FANOUT: Final = 256
#: Kubo's sharding threshold in bytes of estimated size (boxo ``HAMTShardingSize``).
HAMT_SHARDING_BYTES: Final = 256 * 1024
#: Bits of the 64-bit hash; a shard tree is at most 64 / log2(fanout) levels deep.
HASH_BITS: Final = 64

#: One directory entry as the writer takes it: (name UTF-8 bytes, binary CID, Tsize bytes).
Entry = tuple[bytes, bytes, int]


class ShardTooDeep(ValueError):
    """Two entry names have the same 64-bit hash, so no shard tree can separate them."""


def hamt_hash(name: str | bytes) -> int:
    """murmur3-x64-64 of ``name`` (``str`` is UTF-8 encoded) as an unsigned 64-bit int:
    the first half of murmur3-x64-128, seed 0, as boxo and js-unixfs use it."""
    raw = name.encode("utf-8") if isinstance(name, str) else name
    return mmh3.hash64(raw, seed=0, x64arch=True, signed=False)[0]


def bucket_index(h: int, used_bits: int, bits: int) -> int:
    """The bucket of hash ``h`` at the level that reads ``bits`` bits after the
    ``used_bits`` most significant ones.

    Raises:
        ShardTooDeep: the 64-bit hash has fewer than ``used_bits + bits`` bits.
    """
    if used_bits + bits > HASH_BITS:
        raise ShardTooDeep(f"HAMT deeper than a {HASH_BITS}-bit hash allows")
    return (h >> (HASH_BITS - used_bits - bits)) & ((1 << bits) - 1)


def prefix_width(fanout: int) -> int:
    """Characters of a link-name prefix: hex digits of ``fanout - 1`` (2 for 256)."""
    return len(f"{fanout - 1:X}")


def link_prefix(index: int, fanout: int) -> str:
    """The upper-case hex bucket prefix of a shard link, zero-padded (``"0A"``)."""
    return f"{index:0{prefix_width(fanout)}X}"


def estimated_size(entries: Sequence[Entry]) -> int:
    """Kubo's estimate of a basic directory's size: name bytes + CID bytes per entry."""
    return sum(len(name) + len(cid) for name, cid, _ in entries)


def should_shard(entries: Sequence[Entry]) -> bool:
    """Whether Kubo v0.22 writes these entries as a HAMT shard (estimate >= 256 KiB)."""
    return estimated_size(entries) >= HAMT_SHARDING_BYTES


def build_shard(
    entries: Sequence[Entry], cid_version: int, fanout: int = HAMT_FANOUT
) -> tuple[list[tuple[CID, bytes]], CID, int]:
    """Write ``entries`` (distinct names) as a HAMT-sharded directory.

    Args:
        entries: ``(name bytes, binary CID, Tsize bytes)`` per entry, any order.
        cid_version: 0 or 1, the version of every shard block's CID.
        fanout: buckets per shard, a power of two in 8..1024.

    Returns:
        ``(blocks, root CID, root Tsize in bytes)``: every shard block, sub-shards
        before their parents, the root's last.

    Raises:
        ShardTooDeep: two names share all 64 hash bits.
        BlockTooLarge: a shard block would exceed 2 MiB (only with names of
            thousands of bytes).
    """
    bits = fanout.bit_length() - 1
    if fanout != 1 << bits or not 8 <= fanout <= 1024:
        raise ValueError(f"HAMT fanout must be a power of two in 8..1024, got {fanout}")
    hashed = [(hamt_hash(name), name, cid, tsize) for name, cid, tsize in entries]
    blocks: list[tuple[CID, bytes]] = []
    cid, tsize = _shard(hashed, 0, bits, fanout, cid_version, blocks)
    return blocks, cid, tsize


def _shard(
    items: list[tuple[int, bytes, bytes, int]], used: int, bits: int, fanout: int,
    version: int, out: list[tuple[CID, bytes]],
) -> tuple[CID, int]:
    """One shard (recursing into sub-shards, at most 64 / bits levels); returns
    ``(CID, Tsize)`` and appends its blocks to ``out``."""
    buckets: dict[int, list[tuple[int, bytes, bytes, int]]] = {}
    for item in items:
        buckets.setdefault(bucket_index(item[0], used, bits), []).append(item)
    links = []
    total = 0
    bitfield = 0
    for index in sorted(buckets):
        bucket = buckets[index]
        prefix = link_prefix(index, fanout).encode()
        bitfield |= 1 << index
        if len(bucket) == 1:
            _, name, cid, tsize = bucket[0]
            links.append(encode_link(cid, prefix + name, tsize))
        else:
            if used + bits >= HASH_BITS:
                names = ", ".join(repr(b[1].decode("utf-8", "replace")) for b in bucket)
                raise ShardTooDeep(f"directory entries {names} have the same 64-bit "
                                   "HAMT hash; they cannot share a sharded directory")
            sub, tsize = _shard(bucket, used + bits, bits, fanout, version, out)
            links.append(encode_link(bytes(sub), prefix, tsize))
        total += tsize
    data = encode_data(UnixFSData(
        type=DataType.HAMT_SHARD,
        data=bitfield.to_bytes((bitfield.bit_length() + 7) // 8, "big"),
        hash_type=MURMUR3_X64_64,
        fanout=fanout,
    ))
    block = b"".join(links) + b"\x0a" + encode_uvarint(len(data)) + data
    check_block_size(len(block))
    cid = new_cid(version, DAG_PB, _SHA256_PREFIX + hashlib.sha256(block).digest())
    out.append((cid, block))
    return cid, len(block) + total
