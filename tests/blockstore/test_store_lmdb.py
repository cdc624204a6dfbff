"""``LmdbBlockStore`` specifics: persistence, map growth, full store, locking, concurrency."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import lmdb
import pytest
from pinfold.blockstore.cid import cid_key
from pinfold.blockstore.errors import BlockstoreError, StoreFull, StoreGone, StoreLocked
from pinfold.blockstore.lmdbstore import LOCK_FILE, LmdbBlockStore

from tests.support.blockstore_conformance import block

MiB = 1024 * 1024


def open_store(path: Path, **kw) -> LmdbBlockStore:
    kw.setdefault("max_size_bytes", 256 * MiB)
    kw.setdefault("initial_map_bytes", MiB)
    return LmdbBlockStore(path, **kw)


def test_everything_persists_across_reopen(tmp_path: Path) -> None:
    blocks = [block(i, size=5000) for i in range(30)]
    cids = [c for c, _ in blocks]
    with open_store(tmp_path) as s:
        s.put_many(blocks)
        rec = s.pin_add(cids[0], recursive=True, blocks=cids[:10], name="n", metadata={"a": "b"})
        s.pin_add(cids[5], recursive=False)
        db = s.open_db(b"cluster_pinset")
        s.write(lambda t: t.db_put(db, b"key", b"value"))
    with open_store(tmp_path, sync=False) as s:
        assert all(s.get(c) == d for c, d in blocks)
        assert s.pin_get(cids[0]) == rec
        assert s.refcount(cids[5]) == 2 and s.refcount(cids[9]) == 1 and s.refcount(cids[10]) == 0
        assert s.pin_counts() == {"recursive": 1, "direct": 1}
        st = s.stat()
        assert (st.blocks, st.bytes) == (30, 150_000)
        db = s.open_db(b"cluster_pinset")
        assert s.open_db(b"cluster_pinset") is db
        assert s.read(lambda t: t.db_get(db, b"key")) == b"value"
        with pytest.raises(RuntimeError, match="inside a transaction"):
            s.read(lambda t: s.open_db(b"another"))
        assert s.check_refcounts() == {}
        assert s.gc().blocks_freed == 20


def test_files_and_modes(tmp_path: Path) -> None:
    path = tmp_path / "home" / "store"
    with open_store(path):
        assert (path / "data.mdb").exists() and (path / LOCK_FILE).exists()
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(path / "data.mdb").st_mode) == 0o600
        assert (path / LOCK_FILE).read_text().strip() == str(os.getpid())


def test_store_id_survives_reopen_and_copy_but_not_a_new_store(tmp_path: Path) -> None:
    with open_store(tmp_path / "a") as s:
        sid = s.store_id
        s.put_many([block(1)])
    # The README's hot-backup copy.
    (tmp_path / "copy").mkdir()
    env = lmdb.open(str(tmp_path / "a"), readonly=True, lock=False)
    try:
        env.copy(str(tmp_path / "copy"), compact=True)
    finally:
        env.close()
    assert len(sid) == 32
    with open_store(tmp_path / "a") as s, open_store(tmp_path / "copy") as c:
        assert s.store_id == c.store_id == sid
    with open_store(tmp_path / "b") as other:
        assert other.store_id != sid


@pytest.mark.parametrize("how", ["removed", "replaced"])
def test_store_whose_files_go_away_refuses_writes_keeps_reads(tmp_path: Path, how: str) -> None:
    path = tmp_path / "store"
    kept = block(1)
    with open_store(path) as s:
        s.put_many([kept])
        s.check_files()
        data = path / "data.mdb"
        if how == "removed":
            data.unlink()
        else:
            copy = path / "data.copy"
            copy.write_bytes(data.read_bytes())
            os.replace(copy, data)
        with pytest.raises(StoreGone, match=f"{data}"):
            s.check_files()
        with pytest.raises(StoreGone):
            s.put_many([block(2)])  # refused before the commit, not written into a lost file
        assert s.get(kept[0]) == kept[1]
        assert s.statistics().commits == 1


def test_map_grows_geometrically_on_demand(tmp_path: Path) -> None:
    with open_store(tmp_path, initial_map_bytes=MiB) as s:
        assert s.stat().map_size_bytes == MiB
        blocks = [block(i, size=512 * 1024) for i in range(40)]  # 20 MiB
        for i in range(0, 40, 4):
            s.put_many(blocks[i : i + 4])
        st = s.stat()
        # put_many tells the store its size: the map grows ahead, nothing is redone
        assert 3 <= s.statistics().map_resizes <= 6 and s.statistics().rollbacks == 0
        assert 20 * MiB <= st.map_size_bytes <= 64 * MiB
        assert st.map_used_bytes <= st.map_size_bytes
        assert all(s.get(c) == d for c, d in blocks)
        # a write of unknown size hits MDB_MAP_FULL, grows, and is run again
        more = [block(100 + i, size=512 * 1024) for i in range(80)]  # 40 MiB
        size_before = st.map_size_bytes
        assert s.write(lambda t: t.put_many(more)) == 80 * 512 * 1024
        assert s.statistics().rollbacks >= 1
        assert s.stat().map_size_bytes >= 2 * size_before
        assert all(s.get(c) == d for c, d in more)


def test_existing_bigger_database_opens_with_a_small_initial_map(tmp_path: Path) -> None:
    blocks = [block(i, size=MiB) for i in range(8)]
    with open_store(tmp_path) as s:
        s.put_many(blocks)
    with open_store(tmp_path, initial_map_bytes=MiB) as s:
        st = s.stat()
        assert st.map_size_bytes >= st.map_used_bytes >= 8 * MiB  # LMDB raises it to the data
        assert all(s.get(c) == d for c, d in blocks)
        s.put_many([block(100 + i, size=MiB) for i in range(4)])  # and it grows from there
        assert s.stat().blocks == 12


def test_full_store_refuses_keeps_committed_data_and_recovers(tmp_path: Path) -> None:
    s = open_store(tmp_path, max_size_bytes=4 * MiB, initial_map_bytes=MiB)
    committed = []
    with pytest.raises(StoreFull) as info:
        for i in range(100):
            b = block(i, size=256 * 1024)
            s.put_many([b])
            committed.append(b)
    assert "full" in str(info.value) and "max_size_bytes" in str(info.value)
    assert 5 <= len(committed) < 16
    assert s.statistics().store_full == 1
    assert not s.has(block(len(committed), size=256 * 1024)[0])
    # everything committed is intact; reads work on the full store
    assert all(s.get(c) == d for c, d in committed)
    assert s.verify().corrupt == ()
    st = s.stat()
    assert st.blocks == len(committed) and st.map_size_bytes <= 4 * MiB
    # pins, unpins, deletes and GC still work on a full store
    keep = [c for c, _ in committed[:2]]
    s.pin_add(keep[0], recursive=True, blocks=keep)
    assert s.delete(committed[-1][0])
    assert s.gc().blocks_freed == len(committed) - 3
    assert all(s.has(c) for c in keep)
    # and the freed space takes new blocks again
    fresh = [block(1000 + i, size=256 * 1024) for i in range(4)]
    assert s.put_many(fresh) == 4 * 256 * 1024
    s.close()
    with open_store(tmp_path, max_size_bytes=4 * MiB) as s:
        assert all(s.get(c) == d for c, d in fresh)
        assert s.check_refcounts() == {}


def test_store_full_rolls_back_the_whole_call(tmp_path: Path) -> None:
    with open_store(tmp_path, max_size_bytes=2 * MiB, initial_map_bytes=MiB) as s:
        first = [block(i, size=100_000) for i in range(3)]
        s.put_many(first)
        batch = [block(100 + i, size=400_000) for i in range(6)]  # 2.4 MiB
        with pytest.raises(StoreFull):
            s.put_many(batch)
        assert not any(s.has(c) for c, _ in batch)
        assert s.stat().blocks == 3 and s.stat().bytes == 300_000


def test_second_store_in_process_is_locked(tmp_path: Path) -> None:
    with open_store(tmp_path) as s:
        with pytest.raises(StoreLocked) as info:
            open_store(tmp_path)
        assert f"pid {os.getpid()}" in str(info.value)
        s.put_many([block(1)])  # the first store is unaffected
    with open_store(tmp_path) as s:  # released on close
        assert s.has(block(1)[0])


def test_second_process_gets_store_locked(tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "from pinfold.blockstore.lmdbstore import LmdbBlockStore\n"
        "from pinfold.blockstore.errors import StoreLocked\n"
        "try:\n"
        "    LmdbBlockStore(sys.argv[1], max_size_bytes=1 << 24)\n"
        "except StoreLocked as exc:\n"
        "    print(exc.code, exc)\n"
        "    sys.exit(3)\n"
    )
    with open_store(tmp_path):
        proc = subprocess.run(
            [sys.executable, "-c", script, str(tmp_path)],
            capture_output=True, text=True, timeout=60, check=False,
        )
        assert proc.returncode == 3, proc.stderr
        assert proc.stdout.startswith("store_locked")
        assert f"pid {os.getpid()}" in proc.stdout and "another pinfold daemon" in proc.stdout
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_not_a_store_and_wrong_format(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "data.mdb").write_bytes(b"this is not lmdb" * 1000)
    with pytest.raises(BlockstoreError, match="cannot open the LMDB blockstore"):
        open_store(bad)
    other = tmp_path / "other"
    with open_store(other):
        pass
    env = lmdb.open(str(other), max_dbs=8)
    meta = env.open_db(b"meta")
    with env.begin(write=True) as txn:
        txn.put(b"format", b"99", db=meta)
    env.close()
    with pytest.raises(BlockstoreError, match="format"):
        open_store(other)
    with pytest.raises(ValueError, match="max_size_bytes"):
        LmdbBlockStore(tmp_path / "tiny", max_size_bytes=1000)


def test_readers_run_during_map_growth(tmp_path: Path) -> None:
    """Map resizes invalidate py-lmdb transactions; the gate keeps readers safe."""
    with open_store(tmp_path, initial_map_bytes=MiB) as s:
        seed = [block(i, size=1000) for i in range(50)]
        s.put_many(seed)
        errors: list[BaseException] = []
        done = threading.Event()
        reads = [0]

        def reader() -> None:
            try:
                while not done.is_set():
                    for c, d in seed:
                        assert s.get(c) == d
                    assert sum(1 for _ in s.iter_keys()) >= 50
                    reads[0] += 1
            except Exception as exc:  # noqa: BLE001 - reported by the assert below
                errors.append(exc)

        threads = [threading.Thread(target=reader) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            for i in range(48):
                s.put_many([block(10_000 + i, size=512 * 1024)])
        finally:
            done.set()
            for t in threads:
                t.join()
        assert errors == []
        assert s.statistics().map_resizes >= 4 and reads[0] > 0


def test_reads_do_not_wait_for_a_running_write(tmp_path: Path) -> None:
    with open_store(tmp_path) as s:
        a = block(1)
        s.put_many([a])
        inside = threading.Event()
        release = threading.Event()

        def slow_write(txn) -> None:
            txn.put_many([block(2)])
            inside.set()
            release.wait(10)

        writer = threading.Thread(target=s.write, args=(slow_write,))
        writer.start()
        try:
            assert inside.wait(10)
            started = time.monotonic()
            assert s.get(a[0]) == a[1]  # MVCC: the reader is not blocked
            assert not s.has(block(2)[0])  # and sees only committed data
            assert time.monotonic() - started < 5
        finally:
            release.set()
            writer.join()
        assert s.has(block(2)[0])


def test_big_pin_keeps_its_block_set(tmp_path: Path) -> None:
    with open_store(tmp_path) as s:
        blocks = [block(i, size=50) for i in range(3000)]
        s.put_many(blocks)
        cids = [c for c, _ in blocks]
        rec = s.pin_add(cids[0], recursive=True, blocks=cids)
        assert rec.blocks == 3000 and rec.bytes == 150_000
        assert s.recount() == {cid_key(c): 1 for c in cids}
        s.pin_rm(cids[0])
        assert s.recount() == {} and s.check_refcounts() == {}
        assert s.gc().blocks_freed == 3000 and s.stat().bytes == 0


def test_rollbacks_do_not_stall_behind_busy_readers(tmp_path: Path) -> None:
    """py-lmdb 3.0's write-txn abort starves under concurrent gets unless readers are held off."""
    with open_store(tmp_path) as s:
        seed = [block(i, size=1000) for i in range(50)]
        s.put_many(seed)
        done = threading.Event()

        def reader() -> None:
            while not done.is_set():
                for c, _ in seed:
                    s.get(c)

        threads = [threading.Thread(target=reader) for _ in range(3)]
        for t in threads:
            t.start()
        worst = 0.0

        def fails(txn) -> None:
            txn.put_many([block(777, size=500_000)])
            raise LookupError("roll me back")

        try:
            for _ in range(10):
                started = time.monotonic()
                with pytest.raises(LookupError):
                    s.write(fails)
                worst = max(worst, time.monotonic() - started)
        finally:
            done.set()
            for t in threads:
                t.join()
        assert worst < 5.0, f"a rollback took {worst:.1f} s"
        assert s.statistics().rollbacks == 10 and not s.has(block(777, size=500_000)[0])
