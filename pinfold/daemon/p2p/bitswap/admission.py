"""Which holders a fetch uses at all: more only while they raise its throughput (sans-IO).

On one machine, or any receiver short of CPU, every extra holder costs the
receiver work (another connection, more and smaller messages) and the senders
compete with it for cores: three holders can deliver less than one. So the
holder scheduler (``schedule.HolderScheduler``) gives want-blocks only to
*admitted* holders, and ``HolderAdmission`` decides which, from the aggregate
rate the client receives (bytes/s over all holders):

* the first holder a want-block goes to (the one that would deliver it
  soonest) is admitted at once;
* *baseline*: the aggregate rate is measured over a window of at least
  ``holder_window_s`` and ``MIN_BLOCKS`` blocks. Blocks reach the wantlist in
  bursts (one message of several blocks, and the store commits several
  messages at once): a window starts at a burst and counts only the bytes that
  arrive after it (``BURST_S``), so a window is not biased by the burst it
  started on;
* *headroom*: a probe starts only while another holder could raise the rate:
  the machine has ``holder_min_idle_cores`` CPU cores idle, or the receiver's
  event loop waits for the holders (busy, running or runnable, under
  ``LOOP_BUSY`` of the time): both measured by the driver (``machine``);
  unknown counts as room. When the fetch already keeps the machine's cores
  busy (the receiver, and senders on the same machine) and the receiver's
  loop is saturated, another holder can only cost: it adds a connection and
  smaller messages to the receiver's work, and a local sender's to the cores.
  Such a window is counted as ``held``;
* *probe*: one more holder seen holding wanted blocks is admitted; once it has
  delivered its first block (or after ``AWAIT_WINDOWS`` windows) the rate is
  measured again. It stays only when the rate rose by ``holder_gain`` (a
  fraction) *and* the incumbents' part of it did not: a rise the incumbents
  made on their own (the machine's load fell, a burst landed in the window)
  is noise, not the probe's doing. Then the next holder is probed.
  Otherwise the set falls back: the holder of the two (the probe, or the
  incumbent that delivered least in the window) that delivered fewer bytes is
  dropped, and may be probed again after ``holder_retry_s``, doubled at each
  rejection;
* *trial*: when no holder is left to probe, the member that delivered least
  in the last window is taken out for one window: unless the set without it
  is slower by ``holder_gain`` it stays out (back-off as above; a slow first
  holder that a faster one joined is dropped so, and so is a member kept on a
  lucky window), else it is admitted again. A trial follows every change of
  the set, and at the latest ``holder_retry_s`` after the last one: the set is
  checked again as the machine's load changes;
* a window in which nothing was in flight (the fetch waited for its own DAG
  walk, or ended) is not a measurement: it starts again;
* a holder that vanished or went silent leaves the set; when an admitted holder
  goes late, the next holder is probed at once, back-off or not, at most once
  per ``holder_retry_s`` (on a loaded machine every holder goes late now and
  then: that is no reason to keep probing).

Fewer holders win every tie: each costs the receiver CPU, and on one machine
the senders' CPU too, so a holder must pay for itself in rate.

Pure: time comes in as ``now`` (seconds); peers are any hashable. With
``adaptive_holders`` off every holder is admitted (the set is not managed).
"""

from __future__ import annotations

from collections import Counter
from typing import Final

from pinfold.daemon.p2p.bitswap.client_types import ClientConfig, Peer

__all__ = ["AWAIT_WINDOWS", "BURST_S", "LOOP_BUSY", "MIN_BLOCKS", "HolderAdmission"]

#: Fewest blocks in one rate window (one message of many blocks arrives at
#: once; a fast fetch's window spans several bursts by its time bound anyway).
MIN_BLOCKS: Final = 8

#: Deliveries within this many seconds of a window's start belong to the burst
#: that started it (the blocks of one store commit are handed over in well
#: under a millisecond each) and are not counted in the window.
BURST_S: Final = 0.005

#: The receiver's event loop counts as waiting for the holders (another could
#: raise the rate) while it is running or runnable less than this part of the
#: time. A one-holder fetch at full speed on the 2-core bench machine keeps the
#: loop about half the time busy (channel + Bitswap, ~2.5-3 CPU-s/GiB of the
#: receiver's 5-5.5); a holder at a tenth of that speed keeps it ~5 % busy.
LOOP_BUSY: Final = 0.3

#: Windows to wait for a probed holder's first block before measuring anyway.
AWAIT_WINDOWS: Final = 4


class HolderAdmission:
    """The set of holders want-blocks may go to, grown while it pays (see module doc).

    Attributes:
        decisions: ``admitted`` (probes started), ``kept`` (probes that raised the
            rate), ``dropped`` (holders that left the set after a probe that did
            not), ``trials`` (members taken out for a window), ``demoted``
            (silent holders taken out), ``held`` (windows after which a holder
            was left to probe but no CPU core was idle).
    """

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self.decisions: Counter[str] = Counter()
        self._active: dict[Peer, None] = {}  # admitted, in admission order
        self._known: dict[Peer, None] = {}  # peers seen holding wanted blocks
        self._retry: dict[Peer, tuple[float, int]] = {}  # peer -> (not before, rejections)
        self._probe: Peer | None = None
        self._trial: Peer | None = None  # a member taken out for one window
        self._tried = False  # the current set had its trial
        self._tried_at = 0.0  # when the last trial ended
        self._late_probe_at: float | None = None  # when lateness last started a probe
        self._await: Peer | None = None  # the probe's first block starts its window
        self._await_since = 0.0
        self._base: float | None = None  # bytes/s of the set without the probe
        self._idle: float | None = None  # CPU cores idle on the machine (EWMA; None: unknown)
        self._busy: float | None = None  # the receiver's loop busy fraction (EWMA)
        self._reset()

    # ------------------------------------------------------------ views

    def admitted(self, peer: Peer) -> bool:
        """Whether want-blocks may go to ``peer`` by choice (always, when off)."""
        return not self.config.adaptive_holders or peer in self._active

    def members(self) -> list[Peer]:
        """The admitted holders, in admission order."""
        return list(self._active)

    @property
    def probing(self) -> Peer | None:
        """The holder on trial now, if any."""
        return self._probe

    @property
    def base_rate(self) -> float | None:
        """The set's last measured rate without the probe, bytes/s."""
        return self._base

    # ------------------------------------------------------------ events

    def seen(self, holders: list[Peer]) -> None:
        """``holders`` were offered a want: remember them as candidates."""
        for p in holders:
            self._known.setdefault(p, None)

    def chosen(self, peer: Peer) -> None:
        """A want-block goes to ``peer``; with no holder admitted yet, it is
        admitted (the first holder, the soonest to deliver, starts the set)."""
        if not self._active:
            self._active[peer] = None
            self._reset()

    def delivered(self, peer: Peer, nbytes: int, now: float) -> None:
        """A wanted block of ``nbytes`` bytes arrived from ``peer`` at ``now``."""
        if not self.config.adaptive_holders:
            return
        if self._await is not None:
            if peer != self._await and now - self._await_since < AWAIT_WINDOWS * self.config.holder_window_s:
                return
            self._await = None
            self._start = now
            return
        if self._start is None:
            self._start = now
            return
        if now - self._start < BURST_S:
            return  # the burst the window started on
        self._bytes += nbytes
        self._blocks += 1
        self._by_peer[peer] += nbytes
        span = now - self._start
        if span >= self.config.holder_window_s and self._blocks >= MIN_BLOCKS:
            self._conclude(self._bytes / span, now)

    def machine(self, idle_cores: float | None, loop_busy: float | None) -> None:
        """Since the last call the machine had ``idle_cores`` CPU cores idle on
        average, and the receiver's event loop thread was running or waiting
        for a core ``loop_busy`` (0..1) of the time (None: not measurable
        here). The driver samples both every tick; they are smoothed here."""
        if idle_cores is not None:
            self._idle = idle_cores if self._idle is None else 0.5 * (idle_cores + self._idle)
        if loop_busy is not None:
            self._busy = loop_busy if self._busy is None else 0.5 * (loop_busy + self._busy)

    @property
    def headroom(self) -> bool:
        """Whether another holder could raise the rate (see the module doc)."""
        if self._idle is None or self._idle >= self.config.holder_min_idle_cores:
            return True
        return self._busy is None or self._busy < LOOP_BUSY

    def idle(self) -> None:
        """Nothing is in flight to any holder: the window measures demand, not holders."""
        if self._await is None:
            self._reset()

    def late(self, peer: Peer, now: float) -> None:
        """An admitted ``peer`` has a late want-block: probe another holder now."""
        if peer not in self._active or self._probe is not None or self._trial is not None:
            return
        last = self._late_probe_at
        if last is not None and now - last < self.config.holder_retry_s:
            return
        self._start_probe(now, ignore_backoff=True)
        if self._probe is not None:
            self._late_probe_at = now

    def remove(self, peer: Peer, now: float, *, retry: bool = False) -> None:
        """``peer`` vanished (``retry`` False: forgotten) or went silent
        (``retry``: out of the set, probed again after the back-off)."""
        if peer in self._active:
            del self._active[peer]
            self._base = None
            self._reset()
            if retry:
                self.decisions["demoted"] += 1
        if peer == self._probe:
            self._probe = self._await = None
        if peer == self._trial:
            self._trial = None
        if retry:
            self._backoff(peer, now)
        else:
            self._known.pop(peer, None)
            self._retry.pop(peer, None)

    # ------------------------------------------------------------ internals

    def _reset(self) -> None:
        self._start: float | None = None
        self._bytes = 0
        self._blocks = 0
        self._by_peer: Counter[Peer] = Counter()

    def _backoff(self, peer: Peer, now: float) -> None:
        _, n = self._retry.get(peer, (0.0, 0))
        self._retry[peer] = (now + self.config.holder_retry_s * (2 ** n), n + 1)

    def _conclude(self, rate: float, now: float) -> None:
        probe = self._probe
        by_peer = self._by_peer
        span_bytes = sum(by_peer.values())
        self._reset()
        gain = 1 + self.config.holder_gain
        trial = self._trial
        if trial is not None:
            self._trial = None
            self._tried_at = now
            if rate * gain >= (self._base or 0.0):
                self.decisions["dropped"] += 1  # it did not bring its gain: it stays out
                self._backoff(trial, now)
                self._base = rate
            else:
                self._active[trial] = None
            return
        if probe is None:
            self._base = rate
            self._start_probe(now)
            if (self._probe is None and len(self._active) > 1
                    and (not self._tried or now - self._tried_at >= self.config.holder_retry_s)):
                self._tried = True
                self._trial = min(self._active, key=lambda p: by_peer[p])
                del self._active[self._trial]
                self.decisions["trials"] += 1
            return
        self._probe = None
        base = self._base
        # the rise must be the probe's doing: the incumbents alone did not rise by the gain
        others = rate * (1 - by_peer[probe] / span_bytes) if span_bytes else rate
        if base is None or (rate >= base * gain and others <= base * gain):
            self.decisions["kept"] += 1
            self._tried = False
            self._retry.pop(probe, None)
            self._base = rate
            self._start_probe(now)
            return
        # fall back: drop whichever delivered less, the probe or the weakest incumbent
        incumbents = [p for p in self._active if p != probe]
        loser = probe
        if incumbents:
            weakest = min(incumbents, key=lambda p: by_peer[p])
            if by_peer[weakest] < by_peer[probe]:
                loser = weakest
        self._active.pop(loser, None)
        self.decisions["dropped"] += 1
        self._backoff(loser, now)
        self._base = None  # measure the set anew

    def _start_probe(self, now: float, *, ignore_backoff: bool = False) -> None:
        headroom = ignore_backoff or self.headroom
        for p in self._known:
            if p in self._active:
                continue
            not_before, _ = self._retry.get(p, (0.0, 0))
            if now < not_before and not ignore_backoff:
                continue
            if not headroom:
                self.decisions["held"] += 1
                return
            self._active[p] = None
            self._probe = self._await = p
            self._await_since = now
            self._reset()
            self.decisions["admitted"] += 1
            return
