"""Splitting a byte stream into frame bodies (``FrameDecoder``, sans-IO), with
the fast path that receives a large payload whole, and the socket read size
for it (``bulk_read_size``, the one ioctl).

Imports the ``codec`` layouts; no I/O library."""

from __future__ import annotations

import array
import fcntl
import termios
from collections.abc import Iterator

from pinfold.daemon.rpc.wire.codec import _DATA_HEAD, _DATA_KEY, _ITEM_HEAD, _ITEM_KEY, Body, Bulk
from pinfold.daemon.rpc.wire.errors import WireError
from pinfold.daemon.rpc.wire.limits import _LEN, MAX_FRAME_BYTES, MAX_REQUEST_ID

_BULK_HEADS = ((_DATA_HEAD, "data", _DATA_KEY), (_ITEM_HEAD, "item", _ITEM_KEY))
_UINT = {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8}
_BIN = {0xC4: 1, 0xC5: 2, 0xC6: 4}
_BULK_HEADER_MAX = len(_DATA_HEAD) + 9 + len(_DATA_KEY) + 5  # id as uint64, bin32
_READ_BYTES = 32 << 10


def _bulk_header_len(buf: memoryview) -> int | None:
    """How long a canonical bulk header starting ``buf`` is (as far as ``buf`` tells),
    or None if ``buf`` cannot start one. Lets a driver read a header byte-exactly,
    so that the payload after it can be received whole into one bytes object."""
    have = len(buf)
    for head, _, key in _BULK_HEADS:
        size = len(head)
        if have <= size:
            if buf[:have] == head[:have]:
                return size + 1  # up to the id's type byte
            continue
        if buf[:size] != head:
            continue
        tag = buf[size]
        extra = 0 if tag <= 0x7F else _UINT.get(tag)
        if extra is None:
            return None
        pos = size + 1 + extra + len(key)  # the bin type byte
        if have <= pos:
            return pos + 5  # assume bin32, as bulk payloads (> 64 KiB) nearly always are
        width = _BIN.get(buf[pos])
        return None if width is None else pos + 1 + width
    return None


def _parse_bulk_header(buf: memoryview, n: int) -> tuple[str, int, int] | None:
    """``(kind, id, header_len)`` if ``buf`` (a body's first bytes, the whole header
    included) starts a canonical bulk frame of body length ``n`` whose bin payload
    ends the frame; else None."""
    for head, kind, key in _BULK_HEADS:
        if buf[:len(head)] != head:
            continue
        pos = len(head)
        tag = buf[pos]
        if tag <= 0x7F:
            rid, pos = tag, pos + 1
        elif tag in _UINT:
            size = _UINT[tag]
            rid = int.from_bytes(buf[pos + 1:pos + 1 + size], "big")
            pos += 1 + size
        else:
            return None
        if not 1 <= rid <= MAX_REQUEST_ID or buf[pos:pos + len(key)] != key:
            return None
        pos += len(key)
        size = _BIN.get(buf[pos])
        if size is None:
            return None
        length = int.from_bytes(buf[pos + 1:pos + 1 + size], "big")
        pos += 1 + size
        return (kind, rid, pos) if pos + length == n else None
    return None


class FrameDecoder:
    """Splits a byte stream into frame bodies; sans-IO, built for few copies.

    Drivers loop: if ``bulk_wanted()`` is non-zero, receive up to that many
    bytes as a new bytes object (``socket.recv``) and pass it to
    ``add_bulk``; otherwise receive into ``get_buffer()`` (``recv_into``) and
    ``commit(n)``. After either, take bodies with ``next_body()`` until it
    returns None (draining keeps ``get_buffer()`` non-empty). ``feed(data)``
    does all of this for bytes already in hand.

    Large canonical ``data``/``item`` frames come back as ``Bulk``: their
    payload is received into its own bytes object (one kernel copy, no
    more). Other bodies come back as a view into the decoder's buffers, valid
    until the next call on the decoder: decode it (``decode_*_message`` copies
    what it keeps) before asking for more. Large non-canonical bodies land in
    a second buffer reused from frame to frame.

    Memory: ``buffer_bytes``, plus ``max_frame_bytes`` once a large
    non-canonical frame was seen, plus the bulk payload in progress.
    """

    def __init__(self, *, max_frame_bytes: int = MAX_FRAME_BYTES,
                 buffer_bytes: int = 256 << 10, direct_threshold: int = 64 << 10) -> None:
        if direct_threshold + 4 > buffer_bytes or direct_threshold < _BULK_HEADER_MAX:
            raise ValueError("need direct_threshold >= 64 and buffer_bytes > direct_threshold + 4")
        self._max = max_frame_bytes
        self._buf = bytearray(buffer_bytes)
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0
        self._direct = direct_threshold
        self._big_buf = bytearray()
        self._big: memoryview | None = None  # the current large body being filled
        self._big_filled = 0
        # The bulk frame in progress: kind, id, body length, payload pieces, bytes missing.
        self._bulk: tuple[str, int, int] | None = None
        self._pieces: list[bytes] = []
        self._bulk_need = 0
        # After a bulk frame, expect another: read headers byte-exactly so the next
        # payload is received whole (see ``get_buffer``).
        self._probe = False

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames."""
        return (self._end - self._start + self._big_filled
                + sum(len(p) for p in self._pieces))

    def bulk_wanted(self) -> int:
        """Bytes of a bulk payload still to receive with ``add_bulk`` (0: use ``get_buffer``)."""
        return self._bulk_need

    def add_bulk(self, data: bytes) -> None:
        """Add received payload bytes (at most ``bulk_wanted()``; kept without copying)."""
        if not 0 < len(data) <= self._bulk_need:
            raise ValueError(f"add_bulk takes 1..{self._bulk_need} bytes, got {len(data)}")
        self._pieces.append(data)
        self._bulk_need -= len(data)

    def get_buffer(self) -> memoryview:
        """A writable view to receive into (never empty); then call ``commit``."""
        if self._big is not None:
            return self._big[self._big_filled:]
        if self._end == len(self._buf):
            self._compact()
        limit = _READ_BYTES  # modest: payload bytes read here are copied once more
        if self._probe:
            need = self._header_need()
            if need:
                limit = need
            else:
                self._probe = False
        return self._view[self._end:self._end + limit]

    def _header_need(self) -> int:
        """Bytes still to read to complete the next frame's bulk header; 0 if not bulk."""
        avail = self._end - self._start
        if avail < 4:
            return 4 + len(_DATA_HEAD) + 1 - avail  # the prefix, the fixed head, the id's type
        (n,) = _LEN.unpack_from(self._buf, self._start)
        if not self._direct < n <= self._max:
            return 0
        header_len = _bulk_header_len(self._view[self._start + 4:self._end])
        return max(0, header_len - (avail - 4)) if header_len is not None else 0

    def commit(self, n: int) -> None:
        """Record that ``n`` bytes were written at the start of the last ``get_buffer()``."""
        if self._big is not None:
            self._big_filled += n
        else:
            self._end += n

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes | Bulk]:
        """Take received bytes (copying them) and return the frame bodies they complete.

        Raises:
            WireError: ``frame_too_large`` if a length prefix is over the limit,
                ``protocol_error`` for an empty frame.
        """
        bodies: list[bytes | Bulk] = []
        view = memoryview(data).cast("B")
        while view.nbytes:
            want = self._bulk_need
            if want:
                n = min(want, view.nbytes)
                self.add_bulk(bytes(view[:n]))
            else:
                target = self.get_buffer()
                n = min(target.nbytes, view.nbytes)
                target[:n] = view[:n]
                self.commit(n)
            view = view[n:]
            bodies.extend(b if isinstance(b, Bulk) else bytes(b) for b in iter_bodies(self))
        return bodies

    def _compact(self) -> None:
        n = self._end - self._start
        if self._start:
            self._buf[:n] = self._buf[self._start:self._end]
        self._start, self._end = 0, n

    def next_body(self) -> Body | None:
        """The next complete frame body, or None if more bytes are needed.

        A view is valid until the next call on this decoder; a ``Bulk`` owns its bytes.

        Raises:
            WireError: ``frame_too_large`` for a length prefix above the limit,
                ``protocol_error`` for a zero length.
        """
        if self._bulk is not None:
            if self._bulk_need:
                return None
            (kind, rid, n), pieces = self._bulk, self._pieces
            self._bulk, self._pieces = None, []
            self._probe = True
            payload = pieces[0] if len(pieces) == 1 else b"".join(pieces)
            return Bulk(kind=kind, id=rid, payload=payload, nbytes=n)
        big = self._big
        if big is not None:
            if self._big_filled < len(big):
                return None
            self._big = None
            self._big_filled = 0
            return big
        avail = self._end - self._start
        if avail < 4:
            if self._start and self._end == len(self._buf):
                self._compact()
            return None
        start = self._start
        (n,) = _LEN.unpack_from(self._buf, start)
        if n > self._max:
            raise WireError("frame_too_large",
                            f"frame of {n} bytes exceeds the {self._max}-byte limit")
        if n == 0:
            raise WireError("protocol_error", "empty frame")
        if avail >= 4 + n:
            body = self._view[start + 4:start + 4 + n]
            self._start = start + 4 + n
            if self._start == self._end:
                self._start = self._end = 0
            return body
        if n <= self._direct:
            if start + 4 + n > len(self._buf):
                self._compact()  # make room: it will fit in the buffer
            return None
        body_start = start + 4
        header = self._view[body_start:self._end]
        header_len = _bulk_header_len(header)
        if header_len is not None and len(header) < header_len:
            return None  # wait for the whole header
        parsed = None if header_len is None else _parse_bulk_header(header, n)
        if parsed is not None:
            kind, rid, header_len = parsed
            have = avail - 4 - header_len
            self._bulk = (kind, rid, n)
            self._pieces = [bytes(self._view[body_start + header_len:self._end])] if have else []
            self._bulk_need = n - header_len - have
            self._start = self._end = 0
            return None
        have = avail - 4
        if len(self._big_buf) < n:
            self._big_buf = bytearray(self._max)
        big = memoryview(self._big_buf)[:n]
        big[:have] = self._view[body_start:self._end]
        self._big, self._big_filled = big, have
        self._start = self._end = 0
        return None


BULK_PIECE_BYTES = 256 << 10
"""Read size for a bulk payload that has not fully arrived yet (see ``bulk_read_size``)."""


def bulk_read_size(fd: int, want: int) -> int:
    """How much of a bulk payload to ``recv`` now on socket ``fd``.

    If all ``want`` bytes are queued in the socket (``FIONREAD``), all of
    them: one ``recv`` then yields the whole payload as one bytes object and
    the decoder needs no join. Otherwise a piece of at most
    ``BULK_PIECE_BYTES``: the reader is ahead of the writer, so the later
    join costs nothing that matters. This is the drivers' only syscall
    besides send and receive.
    """
    queued = array.array("i", [0])
    try:
        fcntl.ioctl(fd, termios.FIONREAD, queued, True)
    except OSError:
        return min(want, BULK_PIECE_BYTES)
    return want if queued[0] >= want else min(want, BULK_PIECE_BYTES)


def iter_bodies(decoder: FrameDecoder) -> Iterator[Body]:
    """Every complete body currently in ``decoder``; a view is valid until the next is taken.

    Raises ``WireError`` like ``next_body``.
    """
    while (body := decoder.next_body()) is not None:
        yield body

