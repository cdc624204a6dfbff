"""Bitswap stream framing: each message is prefixed with its length (sans-IO).

bitswap-protocol.md, "Protocol Format": every message on a stream is prefixed
with its length as an unsigned varint (multiformats/unsigned-varint, at most 9
bytes); messages MUST be <= 4 MiB. ``FrameDecoder`` splits received bytes into
message bodies, refusing an oversize length before buffering its body;
``frame`` prefixes one body. Imports only the varint codec and ``errors``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from pinfold.blockstore.varint import encode_uvarint, try_read_uvarint

from pinfold.daemon.p2p.bitswap.errors import MalformedMessage, MessageTooLarge

__all__ = ["MAX_MESSAGE_SIZE", "FrameDecoder", "frame"]

#: Largest message we send or accept, bytes (spec, "Protocol Format": MUST be <= 4 MiB).
MAX_MESSAGE_SIZE: Final = 4 * 1024 * 1024


def frame(payload: bytes) -> bytes:
    """``payload`` with its uvarint length prefix (spec, "Protocol Format")."""
    return encode_uvarint(len(payload)) + payload


@dataclass(slots=True)
class FrameDecoder:
    """Splits a byte stream into length-prefixed messages (sans-IO).

    ``feed`` bytes as they arrive, then call ``next_frame`` until it returns
    None. A length prefix over ``max_message_size`` raises ``MessageTooLarge``
    as soon as the prefix is complete, before any of the body is buffered, so a
    hostile peer cannot make us hold more than one message's worth of bytes.
    """

    max_message_size: int = MAX_MESSAGE_SIZE
    _buf: bytearray = field(default_factory=bytearray)
    _need: int = -1  # body length of the frame being assembled, -1 = reading a prefix
    _start: int = 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes."""
        self._buf += data

    @property
    def buffered(self) -> int:
        """Bytes held, including a partial frame."""
        return len(self._buf) - self._start

    def next_frame(self) -> memoryview | None:
        """The next complete message body, or None until more bytes arrive.

        The returned view stays valid until the next ``feed``/``next_frame`` call
        that compacts the buffer; callers decode it (and copy block data they keep)
        before feeding more.

        Raises:
            MessageTooLarge: a length prefix over the limit.
            MalformedMessage: a length prefix longer than 9 bytes.
        """
        buf = self._buf
        if self._need < 0:
            got = try_read_uvarint(buf, self._start, what="message length prefix",
                                   error=MalformedMessage, max_bytes=9)
            if got is None:
                self._compact()
                return None
            result, pos = got
            if result > self.max_message_size:
                raise MessageTooLarge(
                    f"message of {result} bytes announced; the limit is {self.max_message_size}"
                )
            self._need = result
            self._start = pos
        if len(buf) - self._start < self._need:
            self._compact()
            return None
        s = self._start
        e = s + self._need
        with memoryview(buf) as view:
            body = view[s:e].tobytes()  # one copy (a bytearray slice would copy twice)
        self._start = e
        self._need = -1
        return memoryview(body)

    def _compact(self) -> None:
        if self._start:
            del self._buf[: self._start]
            self._start = 0
