"""Parts the host plugs into py-libp2p's swarm: the inbound connection limiter, a
TCP transport that remembers the sockets it dialled (so the host can reap them),
and stream notifications that skip the notifees with nothing to do.

Imports trio and py-libp2p's TCP transport.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Collection
from typing import Any, Final

import multiaddr
import trio
from libp2p.abc import INetConn
from libp2p.transport.tcp.tcp import TCP

__all__ = ["REAP_AGE_S", "InboundSlots", "TrackingTCP", "quiet_stream_notifications", "raw_connection"]

logger = logging.getLogger(__name__)

_STREAM_EVENTS: Final = ("opened_stream", "closed_stream")


#: a dial this old is done handshaking; its socket may be reaped when not in use, seconds
REAP_AGE_S: Final = 60.0


class InboundSlots:
    """Stands in for the swarm's inbound ``CapacityLimiter`` (``acquire_nowait``/``release``).

    A slot is taken when an inbound TCP connection arrives and given back when
    its handshake fails (``release``, called by py-libp2p) or succeeds
    (``upgraded``, from our ``connected`` notification). A new connection is
    refused while handshakes in progress plus live connections reach ``limit``.
    A handshake older than ``handshake_timeout_s`` is no longer counted
    (py-libp2p abandons it by then), so an uncounted outcome cannot leak a slot.
    """

    def __init__(self, *, limit: int, live: Callable[[], int], handshake_timeout_s: float) -> None:
        self.total_tokens = limit
        self._live = live
        self._timeout_s = max(1.0, handshake_timeout_s)
        self._started: deque[float] = deque()  # start times of handshakes in progress

    def handshaking(self) -> int:
        """Handshakes in progress (started within the timeout and not finished)."""
        cutoff = trio.current_time() - self._timeout_s
        while self._started and self._started[0] < cutoff:
            self._started.popleft()
        return len(self._started)

    def acquire_nowait(self) -> None:
        if self.handshaking() + self._live() >= self.total_tokens:
            raise trio.WouldBlock
        self._started.append(trio.current_time())

    def release(self) -> None:
        if self._started:
            self._started.popleft()

    def upgraded(self) -> None:
        self.release()


class TrackingTCP(TCP):
    """py-libp2p's TCP transport, remembering each outbound connection (see ``_reap_sockets``)."""

    def __init__(self, dialed: list[tuple[float, Any]]) -> None:
        super().__init__()
        self._dialed = dialed

    async def dial(self, maddr: multiaddr.Multiaddr) -> Any:
        raw = await super().dial(maddr)
        self._dialed.append((trio.current_time(), raw))
        return raw


def raw_connection(conn: INetConn) -> Any:
    """The RawConnection under a swarm connection (SwarmConn -> Yamux -> SecureSession -> Noise -> raw)."""
    obj: Any = conn
    for attr in ("muxed_conn", "secured_conn", "conn", "conn"):
        obj = getattr(obj, attr, None)
        if obj is None:
            return None
    return obj


def _stream_no_ops() -> set[Any]:
    """py-libp2p's notifee methods for stream events that do nothing (0.8.1)."""
    from libp2p.host.basic_host import _IdentifyNotifee
    from libp2p.network.tag_store import TagStoreNotifee
    from libp2p.pubsub.pubsub_notifee import PubsubNotifee

    return {getattr(cls, ev) for cls in (_IdentifyNotifee, TagStoreNotifee, PubsubNotifee)
            for ev in _STREAM_EVENTS}


def quiet_stream_notifications(network: Any, no_ops: Collection[Any] = ()) -> None:
    """Deliver ``network``'s stream opened/closed events only to notifees that act on
    them, awaited one after the other on the caller's task.

    py-libp2p 0.8.1's swarm delivers every event in a new nursery with a task per
    notifee; for a stream that is 2 nurseries and 8 tasks, and a peer that opens
    a stream per message (Kubo, Helia) pays them per message, while every
    notifee but the host's own does nothing with streams. Other events go
    through py-libp2p's own ``_notify``. A notifee that raises is logged, as
    py-libp2p does.

    Args:
        network: py-libp2p's swarm.
        no_ops: more notifee methods (functions) known to do nothing.

    Raises:
        RuntimeError: the swarm has no ``_notify`` or ``notifees`` (py-libp2p changed).
    """
    stock = getattr(network, "_notify", None)
    if stock is None or not isinstance(getattr(network, "notifees", None), list):
        raise RuntimeError("py-libp2p's swarm has no _notify/notifees; cannot filter its "
                           "stream notifications")
    skip = _stream_no_ops() | set(no_ops)

    async def notify(method: str, *args: Any) -> None:
        if method not in _STREAM_EVENTS:
            await stock(method, *args)
            return
        for notifee in list(network.notifees):
            if getattr(type(notifee), method, None) in skip:
                continue
            try:
                await getattr(notifee, method)(network, *args)
            except Exception:
                logger.exception("notifee %s.%s raised", type(notifee).__name__, method)

    network._notify = notify
