"""Random put / pin / unpin / protect / release / gc / delete / reopen sequences against a model.

The model is a set of present blocks, a dict of pins (root -> the blocks it
holds, and who holds it how: local and cluster holds, never weakened) and a
list of live protections. After every step the store must agree
with it: the same blocks, reference counts equal to the number of pins holding
each block, a consistent recount, and GC freeing exactly the blocks that are
present, unreferenced and unprotected.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from pinfold.blockstore.cid import cid_key
from pinfold.blockstore.errors import NotPinned, PinError
from pinfold.blockstore.lmdbstore import LmdbBlockStore
from pinfold.blockstore.memory import MemoryBlockStore
from pinfold.blockstore.pins import Protection

from tests.support.blockstore_conformance import block

N_BLOCKS = 10
BLOCKS = [block(i, size=10 + 37 * i) for i in range(N_BLOCKS)]
CIDS = [c for c, _ in BLOCKS]
ids = st.integers(0, N_BLOCKS - 1)
id_sets = st.frozensets(ids, max_size=5)
owners = st.sampled_from(("local", "cluster"))


class StoreMachine(RuleBasedStateMachine):
    """Drives one store; subclasses say which."""

    def __init__(self) -> None:
        super().__init__()
        self.store = self.open()
        self.present: set[int] = set()
        self.pins: dict[int, frozenset[int]] = {}
        self.holds: dict[int, dict[str, str]] = {}
        self.guards: list[tuple[Protection, frozenset[int]]] = []

    def open(self):  # pragma: no cover - overridden
        raise NotImplementedError

    def teardown(self) -> None:
        self.store.close()

    def protected(self) -> set[int]:
        return {i for _, held in self.guards for i in held}

    def referenced(self) -> set[int]:
        return {i for held in self.pins.values() for i in held}

    @rule(which=id_sets)
    def put(self, which: frozenset[int]) -> None:
        new = sum(len(BLOCKS[i][1]) for i in which - self.present)
        assert self.store.put_many([BLOCKS[i] for i in sorted(which)]) == new
        self.present |= which

    @rule(i=ids)
    def delete(self, i: int) -> None:
        assert self.store.delete(CIDS[i]) is (i in self.present)
        self.present.discard(i)

    @rule(root=ids, others=id_sets, recursive=st.booleans(), name=st.text(max_size=5),
          owner=owners)
    def pin(self, root: int, others: frozenset[int], recursive: bool, name: str,
            owner: str) -> None:
        held = frozenset({root} | others) if recursive else frozenset({root})
        blocks = [CIDS[i] for i in sorted(others)] if recursive else []
        holds = self.holds.get(root, {})
        if holds.get(owner) == "recursive" and not recursive:
            # never silently weakened: refused, nothing changes
            with pytest.raises(PinError, match="already pinned recursively"):
                self.store.pin_add(CIDS[root], recursive=False, owner=owner)
            return
        after = {**holds, owner: "recursive" if recursive else "direct"}
        if not recursive and "recursive" in after.values():
            held = self.pins[root]  # a direct hold beside a recursive one: the DAG stays
        elif not held <= self.present:
            with pytest.raises(PinError):
                self.store.pin_add(CIDS[root], recursive=recursive, blocks=blocks, owner=owner)
            return
        rec = self.store.pin_add(CIDS[root], recursive=recursive, blocks=blocks, name=name,
                                 owner=owner)
        self.holds[root] = after
        self.pins[root] = held
        assert dict(rec.holds) == after and rec.blocks == len(held)
        assert rec.mode == ("recursive" if "recursive" in after.values() else "direct")

    @rule(root=ids, owner=owners)
    def unpin(self, root: int, owner: str) -> None:
        holds = self.holds.get(root, {})
        if owner in holds:
            assert self.store.pin_rm(CIDS[root], owner=owner).cid == CIDS[root]
            left = {o: m for o, m in holds.items() if o != owner}
            if not left:
                del self.pins[root], self.holds[root]
            else:
                self.holds[root] = left
                if "recursive" not in left.values():
                    self.pins[root] = frozenset({root})
        else:
            with pytest.raises(NotPinned):
                self.store.pin_rm(CIDS[root], owner=owner)

    @rule(which=id_sets)
    def protect(self, which: frozenset[int]) -> None:
        guard = self.store.protect()
        for i in which:
            guard.add(CIDS[i])
        self.guards.append((guard, which))

    @precondition(lambda self: self.guards)
    @rule(k=st.integers(0, 100))
    def release(self, k: int) -> None:
        guard, _ = self.guards.pop(k % len(self.guards))
        guard.release()

    @rule(batch=st.integers(1, 4))
    def gc(self, batch: int) -> None:
        doomed = self.present - self.referenced() - self.protected()
        result = self.store.gc(batch=batch)
        assert result.blocks_freed == len(doomed)
        assert result.bytes_freed == sum(len(BLOCKS[i][1]) for i in doomed)
        self.present -= doomed

    @invariant()
    def same_blocks(self) -> None:
        assert set(self.store.iter_keys()) == {cid_key(CIDS[i]) for i in self.present}
        st_ = self.store.stat()
        assert st_.blocks == len(self.present)
        assert st_.bytes == sum(len(BLOCKS[i][1]) for i in self.present)

    @invariant()
    def refcounts_match(self) -> None:
        for i in range(N_BLOCKS):
            expected = sum(i in held for held in self.pins.values())
            assert self.store.refcount(CIDS[i]) == expected
        assert self.store.check_refcounts() == {}
        assert {r.cid for r in self.store.pin_ls()} == {CIDS[i] for i in self.pins}

    @invariant()
    def presence_is_true(self) -> None:
        """A pin is complete only when every block it holds is present (pin status)."""
        for root, held in self.pins.items():
            want = (len(held & self.present), len(held))
            assert self.store.pin_presence(CIDS[root]) == want
        incomplete = {r.cid for r, _ in self.store.incomplete_pins()}
        assert incomplete == {CIDS[r] for r, held in self.pins.items() if not held <= self.present}


class MemoryMachine(StoreMachine):
    def open(self) -> MemoryBlockStore:
        return MemoryBlockStore()


class LmdbMachine(StoreMachine):
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="pinfold-sm-"))
        super().__init__()

    def open(self) -> LmdbBlockStore:
        return LmdbBlockStore(
            self.dir, max_size_bytes=64 * 1024 * 1024, initial_map_bytes=64 * 1024, sync=False
        )

    @rule()
    def reopen(self) -> None:
        """Closing and reopening keeps blocks, pins and counts; protections end with the store."""
        self.store.close()
        self.store = self.open()
        self.guards.clear()

    def teardown(self) -> None:
        super().teardown()
        shutil.rmtree(self.dir, ignore_errors=True)


_settings = settings(
    deadline=None,
    stateful_step_count=30,
    suppress_health_check=[HealthCheck.too_slow],
)

TestMemoryStoreMachine = MemoryMachine.TestCase
TestMemoryStoreMachine.settings = settings(_settings, max_examples=60)
TestLmdbStoreMachine = LmdbMachine.TestCase
TestLmdbStoreMachine.settings = settings(_settings, max_examples=40)
