"""Allocation (pinfold/replication/allocation.py): weighted rendezvous ranking and availability formulas."""

from __future__ import annotations

import hashlib
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pinfold.replication.allocation import (
    Candidate,
    RendezvousAllocator,
    availability,
    replicas_for_availability,
    replicas_needed,
)
from pinfold.replication.errors import InvalidPin

ALLOC = RendezvousAllocator()


def cid(i: int) -> bytes:
    return b"\x01\x55\x12\x20" + hashlib.sha256(str(i).encode()).digest()


def peers(n: int, weight: float = 1e12) -> list[Candidate]:
    return [Candidate(peer_id=f"peer-{i}", weight=weight, free_bytes=10**12) for i in range(n)]


def ids(cands: list[Candidate]) -> list[str]:
    return [c.peer_id for c in cands]


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 10**6), st.integers(1, 12), st.randoms(use_true_random=False))
def test_ranking_is_deterministic_and_independent_of_input_order(i, n, rnd) -> None:
    cands = peers(n)
    shuffled = list(cands)
    rnd.shuffle(shuffled)
    assert ids(ALLOC.rank(cid(i), cands)) == ids(ALLOC.rank(cid(i), shuffled))
    assert sorted(ids(ALLOC.rank(cid(i), cands))) == sorted(ids(cands))


def test_first_place_is_proportional_to_weight() -> None:
    cands = [Candidate(peer_id="small", weight=1.0), Candidate(peer_id="mid", weight=2.0),
             Candidate(peer_id="big", weight=5.0)]
    wins = Counter(ALLOC.rank(cid(i), cands)[0].peer_id for i in range(8000))
    # Expected shares 1/8, 2/8, 5/8 of 8000 = 1000, 2000, 5000 (binomial sd <= 45).
    assert abs(wins["small"] - 1000) < 200
    assert abs(wins["mid"] - 2000) < 250
    assert abs(wins["big"] - 5000) < 250


def test_adding_a_peer_moves_only_the_cids_it_wins() -> None:
    before = peers(8)
    after = before + [Candidate(peer_id="newcomer", weight=1e12)]
    moved = 0
    for i in range(3000):
        old, new = ids(ALLOC.rank(cid(i), before)), ids(ALLOC.rank(cid(i), after))
        assert [p for p in new if p != "newcomer"] == old  # relative order unchanged
        moved += new[0] == "newcomer"
    assert 3000 / 9 * 0.75 < moved < 3000 / 9 * 1.25


def test_equal_weights_spread_top_three_evenly() -> None:
    load = Counter(p for i in range(6000) for p in ids(ALLOC.rank(cid(i), peers(6)))[:3])
    assert max(load.values()) - min(load.values()) < 0.1 * 3000


def test_availability_target_0999_with_p_09_needs_three_holders() -> None:
    assert replicas_for_availability([0.9] * 10, 0.999, rmin=1, rmax=10) == 3
    assert replicas_needed(0.9, 0.999) == 3  # despite 1 - 0.1**3 == 0.9989999999999999
    assert availability([0.9, 0.9, 0.9]) == pytest.approx(0.999)


def test_replicas_for_availability_respects_rank_order_rmin_and_rmax() -> None:
    assert replicas_for_availability([0.99, 0.5, 0.5], 0.98, rmin=1, rmax=3) == 1
    assert replicas_for_availability([0.5, 0.99, 0.5], 0.98, rmin=1, rmax=3) == 2
    assert replicas_for_availability([0.99, 0.99], 0.9, rmin=2, rmax=3) == 2  # at least rmin
    assert replicas_for_availability([0.5] * 10, 0.999, rmin=1, rmax=4) == 4  # capped
    assert replicas_for_availability([0.5, 0.5], 0.999, rmin=1, rmax=4) == 2  # too few peers
    with pytest.raises(InvalidPin, match="target"):
        replicas_for_availability([0.9], 1.0, rmin=1, rmax=1)
    with pytest.raises(InvalidPin, match="rmin"):
        replicas_for_availability([0.9], 0.9, rmin=3, rmax=2)


@pytest.mark.parametrize(("p", "target", "k"), [
    (0.5, 0.75, 2), (0.5, 0.76, 3), (0.7, 0.99, 4), (0.99, 0.9999, 2), (1.0, 0.9, 1),
    (0.9, 0.9, 1), (0.9, 0.99, 2),
])
def test_static_formula(p: float, target: float, k: int) -> None:
    assert replicas_needed(p, target) == k
    assert 1 - (1 - p) ** k >= target - 1e-12


@settings(max_examples=200, deadline=None)
@given(st.floats(0.01, 0.999), st.floats(0.01, 0.99999))
def test_replicas_needed_is_the_smallest_k(p: float, target: float) -> None:
    k = replicas_needed(p, target)
    assert 1 - (1 - p) ** k >= target * (1 - 1e-9)
    assert k == 1 or 1 - (1 - p) ** (k - 1) < target


def test_candidate_validation() -> None:
    with pytest.raises(InvalidPin, match="weight"):
        Candidate(peer_id="p", weight=0)
    with pytest.raises(InvalidPin, match="p:"):
        Candidate(peer_id="p", weight=1, p=1.5)
    with pytest.raises(InvalidPin, match="free_bytes"):
        Candidate(peer_id="p", weight=1, free_bytes=-1)
    rnd = random.Random(0)
    a = Candidate(peer_id="p", weight=rnd.random() + 1)
    assert a.seed == Candidate(peer_id="p", weight=3).seed  # seed depends on the ID only


def test_unreachable_availability_gives_best_value_and_needed_k() -> None:
    from pinfold.replication.allocation import unreachable_availability

    assert unreachable_availability([0.9, 0.9], 0.99) is None
    why = unreachable_availability([0.9, 0.9], 0.9999)
    assert why is not None and "reaches 0.990000" in why and "k=4 copies" in why
    # rmax caps the placement: 3 members could reach 0.999, 2 copies cannot.
    assert unreachable_availability([0.9, 0.9, 0.9], 0.999) is None
    why = unreachable_availability([0.9, 0.9, 0.9], 0.999, rmax=2)
    assert why is not None and "at most rmax=2" in why and "k=3" in why
    assert "never online" in unreachable_availability([0.0], 0.5)
    assert unreachable_availability([], 0.5) is not None
