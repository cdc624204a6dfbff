"""Range reads of content held by another node fetch only the blocks the range
covers, counted by the reading node's Bitswap metrics (two real daemons)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import DaemonProcess, metric, run_cli, stop_all

CHUNK = 64 * 1024
BLOCKS = 40
DATA = random.Random(40).randbytes(BLOCKS * CHUNK)
RECEIVED = "pinfold_bitswap_blocks_received_total"


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[DaemonProcess, DaemonProcess]]:
    a = DaemonProcess(tmp_path, "a").start()
    b = DaemonProcess(tmp_path, "b").start()
    try:
        with a.client() as ca, b.client() as cb:
            cb.connect(ca.id()["addresses"][0])
        yield a, b
    finally:
        stop_all((a, b))


def test_remote_range_read_fetches_only_the_covering_blocks(
        pair: tuple[DaemonProcess, DaemonProcess], tmp_path: Path) -> None:
    a, b = pair
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(DATA)
    with a.client() as ca:
        root = ca.add(str(folder), chunk_size=CHUNK)
        assert ca.stat(f"{root}/weights.bin")["blocks"] == BLOCKS + 1
    assert metric(b, RECEIVED) == 0
    with b.client() as cb:
        # 100 bytes inside leaf 20: the folder, the file's root and one leaf.
        offset = 20 * CHUNK + 1000
        data, summary = cb.read(f"{root}/weights.bin", offset=offset, length=100)
        assert data == DATA[offset:offset + 100]
        assert summary["blocks"] == 2  # the file's root and the leaf
        assert metric(b, RECEIVED) == 3
        st = cb.stat(f"{root}/weights.bin")
        assert st["local_blocks"] == 2 and st["blocks"] == BLOCKS + 1 and not st["complete"]
    # The CLI: a range across the boundary of leaves 30 and 31 fetches those two only.
    offset = 31 * CHUNK - 10
    out = run_cli(b.home, "cat", f"{root}/weights.bin", "--offset", str(offset),
                  "--length", "20")
    assert out.stdout == DATA[offset:offset + 20]
    assert metric(b, RECEIVED) == 5
    with b.client() as cb:
        assert not any(p["cid"] == root for p in cb.pins())  # fetched, not pinned
