"""Which holder gets a want-block, and when one is late (sans-IO).

``HolderScheduler`` measures every peer we send want-blocks to and decides
from those measurements; it keeps no wants and sends nothing (the wantlist,
``wants.WantManager``, asks it and acts). Time comes in as ``now`` (seconds,
any monotonic clock); peers are any hashable; block keys are multihash bytes.

What it measures, per peer (boxo's session and message queue do the like):

* *time per block*: while the peer has want-blocks in flight, the busy time
  between its deliveries over the blocks delivered (its throughput, in blocks;
  an EWMA over windows of at least ``SAMPLE_S``);
* *round trip*: a block's want-to-block time less the blocks that were ahead
  of it at the peer (an EWMA);
* *latency*: want-block to block (an EWMA, alpha 0.5 as boxo's message latency).

What it decides:

* ``pick``: of the peers known to hold a block, the one that would deliver it
  soonest: ETA = round trip + (blocks in flight + 1) x time per block. A peer
  not measured yet is assumed as fast as the best measured one, so every
  holder is tried. When a peer at its in-flight bound would still deliver
  sooner than every peer with room, nobody is picked and the want waits for a
  slot: a slow holder never takes work a faster one would finish first, so
  more holders are never slower than one.
* the in-flight bound per peer: ``initial_outstanding_per_peer`` until the
  peer delivers its first block, then ``max_outstanding_per_peer``; halved
  for every want that goes late, one more per block delivered after that.
* ``late``: a want-block not answered within ``late_multiplier`` x its
  expected time (round trip + (blocks ahead of it + 1) x time per block),
  kept within [``late_min_s``, ``late_max_s``]; ``late_max_s`` for a peer not
  measured yet. The wantlist then asks a second peer as well.
* ``silent``: peers with want-blocks in flight that sent nothing for
  ``stall_timeout_s``: the wantlist moves all their wants.
* which holders are used at all (``admission.HolderAdmission``): ``pick``
  chooses among the *admitted* holders, grown one at a time while each raises
  the aggregate rate received by ``holder_gain``; a want none of whose holders
  is admitted (the only one that has it, a late re-ask, work moved off a
  vanished or silent peer) may still go to any holder.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from pinfold.daemon.p2p.bitswap.admission import HolderAdmission
from pinfold.daemon.p2p.bitswap.client_types import ClientConfig, Peer

__all__ = ["SAMPLE_S", "HolderScheduler", "PeerPerf"]

#: Busy seconds gathered into one time-per-block sample (one message of many
#: blocks arrives at one instant: a window spans several messages).
SAMPLE_S: Final = 0.05

_LATENCY_ALPHA: Final = 0.5  # boxo's MessageLatencyAlpha
_BLOCK_ALPHA: Final = 0.3  # steadier: it ranks peers


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerPerf:
    """What the scheduler knows of one peer (a snapshot).

    Attributes:
        peer: the peer.
        in_flight: want-blocks sent to it and not answered.
        window: how many it may have in flight now.
        block_s: seconds per block while busy (None: not measured yet).
        rtt_s: round trip beyond the blocks ahead, seconds (None: not measured).
        latency_s: want-block to block, seconds (None: not measured).
        blocks: blocks it delivered that we asked it for.
        bytes: their bytes.
        late: want-blocks to it that went late.
    """

    peer: Peer
    in_flight: int
    window: int
    block_s: float | None
    rtt_s: float | None
    latency_s: float | None
    blocks: int
    bytes: int
    late: int


@dataclass(slots=True)
class _Sent:
    at: float  # when the want-block was sent
    ahead: int  # want-blocks in flight to the peer before it
    late: bool = False


@dataclass(slots=True)
class _Peer:
    window: int
    inflight: dict[bytes, _Sent] = field(default_factory=dict)  # in send order
    n_late: int = 0  # in-flight wants flagged late
    mark: float = 0.0  # busy time is counted from here
    quiet_since: float = 0.0  # last delivery or message, or when it became busy
    acc_s: float = 0.0
    acc_blocks: int = 0
    block_s: float | None = None
    block_n: int = 0  # window samples taken
    rtt_s: float | None = None
    latency_s: float | None = None
    samples: int = 0
    blocks: int = 0
    bytes: int = 0
    late_total: int = 0


def _ewma(old: float | None, sample: float, alpha: float) -> float:
    return sample if old is None else alpha * sample + (1 - alpha) * old


class HolderScheduler:
    """Per-peer measurements and the decisions made from them (pure state machine).

    Args:
        config: in-flight bounds, late timeout and stall timeout.
    """

    def __init__(self, config: ClientConfig | None = None) -> None:
        self.config = config or ClientConfig()
        self._peers: dict[Peer, _Peer] = {}
        self._best_cache: dict[str, float] = {}  # fastest measured block_s / rtt_s
        self.admission = HolderAdmission(self.config)
        self._in_flight = 0  # want-blocks in flight over all peers

    # ------------------------------------------------------------ peers

    def add_peer(self, peer: Peer, now: float) -> None:
        """Start measuring ``peer`` (a no-op if known)."""
        if peer not in self._peers:
            self._peers[peer] = _Peer(window=self._initial_window(), quiet_since=now, mark=now)

    def remove_peer(self, peer: Peer) -> list[bytes]:
        """Forget ``peer``; returns the keys of the want-blocks it had in flight."""
        st = self._peers.pop(peer, None)
        self._best_cache.clear()
        self.admission.remove(peer, 0.0)
        if st is None:
            return []
        self._in_flight -= len(st.inflight)
        return list(st.inflight)

    def __contains__(self, peer: object) -> bool:
        return peer in self._peers

    def peers(self) -> list[Peer]:
        """The peers measured, in the order they were added."""
        return list(self._peers)

    # ------------------------------------------------------------ views

    def in_flight(self, peer: Peer) -> int:
        """Want-blocks in flight to ``peer``."""
        st = self._peers.get(peer)
        return len(st.inflight) if st else 0

    def in_flight_keys(self, peer: Peer) -> list[bytes]:
        """Keys of the want-blocks in flight to ``peer``, oldest first."""
        st = self._peers.get(peer)
        return list(st.inflight) if st else []

    def has_room(self, peer: Peer) -> bool:
        """Whether ``peer`` may take another want-block now."""
        st = self._peers.get(peer)
        return st is not None and len(st.inflight) < st.window

    def any_room(self) -> bool:
        """Whether any peer may take another want-block now."""
        return any(len(st.inflight) < st.window for st in self._peers.values())

    def eta(self, peer: Peer, extra: int = 1) -> float:
        """Seconds until ``peer`` would deliver a block sent to it now (``extra``
        = its place behind the blocks in flight), from its measurements; an
        unmeasured peer is taken to be as fast as the best measured one."""
        st = self._peers[peer]
        block_s = st.block_s if st.block_s is not None else self._best("block_s")
        rtt_s = st.rtt_s if st.rtt_s is not None else self._best("rtt_s")
        return rtt_s + (len(st.inflight) + extra) * block_s

    def expected_s(self, peer: Peer, index: int, now: float) -> float | None:
        """Seconds from ``now`` until ``peer`` delivers its ``index``-th oldest
        want-block in flight, by its measurements (None: not measured yet); the
        time it has worked on the oldest since its last delivery counts."""
        st = self._peers.get(peer)
        if st is None or st.block_s is None:
            return None
        done = min(max(0.0, now - st.mark), st.block_s)
        return (st.rtt_s or 0.0) + (index + 1) * st.block_s - done

    def lagging(self, peer: Peer) -> bool:
        """Whether a want-block in flight to ``peer`` is late."""
        st = self._peers.get(peer)
        return st is not None and st.n_late > 0

    def perf(self, peer: Peer) -> PeerPerf | None:
        """A snapshot of what is known of ``peer`` (None if not measured)."""
        st = self._peers.get(peer)
        if st is None:
            return None
        return PeerPerf(peer=peer, in_flight=len(st.inflight), window=st.window,
                        block_s=st.block_s, rtt_s=st.rtt_s, latency_s=st.latency_s,
                        blocks=st.blocks, bytes=st.bytes, late=st.late_total)

    # ------------------------------------------------------------ decisions

    def pick(self, holders: Iterable[Peer], *, admitted_only: bool = False) -> Peer | None:
        """The holder to send a want-block to now, or None to wait for a slot.

        Args:
            holders: peers known or expected to have the block, in preference
                order (ties go to the earlier one).
            admitted_only: never fall back to holders not admitted (work moved
                for speed only goes to the admitted set).

        Returns:
            Among the admitted holders (all of them when none is admitted and
            not ``admitted_only``): the peer with room whose ETA is lowest
            (peers with a late want only when no other has room), unless a
            peer without room that is not late would still deliver sooner:
            then None (queue the want).
        """
        known = [p for p in holders if p in self._peers]
        adm = self.admission
        adm.seen(known)
        chosen = [p for p in known if adm.admitted(p)]
        if not chosen and not admitted_only:
            chosen = known
        best: Peer | None = None
        best_key: tuple[bool, float, int] | None = None
        full_eta = math.inf
        for p in chosen:
            st = self._peers[p]
            lagging = st.n_late > 0
            eta = self.eta(p)
            if len(st.inflight) >= st.window:
                if not lagging and eta < full_eta:
                    full_eta = eta
                continue
            key = (lagging, eta, len(st.inflight))
            if best_key is None or key < best_key:
                best, best_key = p, key
        if best_key is None:
            return None
        lagging, eta, _ = best_key
        if full_eta < (math.inf if lagging else eta):
            return None  # a faster peer frees a slot before this one would deliver
        adm.chosen(best)
        return best

    def sent(self, peer: Peer, key: bytes, now: float) -> None:
        """A want-block for ``key`` went to ``peer`` at ``now``."""
        st = self._peers[peer]
        if key in st.inflight:
            return
        if not st.inflight:
            st.mark = now  # busy from now on
            st.quiet_since = now
        st.inflight[key] = _Sent(at=now, ahead=len(st.inflight))
        self._in_flight += 1

    def released(self, peer: Peer, key: bytes) -> None:
        """``peer`` will not deliver ``key`` for us (DONT_HAVE, cancelled, moved)."""
        st = self._peers.get(peer)
        if st is None:
            return
        rec = st.inflight.pop(key, None)
        if rec is None:
            return
        self._in_flight -= 1
        if rec.late:
            st.n_late -= 1
        if not self._in_flight:
            self.admission.idle()

    def heard(self, peer: Peer, now: float) -> None:
        """``peer`` sent us a message (it is not silent)."""
        st = self._peers.get(peer)
        if st is not None:
            st.quiet_since = now

    def delivered(self, peer: Peer, key: bytes, now: float, nbytes: int = 0) -> bool:
        """``peer`` delivered the block ``key`` (``nbytes`` long) at ``now``.

        Returns:
            True when it was in flight to ``peer`` (the measurements learnt from it).
        """
        st = self._peers.get(peer)
        if st is None:
            return False
        st.quiet_since = now
        rec = st.inflight.pop(key, None)
        if rec is None:
            return False
        self._in_flight -= 1
        if rec.late:
            st.n_late -= 1
        self._best_cache.clear()
        self.admission.delivered(peer, nbytes, now)
        if not self._in_flight:
            self.admission.idle()
        latency = max(0.0, now - rec.at)
        st.latency_s = _ewma(st.latency_s, latency, max(_LATENCY_ALPHA, 1 / (st.samples + 1)))
        st.samples += 1
        if now > st.mark:
            if st.acc_s >= SAMPLE_S and st.acc_blocks:
                sample = st.acc_s / st.acc_blocks
                st.block_s = sample if not st.block_n else _ewma(st.block_s, sample, _BLOCK_ALPHA)
                st.block_n += 1
                st.acc_s, st.acc_blocks = 0.0, 0
            st.acc_s += now - st.mark
            st.mark = now
        st.acc_blocks += 1
        if not st.block_n and st.acc_s > 0:
            st.block_s = st.acc_s / st.acc_blocks  # a running first guess: ranks the peer at once
        if st.block_s is not None:
            rtt = max(0.0, latency - (rec.ahead + 1) * st.block_s)
            st.rtt_s = _ewma(st.rtt_s, rtt, _LATENCY_ALPHA)
        cap = self.config.max_outstanding_per_peer
        st.window = cap if st.blocks == 0 else min(st.window + 1, cap)
        st.blocks += 1
        st.bytes += nbytes
        return True

    def late_timeout(self, peer: Peer, ahead: int = 0) -> float:
        """Seconds after which a want-block to ``peer`` with ``ahead`` blocks in
        flight before it is late."""
        cfg = self.config
        st = self._peers.get(peer)
        if st is None or st.block_s is None:
            return cfg.late_max_s
        expected = (st.rtt_s or 0.0) + (ahead + 1) * st.block_s
        return min(cfg.late_max_s, max(cfg.late_min_s, cfg.late_multiplier * expected))

    def late(self, now: float) -> list[tuple[Peer, bytes]]:
        """Want-blocks that went late since the last call, oldest first per peer.

        Each is reported once; the peer's in-flight bound is halved for each.
        """
        out: list[tuple[Peer, bytes]] = []
        for peer, st in self._peers.items():
            for key, rec in st.inflight.items():
                if rec.late:
                    continue
                if now - rec.at < self.late_timeout(peer, rec.ahead):
                    break  # younger ones are not late either (sent later, fewer ahead)
                rec.late = True
                st.n_late += 1
                st.late_total += 1
                st.window = max(1, st.window // 2)
                self.admission.late(peer, now)
                out.append((peer, key))
        return out

    def silent(self, now: float) -> list[Peer]:
        """Peers with want-blocks in flight that sent nothing for ``stall_timeout_s``.

        Each is reported again only after another such period.
        """
        out = []
        for peer, st in self._peers.items():
            if st.inflight and now - st.quiet_since >= self.config.stall_timeout_s:
                st.quiet_since = now
                self.admission.remove(peer, now, retry=True)
                out.append(peer)
        return out

    # ------------------------------------------------------------ internals

    def _initial_window(self) -> int:
        cfg = self.config
        return min(cfg.initial_outstanding_per_peer, cfg.max_outstanding_per_peer)

    def _best(self, attr: str) -> float:
        cached = self._best_cache.get(attr)
        if cached is not None:
            return cached
        best = math.inf
        for st in self._peers.values():
            v = getattr(st, attr)
            if v is not None and v < best:
                best = v
        best = 0.0 if best == math.inf else best
        self._best_cache[attr] = best
        return best
