"""Crash campaign: ``kill -9`` of a real daemon at seeded random moments, and a power-loss model.

Kill campaign (issue 7, item 1). Each round focuses on one operation -- add,
CAR import (``dag import``), pin, unpin or GC -- run in a loop by one client
thread while a second thread adds small files (pinned or not) beside it; the
daemon is SIGKILLed after a seeded random delay. Then, with the daemon down,
the test opens the LMDB store itself and checks:

* the store opens (no ``StoreLocked``: the kernel dropped the dead daemon's lock);
* ``verify`` finds no corrupt block;
* every reference count equals a recount from the pins' block lists;
* every pin present is complete: its root is known and every block of its DAG
  is there with the right bytes (never half-pinned);
* every pin the client saw acknowledged (and did not start to unpin) is there,
  every acknowledged unpin is gone;
* every add the client saw return a CID is fully readable, unless a GC could
  have collected it (it was unpinned and a GC ran after it returned).

Then the daemon restarts, ``repo verify`` through the RPC is clean and a sample
of the readable files is read back with ``cat``. Operations cut short by the
kill are resolved from the store (a pin either happened or not) so the model
stays exact for the next round.

Power-loss model: while a daemon adds and pins under its configured sync
policy, it is frozen (SIGSTOP) at seeded random moments -- mid-write -- and its
LMDB files are copied; the copies are then opened and must verify clean with
every pin acknowledged before the freeze intact. A frozen image is what the
disk holds when power fails after every issued write reached it in order; it
does not model torn or reordered sector writes (which LMDB's ``sync=true``
protocol -- data pages, fsync, then the meta page -- is designed for).
"""

from __future__ import annotations

import itertools
import random
import shutil
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pinfold.client import Client

from tests.support.daemon import DaemonProcess
from tests.support.campaign import (
    Content,
    KiB,
    MiB,
    chunks_of,
    configured,
    make_content,
    open_store,
    pick,
    record,
    seed,
)
from tests.support.wait import wait_until

KINDS = ("add", "dag_import", "pin", "unpin", "gc")
SIZES = (32 * KiB, 256 * KiB, 1 * MiB, 3 * MiB)
SMALL_SIZES = (16 * KiB, 128 * KiB)
CHUNKS = (16 * KiB, 64 * KiB, 256 * KiB, 1 * MiB)


class Killed(Exception):
    """The daemon went away under a client thread (expected after the kill)."""


@dataclass
class Model:
    """What the clients were told, with a global order (``seq``) of events.

    A GC interval is ``[start_seq, end_seq]``; an unpinned add acknowledged at
    ``a`` is guaranteed readable only if every GC interval ended before ``a``.
    """

    rng: random.Random
    contents: dict[str, Content] = field(default_factory=dict)
    by_root: dict[str, str] = field(default_factory=dict)
    acked_add: dict[str, int] = field(default_factory=dict)
    pinned: set[str] = field(default_factory=set)
    unpinned: set[str] = field(default_factory=set)
    pending_pin: set[str] = field(default_factory=set)
    pending_unpin: set[str] = field(default_factory=set)
    pending_add: dict[str, bool] = field(default_factory=dict)
    abandoned: set[str] = field(default_factory=set)
    gc_intervals: list[list[float]] = field(default_factory=list)
    in_flight: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _seq: itertools.count = field(default_factory=lambda: itertools.count(1))
    _names: itertools.count = field(default_factory=itertools.count)

    def seq(self) -> int:
        return next(self._seq)

    def new_content(self, small: bool = False) -> Content:
        with self.lock:
            name = f"c{next(self._names)}"
            content = make_content(name, random.Random(f"{self.rng.random()}"),
                                   sizes=SMALL_SIZES if small else SIZES, chunk_sizes=CHUNKS)
            self.contents[name] = content
            self.by_root[content.root_text] = name
        return content

    def guaranteed(self, name: str) -> bool:
        """The add of ``name`` returned and nothing may have removed its blocks since."""
        if name in self.unpinned or name in self.pending_unpin:
            return False
        if name in self.pinned:
            return True
        if name not in self.acked_add:
            return False
        ack = self.acked_add[name]
        return all(end < ack for _, end in self.gc_intervals)

    def pin_candidates(self) -> list[str]:
        busy = self.pinned | self.unpinned | self.pending_pin | self.pending_unpin | self.abandoned
        return sorted(n for n in self.acked_add if n not in busy and self.guaranteed(n))

    def unpin_candidates(self) -> list[str]:
        return sorted(self.pinned - self.pending_unpin)


class Workload:
    """Client threads driving one round; they stop at the first error after the kill."""

    def __init__(self, daemon: DaemonProcess, model: Model, rng: random.Random) -> None:
        self.daemon = daemon
        self.model = model
        self.rng = rng
        self.killed = threading.Event()
        self.errors: list[str] = []
        self.ops: Counter[str] = Counter()

    def _client_call(self, kind: str, fn: Callable[[], Any]) -> Any:
        m = self.model
        with m.lock:
            m.in_flight[kind] += 1
        try:
            return fn()
        except Exception as exc:
            if self.killed.is_set():
                raise Killed() from exc
            self.errors.append(f"{kind}: {type(exc).__name__}: {exc}")
            raise
        finally:
            with m.lock:
                m.in_flight[kind] -= 1

    def add(self, client: Client, *, small: bool, pin: bool) -> None:
        m = self.model
        content = m.new_content(small=small)
        with m.lock:
            m.pending_add[content.name] = pin
        res = self._client_call("add", lambda: client.add_stream(
            chunks_of(content.data), pin=pin, chunk_size=content.chunk_size))
        if res["cid"] != content.root_text:
            self.errors.append(f"add {content.name}: CID {res['cid']} != {content.root_text}")
        with m.lock:
            del m.pending_add[content.name]
            m.acked_add[content.name] = m.seq()
            if pin:
                m.pinned.add(content.name)
        self.ops["add"] += 1

    def dag_import(self, client: Client) -> None:
        m = self.model
        content = m.new_content()
        with m.lock:
            m.pending_add[content.name] = True
        res = self._client_call("dag_import", lambda: client.dag_import_stream(
            chunks_of(content.car()), pin_roots=True))
        if res["roots"] != [content.root_text] or res["pinned"] != 1:
            self.errors.append(f"dag import {content.name}: {res}")
        with m.lock:
            del m.pending_add[content.name]
            m.acked_add[content.name] = m.seq()
            m.pinned.add(content.name)
        self.ops["dag_import"] += 1

    def pin(self, client: Client) -> bool:
        m = self.model
        with m.lock:
            candidates = m.pin_candidates()
            if not candidates:
                return False
            name = self.rng.choice(candidates)
            m.pending_pin.add(name)
        self._client_call("pin", lambda: client.pin(m.contents[name].root_text))
        with m.lock:
            m.pending_pin.discard(name)
            m.pinned.add(name)
        self.ops["pin"] += 1
        return True

    def unpin(self, client: Client) -> bool:
        m = self.model
        with m.lock:
            candidates = m.unpin_candidates()
            if not candidates:
                return False
            name = self.rng.choice(candidates)
            m.pending_unpin.add(name)
        self._client_call("unpin", lambda: client.unpin(m.contents[name].root_text))
        with m.lock:
            m.pending_unpin.discard(name)
            m.pinned.discard(name)
            m.unpinned.add(name)
        self.ops["unpin"] += 1
        return True

    def gc(self, client: Client) -> None:
        m = self.model
        with m.lock:
            interval = [m.seq(), float("inf")]
            m.gc_intervals.append(interval)
        self._client_call("gc", client.repo_gc)
        with m.lock:
            interval[1] = m.seq()
        self.ops["gc"] += 1

    # ---------------------------------------------------------------- threads

    def focus(self, kind: str) -> None:
        try:
            with self.daemon.client() as c:
                while not self.killed.is_set():
                    if kind == "add":
                        self.add(c, small=False, pin=self.rng.random() < 0.5)
                    elif kind == "dag_import":
                        self.dag_import(c)
                    elif kind == "pin":
                        if not self.pin(c):
                            self.add(c, small=False, pin=False)
                    elif kind == "unpin":
                        if not self.unpin(c):
                            self.add(c, small=False, pin=True)
                    else:
                        self.add(c, small=True, pin=False)  # garbage for the next pass
                        self.gc(c)
        except Killed:
            pass
        except Exception:  # noqa: BLE001, S110 - _client_call recorded it in self.errors
            pass

    def background(self) -> None:
        try:
            with self.daemon.client() as c:
                while not self.killed.is_set():
                    self.add(c, small=True, pin=self.rng.random() < 0.5)
        except Killed:
            pass
        except Exception:  # noqa: BLE001, S110 - _client_call recorded it in self.errors
            pass


def prepare(daemon: DaemonProcess, model: Model, kind: str, rng: random.Random) -> None:
    """Make the focused operation possible: files to pin, pins to drop, garbage to collect."""
    w = Workload(daemon, model, rng)
    with daemon.client() as c:
        if kind == "pin":
            while len(model.pin_candidates()) < 4:
                w.add(c, small=False, pin=False)
        elif kind == "unpin":
            while len(model.unpin_candidates()) < 4:
                w.add(c, small=False, pin=True)
        elif kind == "gc":
            for _ in range(3):
                w.add(c, small=False, pin=False)
    assert not w.errors, w.errors


def check_store(store_path: Path, model: Model) -> list[str]:
    """The checks with the daemon down; returns the problems found (empty = survived)."""
    problems: list[str] = []
    with open_store(store_path) as store:
        corrupt = store.verify().corrupt
        if corrupt:
            problems.append(f"verify: {len(corrupt)} corrupt blocks, e.g. {corrupt[0]}")
        refs = store.check_refcounts()
        if refs:
            problems.append(f"refcounts differ from the recount for {len(refs)} blocks")
        present: set[str] = set()
        for rec in store.pin_ls():
            name = model.by_root.get(str(rec.cid))
            if name is None:
                problems.append(f"unknown pin {rec.cid}")
                continue
            present.add(name)
            content = model.contents[name]
            bad = content.missing_or_wrong(store)
            if bad or rec.blocks != len(content.blocks):
                problems.append(f"half-pinned {name}: {len(bad)} of {len(content.blocks)} "
                                f"blocks missing or wrong, record says {rec.blocks}")
        for name in model.pinned - model.pending_unpin:
            if name not in present:
                problems.append(f"acknowledged pin of {name} lost")
        for name in model.unpinned & present:
            problems.append(f"acknowledged unpin of {name} undone")
        for name in model.acked_add:
            if model.guaranteed(name):
                bad = model.contents[name].missing_or_wrong(store)
                if bad:
                    problems.append(f"acknowledged add of {name}: {len(bad)} blocks lost")
        resolve(model, present)
    return problems


def resolve(model: Model, present: set[str]) -> None:
    """Settle operations the kill cut short from what the store holds."""
    kill_seq = model.seq()
    for name in model.pending_pin:
        if name in present:
            model.pinned.add(name)
    model.pending_pin.clear()
    for name in model.pending_unpin:
        if name not in present:
            model.pinned.discard(name)
            model.unpinned.add(name)
    model.pending_unpin.clear()
    for name, pin in model.pending_add.items():
        if pin and name in present:
            model.acked_add[name] = kill_seq
            model.pinned.add(name)
        else:
            model.abandoned.add(name)
    model.pending_add.clear()
    for interval in model.gc_intervals:
        if interval[1] == float("inf"):
            interval[1] = kill_seq
    model.in_flight.clear()


def run_kill_campaign(root: Path, kills: int, rng: random.Random) -> dict:
    daemon = configured(DaemonProcess(root, "crash"), blockstore={"sync": True})
    model = Model(rng=rng)
    survived = 0
    during: Counter[str] = Counter()
    per_kind: Counter[str] = Counter()
    failures: list[str] = []
    ops: Counter[str] = Counter()
    started = time.monotonic()
    daemon.start()
    try:
        for round_no in range(kills):
            kind = KINDS[round_no % len(KINDS)]
            per_kind[kind] += 1
            prepare(daemon, model, kind, rng)
            w = Workload(daemon, model, random.Random(rng.random()))
            threads = [threading.Thread(target=w.focus, args=(kind,)),
                       threading.Thread(target=w.background)]
            for t in threads:
                t.start()
            time.sleep(rng.uniform(0.05, 1.0))  # the seeded kill moment, not a wait for state
            with model.lock:
                in_flight = {k for k, n in model.in_flight.items() if n > 0}
                w.killed.set()
            daemon.kill9()
            for t in threads:
                t.join(60)
            ops.update(w.ops)
            for k in in_flight:
                during[k] += 1
            problems = [f"client error before the kill: {e}" for e in w.errors]
            problems += check_store(daemon.home / "store", model)
            try:
                daemon.start()
                with daemon.client() as c:
                    if c.repo_verify()["corrupt"]:
                        problems.append("repo verify after restart found corrupt blocks")
                    readable = [n for n in model.acked_add if model.guaranteed(n)]
                    for name in rng.sample(readable, min(2, len(readable))):
                        content = model.contents[name]
                        if b"".join(c.cat(content.root_text)) != content.data:
                            problems.append(f"cat {name} after restart differs")
            except Exception as exc:  # noqa: BLE001 - any failure here is a lost round
                problems.append(f"restart failed: {exc}\n{daemon.log()[-2000:]}")
                daemon.kill9()
                daemon.start()
            if problems:
                failures.append(f"round {round_no} ({kind}, in flight {sorted(in_flight)}): "
                                + "; ".join(problems[:5]))
            else:
                survived += 1
    finally:
        daemon.stop()
        daemon.kill9()
    return {"kills": kills, "survived": survived, "failures": failures,
            "kills_by_focus": dict(per_kind), "kills_with_op_in_flight": dict(during),
            "ops_acknowledged": dict(ops), "pins_at_end": len(model.pinned),
            "seconds": round(time.monotonic() - started, 1)}


def test_kill9_at_random_moments_loses_nothing_acknowledged(tmp_path: Path) -> None:
    kills = pick(quick=5, full=120)
    res = run_kill_campaign(tmp_path, kills, random.Random(seed()))
    record("crash", "kill -9 (add, dag import, pin, unpin, gc)", **res)
    assert res["failures"] == [], "\n".join(res["failures"])
    assert res["survived"] == kills
    # every focused operation was really cut: some kill found it in flight
    if kills >= 2 * len(KINDS):
        assert set(res["kills_with_op_in_flight"]) >= set(KINDS), res["kills_with_op_in_flight"]
    assert res["ops_acknowledged"].get("add", 0) > 0


def test_the_checks_see_a_half_pinned_dag_and_a_lost_pin(tmp_path: Path) -> None:
    """The campaign's checks fail when the store is wrong (so a clean run means something)."""
    model = Model(rng=random.Random(1))
    kept, broken, lost = (model.new_content() for _ in range(3))
    with open_store(tmp_path) as store:
        for content in (kept, broken):
            store.put_many(content.blocks)
            store.pin_add(content.root, recursive=True, blocks=[c for c, _ in content.blocks])
            model.acked_add[content.name] = model.seq()
            model.pinned.add(content.name)
        store.delete(broken.blocks[0][0])  # behind the pin's back
    model.acked_add[lost.name] = model.seq()
    model.pinned.add(lost.name)  # acknowledged, never stored
    problems = check_store(tmp_path, model)
    assert any(p.startswith(f"half-pinned {broken.name}") for p in problems), problems
    assert f"acknowledged pin of {lost.name} lost" in problems
    assert not any(kept.name + ":" in p or p.endswith(kept.name) for p in problems), problems


# ------------------------------------------------------------------ power loss


def _wait_stopped(pid: int) -> None:
    """Wait until every thread of ``pid`` is stopped (state ``T`` in /proc)."""

    def stopped() -> bool:
        for task in Path(f"/proc/{pid}/task").iterdir():
            state = (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
            if state not in ("T", "t"):
                return False
        return True

    wait_until(stopped, timeout_s=10, what=f"process {pid} to stop", interval_s=0.001, retry_errors=False)


def _snapshot(store_dir: Path, dest: Path) -> None:
    dest.mkdir(parents=True)
    for name in ("data.mdb", "lock.mdb"):
        shutil.copyfile(store_dir / name, dest / name)


@pytest.mark.parametrize("sync", [True, False], ids=["sync", "nosync"])
def test_power_loss_images_open_and_verify_clean(tmp_path: Path, sync: bool) -> None:
    rng = random.Random(seed() + sync)
    snapshots = pick(quick=3, full=25)
    daemon = configured(DaemonProcess(tmp_path, "power"), blockstore={"sync": sync})
    model = Model(rng=rng)
    images: list[tuple[Path, set[str]]] = []
    daemon.start()
    w = Workload(daemon, model, random.Random(rng.random()))

    def writer() -> None:
        try:
            with daemon.client() as c:
                while not w.killed.is_set():
                    w.add(c, small=rng.random() < 0.5, pin=True)
        except Exception:  # noqa: BLE001, S110 - the error is in w.errors unless we stopped
            pass

    threads = [threading.Thread(target=writer) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for i in range(snapshots):
            time.sleep(rng.uniform(0.05, 0.6))  # the seeded freeze moment
            daemon.proc.send_signal(signal.SIGSTOP)
            try:
                _wait_stopped(daemon.pid)
                with model.lock:
                    acked = set(model.pinned)  # acknowledged before the freeze
                _snapshot(daemon.home / "store", tmp_path / f"image{i}")
            finally:
                daemon.proc.send_signal(signal.SIGCONT)
            images.append((tmp_path / f"image{i}", acked))
    finally:
        w.killed.set()
        for t in threads:
            t.join(60)
        daemon.stop()
        daemon.kill9()
    assert not w.errors, w.errors
    lost = 0
    extra = 0
    for path, acked in images:
        with open_store(path) as store:
            assert store.verify().corrupt == (), f"{path.name}: corrupt blocks"
            assert store.check_refcounts() == {}, f"{path.name}: refcounts differ"
            present = set()
            for rec in store.pin_ls():
                name = model.by_root[str(rec.cid)]
                present.add(name)
                assert model.contents[name].missing_or_wrong(store) == [], f"{name} half-pinned"
            lost += len(acked - present)
            extra += len(present - acked)
    record("crash", f"power-loss images (sync={'true' if sync else 'false'})",
           images=len(images), opened_clean=len(images), acked_pins_lost=lost,
           unacknowledged_pins_in_image=extra, pins_acknowledged=len(model.pinned))
    assert lost == 0
    assert len(model.pinned) > 0
