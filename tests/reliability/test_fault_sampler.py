"""The fault campaign's sampler (``tests/support/fault_campaign.Campaign.sample``)
against scripted node answers: it must not report a handover between two
holders as a drop below rmin, and must still report a real one. Pure logic: the
nodes' ``pin ls`` answers are a script, no daemon runs."""

from __future__ import annotations

import random
from collections.abc import Callable

from tests.support.fault_campaign import Campaign

PIN = "bafkreipin"


class ScriptedCampaign(Campaign):
    """A campaign whose node reads come from ``answer(node, read number)``."""

    def __init__(self, answer: Callable[[int, int], frozenset[str] | None]) -> None:
        super().__init__(net=None, nodes=[], ids=[], rng=random.Random(0))  # type: ignore[arg-type]
        self.answer = answer
        self.reads: list[int] = []
        self.on_read: Callable[[int], None] | None = None

    def pinned_on(self, i: int) -> frozenset[str] | None:
        self.reads.append(i)
        if self.on_read is not None:
            self.on_read(i)
        return self.answer(i, len(self.reads))


def test_a_handover_read_half_before_and_half_after_keeps_both_copies() -> None:
    # Node 1 pins the copy after its first read; node 4 releases it before its
    # first read (it saw node 1's pin). Node 2 holds it throughout.
    def answer(i: int, n: int) -> frozenset[str]:
        held = {2} | ({1} if n > 2 else set())  # node 1 is read 2nd: it pins after
        return frozenset({PIN}) if i in held else frozenset()

    one_pass = ScriptedCampaign(answer).sample()
    assert one_pass.holders(PIN) == 1  # what a single pass reports
    both = ScriptedCampaign(answer).sample(both_ways=True)
    assert both.complete and both.holders(PIN) == 2


def test_a_real_drop_below_rmin_is_seen_in_both_passes() -> None:
    c = ScriptedCampaign(lambda i, n: frozenset({PIN}) if i == 2 else frozenset())
    s = c.sample(both_ways=True)
    assert c.reads == [0, 1, 2, 3, 4, 4, 3, 2, 1, 0]
    assert s.complete and s.holders(PIN) == 1


def test_a_node_that_came_back_during_the_sample_makes_it_incomplete() -> None:
    c = ScriptedCampaign(lambda i, n: frozenset({PIN}) if i == 2 else frozenset())
    c.down = {4}

    def restart_done(i: int) -> None:
        if i == 3:
            c.down.discard(4)  # node 4 is back, but this sample did not read it
    c.on_read = restart_done
    s = c.sample(both_ways=True)
    assert 4 not in c.reads
    assert not s.complete  # so it is left out of the episodes below rmin


def test_a_node_killed_during_the_sample_does_not_count_as_up() -> None:
    c = ScriptedCampaign(lambda i, n: frozenset({PIN}))

    def kill(i: int) -> None:
        if i == 4:
            c.down.add(0)
    c.on_read = kill
    s = c.sample()
    assert s.complete and 0 not in s.up and s.holders(PIN) == 4
