"""The one-write answer to a peer's new stream (transport/select.py): a stream that
selects a protocol in its first bytes, as Kubo's and Helia's Bitswap streams do,
costs the receiver one write; every other opener still gets py-libp2p's
negotiation; the peer's stream is always acknowledged."""

from __future__ import annotations

import contextlib
import struct
from collections.abc import AsyncIterator

import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.stream_muxer.yamux.yamux import DEFAULT_WINDOW_SIZE
from pinfold.daemon.p2p.host import Host, HostConfig
from pinfold.daemon.p2p.transport import FastYamux
from pinfold.daemon.p2p.transport.select import (
    MULTISTREAM_HEADER,
    RECEIVE_ONLY_WINDOW_BYTES,
    muxed_echo,
    parse_select,
)
from pinfold.daemon.p2p.transport.yamux import ACK_DEFER_S

from tests.support.bitswap import LOOPBACK
from tests.support.wait import wait_until_trio

PROTO = "/pinfold-test/sink/1.0.0"
HDR = struct.Struct("!BBHII")
ACK, FIN = 0x2, 0x4


@contextlib.asynccontextmanager
async def _pair() -> AsyncIterator[tuple[Host, Host]]:
    async with trio.open_nursery() as nursery:
        hosts = [Host(create_new_key_pair(), HostConfig(listen=LOOPBACK)) for _ in range(2)]
        for h in hosts:
            await nursery.start(h.run)
        try:
            yield hosts[0], hosts[1]
        finally:
            nursery.cancel_scope.cancel()


def _muxed(host: Host, peer) -> FastYamux:
    (conn,) = host.libp2p.get_network().get_connections(peer)
    return conn.muxed_conn


def _record_frames(mux: FastYamux) -> list[bytes]:
    """Every write ``mux`` makes from now on (each a Noise message of whole frames)."""
    written: list[bytes] = []
    inner = mux._write_frame

    async def recording(data: bytes) -> None:
        written.append(bytes(data))
        await inner(data)

    mux._write_frame = recording  # type: ignore[method-assign]
    return written


def _frames(write: bytes) -> list[tuple[int, int, int, int, bytes]]:
    """(type, flags, stream ID, length, payload) of each frame in one write."""
    out, pos = [], 0
    while pos < len(write):
        _v, typ, flags, sid, length = HDR.unpack_from(write, pos)
        body = write[pos + 12:pos + 12 + length] if typ == 0 else b""
        out.append((typ, flags, sid, length, body))
        pos += 12 + (length if typ == 0 else 0)
    return out


def _sink(host: Host, got: list[bytes], *, receive_only: bool) -> None:
    async def handler(stream) -> None:
        parts = []
        while True:
            try:
                data = await stream.read(1 << 20)
            except Exception:  # noqa: BLE001 - the peer closed its side
                break
            if not data:
                break
            parts.append(data)
        got.append(b"".join(parts))
        await stream.close()

    host.set_stream_handler(PROTO, handler, receive_only=receive_only)


async def _lazy_send(dialer: Host, peer, payload: bytes):
    """Open a raw stream to ``peer`` and write the header, the protocol and
    ``payload`` at once, then close (go-multistream's lazy select)."""
    stream = await _muxed(dialer, peer).open_stream()
    await stream.write(MULTISTREAM_HEADER + muxed_echo(PROTO) + payload)
    await stream.close()
    return stream


def test_parse_select_takes_only_a_whole_header_and_protocol_line():
    first = MULTISTREAM_HEADER + muxed_echo("/ipfs/bitswap/1.2.0")
    assert parse_select(first + b"\x05hello") == ("/ipfs/bitswap/1.2.0", len(first))
    assert parse_select(first[:-1]) is None  # the line is not complete yet
    assert parse_select(MULTISTREAM_HEADER) is None  # a client waiting for our header
    assert parse_select(b"\x13/multistream/2.0.0\n" + muxed_echo("/x")) is None
    assert parse_select(MULTISTREAM_HEADER + muxed_echo("ls")[:-1] + b"x") is None  # no newline
    assert parse_select(MULTISTREAM_HEADER + b"\xff\xff\x03") is None  # longer than 1024


async def test_receive_only_stream_from_a_lazy_opener_is_answered_in_one_write():
    payload = bytes(range(200)) * 1311  # 262,200 bytes: Kubo's message of one 256 KiB block
    got: list[bytes] = []
    async with _pair() as (a, b):
        _sink(b, got, receive_only=True)
        await a.connect(b.addrs()[0])
        written = _record_frames(_muxed(b, a.peer_id))
        with trio.fail_after(30):
            sent = await _lazy_send(a, b.peer_id, payload)
            await wait_until_trio(lambda: got, what="the sink to read the stream")
            await wait_until_trio(lambda: sent.recv_closed, what="our FIN back")
        assert got == [payload]
        writes = [w for w in written if any(f[2] == sent.stream_id for f in _frames(w))]
        assert len(writes) == 1  # everything the receiver sent on this stream, in one write
        ours = [f for f in _frames(writes[0]) if f[2] == sent.stream_id]
        assert len(ours) == 2  # a window update and one DATA frame
        (wtyp, wflags, _, grant, _), (dtyp, dflags, _, _, echo) = ours
        assert (wtyp, wflags) == (1, ACK) and DEFAULT_WINDOW_SIZE + grant >= RECEIVE_ONLY_WINDOW_BYTES
        assert (dtyp, dflags) == (0, FIN) and echo == MULTISTREAM_HEADER + muxed_echo(PROTO)
        assert b._selector is not None and b._selector.fast == 1


async def test_a_stream_whose_handler_writes_keeps_its_write_side_open():
    async with _pair() as (a, b):
        async def echo(stream) -> None:
            data = await stream.read(5)
            await stream.write(data[::-1])
            await stream.close()

        b.set_stream_handler(PROTO, echo)
        await a.connect(b.addrs()[0])
        with trio.fail_after(30):
            stream = await _muxed(a, b.peer_id).open_stream()
            await stream.write(MULTISTREAM_HEADER + muxed_echo(PROTO) + b"hello")
            answer = b""
            while len(answer) < len(MULTISTREAM_HEADER + muxed_echo(PROTO)) + 5:
                answer += await stream.read(-1)
        assert answer == MULTISTREAM_HEADER + muxed_echo(PROTO) + b"olleh"


async def test_openers_that_negotiate_step_by_step_still_get_py_libp2p_negotiation():
    """py-libp2p's client sends the header and waits for ours before the protocol:
    neither the connection's reader (even for a protocol it serves) nor the
    selector's fast path takes that stream; py-libp2p negotiates it."""
    async with _pair() as (a, b):
        opened, handled = _direct(b)
        await a.connect(b.addrs()[0])
        with trio.fail_after(30):
            stream = await a.new_stream(b.peer_id, [PROTO])
            await stream.write(b"step by step")
            await stream.close()
            await wait_until_trio(lambda: handled, what="the handler to read the stream")
        assert handled == [b"step by step"] and opened == []
        assert b._selector is not None and b._selector.fast == 0 and b._selector.stock >= 1


async def test_unknown_protocol_from_a_lazy_opener_gets_na_not_a_hang():
    async with _pair() as (a, b):
        await a.connect(b.addrs()[0])
        with trio.fail_after(30):
            stream = await _muxed(a, b.peer_id).open_stream()
            await stream.write(MULTISTREAM_HEADER + muxed_echo("/nobody/serves/this"))
            answer = b""
            while len(answer) < len(MULTISTREAM_HEADER + muxed_echo("na")):
                answer += await stream.read(-1)
        assert answer == MULTISTREAM_HEADER + muxed_echo("na")


async def test_a_peer_stream_nobody_writes_on_is_acknowledged_after_the_defer_time():
    async with _pair() as (a, b):
        async def silent(stream) -> None:  # takes every stream and never writes
            await trio.sleep_forever()

        b.libp2p.get_network().set_stream_handler(silent)
        await a.connect(b.addrs()[0])
        written = _record_frames(_muxed(b, a.peer_id))
        with trio.fail_after(30):
            stream = await _muxed(a, b.peer_id).open_stream()
            t0 = trio.current_time()
            await wait_until_trio(lambda: any(
                f[2] == stream.stream_id and f[1] & ACK for w in written for f in _frames(w)),
                what="the deferred ACK")
        assert trio.current_time() - t0 >= ACK_DEFER_S * 0.9


# ------------------------------------------------------------------ served in the reader


class _Collect:
    """A ``DirectReceiver`` that keeps what it is fed; ``refuse_after`` bytes: say no."""

    def __init__(self, refuse_after: int | None = None) -> None:
        self.data = bytearray()
        self.ended: list[bool] = []
        self.refuse_after = refuse_after

    def feed(self, data) -> bool:
        self.data += data
        return self.refuse_after is None or len(self.data) <= self.refuse_after

    def end(self, clean: bool) -> None:
        self.ended.append(clean)


def _direct(host: Host, *, refuse_after: int | None = None) -> tuple[list[_Collect], list[bytes]]:
    """Serve PROTO in the reader on ``host``: the receivers opened, and what the
    py-libp2p handler got (it should get only what the reader does not take)."""
    opened: list[_Collect] = []
    handled: list[bytes] = []

    def opener(peer):
        opened.append(_Collect(refuse_after))
        return opened[-1]

    async def handler(stream) -> None:
        handled.append(await stream.read(1 << 20))
        await stream.close()

    host.set_stream_handler(PROTO, handler, receive_only=True, direct=opener)
    return opened, handled


async def test_a_lazy_receive_only_stream_is_served_in_the_reader_with_one_write():
    payload = bytes(range(200)) * 1311  # 262,200 bytes: over the 256 KiB initial window
    async with _pair() as (a, b):
        opened, handled = _direct(b)
        await a.connect(b.addrs()[0])
        mux = _muxed(b, a.peer_id)
        written = _record_frames(mux)
        with trio.fail_after(30):
            sent = await _lazy_send(a, b.peer_id, payload)
            await wait_until_trio(lambda: opened and opened[0].ended, what="the stream's end")
            await wait_until_trio(lambda: sent.recv_closed, what="our FIN back")
        assert bytes(opened[0].data) == payload and opened[0].ended == [True]
        assert handled == [] and b._selector is not None and b._selector.fast == 0
        assert mux.direct_streams == 1 and sent.stream_id not in mux.streams  # closed both ways
        writes = [w for w in written if any(f[2] == sent.stream_id for f in _frames(w))]
        assert len(writes) == 1  # the answer; the answer's window covers the message
        ours = [f for f in _frames(writes[0]) if f[2] == sent.stream_id]
        (wtyp, wflags, _, grant, _), (dtyp, dflags, _, _, echo) = ours
        assert (wtyp, wflags) == (1, ACK) and DEFAULT_WINDOW_SIZE + grant >= RECEIVE_ONLY_WINDOW_BYTES
        assert (dtyp, dflags) == (0, FIN) and echo == MULTISTREAM_HEADER + muxed_echo(PROTO)


async def test_a_long_stream_served_in_the_reader_gets_its_window_refilled():
    payload = bytes(range(256)) * 16384  # 4 MiB: eight times the answer's window
    async with _pair() as (a, b):
        opened, _ = _direct(b)
        await a.connect(b.addrs()[0])
        with trio.fail_after(30):
            await _lazy_send(a, b.peer_id, payload)
            await wait_until_trio(lambda: opened and opened[0].ended, what="the stream's end")
        assert bytes(opened[0].data) == payload and opened[0].ended == [True]


async def test_a_stream_whose_receiver_refuses_its_data_is_reset():
    async with _pair() as (a, b):
        opened, _ = _direct(b, refuse_after=100)
        await a.connect(b.addrs()[0])
        with trio.fail_after(30):
            stream = await _muxed(a, b.peer_id).open_stream()
            await stream.write(MULTISTREAM_HEADER + muxed_echo(PROTO) + bytes(1000))
            await wait_until_trio(lambda: stream.reset_received, what="the reset")
            await wait_until_trio(lambda: opened and opened[0].ended, what="the receiver told")
        assert opened[0].ended == [False]
        assert stream.stream_id not in _muxed(b, a.peer_id).streams


@pytest.mark.parametrize("how", ["the peer resets it", "the connection goes"])
async def test_a_stream_served_in_the_reader_that_breaks_ends_unclean(how):
    async with _pair() as (a, b):
        opened, _ = _direct(b)
        await a.connect(b.addrs()[0])
        with trio.fail_after(30):
            stream = await _muxed(a, b.peer_id).open_stream()
            await stream.write(MULTISTREAM_HEADER + muxed_echo(PROTO) + b"half a message")
            await wait_until_trio(lambda: opened and opened[0].data, what="the first bytes")
            if how == "the peer resets it":
                await stream.reset()
            else:
                await a.disconnect(b.peer_id)
            await wait_until_trio(lambda: opened[0].ended, what="the receiver told")
        assert opened[0].ended == [False] and bytes(opened[0].data) == b"half a message"
