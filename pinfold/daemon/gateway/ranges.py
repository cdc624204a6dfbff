"""Byte ranges: the HTTP ``Range`` header (RFC 9110 section 14) and the
trustless gateway's ``entity-bytes=from:to`` parameter, resolved against an
entity's size. Pure functions, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass


class Unsatisfiable(ValueError):
    """A range that selects no byte of the entity (HTTP 416, or 400 for entity-bytes)."""


@dataclass(frozen=True, slots=True)
class ByteRange:
    """Bytes ``[start, end]`` of an entity, both inclusive (as HTTP writes them).

    Attributes:
        start: first byte, >= 0.
        end: last byte, >= start.
    """

    start: int
    end: int

    @property
    def length(self) -> int:
        """Bytes in the range."""
        return self.end - self.start + 1

    def content_range(self, size: int) -> str:
        """The ``Content-Range`` value, ``bytes START-END/SIZE``."""
        return f"bytes {self.start}-{self.end}/{size}"


def parse_range(header: str, size: int) -> ByteRange | None:
    """The single range ``header`` asks of an entity of ``size`` bytes.

    ``bytes=A-B``, ``bytes=A-`` and ``bytes=-N`` (the last N bytes) are
    understood; ``B`` past the end is clamped. A header that is not a single
    bytes range (malformed, another unit, several ranges) is ignored, as RFC
    9110 14.2 allows: the result is ``None`` and the whole entity is sent.

    Raises:
        Unsatisfiable: the range starts at or past the end (or asks for the last
            0 bytes); the server answers 416 with ``Content-Range: bytes */SIZE``.
    """
    unit, sep, spec = header.strip().partition("=")
    if not sep or unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    first, last = first.strip(), last.strip()
    if not dash or not (first.isdigit() or first == "") or not (last.isdigit() or last == ""):
        return None
    if first == "":
        if last == "":
            return None
        n = int(last)
        if n == 0 or size == 0:
            raise Unsatisfiable(f"bytes=-{n} selects nothing of a {size}-byte entity")
        return ByteRange(max(size - n, 0), size - 1)
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None
    if start >= size:
        raise Unsatisfiable(f"range starts at byte {start}; the entity has {size} bytes")
    return ByteRange(start, min(end, size - 1))


def entity_bytes_bounds(text: str) -> tuple[int, int | None]:
    """The ``(FROM, TO)`` offsets of ``entity-bytes=FROM:TO``, ``TO`` ``None`` for ``*``,
    before any entity is known.

    As RFC 9110 14.1.1 for a byte-range-spec (and Kubo's gateway), a range whose
    ``FROM`` comes after ``TO`` while both count from the same end is invalid,
    not empty: ``10:5`` and ``-5:-10`` are refused. A mixed pair (``499:-1000``)
    depends on the size and may resolve empty (see ``parse_entity_bytes``).

    Raises:
        ValueError: not ``FROM:TO`` with integers (``TO`` may be ``*``), or ``FROM``
            after ``TO``; the message names the parameter and its value.
    """
    first, sep, last = text.partition(":")
    if not sep:
        raise ValueError(f"entity-bytes={text!r}: expected FROM:TO")
    try:
        start = int(first)
        end = None if last == "*" else int(last)
    except ValueError:
        raise ValueError(f"entity-bytes={text!r}: expected FROM:TO, integers or TO = '*'") \
            from None
    if end is not None and (start >= 0) == (end >= 0) and start > end:
        raise ValueError(f"entity-bytes={text!r}: FROM ({start}) is after TO ({end}); "
                         "the range is FROM:TO with FROM <= TO, both inclusive")
    return start, end


def parse_entity_bytes(text: str, size: int) -> ByteRange | None:
    """``entity-bytes=FROM:TO`` (trustless gateway spec) for an entity of ``size`` bytes.

    ``FROM`` and ``TO`` are byte offsets, inclusive; a negative one counts from
    the end; ``TO`` may be ``*`` (the end). Returns ``None`` when the range is
    empty after clamping (the spec then answers as ``dag-scope=block``).

    Raises:
        ValueError: as ``entity_bytes_bounds`` (malformed, or ``FROM`` after ``TO``).
        Unsatisfiable: the range lies wholly outside the entity.
    """
    start, end = entity_bytes_bounds(text)
    if start < 0:
        start = max(size + start, 0)
    if end is None:
        end = size - 1
    elif end < 0:
        end = size + end
    if start >= size and size > 0 or end < 0 and size > 0:
        raise Unsatisfiable(f"entity-bytes={text} lies outside the entity's {size} bytes")
    end = min(end, size - 1)
    if size == 0 or end < start:
        return None
    return ByteRange(start, end)
