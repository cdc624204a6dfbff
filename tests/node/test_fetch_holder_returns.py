"""A transfer whose only holder leaves mid-file waits for a peer instead of
failing with "no peer is connected": the holder restarts, is connected again,
and the transfer ends with every byte (as ``pin add`` does).

Real daemons in subprocesses; the holder is killed with SIGKILL and started
again from its home (same peer ID, same store).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from pinfold.blockstore.unixfs import ImportParams, import_bytes

from tests.support.daemon import DaemonProcess, cli_json, metric, stop_all
from tests.support.wait import wait_until


def test_cat_waits_for_its_only_holder_to_come_back_and_returns_every_byte(
        tmp_path: Path) -> None:
    # 256 leaves of 64 KiB under 16 interior nodes. The reader wants a node's
    # leaves when it reaches that node, and an unread stream stops it once the
    # RPC reply window (4 MiB) is full: about a quarter of the way in.
    data = os.urandom(16 * 1024 * 1024)
    blocks, root, _ = import_bytes(data, ImportParams(chunk_size=64 * 1024, max_links=16))
    holder = DaemonProcess(tmp_path, "holder").start()
    fetcher = DaemonProcess(tmp_path, "fetcher").start()
    started, resume = threading.Event(), threading.Event()
    out: list[bytes] = []
    errors: list[BaseException] = []

    def read() -> None:
        try:
            with fetcher.client() as c:
                chunks = c.cat(str(root), timeout=120)
                out.append(next(chunks))
                started.set()
                resume.wait(60)
                out.extend(chunks)
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)
            started.set()

    t = threading.Thread(target=read)
    try:
        with holder.client() as h:
            for cid, block in blocks:
                h.block_put(block, codec="raw" if cid.codec.code == 0x55 else "dag-pb")
        cli_json(fetcher.home, "peers", "connect", cli_json(holder.home, "id")["addresses"][0])
        t.start()
        assert started.wait(60) and not errors, errors

        def wants() -> float:
            return metric(fetcher, "pinfold_bitswap_wantlist_entries", side="local")

        # The reader stops when the reply window is full (past the first 4 MiB
        # of leaves) with every block it wanted so far stored.
        wait_until(lambda: cli_json(fetcher.home, "repo", "stat")["blocks"] >= 17 + 64
                   and wants() == 0, timeout_s=60, what="the cat to stop on its reply window")
        holder.kill9()

        def alone() -> bool:
            with fetcher.client() as c:
                return not list(c.peers())
        wait_until(alone, timeout_s=30, what="the fetcher to see its only holder gone")
        stored = cli_json(fetcher.home, "repo", "stat")["blocks"]
        assert stored < len(blocks) and wants() == 0, stored
        # Read on: the reader reaches the first leaf it lacks with no peer connected.
        resume.set()
        wait_until(lambda: not t.is_alive() or wants() > 0, timeout_s=30,
                   what="the cat to want a block the holder did not send")
        holder.start()
        cli_json(fetcher.home, "peers", "connect", cli_json(holder.home, "id")["addresses"][0])
        t.join(120)
        assert not t.is_alive(), "the cat did not end after its holder came back"
        assert not errors, errors
        assert b"".join(out) == data
    finally:
        resume.set()
        t.join(60)
        stop_all([fetcher, holder])
