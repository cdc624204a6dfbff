"""Holder admission, pure: which holders a fetch uses, decided from the rate received.

``HolderAdmission`` is driven directly with deliveries and times; whole fetches
run in the discrete-event simulation of ``tests.support.holders_sim`` with the
noise of a loaded machine (jittered holders and receiver, blocks handed over
in store-commit bursts), seeded, so what is asserted is the decisions.
"""

from __future__ import annotations

import math

from pinfold.daemon.p2p.bitswap.admission import (
    BURST_S,
    LOOP_BUSY,
    MIN_BLOCKS,
    HolderAdmission,
)
from pinfold.daemon.p2p.bitswap.client_types import ClientConfig

from tests.support.holders_sim import simulate

MB = 1_000_000


def baseline(adm: HolderAdmission, peer: str = "a", *, every_s: float = 0.1,
             now: float = 0.0) -> float:
    """``peer`` alone delivers 1 MB every ``every_s`` until a window concludes; the time after."""
    adm.seen(["a", "b", "c"])
    adm.chosen(peer)
    n = 1 + max(MIN_BLOCKS, math.ceil(adm.config.holder_window_s / every_s) + 1)
    for _ in range(n):  # exactly one window: its first block starts it
        now += every_s
        adm.delivered(peer, MB, now)
    assert adm.base_rate is not None
    return now


def test_a_window_does_not_count_the_burst_it_started_on():
    """Blocks arrive in bursts (a store commit hands over several messages at once):
    the burst a window starts on is not in it, so the rate is the steady one."""
    adm = HolderAdmission(ClientConfig(holder_window_s=1.0))
    adm.seen(["a", "b"])
    adm.chosen("a")
    now = 1.0
    for _ in range(10):  # a burst of 10 blocks within a millisecond
        adm.delivered("a", MB, now)
        now += BURST_S / 20
    now = 1.0
    for _ in range(max(MIN_BLOCKS, 10) + 2):  # then 10 MB/s, one block every 0.1 s
        now += 0.1
        adm.delivered("a", MB, now)
    assert adm.base_rate is not None and abs(adm.base_rate - 10 * MB) < 0.2 * MB, adm.base_rate


def test_a_probe_is_not_kept_for_a_rise_the_incumbents_made_alone():
    """The rate rose by more than the gain, but the probe delivered almost none of
    it: the incumbent got faster on its own (the machine's load fell), so the
    probe does not stay."""
    adm = HolderAdmission(ClientConfig(holder_window_s=1.0, holder_gain=0.1))
    now = baseline(adm)  # 10 MB/s
    assert adm.probing == "b"
    now += 0.05
    adm.delivered("b", MB, now)  # the probe's first block starts its window
    assert MIN_BLOCKS < 20
    for i in range(20):  # 14 MB/s over 1.4 s, but b brings 1 block in 20
        now += 0.07
        adm.delivered("b" if i == 5 else "a", MB, now)
    assert adm.members() == ["a"], adm.members()
    assert adm.decisions["dropped"] == 1 and adm.decisions["kept"] == 0


def test_a_probe_that_brings_the_rise_itself_is_kept():
    adm = HolderAdmission(ClientConfig(holder_window_s=1.0, holder_gain=0.1))
    now = baseline(adm)  # 10 MB/s from a
    now += 0.05
    adm.delivered("b", MB, now)
    assert MIN_BLOCKS < 24
    for i in range(24):  # 20 MB/s over 1.2 s, half of it from b
        now += 0.05
        adm.delivered("ab"[i % 2], MB, now)
    assert adm.members()[:2] == ["a", "b"] and adm.decisions["kept"] == 1


def test_lateness_starts_at_most_one_probe_per_retry_period():
    """On a loaded machine every holder goes late now and then: a late want
    probes another holder at once, but not again within ``holder_retry_s``."""
    cfg = ClientConfig(holder_window_s=1.0, holder_retry_s=5.0)
    adm = HolderAdmission(cfg)
    adm.seen(["a", "b", "c"])
    adm.chosen("a")
    adm.late("a", 1.0)
    assert adm.probing == "b" and adm.decisions["admitted"] == 1
    adm.remove("b", 1.5, retry=True)  # the probe went silent: out again
    adm.late("a", 2.0)
    assert adm.probing is None and adm.decisions["admitted"] == 1
    adm.late("a", 1.0 + cfg.holder_retry_s)  # back-off or not
    assert adm.probing is not None and adm.decisions["admitted"] == 2


def test_a_kept_holder_is_tried_out_again_after_the_retry_period():
    """A set that had its trial is checked again once ``holder_retry_s`` passed:
    a member kept on a lucky window, or one the machine no longer pays for, goes."""
    cfg = ClientConfig(holder_window_s=1.0, holder_retry_s=5.0, holder_gain=0.1)
    adm = HolderAdmission(cfg)
    adm.seen(["a", "b"])
    adm.chosen("a")
    now = 0.0
    peers = ["a"]

    def window(rate_mb: float) -> None:
        """Exactly one window at ``rate_mb`` MB/s from ``peers`` in turn (its
        first block starts it)."""
        nonlocal now
        step = 1 / rate_mb
        for i in range(1 + max(MIN_BLOCKS, math.ceil(cfg.holder_window_s / step) + 1)):
            now += step
            adm.delivered(peers[i % len(peers)], MB, now)

    window(10)  # baseline; b is probed
    now += 0.01
    adm.delivered("b", MB, now)
    peers = ["a", "b"]
    window(20)  # b doubles the rate: kept
    assert adm.members() == ["a", "b"]
    window(20)  # nobody left to probe: trial without the weaker one
    trials = adm.decisions["trials"]
    assert trials == 1
    peers = [p for p in adm.members()]
    window(10)  # half the rate without it: it comes back
    assert sorted(adm.members()) == ["a", "b"]
    trial_end = now
    peers = ["a", "b"]
    window(20)
    assert adm.decisions["trials"] == trials  # not within the retry period
    while now < trial_end + cfg.holder_retry_s + 2 * cfg.holder_window_s:
        window(20)
    assert adm.decisions["trials"] == trials + 1


#: Three equal holders on the receiver's machine: each busy sender adds half the
#: receiver's per-block cost, so one holder is the best set; with the noise of
#: a loaded machine (+-50 % per block, blocks handed over every 50 ms).
NOISY_CROWDED = {"receiver_s": 0.008, "per_conn": 0.5, "jitter": 0.5, "commit_s": 0.05}


def test_noise_does_not_keep_holders_the_receiver_cannot_afford():
    for seed in range(5):
        one = simulate({"a": 0.01}, 600, seed=seed, **NOISY_CROWDED).elapsed_s
        r = simulate({"a": 0.01, "b": 0.01, "c": 0.01}, 600, seed=seed, **NOISY_CROWDED)
        assert r.elapsed_s <= one * 1.05, (seed, one, r)
        assert r.duplicates <= r.counters["late_reasks"]


def test_noise_does_not_stop_holders_from_being_added_when_they_pay():
    kw = {**NOISY_CROWDED, "receiver_s": 0.002}
    for seed in range(3):
        one = simulate({"a": 0.01}, 600, seed=seed, **kw).elapsed_s
        r = simulate({"a": 0.01, "b": 0.01, "c": 0.01}, 600, seed=seed, **kw)
        assert r.elapsed_s < one / 1.5, (seed, one, r)


def test_headroom_is_an_idle_core_or_a_receiver_waiting_for_its_holders():
    adm = HolderAdmission(ClientConfig(holder_min_idle_cores=1.0))
    assert adm.headroom  # not measured: room
    adm.machine(0.2, 0.95)
    assert not adm.headroom  # cores busy, the receiver's loop saturated
    adm.machine(2.0, None)
    adm.machine(2.0, None)
    assert adm.headroom  # cores idle (smoothed over two samples)
    adm = HolderAdmission(ClientConfig(holder_min_idle_cores=1.0))
    adm.machine(0.0, LOOP_BUSY / 4)
    assert adm.headroom  # the machine is busy, but the receiver waits for its holders
    assert HolderAdmission(ClientConfig(holder_min_idle_cores=0.0)).headroom


def test_no_holder_is_probed_while_no_core_is_idle_and_the_receiver_is_saturated():
    """The 2-core case: the fetch keeps both cores busy and the receiver's loop
    runs all the time, so more holders would only cost: none is probed, and
    three holders fetch exactly as one does."""
    busy = (0.1, 0.98)
    one = simulate({"a": 0.01}, 300, load=busy, **NOISY_CROWDED)
    r = simulate({"a": 0.01, "b": 0.01, "c": 0.01}, 300, load=busy, **NOISY_CROWDED)
    assert r.by_peer["a"] == 300 and r.decisions["admitted"] == 0, r
    assert r.decisions["held"] > 0
    assert r.elapsed_s <= one.elapsed_s * 1.01, (one, r)


def test_a_receiver_waiting_for_its_holders_probes_more_however_busy_the_machine():
    """Other work keeps every core busy, but the receiver's loop mostly waits for
    its holders: they are the limit, so more of them are probed and kept."""
    waiting = (0.0, 0.2)
    kw = {**NOISY_CROWDED, "receiver_s": 0.002}
    one = simulate({"a": 0.01}, 600, load=waiting, **kw).elapsed_s
    r = simulate({"a": 0.01, "b": 0.01, "c": 0.01}, 600, load=waiting, **kw)
    assert r.elapsed_s < one / 1.5, (one, r)
