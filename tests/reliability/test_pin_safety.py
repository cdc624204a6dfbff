"""No pin transition loses a pinned block: random pin / unpin / add / gc sequences
on the real LMDB store.

The files are real UnixFS DAGs (small chunks and fan-out, so a file is a few
levels deep) cut from a shared set of chunks, so different files share leaves.
Each step adds a file's blocks (unpinned, or pinned as ``pinfold add`` does),
pins or unpins a root for one of the two owners (a user's local pin, the
cluster's hold) recursively or directly, runs GC, or reopens the store. The
model tracks who holds each root and how; after every step:

- every block of every DAG that a recursive hold covers is in the store and
  reads back as the bytes it was imported from, and every directly held root
  block too (the property of issue 13, item 1);
- each pin's mode is the strongest of its holds: a direct pin never silently
  replaces a recursive one (it is refused for the same owner, recorded beside
  it for the other), and releasing one owner's hold never drops blocks the
  other's still covers;
- reference counts agree with a recount.

``make test`` runs a fixed set of sequences (Hypothesis ``derandomize``);
``make reliability`` (``PINFOLD_RELIABILITY=full``) runs many random ones.
"""

from __future__ import annotations

import random
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from pinfold.blockstore import unixfs
from pinfold.blockstore.cid import CID, cid_key
from pinfold.blockstore.errors import NotPinned, PinError
from pinfold.blockstore.lmdbstore import LmdbBlockStore

from tests.support.campaign import full_scale, pick, record

_PARAMS = unixfs.ImportParams(chunk_size=256, cid_version=1, raw_leaves=True, max_links=3)
_rng = random.Random(13)
_CHUNKS = [_rng.randbytes(256) for _ in range(6)]


def _file(seq: list[int], tail: int) -> bytes:
    return b"".join(_CHUNKS[i] for i in seq) + _rng.randbytes(tail)


#: Files of 1..12 chunks drawn from 6 shared chunks (shared leaves), some with a tail.
_DATA = [_file([_rng.randrange(6) for _ in range(_rng.randint(1, 12))],
               _rng.choice((0, 0, 17))) for _ in range(5)]


class _Dag:
    def __init__(self, data: bytes) -> None:
        blocks, self.root, _ = unixfs.import_bytes(data, _PARAMS)
        self.blocks: dict[bytes, tuple[CID, bytes]] = {cid_key(c): (c, d) for c, d in blocks}
        self.cids = [c for c, _ in blocks]


DAGS = [_Dag(d) for d in _DATA]
files = st.integers(0, len(DAGS) - 1)
owners = st.sampled_from(("local", "cluster"))
_stats = {"sequences": 0, "steps": 0, "gc_runs": 0, "refused_weakenings": 0}


class PinSafety(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="pinfold-pins-"))
        self.store = self._open()
        # root key -> {owner: "recursive" | "direct"}
        self.holds: dict[bytes, dict[str, str]] = {}
        _stats["sequences"] += 1

    def _open(self) -> LmdbBlockStore:
        return LmdbBlockStore(self.dir, max_size_bytes=64 * 1024 * 1024,
                              initial_map_bytes=256 * 1024, sync=False)

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _has_dag(self, dag: _Dag) -> bool:
        return all(self.store.has(c) for c in dag.cids)

    def _step(self) -> None:
        _stats["steps"] += 1

    @rule(f=files, pin=st.booleans())
    def add(self, f: int, pin: bool) -> None:
        """``pinfold add`` (pinning by default as Kubo does) or ``add --pin=false``."""
        self._step()
        dag = DAGS[f]
        self.store.put_many([(c, d) for c, d in dag.blocks.values()])
        if pin:
            self.pin(f, True, "local")

    @rule(f=files, recursive=st.booleans(), owner=owners)
    def pin(self, f: int, recursive: bool, owner: str) -> None:
        self._step()
        dag = DAGS[f]
        key = cid_key(dag.root)
        holds = self.holds.get(key, {})
        blocks = dag.cids if recursive else []
        if holds.get(owner) == "recursive" and not recursive:
            with pytest.raises(PinError, match="already pinned recursively"):
                self.store.pin_add(dag.root, recursive=False, owner=owner)
            _stats["refused_weakenings"] += 1
            return
        beside_recursive = not recursive and "recursive" in holds.values()
        complete = self._has_dag(dag) if recursive else self.store.has(dag.root)
        if not complete and not beside_recursive:
            with pytest.raises(PinError):
                self.store.pin_add(dag.root, recursive=recursive, blocks=blocks, owner=owner)
            return
        self.store.pin_add(dag.root, recursive=recursive, blocks=blocks, owner=owner)
        self.holds[key] = {**holds, owner: "recursive" if recursive else "direct"}

    @rule(f=files, owner=owners)
    def unpin(self, f: int, owner: str) -> None:
        self._step()
        key = cid_key(DAGS[f].root)
        holds = self.holds.get(key, {})
        if owner not in holds:
            with pytest.raises(NotPinned):
                self.store.pin_rm(DAGS[f].root, owner=owner)
            return
        self.store.pin_rm(DAGS[f].root, owner=owner)
        left = {o: m for o, m in holds.items() if o != owner}
        if left:
            self.holds[key] = left
        else:
            del self.holds[key]

    @rule()
    def gc(self) -> None:
        self._step()
        _stats["gc_runs"] += 1
        self.store.gc(batch=3)

    @rule()
    def reopen(self) -> None:
        self._step()
        self.store.close()
        self.store = self._open()

    @invariant()
    def pinned_blocks_are_all_there(self) -> None:
        for dag in DAGS:
            holds = self.holds.get(cid_key(dag.root), {})
            if "recursive" in holds.values():
                for cid, data in dag.blocks.values():
                    assert self.store.get(cid) == data, f"block {cid} of pinned {dag.root} lost"
            elif holds:
                assert self.store.get(dag.root) == dag.blocks[cid_key(dag.root)][1]

    @invariant()
    def pins_match_their_holds(self) -> None:
        records = {cid_key(r.cid): r for r in self.store.pin_ls()}
        assert set(records) == set(self.holds)
        for key, holds in self.holds.items():
            rec = records[key]
            assert dict(rec.holds) == holds
            assert rec.mode == ("recursive" if "recursive" in holds.values() else "direct")
            assert self.store.pin_presence(rec.cid) == (rec.blocks, rec.blocks)
        assert self.store.check_refcounts() == {}


def test_no_pin_transition_loses_a_pinned_block() -> None:
    """Random pin/unpin/add/gc sequences never lose a block a recursive pin covers."""
    before = dict(_stats)
    run_state_machine_as_test(PinSafety, settings=settings(
        max_examples=pick(100, 3000), stateful_step_count=pick(30, 60), deadline=None,
        derandomize=not full_scale(), database=None,
        suppress_health_check=[HealthCheck.too_slow]))
    figures = {k: v - before[k] for k, v in _stats.items()}
    assert figures["gc_runs"] > 0 and figures["refused_weakenings"] > 0
    record("pins", "pin/unpin/add/gc sequences (LMDB)", **figures, blocks_lost=0)
