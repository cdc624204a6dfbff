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
  Noise messages is dispatched in one pass; DATA payloads are copied once, from
  the decrypted message into the stream's buffer.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Mapping
from typing import Any, Final

import trio
from libp2p.abc import IMuxedConn, ISecureConn
from libp2p.peer.id import ID
from libp2p.stream_muxer.exceptions import MuxedStreamError
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

from .noise import MAX_PLAINTEXT_BYTES, FastSecureSession

__all__ = [
    "DATA_READ_TIMEOUT_S",
    "MAX_FRAME_PAYLOAD_BYTES",
    "WINDOW_WAIT_S",
    "FastMuxerMultistream",
    "FastYamux",
    "FastYamuxStream",
    "install_muxer",
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


class YamuxProtocolError(Exception):
    """The peer broke the Yamux protocol (an unknown frame type, an oversized frame)."""


def _acquire_nowait_or_wait(lock: trio.Lock) -> Any:
    """None when ``lock`` was free and is now ours, else the coroutine that waits for it.

    trio's ``Lock.acquire`` yields to the scheduler even when the lock is free; the
    frame loop takes ``streams_lock`` once per frame and skips that trip.
    """
    try:
        lock.acquire_nowait()
    except trio.WouldBlock:
        return lock.acquire()
    return None


class FastYamuxStream(YamuxStream):
    """A ``YamuxStream`` writing frames of at most ``MAX_FRAME_PAYLOAD_BYTES``."""

    _window_ev: trio.Event

    def __init__(self, stream_id: int, conn: Yamux, is_initiator: bool) -> None:
        super().__init__(stream_id, conn, is_initiator)
        self._window_ev = trio.Event()

    def _wake_writer(self) -> None:
        self._window_ev.set()
        self._window_ev = trio.Event()

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


def _adopt(stream: YamuxStream) -> FastYamuxStream:
    """Make a stream built by py-libp2p's ``Yamux.open_stream`` a ``FastYamuxStream``
    (same state; only methods differ)."""
    stream.__class__ = FastYamuxStream
    stream._window_ev = trio.Event()  # type: ignore[attr-defined]
    return stream  # type: ignore[return-value]


class FastYamux(Yamux):
    """py-libp2p's ``Yamux`` with ``FastYamuxStream``s and a batch frame reader.

    Over a ``FastSecureSession`` the reader handles all frames of each batch of
    Noise messages; over any other secure connection it is py-libp2p's reader.
    """

    async def open_stream(self) -> FastYamuxStream:  # type: ignore[override]
        return _adopt(await super().open_stream())

    async def _write_frame(self, data: bytes) -> None:
        async with self._write_lock:
            await self.secured_conn.write(data)

    async def handle_incoming(self) -> None:
        session = self.secured_conn
        if not isinstance(session, FastSecureSession):
            await super().handle_incoming()
            return
        try:
            await self._read_frames(session)
        except Exception as exc:  # noqa: BLE001 - any failure ends this connection
            level = logging.WARNING if isinstance(exc, YamuxProtocolError) else logging.DEBUG
            logger.log(level, "Yamux connection to %s ended: %s: %s", self.peer_id, type(exc).__name__, exc)
        self.event_shutting_down.set()
        await self._cleanup_on_error()

    async def _read_frames(self, session: FastSecureSession) -> None:
        """Dispatch frames until the connection ends (returns) or fails (raises)."""
        unpack = _HEADER.unpack_from
        lock = self.streams_lock
        streams = self.streams
        buf = bytearray()  # the start of a frame that continues in the next message
        while not self.event_shutting_down.is_set():
            if buf:
                with trio.move_on_after(DATA_READ_TIMEOUT_S) as scope:
                    msgs = await session.receive_plaintexts()
                if scope.cancelled_caught:
                    raise YamuxProtocolError(f"a frame stayed incomplete for {DATA_READ_TIMEOUT_S:g} s")
            else:
                msgs = await session.receive_plaintexts()
            if not msgs:
                if buf:
                    raise YamuxProtocolError("the connection ended inside a frame")
                return
            for msg in msgs:
                if buf:
                    buf += msg
                    data: bytes | bytearray = buf
                else:
                    data = msg
                end = len(data)
                pos = 0
                while end - pos >= HEADER_SIZE:
                    _version, typ, flags, sid, length = unpack(data, pos)
                    if typ == TYPE_DATA:
                        stop = pos + HEADER_SIZE + length
                        if stop > end:
                            if length > MAX_WINDOW_SIZE:
                                raise YamuxProtocolError(f"DATA frame of {length} bytes on stream {sid}")
                            break
                    elif typ == TYPE_WINDOW_UPDATE:
                        stop = pos + HEADER_SIZE
                    else:
                        pos += HEADER_SIZE
                        if not await self._session_frame(typ, flags, length):
                            return
                        continue
                    if flags & FLAG_SYN:
                        payload = bytes(data[pos + HEADER_SIZE:stop]) if typ == TYPE_DATA else b""
                        await self._new_stream_frame(typ, flags, sid, length, payload)
                    else:
                        waiter = _acquire_nowait_or_wait(lock)
                        if waiter is not None:
                            await waiter
                        try:
                            stream = streams.get(sid)
                            if stream is not None:
                                if typ == TYPE_DATA:
                                    with memoryview(data) as view:
                                        self._apply(stream, typ, flags, length, view[pos + HEADER_SIZE:stop])
                                else:
                                    self._apply(stream, typ, flags, length, b"")
                        finally:
                            lock.release()
                    pos = stop
                if data is buf:
                    del buf[:pos]
                elif pos < end:
                    buf = bytearray(memoryview(data)[pos:])

    def _apply(self, stream: YamuxStream, typ: int, flags: int, length: int, payload: Any) -> None:
        """Apply a DATA or WINDOW_UPDATE frame to ``stream`` (caller holds ``streams_lock``).

        ``send_window`` is changed without ``window_lock``: its holders never await
        while holding it, and this runs without awaiting.
        """
        sid = stream.stream_id
        wake_reader = False
        if typ == TYPE_WINDOW_UPDATE:
            if length:
                stream.send_window += length
                if isinstance(stream, FastYamuxStream):
                    stream._wake_writer()
        elif length:
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
            if isinstance(stream, FastYamuxStream):
                stream._wake_writer()
        if wake_reader:
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
