"""Deterministic allocation: which peers should hold a CID (DESIGN.md "Replication").

Weighted rendezvous hashing (highest random weight, Thaler & Ravishankar 1998;
the weighted form of Schindelhauer & Schomaker 2005): for a CID and a peer with
weight w (its capacity in bytes), draw u in (0, 1) from a hash of (CID, peer)
and score the peer ``-w / ln(u)``. Sorting peers by score, highest first,
gives the CID's *ranking*. Properties:

- every node with the same peer list computes the same ranking, so no
  allocation messages are needed;
- a peer is first for a fraction of CIDs proportional to its weight;
- adding or removing a peer moves only the CIDs it wins or held (minimal
  disruption).

Room: the planner skips peers whose free space is below the pin's
``size_bytes`` when it *adds* holders; a peer that already holds the DAG keeps
its place in the ranking (it needs no more room).

The hash: u comes from ``splitmix64(H(cid) xor H(peer))`` where H is
BLAKE2b-64; the CID hash is computed once per CID and the peer hashes once per
peer, so ranking n peers costs n integer mixes and logarithms.

Availability formulas (ANCHORS.md 7): with independent peers online with
probability p_i, a CID held by a set S is available with probability
``P_a = 1 - prod_{i in S} (1 - p_i)``; with equal p that is ``1 - (1 - p)^k``
and the k needed for a target is ``ceil(ln(1 - P_a) / ln(1 - p))``.

Pure.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from pinfold.replication.errors import InvalidPin
from pinfold.replication.types import check_peer_id

__all__ = [
    "Allocator",
    "Candidate",
    "RendezvousAllocator",
    "availability",
    "cid_hash64",
    "mix64",
    "peer_seed",
    "rendezvous_score",
    "replicas_for_availability",
    "replicas_needed",
    "unreachable_availability",
]

_MASK64: Final = (1 << 64) - 1
_TWO_M53: Final = 2.0**-53
#: Relative slack when comparing an availability with its target, so that
#: 1 - 0.1**3 (= 0.9989999999999999 in floating point) meets a 0.999 target.
_EPS: Final = 1e-9


def mix64(x: int) -> int:
    """The splitmix64 finalizer: a bijective 64-bit mix with full avalanche."""
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & _MASK64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def cid_hash64(cid: bytes) -> int:
    """64-bit hash of a pin key for ranking (BLAKE2b, personalised)."""
    return int.from_bytes(hashlib.blake2b(cid, digest_size=8, person=b"pinfold-rank").digest(),
                          "big")


_SEED_CACHE: dict[str, int] = {}


def peer_seed(peer_id: str) -> int:
    """64-bit hash of a peer ID for ranking (memoised: peers are few, plans many)."""
    seed = _SEED_CACHE.get(peer_id)
    if seed is None:
        if len(_SEED_CACHE) > 65536:
            _SEED_CACHE.clear()
        seed = int.from_bytes(
            hashlib.blake2b(peer_id.encode(), digest_size=8, person=b"pinfold-peer").digest(),
            "big",
        )
        _SEED_CACHE[peer_id] = seed
    return seed


def rendezvous_score(cid_h: int, seed: int, weight: float) -> float:
    """The weighted rendezvous score ``-weight / ln(u)`` of one (CID, peer) pair.

    Args:
        cid_h: ``cid_hash64(cid)``.
        seed: ``peer_seed(peer_id)``.
        weight: the peer's weight (capacity, bytes), > 0.

    Returns:
        A positive score; higher ranks first.
    """
    u = ((mix64(cid_h ^ seed) >> 11) + 0.5) * _TWO_M53  # uniform in (0, 1)
    return -weight / math.log(u)


@dataclass(frozen=True, slots=True, kw_only=True)
class Candidate:
    """A peer that may hold pins, as the planner sees it at one moment.

    Attributes:
        peer_id: the peer.
        weight: allocation weight, its capacity in bytes (> 0).
        free_bytes: free space, bytes; pins larger than this are not allocated to it.
        p: estimated availability in [0, 1].
        seed: ``peer_seed(peer_id)``, computed.

    Raises:
        InvalidPin: weight <= 0, negative free space or p outside [0, 1].
    """

    peer_id: str
    weight: float
    free_bytes: int = 0
    p: float = 1.0
    seed: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_peer_id(self.peer_id)
        if not (isinstance(self.weight, int | float) and math.isfinite(self.weight)
                and self.weight > 0):
            raise InvalidPin(f"weight: must be > 0, got {self.weight!r}")
        if type(self.free_bytes) is not int or self.free_bytes < 0:
            raise InvalidPin(f"free_bytes: must be an integer >= 0, got {self.free_bytes!r}")
        if not (isinstance(self.p, int | float) and 0.0 <= self.p <= 1.0):
            raise InvalidPin(f"p: must be in [0, 1], got {self.p!r}")
        object.__setattr__(self, "seed", peer_seed(self.peer_id))


class Allocator(Protocol):
    """Ranks candidate peers for a CID; decides nothing else (STYLE.md 3)."""

    def rank(self, cid: bytes, candidates: Sequence[Candidate]) -> list[Candidate]:
        """``candidates`` ordered best first for ``cid``; the same on every node."""
        ...


class RendezvousAllocator:
    """Weighted rendezvous hashing (module docstring)."""

    def rank(self, cid: bytes, candidates: Sequence[Candidate]) -> list[Candidate]:
        """``candidates`` ordered by descending score for ``cid`` (ties: peer ID)."""
        h = cid_hash64(cid)
        log = math.log
        keyed = []
        for c in candidates:
            # rendezvous_score(h, c.seed, c.weight), inlined: this runs per CID and peer.
            x = h ^ c.seed
            x ^= x >> 30
            x = (x * 0xBF58476D1CE4E5B9) & _MASK64
            x ^= x >> 27
            x = (x * 0x94D049BB133111EB) & _MASK64
            x ^= x >> 31
            keyed.append((c.weight / log(((x >> 11) + 0.5) * _TWO_M53), c.peer_id, c))
        keyed.sort(key=_rank_key)
        return [k[2] for k in keyed]


def _rank_key(k: tuple[float, str, Candidate]) -> tuple[float, str]:
    # k[0] is -score (w / ln(u) with ln(u) < 0), so ascending order is best first.
    return k[0], k[1]


# ------------------------------------------------------------------- formulas


def availability(ps: Iterable[float]) -> float:
    """``1 - prod(1 - p_i)``: the probability that at least one holder is online.

    Args:
        ps: each holder's availability in [0, 1].
    """
    miss = 1.0
    for p in ps:
        miss *= 1.0 - p
    return 1.0 - miss


def _meets(miss: float, target: float) -> bool:
    return miss <= (1.0 - target) * (1.0 + _EPS)


def replicas_for_availability(p_list: Sequence[float], target: float, rmin: int,
                              rmax: int) -> int:
    """How many peers, taken in rank order, reach ``target`` availability.

    Takes peers in the order given until ``1 - prod(1 - p_i) >= target`` and at
    least ``rmin`` are taken, never more than ``rmax``.

    Args:
        p_list: the ranked peers' availabilities, best-ranked first.
        target: target P_a in (0, 1).
        rmin: at least this many (>= 1).
        rmax: at most this many (>= rmin).

    Returns:
        The count, between ``min(rmin, len(p_list))`` and ``min(rmax, len(p_list))``;
        less than needed when the peers cannot reach the target.

    Raises:
        InvalidPin: target outside (0, 1) or bad rmin/rmax.
    """
    if not 0.0 < target < 1.0:
        raise InvalidPin(f"target: must be in (0, 1), got {target!r}")
    if not 1 <= rmin <= rmax:
        raise InvalidPin(f"rmin/rmax: need 1 <= rmin <= rmax, got {rmin}, {rmax}")
    miss = 1.0
    n = 0
    for p in p_list:
        if n >= rmax:
            break
        miss *= 1.0 - p
        n += 1
        if n >= rmin and _meets(miss, target):
            break
    return n


def replicas_needed(p: float, target: float) -> int:
    """The static formula ``k = ceil(ln(1 - P_a) / ln(1 - p))`` for equal peers.

    Args:
        p: each peer's availability in (0, 1].
        target: target P_a in (0, 1).

    Returns:
        The smallest k with ``1 - (1 - p)^k >= target`` (1 when p is 1).

    Raises:
        InvalidPin: p outside (0, 1] or target outside (0, 1).
    """
    if not 0.0 < p <= 1.0:
        raise InvalidPin(f"p: must be in (0, 1], got {p!r}")
    if not 0.0 < target < 1.0:
        raise InvalidPin(f"target: must be in (0, 1), got {target!r}")
    if p == 1.0:
        return 1
    k = max(1, math.ceil(math.log(1.0 - target) / math.log(1.0 - p) - _EPS))
    # Guard the floating-point edge either way.
    while k > 1 and _meets((1.0 - p) ** (k - 1), target):
        k -= 1
    while not _meets((1.0 - p) ** k, target):
        k += 1
    return k


def unreachable_availability(p_members: Sequence[float], target: float,
                             rmax: int | None = None) -> str | None:
    """Why no placement on these members can reach ``target``, or None when one can.

    The best placement holds a copy on each of the ``min(rmax, n)`` members
    with the highest availability estimates; if even that misses the target,
    the reason says what it reaches and how many copies the target needs at
    the members' mean availability (``replicas_needed``).

    Args:
        p_members: each current member's availability estimate in [0, 1].
        target: target P_a in (0, 1).
        rmax: at most this many copies (None: one on every member).

    Returns:
        One sentence for the user, or None.
    """
    ps = sorted(p_members, reverse=True)
    cap = len(ps) if rmax is None else min(rmax, len(ps))
    best = ps[:cap]
    miss = 1.0
    for p in best:
        miss *= 1.0 - p
    if best and _meets(miss, target):
        return None
    reach = f"reaches {1.0 - miss:.6f}" if best else "reaches nothing"
    where = f"{len(ps)} current member(s)" + (
        f" with at most rmax={rmax} copies" if rmax is not None and rmax < len(ps) else "")
    mean = sum(ps) / len(ps) if ps else 0.0
    if 0.0 < mean <= 1.0:
        k = replicas_needed(mean, target)
        need = (f"{target} would need k={k} copies on members like these "
                f"(mean availability {mean:.4f})")
    else:
        need = f"{target} cannot be reached by members that are never online"
    return (f"availability {target} cannot be reached: the best placement on the {where} "
            f"({len(best)} copies) {reach}; {need}")
