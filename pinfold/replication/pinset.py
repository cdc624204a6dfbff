"""The shared pinset: a last-writer-wins map CRDT keyed by CID (DESIGN.md "Replication").

Every cluster peer holds a replica. A value is a ``Pin`` or a tombstone (an
unpin); each write carries a hybrid-logical-clock timestamp (``hlc.py``) and
the writer's peer ID, and for one CID the entry with the greatest
``(timestamp, peer ID)`` wins. Merge is therefore commutative, associative and
idempotent: replicas that have seen the same writes hold the same map,
whatever the order and however often the writes arrived. (Two different writes
with the same timestamp and peer ID cannot come from a correct clock; if they
ever do, the one with the greater msgpack encoding wins, which keeps merge
deterministic.)

Scale. A replica of 1,000,000 pins is a dict of ``Entry`` objects plus three
indexes, all O(1) to update:

- *buckets*: each CID falls in one of ``2**tree_bits`` buckets (default
  65,536) by a BLAKE2b hash of its bytes. Listings go bucket by bucket and sort
  only one bucket at a time, so the first entry of a listing comes at once.
- *digest tree*: a complete 16-ary tree over the buckets; each node keeps the
  count of entries below it and the XOR of their 128-bit entry hashes
  (BLAKE2b of the entry's encoding). An update XORs the changed entry out of
  and into its bucket; the upper levels are rebuilt lazily when read. Two
  replicas compare roots, then the children of differing nodes, ... so they
  find the differing buckets in ``tree_bits / 4`` round trips and pull only
  those (``sync.py``). A new replica (root count 0) pulls everything at once.
  The tree is ``digest_tree.DigestTree``.
- *change log*: each change gets a local sequence number (``version``);
  ``delta_since(v)`` returns the entries changed after ``v`` - what to gossip
  or write to LMDB next. The log is compacted when it holds twice as many
  records as the map.

Tombstone compaction (``compact_tombstones``). A tombstone can be forgotten
only when forgetting it cannot resurrect the pin: (1) every peer has merged the
tombstone, and (2) no peer can still send a live write for that CID that is
older than the tombstone. pinfold approximates both with a horizon
(``replication.tombstone_horizon_s``, default 7 days): tombstones whose HLC
wall time is older than ``now - horizon`` are dropped, and the replica's
*watermark* moves to that time. After that the replica ignores any incoming
write older than the watermark for a CID it does not have (counted in
``statistics().rejected_stale``), so a late copy of an old pin cannot come
back. This is safe when no peer stays partitioned longer than the horizon and
clocks agree within the HLC's max drift; a peer that was away longer must
discard its pinset and resync as a new node.

Serialization: ``to_bytes``/``from_bytes`` for a whole replica; an entry and
its wire form are in ``entries.py`` (re-exported here).

Pure: no trio, no LMDB, no clock. Imports replication's entries, types, hlc
and errors.
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from pinfold.replication.digest_tree import FANOUT_BITS, DigestTree
from pinfold.replication.entries import (
    DEFAULT_TREE_BITS,
    FORMAT_VERSION,
    Entry,
    beats,
    bucket_of,
    decode_entries,
    decode_entry,
    encode_entries,
    encode_entry,
    entries_from_wire,
    entry_from_wire,
    entry_hash,
    entry_to_wire,
    gc_paused,
    msgpack_unpack,
    pack,
    wire_size,
)
from pinfold.replication.errors import InvalidPin, PinNotFound, PinsetDecodeError, StaleWrite
from pinfold.replication.hlc import check_timestamp
from pinfold.replication.types import (
    Pin,
    cid_text,
)

__all__ = [
    "DEFAULT_TREE_BITS",
    "FANOUT_BITS",
    "Entry",
    "PinSet",
    "PinSetStats",
    "bucket_of",
    "decode_entries",
    "decode_entry",
    "encode_entries",
    "encode_entry",
    "entry_from_wire",
    "entry_hash",
    "entry_to_wire",
    "msgpack_unpack",
]

@dataclass(frozen=True, slots=True, kw_only=True)
class PinSetStats:
    """Counts for metrics and ``cluster status``.

    Attributes:
        pins: live pins.
        tombstones: tombstones kept.
        version: local change counter (``PinSet.version``).
        max_ts: greatest timestamp seen.
        watermark: tombstones and unknown writes older than this are dropped.
        rejected_stale: incoming writes ignored for being older than the watermark.
    """

    pins: int
    tombstones: int
    version: int
    max_ts: int
    watermark: int
    rejected_stale: int


class PinSet:
    """One replica of the shared pinset (LWW map CRDT keyed by CID).

    Reads: ``get``, ``pin``, ``__contains__``, ``__len__`` (live pins),
    ``cids``, ``entries``. Writes: ``put``/``remove`` (local, stamped by the
    caller's HLC) and ``merge`` (remote). Anti-entropy: ``summary``,
    ``children``, ``entries_in_buckets`` (see ``sync.py``). Persistence:
    ``delta_since``, ``to_bytes``/``from_bytes``.

    Args:
        tree_bits: bucket-number bits, a multiple of 4 in 4..20; every peer of a
            cluster must use the same value.

    Raises:
        InvalidPin: bad ``tree_bits``.
    """

    __slots__ = (
        "_buckets",
        "_digests",
        "_entries",
        "_log_keys",
        "_log_seqs",
        "_max_ts",
        "_rejected",
        "_tombstones",
        "_tree_bits",
        "_version",
        "_watermark",
    )

    def __init__(self, *, tree_bits: int = DEFAULT_TREE_BITS) -> None:
        if type(tree_bits) is not int or tree_bits % FANOUT_BITS or not 4 <= tree_bits <= 20:
            raise InvalidPin(f"tree_bits: must be a multiple of 4 in 4..20, got {tree_bits!r}")
        self._tree_bits = tree_bits
        self._entries: dict[bytes, Entry] = {}
        self._buckets: list[set[bytes] | None] = [None] * (1 << tree_bits)
        self._digests = DigestTree(tree_bits)
        self._tombstones: set[bytes] = set()
        self._log_keys: list[bytes] = []
        self._log_seqs = array("Q")
        self._version = 0
        self._watermark = 0
        self._max_ts = 0
        self._rejected = 0

    # ------------------------------------------------------------------ reads

    @property
    def tree_bits(self) -> int:
        """Bucket-number bits (the digest tree has ``tree_bits / 4`` levels below the root)."""
        return self._tree_bits

    @property
    def levels(self) -> int:
        """Depth of the leaf (bucket) level; the root is level 0."""
        return self._digests.levels

    @property
    def version(self) -> int:
        """Local change counter: grows by one for each entry this replica changes."""
        return self._version

    @property
    def max_ts(self) -> int:
        """Greatest HLC timestamp seen (feed it to ``HybridClock.receive`` at start)."""
        return self._max_ts

    @property
    def watermark(self) -> int:
        """HLC timestamp below which tombstones were compacted away."""
        return self._watermark

    def __len__(self) -> int:
        """Number of live pins (tombstones not counted)."""
        return len(self._entries) - len(self._tombstones)

    @property
    def entry_count(self) -> int:
        """Number of entries, pins and tombstones."""
        return len(self._entries)

    def __contains__(self, cid: object) -> bool:
        """True when ``cid`` has a live pin."""
        return cid in self._entries and cid not in self._tombstones

    def get(self, cid: bytes) -> Entry | None:
        """The entry (pin or tombstone) for ``cid``, or None if never seen or compacted."""
        return self._entries.get(cid)

    def pin(self, cid: bytes) -> Pin | None:
        """The live pin for ``cid``, or None."""
        e = self._entries.get(cid)
        return None if e is None else e.pin

    def cids(self) -> list[bytes]:
        """Every CID with an entry (pins and tombstones), in no particular order."""
        return list(self._entries)

    def entries(self, *, include_tombstones: bool = False) -> Iterator[Entry]:
        """Entries in listing order: by bucket, then by CID bytes within a bucket.

        The order is the same on every replica. Only one bucket is sorted at a
        time, so the first entry is produced in microseconds even for 1M pins.
        Do not modify the pinset while iterating.
        """
        entries = self._entries
        for keys in self._buckets:
            if not keys:
                continue
            for k in sorted(keys):
                e = entries[k]
                if include_tombstones or e.pin is not None:
                    yield e

    def pins(self) -> Iterator[Pin]:
        """Live pins in listing order."""
        for e in self.entries():
            yield e.pin  # type: ignore[misc]

    def statistics(self) -> PinSetStats:
        """Counts for metrics."""
        return PinSetStats(
            pins=len(self),
            tombstones=len(self._tombstones),
            version=self._version,
            max_ts=self._max_ts,
            watermark=self._watermark,
            rejected_stale=self._rejected,
        )

    # ----------------------------------------------------------------- writes

    def put(self, pin: Pin, *, ts: int, peer_id: str) -> Entry:
        """Record a local pin (or a change to one) written by ``peer_id`` at ``ts``.

        Args:
            pin: the pin.
            ts: a fresh timestamp from this node's ``HybridClock.now``.
            peer_id: this node's peer ID.

        Returns:
            The new entry (gossip it to the cluster).

        Raises:
            StaleWrite: an entry with a greater (ts, writer) exists already.
            InvalidPin, InvalidPeerID: bad arguments.
        """
        return self._local_write(Entry(cid=pin.cid, ts=ts, peer_id=peer_id, pin=pin))

    def remove(self, cid: bytes, *, ts: int, peer_id: str) -> Entry:
        """Record a local unpin: a tombstone for ``cid``.

        Raises:
            PinNotFound: ``cid`` has no live pin.
            StaleWrite: the live pin carries a greater (ts, writer).
        """
        if cid not in self:
            raise PinNotFound(cid_text(cid) if isinstance(cid, bytes) else repr(cid))
        return self._local_write(Entry(cid=cid, ts=ts, peer_id=peer_id, pin=None))

    def _local_write(self, entry: Entry) -> Entry:
        cur = self._entries.get(entry.cid)
        if cur is not None and not beats(entry, cur):
            raise StaleWrite(
                f"write at ts {entry.ts} does not beat the entry at ts {cur.ts} by "
                f"{cur.peer_id} for {cid_text(entry.cid)}"
            )
        if entry.ts < self._watermark:
            raise StaleWrite(
                f"write at ts {entry.ts} is older than the watermark {self._watermark}"
            )
        self._store(entry, cur)
        return entry

    def merge(self, entries: Iterable[Entry]) -> list[Entry]:
        """Merge remote entries (a delta, a sync answer, a whole replica).

        Args:
            entries: validated entries (from ``decode_entries`` or another replica).

        Returns:
            The entries that changed this replica, in input order (their CIDs
            are the ones to re-plan).
        """
        with gc_paused():
            return self._merge(entries)

    def _merge(self, entries: Iterable[Entry]) -> list[Entry]:
        changed: list[Entry] = []
        get = self._entries.get
        wm = self._watermark
        for e in entries:
            cur = get(e.cid)
            if cur is None:
                if e.ts < wm:
                    self._rejected += 1
                    continue
            elif cur is e or not beats(e, cur):
                continue
            elif e.pin is None and e.ts < wm:
                # The tombstone wins but is already past the horizon: forget the CID.
                self._drop(e.cid, cur)
                changed.append(e)
                continue
            self._store(e, cur)
            changed.append(e)
        return changed

    def merge_set(self, other: PinSet) -> list[Entry]:
        """Merge every entry of another replica (``merge`` of all its entries)."""
        if other._tree_bits != self._tree_bits:
            raise InvalidPin("merge_set: replicas use different tree_bits")
        return self.merge(other._entries.values())

    def _store(self, entry: Entry, old: Entry | None) -> None:
        key = entry.cid
        b = bucket_of(key, self._tree_bits)
        h = entry_hash(entry)
        if old is None:
            keys = self._buckets[b]
            if keys is None:
                keys = self._buckets[b] = set()
            keys.add(key)
            self._digests.update(b, h, 1)
        else:
            self._digests.update(b, h ^ entry_hash(old), 0)
        self._entries[key] = entry
        if entry.pin is None:
            self._tombstones.add(key)
        else:
            self._tombstones.discard(key)
        self._max_ts = max(self._max_ts, entry.ts)
        self._log(key)

    def _drop(self, key: bytes, old: Entry) -> None:
        b = bucket_of(key, self._tree_bits)
        del self._entries[key]
        keys = self._buckets[b]
        assert keys is not None
        keys.discard(key)
        if not keys:
            self._buckets[b] = None
        self._tombstones.discard(key)
        self._digests.update(b, entry_hash(old), -1)
        self._log(key)

    def _log(self, key: bytes) -> None:
        self._version += 1
        self._log_keys.append(key)
        self._log_seqs.append(self._version)
        if len(self._log_keys) > 2 * len(self._entries) + 1024:
            self._compact_log()

    def _compact_log(self) -> None:
        seen: set[bytes] = set()
        keys: list[bytes] = []
        seqs: list[int] = []
        for i in range(len(self._log_keys) - 1, -1, -1):
            k = self._log_keys[i]
            if k in seen:
                continue
            seen.add(k)
            if k in self._entries:
                keys.append(k)
                seqs.append(self._log_seqs[i])
        keys.reverse()
        seqs.reverse()
        self._log_keys = keys
        self._log_seqs = array("Q", seqs)

    def delta_since(self, version: int) -> list[Entry]:
        """The current entries of CIDs changed after local version ``version``.

        Args:
            version: a value of ``self.version`` read earlier (0 = everything).

        Returns:
            Entries in change order, each CID once. CIDs dropped by compaction
            are not included (``compact_tombstones`` returns them).
        """
        start = bisect.bisect_right(self._log_seqs, version)
        out: list[Entry] = []
        seen: set[bytes] = set()
        entries = self._entries
        for i in range(len(self._log_keys) - 1, start - 1, -1):
            k = self._log_keys[i]
            if k in seen:
                continue
            seen.add(k)
            e = entries.get(k)
            if e is not None:
                out.append(e)
        out.reverse()
        return out

    def compact_tombstones(self, before_ts: int) -> list[bytes]:
        """Forget tombstones older than ``before_ts`` and raise the watermark to it.

        Call with ``hlc_from_wall(now - tombstone_horizon_s)``; read the module
        docstring for when this is safe.

        Args:
            before_ts: HLC timestamp; tombstones with ``ts < before_ts`` go.

        Returns:
            The CIDs removed (delete their LMDB rows).
        """
        check_timestamp(before_ts, "before_ts")
        if before_ts <= self._watermark:
            return []
        self._watermark = before_ts
        gone = [k for k in self._tombstones if self._entries[k].ts < before_ts]
        for k in gone:
            self._drop(k, self._entries[k])
        return gone

    # ------------------------------------------------------------ anti-entropy

    def summary(self, level: int, index: int) -> tuple[int, int]:
        """``(digest, count)`` of one digest-tree node.

        Raises:
            InvalidPin: no such node.
        """
        return self._digests.summary(level, index)

    def children(self, level: int, index: int) -> list[tuple[int, int]]:
        """``(digest, count)`` of the 16 children (at ``level + 1``) of a node.

        Raises:
            InvalidPin: no such node, or it is a leaf.
        """
        return self._digests.children(level, index)

    def bucket_range(self, level: int, index: int) -> tuple[int, int]:
        """The buckets ``[lo, hi)`` under a digest-tree node.

        Raises:
            InvalidPin: no such node.
        """
        return self._digests.bucket_range(level, index)

    def entries_in_buckets(self, lo: int, hi: int, limit: int, *,
                           max_bytes: int | None = None) -> tuple[list[Entry], int | None]:
        """Entries (with tombstones) of buckets ``lo .. hi-1``, whole buckets at a time.

        Args:
            lo, hi: bucket range.
            limit: most entries to return (>= 1); a bucket that would pass it is
                left for the next page (a page holds at least one bucket, so a
                single bucket larger than ``limit`` is still sent whole).
            max_bytes: most ``wire_size`` bytes to return, the same way (None:
                no bound); pins with large metadata fill a page by bytes first.

        Returns:
            ``(entries, resume)``: ``resume`` is the first bucket not sent, or
            None when the range is done.
        """
        nb = 1 << self._tree_bits
        if not (type(lo) is int and type(hi) is int and 0 <= lo <= hi <= nb):
            raise InvalidPin(f"bucket range [{lo!r}, {hi!r}) outside 0..{nb}")
        if type(limit) is not int or limit < 1:
            raise InvalidPin(f"limit: must be >= 1, got {limit!r}")
        out: list[Entry] = []
        entries = self._entries
        # Skip empty subtrees quickly using the leaf counts.
        counts = self._digests.leaf_count
        size = 0
        b = lo
        while b < hi:
            if counts[b]:
                keys = self._buckets[b]
                assert keys is not None
                if out and len(out) + len(keys) > limit:
                    return out, b
                got = [entries[k] for k in sorted(keys)]
                if max_bytes is not None:
                    n = sum(wire_size(e) for e in got)
                    if out and size + n > max_bytes:
                        return out, b
                    size += n
                out.extend(got)
                if len(out) >= limit or (max_bytes is not None and size >= max_bytes):
                    return out, (b + 1 if b + 1 < hi else None)
            b += 1
        return out, None

    # ---------------------------------------------------------- serialization

    def to_bytes(self) -> bytes:
        """The whole replica (entries, tombstones, watermark) as msgpack bytes."""
        return pack(
            {
                "v": FORMAT_VERSION,
                "tree_bits": self._tree_bits,
                "watermark": self._watermark,
                "entries": [entry_to_wire(e) for e in self._entries.values()],
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> PinSet:
        """Rebuild a replica from ``to_bytes`` output.

        Raises:
            PinsetDecodeError: malformed data; the message names the part.
        """
        obj = msgpack_unpack(data)
        if type(obj) is not dict or set(obj) != {"v", "tree_bits", "watermark", "entries"}:
            raise PinsetDecodeError("pinset: expected a map with v, tree_bits, watermark, entries")
        if obj["v"] != FORMAT_VERSION:
            raise PinsetDecodeError(f"pinset: unsupported format version {obj['v']!r}")
        try:
            cls(tree_bits=obj["tree_bits"])
            check_timestamp(obj["watermark"], "watermark")
        except InvalidPin as exc:
            raise PinsetDecodeError(f"pinset: {exc}") from exc
        return cls.from_entries(entries_from_wire(obj["entries"]), watermark=obj["watermark"],
                                tree_bits=obj["tree_bits"])

    @classmethod
    def from_entries(cls, entries: Iterable[Entry], *, watermark: int = 0,
                     tree_bits: int = DEFAULT_TREE_BITS) -> PinSet:
        """Rebuild a replica from its stored entries and watermark (e.g. LMDB rows).

        The entries are merged first and the watermark set after, so live pins
        older than the watermark (any pin older than the tombstone horizon) are
        kept; tombstones older than it are dropped.

        Raises:
            InvalidPin: bad ``watermark`` or ``tree_bits``.
        """
        ps = cls(tree_bits=tree_bits)
        ps.merge(entries)
        if watermark:
            ps.compact_tombstones(check_timestamp(watermark, "watermark"))
        return ps
