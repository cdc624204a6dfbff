"""Names benchmark (issue 16): a new version of a folder in which one file
changed moves about that file's bytes between nodes, not the whole folder.

Two real daemons in one cluster on 127.0.0.1. ``a`` pushes v1 of a folder of
``BENCH_SIZE`` bytes (default 1 GiB) in files of ``BENCH_CHANGED`` bytes
(default 100 MiB; the last file takes the remainder) with one replica; ``b``
pulls ``NAME@main``. Then one file is rewritten with new random bytes, ``a``
pushes v2 and ``b`` pulls again. The figure is what ``b``'s Bitswap received
(``pinfold_bitswap_received_bytes_total``) from the start of each push to the
end of its pull, so a copy the cluster placed on ``b`` counts too. Target: v2
moves about ``BENCH_CHANGED`` (at most 1.1x of it plus 1 MiB of directory and
record blocks), v1 the whole folder.

Run alone: ``BENCH_SIZE=128M BENCH_CHANGED=16M .venv/bin/python tools/bench/names_delta_bench.py``.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from pinfold.client import RpcError  # noqa: E402

from tests.support.cluster import configure, peer_id, replication  # noqa: E402
from tests.support.daemon import DaemonProcess, metric, stop_all  # noqa: E402
from tools.bench.fetchkit import MiB, bench_size, make_file, size_text  # noqa: E402

NAME = "bench/folder"


@contextlib.contextmanager
def _pair(root: Path) -> Iterator[tuple[DaemonProcess, DaemonProcess]]:
    a, b = DaemonProcess(root, "a"), DaemonProcess(root, "b")
    try:
        for d in (a, b):
            d.init()
        ids = [peer_id(a), peer_id(b)]
        configure(a, cluster="bench", trusted=ids, bootstrap=[], replication=replication())
        a.start()
        with a.client() as c:
            seed = c.id()["addresses"][0]
        configure(b, cluster="bench", trusted=ids, bootstrap=[seed], replication=replication())
        b.start()
        deadline = time.monotonic() + 120
        while True:
            with b.client() as c:
                if sum(p["state"] == "alive" for p in c.cluster_peers()) == 2:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError("b did not see a as an alive cluster peer in 120 s")
            time.sleep(0.2)
        yield a, b
    finally:
        stop_all((a, b))


def _received(d: DaemonProcess) -> float:
    return metric(d, "pinfold_bitswap_received_bytes_total")


def _push_pull(a: DaemonProcess, b: DaemonProcess, src: Path, dest: Path,
               version: int) -> tuple[float, float]:
    """Push ``src`` on ``a``, pull it on ``b`` into ``dest``: (bytes b received, seconds)."""
    before = _received(b)
    t0 = time.perf_counter()
    with a.client() as ca:
        cid = ca.push(NAME, src, replicas=1, message=f"v{version}")["cid"]
    deadline = time.monotonic() + 300
    while True:  # the version and main-move records reach b through the cluster's gossip
        with b.client() as cb:
            try:
                if cb.resolve(f"{NAME}@main") == cid:
                    break
            except RpcError:  # not known there yet
                pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"b did not see {NAME}@main at v{version} in 300 s")
        time.sleep(0.1)
    with b.client() as cb:
        cb.pull(f"{NAME}@main", dest)
    return _received(b) - before, time.perf_counter() - t0


def run() -> Iterator[tuple[str, ...]]:
    total = bench_size()
    changed = bench_size(100 * MiB, "BENCH_CHANGED")
    sizes = [changed] * (total // changed) + ([total % changed] if total % changed else [])
    with tempfile.TemporaryDirectory(prefix="pinfold-bench-names-delta-") as tmp:
        root = Path(tmp)
        src = root / "folder"
        src.mkdir()
        for i, n in enumerate(sizes):
            make_file(src / f"part-{i:03d}.bin", n)
        with _pair(root) as (a, b):
            v1_bytes, v1_s = _push_pull(a, b, src, root / "pull-v1", 1)
            make_file(src / "part-000.bin", changed)
            v2_bytes, v2_s = _push_pull(a, b, src, root / "pull-v2", 2)
    folder = f"{size_text(total)} in {len(sizes)} files"
    yield ("names: v1 push + pull on another node", f"{v1_bytes / MiB:.2f} MiB received",
           f"{folder}, {v1_s:.1f} s", "")
    met = v2_bytes <= 1.1 * changed + MiB
    yield ("names: v2 (one file changed) push + pull", f"{v2_bytes / MiB:.2f} MiB received",
           f"changed file {size_text(changed)}, {v2_s:.1f} s; "
           f"{v2_bytes / max(v1_bytes, 1):.1%} of v1",
           f"target ~{size_text(changed)} (<= 1.1x + 1 MiB): {'ok' if met else 'MISS'}")


if __name__ == "__main__":
    for r in run():
        print(" | ".join(r))
