"""The HTTP gateway against the CLI on one node (issue 15), both as processes:

- GET of a local file (1 GiB; ``BENCH_SIZE`` in MiB changes it) with curl,
  against ``pinfold cat`` of the same file: throughput ratio (target >= 0.5)
  and time to the first byte of each;
- ``?format=car`` of a DAG (the model folder when the model package is
  installed, else the same file) with curl, against ``pinfold dag export``:
  throughput ratio (target >= 0.5).

Each reader's standard output is a pipe drained here in 1 MiB reads, so both
sides pay the same for the bytes they deliver. Every read runs once to warm
the page cache, then once measured.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.support.daemon import DaemonProcess, cli_json, model_file  # noqa: E402
from tools.bench.node_bench import make_file  # noqa: E402

MiB = 1024 * 1024


def drain(cmd: list[str]) -> tuple[int, float, float]:
    """Run ``cmd``, read its stdout to the end: ``(bytes, seconds to first byte, seconds)``."""
    buf = bytearray(MiB)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, bufsize=0)
    assert proc.stdout is not None
    first = 0.0
    total = 0
    while n := proc.stdout.readinto(buf):
        if not total:
            first = time.perf_counter() - t0
        total += n
    rc = proc.wait()
    dt = time.perf_counter() - t0
    if rc != 0:
        raise RuntimeError(f"{cmd[0]} exited {rc}")
    return total, first, dt


def measured(cmd: list[str]) -> tuple[int, float, float]:
    drain(cmd)  # warm
    return drain(cmd)


def run(size_mib: int | None = None) -> list[tuple[str, str, str]]:
    size_mib = size_mib or int(os.environ.get("BENCH_SIZE", "1024"))
    curl = shutil.which("curl")
    if curl is None:
        return [("gateway", "skipped", "curl is not installed (make browser-deps)")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="pinfold-bench-") as d:
        tmp = Path(d)
        f = tmp / "random.bin"
        make_file(f, size_mib * MiB)
        with DaemonProcess(tmp, "bench") as node:
            cli = [sys.executable, "-m", "pinfold.daemon.cli", "--home", str(node.home)]
            cid = cli_json(node.home, "add", str(f), timeout=1200)["cid"]
            with node.client() as c:
                url = c.id()["gateway"]
            n_cat, ttfb_cat, t_cat = measured([*cli, "cat", cid])
            n_gw, ttfb_gw, t_gw = measured([curl, "-sS", "-f", f"{url}/ipfs/{cid}"])
            assert n_cat == n_gw == size_mib * MiB, (n_cat, n_gw)
            cat_mbs, gw_mbs = n_cat / MiB / t_cat, n_gw / MiB / t_gw
            rows.append((f"gateway GET {size_mib} MiB local file (curl)", f"{gw_mbs:,.0f} MB/s",
                         f"{gw_mbs / cat_mbs:.2f} x `pinfold cat` ({cat_mbs:,.0f} MB/s); "
                         "target >= 0.5"))
            rows.append(("time to first byte", f"gateway {ttfb_gw * 1000:,.0f} ms",
                         f"`pinfold cat` {ttfb_cat * 1000:,.0f} ms (process start included)"))
            model = model_file()
            if model is not None:
                folder = tmp / "model"
                folder.mkdir()
                shutil.copy(model, folder / model.name)
                dag = cli_json(node.home, "add", "-r", str(folder), timeout=1200)["cid"]
                what = f"the model folder ({model.stat().st_size // MiB} MiB)"
            else:
                dag, what = cid, f"the {size_mib} MiB file"
            n_exp, _, t_exp = measured([*cli, "dag", "export", dag])
            n_car, _, t_car = measured([curl, "-sS", "-f", f"{url}/ipfs/{dag}?format=car"])
            exp_mbs, car_mbs = n_exp / MiB / t_exp, n_car / MiB / t_car
            rows.append((f"gateway ?format=car of {what}", f"{car_mbs:,.0f} MB/s",
                         f"{car_mbs / exp_mbs:.2f} x `pinfold dag export` ({exp_mbs:,.0f} MB/s);"
                         f" {n_car:,} vs {n_exp:,} bytes; target >= 0.5"))
    return rows


if __name__ == "__main__":
    for row in run(int(sys.argv[1]) if len(sys.argv) > 1 else None):
        print(" | ".join(row))
