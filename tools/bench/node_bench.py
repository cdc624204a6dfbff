"""Single-node throughput: add and cat through the CLI and socket, against baselines.

Baselines are measured in the same run on the same machine:
- add: hashlib sha256 of each 1 MiB chunk + raw LMDB puts batched 64 a
  transaction (sync on commit, like the daemon's default), i.e. the least work
  any content-addressed store must do to keep the file.
- cat: reading the same file from the page cache in 1 MiB reads in this
  process, and `cat FILE > /dev/null` as a process (start-up on both sides).
Peak RSS of the daemon is sampled from /proc every 20 ms (total and anonymous).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lmdb

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.support.daemon import DaemonProcess, run_cli  # noqa: E402

MiB = 1024 * 1024


def make_file(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 64 * MiB)
            f.write(os.urandom(n))
            left -= n


def baseline_add(path: Path, tmp: Path) -> float:
    env = lmdb.open(str(tmp / "baseline"), map_size=4 << 30, sync=True, metasync=True)
    t0 = time.perf_counter()
    with open(path, "rb") as f:
        batch = []
        while chunk := f.read(MiB):
            batch.append((hashlib.sha256(chunk).digest(), chunk))
            if len(batch) == 64:
                with env.begin(write=True) as txn:
                    for k, v in batch:
                        txn.put(k, v)
                batch = []
        if batch:
            with env.begin(write=True) as txn:
                for k, v in batch:
                    txn.put(k, v)
    dt = time.perf_counter() - t0
    env.close()
    return dt


def page_cache_read(path: Path) -> float:
    with open(path, "rb") as f:  # warm
        while f.read(8 * MiB):
            pass
    t0 = time.perf_counter()
    with open(path, "rb") as f:
        while f.read(MiB):
            pass
    return time.perf_counter() - t0


class RssSampler:
    """Samples a process's RSS every 20 ms: peak total, and peak anonymous memory.

    LMDB serves reads from its memory map, so pages of the page cache that a
    read touched count in RSS (RssFile) though the kernel reclaims them at will;
    RssAnon is the daemon's own memory. Both are reported.
    """

    def __init__(self, pid: int) -> None:
        import threading

        self.pid = pid
        self.peak_total = 0.0
        self.peak_anon = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        fields = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon"):
                fields[key] = int(rest.split()[0]) / 1024
        self.peak_total = max(self.peak_total, fields.get("VmRSS", 0.0))
        self.peak_anon = max(self.peak_anon, fields.get("RssAnon", 0.0))

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self._sample()
            except OSError:
                return

    def __enter__(self) -> "RssSampler":
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        try:
            self._sample()
        except OSError:
            pass

    def text(self) -> str:
        return f"{self.peak_total:,.0f} MiB (anon {self.peak_anon:,.0f} MiB)"


def process_cat(path: Path) -> float:
    """Seconds for `cat FILE > /dev/null` (coreutils) from the page cache: a whole
    process, like `pinfold cat`, so start-up costs are on both sides."""
    with open(os.devnull, "wb") as devnull:
        subprocess.run(["cat", str(path)], stdout=devnull, check=True)  # warm
        t0 = time.perf_counter()
        subprocess.run(["cat", str(path)], stdout=devnull, check=True)
    return time.perf_counter() - t0


def run(size: int = 1024 * MiB) -> list[tuple[str, str, str]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="pinfold-bench-") as d:
        tmp = Path(d)
        f = tmp / "random.bin"
        make_file(f, size)
        base = baseline_add(f, tmp)
        base_mbs = size / MiB / base
        d0 = DaemonProcess(tmp, "bench")
        d0.start()
        try:
            with RssSampler(d0.pid) as add_rss:
                t0 = time.perf_counter()
                cid = run_cli(d0.home, "add", str(f), timeout=1200).stdout.decode().strip()
                add_s = time.perf_counter() - t0
            add_mbs = size / MiB / add_s
            rows.append(("add 1 GiB via CLI+socket", f"{add_mbs:,.0f} MB/s",
                         f"{add_mbs / base_mbs:.2f} x baseline sha256+LMDB ({base_mbs:,.0f} MB/s)"
                         " target >= 0.6"))
            pc = page_cache_read(f)
            pc_mbs = size / MiB / pc
            proc_pc = process_cat(f)
            proc_pc_mbs = size / MiB / proc_pc
            with RssSampler(d0.pid) as cat_rss:
                t0 = time.perf_counter()
                with open(os.devnull, "wb") as devnull:
                    subprocess.run([sys.executable, "-m", "pinfold.daemon.cli", "--home",
                                    str(d0.home), "cat", cid], stdout=devnull, check=True,
                                   timeout=1200)
                cat_s = time.perf_counter() - t0
            cat_mbs = size / MiB / cat_s
            rows.append(("cat 1 GiB via CLI+socket", f"{cat_mbs:,.0f} MB/s",
                         f"{cat_mbs / pc_mbs:.2f} x page-cache read in this process "
                         f"({pc_mbs:,.0f} MB/s); {cat_mbs / proc_pc_mbs:.2f} x `cat FILE > "
                         f"/dev/null` as a process ({proc_pc_mbs:,.0f} MB/s); target >= 0.25"))
            rows.append(("daemon peak RSS during add", add_rss.text(), "target < 200 MiB"))
            rows.append(("daemon peak RSS during cat", cat_rss.text(),
                         "file pages are LMDB's map of the page cache"))
        finally:
            d0.stop()
            d0.kill9()
    return rows


if __name__ == "__main__":
    for row in run(int(sys.argv[1]) * MiB if len(sys.argv) > 1 else 1024 * MiB):
        print(" | ".join(row))

