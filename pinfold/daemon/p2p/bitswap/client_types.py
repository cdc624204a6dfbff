"""The Bitswap client core's vocabulary: its settings and the actions it returns.

``ClientConfig`` tunes the wantlist (``wants.WantManager``) and the holder
scheduler (``schedule.HolderScheduler``); ``SendWants`` and ``WantFailed`` are
what the core asks its driver (``exchange.Bitswap``) to do. Pure: imports only
the CID type and the wire codec's want entries.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

from pinfold.blockstore.cid import CID

from pinfold.daemon.p2p.bitswap.message import WantEntry

__all__ = ["Action", "ClientConfig", "Peer", "SendWants", "WantFailed"]

Peer = Hashable
"""A peer as the cores see it: any hashable (libp2p ``ID`` in the daemon)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientConfig:
    """Client-side tuning (durations in seconds).

    Attributes:
        max_outstanding_per_peer: want-blocks in flight to one peer at most
            (pipelining depth: 16 x 1 MiB blocks keep a loopback link busy).
        initial_outstanding_per_peer: want-blocks in flight to a peer that has
            not delivered yet; each block it delivers allows one more, up to
            ``max_outstanding_per_peer`` (a slow holder found out after its
            first blocks holds few of a fetch's wants).
        stall_timeout_s: a peer with want-blocks in flight that sent us nothing
            for this long loses them all to other peers.
        late_multiplier: a want-block is late when it is not answered within
            this many times the time its peer's observed latency predicts
            (boxo's MessageLatencyMultiplier is 2); a late want-block is also
            asked of a second peer.
        late_min_s: lower bound of the late timeout (a busy event loop or a
            GC pause is not lateness).
        late_max_s: upper bound of the late timeout, and the timeout of a peer
            not measured yet (boxo's DontHaveTimeout 5 s + 2 s of processing).
        max_wants: wants outstanding at once over all sessions (memory bound).
        dont_have_settle_s: a want that every peer it may ask answered DONT_HAVE
            fails after this long (well under a second: the answer is in; the
            wait only lets a peer that is connecting be asked too).
        adaptive_holders: use more holders only while they raise the
            aggregate rate received (``admission.HolderAdmission``); off:
            spread want-blocks over every holder.
        holder_window_s: shortest window the aggregate rate is measured over
            (several store commits: a shorter one measures their bursts).
        holder_gain: fraction by which a probed holder must raise the rate to stay.
        holder_retry_s: a holder dropped from the set is probed again after
            this long, doubled at each rejection; a kept set is tried out again
            after this long.
        holder_min_idle_cores: more holders are probed only while the
            machine has at least this many CPU cores idle or the receiver's
            event loop waits for the holders (the driver measures both): every
            holder costs the receiver CPU, and senders on the same machine take
            cores too, so with no core to spare and the receiver saturated a
            probe can only cost. 0: probe whatever the load. A late holder
            still starts a probe.
    """

    max_outstanding_per_peer: int = 16
    initial_outstanding_per_peer: int = 4
    stall_timeout_s: float = 10.0
    late_multiplier: float = 2.0
    late_min_s: float = 1.0
    late_max_s: float = 7.0
    max_wants: int = 100_000
    dont_have_settle_s: float = 0.25
    adaptive_holders: bool = True
    holder_window_s: float = 0.25
    holder_gain: float = 0.1
    holder_retry_s: float = 5.0
    holder_min_idle_cores: float = 1.0

    def __post_init__(self) -> None:
        if self.max_outstanding_per_peer < 1:
            raise ValueError("bitswap.max_outstanding_per_peer: must be >= 1")
        if not 1 <= self.initial_outstanding_per_peer:
            raise ValueError("bitswap.initial_outstanding_per_peer: must be >= 1")
        if self.stall_timeout_s <= 0:
            raise ValueError("bitswap.stall_timeout_s: must be > 0")
        if self.late_multiplier < 1:
            raise ValueError("bitswap.late_multiplier: must be >= 1")
        if not 0 < self.late_min_s <= self.late_max_s:
            raise ValueError("bitswap.late_min_s: must be > 0 and <= late_max_s")
        if self.dont_have_settle_s < 0:
            raise ValueError("bitswap.dont_have_settle_s: must be >= 0")
        if self.holder_window_s <= 0:
            raise ValueError("bitswap.holder_window_s: must be > 0")
        if self.holder_gain < 0:
            raise ValueError("bitswap.holder_gain: must be >= 0")
        if self.holder_retry_s <= 0:
            raise ValueError("bitswap.holder_retry_s: must be > 0")
        if self.holder_min_idle_cores < 0:
            raise ValueError("bitswap.holder_min_idle_cores: must be >= 0")


@dataclass(frozen=True, slots=True, kw_only=True)
class SendWants:
    """Send ``entries`` (wants and/or cancels) to ``peer``."""

    peer: Peer
    entries: tuple[WantEntry, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class WantFailed:
    """A want passed its deadline.

    Attributes:
        cid: the block that did not arrive.
        sessions: sessions that wanted it.
        timeout_s: the deadline (no progress for this long), seconds.
        peers_asked: peers asked for it, sorted by ``str``.
        dont_have: peers among them that answered DONT_HAVE, sorted.
        all_dont_have: True when it failed early because every peer asked
            answered DONT_HAVE (``timeout_s`` then did not pass).
    """

    cid: CID
    sessions: tuple[int, ...]
    timeout_s: float
    peers_asked: tuple[Peer, ...]
    dont_have: tuple[Peer, ...]
    all_dont_have: bool = False


Action = SendWants | WantFailed
