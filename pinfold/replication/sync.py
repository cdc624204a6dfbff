"""Anti-entropy for the shared pinset: the sans-IO core of ``/pinfold/sync/1``.

Gossiped deltas can be lost (a peer was offline, a message dropped), so peers
periodically reconcile their replicas pairwise. The initiator runs a
``Reconciler``; the responder answers each request with ``answer``. Both sides
only read and merge ``PinSet``s; the daemon moves the bytes
(``encode_message``/``decode_message``) over a libp2p stream.

Protocol (request -> response), over the pinset's digest tree (``pinset.py``):

1. ``SummaryRequest(level=0, indices=[0])`` -> the root's (digest, count).
   Equal roots: the replicas agree; done in one round trip.
2. For each differing node: if the responder's count is at most
   ``pull_threshold``, or ours is 0 (a new node), ask for its entries;
   otherwise ask for the summaries of its 16 children (the next level) and
   compare again. With 65,536 buckets this takes at most 4 more round trips.
3. ``EntriesRequest(ranges, limit)`` -> entries of whole buckets in those
   ranges, at most about ``limit`` a page; ``resume`` says what is left.
4. The initiator merges what it received and, from ``to_push()``, learns which
   of its own entries in the same buckets the responder lacks or has older;
   the driver sends those as an ordinary delta. One session thus brings both
   replicas to the same state for the differing buckets.

Both peers must use the same ``tree_bits``; requests carry it and a mismatch is
an error. Messages are msgpack maps with a type tag ``t``; decoding validates
every field (``PinsetDecodeError``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgpack

from pinfold.replication.errors import InvalidPin, PinsetDecodeError
from pinfold.replication.pinset import FANOUT_BITS, Entry, PinSet, entry_from_wire, entry_to_wire, msgpack_unpack
from pinfold.replication.entries import wire_size

__all__ = [
    "MAX_PAGE_BYTES",
    "MAX_PAGE_ENTRIES",
    "EntriesRequest",
    "EntriesResponse",
    "Reconciler",
    "SummaryRequest",
    "SummaryResponse",
    "SyncMessage",
    "answer",
    "decode_message",
    "encode_message",
]

#: Largest page a responder sends, entries (~130 bytes each: ~1.3 MB, well under
#: a 4 MiB stream message).
MAX_PAGE_ENTRIES: Final = 10_000
#: Largest page a responder sends or an initiator pushes, ``wire_size`` bytes: pins
#: carry up to ~280 KB of metadata (name records), and a page must stay under the
#: 4 MiB stream message with room for the rest of the response.
MAX_PAGE_BYTES: Final = 3 * 1024 * 1024
_MAX_INDICES: Final = 1 << 16


@dataclass(frozen=True, slots=True, kw_only=True)
class SummaryRequest:
    """Ask for the (digest, count) of some digest-tree nodes at one level.

    Attributes:
        tree_bits: the asker's bucket bits (must match the responder's).
        level: tree level, 0 = root.
        indices: node indices at that level, ascending.
    """

    tree_bits: int
    level: int
    indices: tuple[int, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class SummaryResponse:
    """Summaries of the requested nodes.

    Attributes:
        level: tree level.
        nodes: ``(index, digest, count)`` per requested node, same order; the
            digest is a 128-bit integer.
    """

    level: int
    nodes: tuple[tuple[int, int, int], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class EntriesRequest:
    """Ask for the entries (with tombstones) of bucket ranges.

    Attributes:
        tree_bits: the asker's bucket bits.
        ranges: ``(lo, hi)`` bucket ranges, half-open, ascending, disjoint.
        limit: page size wanted, entries (capped at ``MAX_PAGE_ENTRIES``).
    """

    tree_bits: int
    ranges: tuple[tuple[int, int], ...]
    limit: int = MAX_PAGE_ENTRIES


@dataclass(frozen=True, slots=True, kw_only=True)
class EntriesResponse:
    """One page of entries.

    Attributes:
        entries: entries of whole buckets, in bucket order.
        resume: the ranges still to send (ask again with them), empty when done.
    """

    entries: tuple[Entry, ...]
    resume: tuple[tuple[int, int], ...]


SyncMessage = SummaryRequest | SummaryResponse | EntriesRequest | EntriesResponse


def _check_tree_bits(ps: PinSet, tree_bits: int) -> None:
    if tree_bits != ps.tree_bits:
        raise InvalidPin(f"sync: peer uses tree_bits={tree_bits}, we use {ps.tree_bits}")


def answer(
    pinset: PinSet, request: SummaryRequest | EntriesRequest
) -> SummaryResponse | EntriesResponse:
    """The responder's side: answer one request from the local replica.

    Raises:
        InvalidPin: the request names nodes or buckets that do not exist, or
            the peer uses another ``tree_bits``.
    """
    _check_tree_bits(pinset, request.tree_bits)
    if isinstance(request, SummaryRequest):
        nodes = []
        for i in request.indices:
            d, c = pinset.summary(request.level, i)
            nodes.append((i, d, c))
        return SummaryResponse(level=request.level, nodes=tuple(nodes))
    limit = min(max(request.limit, 1), MAX_PAGE_ENTRIES)
    out: list[Entry] = []
    size = 0
    ranges = list(request.ranges)
    while ranges and len(out) < limit and size < MAX_PAGE_BYTES:
        lo, hi = ranges[0]
        got, resume = pinset.entries_in_buckets(lo, hi, limit - len(out),
                                                max_bytes=MAX_PAGE_BYTES - size)
        if out and got and size + sum(wire_size(e) for e in got) > MAX_PAGE_BYTES:
            break  # a bucket bigger than what is left of the page: next page
        size += sum(wire_size(e) for e in got)
        out.extend(got)
        if resume is None:
            ranges.pop(0)
        else:
            ranges[0] = (resume, hi)
    return EntriesResponse(entries=tuple(out), resume=tuple(ranges))


class Reconciler:
    """The initiator's side of one anti-entropy session (a state machine).

    Usage::

        rec = Reconciler(local)
        while (req := rec.next_request()) is not None:
            rec.handle(await ask_peer(req))
        send_delta(rec.to_push())

    Args:
        local: the local replica; ``handle`` merges into it.
        pull_threshold: pull a differing subtree's entries directly when the
            responder has at most this many in it (saves round trips).
        page_limit: entries per ``EntriesRequest`` page.
    """

    def __init__(self, local: PinSet, *, pull_threshold: int = 256,
                 page_limit: int = MAX_PAGE_ENTRIES) -> None:
        if pull_threshold < 0 or page_limit < 1:
            raise InvalidPin("pull_threshold must be >= 0 and page_limit >= 1")
        self._local = local
        self._pull_threshold = pull_threshold
        self._page_limit = min(page_limit, MAX_PAGE_ENTRIES)
        self._pending: SummaryRequest | EntriesRequest | None = SummaryRequest(
            tree_bits=local.tree_bits, level=0, indices=(0,)
        )
        self._to_pull: list[tuple[int, int]] = []
        self._pulled_ranges: list[tuple[int, int]] = []
        self._remote_seen: dict[bytes, Entry] = {}
        self._awaiting = False
        self.round_trips = 0
        self.entries_received = 0
        self.changed = 0

    @property
    def done(self) -> bool:
        """True when nothing is left to ask."""
        return self._pending is None and not self._awaiting

    def next_request(self) -> SummaryRequest | EntriesRequest | None:
        """The next request to send, or None when the session is over.

        Raises:
            InvalidPin: called again before ``handle`` got the last response.
        """
        if self._awaiting:
            raise InvalidPin("sync: next_request before the previous response was handled")
        req = self._pending
        if req is not None:
            self._awaiting = True
        return req

    def handle(self, response: SummaryResponse | EntriesResponse) -> list[Entry]:
        """Process the answer to the last request; return the entries merged locally.

        Raises:
            InvalidPin: the response does not fit the request (wrong type,
                level or nodes) - the peer broke the protocol.
        """
        req = self._pending
        if not self._awaiting or req is None:
            raise InvalidPin("sync: response without a request")
        self._awaiting = False
        self.round_trips += 1
        if isinstance(req, SummaryRequest):
            if not isinstance(response, SummaryResponse) or response.level != req.level or tuple(
                n[0] for n in response.nodes
            ) != req.indices:
                raise InvalidPin("sync: summary response does not match the request")
            self._on_summaries(req.level, response.nodes)
            return []
        if not isinstance(response, EntriesResponse):
            raise InvalidPin("sync: expected an entries response")
        for lo, hi in response.resume:
            if not any(a <= lo and hi <= b for a, b in req.ranges):
                raise InvalidPin("sync: resume ranges outside the request")
        for e in response.entries:
            self._remote_seen[e.cid] = e
        self.entries_received += len(response.entries)
        changed = self._local.merge(response.entries)
        self.changed += len(changed)
        self._pending = None
        if response.resume:
            self._pending = EntriesRequest(
                tree_bits=self._local.tree_bits, ranges=response.resume, limit=self._page_limit
            )
        return changed

    def _on_summaries(self, level: int, nodes: Sequence[tuple[int, int, int]]) -> None:
        local = self._local
        descend: list[int] = []
        for index, digest, count in nodes:
            my_digest, my_count = local.summary(level, index)
            if my_digest == digest and my_count == count:
                continue
            if level == local.levels or count <= self._pull_threshold or my_count == 0:
                self._to_pull.append(local.bucket_range(level, index))
            else:
                descend.append(index)
        self._pending = None
        if descend:
            fan = 1 << FANOUT_BITS
            children = tuple(c for i in descend for c in range(i * fan, (i + 1) * fan))
            self._pending = SummaryRequest(tree_bits=local.tree_bits, level=level + 1,
                                           indices=children)
        elif self._to_pull:
            ranges = _coalesce(sorted(self._to_pull))
            self._pulled_ranges = ranges
            self._to_pull = []
            self._pending = EntriesRequest(tree_bits=local.tree_bits, ranges=tuple(ranges),
                                           limit=self._page_limit)

    def to_push(self) -> list[Entry]:
        """Local entries in the reconciled buckets that the responder lacks or has older.

        Call when ``done``; send them to the responder as a delta.
        """
        out: list[Entry] = []
        seen = self._remote_seen
        for lo, hi in self._pulled_ranges:
            resume: int | None = lo
            while resume is not None:
                got, resume = self._local.entries_in_buckets(resume, hi, MAX_PAGE_ENTRIES)
                for e in got:
                    r = seen.get(e.cid)
                    if r is None or r != e:
                        out.append(e)
        return out


def _coalesce(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in ranges:
        if out and out[-1][1] == lo:
            out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out


# ------------------------------------------------------------------ encoding


def encode_message(msg: SyncMessage) -> bytes:
    """A sync message as msgpack bytes (a map with type tag ``t``)."""
    obj: dict[str, Any]
    if isinstance(msg, SummaryRequest):
        obj = {"t": "sum?", "bits": msg.tree_bits, "level": msg.level, "idx": list(msg.indices)}
    elif isinstance(msg, SummaryResponse):
        obj = {"t": "sum", "level": msg.level,
               "nodes": [[i, d.to_bytes(16, "big"), c] for i, d, c in msg.nodes]}
    elif isinstance(msg, EntriesRequest):
        obj = {"t": "ent?", "bits": msg.tree_bits, "ranges": [list(r) for r in msg.ranges],
               "limit": msg.limit}
    elif isinstance(msg, EntriesResponse):
        obj = {"t": "ent", "entries": [entry_to_wire(e) for e in msg.entries],
               "resume": [list(r) for r in msg.resume]}
    else:
        raise TypeError(f"not a sync message: {type(msg).__name__}")
    return msgpack.packb(obj, use_bin_type=True)


def _uint(v: Any, what: str, hi: int = (1 << 63) - 1) -> int:
    if type(v) is not int or not 0 <= v <= hi:
        raise PinsetDecodeError(f"sync: {what}: expected an integer in 0..{hi}, got {v!r}")
    return v


def _ranges(v: Any) -> tuple[tuple[int, int], ...]:
    if type(v) is not list or len(v) > _MAX_INDICES:
        raise PinsetDecodeError("sync: ranges: expected a list")
    out = []
    prev = -1
    for r in v:
        if type(r) is not list or len(r) != 2:
            raise PinsetDecodeError("sync: ranges: expected [lo, hi] pairs")
        lo, hi = _uint(r[0], "range lo"), _uint(r[1], "range hi")
        if not prev <= lo <= hi:
            raise PinsetDecodeError("sync: ranges: must be ascending and disjoint")
        prev = hi
        out.append((lo, hi))
    return tuple(out)


def _keys(obj: dict[str, Any], *keys: str) -> None:
    if set(obj) != {"t", *keys}:
        raise PinsetDecodeError(f"sync: {obj.get('t')!r} message needs exactly the keys {keys}")


def decode_message(data: bytes) -> SyncMessage:
    """Decode and validate a sync message.

    Raises:
        PinsetDecodeError: malformed; the message names the field.
    """
    obj = msgpack_unpack(data, "sync")
    if type(obj) is not dict or "t" not in obj:
        raise PinsetDecodeError("sync: expected a map with a type tag 't'")
    t = obj["t"]
    if t == "sum?":
        _keys(obj, "bits", "level", "idx")
        idx = obj["idx"]
        if type(idx) is not list or len(idx) > _MAX_INDICES:
            raise PinsetDecodeError("sync: idx: expected a list")
        return SummaryRequest(tree_bits=_uint(obj["bits"], "bits", 64),
                              level=_uint(obj["level"], "level", 16),
                              indices=tuple(_uint(i, "index") for i in idx))
    if t == "sum":
        _keys(obj, "level", "nodes")
        nodes = obj["nodes"]
        if type(nodes) is not list or len(nodes) > _MAX_INDICES:
            raise PinsetDecodeError("sync: nodes: expected a list")
        out = []
        for n in nodes:
            if type(n) is not list or len(n) != 3 or type(n[1]) is not bytes or len(n[1]) != 16:
                raise PinsetDecodeError("sync: nodes: expected [index, digest(16 bytes), count]")
            out.append((_uint(n[0], "index"), int.from_bytes(n[1], "big"), _uint(n[2], "count")))
        return SummaryResponse(level=_uint(obj["level"], "level", 16), nodes=tuple(out))
    if t == "ent?":
        _keys(obj, "bits", "ranges", "limit")
        return EntriesRequest(tree_bits=_uint(obj["bits"], "bits", 64),
                              ranges=_ranges(obj["ranges"]),
                              limit=_uint(obj["limit"], "limit"))
    if t == "ent":
        _keys(obj, "entries", "resume")
        items = obj["entries"]
        if type(items) is not list or len(items) > MAX_PAGE_ENTRIES:
            raise PinsetDecodeError(f"sync: entries: expected a list of <= {MAX_PAGE_ENTRIES}")
        entries = tuple(entry_from_wire(e, f"sync entry {i}") for i, e in enumerate(items))
        return EntriesResponse(entries=entries, resume=_ranges(obj["resume"]))
    raise PinsetDecodeError(f"sync: unknown message type {t!r}")
