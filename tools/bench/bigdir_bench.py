"""Big folders: ``ls`` and ``get`` of a folder of 4,096 small files, in entries
per second, against baselines measured in the same run on the same machine.

Two folders of 4,096 one-line files (``tests/support/hamt_folders.py``): one
whose names fit one dag-pb block (a basic directory) and one with longer names
that ``add -r`` HAMT-shards (as Kubo v0.22 does). Every block is in the local
store, so the figures are pinfold's own per-entry cost:

- ``add -r`` of the folder (entries/s), for scale;
- ``ls`` via the CLI against ``ls -l FOLDER`` as a process (name, size and
  type of every entry from the local filesystem; start-up on both sides);
- ``get`` via the CLI against ``cp -r FOLDER`` as a process (the same files
  created on the same filesystem: the floor for writing a tree);
- the daemon's CPU seconds per entry for ``ls`` and ``get`` (from
  ``/proc/PID/stat``), which a loaded machine disturbs least;
- the HTTP gateway's HTML listing of a 4,096-entry folder added with
  ``--cid-version 0`` (dag-pb leaves, Kubo's classic layout: the gateway must
  read each entry's root block for its kind and size), in entries/s, against
  ``ls`` via the CLI of the same folder (the same batched local reads); the
  folders above have raw leaves, whose sizes their links state.

Each timing is the best of ``REPS`` runs. Run alone: ``python
tools/bench/bigdir_bench.py [FILES]``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.support.daemon import DaemonProcess, run_cli  # noqa: E402
from tests.support.hamt_folders import build  # noqa: E402

REPS = 3
FILES = 4096


def _case(n: int, prefix: str) -> dict:
    return {"runs": [{"dir": "", "prefix": prefix, "width": 5, "suffix": ".txt",
                      "start": 0, "count": n}]}


#: name -> file-name prefix: "file-00000.txt" keeps 4,096 entries under Kubo's
#: 256 KiB estimate (a basic directory); the long prefix goes over it (a HAMT).
FOLDERS = {"basic": "file-", "HAMT": "a-file-with-a-name-long-enough-to-shard-"}


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _best(fn: Callable[[], None], reps: int, *, pid: int | None = None,
          before: Callable[[], None] | None = None) -> tuple[float, float]:
    """Best wall seconds of ``reps`` runs of ``fn`` and the least CPU seconds
    process ``pid`` spent in one of them (0 without ``pid``)."""
    wall = cpu = float("inf")
    for _ in range(reps):
        if before is not None:
            before()
        c0 = _cpu_s(pid) if pid else 0.0
        t0 = time.perf_counter()
        fn()
        wall = min(wall, time.perf_counter() - t0)
        cpu = min(cpu, (_cpu_s(pid) - c0) if pid else 0.0)
    return wall, cpu


def _proc(*argv: str) -> None:
    with open(os.devnull, "wb") as devnull:
        subprocess.run(list(argv), stdout=devnull, check=True, timeout=600)


def _folder_rows(d0: DaemonProcess, tmp: Path, kind: str, n: int, reps: int
                 ) -> list[tuple[str, str, str]]:
    src = tmp / kind
    src.mkdir()
    build(src, _case(n, FOLDERS[kind]))
    out = tmp / "out"

    def clear() -> None:
        shutil.rmtree(out, ignore_errors=True)

    cid = ""

    def add() -> None:
        nonlocal cid
        cid = run_cli(d0.home, "add", "-r", str(src), timeout=600).stdout.decode().split()[-1]

    add_s, _ = _best(add, 1)
    ls_base, _ = _best(lambda: _proc("ls", "-l", str(src)), reps)
    cp_base, _ = _best(lambda: _proc("cp", "-r", str(src), str(out)), reps, before=clear)
    ls_s, ls_cpu = _best(lambda: run_cli(d0.home, "ls", cid, timeout=600), reps, pid=d0.pid)
    get_s, get_cpu = _best(lambda: run_cli(d0.home, "get", cid, "-o", str(out), timeout=600),
                           reps, pid=d0.pid, before=clear)
    clear()
    n_out = len(run_cli(d0.home, "ls", cid).stdout.splitlines())
    if n_out != n:
        raise AssertionError(f"ls listed {n_out} entries of {n}")
    label = f"{n:,} files, {kind} dir"
    return [
        (f"add -r, {label}", f"{n / add_s:,.0f} entries/s", f"{add_s:.2f} s"),
        (f"ls via CLI, {label}", f"{n / ls_s:,.0f} entries/s",
         f"{ls_base / ls_s:.2f} x `ls -l` as a process ({n / ls_base:,.0f} entries/s); "
         f"daemon {ls_cpu / n * 1e6:,.0f} us CPU/entry; target >= 2,000 entries/s"),
        (f"get via CLI, {label}", f"{n / get_s:,.0f} entries/s",
         f"{cp_base / get_s:.2f} x `cp -r` as a process ({n / cp_base:,.0f} entries/s); "
         f"daemon {get_cpu / n * 1e6:,.0f} us CPU/entry; target >= 0.5"),
    ]


def _gateway_rows(d0: DaemonProcess, tmp: Path, n: int, reps: int
                  ) -> list[tuple[str, str, str]]:
    """The gateway's HTML listing of a CIDv0 folder against ``ls`` via the CLI."""
    src = tmp / "v0"
    src.mkdir()
    build(src, _case(n, FOLDERS["basic"]))
    cid = run_cli(d0.home, "add", "-r", "--cid-version", "0", str(src),
                  timeout=600).stdout.decode().split()[-1]
    with d0.client() as c:
        url = f"{c.id()['gateway']}/ipfs/{cid}/"
    page = b""

    def listing() -> None:
        nonlocal page
        with urllib.request.urlopen(url, timeout=600) as resp:
            page = resp.read()

    gw_s, gw_cpu = _best(listing, reps, pid=d0.pid)
    if page.count(b"<tr>") < n:
        raise AssertionError(f"the gateway listed {page.count(b'<tr>')} rows of {n}")
    ls_s, ls_cpu = _best(lambda: run_cli(d0.home, "ls", cid, timeout=600), reps, pid=d0.pid)
    return [(f"gateway HTML listing, {n:,} files, basic dir, CIDv0", f"{n / gw_s:,.0f} entries/s",
             f"{ls_s / gw_s:.2f} x `ls` via CLI ({n / ls_s:,.0f} entries/s, process start "
             f"included); daemon {gw_cpu / n * 1e6:,.0f} us CPU/entry, "
             f"`ls` {ls_cpu / n * 1e6:,.0f}")]


def run(n: int = FILES, reps: int = REPS) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory(prefix="pinfold-bench-") as d:
        tmp = Path(d)
        d0 = DaemonProcess(tmp, "bench")
        d0.start()
        try:
            for kind in FOLDERS:
                rows += _folder_rows(d0, tmp, kind, n, reps)
            rows += _gateway_rows(d0, tmp, n, reps)
        finally:
            d0.stop()
            d0.kill9()
    return rows


if __name__ == "__main__":
    for row in run(int(sys.argv[1]) if len(sys.argv) > 1 else FILES):
        print(" | ".join(row), flush=True)
