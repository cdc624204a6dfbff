"""The home's blockstore: open it only if it is the store this home used,
record it in ``<home>/store.json``, and watch that its files stay in place.

``store.json`` records the store's ID and counts, so a start on a home whose
store is missing, or was replaced by an empty one, is refused unless
``allow_empty_store`` says to begin again empty. While the daemon runs, the
store's files are checked every ``STORE_CHECK_INTERVAL_S`` seconds (and
before every commit); if they were removed or replaced the daemon stops with
an error instead of writing into a file nobody will read.
"""

from __future__ import annotations

import logging
import time

import trio

from pinfold.blockstore.errors import StoreGone
from pinfold.blockstore.lmdbstore import LmdbBlockStore
from pinfold.config.schema import BlockstoreConfig

from pinfold.daemon.home import Home, HomeError, StoreRecord

log = logging.getLogger("pinfold.node")

__all__ = ["STORE_CHECK_INTERVAL_S", "STORE_RECORD_EVERY_S", "check_store_files",
           "open_store", "record_store", "watch_store"]

#: Seconds between checks that the store's files are still the ones opened.
STORE_CHECK_INTERVAL_S = 2.0
#: Least seconds between rewrites of ``store.json``'s counts while they change.
STORE_RECORD_EVERY_S = 10.0


def open_store(home: Home, bs: BlockstoreConfig, *, allow_empty_store: bool = False
               ) -> LmdbBlockStore:
    """Open the home's store (``bs``: its size ceiling and sync mode), refusing one
    that is not the store this home used, and record it in ``store.json``.

    Raises:
        HomeError: ``store.json`` names a store, and the store is missing or
            is another, empty one (unless ``allow_empty_store``).
        StoreLocked, BlockstoreError: as ``LmdbBlockStore``.
    """
    path = home.store_path
    record = home.read_store_record()
    choices = (f"Restore the store directory from a backup (README, \"Back up and "
               f"restore\"), or start with an empty store: `pinfold --home "
               f"{home.root} daemon --allow-empty-store` (in a cluster the other "
               "peers re-replicate the pins this node held; standalone, its data is gone)")
    if record is not None and not (path / "data.mdb").exists() and not allow_empty_store:
        raise HomeError(f"the blockstore {path} is missing (no data.mdb), but this home "
                        f"used {record.describe()}, recorded in "
                        f"{home.store_record_path}. {choices}")
    store = LmdbBlockStore(path, max_size_bytes=bs.max_size_bytes, sync=bs.sync)
    try:
        if record is not None and record.store_id != store.store_id:
            empty = store.stat().blocks == 0 and not any(store.pin_counts().values())
            if allow_empty_store:
                log.warning("starting with the store %s (id %s) as --allow-empty-store "
                            "asked; this home used %s", path, store.store_id,
                            record.describe())
            elif empty:
                raise HomeError(f"the blockstore {path} is empty and is not the store this "
                                f"home used: it is store {store.store_id}, this home used "
                                f"{record.describe()}, recorded in "
                                f"{home.store_record_path}. {choices}")
            else:
                log.warning("the blockstore %s is store %s, not the one this home used "
                            "(%s); it holds data, so it is used from now on", path,
                            store.store_id, record.describe())
        record_store(home, store)
    except BaseException:
        store.close()
        raise
    return store


def record_store(home: Home, store: LmdbBlockStore) -> None:
    """Write ``store.json``: the store's ID and what it holds now.

    A failure (a full disk) is logged, not raised: the daemon keeps running,
    and the record is written again at the next chance.
    """
    old = home.read_store_record()
    first_seen = old.first_seen if old and old.store_id == store.store_id else time.time()
    st = store.stat()
    try:
        home.write_store_record(StoreRecord(
            store_id=store.store_id, first_seen=first_seen, updated=time.time(),
            blocks=st.blocks, bytes=st.bytes, pins=sum(store.pin_counts().values())))
    except OSError as exc:
        log.warning("cannot write %s: %s", home.store_record_path, exc.strerror or exc)


def check_store_files(home: Home, store: LmdbBlockStore) -> None:
    """Stop the daemon if the store's files were removed or replaced.

    Raises:
        StoreGone: with what to do next.
    """
    try:
        store.check_files()
    except StoreGone as exc:
        raise StoreGone(f"{exc}. The daemon stops: put the store back (from a backup if "
                        f"need be) and start it again, or start with an empty store: "
                        f"`pinfold --home {home.root} daemon --allow-empty-store`"
                        ) from None


async def watch_store(home: Home, store: LmdbBlockStore, interval_s: float) -> None:
    """Check the store's files every ``interval_s`` seconds; keep ``store.json``'s
    counts current (rewritten when they changed, at most every
    ``STORE_RECORD_EVERY_S``). Raises ``StoreGone`` as ``check_store_files``."""

    def counts() -> tuple[int, int, int]:
        st = store.stat()
        return st.blocks, st.bytes, sum(store.pin_counts().values())

    recorded_at = trio.current_time()
    last = counts()
    while True:
        await trio.sleep(interval_s)
        check_store_files(home, store)
        now = counts()
        if now != last and trio.current_time() - recorded_at >= STORE_RECORD_EVERY_S:
            try:
                record_store(home, store)
            except HomeError as exc:  # store.json became unreadable meanwhile
                log.warning("%s", exc)
            last, recorded_at = now, trio.current_time()
