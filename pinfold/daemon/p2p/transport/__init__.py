"""The fast secure channel: Noise and Yamux with a buffered receive path.

Owns the classes pinfold hands to py-libp2p 0.8.1's extension points instead
of its stock Noise and Yamux (``Host`` picks them when ``node.fast_channel`` is
true). The wire format is unchanged, so Kubo, Helia, stock py-libp2p peers and
older pinfold nodes connect as before.

* ``FastNoiseTransport`` (for ``sec_opt``): py-libp2p's Noise transport. The
  XX handshake is py-libp2p's own code; the session it returns is wrapped in a
  ``FastSecureSession`` that reads the socket in chunks of at least 256 KiB,
  parses every complete Noise message in a chunk and decrypts each in place
  (a memoryview of the chunk) with the handshake's own cipher state and nonce.
* ``FastYamux`` (for ``muxer_opt``): py-libp2p's Yamux whose frames fit one
  Noise message (payload <= 65535 - 16 - 12 bytes) and whose reader takes
  whole decrypted Noise messages and dispatches every Yamux frame in them
  without an await per header or body.
* ``FastMuxerMultistream`` (``select.py``): py-libp2p 0.8.1's muxer negotiation
  builds its own ``Yamux`` for ``/yamux/1.0.0`` whatever class ``muxer_opt``
  names; this one builds the negotiated class. ``install_muxer`` puts it on a
  host's upgrader.
* ``InboundSelector`` (``select.py``): answers a peer's new stream whose first
  bytes select a protocol we serve in one write (ACK, window, the protocol
  echoed, our FIN for a receive-only protocol) instead of py-libp2p's five.
* ``DirectRoutes`` (``direct.py``): receive-only protocols (Bitswap) whose
  streams ``FastYamux``'s reader serves itself, handing each payload to the
  protocol's receiver: no py-libp2p stream, task or handler per stream.

The py-libp2p internals these rely on are checked by
tests/p2p/test_libp2p_internals.py (libp2p is pinned to one version).
"""

from __future__ import annotations

from pinfold.daemon.p2p.transport.direct import DirectOpener, DirectReceiver, DirectRoutes
from pinfold.daemon.p2p.transport.noise import (
    MAX_NOISE_MESSAGE_BYTES,
    MAX_PLAINTEXT_BYTES,
    READ_CHUNK_BYTES,
    FastNoiseTransport,
    FastSecureSession,
)
from pinfold.daemon.p2p.transport.select import FastMuxerMultistream, InboundSelector, install_muxer
from pinfold.daemon.p2p.transport.yamux import MAX_FRAME_PAYLOAD_BYTES, FastYamux, FastYamuxStream, read_chunks
from pinfold.daemon.p2p.transport.yamux_stream import at_end

__all__ = [
    "DirectOpener",
    "DirectReceiver",
    "DirectRoutes",
    "MAX_FRAME_PAYLOAD_BYTES",
    "MAX_NOISE_MESSAGE_BYTES",
    "MAX_PLAINTEXT_BYTES",
    "READ_CHUNK_BYTES",
    "FastMuxerMultistream",
    "FastNoiseTransport",
    "FastSecureSession",
    "FastYamux",
    "FastYamuxStream",
    "InboundSelector",
    "at_end",
    "install_muxer",
    "read_chunks",
]
