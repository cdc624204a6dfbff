"""Yamux whose frames fit one Noise message and whose reader takes whole messages:
the connection, ``FastYamux`` (its streams: ``yamux_stream.FastYamuxStream``).

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
* accepting a stream: the ACK of a peer's new stream is not written on its
  own; it rides on the first frame we write on that stream (go-yamux also
  acknowledges a stream only when it is accepted), or goes alone after
  ``ACK_DEFER_S``. With the one-write answer of ``FastYamuxStream.answer``
  (used by ``select.InboundSelector``), a peer that opens a stream per message
  (Kubo, Helia) costs us one write per stream instead of five.
* serving a receive-only protocol in the reader (``direct.py``): a peer's new
  stream waits (``_pending``) for its first bytes; if they select a protocol
  in ``direct`` routes, the stream is answered with the ACK, a window, the echo
  and our FIN (queued, and written with the other answers of the same batch
  of frames in one write) and its payloads go to the protocol's receiver as
  they are read. Otherwise, or when no bytes came within ``PEEK_WAIT_S``, it
  goes to py-libp2p (``new_stream_send_channel``) with nothing consumed.
"""

from __future__ import annotations

import logging
import struct
import weakref
from collections.abc import Awaitable
from typing import Any, Final

import trio
from libp2p.abc import ISecureConn
from libp2p.stream_muxer.exceptions import MuxedStreamError
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

from pinfold.daemon.p2p.transport.direct import DirectRoutes
from pinfold.daemon.p2p.transport.noise import FastSecureSession, NoiseMessageError
from pinfold.daemon.p2p.transport.select import (
    PEEK_WAIT_S,
    RECEIVE_ONLY_WINDOW_BYTES,
    SELECT_PEEK_BYTES,
    parse_select,
    select_reply,
)
from pinfold.daemon.p2p.transport.yamux_stream import (
    MAX_FRAME_PAYLOAD_BYTES,
    WINDOW_WAIT_S,
    FastYamuxStream,
    wake_all,
    read_chunks,
)

__all__ = [
    "ACK_DEFER_S",
    "DATA_READ_TIMEOUT_S",
    "MAX_FRAME_PAYLOAD_BYTES",
    "WINDOW_WAIT_S",
    "WRITE_SHIELD_S",
    "FastYamux",
    "FastYamuxStream",
    "read_chunks",
]

logger = logging.getLogger(__name__)

#: a frame begun but not finished for this long closes the connection, seconds (py-libp2p's)
DATA_READ_TIMEOUT_S: Final = 60.0
#: longest a frame write may take once begun, seconds: it is not cancellable
#: (half a Noise message breaks the connection), so past this the connection closes
WRITE_SHIELD_S: Final = 30.0
#: a write of at least this many bytes handed to the socket at once then lets
#: other tasks run (a writer of many block frames would hold the loop), bytes
YIELD_AFTER_BYTES: Final = 16 * 1024
#: a peer's new stream we wrote nothing on for this long is acknowledged alone,
#: seconds (go-yamux closes a session whose stream stays unacknowledged 75 s)
ACK_DEFER_S: Final = 0.5

_HEADER = struct.Struct(YAMUX_HEADER_FORMAT)
_pack = _HEADER.pack

class YamuxProtocolError(Exception):
    """The peer broke the Yamux protocol (an unknown frame type, an oversized frame)."""


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
        # the peer's streams not acknowledged yet: stream ID -> when it was opened
        self._unacked: dict[int, float] = {}
        self._unacked_ev = trio.Event()  # set when a stream joins _unacked
        self._ack_scope = trio.CancelScope()  # _ack_late_streams runs in it
        #: receive-only protocols served by the reader (set by FastMuxerMultistream)
        self.direct: DirectRoutes | None = None
        # the peer's new streams waiting for their first bytes: ID -> (stream, since)
        self._pending: dict[int, tuple[FastYamuxStream, float]] = {}
        self._pending_ev = trio.Event()  # set when a stream joins _pending
        self._queued: list[bytes] = []  # frames written at the end of the batch being read
        self._pending_scope = trio.CancelScope()  # _hand_over_late runs in it
        #: streams served by the reader so far
        self.direct_streams = 0

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
        wake_all(list(self._all_streams))

    def _ack_due(self, sid: int) -> bool:
        """Whether the peer's stream ``sid`` still needs our ACK; it is then taken
        as sent (the caller's next frame on that stream carries it)."""
        return self._unacked.pop(sid, None) is not None

    async def _write_frame(self, data: bytes) -> None:
        """Write frames as one Noise message (or more, for a long DATA frame).
        The first frame's stream, if its ACK is still due, gets the ACK flag."""
        if self._unacked and len(data) >= HEADER_SIZE:
            _version, typ, flags, sid, length = _HEADER.unpack_from(data)
            if typ in (TYPE_DATA, TYPE_WINDOW_UPDATE) and self._ack_due(sid):
                data = b"".join((_pack(0, typ, flags | FLAG_ACK, sid, length),
                                 memoryview(data)[HEADER_SIZE:]))
        lock = self._write_lock
        if not lock.locked():
            # Nobody is writing: encrypt and hand the socket the bytes now. The
            # awaited path below costs three trips through the scheduler (two
            # locks and the send) before the peer gets a window update or a want.
            rest = self.secured_conn.write_now(data)
            if rest is not None:
                if rest:  # the socket buffer is full: the rest goes next, in order
                    lock.acquire_nowait()  # free: nothing awaited since the check
                    try:
                        await self._finish_write(self.secured_conn.write_rest(rest))
                    finally:
                        lock.release()
                elif len(data) >= YIELD_AFTER_BYTES:
                    # a long writer (a holder's block messages) lets the reader run
                    await trio.lowlevel.cancel_shielded_checkpoint()
                return
        async with lock:
            await self._finish_write(self.secured_conn.write(data))

    async def _finish_write(self, write: Awaitable[None]) -> None:
        """Await ``write`` (the caller holds the write lock).

        A Noise message is sent whole or the connection ends: a write cancelled
        halfway (a full socket buffer) would leave the peer half a message and a
        nonce out of step, so every later message would fail authentication.
        The write finishes under a shield, within a bound.

        Raises:
            MuxedStreamError: it did not finish in ``WRITE_SHIELD_S``; the
                connection is closed.
        """
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + WRITE_SHIELD_S
            await write
        if scope.cancelled_caught:
            self.event_shutting_down.set()
            with trio.CancelScope(shield=True):
                await self.secured_conn.close()
            raise MuxedStreamError(
                f"a write to {self.peer_id} did not finish in {WRITE_SHIELD_S:g} s; connection closed")

    async def _ack_late_streams(self) -> None:
        """Acknowledge the peer's streams that stayed unanswered ``ACK_DEFER_S``
        (a handler queued behind py-libp2p's stream limits, or one that never
        writes), so none stays unacknowledged for long. Runs until cancelled."""
        with self._ack_scope:
            while True:
                await self._unacked_ev.wait()
                self._unacked_ev = trio.Event()
                await trio.sleep(ACK_DEFER_S)
                cutoff = trio.current_time() - ACK_DEFER_S
                for sid in [sid for sid, at in self._unacked.items() if at <= cutoff]:
                    if self._ack_due(sid):
                        try:
                            await self._write_frame(_pack(0, TYPE_WINDOW_UPDATE, FLAG_ACK, sid, 0))
                        except Exception:  # noqa: BLE001 - the connection is going; its reader ends it
                            return
                if self._unacked:
                    self._unacked_ev.set()

    async def _hand_over_late(self) -> None:
        """Give py-libp2p the peer's new streams that stayed without data for
        ``PEEK_WAIT_S`` (an opener waiting for our header first). Runs until cancelled."""
        with self._pending_scope:
            while True:
                await self._pending_ev.wait()
                self._pending_ev = trio.Event()
                await trio.sleep(PEEK_WAIT_S)
                cutoff = trio.current_time() - PEEK_WAIT_S
                for stream, since in list(self._pending.values()):
                    if since <= cutoff and self._pending.pop(stream.stream_id, None) is not None:
                        try:
                            await self.new_stream_send_channel.send(stream)
                        except (trio.BrokenResourceError, trio.ClosedResourceError):
                            return  # the connection is going; its reader ends it
                if self._pending:
                    self._pending_ev.set()

    async def handle_incoming(self) -> None:
        session = self.secured_conn
        assert isinstance(session, FastSecureSession)  # checked in __init__
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._wake_streams_on_shutdown)
            nursery.start_soon(self._ack_late_streams)
            nursery.start_soon(self._hand_over_late)
            try:
                await self._read_frames(session)
            except Exception as exc:  # noqa: BLE001 - any failure ends this connection
                broken = isinstance(exc, (YamuxProtocolError, NoiseMessageError))  # the peer's fault
                level = logging.WARNING if broken else logging.DEBUG
                logger.log(level, "Yamux connection to %s ended: %s: %s", self.peer_id, type(exc).__name__, exc)
            self.event_shutting_down.set()
            self._ack_scope.cancel()
            self._pending_scope.cancel()
            for stream in list(self._all_streams):
                stream._end_direct(clean=False)
            self._pending.clear()
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
            if self._queued:  # the answers and window updates of direct streams
                frames = b"".join(self._queued)
                self._queued.clear()
                await self._write_frame(frames)

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
                pos = stop
                continue
            if not lock.locked():  # nobody holds it, and _apply does not await
                stream = streams.get(sid)
                if stream is not None:
                    self._apply(stream, typ, flags, length, payload)
            else:
                async with lock:
                    stream = streams.get(sid)
                    if stream is not None:
                        self._apply(stream, typ, flags, length, payload)
            if stream is not None:
                if self._pending and sid in self._pending:
                    await self._select_pending(stream)
                elif stream._direct is not None or stream._direct_refused:
                    self._direct_frame(stream)
            pos = stop
        return pos

    async def _select_pending(self, stream: FastYamuxStream) -> None:
        """A waiting new stream got bytes, or ended: serve it in the reader if they
        select a direct protocol, else hand it to py-libp2p with nothing consumed."""
        if not (stream._buffered or stream.recv_closed or stream.reset_received):
            return  # a window update: still waiting for its first bytes
        self._pending.pop(stream.stream_id, None)
        routes = self.direct
        asked = None
        if routes and not stream.reset_received:
            asked = parse_select(stream.peek(SELECT_PEEK_BYTES))
        opener = routes.get(asked[0]) if routes and asked is not None else None
        receiver = opener(self.peer_id) if opener is not None else None
        if receiver is None or asked is None:
            await self.new_stream_send_channel.send(stream)
            return
        protocol, used = asked
        try:
            self._queued.append(stream.answer_frames(
                used, select_reply(protocol),
                window=RECEIVE_ONLY_WINDOW_BYTES, close=True))
        except MuxedStreamError:  # no send window for the echo: cannot happen on a new stream
            receiver.end(False)
            await self.new_stream_send_channel.send(stream)
            return
        self.direct_streams += 1
        stream._serve_directly(receiver)
        self._direct_frame(stream)

    def _direct_frame(self, stream: FastYamuxStream) -> None:
        """After a frame of a stream served in the reader: refill its receive window
        (the receiver took the data already), reset it if the receiver refused
        data, and end it when it closed."""
        sid = stream.stream_id
        if stream._direct_refused and not stream.closed:
            stream.closed = stream.send_closed = stream.recv_closed = True
            self._queued.append(_pack(0, TYPE_WINDOW_UPDATE, FLAG_RST, sid, 0))
            self._unacked.pop(sid, None)
        if stream.closed or stream.recv_closed or stream.reset_received:
            stream._end_direct(clean=not stream.reset_received)
            if stream.closed:  # reset here, or our FIN went with the answer and the peer's came
                self._finalize_stream_locked(stream, fully_closed=True)
            return
        # Kubo's and Helia's streams carry one message of about a block, which the
        # answer's window covers: refilling at half would cost a write per stream
        if stream.recv_window <= RECEIVE_ONLY_WINDOW_BYTES // 4:
            grant = RECEIVE_ONLY_WINDOW_BYTES - stream.recv_window
            stream.recv_window += grant
            self._queued.append(_pack(0, TYPE_WINDOW_UPDATE, 0, sid, grant))

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
            self._unacked.pop(sid, None)
            self._finalize_stream_locked(stream, fully_closed=True)

    async def _new_stream_frame(self, typ: int, flags: int, sid: int, length: int, payload: bytes) -> None:
        """A frame with SYN: open the peer's stream (RST when the ID is taken). Its ACK
        is due: it goes with our first frame on the stream (``_write_frame``)."""
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
                if not flags & FLAG_RST and not new.closed:
                    if not self._unacked:
                        self._unacked_ev.set()
                    self._unacked[sid] = trio.current_time()
        if reply is not None:
            await self._write_frame(reply)
        if new is None:
            return
        if self.direct and not new.closed:
            if not self._pending:
                self._pending_ev.set()
            self._pending[sid] = (new, trio.current_time())
            await self._select_pending(new)
            return
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
