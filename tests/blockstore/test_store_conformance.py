"""The conformance suites of ``tests/support/blockstore_conformance.py`` against both stores."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from pinfold.blockstore.lmdbstore import LmdbBlockStore
from pinfold.blockstore.memory import MemoryBlockStore

from tests.support.blockstore_conformance import check_blockstore, check_pinned_store

MiB = 1024 * 1024


def _memory() -> MemoryBlockStore:
    return MemoryBlockStore()


def _lmdb_factory(tmp_path: Path, *, sync: bool):
    counter = itertools.count()

    def make() -> LmdbBlockStore:
        # a small initial map, so the suites also exercise map growth
        return LmdbBlockStore(
            tmp_path / f"store{next(counter)}",
            max_size_bytes=256 * MiB,
            initial_map_bytes=1 * MiB,
            sync=sync,
        )

    return make


def test_memory_store_conforms() -> None:
    check_blockstore(_memory)


def test_memory_store_pins_conform() -> None:
    check_pinned_store(_memory)


@pytest.mark.parametrize("sync", [True, False], ids=["sync", "nosync"])
def test_lmdb_store_conforms(tmp_path: Path, sync: bool) -> None:
    check_blockstore(_lmdb_factory(tmp_path, sync=sync))


@pytest.mark.parametrize("sync", [True, False], ids=["sync", "nosync"])
def test_lmdb_store_pins_conform(tmp_path: Path, sync: bool) -> None:
    check_pinned_store(_lmdb_factory(tmp_path, sync=sync))
