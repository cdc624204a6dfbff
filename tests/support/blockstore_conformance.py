"""Conformance suites every block store passes (like trio's ``check_two_way_stream``).

``check_blockstore(make_store)`` checks the ``BlockStore`` protocol of
``pinfold.blockstore.store``; ``check_pinned_store(make_store)`` checks pins
with reference counts, GC protection, GC, verify, transactions and the named
table seam of ``pinfold.blockstore.txn.TxnBlockStore``. ``make_store()``
returns a fresh, empty store; each check closes the store it made.

Run them from a test module::

    def test_lmdb_conforms(tmp_path):
        check_blockstore(lambda: LmdbBlockStore(next_dir(tmp_path), max_size_bytes=...))
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from multiformats import CID
from pinfold.blockstore.cid import DAG_PB, MAX_BLOCK_SIZE, RAW, cid_key, make_cid
from pinfold.blockstore.errors import (
    BlockNotFound,
    BlockTooLarge,
    NotPinned,
    PinError,
    StoreClosed,
)
from pinfold.blockstore.store import BlockStore

MakeStore = Callable[[], Any]


def block(n: int, size: int = 100, codec: int = RAW) -> tuple[CID, bytes]:
    """A deterministic block ``n`` of ``size`` bytes and its CIDv1."""
    data = (n.to_bytes(4, "big") * (size // 4 + 1))[:size]
    return make_cid(data, codec), data


def identity_cid(data: bytes) -> CID:
    return CID("base32", 1, "raw", ("identity", data))


@contextmanager
def _fresh(make_store: MakeStore) -> Iterator[Any]:
    store = make_store()
    try:
        yield store
    finally:
        store.close()


# ---- the BlockStore protocol ---------------------------------------------------


def _empty_store(s: Any) -> None:
    assert isinstance(s, BlockStore)
    cid, _ = block(1)
    assert not s.has(cid)
    with pytest.raises(BlockNotFound):
        s.get(cid)
    with pytest.raises(BlockNotFound):
        s.get_size(cid)
    assert list(s.iter_keys()) == []
    st = s.stat()
    assert (st.blocks, st.bytes) == (0, 0)
    assert s.delete(cid) is False


def _put_get(s: Any) -> None:
    blocks = [block(i, size=10 + i) for i in range(5)]
    assert s.put_many(blocks) == sum(len(d) for _, d in blocks)
    for cid, data in blocks:
        assert s.has(cid)
        got = s.get(cid)
        assert isinstance(got, bytes) and got == data
        assert s.get_size(cid) == len(data)
    # already present: nothing new written, data unchanged
    assert s.put_many(blocks[:2]) == 0
    assert s.get(blocks[0][0]) == blocks[0][1]
    # duplicates inside one call count once
    extra = block(99)
    assert s.put_many([extra, extra]) == len(extra[1])


def _empty_block(s: Any) -> None:
    cid, data = make_cid(b""), b""
    assert s.put_many([(cid, data)]) == 0
    assert s.has(cid) and s.get(cid) == b"" and s.get_size(cid) == 0
    assert s.stat().blocks == 1


def _keyed_by_multihash(s: Any) -> None:
    data = b"\x0a\x02\x08\x01"  # any bytes; named as dag-pb under v0 and v1
    v1 = make_cid(data, DAG_PB)
    v0 = make_cid(data, DAG_PB, version=0)
    raw = make_cid(data, RAW)
    s.put_many([(v1, data)])
    assert s.has(v0) and s.has(raw)
    assert s.get(v0) == data
    assert s.put_many([(v0, data), (raw, data)]) == 0
    assert list(s.iter_keys()) == [cid_key(v1)]


def _identity_never_stored(s: Any) -> None:
    cid = identity_cid(b"inline data")
    assert s.has(cid)
    assert s.get(cid) == b"inline data"
    assert s.get_size(cid) == len(b"inline data")
    assert s.put_many([(cid, b"inline data")]) == 0
    assert s.stat().blocks == 0
    assert list(s.iter_keys()) == []
    assert s.delete(cid) is False


def _block_size_limit(s: Any) -> None:
    small = block(1)
    too_big = (make_cid(b"x" * (MAX_BLOCK_SIZE + 1)), b"x" * (MAX_BLOCK_SIZE + 1))
    with pytest.raises(BlockTooLarge) as info:
        s.put_many([small, too_big])
    assert info.value.size == MAX_BLOCK_SIZE + 1
    assert not s.has(small[0]), "a refused call must store none of its blocks"
    exact = (make_cid(b"y" * MAX_BLOCK_SIZE), b"y" * MAX_BLOCK_SIZE)
    assert s.put_many([exact]) == MAX_BLOCK_SIZE
    assert s.get_size(exact[0]) == MAX_BLOCK_SIZE


def _delete(s: Any) -> None:
    a, b = block(1), block(2)
    s.put_many([a, b])
    assert s.delete(a[0]) is True
    assert s.delete(a[0]) is False
    assert not s.has(a[0]) and s.has(b[0])
    with pytest.raises(BlockNotFound) as info:
        s.get(a[0])
    assert str(a[0]) in str(info.value)
    st = s.stat()
    assert (st.blocks, st.bytes) == (1, len(b[1]))


def _iter_keys_sorted(s: Any) -> None:
    blocks = [block(i) for i in range(2500)]  # more than one page
    s.put_many(blocks)
    keys = list(s.iter_keys())
    assert keys == sorted(cid_key(c) for c, _ in blocks)


def _stat_counts(s: Any) -> None:
    blocks = [block(i, size=1000 * (i + 1)) for i in range(4)]
    s.put_many(blocks)
    st = s.stat()
    assert st.blocks == 4 and st.bytes == 10_000
    s.delete(blocks[3][0])
    st = s.stat()
    assert st.blocks == 3 and st.bytes == 6_000


def _threads(s: Any) -> None:
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            for i in range(20):
                cid, data = block(t * 1000 + i, size=500)
                s.put_many([(cid, data)])
                assert s.get(cid) == data
        except Exception as exc:  # noqa: BLE001 - reported by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert s.stat().blocks == 80


def _closed(s: Any) -> None:
    cid, data = block(1)
    s.put_many([(cid, data)])
    s.close()
    s.close()  # idempotent
    with pytest.raises(StoreClosed):
        s.get(cid)
    with pytest.raises(StoreClosed):
        s.put_many([block(2)])


BLOCKSTORE_CHECKS = [
    _empty_store,
    _put_get,
    _empty_block,
    _keyed_by_multihash,
    _identity_never_stored,
    _block_size_limit,
    _delete,
    _iter_keys_sorted,
    _stat_counts,
    _threads,
    _closed,
]


def check_blockstore(make_store: MakeStore) -> None:
    """Run every ``BlockStore`` protocol check, each on a fresh store."""
    for check in BLOCKSTORE_CHECKS:
        with _fresh(make_store) as store:
            check(store)


# ---- pins, GC, verify, transactions --------------------------------------------


def _dag(s: Any, n: int, first: int = 0, size: int = 100) -> tuple[CID, list[CID]]:
    """Store ``n`` blocks; return (root = first block, all CIDs)."""
    blocks = [block(first + i, size=size) for i in range(n)]
    s.put_many(blocks)
    return blocks[0][0], [c for c, _ in blocks]


def _counts(s: Any, cids: list[CID]) -> list[int]:
    return [s.refcount(c) for c in cids]


def _pin_recursive(s: Any) -> None:
    root, cids = _dag(s, 5)
    rec = s.pin_add(root, recursive=True, blocks=cids + cids[:2], name="model", metadata={"k": "v"})
    assert rec.cid == root and rec.mode == "recursive" and rec.name == "model"
    assert rec.blocks == 5 and rec.bytes == 500
    assert dict(rec.metadata) == {"k": "v"}
    assert _counts(s, cids) == [1] * 5
    assert s.pin_get(root) == rec
    assert list(s.pin_ls()) == [rec]
    assert s.recount() == {cid_key(c): 1 for c in cids}
    assert s.check_refcounts() == {}
    assert s.pin_counts() == {"recursive": 1, "direct": 0}


def _pin_missing_block(s: Any) -> None:
    root, cids = _dag(s, 3)
    missing = block(77)[0]
    with pytest.raises(PinError) as info:
        s.pin_add(root, recursive=True, blocks=[*cids, missing, block(78)[0]])
    assert str(missing) in str(info.value), "the error names the first missing block"
    assert s.pin_get(root) is None
    assert _counts(s, cids) == [0, 0, 0]
    assert list(s.pin_ls()) == [] and s.check_refcounts() == {}
    with pytest.raises(PinError):
        s.pin_add(missing, recursive=False)


def _repin_idempotent(s: Any) -> None:
    ticks = iter(range(1000, 2000))
    s._clock = lambda: float(next(ticks))
    root, cids = _dag(s, 4)
    first = s.pin_add(root, recursive=True, blocks=cids, name="a")
    second = s.pin_add(root, recursive=True, blocks=cids, name="b", metadata={"x": "y"})
    assert _counts(s, cids) == [1] * 4
    assert second.name == "b" and dict(second.metadata) == {"x": "y"}
    assert second.created_at == first.created_at == 1000.0
    assert [r.name for r in s.pin_ls()] == ["b"]
    # the same root under its other CID spelling is the same pin
    v0 = CID("base58btc", 1, "raw", root.digest)
    assert s.pin_get(v0) == second
    # a direct pin never silently weakens a recursive one (Kubo: "already pinned
    # recursively"); after an unpin it is taken, and a recursive pin upgrades it
    with pytest.raises(PinError, match="already pinned recursively"):
        s.pin_add(root, recursive=False)
    assert s.pin_get(root) == second and _counts(s, cids) == [1] * 4
    s.pin_rm(root)
    direct = s.pin_add(root, recursive=False)
    assert direct.mode == "direct" and direct.blocks == 1
    assert _counts(s, cids) == [1, 0, 0, 0]
    assert s.pin_counts() == {"recursive": 0, "direct": 1}
    s.pin_add(root, recursive=True, blocks=cids)
    assert _counts(s, cids) == [1] * 4
    assert s.pin_counts() == {"recursive": 1, "direct": 0}
    assert s.check_refcounts() == {}


def _shared_blocks(s: Any) -> None:
    _, cids = _dag(s, 6)
    a, b = cids[0], cids[3]
    s.pin_add(a, recursive=True, blocks=cids[0:4])
    s.pin_add(b, recursive=True, blocks=cids[3:6])
    assert _counts(s, cids) == [1, 1, 1, 2, 1, 1]
    removed = s.pin_rm(a)
    assert removed.cid == a
    assert _counts(s, cids) == [0, 0, 0, 1, 1, 1]
    assert s.gc().blocks_freed == 3
    assert [s.has(c) for c in cids] == [False, False, False, True, True, True]
    with pytest.raises(NotPinned):
        s.pin_rm(a)
    assert s.check_refcounts() == {}
    assert s.pin_counts() == {"recursive": 1, "direct": 0}


def _direct_pin(s: Any) -> None:
    root, cids = _dag(s, 3)
    rec = s.pin_add(root, recursive=False, blocks=[root])
    assert rec.mode == "direct" and rec.blocks == 1
    assert _counts(s, cids) == [1, 0, 0]
    with pytest.raises(ValueError):
        s.pin_add(root, recursive=False, blocks=cids)
    ident = identity_cid(b"tiny")
    assert s.pin_add(ident, recursive=False).blocks == 0


def _bad_pin_fields(s: Any) -> None:
    root, _ = _dag(s, 1)
    with pytest.raises(ValueError):
        s.pin_add(root, recursive=True, metadata={"k": 1})
    with pytest.raises(ValueError):
        s.pin_add(root, recursive=True, name="x" * 2000)
    assert s.pin_get(root) is None


def _gc(s: Any) -> None:
    root, cids = _dag(s, 4, size=1000)
    loose = [block(100 + i, size=10) for i in range(5)]
    s.put_many(loose)
    s.pin_add(root, recursive=True, blocks=cids[:2])
    with s.protect() as guard:
        guard.add(loose[0][0])
        guard.add(cid_key(loose[1][0]))
        guard.add(identity_cid(b"z"))  # ignored
        result = s.gc(batch=2)
        assert (result.blocks_freed, result.bytes_freed) == (2 + 3, 2 * 1000 + 3 * 10)
        assert result.seconds >= 0
        assert s.has(loose[0][0]) and s.has(loose[1][0])
        assert all(s.has(c) for c in cids[:2])
    guard.release()  # idempotent
    with pytest.raises(RuntimeError):
        guard.add(loose[0][0])
    assert s.gc(batch=1).blocks_freed == 2
    assert s.gc().blocks_freed == 0
    assert sorted(s.iter_keys()) == sorted(cid_key(c) for c in cids[:2])
    with pytest.raises(ValueError):
        s.gc(batch=0)


def _gc_many(s: Any) -> None:
    blocks = [block(i, size=20) for i in range(3000)]
    s.put_many(blocks)
    keep = [c for c, _ in blocks[::7]]
    for c in keep:
        s.pin_add(c, recursive=False)
    result = s.gc(batch=500)
    assert result.blocks_freed == 3000 - len(keep)
    assert sorted(s.iter_keys()) == sorted(cid_key(c) for c in keep)


def _verify(s: Any) -> None:
    good = [block(i) for i in range(3)]
    liar = (block(50)[0], b"not the bytes of block 50")
    s.put_many([*good, liar])
    result = s.verify()
    assert result.checked == 4
    assert [cid_key(c) for c in result.corrupt] == [cid_key(liar[0])]
    assert result.corrupt[0].codec.name == "raw" and result.dropped == 0
    assert s.has(liar[0])
    dropped = s.verify(drop=True)
    assert dropped.dropped == 1 and not s.has(liar[0])
    assert s.verify().corrupt == ()


def _write_fn_atomic(s: Any) -> None:
    a, b = block(1), block(2)
    db = s.open_db(b"cluster")

    def fails(txn: Any) -> None:
        txn.put_many([a])
        txn.db_put(db, b"k", b"v")
        raise KeyError("boom")

    with pytest.raises(KeyError):
        s.write(fails)
    assert not s.has(a[0])
    assert s.read(lambda t: t.db_get(db, b"k")) is None

    def works(txn: Any) -> int:
        txn.db_put(db, b"k2", b"v2")
        txn.db_put(db, b"k1", b"v1")
        txn.db_put(db, b"k3", b"v3")
        return txn.put_many([a, b])

    assert s.write(works) == len(a[1]) + len(b[1])
    assert s.read(lambda t: t.db_get(db, b"k1")) == b"v1"
    assert s.read(lambda t: list(t.db_items(db, start=b"k2"))) == [(b"k2", b"v2"), (b"k3", b"v3")]
    assert s.read(lambda t: [k for k, _ in t.db_items(db, stop=b"k3")]) == [b"k1", b"k2"]
    assert s.write(lambda t: t.db_delete(db, b"k1")) is True
    assert s.write(lambda t: t.db_delete(db, b"k1")) is False
    with pytest.raises(RuntimeError):
        s.read(lambda t: t.put_many([block(3)]))
    with pytest.raises(RuntimeError):
        s.read(lambda t: t.db_put(db, b"x", b"y"))
    for bad in (b"blocks", b"pins", b"", "cluster"):
        with pytest.raises(ValueError):
            s.open_db(bad)
    # opening again gives the same table
    again = s.open_db(b"cluster")
    assert s.read(lambda t: t.db_get(again, b"k2")) == b"v2"


def _txn_pins(s: Any) -> None:
    root, cids = _dag(s, 3)

    def pin_and_fail(txn: Any) -> None:
        txn.pin_add(root, recursive=True, blocks=cids)
        raise ValueError("later step failed")

    with pytest.raises(ValueError):
        s.write(pin_and_fail)
    assert s.pin_get(root) is None and _counts(s, cids) == [0, 0, 0]
    rec = s.write(lambda t: t.pin_add(root, recursive=True, blocks=cids))
    assert s.read(lambda t: t.pin_get(root)) == rec
    assert s.read(lambda t: t.refcount(cids[1])) == 1


def _calls_inside_write_join_it(s: Any) -> None:
    root, cids = _dag(s, 2)
    fresh = block(500)
    before = s.statistics().commits

    def fn(txn: Any) -> bool:
        # store methods called from inside fn use fn's transaction
        s.put_many([fresh])
        assert s.has(fresh[0]) and s.get(fresh[0]) == fresh[1]
        s.pin_add(root, recursive=True, blocks=[*cids, fresh[0]])
        assert s.refcount(fresh[0]) == 1
        return txn.has(fresh[0])

    assert s.write(fn) is True
    assert s.statistics().commits == before + 1, "one transaction in all"
    assert s.pin_get(root).blocks == 3

    def fn_fails(txn: Any) -> None:
        s.pin_rm(root)
        s.delete(fresh[0])
        raise OSError("late failure")

    with pytest.raises(OSError):
        s.write(fn_fails)
    assert s.pin_get(root) is not None and s.has(fresh[0]) and s.refcount(fresh[0]) == 1
    assert s.statistics().rollbacks >= 1


def _read_each(s: Any) -> None:
    """``read_each``: ``fn`` on each stored block in order, None for the missing, one
    read for all; the views it gets hold the block's bytes."""
    blocks = [block(i, size=20 + i) for i in range(6)]
    s.put_many(blocks[:4])
    missing = blocks[4][0]
    inline = identity_cid(b"inline")
    asked = [blocks[2][0], missing, blocks[0][0], inline, blocks[3][0], blocks[0][0]]
    got = s.read_each(asked, lambda cid, data: (cid, bytes(data)))
    assert got == [(blocks[2][0], blocks[2][1]), None, (blocks[0][0], blocks[0][1]),
                   (inline, b"inline"), (blocks[3][0], blocks[3][1]),
                   (blocks[0][0], blocks[0][1])]
    assert s.read_each([], len) == []
    assert s.read_each([blocks[1][0], missing], lambda cid, data: len(data)) == [
        len(blocks[1][1]), None]

    def boom(cid: CID, data: Any) -> None:
        raise ValueError(f"cannot decode {cid}")

    with pytest.raises(ValueError, match="cannot decode"):
        s.read_each([blocks[0][0]], boom)
    assert s.get(blocks[0][0]) == blocks[0][1]  # the store is fine after fn raised


PINNED_STORE_CHECKS = [
    _read_each,
    _pin_recursive,
    _pin_missing_block,
    _repin_idempotent,
    _shared_blocks,
    _direct_pin,
    _bad_pin_fields,
    _gc,
    _gc_many,
    _verify,
    _write_fn_atomic,
    _txn_pins,
    _calls_inside_write_join_it,
]


def check_pinned_store(make_store: MakeStore) -> None:
    """Run every pin / GC / verify / transaction check, each on a fresh store."""
    for check in PINNED_STORE_CHECKS:
        with _fresh(make_store) as store:
            check(store)
