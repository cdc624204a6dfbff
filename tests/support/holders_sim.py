"""A discrete-event simulation of holders serving one ``WantManager`` (pure, no I/O).

Each simulated holder has every block, answers want-have at once and serves
its want-blocks one after another, ``speed`` seconds each (FIFO, as a Bitswap
server does); a cancel removes a queued want. Holders can vanish (disconnect)
or go silent (stay connected, never answer again) at given times.

The receiver can be given a CPU cost (``receiver_s`` per block): blocks then
wait in its one queue and are handed to the wantlist one at a time, each after
``receiver_s`` x (1 + ``per_conn`` x (holders with want-blocks in flight - 1))
seconds, as on
a machine where every busy sender takes cores and connections from the
receiver (one holder: ``receiver_s``; three: more per block). Time is
simulated: the result is what the scheduler's decisions cost, free of the
machine's load.

Noise, as on a loaded machine, from a seeded ``random.Random``: ``jitter``
spreads every holder's time per block and the receiver's cost per block
uniformly over (1 +- ``jitter``) x their value; ``commit_s`` hands received
blocks to the wantlist in bursts, all at the next multiple of ``commit_s`` (the
store commits several messages at once).
"""

from __future__ import annotations

import math
import random
from collections import Counter, deque
from dataclasses import dataclass, field

from pinfold.blockstore.cid import CID, RAW, cid_key, make_cid
from pinfold.daemon.p2p.bitswap.client_types import ClientConfig, SendWants
from pinfold.daemon.p2p.bitswap.message import BlockPresence, PresenceType, WantType
from pinfold.daemon.p2p.bitswap.wants import WantManager

TICK_S = 0.25  # the exchange's tick_interval_s


@dataclass
class SimResult:
    elapsed_s: float
    by_peer: Counter[str]
    duplicates: int
    counters: Counter[str]
    received: int
    decisions: Counter[str]


@dataclass
class _Holder:
    speed: float
    queue: deque[bytes] = field(default_factory=deque)
    done_at: float | None = None  # when the head of the queue is delivered
    gone: bool = False
    silent: bool = False


def sim_cids(n: int) -> list[CID]:
    return [make_cid(i.to_bytes(4, "big") * 8, RAW) for i in range(n)]


def simulate(speeds: dict[str, float], n: int, *, vanish: dict[str, float] | None = None,
             silence: dict[str, float] | None = None, config: ClientConfig | None = None,
             limit_s: float = 10_000.0, receiver_s: float = 0.0,
             per_conn: float = 0.0, jitter: float = 0.0, commit_s: float = 0.0,
             seed: int = 0, load: tuple[float | None, float | None] | None = None) -> SimResult:
    """Fetch ``n`` blocks from holders with these per-block ``speeds`` (seconds).

    Args:
        vanish: holder -> time it disconnects.
        silence: holder -> time it stops answering (still connected).
        receiver_s: the receiver's CPU seconds per block with one busy holder.
        per_conn: extra fraction of ``receiver_s`` per further busy holder.
        jitter: every time per block drawn from (1 +- jitter) x its value.
        commit_s: received blocks reach the wantlist at multiples of this (0: at once).
        seed: seeds the noise.
        load: ``(idle cores, receiver loop busy fraction)`` the driver would
            measure, given to the wantlist every tick (None: never measured).
    """
    rng = random.Random(seed)

    def noisy(t: float) -> float:
        return t * (1 + jitter * (2 * rng.random() - 1)) if jitter else t

    m = WantManager(config)
    holders = {p: _Holder(s) for p, s in speeds.items()}
    vanish = dict(vanish or {})
    silence = dict(silence or {})
    cids = sim_cids(n)
    by_key = {cid_key(c): c for c in cids}
    got: set[bytes] = set()
    by_peer: Counter[str] = Counter()
    duplicates = 0
    now = 0.0
    inbox: deque[tuple[str, bytes]] = deque()  # delivered, waiting for the receiver
    done: list[tuple[str, bytes]] = []  # processed, waiting for the commit
    commit_at: float | None = None
    recv_at: float | None = None  # when the receiver is done with inbox[0]

    def recv_cost() -> float:
        busy = sum(1 for p, h in holders.items() if m.outstanding(p) and not h.gone)
        return noisy(receiver_s * (1 + per_conn * max(0, busy - 1)))

    def accept(p: str, key: bytes) -> None:
        nonlocal duplicates
        res = m.on_block(p, key, now, 1 << 20)
        if key in got:
            duplicates += 1
        elif res is not None:
            got.add(key)
            by_peer[p] += 1
            assert by_key[key] == res[0]
            apply(res[2])

    def apply(actions) -> None:
        for a in actions:
            if not isinstance(a, SendWants):
                continue
            h = holders[a.peer]
            if h.gone:
                continue
            haves = []
            for e in a.entries:
                key = cid_key(e.cid)
                if e.cancel:
                    if key in h.queue and (h.queue[0] != key or h.done_at is None):
                        h.queue.remove(key)
                elif e.want_type == WantType.HAVE:
                    haves.append(BlockPresence(cid=e.cid, type=PresenceType.HAVE))
                elif key not in h.queue:
                    h.queue.append(key)
                    if h.done_at is None and not h.silent:
                        h.done_at = now + noisy(h.speed)
            if haves and not h.silent:
                apply(m.on_presences(a.peer, haves, now))

    for p in holders:
        apply(m.peer_connected(p, now))
    sid = m.new_session(timeout_s=1e9, now=now)
    apply(m.want(sid, cids, now))
    next_tick = TICK_S
    while len(got) < n:
        assert now < limit_s, f"no progress: {len(got)}/{n} blocks by {now:.1f} s"
        due = [(h.done_at, p) for p, h in holders.items() if h.done_at is not None]
        events = [(t, "vanish", p) for p, t in vanish.items()]
        events += [(t, "silence", p) for p, t in silence.items()]
        events += [(t, "block", p) for t, p in due]
        if recv_at is not None:
            events.append((recv_at, "recv", ""))
        if commit_at is not None:
            events.append((commit_at, "commit", ""))
        events.append((next_tick, "tick", ""))
        t, kind, p = min(events)
        now = t
        if kind == "tick":
            next_tick += TICK_S
            if load is not None:
                m.machine(*load)
            apply(m.tick(now))
        elif kind == "vanish":
            del vanish[p]
            holders[p].gone = True
            holders[p].done_at = None
            apply(m.peer_disconnected(p, now))
        elif kind == "silence":
            del silence[p]
            holders[p].silent = True
            holders[p].done_at = None
        elif kind == "commit":
            commit_at = None
            batch, done[:] = list(done), []
            for q, key in batch:
                accept(q, key)
        elif kind == "recv":
            q, key = inbox.popleft()
            if commit_s > 0:
                done.append((q, key))
                if commit_at is None:
                    commit_at = (math.floor(now / commit_s) + 1) * commit_s
            else:
                accept(q, key)
            recv_at = now + recv_cost() if inbox else None
        else:
            h = holders[p]
            key = h.queue.popleft()
            h.done_at = now + noisy(h.speed) if h.queue else None
            if receiver_s <= 0:
                accept(p, key)
            else:
                inbox.append((p, key))
                if recv_at is None:
                    recv_at = now + recv_cost()
    return SimResult(elapsed_s=now, by_peer=by_peer, duplicates=duplicates,
                     counters=Counter(m.counters), received=len(got),
                     decisions=Counter(m.scheduler.admission.decisions))
