"""Parts the host plugs into py-libp2p's swarm: the inbound connection limiter and
a TCP transport that remembers the sockets it dialled (so the host can reap them).

Imports trio and py-libp2p's TCP transport.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Final

import multiaddr
import trio
from libp2p.abc import INetConn
from libp2p.transport.tcp.tcp import TCP

__all__ = ["REAP_AGE_S", "InboundSlots", "TrackingTCP", "raw_connection"]


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
