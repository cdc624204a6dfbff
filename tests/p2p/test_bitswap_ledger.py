"""The exchange's sans-IO peer ledger (bitswap/ledger.py): bans, send backoff, block verdicts.

No trio: times are plain numbers.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pinfold.daemon.p2p.bitswap.errors import TooManyBadBlocks
from pinfold.daemon.p2p.bitswap.ledger import FIRST_RETRY_S, BlockVerdict, PeerLedger


def ledger(**kw: float) -> PeerLedger:
    args = {"ban_s": 60.0, "max_bad_blocks": 4, "unusable_retry_s": 5.0} | kw
    return PeerLedger(**args)  # type: ignore[arg-type]


def test_a_ban_lasts_ban_s_then_is_forgotten() -> None:
    led = ledger(ban_s=10.0)
    led.ban("p", now=100.0)
    assert led.is_banned("p", 100.0) and led.is_banned("p", 109.9)
    assert not led.admit("p", 105.0)
    assert not led.is_banned("p", 110.0)
    assert not led.is_banned("q", 100.0) and led.admit("q", 100.0)
    assert led.admit("p", 110.0)  # over: admitted and forgotten
    assert not led.is_banned("p", 0.0)


def test_expire_forgets_only_bans_that_are_over() -> None:
    led = ledger(ban_s=10.0)
    led.ban("old", now=0.0)
    led.ban("new", now=5.0)
    led.expire(now=12.0)
    assert not led.is_banned("old", 0.0)  # forgotten, not just over
    assert led.is_banned("new", 12.0)


def test_unusable_backoff_doubles_to_the_cap_and_a_success_starts_over() -> None:
    led = ledger(unusable_retry_s=2.0)
    waits = []
    nexts = []
    for _ in range(5):
        waits.append(led.unusable("p"))
        nexts.append(led.retry_delays["p"])
    assert waits == [FIRST_RETRY_S, 0.5, 1.0, 2.0, 2.0]
    assert nexts == [0.5, 1.0, 2.0, 2.0, 2.0]
    led.usable("p")
    assert "p" not in led.retry_delays
    assert led.unusable("p") == FIRST_RETRY_S


def test_unusable_never_waits_longer_than_the_cap() -> None:
    led = ledger(unusable_retry_s=0.1)
    assert led.unusable("p") == 0.1
    assert led.retry_delays["p"] == 0.1


@given(st.lists(st.sampled_from(["a", "b", "c"]), max_size=40))
def test_backoff_per_peer_is_independent_and_bounded(peers: list[str]) -> None:
    led = ledger(unusable_retry_s=5.0)
    failures: dict[str, int] = {}
    for p in peers:
        n = failures.get(p, 0)
        assert led.unusable(p) == min(FIRST_RETRY_S * 2**n, 5.0)
        failures[p] = n + 1


def test_block_verdicts() -> None:
    led = ledger()
    assert led.classify(b"k", wanted=True) is BlockVerdict.WANTED
    assert led.classify(b"k", wanted=False) is BlockVerdict.UNWANTED
    led.asked([b"k"])
    assert led.classify(b"k", wanted=False) is BlockVerdict.LATE  # the cancel crossed it
    led.received(b"r")
    assert led.classify(b"r", wanted=False) is BlockVerdict.LATE  # a duplicate


def test_asked_memory_is_bounded_oldest_first() -> None:
    led = ledger()
    led.asked(i.to_bytes(4, "big") for i in range(65536 + 10))
    assert led.classify((0).to_bytes(4, "big"), wanted=False) is BlockVerdict.UNWANTED
    assert led.classify((65536 + 9).to_bytes(4, "big"), wanted=False) is BlockVerdict.LATE


def test_bad_blocks_cut_off_past_max_and_count_per_peer() -> None:
    led = ledger(max_bad_blocks=4)
    led.add_bad_blocks("p", 3)
    led.add_bad_blocks("q", 4)
    led.add_bad_blocks("p", 0)
    led.add_bad_blocks("p", 1)
    with pytest.raises(TooManyBadBlocks, match="5 blocks matched no CID we asked for"):
        led.add_bad_blocks("p", 1)


def test_forget_restarts_the_bad_block_count_but_keeps_the_ban() -> None:
    led = ledger(max_bad_blocks=0)
    with pytest.raises(TooManyBadBlocks):
        led.add_bad_blocks("p", 1)
    led.ban("p", now=0.0)
    led.forget("p")
    assert led.is_banned("p", 1.0)
    with pytest.raises(TooManyBadBlocks, match="^1 blocks"):
        led.add_bad_blocks("p", 1)
