"""Yamux whose frames fit one Noise message and whose reader takes whole messages.

Wire format (``/yamux/1.0.0``): a 12-byte header (version, type, flags, stream
ID, length; big-endian), then ``length`` payload bytes for DATA frames. The
protocol logic (stream states, flow-control windows, SYN/ACK/FIN/RST, ping,
go-away) is py-libp2p's ``Yamux``/``YamuxStream``; what changes:

* writing: a DATA frame carries at most ``MAX_FRAME_PAYLOAD_BYTES`` (65507), so
  header + payload is one Noise message (py-libp2p writes 65536-byte frames,
  which Noise splits into a 65519-byte and a 17-byte message); a writer waiting
  for window is woken by the window update instead of polling every 10 ms;
* reading (over a ``FastSecureSession``): every frame in each batch of decrypted
  Noise messages is dispatched in one pass, and a DATA payload is handed to its
  stream whole (a view of the decrypted message, queued on the stream); the
  stream's ``read`` copies it once, into the bytes it returns. (py-libp2p copies
  each payload into a per-stream bytearray that grows from empty after every
  read; that costs more CPU than the decryption.)
* window updates: sent once half the stream's window is used up (go-yamux's
  rule, with py-libp2p's window auto-tuning) instead of after every read.
"""

from __future__ import annotations

import logging
import struct
import weakref
from collections import deque
from collections.abc import Mapping
from typing import Any, Final

import trio
from libp2p.abc import IMuxedConn, ISecureConn
from libp2p.peer.id import ID
from libp2p.stream_muxer.exceptions import MuxedStreamEOF, MuxedStreamError, MuxedStreamReset
from libp2p.stream_muxer.muxer_multistream import MuxerMultistream
from libp2p.stream_muxer.yamux.yamux import (
    FLAG_ACK,
    FLAG_FIN,
    FLAG_RST,
    FLAG_SYN,
    GO_AWAY_NORMAL,
    HEADER_SIZE,
    MAX_WINDOW_SIZE,
    TYPE_DATA,
    TYPE_GO_AWAY,
    TYPE_PING,
    TYPE_WINDOW_UPDATE,
    YAMUX_HEADER_FORMAT,
    Yamux,
    YamuxStream,
)

from pinfold.daemon.p2p.transport.noise import MAX_PLAINTEXT_BYTES, FastSecureSession, NoiseMessageError

__all__ = [
    "DATA_READ_TIMEOUT_S",
    "MAX_FRAME_PAYLOAD_BYTES",
    "WINDOW_WAIT_S",
    "FastMuxerMultistream",
    "FastYamux",
    "FastYamuxStream",
    "install_muxer",
    "read_chunks",
]

logger = logging.getLogger(__name__)

#: largest DATA payload we send, bytes: header + payload = one Noise message
MAX_FRAME_PAYLOAD_BYTES: Final = MAX_PLAINTEXT_BYTES - HEADER_SIZE
#: a writer with no send window for this long fails, seconds (py-libp2p's value)
WINDOW_WAIT_S: Final = 5.0
#: a frame begun but not finished for this long closes the connection, seconds (py-libp2p's)
DATA_READ_TIMEOUT_S: Final = 60.0
#: how often a window-starved writer rechecks the stream's state, seconds
_WINDOW_RECHECK_S: Final = 0.05

_HEADER = struct.Struct(YAMUX_HEADER_FORMAT)
_pack = _HEADER.pack


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


class YamuxProtocolError(Exception):
    """The peer broke the Yamux protocol (an unknown frame type, an oversized frame)."""


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

    # ------------------------------------------------------------ called by FastYamux

    def _deliver(self, payload: memoryview | bytes) -> None:
        self._chunks.append(payload)
        self._buffered += len(payload)

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


def _wake_all(streams: list[YamuxStream]) -> None:
    """Wake the readers and writers of ``streams`` (their connection closed)."""
    for stream in streams:
        if isinstance(stream, FastYamuxStream):
            stream._wake_reader()
            stream._wake_writer()


def _missing(partial: bytearray) -> int:
    """Bytes still needed to complete the frame that starts ``partial``.

    Raises:
        YamuxProtocolError: the header announces a DATA frame over ``MAX_WINDOW_SIZE``.
    """
    if len(partial) < HEADER_SIZE:
        return HEADER_SIZE - len(partial)
    _version, typ, _flags, sid, length = _HEADER.unpack_from(partial)
    if typ != TYPE_DATA:
        return HEADER_SIZE - len(partial)
    if length > MAX_WINDOW_SIZE:
        raise YamuxProtocolError(f"DATA frame of {length} bytes on stream {sid}")
    return HEADER_SIZE + length - len(partial)


class FastYamux(Yamux):
    """py-libp2p's ``Yamux`` with ``FastYamuxStream``s and a batch frame reader.

    It runs over a ``FastSecureSession``; its reader dispatches every frame of
    each batch of Noise messages.
    """

    def __init__(self, secured_conn: ISecureConn, *args: Any, **kwargs: Any) -> None:
        """As py-libp2p's ``Yamux``.

        Raises:
            TypeError: ``secured_conn`` is not a ``FastSecureSession`` (FastYamux
                reads whole Noise messages; use it with ``FastNoiseTransport``).
        """
        if not isinstance(secured_conn, FastSecureSession):
            raise TypeError("FastYamux runs over pinfold's fast Noise session, "
                            f"not over {type(secured_conn).__name__}")
        super().__init__(secured_conn, *args, **kwargs)
        # every stream of this connection, also after py-libp2p's close() cleared
        # self.streams: their readers and writers are woken when it shuts down
        self._all_streams: weakref.WeakSet[FastYamuxStream] = weakref.WeakSet()

    async def open_stream(self) -> FastYamuxStream:
        """Open a stream (py-libp2p's ``open_stream``, making a ``FastYamuxStream``).

        Raises:
            MuxedStreamError: the connection is shutting down, or the SYN could not be sent.
        """
        await self.stream_backlog_semaphore.acquire()
        async with self.streams_lock:
            if self.event_shutting_down.is_set():
                self.stream_backlog_semaphore.release()
                raise MuxedStreamError("Connection is shutting down")
            sid = self.next_stream_id
            self.next_stream_id += 2
            stream = FastYamuxStream(sid, self, True)
            stream._owns_backlog_slot = True
            self._all_streams.add(stream)
            self.streams[sid] = stream
            self.stream_buffers[sid] = bytearray()
            self.stream_events[sid] = trio.Event()
        try:
            await self._write_frame(_pack(0, TYPE_WINDOW_UPDATE, FLAG_SYN, sid, 0))
        except Exception as exc:
            self.stream_backlog_semaphore.release()
            stream._backlog_slot_released = True
            async with self.streams_lock:
                self.streams.pop(sid, None)
                self.stream_buffers.pop(sid, None)
                self.stream_events.pop(sid, None)
            raise MuxedStreamError(f"Failed to send SYN: {exc}") from exc
        return stream

    async def _wake_streams_on_shutdown(self) -> None:
        """Wake every parked reader and writer as soon as the connection starts
        shutting down (py-libp2p's ``close`` sets the streams' closed flags at once
        but returns only after its own 0.1 s sleep)."""
        await self.event_shutting_down.wait()
        _wake_all(list(self._all_streams))

    async def _write_frame(self, data: bytes) -> None:
        async with self._write_lock:
            await self.secured_conn.write(data)

    async def handle_incoming(self) -> None:
        session = self.secured_conn
        assert isinstance(session, FastSecureSession)  # checked in __init__
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._wake_streams_on_shutdown)
            try:
                await self._read_frames(session)
            except Exception as exc:  # noqa: BLE001 - any failure ends this connection
                broken = isinstance(exc, (YamuxProtocolError, NoiseMessageError))  # the peer's fault
                level = logging.WARNING if broken else logging.DEBUG
                logger.log(level, "Yamux connection to %s ended: %s: %s", self.peer_id, type(exc).__name__, exc)
            self.event_shutting_down.set()
            await self._cleanup_on_error()

    async def _read_frames(self, session: FastSecureSession) -> None:
        """Dispatch frames until the connection ends (returns) or fails (raises)."""
        partial = bytearray()  # a frame begun in an earlier message
        while not self.event_shutting_down.is_set():
            if partial:
                with trio.move_on_after(DATA_READ_TIMEOUT_S) as scope:
                    msgs = await session.receive_plaintexts()
                if scope.cancelled_caught:
                    raise YamuxProtocolError(f"a frame stayed incomplete for {DATA_READ_TIMEOUT_S:g} s")
            else:
                msgs = await session.receive_plaintexts()
            if not msgs:
                if partial:
                    raise YamuxProtocolError("the connection ended inside a frame")
                return
            for msg in msgs:
                pos = 0
                end = len(msg)
                view = memoryview(msg)
                while partial and pos < end:  # complete the frame begun earlier
                    take = min(_missing(partial), end - pos)
                    partial += view[pos:pos + take]
                    pos += take
                    if not _missing(partial):
                        frame = bytes(partial)
                        partial.clear()
                        if await self._dispatch(frame, 0, len(frame)) < 0:
                            return
                if pos < end:
                    pos = await self._dispatch(msg, pos, end)
                    if pos < 0:
                        return
                    if pos < end:
                        partial += view[pos:]

    async def _dispatch(self, data: bytes, pos: int, end: int) -> int:
        """Handle the whole frames in ``data[pos:end]``; the offset of the first
        incomplete one (``end`` when none), or -1 after GO_AWAY.

        DATA payloads are handed on as views of ``data``, which must not change.
        """
        unpack = _HEADER.unpack_from
        lock = self.streams_lock
        streams = self.streams
        while end - pos >= HEADER_SIZE:
            _version, typ, flags, sid, length = unpack(data, pos)
            if typ == TYPE_DATA:
                stop = pos + HEADER_SIZE + length
                if stop > end:
                    if length > MAX_WINDOW_SIZE:
                        raise YamuxProtocolError(f"DATA frame of {length} bytes on stream {sid}")
                    return pos
                payload: Any = memoryview(data)[pos + HEADER_SIZE:stop] if length else b""
            elif typ == TYPE_WINDOW_UPDATE:
                stop = pos + HEADER_SIZE
                payload = b""
            else:
                if not await self._session_frame(typ, flags, length):
                    return -1
                pos += HEADER_SIZE
                continue
            if flags & FLAG_SYN:
                await self._new_stream_frame(typ, flags, sid, length, payload)
            elif not lock.locked():  # nobody holds it, and _apply does not await
                stream = streams.get(sid)
                if stream is not None:
                    self._apply(stream, typ, flags, length, payload)
            else:
                async with lock:
                    stream = streams.get(sid)
                    if stream is not None:
                        self._apply(stream, typ, flags, length, payload)
            pos = stop
        return pos

    def _apply(self, stream: YamuxStream, typ: int, flags: int, length: int, payload: Any) -> None:
        """Apply a DATA or WINDOW_UPDATE frame to ``stream`` (caller holds ``streams_lock``).

        Windows are changed without ``window_lock``: its holders never await while
        holding it, and this runs without awaiting. (trio's ``Lock.acquire`` yields to
        the scheduler even when the lock is free; the frame loop takes
        ``streams_lock`` only when another task holds it.)
        """
        sid = stream.stream_id
        fast = isinstance(stream, FastYamuxStream)
        wake_reader = False
        if typ == TYPE_WINDOW_UPDATE:
            if length:
                stream.send_window += length
                if fast:
                    stream._wake_writer()
        elif length:
            if fast:
                stream._deliver(payload)
            else:
                self.stream_buffers[sid].extend(payload)
            stream.recv_window -= length
            if stream.recv_window < 0:
                logger.warning("Yamux stream %d: peer %s exceeded the receive window by %d bytes",
                               sid, self.peer_id, -stream.recv_window)
                stream.recv_window = 0
            wake_reader = True
        if flags & FLAG_FIN:
            stream.recv_closed = True
            if stream.send_closed:
                stream.closed = True
            wake_reader = True
        if flags & FLAG_RST:
            stream.closed = True
            stream.reset_received = True
            wake_reader = True
            if fast:
                stream._wake_writer()
        if wake_reader:
            if fast:
                stream._wake_reader()
            else:
                self.stream_events[sid].set()
        if stream.closed:
            self._finalize_stream_locked(stream, fully_closed=True)

    async def _new_stream_frame(self, typ: int, flags: int, sid: int, length: int, payload: bytes) -> None:
        """A frame with SYN: open the peer's stream, answer ACK (RST when the ID is taken)."""
        reply: bytes | None = None
        new: FastYamuxStream | None = None
        async with self.streams_lock:
            if sid in self.streams:
                reply = _pack(0, TYPE_WINDOW_UPDATE, FLAG_RST, sid, 0)
            else:
                new = FastYamuxStream(sid, self, False)
                self._all_streams.add(new)
                self.streams[sid] = new
                self.stream_buffers[sid] = bytearray()
                self.stream_events[sid] = trio.Event()
                self._apply(new, typ, flags, length, payload)
                if not flags & FLAG_RST:
                    reply = _pack(0, TYPE_WINDOW_UPDATE, FLAG_ACK, sid, 0)
        if reply is not None:
            await self._write_frame(reply)
        if new is not None:
            await self.new_stream_send_channel.send(new)

    async def _session_frame(self, typ: int, flags: int, value: int) -> bool:
        """A PING or GO_AWAY frame; False when the connection is to end.

        Raises:
            YamuxProtocolError: an unknown frame type.
        """
        if typ == TYPE_PING:
            if flags & FLAG_SYN:
                await self._write_frame(_pack(0, TYPE_PING, FLAG_ACK, 0, value))
            elif flags & FLAG_ACK:
                rtt = trio.current_time() - self._ping_sent_time
                self._rtt = rtt if self._rtt == 0.0 else (self._rtt + rtt) / 2
                self._ping_event.set()
            return True
        if typ == TYPE_GO_AWAY:
            logger.debug("Yamux: %s sent GO_AWAY (code %d%s)", self.peer_id, value,
                         ", normal" if value == GO_AWAY_NORMAL else "")
            return False
        raise YamuxProtocolError(f"unknown frame type {typ}")


class FastMuxerMultistream(MuxerMultistream):
    """py-libp2p's muxer negotiation, building the class registered for the protocol.

    py-libp2p 0.8.1's ``MuxerMultistream.new_conn`` builds its own ``Yamux`` for
    ``/yamux/1.0.0`` and ignores the class given in ``muxer_opt``.
    """

    async def new_conn(self, conn: ISecureConn, peer_id: ID) -> IMuxedConn:
        protocol, muxer_class = await self._selector.select(conn, conn.is_initiator, self.negotiate_timeout)
        if isinstance(muxer_class, type) and issubclass(muxer_class, Yamux):
            muxed: IMuxedConn = muxer_class(conn, peer_id, is_initiator=conn.is_initiator)
        else:
            muxed = muxer_class(conn, peer_id)
        return self._annotate_connection(muxed, conn, protocol)


def install_muxer(network: Any, muxers: Mapping[Any, type]) -> None:
    """Negotiate ``muxers`` (protocol -> muxer class) on ``network``'s connections with
    a ``FastMuxerMultistream``.

    Raises:
        RuntimeError: the swarm has no ``upgrader.muxer_multistream`` (py-libp2p changed).
    """
    upgrader = getattr(network, "upgrader", None)
    stock = getattr(upgrader, "muxer_multistream", None)
    if not isinstance(stock, MuxerMultistream):
        raise RuntimeError("py-libp2p's swarm has no upgrader.muxer_multistream; "
                           "the fast channel cannot be installed (set node.fast_channel = false)")
    upgrader.muxer_multistream = FastMuxerMultistream(dict(muxers), negotiate_timeout=stock.negotiate_timeout)
