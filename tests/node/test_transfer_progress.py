"""Progress of transfers: the daemon streams progress events to clients that ask
(``on_progress=``), with byte counts that only grow and end at the total read
from the root's UnixFS sizes; the CLI draws them as a bar on a terminal's
stderr and prints nothing extra when stderr is piped (``cat``'s stdout stays
byte-exact either way). A resumed transfer (part of the DAG stored already)
reports the local part apart (``local_bytes``), so its rate counts only what
peers sent.

Real daemons in subprocesses: a holder and fresh fetchers connected to it,
and a real pseudo-terminal for the bar.
"""

from __future__ import annotations

import os
import pty
import random
import select
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import DaemonProcess, cli_json, run_cli

SIZE = 3 * 1024 * 1024 + 12345  # several 256 KiB leaves and a partial one


@pytest.fixture(scope="module")
def holder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DaemonProcess, str, bytes]]:
    """A daemon holding ``SIZE`` random bytes: ``(daemon, cid, data)``."""
    root = tmp_path_factory.mktemp("holder")
    data = random.Random(7).randbytes(SIZE)
    with DaemonProcess(root, "holder") as d:
        cid = run_cli(d.home, "add", "--chunk-size", str(256 * 1024), "-",
                      input=data).stdout.decode().strip()
        yield d, cid, data


@pytest.fixture
def fetcher(tmp_path: Path, holder: tuple[DaemonProcess, str, bytes]) -> Iterator[DaemonProcess]:
    """A fresh daemon connected to the holder, holding nothing."""
    with DaemonProcess(tmp_path, "fetcher") as d:
        addr = cli_json(holder[0].home, "id")["addresses"][0]
        cli_json(d.home, "peers", "connect", addr)
        yield d


def _dag(d: DaemonProcess, cid: str) -> list[int]:
    """The sizes of the DAG's blocks, each once (as ``dag export`` writes them)."""
    from pinfold.blockstore.car import CarReader

    reader = CarReader()
    sizes: list[int] = []
    with d.client() as c:
        for chunk in c.dag_export(cid):
            sizes += [len(block) for _, block in reader.feed(chunk)]
    return sizes


def _dag_blocks(d: DaemonProcess, cid: str) -> list[tuple[Any, bytes]]:
    """The DAG's ``(CID, block)`` pairs, each once (as ``dag export`` writes them)."""
    from pinfold.blockstore.car import CarReader

    reader = CarReader()
    pairs: list[tuple[Any, bytes]] = []
    with d.client() as c:
        for chunk in c.dag_export(cid):
            pairs += reader.feed(chunk)
    return pairs


def _check_events(events: list[dict[str, Any]], total: int) -> None:
    assert events, "no progress event"
    done = [e["bytes"] for e in events]
    assert done == sorted(done), done  # counts only grow
    last = events[-1]
    assert last.get("done") is True
    assert last["bytes"] == last["total"] == total, last
    assert all(e["total"] in (None, total) for e in events)


def test_pin_progress_callback_gets_growing_bytes_ending_at_the_dag_total(
        holder: tuple[DaemonProcess, str, bytes], fetcher: DaemonProcess) -> None:
    d, cid, _ = holder
    events: list[dict[str, Any]] = []
    with fetcher.client() as c:
        c.pin(cid, on_progress=events.append, timeout=120)
    sizes = _dag(d, cid)
    _check_events(events, sum(sizes))
    last = events[-1]
    assert last["fetched_bytes"] >= sum(sizes) and last["peers"] == 1, last
    assert last["blocks"] == len(sizes)


def test_cat_progress_callback_gets_growing_bytes_ending_at_the_file_size(
        holder: tuple[DaemonProcess, str, bytes], fetcher: DaemonProcess) -> None:
    _, cid, data = holder
    events: list[dict[str, Any]] = []
    with fetcher.client() as c:
        got = b"".join(c.cat(cid, on_progress=events.append))
        assert got == data
        _check_events(events, SIZE)
        ranged: list[dict[str, Any]] = []
        assert b"".join(c.cat(cid, offset=1000, length=5000, on_progress=ranged.append)) \
            == data[1000:6000]
        _check_events(ranged, 5000)


def test_get_progress_callback_ends_at_the_dag_total(
        holder: tuple[DaemonProcess, str, bytes], fetcher: DaemonProcess,
        tmp_path: Path) -> None:
    d, cid, data = holder
    events: list[dict[str, Any]] = []
    with fetcher.client() as c:
        c.get(cid, tmp_path / "out", on_progress=events.append)
    assert (tmp_path / "out").read_bytes() == data
    _check_events(events, sum(_dag(d, cid)))


def test_no_events_without_a_callback(holder: tuple[DaemonProcess, str, bytes]) -> None:
    """A call that does not ask gets no progress frames (older clients stay unaffected)."""
    d, cid, data = holder
    with d.client() as c:
        stream = c.conn.stream("cat", {"cid": cid})
        items = list(stream)
        assert all(isinstance(i, bytes) for i in items) and b"".join(items) == data


def _run_with_stderr_on_a_terminal(args: list[str]) -> tuple[int, bytes, bytes]:
    """Run the CLI with stdout a pipe and stderr a real pseudo-terminal:
    ``(exit status, stdout bytes, what the terminal showed)``."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "pinfold.daemon.cli", *args],
                                stdout=subprocess.PIPE, stderr=slave,
                                env={**os.environ, "TERM": "xterm-256color", "COLUMNS": "120"})
        os.close(slave)
        shown = b""
        assert proc.stdout is not None
        out_fd = proc.stdout.fileno()
        out = b""
        open_fds = {master, out_fd}
        while open_fds:
            ready, _, _ = select.select(list(open_fds), [], [], 120)
            assert ready, "no output from the CLI"
            for fd in ready:
                try:
                    chunk = os.read(fd, 1 << 16)
                except OSError:  # EIO: the child closed the terminal
                    chunk = b""
                if not chunk:
                    open_fds.discard(fd)
                elif fd == master:
                    shown += chunk
                else:
                    out += chunk
        proc.stdout.close()
        return proc.wait(timeout=60), out, shown
    finally:
        os.close(master)


def test_cat_draws_a_bar_on_a_terminal_and_keeps_stdout_byte_exact(
        holder: tuple[DaemonProcess, str, bytes], fetcher: DaemonProcess) -> None:
    _, cid, data = holder
    status, out, shown = _run_with_stderr_on_a_terminal(
        ["--home", str(fetcher.home), "cat", cid])
    assert status == 0, shown
    assert out == data
    text = shown.decode(errors="replace")
    assert "cat" in text and "3.2/3.2 MB" in text and "MB/s" in text, text
    assert "from 1 peer" in text, text


def test_pin_add_draws_a_bar_on_a_terminal(holder: tuple[DaemonProcess, str, bytes],
                                           fetcher: DaemonProcess) -> None:
    _, cid, _ = holder
    status, out, shown = _run_with_stderr_on_a_terminal(
        ["--home", str(fetcher.home), "pin", "add", cid])
    text = shown.decode(errors="replace")
    assert status == 0, text
    assert out.decode().strip() == f"pinned {cid} recursive"
    assert "pin add" in text and "MB" in text and "from 1 peer" in text, text


def test_add_draws_a_bar_of_its_upload_on_a_terminal(fetcher: DaemonProcess,
                                                     tmp_path: Path) -> None:
    src = tmp_path / "up.bin"
    src.write_bytes(random.Random(3).randbytes(2_500_000))
    status, out, shown = _run_with_stderr_on_a_terminal(
        ["--home", str(fetcher.home), "add", str(src)])
    text = shown.decode(errors="replace")
    assert status == 0, text
    assert out.decode().strip().startswith("bafy")  # stdout: the CID alone
    assert "add" in text and "2.5/2.5 MB" in text, text


def test_nothing_extra_is_printed_when_stderr_is_piped(
        holder: tuple[DaemonProcess, str, bytes], fetcher: DaemonProcess,
        tmp_path: Path) -> None:
    _, cid, data = holder
    out = run_cli(fetcher.home, "cat", cid)
    assert out.stdout == data and out.stderr == b""
    out = run_cli(fetcher.home, "pin", "add", cid)
    assert out.stdout.decode().strip() == f"pinned {cid} recursive" and out.stderr == b""
    src = tmp_path / "f.bin"
    src.write_bytes(data[:100_000])
    out = run_cli(fetcher.home, "add", str(src))
    assert out.stderr == b"" and out.stdout.decode().count("\n") == 1


def test_get_of_a_remote_folder_writes_every_file_under_one_prefetcher(
        holder: tuple[DaemonProcess, str, bytes], fetcher: DaemonProcess,
        tmp_path: Path) -> None:
    """A folder of multi-block and one-block files, all on a peer: every file arrives
    whole (each file's wants are read by its own cat, one prefetcher for the tree)
    and the progress ends at the DAG's total."""
    d = holder[0]
    src = tmp_path / "src"
    rng = random.Random(11)
    files = {f"big-{i}.bin": rng.randbytes(600_000 + i) for i in range(3)}
    files |= {f"sub/small-{i}.txt": f"small {i}\n".encode() for i in range(20)}
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    cid = run_cli(d.home, "add", "-r", "--chunk-size", str(256 * 1024),
                  str(src)).stdout.decode().split()[-1]
    events: list[dict[str, Any]] = []
    with fetcher.client() as c:
        res = c.get(cid, tmp_path / "out", on_progress=events.append)
    assert res["files"] == len(files)
    for rel, data in files.items():
        assert (tmp_path / "out" / rel).read_bytes() == data, rel
    _check_events(events, sum(_dag(d, cid)))


@pytest.mark.parametrize("command", ["pin add", "get", "cat"])
def test_resumed_fetch_reports_local_bytes_apart_and_rates_only_fetched_bytes(
        holder: tuple[DaemonProcess, str, bytes], fetcher: DaemonProcess,
        tmp_path: Path, command: str) -> None:
    """Half the file's leaves are on the fetcher before the transfer (an interrupted
    fetch): the events count them as ``local_bytes`` from the first event that
    reaches them, and the bytes left once they are taken off (what a rate is
    computed from) never exceed what arrived from peers."""
    from pinfold.blockstore.cid import RAW

    d, cid, data = holder
    blocks = _dag_blocks(d, cid)
    leaves = [(c, b) for c, b in blocks if c.codec.code == RAW]
    assert len(leaves) >= 8, "the file should have many raw leaves"
    stored = leaves[: len(leaves) // 2]
    local = sum(len(b) for _, b in stored)
    events: list[dict[str, Any]] = []
    with fetcher.client() as c:
        for leaf, block in stored:
            assert c.block_put(block)["cid"] == str(leaf)
        if command == "pin add":
            c.pin(cid, on_progress=events.append, timeout=120)
        elif command == "get":
            c.get(cid, tmp_path / "out", on_progress=events.append)
            assert (tmp_path / "out").read_bytes() == data
        else:
            assert b"".join(c.cat(cid, on_progress=events.append)) == data
    total = SIZE if command == "cat" else sum(len(b) for _, b in blocks)
    _check_events(events, total)
    last = events[-1]
    assert last["local_bytes"] == local, last
    assert last["bytes"] - last["local_bytes"] == total - local, last
    for ev in events:
        assert 0 <= ev["local_bytes"] <= min(local, ev["bytes"]), ev
        # The rate's numerator: only bytes peers sent in this run.
        assert ev["bytes"] - ev["local_bytes"] <= ev["fetched_bytes"], ev


def test_bar_of_a_resumed_fetch_starts_at_the_local_bytes_and_rates_only_fetched_ones(
        capsys: pytest.CaptureFixture[str]) -> None:
    """An event of 3 MB done of which 2 MB were local, after 2 s: the bar shows 3 MB
    done, 500 kB/s (1 MB moved in 2 s, not 1.5 MB/s) and 0:00:04 left for 2 MB."""
    from pinfold.daemon.cli.progressbar import TransferBar

    with TransferBar("pin add", enabled=True) as bar:
        bar.on_event({"bytes": 3_000_000, "local_bytes": 2_000_000, "total": 5_000_000,
                      "blocks": 12, "fetched_bytes": 1_000_000, "peers": 1,
                      "elapsed_s": 2.0})
        task = bar._progress.tasks[0]
        assert task.completed == 3_000_000
        assert task.fields["rate"] == "500.0 kB/s", task.fields
        assert task.fields["eta"] == "0:00:04", task.fields
        assert task.fields["peers"] == "from 1 peer, 2.0 MB local", task.fields
