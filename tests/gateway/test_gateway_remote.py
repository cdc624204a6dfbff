"""The gateway of node B serving content that only node A holds: a Range
request fetches just the blocks that cover the range (counted by B's Bitswap
metrics), nothing is pinned, and a block nobody has ends in 504 after
``gateway.timeout_s``.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

from pinfold.blockstore.cid import make_cid
from tests.support.curl import curl, need_curl
from tests.support.daemon import cli_json, metric, running

MiB = 1024 * 1024


def test_range_on_b_fetches_only_the_blocks_of_the_range_from_a(tmp_path: Path) -> None:
    need_curl()
    data = random.Random(3).randbytes(8 * MiB + 17)  # a root and 9 leaves of 1 MiB
    src = tmp_path / "weights.bin"
    src.write_bytes(data)
    with running(tmp_path, "a") as a, running(tmp_path, "b") as b:
        cid = cli_json(a.home, "add", str(src))["cid"]
        with a.client() as ca, b.client() as cb:
            cb.connect(ca.id()["addresses"][0])
            gateway = cb.id()["gateway"]
        received = metric(b, "pinfold_bitswap_blocks_received_total")
        start, end = 3 * MiB + 100, 3 * MiB + 4195
        r = curl(f"{gateway}/ipfs/{cid}", "-H", f"Range: bytes={start}-{end}")
        assert r.status == 206, r.body
        assert r.body == data[start:end + 1]
        assert r.header("content-range") == f"bytes {start}-{end}/{len(data)}"
        # The file's root block and the one leaf holding bytes 3 MiB..4 MiB: 2 of 10.
        assert metric(b, "pinfold_bitswap_blocks_received_total") - received == 2
        # A range across a leaf boundary needs both leaves, one of them already here.
        r = curl(f"{gateway}/ipfs/{cid}", "-H", f"Range: bytes={4 * MiB - 10}-{4 * MiB + 9}")
        assert r.body == data[4 * MiB - 10:4 * MiB + 10]
        assert metric(b, "pinfold_bitswap_blocks_received_total") - received == 3
        # Fetched for the gateway, not pinned: B's pin list stays empty.
        with b.client() as cb:
            assert list(cb.pins()) == []


def test_a_block_not_retrieved_in_time_is_504_naming_gateway_timeout(tmp_path: Path) -> None:
    need_curl()
    # A serves cluster members only and drops B's wants unanswered: B waits.
    silent = '[cluster]\nname = "other"\n[bitswap]\nserve = "cluster"\n'
    with running(tmp_path, "a", config=silent) as a, running(
            tmp_path, "b", config="[gateway]\ntimeout_s = 2\n") as b:
        with a.client() as ca, b.client() as cb:
            cb.connect(ca.id()["addresses"][0])
            gateway = cb.id()["gateway"]
        missing = make_cid(b"held by nobody " + random.Random(5).randbytes(16))
        t0 = time.monotonic()
        r = curl(f"{gateway}/ipfs/{missing}/file.txt")
        took = time.monotonic() - t0
        assert r.status == 504, r.body
        assert str(missing) in r.body.decode() and "gateway.timeout_s" in r.body.decode()
        assert r.header("retry-after")
        assert 1.5 <= took < 20
        assert curl(f"{gateway}/ipfs/{missing}?format=raw").status == 504
        assert "Traceback" not in b.log()


def test_a_block_every_peer_lacks_is_504_at_once(tmp_path: Path) -> None:
    need_curl()
    with running(tmp_path, "a") as a, running(tmp_path, "b") as b:
        with a.client() as ca, b.client() as cb:
            cb.connect(ca.id()["addresses"][0])
            gateway = cb.id()["gateway"]
        missing = make_cid(b"held by nobody " + random.Random(6).randbytes(16))
        r = curl(f"{gateway}/ipfs/{missing}")
        assert r.status == 504, r.body
        assert f"retrieval failed: no peer has block {missing}" in r.body.decode()
        assert "Traceback" not in b.log()
