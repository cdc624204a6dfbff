"""``ResizeGate``: LMDB read transactions share the map; a map resize has it
alone (py-lmdb's ``set_mapsize`` invalidates every open transaction).

Imports the standard library."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class ResizeGate:
    """Read transactions share the map; a resize has it alone.

    Writer-preferring: once a resize waits, new readers wait behind it.
    Reentrant for readers on one thread (a nested read never deadlocks
    against a waiting resize); a resize from a thread inside a read raises.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._resizing = False
        self._local = threading.local()

    @contextmanager
    def shared(self) -> Iterator[None]:
        depth = getattr(self._local, "depth", 0)
        if depth == 0:
            with self._cond:
                while self._resizing:
                    self._cond.wait()
                self._readers += 1
        self._local.depth = depth + 1
        try:
            yield
        finally:
            self._local.depth = depth
            if depth == 0:
                with self._cond:
                    self._readers -= 1
                    if self._readers == 0:
                        self._cond.notify_all()

    def held(self) -> bool:
        """True if this thread is inside a read transaction."""
        return getattr(self._local, "depth", 0) > 0

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        if self.held():
            raise RuntimeError(
                "cannot resize the LMDB map from inside a read transaction "
                "(write from inside read(fn)?)"
            )
        with self._cond:
            while self._resizing:
                self._cond.wait()
            self._resizing = True
            while self._readers:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._resizing = False
                self._cond.notify_all()
