"""One pinset entry and its encoding: the value type, which write wins, its hash.

``Entry`` is a pin or a tombstone stamped by its writer (HLC timestamp, peer
ID); ``beats`` is the last-writer-wins order of ``pinset.py``; ``bucket_of``
and ``entry_hash`` place an entry in the anti-entropy digest tree. The msgpack
wire form (``encode_entries``/``decode_entries``, ``encode_entry``/
``decode_entry`` for one LMDB row) validates every field and raises
``PinsetDecodeError`` naming the entry and field; it never crashes on
malformed input.

Pure: no trio, no LMDB, no clock. Imports replication's types, hlc and errors.
"""

from __future__ import annotations

import gc
import hashlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final

import msgpack

from pinfold.replication.errors import InvalidPeerID, InvalidPin, PinsetDecodeError
from pinfold.replication.hlc import MAX_TIMESTAMP, check_timestamp
from pinfold.replication.types import (
    MAX_PEER_ID_LEN,
    Pin,
    PinMode,
    check_cid_key,
    check_peer_id,
)

__all__ = [
    "DEFAULT_TREE_BITS",
    "FORMAT_VERSION",
    "Entry",
    "beats",
    "bucket_of",
    "decode_entries",
    "decode_entry",
    "encode_entries",
    "encode_entry",
    "entries_from_wire",
    "entry_from_wire",
    "entry_hash",
    "entry_to_wire",
    "gc_paused",
    "pages_by_size",
    "wire_size",
    "msgpack_unpack",
    "pack",
]

#: Bits of the bucket number; 16 -> 65,536 buckets (~15 entries each at 1M pins).
DEFAULT_TREE_BITS: Final = 16
#: Version of the msgpack envelopes (a replica, a batch of entries).
FORMAT_VERSION: Final = 1
_B2 = hashlib.blake2b
_MODES: Final = {"recursive": PinMode.RECURSIVE, "direct": PinMode.DIRECT}


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector around bulk decoding and merging.

    Building a million lists, dicts and dataclasses triggers many full
    collections that find nothing (these objects form no cycles); pausing
    makes decoding ~5x faster (msgpack's documentation gives the same advice).
    The code inside never awaits, so no other trio task runs meanwhile.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def bucket_of(cid: bytes, tree_bits: int = DEFAULT_TREE_BITS) -> int:
    """The bucket of a pin key: the top ``tree_bits`` bits of BLAKE2b-64(cid)."""
    h = int.from_bytes(_B2(cid, digest_size=8, person=b"pinfold-bucket").digest(), "big")
    return h >> (64 - tree_bits)


def entry_hash(entry: Entry) -> int:
    """The 128-bit digest-tree hash of an entry: BLAKE2b of its msgpack encoding.

    The whole value is hashed, not only (cid, ts, writer): two replicas that
    somehow hold different values under the same stamp (a writer whose clock
    state was lost) still see different digests and reconcile. Computed once
    per entry and cached on it.
    """
    h = entry._hash
    if h is None:
        h = int.from_bytes(
            _B2(pack(entry_to_wire(entry)), digest_size=16, person=b"pinfold-entry").digest(),
            "big",
        )
        object.__setattr__(entry, "_hash", h)
    return h


@dataclass(frozen=True, slots=True, kw_only=True)
class Entry:
    """One write to the pinset: a pin or a tombstone, stamped by its writer.

    Attributes:
        cid: pin key (binary CIDv1).
        ts: HLC timestamp of the write.
        peer_id: the writer.
        pin: the pin, or None for a tombstone (the pin was removed).

    Raises:
        InvalidPin: ``ts`` is not a timestamp or ``pin.cid`` differs from ``cid``.
        InvalidPeerID: bad writer.
    """

    cid: bytes
    ts: int
    peer_id: str
    pin: Pin | None
    _hash: int | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if type(self.ts) is not int or not 0 <= self.ts <= MAX_TIMESTAMP:
            check_timestamp(self.ts)
        p = self.peer_id
        if (
            type(p) is not str
            or not 0 < len(p) <= MAX_PEER_ID_LEN
            or not (p.isascii() and p.isprintable())
            or " " in p
        ):
            check_peer_id(p)
        if self.pin is None:
            check_cid_key(self.cid)
        elif type(self.pin) is not Pin:
            raise InvalidPin(f"pin: must be a Pin or None, got {type(self.pin).__name__}")
        elif self.pin.cid != self.cid:
            raise InvalidPin("pin.cid differs from the entry's cid")

    @property
    def is_tombstone(self) -> bool:
        """True for an unpin."""
        return self.pin is None


def beats(a: Entry, b: Entry) -> bool:
    """True when ``a`` wins over ``b`` in the LWW order (strictly)."""
    if a.ts != b.ts:
        return a.ts > b.ts
    if a.peer_id != b.peer_id:
        return a.peer_id > b.peer_id
    if a == b:
        return False
    return pack(entry_to_wire(a)) > pack(entry_to_wire(b))


# --------------------------------------------------------------- wire format
#
# entry = [cid: bin, ts: uint, writer: str, pin: nil | pin]
# pin   = [name: str, mode: "recursive"|"direct", rmin: uint, rmax: uint,
#          availability: nil|float, expire_at: nil|number, metadata: {str: str},
#          size_bytes: nil|uint]
# envelope = {"v": 1, "entries": [entry, ...]}


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def msgpack_unpack(data: object, what: str = "pinset") -> Any:
    """Unpack msgpack bytes strictly (str keys, no trailing bytes).

    Raises:
        PinsetDecodeError: not bytes or not valid msgpack.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise PinsetDecodeError(f"{what}: expected bytes, got {type(data).__name__}")
    try:
        with gc_paused():
            return msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except msgpack.ExtraData as exc:
        raise PinsetDecodeError(f"{what}: trailing bytes after the message") from exc
    except (ValueError, TypeError, OverflowError, RecursionError, msgpack.UnpackException) as exc:
        raise PinsetDecodeError(f"{what}: not valid msgpack ({exc})") from exc


def entry_to_wire(e: Entry) -> list[Any]:
    """The msgpack-ready list form of an entry."""
    p = e.pin
    if p is None:
        return [e.cid, e.ts, e.peer_id, None]
    return [
        e.cid,
        e.ts,
        e.peer_id,
        [
            p.name,
            p.mode.value,
            p.rmin,
            p.rmax,
            p.availability,
            p.expire_at,
            dict(p.metadata),
            p.size_bytes,
        ],
    ]


def entry_from_wire(obj: Any, where: str = "entry") -> Entry:
    """Build an entry from its decoded list form, validating every field.

    Raises:
        PinsetDecodeError: wrong shape or a bad field; the message names it.
    """
    if type(obj) is not list or len(obj) != 4:
        raise PinsetDecodeError(f"{where}: expected [cid, ts, writer, pin]")
    cid, ts, writer, p = obj
    try:
        if p is None:
            return Entry(cid=cid, ts=ts, peer_id=writer, pin=None)
        if type(p) is not list or len(p) != 8:
            raise PinsetDecodeError(f"{where}: pin: expected a list of 8 fields")
        name, mode, rmin, rmax, avail, expire, meta, size = p
        m = _MODES.get(mode) if type(mode) is str else None
        if m is None:
            raise PinsetDecodeError(f"{where}: mode: must be 'recursive' or 'direct', got {mode!r}")
        if type(meta) is not dict:
            raise PinsetDecodeError(f"{where}: metadata: expected a map")
        pin = Pin(
            cid=cid,
            name=name,
            mode=m,
            rmin=rmin,
            rmax=rmax,
            availability=avail,
            expire_at=expire,
            metadata=tuple(sorted(meta.items())) if meta else (),
            size_bytes=size,
        )
        return Entry(cid=cid, ts=ts, peer_id=writer, pin=pin)
    except (InvalidPin, InvalidPeerID) as exc:
        raise PinsetDecodeError(f"{where}: {exc}") from exc
    except TypeError as exc:  # e.g. unorderable metadata values
        raise PinsetDecodeError(f"{where}: {exc}") from exc


def entries_from_wire(items: Any) -> list[Entry]:
    """Entries from their decoded list forms (a batch or a replica), validated.

    Raises:
        PinsetDecodeError: not a list, or a bad entry (named by its index).
    """
    if type(items) is not list:
        raise PinsetDecodeError("entries: expected a list")
    out = []
    with gc_paused():
        for i, obj in enumerate(items):
            out.append(entry_from_wire(obj, f"entry {i}"))
    return out


def wire_size(e: Entry) -> int:
    """An upper bound of ``e``'s bytes in ``encode_entries`` output (bytes).

    Fixed fields are bounded by 64 bytes; strings count their UTF-8 bytes plus
    a 5-byte msgpack header each. A pin's metadata (a name record rides there,
    up to about 280 KB) dominates.
    """
    n = 64 + len(e.cid) + len(e.peer_id)
    p = e.pin
    if p is not None:
        n += len(p.name.encode()) + 5
        for k, v in p.metadata:
            n += len(k.encode()) + len(v.encode()) + 10
    return n


def pages_by_size(entries: Iterable[Entry], *, max_bytes: int,
                  max_entries: int) -> Iterator[list[Entry]]:
    """``entries`` in order, split into pages of at most ``max_entries`` entries
    whose ``wire_size`` sum is at most ``max_bytes`` (bytes); an entry larger
    than ``max_bytes`` alone is a page of its own. Gossip and sync pushes page
    with it so a batch of large pins stays under the message limits."""
    page: list[Entry] = []
    size = 0
    for e in entries:
        n = wire_size(e)
        if page and (size + n > max_bytes or len(page) >= max_entries):
            yield page
            page, size = [], 0
        page.append(e)
        size += n
    if page:
        yield page


def encode_entries(entries: Iterable[Entry]) -> bytes:
    """A batch of entries (a delta) as msgpack bytes: ``{"v": 1, "entries": [...]}``."""
    return pack({"v": FORMAT_VERSION, "entries": [entry_to_wire(e) for e in entries]})


def decode_entries(data: bytes, *, max_entries: int | None = None) -> list[Entry]:
    """Decode and validate ``encode_entries`` output.

    Args:
        data: the bytes.
        max_entries: refuse batches larger than this (None = no limit).

    Raises:
        PinsetDecodeError: malformed data, or more than ``max_entries``.
    """
    obj = msgpack_unpack(data, "entries")
    if type(obj) is not dict or set(obj) != {"v", "entries"}:
        raise PinsetDecodeError("entries: expected a map with v and entries")
    if obj["v"] != FORMAT_VERSION:
        raise PinsetDecodeError(f"entries: unsupported format version {obj['v']!r}")
    items = obj["entries"]
    if max_entries is not None and type(items) is list and len(items) > max_entries:
        raise PinsetDecodeError(f"entries: {len(items)} entries exceed the limit of {max_entries}")
    return entries_from_wire(items)


def encode_entry(e: Entry) -> bytes:
    """One entry as msgpack bytes (an LMDB value; the key is ``e.cid``)."""
    return pack(entry_to_wire(e))


def decode_entry(data: bytes) -> Entry:
    """Decode and validate one ``encode_entry`` value.

    Raises:
        PinsetDecodeError: malformed data.
    """
    return entry_from_wire(msgpack_unpack(data, "entry"))
