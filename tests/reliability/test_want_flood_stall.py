"""Regression: one Bitswap message full of wants stalled the whole daemon.

Found by the security campaign: a 4 MiB message holds ~100k want entries, and
each CID was parsed with multiformats' ``CID.decode`` (~230 us), on the trio
thread: ~20 s during which the daemon answered nothing -- no RPC, no other
peer. CIDs are now parsed with the fast binary decoder (~8 us) and messages of
256 KiB or more are decoded in a worker thread.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from pathlib import Path

import trio

import pytest
from libp2p.peer.id import ID
from pinfold.daemon.p2p.bitswap.message import (
    MAX_MESSAGE_SIZE,
    PROTOCOL_1_2_0,
    decode_message,
    encode_uvarint,
)

from tests.support.bitswap import new_host
from tests.support.daemon import DaemonProcess


def _big_wantlist(seed: int, n: int = 99_000) -> bytes:
    """A Bitswap message (protobuf) wanting ``n`` random raw-codec CIDs, built by hand
    (building CID objects for it would take longer than the test)."""
    rng = random.Random(seed)
    entries = bytearray()
    for _ in range(n):
        cid = b"\x01\x55\x12\x20" + hashlib.sha256(rng.randbytes(8)).digest()
        entry = b"\x0a" + encode_uvarint(len(cid)) + cid
        entries += b"\x0a" + encode_uvarint(len(entry)) + entry
    return b"\x0a" + encode_uvarint(len(entries)) + bytes(entries)


@pytest.mark.serial
def test_a_4_mib_wantlist_decodes_in_well_under_a_few_seconds() -> None:
    raw = _big_wantlist(1)
    assert len(raw) <= MAX_MESSAGE_SIZE
    start = time.perf_counter()
    msg = decode_message(raw)
    elapsed = time.perf_counter() - start
    assert len(msg.wantlist) == 99_000
    assert bytes(msg.wantlist[0].cid) == raw[9:45] and msg.wantlist[0].cid.codec.name == "raw"
    assert elapsed < 5.0, elapsed  # was ~16-23 s


async def test_the_daemon_answers_while_a_peer_sends_huge_wantlists(
        tmp_path: Path, nursery: trio.Nursery) -> None:
    daemon = DaemonProcess(tmp_path, "v").start()
    try:
        with daemon.client() as c:
            addr = c.id()["addresses"][0]
        frames = []
        for i in range(2):
            body = _big_wantlist(i)
            frames.append(encode_uvarint(len(body)) + body)
        latencies: list[float] = []
        done = threading.Event()

        def probe() -> None:
            with daemon.client() as c:
                while not done.is_set():
                    t0 = time.monotonic()
                    c.id()
                    latencies.append(time.monotonic() - t0)
                    done.wait(0.02)

        hostile = new_host()
        await nursery.start(hostile.run)
        await hostile.connect(addr)
        victim = ID.from_base58(addr.rsplit("/p2p/", 1)[1])
        thread = threading.Thread(target=probe)
        thread.start()
        try:
            for frame in frames:
                try:
                    stream = await hostile.new_stream(victim, [PROTOCOL_1_2_0])
                    await stream.write(frame)
                    await stream.close()
                except Exception:  # noqa: BLE001 - the daemon may cut the flooder off
                    break  # (a reset stream or a closed connection): that is allowed
            # let the daemon work through them while the probe measures
            with trio.move_on_after(6):
                while len(latencies) < 100:
                    await trio.sleep(0.05)
        finally:
            done.set()
            await trio.to_thread.run_sync(thread.join)
        assert latencies, "the RPC probe never got an answer"
        assert max(latencies) < 3.0, f"RPC stalled {max(latencies):.1f} s"  # was ~20 s
    finally:
        daemon.stop()
        daemon.kill9()
