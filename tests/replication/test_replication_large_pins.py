"""Pins with large metadata (name records ride there, ~175 KB a pin) page by bytes:
gossip messages stay under py-libp2p's 1 MiB RPC limit and sync pages under the
4 MiB stream frame, and a whole batch still arrives (entries.py ``pages_by_size``,
sync.py ``answer``, gossip.py flush, antientropy.py push)."""

from __future__ import annotations

import functools
import hashlib

import trio
from pinfold.replication.entries import Entry, encode_entries, pages_by_size, wire_size
from pinfold.replication.manager import Manager, ManagerConfig
from pinfold.replication.messages import KIND_PINS
from pinfold.replication.pinset import PinSet
from pinfold.replication.sync import (
    EntriesResponse,
    Reconciler,
    answer,
    encode_message,
)
from pinfold.replication.transport import MemoryHub, MemoryPins
from pinfold.replication.types import Pin

from tests.support.wait import wait_until_trio

wait_until = functools.partial(wait_until_trio, timeout_s=300.0, interval_s=0.1)
MiB = 1024 * 1024
#: ~44 x 4000-character values: about what a 130 KB name record needs.
BIG_META = {f"pinfold.name.{i:02d}": chr(65 + i % 26) * 4000 for i in range(44)}


def cid_of(i: int) -> bytes:
    return bytes([1, 0x55, 0x12, 0x20]) + hashlib.sha256(b"big %d" % i).digest()


def big_entry(i: int, ts: int = 1) -> Entry:
    return Entry(cid=cid_of(i), ts=ts, peer_id="peer-a",
                 pin=Pin(cid=cid_of(i), name=f"name:big{i}", metadata=BIG_META))


def test_wire_size_bounds_the_encoded_entry() -> None:
    e = big_entry(1)
    assert len(encode_entries([e])) <= wire_size(e) < len(encode_entries([e])) + 1000


def test_pages_by_size_keep_each_page_under_the_byte_bound_and_lose_nothing() -> None:
    entries = [big_entry(i) for i in range(30)]
    pages = list(pages_by_size(entries, max_bytes=768 * 1024, max_entries=2000))
    assert len(pages) > 1
    assert [e for p in pages for e in p] == entries
    assert all(len(encode_entries(p)) <= 768 * 1024 for p in pages)


def test_sync_pages_of_large_pins_fit_a_frame_and_bring_every_entry() -> None:
    remote, local = PinSet(), PinSet()
    remote.merge([big_entry(i) for i in range(40)])  # ~7 MB of entries
    rec = Reconciler(local)
    pages = 0
    while (req := rec.next_request()) is not None:
        resp = answer(remote, req)
        assert len(encode_message(resp)) < 4 * MiB
        pages += isinstance(resp, EntriesResponse)
        rec.handle(resp)
    assert pages >= 2
    assert local.summary(0, 0) == remote.summary(0, 0) and len(local) == 40


CFG = ManagerConfig(heartbeat_interval_s=1.0, repair_grace_s=5.0, replan_interval_s=3600.0,
                    sync_interval_s=3600.0, retry_min_s=10.0, retry_max_s=80.0,
                    concurrent_pins=2, rmin=1, rmax=1)


async def test_a_gossip_batch_of_large_pins_is_split_under_1_mib(autojump_clock,
                                                                  nursery) -> None:
    hub = MemoryHub()
    ms = {}
    for n in "ab":
        ms[n] = Manager(n, CFG, hub.transport(n), MemoryPins(), wall_offset=1.8e9)
        await nursery.start(ms[n].run)
    await trio.sleep(3)
    async with trio.open_nursery() as inner:  # one flush gathers them all
        for i in range(12):
            inner.start_soon(functools.partial(ms["a"].pin_add, cid_of(i), rmin=1, rmax=1,
                                               metadata=BIG_META))
    await wait_until(lambda: len(ms["b"].pinset) == 12, what="b to get 12 large pins")
    sizes = [n for who, kind, n in hub.sent if who == "a" and kind == KIND_PINS]
    assert sum(sizes) > MiB, "the batch was over 1 MiB in all"
    assert max(sizes) < 800 * 1024, f"a gossip message of {max(sizes)} bytes"
