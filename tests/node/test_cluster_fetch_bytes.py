"""``pin add --wait`` shows this node's own cluster fetch in bytes: while
``NodePins.pin`` runs, ``fetching_bytes`` counts the DAG bytes the walk has
reached (fetched blocks at the size they arrived with, local ones at their
stored size), and nothing once the fetch ended, failed or not.

A real LMDB store; the pinner is replaced by one that walks a fixed list of
blocks, reporting them as Bitswap's DAG walk does (``on_fetched`` just
before ``on_visit`` for a fetched block).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pinfold.blockstore.cid import RAW, make_cid
from pinfold.blockstore.lmdbstore import LmdbBlockStore
from pinfold.daemon.cluster_pins import NodePins
from pinfold.replication.transport import FetchFailed
from pinfold.replication.types import PinMode, pin_key


class WalkingPinner:
    """Reports ``local`` blocks as visited and ``fetched`` ones as fetched then
    visited, recording ``fetching_bytes`` after each; fails at the end when asked."""

    def __init__(self, pins: list[NodePins], local: list[Any], fetched: list[tuple[Any, int]],
                 fail: bool = False) -> None:
        self.pins, self.local, self.fetched, self.fail = pins, local, fetched, fail
        self.seen: list[int | None] = []

    async def pin(self, root: Any, *, on_visit: Any, on_fetched: Any, **_: Any) -> Any:
        key = pin_key(root)
        for cid in self.local:
            on_visit(cid)
            self.seen.append(self.pins[0].fetching_bytes(key))
        for cid, size in self.fetched:
            on_fetched(cid, size)
            on_visit(cid)
            self.seen.append(self.pins[0].fetching_bytes(key))
        if self.fail:
            raise RuntimeError("no peer has block X")
        return SimpleNamespace(fetched_bytes=sum(size for _, size in self.fetched))


@pytest.mark.parametrize("fail", [False, True])
async def test_a_running_cluster_fetch_reports_the_dag_bytes_it_reached(
        tmp_path: Path, fail: bool) -> None:
    local = [(make_cid(b"L" * n, RAW), b"L" * n) for n in (1000, 2000)]
    fetched = [(make_cid(b"F" * n, RAW), n) for n in (300_000, 5)]
    root = local[0][0]
    with LmdbBlockStore(tmp_path / "store", max_size_bytes=1 << 30) as store:
        store.put_many(local)
        holder: list[NodePins] = []
        pinner = WalkingPinner(holder, [c for c, _ in local], fetched, fail=fail)
        pins = NodePins(pinner, store, connected=lambda: [],  # type: ignore[arg-type]
                        capacity_bytes=lambda: 1 << 30)
        holder.append(pins)
        key = pin_key(root)
        assert pins.fetching_bytes(key) is None  # no fetch of it runs
        if fail:
            with pytest.raises(FetchFailed, match="no peer has block X"):
                await pins.pin(key, mode=PinMode.RECURSIVE, sources=[])
        else:
            assert await pins.pin(key, mode=PinMode.RECURSIVE, sources=[]) == 300_005
        assert pinner.seen == [1000, 3000, 303_000, 303_005]
        assert pins.fetching_bytes(key) is None  # ended: nothing reported
