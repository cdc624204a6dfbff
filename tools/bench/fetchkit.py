"""Shared parts of the daemon-to-daemon fetch benchmarks (issue 14): the size, random
files, a set of real daemons, a timed ``pin add`` with the receiver's CPU seconds.

The receiver's CPU time is psutil's ``cpu_times()`` of the daemon process (user +
system, all its threads) read before and after the ``pin add``; divided by the
bytes fetched it gives CPU seconds per GiB, the figure that scales with cores.

``BENCH_SIZE`` sets the file size: bytes, or a number with K/M/G (binary units),
default 1G. Everything runs on 127.0.0.1 in a temporary directory.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.support.daemon import DaemonProcess, metric, run_cli, stop_all  # noqa: E402

MiB = 1024 * 1024
GiB = 1024 * MiB
_UNITS = {"": 1, "K": 1024, "M": MiB, "G": GiB}


def bench_size(default: int = GiB, var: str = "BENCH_SIZE") -> int:
    """Bytes from the environment variable ``var`` (``1G``, ``256M``, ``1048576``),
    else ``default``.

    Raises:
        ValueError: the variable is not a size (names it and the value).
    """
    text = os.environ.get(var, "").strip().upper().removesuffix("IB").removesuffix("B")
    if not text:
        return default
    m = re.fullmatch(r"(\d+)\s*([KMG]?)", text)
    if m is None or int(m.group(1)) == 0:
        raise ValueError(f"{var}: expected bytes or a number with K/M/G, "
                         f"got {os.environ[var]!r}")
    return int(m.group(1)) * _UNITS[m.group(2)]


def size_text(size: int) -> str:
    """``1 GiB``, ``256 MiB`` or bytes."""
    if size % GiB == 0:
        return f"{size // GiB} GiB"
    if size % MiB == 0:
        return f"{size // MiB} MiB"
    return f"{size} B"


def make_file(path: Path, size: int) -> Path:
    """``size`` random bytes at ``path`` (written in 64 MiB pieces)."""
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 64 * MiB)
            f.write(os.urandom(n))
            left -= n
    return path


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process ``pid`` has used so far (all threads)."""
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


@dataclass(frozen=True, slots=True, kw_only=True)
class Fetch:
    """One timed fetch: ``seconds`` wall time, ``cpu_s`` the receiver's CPU seconds,
    ``nbytes`` the file's size."""

    seconds: float
    cpu_s: float
    nbytes: int

    @property
    def mb_s(self) -> float:
        """Throughput, MB/s (10^6 bytes)."""
        return self.nbytes / 1e6 / self.seconds

    @property
    def cpu_per_gib(self) -> float:
        """Receiver CPU seconds per GiB fetched."""
        return self.cpu_s * GiB / self.nbytes


@contextlib.contextmanager
def daemons(names: list[str], *, config: str = "") -> Iterator[list[DaemonProcess]]:
    """Started daemons, one per name, in a temporary directory; all stopped after."""
    with tempfile.TemporaryDirectory(prefix="pinfold-bench-") as d:
        root = Path(d)
        nodes = [DaemonProcess(root, n, config=config) for n in names]
        try:
            for n in nodes:
                n.start()
            yield nodes
        finally:
            stop_all(nodes)


def add(node: DaemonProcess, path: Path, *args: str) -> str:
    """``pinfold add --pin PATH`` on ``node``; the root CID."""
    return run_cli(node.home, "add", "--pin", *args, str(path),
                   timeout=1800).stdout.decode().strip()


def address(node: DaemonProcess) -> str:
    """``node``'s first listen address with its peer ID."""
    with node.client() as c:
        return c.id()["addresses"][0]


def connect(node: DaemonProcess, addrs: list[str]) -> None:
    """Connect ``node`` to each address."""
    for a in addrs:
        run_cli(node.home, "peers", "connect", a)


def timed_pin_add(fetcher: DaemonProcess, cid: str, nbytes: int) -> Fetch:
    """A ``pin add`` of ``cid`` on ``fetcher`` (its RPC, through the Python client, so no
    CLI start-up is timed), with the fetcher's CPU seconds."""
    with fetcher.client() as c:
        c.id()  # connected before the clock starts
        cpu0 = cpu_seconds(fetcher.pid)
        t0 = time.perf_counter()
        c.pin(cid)
        dt = time.perf_counter() - t0
    return Fetch(seconds=dt, cpu_s=cpu_seconds(fetcher.pid) - cpu0, nbytes=nbytes)


def bitswap_counter(node: DaemonProcess, name: str) -> float:
    """``pinfold_bitswap_<name>_total`` from ``node``'s /metrics."""
    return metric(node, f"pinfold_bitswap_{name}_total")


@dataclass(frozen=True, slots=True, kw_only=True)
class Figure:
    """One row of the issue-14 table.

    Attributes:
        what: what was measured.
        figure: pinfold's figure, as text.
        baseline: what it is compared with, measured in the same run, as text.
        ratio: figure against baseline, as text ("" when there is none).
        target: the issue's target, as text.
        met: whether the target was met (None: no target to check).
    """

    what: str
    figure: str
    baseline: str
    ratio: str
    target: str
    met: bool | None


def row(fig: Figure) -> tuple[str, ...]:
    """``fig`` as the cells ``tools/bench/run.py`` prints."""
    verdict = "" if fig.met is None else ("ok" if fig.met else "MISS")
    return (fig.what, fig.figure, fig.baseline, fig.ratio, f"target {fig.target} {verdict}".strip())
