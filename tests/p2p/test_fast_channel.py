"""The fast secure channel (pinfold.daemon.p2p.transport): real hosts on 127.0.0.1.

Fast hosts talk to fast hosts, to pinfold hosts on py-libp2p's stock channel
(what older pinfold nodes run) and to a plain py-libp2p host with its default
options, in both dial directions; a large transfer and many concurrent streams
arrive intact; the Noise messages on the wire carry one Yamux frame each.
The channel's framing as pure logic is tested in ``test_fast_channel_framing.py``.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import socket
from collections.abc import AsyncIterator

import multiaddr
import pytest
import trio
from libp2p import new_host as new_libp2p_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.stream.exceptions import StreamEOF, StreamReset
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.security.noise.io import MAX_NOISE_MESSAGE_LEN
from libp2p.security.secure_session import SecureSession
from libp2p.stream_muxer.exceptions import MuxedStreamError
from libp2p.stream_muxer.yamux.yamux import Yamux
from pinfold.config import ConfigError
from pinfold.config.loader import from_mapping
from pinfold.daemon.p2p.host import Host, HostConfig
from pinfold.daemon.p2p.swarm_limits import raw_connection as _raw_connection
from pinfold.daemon.p2p.transport import (
    MAX_FRAME_PAYLOAD_BYTES,
    FastSecureSession,
    FastYamux,
    read_chunks,
)

from tests.support.bitswap import LOOPBACK
from tests.support.wait import wait_until_trio

MiB = 1024 * 1024
BULK = TProtocol("/pinfold-test/bulk/1")
ECHO = TProtocol("/pinfold-test/echo/1")


def _blob(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


async def _read_all(stream) -> bytes:
    """Everything until the peer closes its side (``read`` raises StreamEOF at the end)."""
    parts = []
    try:
        while True:
            data = await stream.read(MiB)
            if not data:
                break
            parts.append(data)
    except Exception as exc:  # noqa: BLE001 - only a clean end is accepted below
        if type(exc).__name__ != "StreamEOF":
            raise
    return b"".join(parts)


def _serve_bulk(host, payloads: dict[int, bytes]) -> None:
    """``BULK``: the dialer writes a 4-byte key, gets ``payloads[key]`` back, then EOF."""

    async def handler(stream) -> None:
        key = int.from_bytes(await stream.read(4), "big")
        await stream.write(payloads[key])
        await stream.close()

    host.set_stream_handler(BULK, handler)


def _serve_echo(host) -> None:
    async def handler(stream) -> None:
        while True:
            try:
                data = await stream.read(MiB)
            except Exception:  # noqa: BLE001 - the dialer closed its side
                break
            if not data:
                break
            await stream.write(data)
        await stream.close()

    host.set_stream_handler(ECHO, handler)


@contextlib.asynccontextmanager
async def _hosts(*fast: bool) -> AsyncIterator[list[Host]]:
    async with trio.open_nursery() as nursery:
        hosts = [Host(create_new_key_pair(), HostConfig(listen=LOOPBACK, fast_channel=f)) for f in fast]
        for h in hosts:
            await nursery.start(h.run)
        try:
            yield hosts
        finally:
            nursery.cancel_scope.cancel()


def _connection(host: Host, peer):
    (conn,) = host.libp2p.get_network().get_connections(peer)
    return conn.muxed_conn


async def _echo_both_ways(dialer, peer_id, size: int, seed: int) -> None:
    """Send ``size`` bytes to the peer's echo handler while reading them back."""
    data = _blob(size, seed)
    stream = await dialer.new_stream(peer_id, [ECHO])
    got: list[bytes] = []

    async def reader() -> None:
        got.append(await _read_all(stream))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        for i in range(0, size, 3 * MiB + 17):  # odd write sizes: frames split anywhere
            await stream.write(data[i:i + 3 * MiB + 17])
        await stream.close()
    assert hashlib.sha256(got[0]).hexdigest() == hashlib.sha256(data).hexdigest()


async def test_fast_hosts_carry_64_mib_through_one_stream_intact():
    payload = _blob(64 * MiB, seed=1)
    async with _hosts(True, True) as (a, b):
        _serve_bulk(b, {0: payload})
        await a.connect(b.addrs()[0])
        assert isinstance(_connection(a, b.peer_id), FastYamux)
        assert isinstance(_connection(a, b.peer_id).secured_conn, FastSecureSession)
        with trio.fail_after(120):
            stream = await a.new_stream(b.peer_id, [BULK])
            await stream.write((0).to_bytes(4, "big"))
            got = await _read_all(stream)
        assert len(got) == len(payload)
        assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()


async def test_fast_hosts_serve_64_concurrent_streams_each_intact():
    payloads = {i: _blob(MiB + 7 * i, seed=100 + i) for i in range(64)}
    results: dict[int, bytes] = {}
    async with _hosts(True, True) as (a, b):
        _serve_bulk(b, payloads)
        _serve_echo(a)
        await a.connect(b.addrs()[0])

        async def fetch(i: int) -> None:
            stream = await a.new_stream(b.peer_id, [BULK])
            await stream.write(i.to_bytes(4, "big"))
            results[i] = await _read_all(stream)

        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                for i in payloads:
                    nursery.start_soon(fetch, i)
                # and streams the other way at the same time
                for j in range(4):
                    nursery.start_soon(_echo_both_ways, b, a.peer_id, 2 * MiB, 200 + j)
    assert results.keys() == payloads.keys()
    bad = [i for i, p in payloads.items() if results[i] != p]
    assert bad == []


@pytest.mark.parametrize("dialer_fast", [True, False], ids=["fast-dials-stock", "stock-dials-fast"])
async def test_fast_and_stock_pinfold_hosts_exchange_data_both_ways(dialer_fast):
    """A pinfold host on py-libp2p's stock channel is what older pinfold nodes run."""
    payload = _blob(16 * MiB + 5, seed=2)
    async with _hosts(dialer_fast, not dialer_fast) as (a, b):
        _serve_bulk(b, {0: payload})
        _serve_echo(b)
        await a.connect(b.addrs()[0])
        assert isinstance(_connection(a, b.peer_id), FastYamux) is dialer_fast
        assert isinstance(_connection(b, a.peer_id), FastYamux) is not dialer_fast
        with trio.fail_after(120):
            stream = await a.new_stream(b.peer_id, [BULK])
            await stream.write((0).to_bytes(4, "big"))
            assert await _read_all(stream) == payload
            await _echo_both_ways(a, b.peer_id, 16 * MiB, seed=3)
        assert await a.ping(b.peer_id) < 5
        assert await b.ping(a.peer_id) < 5


@pytest.mark.parametrize("fast_dials", [True, False], ids=["fast-dials-libp2p", "libp2p-dials-fast"])
async def test_fast_host_and_a_default_py_libp2p_host_exchange_data(fast_dials):
    """A plain ``libp2p.new_host()`` with py-libp2p's default security and muxers."""
    payload = _blob(8 * MiB + 3, seed=4)
    stock = new_libp2p_host(key_pair=create_new_key_pair())

    async def stock_bulk(stream) -> None:
        await stream.read(4)
        await stream.write(payload)
        await stream.close()

    stock.set_stream_handler(BULK, stock_bulk)
    async with _hosts(True) as (fast,), stock.run([multiaddr.Multiaddr(LOOPBACK[0])]):
        _serve_bulk(fast, {0: payload})
        stock_addr = f"{stock.get_addrs()[0]}"
        if "/p2p/" not in stock_addr:
            stock_addr += f"/p2p/{stock.get_id()}"
        with trio.fail_after(60):
            if fast_dials:
                await fast.connect(stock_addr)
                stream = await fast.new_stream(stock.get_id(), [BULK])
            else:
                info = info_from_p2p_addr(multiaddr.Multiaddr(fast.addrs()[0]))
                await stock.connect(info)
                stream = await stock.new_stream(fast.peer_id, [BULK])
            await stream.write((0).to_bytes(4, "big"))
            assert await _read_all(stream) == payload
        assert isinstance(_connection(fast, stock.get_id()), FastYamux)
        # a plain py-libp2p host does not close the sockets it dialled (pinfold's Host
        # reaps its own); close them so the test leaves nothing behind
        raws = [_raw_connection(c) for c in stock.get_network().get_connections()]
    for raw in raws:
        raw.stream.stream.socket.close()


async def test_fast_stream_reads_of_any_size_return_the_bytes_in_order():
    payload = _blob(3 * MiB + 11, seed=7)
    async with _hosts(True, True) as (a, b):
        _serve_bulk(b, {0: payload})
        await a.connect(b.addrs()[0])
        stream = await a.new_stream(b.peer_id, [BULK])
        await stream.write((0).to_bytes(4, "big"))
        got = bytearray()
        sizes = [1, 7, 1000, 65507, 65508, 200_000, 3]
        with trio.fail_after(60):
            try:
                for i in range(10**6):
                    data = await stream.read(sizes[i % len(sizes)])
                    assert 0 < len(data) <= sizes[i % len(sizes)]
                    got += data
            except StreamEOF:
                pass
        assert bytes(got) == payload


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "stock"])
async def test_read_chunks_returns_read_only_pieces_in_order_then_the_stream_end(fast):
    """The Bitswap reader's ``read_chunks``: on the fast channel the payloads as
    decrypted (read-only, unjoined, within the bound unless one is larger), on a
    stock stream one read; at the end, py-libp2p's StreamEOF."""
    payload = _blob(3 * MiB + 11, seed=8)
    async with _hosts(fast, fast) as (a, b):
        _serve_bulk(b, {0: payload})
        await a.connect(b.addrs()[0])
        stream = await a.new_stream(b.peer_id, [BULK])
        await stream.write((0).to_bytes(4, "big"))
        got = bytearray()
        with trio.fail_after(60), pytest.raises(StreamEOF):
            while True:
                pieces = await read_chunks(stream, 256 * 1024)
                assert pieces and all(memoryview(p).readonly for p in pieces)
                assert len(pieces) == 1 or sum(len(p) for p in pieces) <= 256 * 1024
                for p in pieces:
                    got += p
        assert bytes(got) == payload


async def test_a_reader_waiting_on_a_fast_stream_wakes_when_the_connection_drops():
    async with _hosts(True, True) as (a, b):
        silent = trio.Event()

        async def silent_handler(stream) -> None:
            silent.set()
            await trio.sleep_forever()

        b.set_stream_handler(ECHO, silent_handler)
        await a.connect(b.addrs()[0])
        stream = await a.new_stream(b.peer_id, [ECHO])
        await stream.write(b"x")
        await wait_until_trio(silent.is_set, what="the handler on b")
        async with trio.open_nursery() as nursery:
            errors: list[BaseException] = []

            async def reader() -> None:
                try:
                    await stream.read(100)
                except Exception as exc:  # noqa: BLE001 - which error is checked below
                    errors.append(exc)

            nursery.start_soon(reader)
            await wait_until_trio(lambda: stream.muxed_stream._reader_waiting, what="the reader to park")
            start = trio.current_time()
            await b.disconnect(a.peer_id)
            with trio.fail_after(10):
                await wait_until_trio(lambda: bool(errors), what="the reader to wake")
        assert type(errors[0]).__name__ in ("StreamReset", "StreamEOF")
        assert trio.current_time() - start < 5


# ---------------------------------------------------------------- the wire


class _NoiseFrameCounter:
    """Parses one direction of a connection: multistream-select's two lines, then
    2-byte length-prefixed Noise messages (handshake and transport)."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.lines_left = 2  # "/multistream/1.0.0\n", "/noise\n"
        self.sizes: list[int] = []

    def feed(self, data: bytes) -> None:
        self.buf += data
        while True:
            if self.lines_left:
                if not self.buf:
                    return
                n = self.buf[0]  # varint < 128 for these lines
                if len(self.buf) < 1 + n:
                    return
                del self.buf[:1 + n]
                self.lines_left -= 1
                continue
            if len(self.buf) < 2:
                return
            n = int.from_bytes(self.buf[:2], "big")
            if len(self.buf) < 2 + n:
                return
            self.sizes.append(n)
            del self.buf[:2 + n]


async def _relay(src: trio.SocketStream, dst: trio.SocketStream, counter: _NoiseFrameCounter | None) -> None:
    try:
        while True:
            data = await src.receive_some(1 << 16)
            if not data:
                break
            if counter is not None:
                counter.feed(data)
            await dst.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await dst.send_eof()


@pytest.mark.parametrize("sender_fast", [True, False], ids=["fast", "stock"])
async def test_noise_messages_from_a_fast_sender_carry_one_yamux_frame_each(sender_fast):
    """16 MiB from ``b`` to ``a`` through a relay that parses the Noise framing of
    b's bytes: no message over 65535 bytes, and one message per 65507-byte frame
    (py-libp2p's stock Yamux needs two: 65535 + 33 bytes)."""
    size = 16 * MiB
    payload = _blob(size, seed=5)
    counter = _NoiseFrameCounter()
    async with _hosts(True, sender_fast) as (a, b), trio.open_nursery() as nursery:
        _serve_bulk(b, {0: payload})
        b_port = int(multiaddr.Multiaddr(b.addrs()[0]).value_for_protocol("tcp"))
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        relay_port = listeners[0].socket.getsockname()[1]

        async def relay_one() -> None:
            client = await listeners[0].accept()
            server = await trio.open_tcp_stream("127.0.0.1", b_port)
            async with client, server, trio.open_nursery() as pumps:
                pumps.start_soon(_relay, client, server, None)
                pumps.start_soon(_relay, server, client, counter)

        nursery.start_soon(relay_one)
        with trio.fail_after(60):
            await a.connect(f"/ip4/127.0.0.1/tcp/{relay_port}/p2p/{b.peer_id}")
            stream = await a.new_stream(b.peer_id, [BULK])
            await stream.write((0).to_bytes(4, "big"))
            assert await _read_all(stream) == payload
        nursery.cancel_scope.cancel()
    for listener in listeners:
        await listener.aclose()
    assert counter.sizes and max(counter.sizes) <= MAX_NOISE_MESSAGE_LEN
    full = -(-size // MAX_FRAME_PAYLOAD_BYTES)  # frames the payload needs at the most
    if sender_fast:
        # whole frames fill whole messages; a short frame goes where the send
        # window ran out (its size is wherever the window ended), at most a few
        assert full - 8 <= counter.sizes.count(MAX_NOISE_MESSAGE_LEN)
        assert sum(1 for s in counter.sizes if s > 1000) <= full + 8
        assert len(counter.sizes) < full + 100  # handshake, identify, window updates
    else:  # the stock layout this replaces
        assert len(counter.sizes) > 2 * size // 65536


# ---------------------------------------------------------------- flow control


async def test_a_fast_writer_whose_reader_stops_fails_after_5_s_of_no_window():
    """py-libp2p's behaviour, kept: a writer gets no window for 5 s -> MuxedStreamError
    (which py-libp2p's NetStream reports as StreamReset)."""
    async with _hosts(True, True) as (a, b):
        accepted = trio.Event()

        async def stall(stream) -> None:
            accepted.set()
            await trio.sleep_forever()

        b.set_stream_handler(ECHO, stall)
        await a.connect(b.addrs()[0])
        stream = await a.new_stream(b.peer_id, [ECHO])
        start = trio.current_time()
        with pytest.raises(StreamReset) as info, trio.fail_after(30):
            await stream.write(bytes(64 * MiB))
        assert 5 <= trio.current_time() - start < 20
        assert isinstance(info.value.__cause__, MuxedStreamError)
        assert "window" in str(info.value.__cause__)
        await wait_until_trio(accepted.is_set, what="the stalled handler")


# ---------------------------------------------------------------- the switch


def test_node_fast_channel_defaults_on_and_false_gives_py_libp2p_stock_classes():
    assert from_mapping({}).node.fast_channel is True
    assert from_mapping({"node": {"fast_channel": False}}).node.fast_channel is False
    with pytest.raises(ConfigError, match=r"node\.fast_channel"):
        from_mapping({"node": {"fast_channel": "yes"}})
    stock = Host(create_new_key_pair(), HostConfig(listen=LOOPBACK, fast_channel=False))
    upgrader = stock.libp2p.get_network().upgrader
    assert type(upgrader.muxer_multistream).__name__ == "MuxerMultistream"
    (noise,) = upgrader.security_multistream.transports.values()
    assert type(noise).__module__.startswith("libp2p.")
    fast = Host(create_new_key_pair(), HostConfig(listen=LOOPBACK))
    upgrader = fast.libp2p.get_network().upgrader
    assert list(upgrader.muxer_multistream.transports.values()) == [FastYamux]
    assert issubclass(FastYamux, Yamux) and issubclass(FastSecureSession, SecureSession)


def test_fast_yamux_frames_fit_one_noise_message():
    assert MAX_FRAME_PAYLOAD_BYTES + 12 + 16 == MAX_NOISE_MESSAGE_LEN


async def test_a_write_cancelled_halfway_leaves_the_connection_usable():
    """A Noise message is written whole or the connection is closed: a write
    cancelled while the socket is full (half a message sent) must not leave
    the peer a truncated message followed by the next one."""
    async with _hosts(True, True) as (a, b):
        _serve_echo(b)
        await a.connect(b.addrs()[0])
        conn = _connection(a, b.peer_id)
        raw = conn.secured_conn.conn.read_writer.read_write_closer
        real_write = raw.write
        halfway = trio.Event()

        async def stalling_write(data: bytes) -> None:
            # the socket takes the first bytes, then blocks (a full send buffer)
            await real_write(data[:10])
            halfway.set()
            await trio.sleep(0.2)
            await real_write(data[10:])

        stream = await a.new_stream(b.peer_id, [ECHO])
        await stream.write(b"opened")
        assert await stream.read(6) == b"opened"
        raw.write = stalling_write
        conn.secured_conn.write_now = lambda data: None  # every write takes the awaited path
        async with trio.open_nursery() as nursery:
            async def cancelled_write() -> None:
                with trio.CancelScope() as scope:
                    nursery.start_soon(lambda: _cancel_when(halfway, scope))
                    await stream.write(b"x" * 1000)
            nursery.start_soon(cancelled_write)
        raw.write = real_write
        del conn.secured_conn.write_now
        with trio.fail_after(30):
            await _echo_both_ways(a, b.peer_id, 256 * 1024, seed=9)
        assert _connection(a, b.peer_id) is conn


async def test_frames_the_socket_cannot_take_at_once_follow_in_order():
    """A frame is encrypted and handed to the socket without waiting; what a full
    send buffer leaves over goes out before any later frame, so concurrent
    writers on many streams still produce messages the peer authenticates in
    order (a frame sent out of turn would fail every later one)."""
    async with _hosts(True, True) as (a, b):
        _serve_echo(b)
        await a.connect(b.addrs()[0])
        conn = _connection(a, b.peer_id)
        session = conn.secured_conn
        for host, peer in ((a, b.peer_id), (b, a.peer_id)):  # small buffers: partial sends
            sock = _connection(host, peer).secured_conn.conn.read_writer.read_write_closer.stream.stream.socket
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)
        rests: list[int] = []
        real_rest = session.write_rest

        async def counting_rest(rest: memoryview) -> None:
            rests.append(len(rest))
            await real_rest(rest)

        session.write_rest = counting_rest
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for seed in range(8):
                    nursery.start_soon(_echo_both_ways, a, b.peer_id, 256 * 1024 + seed, seed)
        assert rests, "no write was left over by a full socket buffer"
        assert _connection(a, b.peer_id) is conn


async def _cancel_when(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()
