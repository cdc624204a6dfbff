"""py-libp2p internals that pinfold reads. The dependency is pinned to one
version; these fail loudly when an upgrade moves what the code relies on."""

from __future__ import annotations

from importlib.metadata import version

from pinfold.daemon.p2p.bitswap.message import PROTOCOL_1_2_0

from tests.support.bitswap import running_nodes


def test_libp2p_is_the_pinned_version():
    assert version("libp2p") == "0.8.1"


async def test_a_stream_shows_whether_it_was_reset_and_its_connection_closed():
    """Bitswap tells a clean end of a stream from a broken one by
    ``muxed_stream.reset_received`` and ``muxed_conn.is_closed``."""
    async with running_nodes(2) as (a, b):
        await a.host.connect(b.addr)
        stream = await a.host.new_stream(b.peer_id, [PROTOCOL_1_2_0])
        assert stream.muxed_conn.is_closed is False
        assert stream.muxed_stream.reset_received is False
        (conn,) = b.host.libp2p.get_network().get_connections(a.peer_id)
        assert stream.muxed_stream.stream_id in conn.muxed_conn.streams
        await stream.reset()


# ---------------------------------------------------------------- the fast channel
# pinfold.daemon.p2p.transport subclasses py-libp2p's Noise session and Yamux and
# replaces their read paths; these are the parts of 0.8.1 that code relies on.


def test_noise_and_yamux_wire_constants_are_the_ones_the_fast_channel_sizes_frames_by():
    from libp2p.security.noise import io as noise_io
    from libp2p.stream_muxer.yamux import yamux
    from pinfold.daemon.p2p.transport import MAX_FRAME_PAYLOAD_BYTES, MAX_PLAINTEXT_BYTES

    assert noise_io.MAX_NOISE_MESSAGE_LEN == 65535
    assert noise_io.MAX_PLAINTEXT_LENGTH == MAX_PLAINTEXT_BYTES == 65519
    assert yamux.HEADER_SIZE == 12 and yamux.YAMUX_HEADER_FORMAT == "!BBHII"
    assert MAX_FRAME_PAYLOAD_BYTES == 65507
    # the stock writer's frame (what the fast one replaces) is still 64 KiB
    assert yamux.MAX_MESSAGE_SIZE == 65536


def test_yamux_internals_the_fast_reader_and_writer_use_are_there():
    import inspect

    from libp2p.stream_muxer.muxer_multistream import MuxerMultistream
    from libp2p.stream_muxer.yamux.yamux import Yamux, YamuxStream

    # the reader task py-libp2p starts calls the overridable handle_incoming
    assert "await self.handle_incoming()" in inspect.getsource(Yamux._handle_incoming_with_ready_signal)
    for name in ("_cleanup_on_error", "_finalize_stream_locked", "_write_frame", "open_stream"):
        assert callable(getattr(Yamux, name)), name
    init = inspect.getsource(Yamux.__init__)
    for attr in ("self.streams", "self.stream_buffers", "self.stream_events", "self.streams_lock",
                 "self._write_lock", "self.new_stream_send_channel", "self.event_shutting_down",
                 "self._ping_event", "self._ping_sent_time", "self._rtt"):
        assert attr in init, attr
    stream_init = inspect.getsource(YamuxStream.__init__)
    for attr in ("self.send_window", "self.recv_window", "self.rw_lock", "self.send_closed",
                 "self.recv_closed", "self.reset_received", "self._zero_window_waits"):
        assert attr in stream_init, attr
    # muxer negotiation: py-libp2p builds its own Yamux for /yamux/1.0.0 (why pinfold
    # installs FastMuxerMultistream), via a selector returning (protocol, class)
    new_conn = inspect.getsource(MuxerMultistream.new_conn)
    assert "self._selector.select(" in new_conn and "_annotate_connection" in new_conn
    assert "yamux_conn = Yamux(" in new_conn, (
        "py-libp2p's new_conn no longer builds Yamux itself: check whether "
        "pinfold.daemon.p2p.transport.FastMuxerMultistream is still needed")


def test_noise_session_internals_the_fast_reader_uses_are_there():
    import inspect

    from libp2p.security.noise.io import NoiseTransportReadWriter
    from libp2p.security.noise.patterns import PatternXX
    from noise.state import CipherState

    # the handshake returns a SecureSession over a NoiseTransportReadWriter holding
    # the raw connection (read_writer.read_write_closer) and the noise state
    for method in (PatternXX.handshake_inbound, PatternXX.handshake_outbound):
        src = inspect.getsource(method)
        assert "NoiseTransportReadWriter(conn, noise_state)" in src
        assert "return SecureSession(" in src
    assert "self.read_writer = NoisePacketReadWriter(" in inspect.getsource(NoiseTransportReadWriter.__mro__[1].__init__)
    # decryption: CipherState.decrypt_with_ad(ad, ciphertext) advances the nonce itself
    src = inspect.getsource(CipherState.decrypt_with_ad)
    assert "self.n = self.n + 1" in src
    assert "cipher_state_decrypt.decrypt_with_ad(None, data)" in inspect.getsource(
        NoiseTransportReadWriter.decrypt.__globals__["NoiseState"].decrypt)
    # the raw TCP read returns at most n bytes, so the handshake leaves nothing buffered
    from libp2p.io.trio import TrioTCPStream

    assert "self.stream.receive_some(n)" in inspect.getsource(TrioTCPStream.read)
    # FastSecureSession.write_now: encryption as py-libp2p's write does it, and
    # the TCP socket and write lock under the raw connection
    src = inspect.getsource(CipherState.encrypt_with_ad)
    assert "self.n = self.n + 1" in src
    assert "cipher_state_encrypt.encrypt_with_ad(None, data)" in inspect.getsource(
        NoiseTransportReadWriter.encrypt.__globals__["NoiseState"].encrypt)
    assert "self.read_writer.write_msg(data_encrypted)" in inspect.getsource(
        NoiseTransportReadWriter.write_msg)
    src = inspect.getsource(TrioTCPStream.write)
    assert "async with self.write_lock:" in src and "self.stream.send_all(data)" in src
    from libp2p.network.connection.raw_connection import RawConnection

    assert "self.stream.write(data)" in inspect.getsource(RawConnection.write)


async def test_pinfold_hosts_run_the_fast_noise_session_and_yamux_on_their_connections():
    from pinfold.daemon.p2p.transport import FastSecureSession, FastYamux

    async with running_nodes(2) as (a, b):
        await a.host.connect(b.addr)
        for host, peer in ((a.host, b.peer_id), (b.host, a.peer_id)):
            (conn,) = host.libp2p.get_network().get_connections(peer)
            assert type(conn.muxed_conn) is FastYamux
            assert type(conn.muxed_conn.secured_conn) is FastSecureSession
            stream = await host.new_stream(peer, [PROTOCOL_1_2_0])
            assert type(stream.muxed_stream).__name__ == "FastYamuxStream"
            await stream.reset()


def test_the_stream_notifees_the_host_skips_still_do_nothing_with_streams():
    """swarm_limits.quiet_stream_notifications skips py-libp2p's own notifees for
    stream events, and replaces the swarm's ``_notify`` (a list of ``notifees``)."""
    import inspect

    from libp2p.network.swarm import Swarm
    from pinfold.daemon.p2p.swarm_limits import _stream_no_ops

    for fn in _stream_no_ops():
        body = [line.strip() for line in inspect.getsource(fn).splitlines()[1:]]
        body = [b for b in body if b and not b.startswith(('"""', "#")) and not b.endswith('"""')]
        assert body in ([], ["return None"], ["await trio.lowlevel.checkpoint()"]), fn.__qualname__
    assert "self.notifees" in inspect.getsource(Swarm._notify)
    assert 'self._notify("opened_stream"' in inspect.getsource(Swarm.notify_opened_stream)
    assert 'self._notify("closed_stream"' in inspect.getsource(Swarm.notify_closed_stream)
