"""Receive-only streams served inside the connection's frame reader: ``DirectRoutes``.

Kubo and Helia send every Bitswap message on a new stream of its own (4,124
streams for 1 GiB of 256 KiB blocks). Each py-libp2p stream costs the
receiver a task in the swarm, a ``NetStream``, the resource manager's
accounting, notifee calls and the handler's own task, about as much CPU as
decrypting the message it carries. A protocol registered here is served by
``yamux.FastYamux``'s frame reader itself: when a peer's new stream selects it
in its first bytes (multistream-select 1.0.0 header and protocol line, as
go-multistream's lazy select and js's ``lazySelect`` send them), the reader
answers it (ACK, receive window, the header and protocol echoed, our FIN:
queued and written once per batch of frames read), and from then on hands
every DATA payload of that stream to the protocol's ``DirectReceiver`` as it is
decrypted, with no task, no ``NetStream`` and no read call. Any other stream
(another protocol, a client that waits for our header before it names the
protocol, as py-libp2p's does) goes to py-libp2p with nothing consumed.

Such a protocol's handler must never write to the stream (Bitswap answers on
streams it opens itself). The receiver works synchronously inside the reader:
it must not block, and it bounds what it queues (the reader grants the peer
receive window as the data arrives, not as it is consumed).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from libp2p.peer.id import ID

__all__ = ["DirectOpener", "DirectReceiver", "DirectRoutes"]


class DirectReceiver(Protocol):
    """One direct stream's data, as the connection's reader hands it over."""

    def feed(self, data: memoryview | bytes) -> bool:
        """Take ``data``, the next bytes of the stream (a read-only view of the
        decrypted Noise message, or bytes; it never changes). Must not block.

        Returns:
            False to have the stream reset (the receiver refuses more: a
            malformed or oversize message, a peer over its queue bound).
        """
        ...

    def end(self, clean: bool) -> None:
        """The stream ended: ``clean`` when the peer closed it (FIN), False when it
        was reset, refused by ``feed`` or its connection went away. Called once."""
        ...


DirectOpener = Callable[[ID], "DirectReceiver | None"]
"""``opener(peer) -> receiver``, called as a peer's stream selects the protocol;
None leaves the stream to py-libp2p's handler (which then refuses it as it sees fit)."""


class DirectRoutes:
    """Protocol -> ``DirectOpener``: the receive-only protocols served by the reader.

    One per host, shared by all its ``FastYamux`` connections, read at every
    new stream (so routes set later count).
    """

    def __init__(self) -> None:
        self._openers: dict[str, DirectOpener] = {}

    def set(self, protocol: str, opener: DirectOpener | None) -> None:
        """Serve ``protocol`` directly with ``opener`` (None: stop)."""
        if opener is None:
            self._openers.pop(protocol, None)
        else:
            self._openers[protocol] = opener

    def get(self, protocol: str) -> DirectOpener | None:
        """The opener of ``protocol``, or None when it is not served directly."""
        return self._openers.get(protocol)

    def __bool__(self) -> bool:
        return bool(self._openers)
