"""``LmdbBlockStore``: the daemon's block store, one LMDB environment.

Named databases (DESIGN.md "Blockstore"; tables described in ``txn``):

========== ============================ =====================================
name       key                          value
========== ============================ =====================================
blocks     multihash                    block bytes (<= 2 MiB)
refcounts  multihash                    pins holding the block, uint64 BE
pins       root multihash               msgpack ``PinRecord``
pin_blocks root multihash (dupsort)     each distinct block multihash held
meta       b"format", b"bytes"          format version; total block bytes
========== ============================ =====================================

plus the tables upper layers open with :meth:`LmdbBlockStore.open_db`.

Concurrency. One write transaction at a time, run on the calling thread
(a ``threading.Lock``; the trio daemon calls from ``BatchWriter``'s single
``to_thread`` call). Reads are short read transactions: LMDB's MVCC means they
never wait for the writer. The exception is map growth: py-lmdb's
``set_mapsize`` invalidates every open transaction of the process, so a
read/resize gate lets readers share the map and makes a resize wait until
running reads end (reads started meanwhile wait for the resize, milliseconds;
``lmdbgate.ResizeGate``). A transaction's table primitives are ``lmdbtxn.LmdbTxn``.
No public iterator holds a read transaction between items.

Space. The map starts at ``initial_map_bytes`` and doubles whenever a write
hits ``MDB_MAP_FULL`` (the transaction is aborted and re-run on the bigger
map), up to ``max_size_bytes``. Puts stop at ``max_size_bytes`` minus a
reserve (1/8 of it, at most 16 MiB) with ``StoreFull``; writes that free space
(delete, unpin, GC) may use the reserve, because LMDB needs fresh pages even
to delete. A full disk (``ENOSPC``, or EIO from a short write while the disk
is full) is ``StoreFull`` as well. Either way the transaction is rolled back,
every committed block stays intact, and the next write tries again: the store
recovers by itself once space is freed. ``StoreFull`` messages say what is
full, how full, and what to do.

Durability. ``sync=True`` (the default) flushes each commit to disk before
returning. ``sync=False`` opens LMDB with ``MDB_NOSYNC``: commits return
before the data reaches the disk, which is several times faster for small
batches; a process crash (even SIGKILL) still loses nothing, but a power loss
or kernel crash may lose the last commits (LMDB keeps the database consistent
on filesystems that preserve write order, since pinfold does not use
``writemap``).

Identity. Each environment gets a random ``store_id`` when it is created
(kept in ``meta``; copies and backups keep it), so the daemon can tell its
own store from a new empty one made in its place. :meth:`check_files`
compares ``data.mdb`` and ``lock.mdb`` with the files opened (device and
inode); every commit runs it first, so a store removed or replaced on disk
refuses writes with ``StoreGone`` instead of writing into an unlinked file.

Exclusivity. Unless ``lock=False``, the store takes an exclusive ``flock`` on
``pinfold.lock`` beside ``data.mdb``; a second process (a second daemon on the
same home) gets ``StoreLocked``. The kernel drops the lock when the process
dies, so a killed daemon never leaves a stale lock.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final, TypeVar

import lmdb

from pinfold.blockstore.errors import BlockstoreError, StoreClosed, StoreFull, StoreGone, StoreLocked
from pinfold.blockstore.lmdbgate import ResizeGate
from pinfold.blockstore.lmdbtxn import LmdbTxn, u64
from pinfold.blockstore.store import StoreStat
from pinfold.blockstore.txn import DbHandle, StoreTxn, TxnBlockStore, check_db_name

__all__ = ["LOCK_FILE", "LmdbBlockStore"]

T = TypeVar("T")

MiB: Final = 1024 * 1024
#: The lock file taken with ``flock`` beside ``data.mdb``.
LOCK_FILE: Final = "pinfold.lock"
#: Smallest ``max_size_bytes`` accepted (the config asks for >= 16 MiB; tests
#: of a full store go lower).
MIN_MAX_SIZE: Final = 1 * MiB
#: Room for the store's 5 databases and upper layers' tables.
_MAX_DBS: Final = 32
_FORMAT: Final = b"1"
_RESERVE_MAX: Final = 16 * MiB
#: The environment's files that ``check_files`` watches.
_ENV_FILES: Final = ("data.mdb", "lock.mdb")
_PAGE: Final = mmap.PAGESIZE
#: A failed commit with less free disk than its size plus this is "disk full".
_DISK_SLACK: Final = 8 * MiB


def _size(n: int) -> str:
    """``n`` bytes for people: ``512 bytes``, ``12.0 MiB``, ``1.5 GiB``."""
    if n < 1024:
        return f"{n} bytes"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
    raise AssertionError("unreachable")


def _round_pages(n: int) -> int:
    return -(-n // _PAGE) * _PAGE



class LmdbBlockStore(TxnBlockStore):
    """The block store in one LMDB environment (see the module docstring).

    Args:
        path: the environment's directory (created if missing, mode 0700);
            holds ``data.mdb``, ``lock.mdb`` and ``pinfold.lock``.
        max_size_bytes: ceiling the map may grow to, bytes (>= 1 MiB).
        sync: flush every commit to disk (False: ``MDB_NOSYNC``, see above).
        initial_map_bytes: starting map size, bytes (an existing larger
            database keeps its size).
        lock: take the exclusive ``flock`` (False only for tools that know no
            other process writes).
        clock: source of pin ``created_at`` times, unix seconds.

    Raises:
        StoreLocked: another process has the store open.
        BlockstoreError: ``path`` holds something that is not a pinfold LMDB
            store, or a store of another format version.
        ValueError: sizes out of range.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        max_size_bytes: int,
        sync: bool = True,
        initial_map_bytes: int = 64 * MiB,
        lock: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(clock=clock)
        if max_size_bytes < MIN_MAX_SIZE:
            raise ValueError(f"max_size_bytes must be >= {MIN_MAX_SIZE}, got {max_size_bytes}")
        if initial_map_bytes <= 0:
            raise ValueError(f"initial_map_bytes must be > 0, got {initial_map_bytes}")
        self.path = Path(path)
        self.sync = sync
        self._max_size = _round_pages(max_size_bytes)
        self._put_cap = self._max_size - _round_pages(min(self._max_size // 8, _RESERVE_MAX))
        self._write_lock = threading.Lock()
        self._gate = ResizeGate()
        self._local = threading.local()  # .txn: this thread's running write transaction
        self._tables: dict[bytes, DbHandle] = {}
        self._freed_last = False  # the last commit freed space (delete, unpin, GC)
        self._closed = False
        self._lock_fd: int | None = None
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if lock:
            self._lock_fd = _take_lock(self.path / LOCK_FILE)
        try:
            self._env = self._open_env(min(_round_pages(initial_map_bytes), self._put_cap))
            self._files = {name: _file_id(self.path / name) for name in _ENV_FILES}
        except BaseException:
            self._release_lock()
            raise
        self._gone: str | None = None

    def _open_env(self, map_size: int) -> lmdb.Environment:
        try:
            env = lmdb.open(
                str(self.path),
                map_size=map_size,
                subdir=True,
                sync=self.sync,
                mode=0o700,
                max_dbs=_MAX_DBS,
                max_readers=256,
            )
        except lmdb.Error as exc:
            raise BlockstoreError(f"cannot open the LMDB blockstore at {self.path}: {exc}") from exc
        try:
            env.reader_check()  # clear reader slots of dead processes
            self._db_blocks = env.open_db(b"blocks")
            self._db_refcounts = env.open_db(b"refcounts")
            self._db_pins = env.open_db(b"pins")
            self._db_pin_blocks = env.open_db(b"pin_blocks", dupsort=True)
            self._db_meta = env.open_db(b"meta")
            with env.begin(write=True) as txn:
                fmt = txn.get(b"format", db=self._db_meta)
                if fmt is None:
                    txn.put(b"format", _FORMAT, db=self._db_meta)
                    txn.put(b"bytes", u64(0), db=self._db_meta)
                elif fmt != _FORMAT:
                    raise BlockstoreError(
                        f"blockstore at {self.path} has format {fmt!r}; "
                        f"this pinfold reads format {_FORMAT!r}"
                    )
                store_id = txn.get(b"store_id", db=self._db_meta)
                if store_id is None:  # a new store, or one made before store IDs
                    store_id = os.urandom(16)
                    txn.put(b"store_id", store_id, db=self._db_meta)
                self.store_id: str = bytes(store_id).hex()
        except BaseException:
            env.close()
            raise
        return env

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # drops the flock
            self._lock_fd = None

    # ---- transactions ----------------------------------------------------------

    def _read(self, fn: Callable[[StoreTxn], T]) -> T:
        current = getattr(self._local, "txn", None)
        if current is not None:  # inside write(fn) on this thread: join it
            return fn(current)
        while True:
            with self._gate.shared():
                if self._closed:
                    raise StoreClosed(f"the blockstore at {self.path} is closed")
                try:
                    txn = self._env.begin(buffers=True)
                except lmdb.MapResizedError:
                    pass  # another process grew the map: adopt it below, then retry
                else:
                    try:
                        return fn(LmdbTxn(self, txn, writable=False))
                    finally:
                        txn.abort()
            with self._write_lock, self._gate.exclusive():
                self._env.set_mapsize(0)

    def _write(
        self, fn: Callable[[StoreTxn], T], *, freeing: bool = False, size_hint: int = 0
    ) -> T:
        current = getattr(self._local, "txn", None)
        if current is not None:  # inside write(fn) on this thread: join it
            return fn(current)
        with self._write_lock:
            while True:
                if self._closed:
                    raise StoreClosed(f"the blockstore at {self.path} is closed")
                if size_hint:
                    self._make_room(size_hint)
                    size_hint = 0
                txn = self._env.begin(write=True, buffers=True)
                wtxn = self._local.txn = LmdbTxn(self, txn, writable=True)
                try:
                    result = fn(wtxn)
                    if wtxn.bytes_delta:
                        total = int.from_bytes(txn.get(b"bytes", db=self._db_meta), "big")
                        txn.put(b"bytes", u64(total + wtxn.bytes_delta), db=self._db_meta)
                    self.check_files()
                    txn.commit()
                except lmdb.MapFullError:
                    self._abort(txn)
                    self._rollbacks += 1
                    self._grow(freeing=freeing)
                    continue
                except lmdb.Error as exc:
                    # ENOSPC mid-commit reaches us as DiskError, or as EIO when
                    # LMDB's pwrite came up short; the free space tells them apart.
                    self._abort(txn)
                    self._rollbacks += 1
                    disk_full = self._disk_full_error(wtxn.bytes_delta)
                    if disk_full is None and not isinstance(exc, lmdb.DiskError):
                        raise BlockstoreError(
                            f"cannot write the blockstore at {self.path}: {exc}"
                        ) from exc
                    self._store_full += 1
                    raise disk_full or StoreFull(
                        f"disk full: cannot write the blockstore at {self.path} ({exc}); "
                        "free disk space there or run `pinfold repo gc` (writes resume "
                        "by themselves once there is room)"
                    ) from exc
                except BaseException:
                    self._abort(txn)
                    self._rollbacks += 1
                    raise
                finally:
                    wtxn.writable = False
                    self._local.txn = None
                self._commits += 1
                self._freed_last = freeing
                return result

    def check_files(self) -> None:
        """Check that ``data.mdb`` and ``lock.mdb`` are still the files this store opened.

        Two ``stat`` calls. Once a check fails, every later one (and every
        write) fails the same way.

        Raises:
            StoreGone: a file is missing, or another file (device, inode) is
                in its place; the message names the path and what changed.
        """
        if self._gone is None:
            for name, opened in self._files.items():
                path = self.path / name
                try:
                    now = _file_id(path)
                except FileNotFoundError:
                    self._gone = f"{path} is missing"
                    break
                except OSError as exc:
                    self._gone = f"{path} cannot be checked: {exc.strerror or exc}"
                    break
                if now != opened:
                    self._gone = f"{path} is another file than the one opened"
                    break
        if self._gone is not None:
            raise StoreGone(
                f"the blockstore at {self.path} was removed or replaced while open "
                f"({self._gone}); writes are refused, since they would be lost"
            )

    def _abort(self, txn: lmdb.Transaction) -> None:
        """Abort a write transaction with the readers held off.

        py-lmdb 3.0's ``abort`` of a write transaction contends with every
        concurrent ``get`` for the environment's internal lock and was measured
        to stall for tens of seconds under three busy reader threads; behind the
        gate it takes microseconds.
        """
        if self._gate.held():  # a write from inside read(fn): cannot wait for ourselves
            txn.abort()
            return
        with self._gate.exclusive():
            txn.abort()

    def _disk_full_error(self, nbytes: int) -> StoreFull | None:
        """``StoreFull`` describing the disk if it has no room for ``nbytes`` more, else None."""
        try:
            st = os.statvfs(self.path)
        except OSError:
            return None
        # root may use the blocks reserved for it (ext4's 5 %), others may not.
        free = (st.f_bfree if os.geteuid() == 0 else st.f_bavail) * st.f_frsize
        total = st.f_blocks * st.f_frsize
        if free >= max(nbytes, 0) + _DISK_SLACK:
            return None
        return StoreFull(
            f"disk full: the filesystem holding the blockstore at {self.path} has "
            f"{_size(free)} free of {_size(total)}; free disk space there or run "
            "`pinfold repo gc` to reuse space inside the store (writes resume by "
            "themselves once there is room)"
        )

    def _make_room(self, nbytes: int) -> None:
        """Grow the map ahead of a write of about ``nbytes``, up to the put cap.

        Counts only the map's high-water mark, not free pages inside it, so
        it may grow a little early; the map is address space, not disk.
        """
        info = self._env.info()
        need = (info["last_pgno"] + 1) * _PAGE + nbytes + nbytes // 8 + MiB
        current = info["map_size"]
        if need > current and current < self._put_cap:
            size = min(self._put_cap, _round_pages(max(current * 2, need)))
            with self._gate.exclusive():
                self._env.set_mapsize(size)
            self._map_resizes += 1

    def _grow(self, *, freeing: bool) -> None:
        """Double the map, up to the put cap (or ``max_size_bytes`` for ``freeing``)."""
        cap = self._max_size if freeing else self._put_cap
        current = self._env.info()["map_size"]
        if current >= cap and self._freed_last:
            # LMDB reuses pages freed by a transaction only after one more
            # commit; make that commit, then retry in the space just freed.
            self._freed_last = False
            with self._env.begin(write=True, db=self._db_meta) as txn:
                epoch = int.from_bytes(txn.get(b"epoch", b""), "big") + 1
                txn.put(b"epoch", u64(epoch))
            return
        if current >= cap:
            self._store_full += 1
            used = (self._env.info()["last_pgno"] + 1) * _PAGE
            raise StoreFull(
                f"blockstore full: {self.path} uses {_size(used)} of "
                f"blockstore.max_size_bytes = {_size(self._max_size)} and the write needs "
                f"more (the last {_size(self._max_size - self._put_cap)} are kept for unpin "
                "and GC); unpin what you no longer need and run "
                "`pinfold repo gc`, or raise blockstore.max_size_bytes in config.toml and "
                "restart the daemon"
            )
        with self._gate.exclusive():
            self._env.set_mapsize(min(cap, _round_pages(current * 2)))
        self._map_resizes += 1

    # ---- the seam for upper layers ---------------------------------------------

    def open_db(self, name: bytes) -> DbHandle:
        """Open (creating if needed) the named table ``name`` in this environment.

        The replication layer keeps its pinset and peer stats here, so its
        writes go through the same single writer (``write(fn)``, or
        ``BatchWriter.submit``) and commit atomically with block writes. Open
        tables at start-up, outside any transaction; opening one again returns
        the same handle.

        Raises:
            ValueError: a reserved or malformed name (see ``check_db_name``).
            RuntimeError: called from inside a transaction on this thread (LMDB
                would not let that transaction see the new table).
            BlockstoreError: too many named tables (at most 27 besides the store's own).
        """
        check_db_name(name)
        handle = self._tables.get(name)
        if handle is not None:
            return handle
        if getattr(self._local, "txn", None) is not None or self._gate.held():
            raise RuntimeError(f"open_db({name!r}) inside a transaction: open tables first")
        with self._write_lock:
            if self._closed:
                raise StoreClosed(f"the blockstore at {self.path} is closed")
            try:
                handle = DbHandle(name=name, native=self._env.open_db(name))
            except lmdb.DbsFullError as exc:
                raise BlockstoreError(f"too many named databases (max {_MAX_DBS})") from exc
            return self._tables.setdefault(name, handle)

    # ---- stat, close -----------------------------------------------------------

    def stat(self) -> StoreStat:
        """Counts of blocks and bytes, and the map's use and size, bytes."""

        def count(t: StoreTxn) -> tuple[int, int, dict]:
            assert isinstance(t, LmdbTxn)
            blocks = t.raw.stat(self._db_blocks)["entries"]
            nbytes = int.from_bytes(t.raw.get(b"bytes", db=self._db_meta), "big")
            return blocks, nbytes, self._env.info()

        blocks, nbytes, info = self._read(count)
        return StoreStat(
            blocks=blocks,
            bytes=nbytes,
            map_used_bytes=(info["last_pgno"] + 1) * _PAGE,
            map_size_bytes=info["map_size"],
            max_size_bytes=self._max_size,
        )

    def close(self) -> None:
        """Wait for the running write and reads, close the environment, drop the lock.

        Idempotent; later calls on the store raise ``StoreClosed``.
        """
        with self._write_lock:
            if self._closed:
                return
            with self._gate.exclusive():
                self._closed = True
                self._env.close()
            self._release_lock()


def _file_id(path: Path) -> tuple[int, int]:
    """(device, inode) of ``path``. Raises ``OSError`` (``FileNotFoundError``)."""
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _take_lock(lock_path: Path) -> int:
    """Take the exclusive ``flock`` on ``lock_path`` and write our PID into it.

    Raises:
        StoreLocked: another process (or another store object in this process)
            holds it; the message names the PID recorded in the file.
    """
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise StoreLocked(
                f"the blockstore at {lock_path.parent} is in use by another process "
                f"(pid {holder}): is another pinfold daemon running on this home?"
            ) from None
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
