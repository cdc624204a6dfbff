"""Hostile-input generators and the fuzz driver shared by the hostile-input campaigns.

Inputs come from Hypothesis (seeded, no example database): raw random bytes,
and valid encodings from a seed corpus with a few structural mutations each
(byte flips, inserts, deletes, truncation, duplicated spans, varint-shaped
junk). Mutating valid inputs reaches deep into a parser; pure random bytes
mostly test its first check.

``run_fuzz`` feeds every input to a parser and accepts exactly two outcomes:
a value, or one of the parser's documented errors carrying a message. Any
other exception fails the test (Hypothesis shrinks it to a small input).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from tests.support.campaign import pick, record, seed

#: byte strings parsers treat specially: overlong and maximal varints, huge lengths
INTERESTING = (b"\xff" * 10, b"\x80" * 9 + b"\x01", b"\xff\xff\xff\xff\x0f", b"\x00",
               b"\x7f", b"\xc0\xc0", b"\x08\x96\x01", b"\x12\x20", b"\x0a\xff\xff\xff\x7f")


def mutate(base: bytes, ops: Sequence[tuple[int, int, bytes]]) -> bytes:
    """Apply structural mutations to ``base``.

    Args:
        base: a valid encoding.
        ops: ``(kind, position, bytes)`` triples; kind 0 flips a byte, 1 inserts,
            2 deletes a span, 3 truncates, 4 duplicates a span, 5 overwrites
            with an interesting byte string.
    """
    out = bytearray(base)
    for kind, pos, extra in ops:
        n = len(out)
        at = pos % (n + 1)
        if kind == 0 and n:
            out[at % n] ^= (extra[0] if extra else 0xFF) or 0x01
        elif kind == 1:
            out[at:at] = extra or b"\x00"
        elif kind == 2:
            del out[at:at + 1 + (len(extra) * 7)]
        elif kind == 3:
            del out[at:]
        elif kind == 4:
            out[at:at] = out[at:at + 1 + len(extra) * 5]
        elif kind == 5:
            junk = INTERESTING[(extra[0] if extra else pos) % len(INTERESTING)]
            out[at:at + len(junk)] = junk
    return bytes(out)


def hostile_bytes(corpus: Sequence[bytes], *, max_random: int = 600) -> st.SearchStrategy[bytes]:
    """Raw random bytes, or a corpus entry with one to six mutations."""
    ops = st.lists(st.tuples(st.integers(0, 5), st.integers(0, 1 << 20), st.binary(max_size=6)),
                   min_size=1, max_size=6)
    return st.one_of(
        st.binary(max_size=max_random),
        st.builds(mutate, st.sampled_from(list(corpus)), ops),
        st.builds(mutate, st.sampled_from(list(corpus)), ops),
        st.builds(mutate, st.sampled_from(list(corpus)), ops),
    )


def examples(quick: int = 250, full: int = 20000) -> int:
    """Inputs per parser at the current scale."""
    return pick(quick, full)


def run_fuzz(name: str, parse: Callable[[Any], Any], allowed: tuple[type[BaseException], ...],
             strategy: st.SearchStrategy[Any], n: int,
             check: Callable[[Any, Any], None] | None = None) -> Counter[str]:
    """Feed ``n`` inputs from ``strategy`` to ``parse``; record and return the counts.

    Args:
        name: row name in the ``hostile`` figures.
        parse: the parser; takes one input.
        allowed: the exception types the parser documents for bad input.
        strategy: the inputs.
        n: how many (Hypothesis ``max_examples``).
        check: optional ``check(input, value)`` run on accepted inputs (e.g. a
            round trip); it raises AssertionError on a wrong value.

    Returns:
        Counts: ``inputs``, ``rejected`` (a documented error), ``accepted``.

    Raises:
        AssertionError: an error without a message, or ``check`` failed.
        Exception: any undocumented exception ``parse`` raised.
    """
    counts: Counter[str] = Counter()

    @hypothesis_seed(seed())
    @settings(max_examples=n, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def fuzz(data: Any) -> None:
        counts["inputs"] += 1
        try:
            value = parse(data)
        except allowed as exc:
            assert str(exc).strip(), f"{type(exc).__name__} raised without a message"
            counts["rejected"] += 1
            return
        counts["accepted"] += 1
        if check is not None:
            check(data, value)

    fuzz()
    record("hostile", name, inputs=counts["inputs"], rejected=counts["rejected"],
           accepted=counts["accepted"], crashes=0, state_changes=0, live=False)
    return counts


def random_hostile(rng: random.Random, corpus: Sequence[bytes], *, max_random: int = 600) -> bytes:
    """One hostile input from a seeded ``random.Random`` (for live campaigns outside
    Hypothesis): random bytes a quarter of the time, else a corpus entry with one to
    six mutations (as ``hostile_bytes``)."""
    if rng.random() < 0.25:
        return rng.randbytes(rng.randint(0, max_random))
    ops = [(rng.randint(0, 5), rng.randint(0, 1 << 20), rng.randbytes(rng.randint(0, 6)))
           for _ in range(rng.randint(1, 6))]
    return mutate(rng.choice(list(corpus)), ops)
