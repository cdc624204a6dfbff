"""Wait for a condition with a deadline: the one polling helper of the suite,
in a blocking flavour (``wait_until``: threads, subprocesses, daemons) and a
trio flavour (``wait_until_trio``: in-process hosts and managers, real or
autojump clock). Both fail with a message naming what was awaited. Imports
only trio.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import trio

T = TypeVar("T")


class GiveUp(Exception):
    """Raised by a ``wait_until`` predicate when waiting longer cannot help (re-raised at once)."""


def wait_until(predicate: Callable[[], T], *, timeout_s: float = 30.0, interval_s: float = 0.05,
               what: str = "condition", retry_errors: bool = True) -> T:
    """Poll ``predicate`` every ``interval_s`` until it returns a truthy value, and return it.

    After ``timeout_s`` seconds: ``TimeoutError`` naming ``what`` (and the last
    error). With ``retry_errors`` an exception from the predicate counts as
    "not yet" (a daemon still starting); without, it propagates. A ``GiveUp``
    always ends the wait at once.
    """
    deadline = time.monotonic() + timeout_s
    last_exc: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except GiveUp:
            raise
        except Exception as exc:
            if not retry_errors:
                raise
            last_exc = exc
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}"
                               + (f" (last error: {last_exc})" if last_exc else ""))
        time.sleep(interval_s)


async def wait_until_trio(predicate: Callable[[], object], *, timeout_s: float = 10.0,
                          interval_s: float = 0.01, what: str = "condition") -> None:
    """Poll ``predicate`` every ``interval_s`` of trio time until it is truthy.

    After ``timeout_s`` seconds of trio time: ``AssertionError`` naming ``what``.
    """
    with trio.move_on_after(timeout_s):
        while not predicate():
            await trio.sleep(interval_s)
        return
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
