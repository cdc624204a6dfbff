"""The manager's handling of a plan: each action to the part that carries it out,
and each planned pin's health record and origin copy brought up to date.

``plan_cids`` returns ``PinAction``/``UnpinAction`` for this node's share
(``pinqueue.py`` carries them out), ``ExpireAction`` (a tombstone written
here) and ``ReportAction`` (a warning logged when it is new). After a chunk
is planned, ``Accounting.assess`` records each pin's health and repair timing,
and ``policy.origin_copy`` decides whether an origin copy kept here is adopted
as this node's holding or released. When to plan is the manager's
(``Manager._plan_loop``). Mixed into ``Manager`` (manager.py): it uses the
manager's state.
"""

from __future__ import annotations

import logging
from typing import Any

from pinfold.replication.accounting import UNDER, report_lines
from pinfold.replication.errors import PinNotFound
from pinfold.replication.planner import PlanContext, plan_cids
from pinfold.replication.policy import OriginCopy, origin_copy
from pinfold.replication.types import (
    ExpireAction,
    PinAction,
    PinState,
    ReportAction,
    UnpinAction,
    cid_text,
)

__all__ = ["PlanActions"]

log = logging.getLogger("pinfold.replication")


class PlanActions:
    """Carrying out a planned chunk and assessing its pins (a ``Manager`` part)."""

    def _plan_chunk(self, cids: list[bytes]) -> list[Any]:
        now = self.now()
        ctx = PlanContext(self.health, now, current=self._current, keep_states=True)
        actions = plan_cids(cids, self.pinset, self.holdings, self.health, self.policy, now,
                            context=ctx)
        seen = ctx.seen or {}
        fresh: list[ReportAction] = []
        c = self._acct.counters
        c.plans += 1
        c.planned_cids += len(cids)
        for a in actions:
            seen.pop(a.cid, None)  # carrying it out may change the CID's states
            if isinstance(a, PinAction):
                self._on_pin_action(a)
            elif isinstance(a, UnpinAction):
                self._on_unpin_action(a, now)
            elif isinstance(a, ExpireAction):
                self._on_expire(a.cid)
            elif isinstance(a, ReportAction):
                if self._reports.get(a.cid) != a:
                    fresh.append(a)
                self._reports[a.cid] = a
        for line in report_lines(fresh):
            log.warning("%s", line)
        for cid in cids:
            self._assess(cid, ctx, now, seen.pop(cid, None))
        self._acct.invalidate()
        return actions

    def _assess(self, cid: bytes, ctx: PlanContext, now: float,
                states: dict[str, PinState] | None) -> None:
        """Update the pin's health record, repair timing and origin copy after planning it
        (``states``: its holders' states if known to be current, else None)."""
        pin = self.pinset.pin(cid)
        rec = self.local.get(cid)
        if pin is None or pin.expired(now):
            self._acct.forget(cid)
            self._acct.repair_forget(cid)
            self._reports.pop(cid, None)
            if rec is not None and rec.staged:
                self._release_stage(cid)
            if pin is None and rec is not None and self.own.get(cid) is PinState.REMOTE:
                self.local.pop(cid, None)
                self._persist_local(cid)
            return
        if states is None:
            states = self.holdings.states(cid)
        code, healthy = self._acct.assess(cid, pin, states, ctx.status, ctx.p, now)
        if code & 3 != UNDER:
            self._reports.pop(cid, None)
        if rec is None or not rec.staged:
            return
        todo = origin_copy(healthy=healthy, rmin=pin.rmin, state=self.own.get(cid))
        if todo is OriginCopy.ADOPT:
            rec.staged = False
            self._persist_local(cid)
        elif todo is OriginCopy.RELEASE:
            self._release_stage(cid)

    def _on_expire(self, cid: bytes) -> None:
        try:
            self._write(pin=None, cid=cid)
            log.info("pin %s expired; wrote its tombstone", cid_text(cid))
        except PinNotFound:
            pass
