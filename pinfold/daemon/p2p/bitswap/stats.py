"""The exchange's counters: frozen snapshots for Prometheus and the fetch-latency histogram.

Pure: no I/O, no clock (latencies are given in seconds). Imports only the CID type.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

from pinfold.blockstore.cid import CID

__all__ = ["LATENCY_BUCKETS_S", "BitswapStats", "FetchStats", "LatencyHistogram"]

#: Upper bounds (seconds) of the fetch-latency histogram buckets.
LATENCY_BUCKETS_S: tuple[float, ...] = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class BitswapStats:
    """Counters for Prometheus (``pinfold_bitswap_*``).

    Attributes:
        peers: peers we exchange with now.
        blocks_sent: blocks sent to peers.
        bytes_sent: block bytes sent.
        blocks_received: wanted blocks received, verified and stored.
        bytes_received: their bytes.
        duplicate_blocks: blocks received that we no longer wanted (arrived twice, or
            after we cancelled the want).
        duplicate_bytes: their bytes.
        messages_received: Bitswap messages decoded.
        inbound_streams: Bitswap streams peers opened to us.
        one_message_streams: those that carried their messages and had ended by
            the first read (Kubo's and Helia's replies), handled inline.
        wantlist_size: blocks we want now.
        peer_wantlist_entries: wants of all peers held on our ledgers.
        rejected: blocks/messages rejected, by reason ("unwanted",
            "unsupported_hash", "malformed", "oversize", "wantlist_flood", "bad_blocks").
        peers_cut_off: peers disconnected for misbehaviour.
        refused_wants: wants (cancels not counted) from peers the serve filter
            refuses, dropped unanswered (``bitswap.serve = "cluster"``).
        wantlist_resends: full wantlists sent again to a peer after a stream to
            or from it broke (messages on it may have been lost).
        wantlist_rebroadcasts: messages sending open wants again, by reason:
            "timer" (every ``rebroadcast_interval_s``) and "connect" (to a
            peer that just connected).
        late_reasks: want-blocks sent to another peer while the first might
            still answer: it was late, or would be (a holder far slower than
            another with a free slot); by design only these make a block
            arrive twice.
        wants_moved: want-blocks moved off a peer that disconnected, went
            silent or answered DONT_HAVE.
        holder_decisions: what holder admission decided, by kind
            (``admission.HolderAdmission.decisions``: "admitted", "kept",
            "dropped", "trials", "demoted", "held").
        fetch_latency_buckets: cumulative counts of want-to-block latencies per
            upper bound in seconds (Prometheus histogram buckets; +Inf = fetch_latency_count).
        fetch_latency_sum_s: sum of those latencies, seconds.
        fetch_latency_count: how many were observed.
    """

    peers: int
    blocks_sent: int
    bytes_sent: int
    blocks_received: int
    bytes_received: int
    duplicate_blocks: int
    duplicate_bytes: int
    messages_received: int
    inbound_streams: int
    one_message_streams: int
    wantlist_size: int
    peer_wantlist_entries: int
    rejected: MappingProxyType[str, int]
    peers_cut_off: int
    refused_wants: int
    wantlist_resends: int
    wantlist_rebroadcasts: MappingProxyType[str, int]
    late_reasks: int
    wants_moved: int
    holder_decisions: MappingProxyType[str, int]
    fetch_latency_buckets: tuple[tuple[float, int], ...]
    fetch_latency_sum_s: float
    fetch_latency_count: int


@dataclass(frozen=True, slots=True, kw_only=True)
class FetchStats:
    """What ``fetch_dag`` did.

    Attributes:
        root: the DAG's root CID.
        blocks: blocks in the DAG (fetched + already local).
        fetched_blocks: blocks fetched from peers.
        fetched_bytes: their bytes.
        local_blocks: blocks that were already in the store.
        elapsed_s: wall time of the fetch, seconds.
        blocks_by_peer: fetched blocks per peer ID (text).
    """

    root: CID
    blocks: int
    fetched_blocks: int
    fetched_bytes: int
    local_blocks: int
    elapsed_s: float
    blocks_by_peer: MappingProxyType[str, int]


class LatencyHistogram:
    """Want-to-block latencies in ``LATENCY_BUCKETS_S`` buckets (Prometheus histogram)."""

    __slots__ = ("count", "counts", "sum_s")

    def __init__(self) -> None:
        self.counts = [0] * len(LATENCY_BUCKETS_S)  # per bucket, not cumulative
        self.sum_s = 0.0
        self.count = 0

    def observe(self, dt: float) -> None:
        """Count one latency of ``dt`` seconds (above the last bound: only in +Inf)."""
        self.count += 1
        self.sum_s += dt
        for i, bound in enumerate(LATENCY_BUCKETS_S):
            if dt <= bound:
                self.counts[i] += 1
                break

    def cumulative(self) -> tuple[tuple[float, int], ...]:
        """``(upper bound, observations <= bound)`` per bucket (+Inf is ``count``)."""
        out = []
        acc = 0
        for bound, n in zip(LATENCY_BUCKETS_S, self.counts, strict=True):
            acc += n
            out.append((bound, acc))
        return tuple(out)
