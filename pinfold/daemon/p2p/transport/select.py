"""multistream-select on the fast channel: the muxer of a connection, and a one-write
answer to a peer's new stream.

* ``FastMuxerMultistream``: py-libp2p 0.8.1's muxer negotiation builds its own
  ``Yamux`` for ``/yamux/1.0.0`` whatever class ``muxer_opt`` names; this one
  builds the negotiated class. ``install_muxer`` puts it on a host's upgrader.
* ``InboundSelector``: the swarm's handler of the peer's new streams (in place
  of ``BasicHost._swarm_stream_handler``). Kubo and Helia open a stream for
  every Bitswap message they send, with the multistream-select header and the
  protocol in the stream's first bytes (go-multistream's lazy select, js's
  ``lazySelect``). py-libp2p answers that with five writes, each its own Noise
  message and socket send: the Yamux ACK, the header, the protocol, a window
  update, our FIN. When the stream's buffered bytes hold exactly the header and
  a protocol we serve (multistream-select 1.0.0: varint length, line, ``\\n``),
  the selector consumes them and answers in one write
  (``FastYamuxStream.answer``): the ACK with a window update, the header and
  the protocol echoed, and, for a *receive-only* protocol (one whose handler
  never writes, as Bitswap's), our FIN. Anything else (``ls``, a protocol we
  do not serve, a client that waits for our header before it sends the
  protocol, as py-libp2p's does) goes to py-libp2p's own negotiation with
  nothing consumed, so the wire protocol is unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

from libp2p.abc import IMuxedConn, INetStream, ISecureConn
from libp2p.peer.id import ID
from libp2p.stream_muxer.muxer_multistream import MuxerMultistream
from libp2p.stream_muxer.yamux.yamux import DEFAULT_WINDOW_SIZE, Yamux

from pinfold.blockstore.errors import DecodeError
from pinfold.blockstore.varint import encode_uvarint, read_uvarint
from pinfold.daemon.p2p.transport.direct import DirectRoutes
from pinfold.daemon.p2p.transport.yamux_stream import FastYamuxStream

__all__ = [
    "MAX_PROTOCOL_BYTES",
    "PEEK_WAIT_S",
    "RECEIVE_ONLY_WINDOW_BYTES",
    "SELECT_PEEK_BYTES",
    "FastMuxerMultistream",
    "InboundSelector",
    "install_muxer",
    "select_reply",
]

logger = logging.getLogger(__name__)

_HEADER_LINE: Final = b"/multistream/1.0.0\n"
#: the multistream-select 1.0.0 header as sent: varint length, then the line
MULTISTREAM_HEADER: Final = encode_uvarint(len(_HEADER_LINE)) + _HEADER_LINE
#: longest protocol line the fast path reads, bytes (go-multistream's limit is 1024)
MAX_PROTOCOL_BYTES: Final = 1024
#: how long a new stream's first bytes are awaited before py-libp2p negotiates, seconds
PEEK_WAIT_S: Final = 0.05
#: receive window of a receive-only stream answered on the fast path, bytes:
#: a Bitswap message of one 256 KiB block (Kubo's and Helia's default chunk) and
#: its framing fits, so the peer never waits for a window update on it
RECEIVE_ONLY_WINDOW_BYTES: Final = 2 * DEFAULT_WINDOW_SIZE

Handler = Callable[[INetStream], Awaitable[None]]


class FastMuxerMultistream(MuxerMultistream):
    """py-libp2p's muxer negotiation, building the class registered for the protocol.

    py-libp2p 0.8.1's ``MuxerMultistream.new_conn`` builds its own ``Yamux`` for
    ``/yamux/1.0.0`` and ignores the class given in ``muxer_opt``.
    """

    #: receive-only protocols served in the reader, given to every muxer that takes them
    direct: DirectRoutes | None = None

    async def new_conn(self, conn: ISecureConn, peer_id: ID) -> IMuxedConn:
        protocol, muxer_class = await self._selector.select(conn, conn.is_initiator, self.negotiate_timeout)
        if isinstance(muxer_class, type) and issubclass(muxer_class, Yamux):
            muxed: IMuxedConn = muxer_class(conn, peer_id, is_initiator=conn.is_initiator)
        else:
            muxed = muxer_class(conn, peer_id)
        if hasattr(muxed, "direct"):
            muxed.direct = self.direct
        return self._annotate_connection(muxed, conn, protocol)


def install_muxer(network: Any, muxers: Mapping[Any, type], direct: DirectRoutes | None = None) -> None:
    """Negotiate ``muxers`` (protocol -> muxer class) on ``network``'s connections with
    a ``FastMuxerMultistream``; muxers that serve streams in their reader
    (``FastYamux``) get ``direct``.

    Raises:
        RuntimeError: the swarm has no ``upgrader.muxer_multistream`` (py-libp2p changed).
    """
    upgrader = getattr(network, "upgrader", None)
    stock = getattr(upgrader, "muxer_multistream", None)
    if not isinstance(stock, MuxerMultistream):
        raise RuntimeError("py-libp2p's swarm has no upgrader.muxer_multistream; "
                           "the fast channel cannot be installed (set node.fast_channel = false)")
    fast = FastMuxerMultistream(dict(muxers), negotiate_timeout=stock.negotiate_timeout)
    fast.direct = direct
    upgrader.muxer_multistream = fast


#: bytes of a new stream's buffer that can hold the header and one protocol line
SELECT_PEEK_BYTES: Final = len(MULTISTREAM_HEADER) + 2 + MAX_PROTOCOL_BYTES


def parse_select(data: bytes) -> tuple[str, int] | None:
    """The protocol a stream's first bytes ask for and how many bytes the header and
    the protocol line take, or None when ``data`` does not start with the
    multistream-select 1.0.0 header and one whole protocol line (a varint
    length of at most ``MAX_PROTOCOL_BYTES``, then the line ending in ``\\n``).
    """
    if not data.startswith(MULTISTREAM_HEADER):
        return None
    pos = len(MULTISTREAM_HEADER)
    try:
        n, start = read_uvarint(data, pos, min(len(data), pos + 2))  # <= 1024: 2 bytes
    except DecodeError:  # incomplete or too long
        return None
    end = start + n
    if not 1 < n <= MAX_PROTOCOL_BYTES or end > len(data) or data[end - 1] != 0x0A:
        return None
    try:
        protocol = data[start:end - 1].decode("ascii")
    except UnicodeDecodeError:
        return None
    return protocol, end


class InboundSelector:
    """The handler py-libp2p's swarm calls for each of a peer's new streams.

    Args:
        handlers: protocol -> handler, as the host's multiselect holds them (read
            at every stream, so handlers set later count).
        stock: py-libp2p's own stream handler (``BasicHost._swarm_stream_handler``),
            which negotiates everything the fast path does not take.
    """

    def __init__(self, handlers: Mapping[Any, Handler | None], stock: Handler) -> None:
        self._handlers = handlers
        self._stock = stock
        #: protocols whose handlers never write: answered with our FIN at once
        self.receive_only: set[str] = set()
        #: streams answered on the fast path, and handed to py-libp2p
        self.fast = 0
        self.stock = 0

    async def __call__(self, stream: INetStream) -> None:
        muxed = getattr(stream, "muxed_stream", None)
        if isinstance(muxed, FastYamuxStream) and await self._fast(stream, muxed):
            return
        self.stock += 1
        await self._stock(stream)

    async def _fast(self, stream: INetStream, muxed: FastYamuxStream) -> bool:
        """Answer and serve ``stream`` if its first bytes select a protocol we serve;
        False (nothing consumed or written) otherwise."""
        if not await muxed.wait_buffered(PEEK_WAIT_S):
            return False
        asked = parse_select(muxed.peek(SELECT_PEEK_BYTES))
        if asked is None:
            return False
        protocol, used = asked
        handler = self._handlers.get(protocol)
        if handler is None:
            return False
        receive_only = protocol in self.receive_only
        try:
            await muxed.answer(used, select_reply(protocol),
                               window=RECEIVE_ONLY_WINDOW_BYTES if receive_only else 0,
                               close=receive_only)
        except Exception as exc:  # noqa: BLE001 - the stream or its connection is gone
            logger.debug("answering a %s stream from %s failed: %r", protocol,
                         muxed.conn.peer_id, exc)
            try:
                await stream.reset()
            except Exception:  # noqa: BLE001 - already gone
                pass
            return True
        self.fast += 1
        stream.set_protocol(protocol)  # type: ignore[arg-type]
        await handler(stream)
        return True


def select_reply(protocol: str) -> bytes:
    """The listener's answer agreeing to ``protocol``: the header, then the protocol echoed."""
    return MULTISTREAM_HEADER + muxed_echo(protocol)


def muxed_echo(protocol: str) -> bytes:
    """``protocol`` as a multistream-select line: varint length, the name, ``\\n``."""
    line = protocol.encode("ascii") + b"\n"
    return encode_uvarint(len(line)) + line
