"""One Yamux stream of the fast channel: ``FastYamuxStream`` and ``read_chunks``.

The stream queues whole DATA payloads as its connection (``yamux.FastYamux``)
hands them over, without copying; ``read`` copies once, ``read_chunks`` not at
all. Its writes are DATA frames of at most ``MAX_FRAME_PAYLOAD_BYTES`` (one
Noise message each). ``peek``, ``wait_buffered`` and ``answer`` serve the
one-write answer to a peer's new stream (``select.InboundSelector``). A stream
served by the connection's reader (``direct.py``) hands its payloads to its
``DirectReceiver`` instead of queueing them.
"""

from __future__ import annotations

import struct
from collections import deque
from typing import Any, Final

import trio
from libp2p.stream_muxer.exceptions import MuxedStreamEOF, MuxedStreamError, MuxedStreamReset
from libp2p.stream_muxer.yamux.yamux import (
    FLAG_ACK,
    FLAG_FIN,
    HEADER_SIZE,
    TYPE_DATA,
    TYPE_WINDOW_UPDATE,
    YAMUX_HEADER_FORMAT,
    Yamux,
    YamuxStream,
)

from pinfold.daemon.p2p.transport.direct import DirectReceiver
from pinfold.daemon.p2p.transport.noise import MAX_PLAINTEXT_BYTES

__all__ = [
    "MAX_FRAME_PAYLOAD_BYTES",
    "at_end",
    "WINDOW_WAIT_S",
    "FastYamuxStream",
    "read_chunks",
    "wake_all",
]

#: largest DATA payload we send, bytes: header + payload = one Noise message
MAX_FRAME_PAYLOAD_BYTES: Final = MAX_PLAINTEXT_BYTES - HEADER_SIZE
#: a writer with no send window for this long fails, seconds (py-libp2p's value)
WINDOW_WAIT_S: Final = 5.0
#: how often a window-starved writer rechecks the stream's state, seconds
_WINDOW_RECHECK_S: Final = 0.05

_pack = struct.Struct(YAMUX_HEADER_FORMAT).pack


async def read_chunks(stream: Any, max_bytes: int) -> list[memoryview | bytes]:
    """Read what arrived on a libp2p stream as a list of read-only chunks (at least
    one byte in all), waiting until some arrive.

    On the fast channel these are the DATA payloads as they were decrypted (no
    copy: ``FastYamuxStream.read_chunks``); on any other stream it is one
    ``stream.read(max_bytes)``. At the end or a reset the stream's own ``read``
    raises (py-libp2p's ``StreamEOF``/``StreamReset``), so its state moves as usual.

    Args:
        stream: a py-libp2p ``INetStream``.
        max_bytes: bytes to take at most (one chunk is taken whatever its size).

    Returns:
        The chunks; ``[]`` only when a stock stream's ``read`` returned ``b""``.
    """
    muxed = getattr(stream, "muxed_stream", None)
    if isinstance(muxed, FastYamuxStream):
        try:
            return await muxed.read_chunks(max_bytes)
        except (MuxedStreamEOF, MuxedStreamReset):
            pass  # the stream's read raises the same end and records it
    data = await stream.read(max_bytes)
    return [data] if data else []


def at_end(stream: Any) -> bool:
    """Whether a libp2p stream's peer closed its side and everything it sent was
    read (the next read would end), known without waiting: True only on the fast
    channel (False for a stock stream, whose buffer is not looked into)."""
    muxed = getattr(stream, "muxed_stream", None)
    return (isinstance(muxed, FastYamuxStream) and muxed.recv_closed and not muxed._buffered
            and not muxed.reset_received)


class FastYamuxStream(YamuxStream):
    """A ``YamuxStream`` that queues whole DATA payloads and writes frames of at most
    ``MAX_FRAME_PAYLOAD_BYTES``.

    Received data waits in ``_chunks`` (views of decrypted Noise messages, or
    bytes); py-libp2p's ``conn.stream_buffers`` entry of the stream stays empty.
    """

    def __init__(self, stream_id: int, conn: Yamux, is_initiator: bool) -> None:
        super().__init__(stream_id, conn, is_initiator)
        self._chunks: deque[memoryview | bytes] = deque()
        self._buffered = 0  # bytes in _chunks
        self._data_ev = trio.Event()  # set (and replaced) when data or an end arrives
        self._reader_waiting = False
        self._window_ev = trio.Event()  # set (and replaced) when send window arrives
        #: served by the connection's reader (direct.py): where payloads go
        self._direct: DirectReceiver | None = None
        self._direct_refused = False  # the receiver's feed said no: reset the stream

    # ------------------------------------------------------------ called by FastYamux

    def _deliver(self, payload: memoryview | bytes) -> None:
        direct = self._direct
        if direct is not None:
            if not self._direct_refused and not direct.feed(payload):
                self._direct_refused = True
            return
        self._chunks.append(payload)
        self._buffered += len(payload)

    def _end_direct(self, clean: bool) -> None:
        """Tell the direct receiver the stream ended (once) and detach it."""
        direct = self._direct
        if direct is not None:
            self._direct = None
            direct.end(clean and not self._direct_refused)

    def _serve_directly(self, receiver: DirectReceiver) -> None:
        """Hand the buffered payloads, and from now on every payload, to ``receiver``."""
        self._direct = receiver
        chunks = self._chunks
        self._buffered = 0
        while chunks and not self._direct_refused:
            if not receiver.feed(chunks.popleft()):
                self._direct_refused = True
        chunks.clear()

    def _wake_reader(self) -> None:
        if self._reader_waiting:
            self._data_ev.set()
            self._data_ev = trio.Event()

    def _wake_writer(self) -> None:
        self._window_ev.set()
        self._window_ev = trio.Event()

    # ------------------------------------------------------------ reading

    async def read(self, n: int | None = -1) -> bytes:
        """Up to ``n`` bytes (everything buffered when ``n`` is None or -1), waiting
        until some arrive.

        Raises:
            MuxedStreamEOF: the peer closed its side and everything was read, or
                the connection shut down.
            MuxedStreamReset: the stream was reset (by the peer, or by the
                connection's failure).
        """
        if n == 0:
            return b""
        if n is None or n < 0:
            n = -1
        await self._wait_data()
        data = self._take(n)
        if not self.recv_closed and not self.closed:
            await self._grant_window()
        return data

    async def read_chunks(self, max_bytes: int) -> list[memoryview | bytes]:
        """The received payloads as they arrived, without joining them: whole
        queued chunks (views of decrypted Noise messages, or bytes) while their
        total stays within ``max_bytes``, and at least one; waits until some arrive.

        The chunks are read-only and never change (the receiver's frame decoder
        copies each message once, from these, instead of once more from a
        joined ``read``).

        Raises:
            MuxedStreamEOF, MuxedStreamReset: as ``read``.
        """
        await self._wait_data()
        chunks = self._chunks
        out = [chunks.popleft()]
        taken = len(out[0])
        while chunks and taken + len(chunks[0]) <= max_bytes:
            c = chunks.popleft()
            taken += len(c)
            out.append(c)
        self._buffered -= taken
        if not self.recv_closed and not self.closed:
            await self._grant_window()
        return out

    async def _wait_data(self) -> None:
        """Return once data is buffered; raise when the stream ended or was reset."""
        while True:
            if self._buffered:
                if self.reset_received and not self.recv_closed:
                    raise MuxedStreamReset("Stream was reset")
                return
            if self.reset_received:
                raise MuxedStreamReset("Stream was reset")
            if self.recv_closed:
                raise MuxedStreamEOF("Stream is closed for receiving")
            if self.closed:
                raise MuxedStreamReset("Stream is reset or closed")
            if self.conn.event_shutting_down.is_set():
                raise MuxedStreamEOF("Connection shut down")
            self._reader_waiting = True
            try:
                await self._data_ev.wait()
            finally:
                self._reader_waiting = False

    def _take(self, n: int) -> bytes:
        """Remove and return up to ``n`` buffered bytes (all when ``n`` < 0)."""
        chunks = self._chunks
        if n < 0 or n >= self._buffered:
            data = bytes(chunks[0]) if len(chunks) == 1 else b"".join(chunks)
            chunks.clear()
            self._buffered = 0
            return data
        parts = []
        left = n
        while left:
            head = chunks[0]
            if len(head) <= left:
                parts.append(chunks.popleft())
                left -= len(head)
            else:
                view = memoryview(head)
                parts.append(view[:left])
                chunks[0] = view[left:]
                left = 0
        self._buffered -= n
        return bytes(parts[0]) if len(parts) == 1 else b"".join(parts)

    def peek(self, max_bytes: int) -> bytes:
        """Up to ``max_bytes`` of the buffered data, left in the buffer (b"" when none)."""
        chunks = self._chunks
        if not chunks:
            return b""
        if len(chunks[0]) >= max_bytes or len(chunks) == 1:
            return bytes(chunks[0][:max_bytes])
        out = bytearray()
        for c in chunks:
            out += c[:max_bytes - len(out)]
            if len(out) >= max_bytes:
                break
        return bytes(out)

    async def wait_buffered(self, timeout_s: float) -> bool:
        """Whether data is buffered, waiting up to ``timeout_s`` seconds for some
        (False also when the stream ended or was reset first)."""
        if self._buffered:
            return True
        with trio.move_on_after(timeout_s):
            try:
                await self._wait_data()
            except (MuxedStreamEOF, MuxedStreamReset):
                return False
        return self._buffered > 0

    async def answer(self, consumed: int, reply: bytes, *, window: int, close: bool) -> None:
        """Consume ``consumed`` buffered bytes and write ``reply`` in one write: the
        stream's ACK (if not sent yet) with a window update raising our receive
        window to ``window`` bytes (when larger), then ``reply`` as one DATA frame,
        with FIN when ``close`` (we will write nothing more on this stream).

        ``reply`` must fit the send window and one frame (a protocol negotiation's
        answer does).

        Raises:
            MuxedStreamError: the stream is closed for sending, or ``reply`` does
                not fit; py-libp2p's connection errors from the write.
        """
        frames = self.answer_frames(consumed, reply, window=window, close=close)
        async with self.rw_lock.write_lock():
            await self.conn._write_frame(frames)

    def answer_frames(self, consumed: int, reply: bytes, *, window: int, close: bool) -> bytes:
        """``answer``'s frames, with the stream's state moved as if they were sent
        (the caller writes them next, before any other frame of this stream).

        Raises:
            MuxedStreamError: as ``answer``.
        """
        if self.send_closed or self.closed:
            raise MuxedStreamError("Stream is closed for sending")
        if len(reply) > min(self.send_window, MAX_FRAME_PAYLOAD_BYTES):
            raise MuxedStreamError(f"a {len(reply)}-byte answer does not fit the send window")
        if consumed:
            self._take(consumed)
        conn = self.conn
        sid = self.stream_id
        ack_due = getattr(conn, "_ack_due", None)  # FastYamux: the stream's ACK not sent yet
        acked = ack_due is None or not ack_due(sid)
        frames = []
        grant = window - (self.recv_window + self._buffered)
        if grant > 0 or not acked:
            grant = max(0, grant)
            self.recv_window += grant  # a one-off: the target window stays as it was
            frames.append(_pack(0, TYPE_WINDOW_UPDATE, 0 if acked else FLAG_ACK, sid, grant))
        self.send_window -= len(reply)
        frames.append(_pack(0, TYPE_DATA, FLAG_FIN if close else 0, sid, len(reply)))
        frames.append(reply)
        if close:
            self.send_closed = True
            if self.recv_closed:
                self.closed = True
        return b"".join(frames)

    async def _grant_window(self) -> None:
        """Give the peer back the window that reads freed, once it is at least half
        the target window (py-libp2p's GrowTo threshold and auto-tuning)."""
        buffered = self._buffered
        delta = self.target_recv_window - (self.recv_window + buffered)
        if delta <= 0 or delta < self._grow_threshold():
            return
        increment = self._grow_to_delta(buffered) + self._apply_autotune_epoch(buffered)
        await self.send_window_update(increment)

    # ------------------------------------------------------------ writing

    async def write(self, data: bytes) -> None:
        """Send ``data`` as DATA frames, waiting for send window as needed.

        Concurrent writes to one stream are sent one after the other (py-libp2p
        interleaves their frames).

        Raises:
            MuxedStreamError: the stream is closed for sending or reset, or no
                window came for ``WINDOW_WAIT_S`` seconds (the peer stopped reading).
        """
        if self.send_closed:
            raise MuxedStreamError("Stream is closed for sending")
        view = memoryview(data).cast("B")
        total = len(view)
        sent = 0
        write_frame = self.conn._write_frame
        async with self.rw_lock.write_lock():
            while sent < total:
                if self.send_closed:
                    raise MuxedStreamError("Stream is closed for sending")
                if self.closed:
                    raise MuxedStreamError("Stream is closed")
                if self.send_window <= 0:
                    await self._wait_for_window()
                    continue
                n = min(self.send_window, MAX_FRAME_PAYLOAD_BYTES, total - sent)
                self.send_window -= n
                await write_frame(b"".join((_pack(0, TYPE_DATA, 0, self.stream_id, n),
                                            view[sent:sent + n])))
                sent += n

    async def _wait_for_window(self) -> None:
        self._zero_window_waits += 1
        deadline = trio.current_time() + WINDOW_WAIT_S
        while self.send_window <= 0 and not self.closed and not self.send_closed:
            now = trio.current_time()
            if now >= deadline:
                raise MuxedStreamError(f"Timed out waiting for window update after {WINDOW_WAIT_S:g} seconds.")
            with trio.move_on_at(min(deadline, now + _WINDOW_RECHECK_S)):
                await self._window_ev.wait()


def wake_all(streams: list[YamuxStream]) -> None:
    """Wake the readers and writers of ``streams`` (their connection closed)."""
    for stream in streams:
        if isinstance(stream, FastYamuxStream):
            stream._wake_reader()
            stream._wake_writer()
