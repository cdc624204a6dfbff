"""Regression: a failed ``add`` or ``dag import`` leaves the store as it found it.

Found by the hostile-input campaign: the import pipeline commits blocks in
8 MiB batches while it reads, so a CAR file whose first 16 MiB are valid and
whose tail is corrupt used to leave 8-16 MiB of unpinned blocks behind (until
a GC, which by default runs only on ``repo gc``); so did an add whose client
went away mid-upload. Now the blocks a failed request newly stored are
removed, except those a pin or another request holds by then.
"""

from __future__ import annotations

import random

import pytest
from pinfold.blockstore import car as carfmt
from pinfold.client import RpcError

from tests.support.daemon import DaemonProcess
from tests.support.campaign import MiB, chunks_of, live_fingerprint, make_content
from tests.support.wait import wait_until


def test_a_car_with_a_corrupt_tail_leaves_no_blocks(daemon: DaemonProcess) -> None:
    content = make_content("big", random.Random(1), sizes=(24 * MiB,), chunk_sizes=(MiB,))
    car = content.car()
    corrupt = car[:-1000] + bytes(1000)  # the last block no longer matches its CID
    first_cid, first_data = content.blocks[0]
    with daemon.client() as c:
        # a block that was there before the import (unpinned) must stay
        assert c.block_put(first_data)["cid"] == str(first_cid)
        before = live_fingerprint(c)
        with pytest.raises(RpcError) as err:
            c.dag_import_stream(chunks_of(corrupt))
        assert err.value.code == "block_corrupt"
        assert live_fingerprint(c) == before
        assert c.block_get(str(first_cid)) == first_data


def test_a_car_whose_dag_is_incomplete_leaves_no_blocks(daemon: DaemonProcess) -> None:
    content = make_content("partial", random.Random(2), sizes=(40 * MiB,), chunk_sizes=(MiB,))
    # a valid CAR holding only the first half of the DAG's leaves, more than a write batch
    sections = bytearray(carfmt.car_header([content.root]))
    for cid, data in content.blocks[: len(content.blocks) // 2]:
        sections += carfmt.car_section(cid, data)
    assert len(sections) > 8 * MiB
    with daemon.client() as c:
        before = live_fingerprint(c)
        with pytest.raises(RpcError) as err:
            c.dag_import_stream(chunks_of(bytes(sections)))
        assert err.value.code in ("not_found", "pin_error")
        assert live_fingerprint(c) == before


def test_an_add_whose_client_goes_away_leaves_no_blocks(daemon: DaemonProcess) -> None:
    rng = random.Random(3)

    def upload():
        for _ in range(24):
            yield rng.randbytes(MiB)
        raise ConnectionAbortedError("the client went away mid-upload")

    with daemon.client() as c:
        before = live_fingerprint(c)
        with pytest.raises(ConnectionAbortedError):
            c.add_stream(upload())
    with daemon.client() as c:
        # the daemon cancels the add when the request is cancelled; its blocks go
        wait_until(lambda: live_fingerprint(c) == before, timeout_s=30,
                   what="the cancelled add's blocks to be removed", interval_s=0.02, retry_errors=False)
        # and a complete add afterwards works as usual
        cid = c.add(b"still works", pin=True)
        assert b"".join(c.cat(cid)) == b"still works"
