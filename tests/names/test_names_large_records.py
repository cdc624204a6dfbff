"""Name records near their 140 KiB limit replicate whole: gossip and anti-entropy
page the pinset by bytes, not only by entry count.

Two real daemons in one cluster. ``a`` pushes 28 versions whose records carry a
128 KB message each (about 175 KB of pin metadata apiece, 4.9 MB together: more
than one 4 MiB sync frame) before ``b`` exists; ``b`` then joins and must learn
every version through anti-entropy. Then, with both up, ``a`` pushes 6 more at
once (their pins may share one gossip flush, over 1 MiB together) and ``b``
learns those too.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support.cluster import configure, peer_id, replication
from tests.support.daemon import DaemonProcess, stop_all
from tests.support.wait import wait_until

MESSAGE = "m" * (128 * 1024)
REPLICATION = replication(rmin=1, rmax=1, p_prior=0.9, sync_interval_s=2.0)


@pytest.fixture
def pair(tmp_path: Path):
    a, b = DaemonProcess(tmp_path, "a"), DaemonProcess(tmp_path, "b")
    for d in (a, b):
        d.init()
    ids = [peer_id(a), peer_id(b)]
    configure(a, cluster="big", trusted=ids, bootstrap=[], replication=REPLICATION)
    try:
        a.start()
        with a.client() as c:
            seed = c.id()["addresses"][0]
        configure(b, cluster="big", trusted=ids, bootstrap=[seed], replication=REPLICATION)
        yield a, b
    finally:
        stop_all((a, b))


def _latest(d: DaemonProcess, prefix: str) -> dict[str, int]:
    with d.client() as c:
        return {n["name"]: n["latest"] for n in c.names() if n["name"].startswith(prefix)}


def test_a_batch_of_large_name_records_arrives_whole_on_another_node(
        pair: tuple[DaemonProcess, DaemonProcess], tmp_path: Path) -> None:
    a, b = pair
    with a.client() as ca:
        for i in range(28):
            f = tmp_path / f"w{i}.bin"
            f.write_bytes(i.to_bytes(4, "big") * 32)
            ca.push(f"large/m{i % 4}", f, message=MESSAGE + str(i))
    want = {f"large/m{j}": 7 for j in range(4)}
    assert _latest(a, "large/") == want
    b.start()
    wait_until(lambda: _latest(b, "large/") == want, timeout_s=180,
               what="b to learn 28 large records by anti-entropy")
    with b.client() as cb:
        history = cb.versions("large/m0")
    assert all(v["message"].startswith(MESSAGE) for v in history["versions"])

    def push(i: int) -> None:
        f = tmp_path / f"x{i}.bin"
        f.write_bytes(b"x%d" % i)
        with a.client() as ca:
            ca.push(f"burst/m{i}", f, message=MESSAGE + str(i))

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(push, range(6)))
    wait_until(lambda: _latest(b, "burst/") == {f"burst/m{i}": 1 for i in range(6)},
               timeout_s=120, what="b to learn 6 large records pushed at once")
