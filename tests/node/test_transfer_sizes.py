"""The total a transfer's progress counts toward, read from the root block's
UnixFS sizes (``transfer.expected_size``), and the timeout error surviving a
copy. Pure: in-memory DAGs from the real importer, no daemon."""

from __future__ import annotations

import pickle
import random

import trio
from pinfold.blockstore.cid import RAW, make_cid
from pinfold.blockstore.unixfs import DirectoryBuilder, ImportParams, import_bytes
from pinfold.daemon.transfer import TransferMeter, TransferTimeout, expected_size

DATA = random.Random(5).randbytes(700_000)
PARAMS = ImportParams(chunk_size=64 * 1024, max_links=4)  # three levels of dag-pb


def test_a_file_root_gives_its_size_and_its_dag_bytes() -> None:
    blocks, root, tsize = import_bytes(DATA, PARAMS)
    root_block = dict(blocks)[root]
    assert expected_size(root, root_block, content=True) == len(DATA)
    # The DAG's bytes: every block once (no block repeats in random data).
    assert expected_size(root, root_block, content=False) == tsize \
        == sum(len(b) for _, b in blocks)


def test_a_range_counts_only_its_bytes() -> None:
    blocks, root, _ = import_bytes(DATA, PARAMS)
    block = dict(blocks)[root]
    assert expected_size(root, block, content=True, offset=1000, length=5000) == 5000
    assert expected_size(root, block, content=True, offset=len(DATA) - 10, length=99) == 10
    assert expected_size(root, block, content=True, offset=len(DATA) + 5) == 0


def test_a_raw_block_is_its_own_size() -> None:
    cid = make_cid(b"abc", RAW)
    assert expected_size(cid, b"abc", content=True) == 3
    assert expected_size(cid, b"abc", content=False) == 3


def test_a_directory_has_dag_bytes_but_no_file_size() -> None:
    _, file_root, tsize = import_bytes(DATA, PARAMS)
    builder = DirectoryBuilder(PARAMS)
    builder.add_file("a.bin", file_root, len(DATA), tsize)
    blocks, root = builder.finish()
    block = dict(blocks)[root]
    assert expected_size(root, block, content=True) is None
    assert expected_size(root, block, content=False) == len(block) + tsize


def test_the_timeout_error_survives_pickling_with_its_message() -> None:
    async def build() -> TransferTimeout:
        meter = TransferMeter("get", "bafyroot", lambda: (3, 3000, {"p1": 3}))
        meter.total, meter.done = 9000, 1500
        return TransferTimeout(meter, 2.5)

    err = trio.run(build)
    copy = pickle.loads(pickle.dumps(err))
    assert str(copy) == str(err) == ("get bafyroot: timed out after 2.5 s with 1500 of 9000 "
                                     "bytes done; 0 blocks (0 bytes) arrived from 0 peers")
    assert (copy.code, copy.cid, copy.timeout_s) == ("timeout", "bafyroot", 2.5)
