"""Bitswap stream framing: each message is prefixed with its length (sans-IO).

bitswap-protocol.md, "Protocol Format": every message on a stream is prefixed
with its length as an unsigned varint (multiformats/unsigned-varint, at most 9
bytes); messages MUST be <= 4 MiB. ``FrameDecoder`` splits received bytes into
message bodies, refusing an oversize length before buffering its body;
``frame`` prefixes one body. Imports only the varint codec and ``errors``.
"""

from __future__ import annotations

from collections import deque
from typing import Final

from pinfold.blockstore.varint import encode_uvarint, try_read_uvarint

from pinfold.daemon.p2p.bitswap.errors import MalformedMessage, MessageTooLarge

__all__ = ["MAX_MESSAGE_SIZE", "FrameDecoder", "frame"]

#: Largest message we send or accept, bytes (spec, "Protocol Format": MUST be <= 4 MiB).
MAX_MESSAGE_SIZE: Final = 4 * 1024 * 1024


def frame(payload: bytes) -> bytes:
    """``payload`` with its uvarint length prefix (spec, "Protocol Format")."""
    return encode_uvarint(len(payload)) + payload


class FrameDecoder:
    """Splits a byte stream into length-prefixed messages (sans-IO).

    ``feed`` bytes as they arrive, then call ``next_frame`` until it returns
    None. A length prefix over ``max_message_size`` raises ``MessageTooLarge``
    as soon as the prefix is complete, before any of the body is buffered, so a
    hostile peer cannot make us hold more than one message's worth of bytes.

    Fed pieces are kept as they came (read-only views; a writable buffer is
    copied on ``feed``), so each message body is copied at most once: a body
    inside one piece is a view of it, one spanning pieces is joined once.
    """

    __slots__ = ("_have", "_need", "_pieces", "max_message_size")

    def __init__(self, max_message_size: int = MAX_MESSAGE_SIZE) -> None:
        self.max_message_size = max_message_size
        self._pieces: deque[memoryview] = deque()
        self._have = 0  # bytes in _pieces
        self._need = -1  # body length of the frame being assembled, -1 = reading a prefix

    @property
    def pending(self) -> bool:
        """Whether bytes of an incomplete message are held."""
        return self._have > 0 or self._need >= 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes (a writable buffer is copied; read-only ones are kept)."""
        view = memoryview(data)
        if not view.readonly:
            view = memoryview(view.tobytes())
        elif view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        if len(view):
            self._pieces.append(view)
            self._have += len(view)

    @property
    def buffered(self) -> int:
        """Bytes held, including a partial frame."""
        return self._have

    def next_frame(self) -> memoryview | None:
        """The next complete message body, or None until more bytes arrive.

        The returned view is read-only and stays valid (it is a view of a fed
        read-only buffer or of a new ``bytes``).

        Raises:
            MessageTooLarge: a length prefix over the limit.
            MalformedMessage: a length prefix longer than 9 bytes.
        """
        if self._need < 0:
            if not self._have:
                return None
            head = self._pieces[0]
            if len(head) < 9 and len(self._pieces) > 1:
                head = memoryview(b"".join(self._peek(9)))
            got = try_read_uvarint(head, 0, what="message length prefix",
                                   error=MalformedMessage, max_bytes=9)
            if got is None:
                return None
            result, pos = got
            if result > self.max_message_size:
                raise MessageTooLarge(
                    f"message of {result} bytes announced; the limit is {self.max_message_size}"
                )
            self._drop(pos)
            self._need = result
        need = self._need
        if self._have < need:
            return None
        self._need = -1
        if not need:
            return memoryview(b"")
        pieces = self._pieces
        head = pieces[0]
        if len(head) >= need:  # within one piece: a view, no copy
            body = head[:need]
            self._drop(need)
            return body
        parts = []
        left = need
        while left:
            head = pieces[0]
            if len(head) <= left:
                parts.append(pieces.popleft())
                left -= len(head)
            else:
                parts.append(head[:left])
                pieces[0] = head[left:]
                left = 0
        self._have -= need
        return memoryview(b"".join(parts))  # the one copy of a body spanning pieces

    def _peek(self, n: int) -> list[memoryview]:
        out, left = [], n
        for piece in self._pieces:
            if not left:
                break
            out.append(piece[:left])
            left -= len(out[-1])
        return out

    def _drop(self, n: int) -> None:
        pieces = self._pieces
        self._have -= n
        while n:
            head = pieces[0]
            if len(head) <= n:
                pieces.popleft()
                n -= len(head)
            else:
                pieces[0] = head[n:]
                n = 0
