"""The replication manager (pinfold/replication/manager.py) on an in-memory transport.

Several managers share a ``MemoryHub`` and run on trio's ``MockClock`` (pytest-trio's
``autojump_clock``): heartbeats, grace periods and fetches take simulated seconds,
so minutes of cluster life run in milliseconds. ``MemoryPins`` stands in for the
store and Bitswap: fetches take ``fetch_s`` seconds, fail on demand and record
their concurrency.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
from typing import ClassVar

import pytest
import trio
from pinfold.blockstore.memory import MemoryBlockStore
from pinfold.replication.errors import InvalidPin
from pinfold.replication.manager import Manager, ManagerConfig
from pinfold.replication.messages import (
    KIND_HEARTBEAT,
    KIND_PINS,
    KIND_STATES,
    ClusterBeat,
    encode_beat,
)
from pinfold.replication.persist import ReplicationDB
from pinfold.replication.transport import MemoryHub, MemoryPins
from pinfold.replication.types import PeerStatus, PinMode, PinState

from tests.support.wait import wait_until_trio

wait_until = functools.partial(wait_until_trio, timeout_s=300.0, interval_s=0.1)  # simulated s

WALL = 1_800_000_000.0
CFG = ManagerConfig(heartbeat_interval_s=1.0, repair_grace_s=5.0, replan_interval_s=3600.0,
                    sync_interval_s=3600.0, retry_min_s=10.0, retry_max_s=80.0,
                    concurrent_pins=2, rmin=2, rmax=2)


def cid_of(i: int) -> bytes:
    return bytes([1, 0x55, 0x12, 0x20]) + hashlib.sha256(b"pin %d" % i).digest()


class Cluster:
    """Managers on one hub, each in its own cancel scope so it can be stopped and restarted."""

    def __init__(self, nursery: trio.Nursery, config: ManagerConfig = CFG) -> None:
        self.nursery = nursery
        self.hub = MemoryHub()
        self.config = config
        self.managers: dict[str, Manager] = {}
        self.pins: dict[str, MemoryPins] = {}
        self.scopes: dict[str, trio.CancelScope] = {}
        self.dbs: dict[str, ReplicationDB] = {}

    async def start(self, name: str, *, pins: MemoryPins | None = None,
                    db: ReplicationDB | None = None, config: ManagerConfig | None = None
                    ) -> Manager:
        if name in self.hub.nodes:
            self.hub.set_up(name, True)
            transport = self.hub.nodes[name]
        else:
            transport = self.hub.transport(name)
        self.pins.setdefault(name, pins or MemoryPins())
        m = Manager(name, config or self.config, transport, self.pins[name], db=db,
                    wall_offset=WALL)
        self.managers[name] = m

        async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with trio.CancelScope() as scope:
                self.scopes[name] = scope
                await m.run(task_status=task_status)

        await self.nursery.start(run)
        return m

    def stop(self, name: str) -> None:
        self.scopes[name].cancel()
        self.hub.set_up(name, False)

    async def place(self, origin: str, cids: list[bytes]) -> None:
        """Pin ``cids`` from ``origin`` with 2 copies each; wait until each has its 2."""
        for cid in cids:
            await self.managers[origin].pin_add(cid, rmin=2, rmax=2)
        await wait_until(lambda: all(len(self.pinned_by(x)) == 2 for x in cids),
                         what="placement")

    def pinned_by(self, cid: bytes) -> set[str]:
        return {n for n, m in self.managers.items()
                if self.hub.nodes[n].up and m.local_state(cid) is PinState.PINNED}


async def test_pin_reaches_exactly_rmax_holders_and_status_agrees(autojump_clock,
                                                                  nursery) -> None:
    c = Cluster(nursery)
    for n in "abcd":
        await c.start(n)
    await trio.sleep(3)  # heartbeats: everyone knows everyone
    cid = cid_of(1)
    await c.managers["a"].pin_add(cid, rmin=2, rmax=2)
    await wait_until(lambda: len(c.pinned_by(cid)) == 2, what="2 holders")
    await trio.sleep(5)
    assert len(c.pinned_by(cid)) == 2, "a settled pin stays at 2 holders"
    # Every node's status shows the same two healthy holders.
    holders = c.pinned_by(cid)
    for m in c.managers.values():
        st = m.status(cid)
        assert st is not None and st.healthy == 2
        assert {h.peer_id for h in st.holders if h.state is PinState.PINNED} == holders
        assert 0.98 < st.availability < 1.0
    # The holders fetched once each; nobody else fetched.
    fetchers = [n for n, p in c.pins.items() if p.fetches]
    assert set(fetchers) == holders


async def test_failed_pin_is_retried_with_doubling_backoff(autojump_clock, nursery) -> None:
    c = Cluster(nursery)
    cid = cid_of(2)
    pins = MemoryPins(fetch_s=1.0, fail={cid})

    def times() -> list[float]:
        return [t for _, _, t in pins.fetches]

    m = await c.start("solo", pins=pins, config=ManagerConfig(
        heartbeat_interval_s=1.0, retry_min_s=10.0, retry_max_s=40.0, rmin=1, rmax=1,
        replan_interval_s=3600.0))
    await trio.sleep(2)
    await m.pin_add(cid)
    await wait_until(lambda: len(times()) >= 5 and m.local_state(cid) is PinState.PIN_ERROR,
                     what="five failed attempts")
    gaps = [b - a for a, b in itertools.pairwise(times())]
    # Each wait is the backoff (jitter 0.75..1.25) plus the 1 s failed fetch.
    for gap, base in zip(gaps[:4], [10.0, 20.0, 40.0, 40.0], strict=True):
        assert 0.75 * base + 1.0 - 1e-6 <= gap <= 1.25 * base + 1.5, (gaps, base)
    assert "no peer sent" in m.local_error(cid)
    assert m.statistics().local_states["pin_error"] == 1
    # `recover` retries at once (long before the 40 s backoff); the fetch now works.
    pins.fail.clear()
    n = len(times())
    assert m.recover(cid) == [cid]
    await wait_until(lambda: m.local_state(cid) is PinState.PINNED, timeout_s=5,
                     what="pinned after recover")
    assert len(times()) == n + 1
    assert m.local_error(cid) == ""


async def test_concurrent_fetches_are_bounded(autojump_clock, nursery) -> None:
    c = Cluster(nursery)
    pins = MemoryPins(fetch_s=2.0)
    m = await c.start("solo", pins=pins, config=ManagerConfig(
        heartbeat_interval_s=1.0, concurrent_pins=3, rmin=1, rmax=1, replan_interval_s=3600.0))
    await trio.sleep(2)
    cids = [cid_of(100 + i) for i in range(12)]
    t0 = trio.current_time()
    for cid in cids:
        await m.pin_add(cid)
    await trio.sleep(0.5)
    st = m.statistics()
    assert st.queue_length == 12
    assert st.local_states["pinning"] == 3 and st.local_states["queued"] == 9
    await wait_until(lambda: all(m.local_state(x) is PinState.PINNED for x in cids))
    assert pins.max_running == 3
    # 12 fetches of 2 s, 3 at a time: 4 rounds.
    assert 8.0 <= trio.current_time() - t0 <= 10.0
    assert m.statistics().queue_length == 0


async def test_dead_holder_repaired_only_after_grace_replanning_only_its_cids(
        autojump_clock, nursery) -> None:
    c = Cluster(nursery)
    for n in "abcd":
        await c.start(n)
    await trio.sleep(3)
    cids = [cid_of(1000 + i) for i in range(300)]
    await c.place("a", cids)
    await trio.sleep(5)
    survivors = [c.managers[n] for n in "abc"]
    planned: list[set[bytes]] = []
    for m in survivors:  # record every CID each survivor plans from now on
        seen: set[bytes] = set()
        planned.append(seen)

        def spy(cids, m=m, seen=seen, real=m._plan_chunk):
            seen.update(cids)
            return real(cids)

        m._plan_chunk = spy
    # Quiet cluster: heartbeats alone re-plan nothing.
    await trio.sleep(20)
    assert planned == [set(), set(), set()]
    lost = {x for x in cids if "d" in c.pinned_by(x)}
    assert 80 < len(lost) < 220
    died_at = trio.current_time()
    c.stop("d")
    # Nothing moves during the TTL + grace period (2 s + 5 s).
    await wait_until(lambda: c.managers["a"].health.status("d", c.managers["a"].now())
                     is PeerStatus.DEAD, what="d dead")
    assert trio.current_time() - died_at >= 6.0
    assert all(len(c.pinned_by(x)) == 1 for x in lost)
    await wait_until(lambda: all(len(c.pinned_by(x)) == 2 for x in lost), what="repair")
    # Incremental: each survivor planned exactly the dead peer's CIDs, nothing else.
    assert planned == [lost, lost, lost]
    st = survivors[0].statistics()
    assert st.cluster_pins["under_replicated"] == 0
    assert st.peers["dead"] == 1
    assert st.repair_count == len(lost)
    # The repair time runs from death (+TTL+grace) to rmin again: a few seconds here.
    assert 0 < st.repair_sum_s / st.repair_count < 30
    repairs = sum(m.statistics().repairs["completed"] for m in survivors)
    assert repairs == len(lost)


async def test_lost_gossip_is_caught_up_by_anti_entropy(autojump_clock, nursery) -> None:
    c = Cluster(nursery)
    for n in "abc":
        await c.start(n)
    await trio.sleep(3)
    c.hub.dropped_kinds = {KIND_PINS, KIND_STATES}
    cids = [cid_of(2000 + i) for i in range(50)]
    for cid in cids:
        await c.managers["a"].pin_add(cid, rmin=1, rmax=1)
    # No deltas travel, yet heartbeats show differing digests and peers sync.
    await wait_until(lambda: all(len(m.pinset) == 50 for m in c.managers.values()),
                     timeout_s=30, what="pinsets equal")
    await wait_until(lambda: all(len(c.pinned_by(x)) == 1 for x in cids), what="holders")
    await wait_until(lambda: all(m.status(x).healthy == 1 for m in c.managers.values()
                                 for x in cids), timeout_s=30, what="states known everywhere")
    roots = {m.pinset.summary(0, 0) for m in c.managers.values()}
    assert len(roots) == 1


async def test_partitioned_writers_converge_to_the_last_write(autojump_clock, nursery) -> None:
    c = Cluster(nursery)
    for n in "abcd":
        await c.start(n)
    await trio.sleep(3)
    cid = cid_of(3000)
    await c.managers["a"].pin_add(cid, rmin=1, rmax=1)
    await wait_until(lambda: all(cid in m.pinset for m in c.managers.values()))
    for x in "ab":
        for y in "cd":
            c.hub.cut(x, y)
    await c.managers["c"].pin_rm(cid)       # older write
    await trio.sleep(1)
    await c.managers["a"].pin_add(cid, rmin=2, rmax=2, name="again")   # the last writer
    await trio.sleep(2)
    assert cid not in c.managers["d"].pinset
    for x in "ab":
        for y in "cd":
            c.hub.heal(x, y)
    await wait_until(lambda: all(m.pinset.pin(cid) is not None
                                 and m.pinset.pin(cid).name == "again"
                                 for m in c.managers.values()), timeout_s=30)
    await wait_until(lambda: len(c.pinned_by(cid)) == 2)


async def test_state_survives_a_restart_from_the_store(autojump_clock, nursery) -> None:
    c = Cluster(nursery)
    store = MemoryBlockStore()

    async def submit(fn):
        return store.write(fn)

    db = ReplicationDB(store, submit)
    pins = MemoryPins()
    await c.start("b")
    a = await c.start("a", pins=pins, db=db)
    await trio.sleep(3)
    cids = [cid_of(4000 + i) for i in range(20)]
    for cid in cids:
        await a.pin_add(cid, rmin=2, rmax=2)
    await a.pin_rm(cids[0])
    await wait_until(lambda: all(a.local_state(x) is PinState.PINNED for x in cids[1:]))
    await a.wait_flushed()
    version = a.own.version
    p_b = a.health.p("b", a.now())
    c.stop("a")
    await trio.sleep(1)
    a2 = await c.start("a", pins=pins, db=ReplicationDB(store, submit))
    assert len(a2.pinset) == 19 and cids[0] not in a2.pinset
    assert a2.pinset.get(cids[0]) is not None, "the tombstone is kept"
    assert all(a2.local_state(x) is PinState.PINNED for x in cids[1:])
    assert a2.own.version >= version
    assert abs(a2.health.p("b", a2.now()) - p_b) < 0.01
    # b keeps seeing a's states (a reset or a continuation, never a step back).
    await trio.sleep(5)
    b = c.managers["b"]
    assert all(b.holdings.get(x, "a") is PinState.PINNED for x in cids[1:])
    assert all(len(c.pinned_by(x)) == 2 for x in cids[1:])


async def test_origin_copy_is_released_once_holders_have_it(autojump_clock, nursery) -> None:
    c = Cluster(nursery)
    cid = cid_of(5000)
    origin = MemoryPins(local={cid})
    await c.start("a", pins=origin)
    for n in "bcd":
        await c.start(n)
    await trio.sleep(3)
    pin = await c.managers["a"].pin_add(cid, rmin=1, rmax=1, stage=True)
    assert pin.size_bytes == origin.size_bytes
    holder_is_origin = c.managers["a"].is_staged(cid)
    await wait_until(lambda: len(c.pinned_by(cid)) == 1)
    await trio.sleep(2)
    holders = c.pinned_by(cid)
    assert not c.managers["a"].is_staged(cid)
    assert holder_is_origin
    if "a" not in holders:
        assert cid not in origin.pinned, "the origin copy was released"
    else:
        assert cid in origin.pinned


async def test_unpin_releases_every_copy(autojump_clock, nursery) -> None:
    c = Cluster(nursery)
    for n in "abc":
        await c.start(n)
    await trio.sleep(3)
    cid = cid_of(6000)
    await c.managers["b"].pin_add(cid, rmin=3, rmax=3)
    await wait_until(lambda: len(c.pinned_by(cid)) == 3)
    await c.managers["c"].pin_rm(cid)
    await wait_until(lambda: all(cid not in p.pinned for p in c.pins.values()))
    await wait_until(lambda: all(m.local_state(cid) is PinState.REMOTE
                                 for m in c.managers.values()))
    assert all(m.status(cid) is None for m in c.managers.values())


async def test_reload_applies_grace_and_concurrency_live(autojump_clock, nursery) -> None:
    import dataclasses

    c = Cluster(nursery)
    for n in "ab":
        await c.start(n)
    await trio.sleep(3)
    a = c.managers["a"]
    a.apply_config(dataclasses.replace(CFG, repair_grace_s=30.0, concurrent_pins=5))
    assert a._limiter.total_tokens == 5
    c.stop("b")
    stopped = trio.current_time()
    await wait_until(lambda: a.health.status("b", a.now()) is PeerStatus.DEAD, timeout_s=100)
    # TTL 2 s + the new grace of 30 s (not the 5 s it started with).
    assert 31.0 <= trio.current_time() - stopped <= 33.5


async def test_a_fetch_whose_sources_all_went_silent_is_replanned(autojump_clock, nursery) -> None:
    """A fetch waits for blocks from the holders alive when it was planned; when
    every one of them goes silent (behind a partition they stay "connected"), the
    fetch is cancelled, freeing its fetch slot, and the CID is re-planned when a
    holder is heard again -- rather than a fetch slot held until the Bitswap
    timeout while repairable pins wait (the cluster fault campaign)."""

    class SilentSource(MemoryPins):
        """Blocks from a peer in ``silent`` never arrive; otherwise a fetch takes 1 s."""

        silent: ClassVar[set[str]] = {"a"}

        async def pin(self, cid, *, mode, sources):
            if self.silent & set(sources):
                self.fetches.append((cid, tuple(sources), trio.current_time()))
                self.running += 1
                try:
                    await trio.sleep_forever()
                finally:
                    self.running -= 1
            return await super().pin(cid, mode=mode, sources=sources)

    c = Cluster(nursery)
    await c.start("a")
    await c.start("c")
    await trio.sleep(3)
    x = cid_of(7)
    await c.managers["a"].pin_add(x, rmin=2, rmax=2)
    await wait_until(lambda: c.pinned_by(x) == {"a", "c"}, what="a and c hold x")
    b_pins = SilentSource(fetch_s=1.0)
    await c.start("b", pins=b_pins)
    # (b, joining, may copy x before it hears who holds it; the extra copy goes)
    await trio.sleep(3)
    await wait_until(lambda: c.pinned_by(x) == {"a", "c"}, what="x back on a and c only")
    b_pins.fetches.clear()
    c.stop("c")  # c dies: b is allocated x and fetches it from a ...
    await wait_until(lambda: any(f[0] == x for f in b_pins.fetches), what="b fetching x from a")
    assert b_pins.fetches[-1][1] == ("a",), b_pins.fetches
    c.stop("a")  # ... which goes silent too
    silent_at = trio.current_time()
    b = c.managers["b"]
    # Suspect is only a late heartbeat (under loss and resets holders flap): with
    # no pin waiting for the slot and no other holder, the fetch goes on ...
    await wait_until(lambda: b.health.status("a", b.now()) is PeerStatus.SUSPECT,
                     what="a suspect")
    await trio.sleep(1)
    assert b_pins.running == 1
    # ... until a is declared dead (TTL 2 s + grace 5 s after its last heartbeat).
    await wait_until(lambda: b_pins.running == 0, timeout_s=60, what="b's fetch to be aborted")
    assert b.health.status("a", b.now()) is PeerStatus.DEAD
    assert trio.current_time() - silent_at < 2 + 5 + 1
    assert b.local_state(x) is not PinState.PINNING
    # With no holder to fetch from, b does not start a hopeless fetch; when a is
    # heard again (and serves), x is repaired from it.
    await trio.sleep(10)
    assert b_pins.running == 0
    SilentSource.silent = set()
    await c.start("a")
    await wait_until(lambda: c.pinned_by(x) == {"a", "b"}, timeout_s=120, what="x repaired on b")


async def test_a_fetch_from_suspect_sources_gives_its_slot_to_a_waiting_pin(autojump_clock,
                                                                            nursery) -> None:
    """When a pin waits for the fetch slot, a fetch whose sources all turned
    suspect is cancelled at once rather than when they are declared dead."""
    import dataclasses

    class SilentSource(MemoryPins):
        cancelled: ClassVar[list[tuple[bytes, float]]] = []
        started: ClassVar[list[bytes]] = []

        async def pin(self, cid, *, mode, sources):
            if "a" in sources:
                self.started.append(cid)
                self.running += 1
                try:
                    await trio.sleep_forever()
                except trio.Cancelled:
                    self.cancelled.append((cid, trio.current_time()))
                    raise
                finally:
                    self.running -= 1
            return await super().pin(cid, mode=mode, sources=sources)

    c = Cluster(nursery, dataclasses.replace(CFG, concurrent_pins=1))
    await c.start("a")
    await c.start("c")
    await trio.sleep(3)
    xs = [cid_of(7100), cid_of(7101)]
    for x in xs:
        await c.managers["a"].pin_add(x, rmin=2, rmax=2)
    await wait_until(lambda: all(c.pinned_by(x) == {"a", "c"} for x in xs))
    b_pins = SilentSource(fetch_s=1.0)
    b = await c.start("b", pins=b_pins)
    await trio.sleep(3)
    await wait_until(lambda: all(c.pinned_by(x) == {"a", "c"} for x in xs))
    c.stop("c")  # b is allocated both; one fetches from a, the other waits for the slot
    await wait_until(lambda: b_pins.running == 1 and len(b._queue) == 1, what="one fetch, one queued")
    first = SilentSource.started[-1]
    c.stop("a")
    await wait_until(lambda: b.health.status("a", b.now()) is PeerStatus.SUSPECT, what="a suspect")
    await wait_until(lambda: SilentSource.cancelled, timeout_s=1, what="the fetch cancelled")
    assert SilentSource.cancelled[0][0] == first
    # The waiting pin's source is suspect too; with nothing else waiting it may
    # fetch (a suspect holder often answers), until a is declared dead.
    await wait_until(lambda: b.health.status("a", b.now()) is PeerStatus.DEAD, what="a dead")
    await wait_until(lambda: b_pins.running == 0, timeout_s=1, what="no fetch from a dead source")
    assert first not in SilentSource.started[1:]  # the cancelled one was not retried


async def test_a_restarted_node_trusts_others_reports_only_once_current(autojump_clock,
                                                                        nursery) -> None:
    """After a restart a node knows the others' states as they were when it
    stopped: it must not drop an extra copy on them (a copy it counts on may be
    gone) until it has applied what each peer's heartbeat advertises. Its own
    states log starts a new epoch, so peers pull a fresh reset of it."""
    c = Cluster(nursery)
    store = MemoryBlockStore()

    async def submit(fn):
        return store.write(fn)

    pins = MemoryPins()
    for n in "ab":
        await c.start(n)
    x = await c.start("x", pins=pins, db=ReplicationDB(store, submit))
    await trio.sleep(3)
    cids = [cid_of(8000 + i) for i in range(12)]
    await c.place("a", cids)
    await wait_until(lambda: x._current == {"a", "b"}, what="x to be current on a and b")
    await x.wait_flushed()
    epoch = x.own.epoch
    c.stop("x")
    await trio.sleep(1)
    x2 = await c.start("x", pins=pins, db=ReplicationDB(store, submit))
    assert x2._current == set(), "nothing restored is current"
    assert x2.own.epoch > epoch
    await wait_until(lambda: x2._current == {"a", "b"}, what="x to be current again")
    b = c.managers["b"]
    await wait_until(lambda: b.peers.known("x") is not None and b.peers.known("x")[0] == x2.own.epoch,
                     what="b to pull x's new epoch")
    held = {cid for cid in cids if x2.local_state(cid) is PinState.PINNED}
    assert all(b.holdings.get(cid, "x") is PinState.PINNED for cid in held)
    assert all(len(c.pinned_by(cid)) == 2 for cid in cids)


async def test_a_heartbeat_held_up_by_a_partition_does_not_make_a_dead_holder_count(
        autojump_clock, nursery) -> None:
    """A partition that holds bytes delivers, when it heals, heartbeats a peer
    sent before it died: the peer looks alive again for a TTL. Its copies must not
    let the others drop theirs until a round trip with it succeeds (the cluster
    fault campaign saw pins left at one copy this way)."""
    c = Cluster(nursery)
    for n in ("a", "b", "y"):
        await c.start(n)
    await trio.sleep(3)
    a, y = c.managers["a"], c.managers["y"]
    cids = [cid_of(9000 + i) for i in range(16)]
    await c.place("a", cids)
    held_by_y = [cid for cid in cids if y.local_state(cid) is PinState.PINNED]
    assert len(held_by_y) >= 4
    # y's next heartbeat, as the partition would hold it; then y dies.
    digest, count = y.pinset.summary(0, 0)
    stale = encode_beat(ClusterBeat(heartbeat=y._heartbeat(), pinset_digest=digest,
                                    pinset_count=count, states_epoch=y.own.epoch,
                                    states_version=y._published_version))
    c.stop("y")
    await wait_until(lambda: a.health.status("y", a.now()) is PeerStatus.DEAD, what="y dead")
    await wait_until(lambda: all(len(c.pinned_by(cid)) == 2 for cid in cids),
                     what="y's pins repaired on a and b")
    # The partition heals: a gets y's held-up heartbeat.
    a.on_message("y", KIND_HEARTBEAT, stale)
    assert a.health.status("y", a.now()) is PeerStatus.ALIVE
    await trio.sleep(1.5)  # y looks alive until its TTL runs out
    assert all(len(c.pinned_by(cid)) == 2 for cid in cids), \
        {cid.hex()[-8:]: sorted(c.pinned_by(cid)) for cid in cids}
    assert "y" not in a._current


async def test_a_peer_whose_heartbeats_stall_but_answers_a_probe_is_not_declared_dead(
        autojump_clock, nursery) -> None:
    """Gossip to a node can stall while its connections still carry requests
    (py-libp2p under resets and partitions). A suspect peer is probed with a
    sync round trip; while it answers it is not declared dead, so its pins are
    not repaired elsewhere (SWIM's direct probe)."""
    c = Cluster(nursery)
    for n in "abc":
        await c.start(n)
    await trio.sleep(3)
    cids = [cid_of(9500 + i) for i in range(6)]
    await c.place("a", cids)
    before = {n: len(p.fetches) for n, p in c.pins.items()}
    c.hub.dropped_kinds.add(KIND_HEARTBEAT)  # no heartbeat gets through for 30 s
    await trio.sleep(30)
    for m in c.managers.values():
        assert all(m.health.status(q, m.now()) is not PeerStatus.DEAD for q in "abc")
        assert m.statistics().repairs.get("started", 0) == 0
    assert {n: len(p.fetches) for n, p in c.pins.items()} == before
    c.hub.dropped_kinds.discard(KIND_HEARTBEAT)
    # A peer that really stops is still declared dead.
    c.stop("c")
    await wait_until(lambda: c.managers["a"].health.status("c", c.managers["a"].now())
                     is PeerStatus.DEAD, what="c dead")


async def test_a_direct_pin_never_weakens_a_recursive_cluster_pin(autojump_clock,
                                                                 nursery) -> None:
    c = Cluster(nursery)
    m = await c.start("a")
    cid = cid_of(40)
    await m.pin_add(cid, name="weights", rmin=1, rmax=1)
    with pytest.raises(InvalidPin, match="already pinned recursively"):
        await m.pin_add(cid, mode=PinMode.DIRECT, rmin=1, rmax=1)
    pin = m.pinset.pin(cid)
    assert pin is not None and pin.mode is PinMode.RECURSIVE
    # A re-pin with other options keeps the name; a recursive pin over a direct one upgrades.
    assert (await m.pin_add(cid, rmin=1, rmax=2)).name == "weights"
    other = cid_of(41)
    await m.pin_add(other, mode=PinMode.DIRECT, rmin=1, rmax=1)
    assert (await m.pin_add(other, rmin=1, rmax=1)).mode is PinMode.RECURSIVE


async def test_a_holder_missing_blocks_is_not_counted_and_fetches_again(autojump_clock,
                                                                       nursery) -> None:
    c = Cluster(nursery)
    for n in "ab":
        await c.start(n)
    await trio.sleep(3)
    cid = cid_of(42)
    await c.place("a", [cid])
    holder = min(c.pinned_by(cid))
    fetches = len(c.pins[holder].fetches)
    c.pins[holder].local.discard(cid)
    c.pins[holder].fetch_s = 60.0  # the re-fetch takes a while: peers see it meanwhile
    m = c.managers[holder]
    assert m.local_incomplete([cid]) == [cid]
    assert m.local_state(cid) is not PinState.PINNED
    for other in c.managers.values():  # peers stop counting it as a holder
        await wait_until(lambda o=other: holder not in {
            h.peer_id for h in o.status(cid).holders if h.state is PinState.PINNED},
            what="peers to see the holder as not holding")
    await wait_until(lambda: m.local_state(cid) is PinState.PINNED, what="the re-fetch")
    assert len(c.pins[holder].fetches) == fetches + 1
    assert m.local_incomplete([cid_of(43)]) == []  # not held here: nothing to do
