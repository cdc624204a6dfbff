"""py-libp2p internals that pinfold reads. The dependency is pinned to one
version; these fail loudly when an upgrade moves what the code relies on."""

from __future__ import annotations

from importlib.metadata import version

from pinfold.daemon.bitswap.message import PROTOCOL_1_2_0

from tests.bitswap_support import running_nodes


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
