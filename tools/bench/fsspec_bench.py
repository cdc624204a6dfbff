"""Random small reads through ``pinfold://`` (fsspec): latency and blocks read.

A local file of ``BENCH_SIZE`` bytes (default 1 GiB) is added to a fresh daemon
with the default import settings (1 MiB chunks); then ``BENCH_READS`` (default
1,000) reads of 4 KiB at uniformly random offsets go through one
``fsspec.open("pinfold://CID", "rb")`` file (default 1 MiB ranges, block
cache of 32). Reported: p50/p99 latency per read, UnixFS blocks the daemon
read per request (from ``cat``'s own count, the path to the leaf included)
and ranges fetched per request (1 - block-cache hits).

Baseline in the same run: the same offsets read with ``os.pread`` from the
original file in the page cache (the floor of any storage layer), and one
4 KiB ``Client.read`` per offset without fsspec (the daemon's range cost).

Run alone: ``.venv/bin/python tools/bench/fsspec_bench.py`` (BENCH_SIZE=64MiB for
a quick run; sizes accept KiB/MiB/GiB suffixes).
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.support.daemon import DaemonProcess  # noqa: E402

MiB = 1024 * 1024
READ = 4096


def _size(text: str) -> int:
    units = {"KIB": 1024, "MIB": MiB, "GIB": 1024 * MiB, "K": 1024, "M": MiB, "G": 1024 * MiB}
    t = text.strip().upper()
    for suffix, mult in units.items():
        if t.endswith(suffix):
            return int(float(t[: -len(suffix)]) * mult)
    return int(t)


def _pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def _ms(x: float) -> str:
    return f"{x * 1000:.3f} ms"


def _make_file(path: Path, size: int) -> None:
    rng = random.Random(1)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 16 * MiB)
            f.write(rng.randbytes(n))
            left -= n


def run() -> Iterator[list[str]]:
    """Yield the report rows (each a list of columns)."""
    import fsspec

    size = _size(os.environ.get("BENCH_SIZE", "1GiB"))
    reads = int(os.environ.get("BENCH_READS", "1000"))
    with tempfile.TemporaryDirectory(prefix="pinfold-fsspec-bench-") as tmp:
        root = Path(tmp)
        src = root / "file.bin"
        _make_file(src, size)
        rng = random.Random(2)
        offsets = [rng.randrange(0, max(1, size - READ)) for _ in range(reads)]
        node = DaemonProcess(root, "bench").start()
        try:
            with node.client() as c:
                cid = c.add(str(src))
                socket = str(c.socket_path)
                yield [f"file {size / MiB:.0f} MiB", f"{reads} reads of {READ} B",
                       f"root {cid}"]

                base = []
                fd = os.open(src, os.O_RDONLY)
                try:
                    for off in offsets:
                        t0 = time.perf_counter()
                        os.pread(fd, READ, off)
                        base.append(time.perf_counter() - t0)
                finally:
                    os.close(fd)

                direct, direct_blocks = [], []
                for off in offsets:
                    t0 = time.perf_counter()
                    _, summary = c.read(cid, offset=off, length=READ)
                    direct.append(time.perf_counter() - t0)
                    direct_blocks.append(summary["blocks"])

            lat, blocks, ranges = [], [], []
            expected = []
            with open(src, "rb") as check, \
                    fsspec.open(f"pinfold://{cid}", "rb", socket=socket) as f:
                for off in offsets:
                    b0, r0 = f.blocks_read, f.ranges
                    t0 = time.perf_counter()
                    f.seek(off)
                    data = f.read(READ)
                    lat.append(time.perf_counter() - t0)
                    blocks.append(f.blocks_read - b0)
                    ranges.append(f.ranges - r0)
                    if len(expected) < 20:  # spot-check the bytes
                        check.seek(off)
                        expected.append(check.read(READ) == data)
            assert all(expected), "fsspec returned bytes that differ from the file"
        finally:
            try:
                node.stop()
            finally:
                node.kill9()

    yield ["fsspec pinfold:// 4 KiB", f"p50 {_ms(_pct(lat, 50))}", f"p99 {_ms(_pct(lat, 99))}",
           f"mean {_ms(statistics.fmean(lat))}"]
    missed = [b for b, r in zip(blocks, ranges) if r]
    yield ["  per request", f"blocks read {statistics.fmean(blocks):.2f}",
           f"ranges fetched {statistics.fmean(ranges):.3f}",
           f"blocks per fetched range {statistics.fmean(missed) if missed else 0:.2f}"]
    yield ["Client.read 4 KiB (no cache)", f"p50 {_ms(_pct(direct, 50))}",
           f"p99 {_ms(_pct(direct, 99))}",
           f"blocks read {statistics.fmean(direct_blocks):.2f}/request"]
    yield ["baseline os.pread 4 KiB", f"p50 {_ms(_pct(base, 50))}", f"p99 {_ms(_pct(base, 99))}",
           f"fsspec p50 = {_pct(lat, 50) / max(_pct(base, 50), 1e-9):.0f}x pread"]


if __name__ == "__main__":
    for row in run():
        print("   " + " | ".join(row), flush=True)
