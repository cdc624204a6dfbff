"""Shared parts of the reliability campaigns: scale, figures, fingerprints, content.

Every campaign runs in one of two scales, chosen by ``$PINFOLD_RELIABILITY``:

* ``quick`` (the default, what ``make test`` runs): a handful of kills, a few
  hundred hostile inputs, a 10-second load run; the whole directory stays
  under about two minutes on two loaded cores.
* ``full`` (``make reliability``): >= 100 kills, thousands of hostile inputs,
  5 minutes of load.

Figures: a campaign calls ``record(campaign, row, **figures)``; when
``$PINFOLD_RELIABILITY_OUT`` names a directory the figures are merged into
``<dir>/<campaign>.json`` (``make reliability`` sets it and
``tools/reliability/report.py`` turns the files into the table). Without it
nothing is written, so ``make test`` leaves the tree clean.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from pinfold.blockstore import car as carfmt
from pinfold.blockstore import unixfs
from pinfold.blockstore.cid import CID, cid_key
from pinfold.blockstore.errors import BlockNotFound
from pinfold.blockstore.lmdbstore import LmdbBlockStore
from pinfold.config import loader
from pinfold.client import Client

from tests.support.daemon import DaemonProcess

KiB = 1024
MiB = 1024 * KiB

SCALE_ENV = "PINFOLD_RELIABILITY"
OUT_ENV = "PINFOLD_RELIABILITY_OUT"


def full_scale() -> bool:
    """True under ``make reliability`` (``$PINFOLD_RELIABILITY=full``)."""
    return os.environ.get(SCALE_ENV, "quick") == "full"


def pick(quick: Any, full: Any) -> Any:
    """``full`` under the full campaign, else ``quick``."""
    return full if full_scale() else quick


def seed() -> int:
    """The campaign seed: ``$PINFOLD_RELIABILITY_SEED`` or a fixed default (runs repeat)."""
    return int(os.environ.get("PINFOLD_RELIABILITY_SEED", "20261129"))


def configured(daemon: DaemonProcess, **sections: dict[str, Any]) -> DaemonProcess:
    """Initialise ``daemon``'s home and change config keys (``blockstore={"sync": False}``).

    The file is rewritten with ``pinfold.config.loader.render``, so it stays a
    complete, commented config that the daemon validates as usual.
    """
    daemon.init()
    path = daemon.home / "config.toml"
    path.write_text(loader.render(loader.replace(loader.load(path), **sections)))
    return daemon


# ------------------------------------------------------------------ figures

_record_lock = threading.Lock()


def record(campaign: str, row: str, **figures: Any) -> None:
    """Merge ``figures`` under ``row`` into ``$PINFOLD_RELIABILITY_OUT/<campaign>.json``.

    Args:
        campaign: file stem, e.g. ``"crash"``.
        row: the row of the table, e.g. ``"kill -9 during add"``.
        figures: JSON-able values (counts, seconds, bytes).
    """
    out = os.environ.get(OUT_ENV)
    if not out:
        return
    path = Path(out) / f"{campaign}.json"
    with _record_lock:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            data = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            data = {}
        data[row] = {**figures, "scale": "full" if full_scale() else "quick",
                     "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-quantile (0..1) of ``values`` by the nearest-rank method; 0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q * len(ordered) + 0.5)))
    return ordered[rank - 1]


def rss_bytes(pid: int, kind: str = "VmRSS") -> int:
    """Resident memory of process ``pid`` in bytes, from /proc/PID/status.

    Args:
        kind: ``VmRSS`` (all resident pages), ``RssAnon`` (the process's own
            memory: heap, stacks) or ``RssFile`` (mapped files: LMDB's data.mdb
            pages read through its memory map count here, and the kernel can
            drop them at any time).
    """
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(kind + ":"):
                return int(line.split()[1]) * 1024
    raise ValueError(f"no {kind} for pid {pid}")


def open_fds(pid: int) -> int:
    """Number of open file descriptors of process ``pid``."""
    return len(os.listdir(f"/proc/{pid}/fd"))


class RssSampler:
    """Samples a process's RSS every ``interval_s`` seconds in a thread (``with`` block).

    Attributes:
        samples: ``(monotonic seconds, rss bytes)`` pairs.
        anon_samples: ``(monotonic seconds, RssAnon bytes)`` pairs (without mapped files).
    """

    def __init__(self, pid: int, interval_s: float = 0.25) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.samples: list[tuple[float, int]] = []
        self.anon_samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                now = time.monotonic()
                self.samples.append((now, rss_bytes(self.pid)))
                self.anon_samples.append((now, rss_bytes(self.pid, "RssAnon")))
            except (OSError, ValueError):
                return  # the process is gone
            self._stop.wait(self.interval_s)

    @property
    def peak(self) -> int:
        """Largest RSS seen, bytes."""
        return max((r for _, r in self.samples), default=0)

    @property
    def anon_peak(self) -> int:
        """Largest RssAnon seen, bytes (the process's own memory, mapped files excluded)."""
        return max((r for _, r in self.anon_samples), default=0)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


# ------------------------------------------------------------------ fingerprints


@dataclass(frozen=True, slots=True, kw_only=True)
class Fingerprint:
    """What a store holds, to compare before and after hostile input.

    Attributes:
        blocks: blocks stored.
        bytes: block bytes stored.
        pins: pinned roots with mode, as ``"<cid> <mode>"`` strings, sorted.
        digest: sha256 (hex) over every block key, every pin record and every
            reference count (empty for the live fingerprint).
    """

    blocks: int
    bytes: int
    pins: tuple[str, ...]
    digest: str = ""


def open_store(store_path: Path) -> LmdbBlockStore:
    """Open a daemon's LMDB store directly (the daemon must be stopped; 1 TiB ceiling)."""
    return LmdbBlockStore(store_path, max_size_bytes=1 << 40)


def store_fingerprint(store_path: Path) -> Fingerprint:
    """Fingerprint of the LMDB store at ``store_path`` (the daemon must be stopped).

    Raises:
        StoreLocked: a daemon still holds the store.
    """
    with open_store(store_path) as store:
        h = hashlib.sha256()
        for key in store.iter_keys():
            h.update(len(key).to_bytes(2, "big") + key)
        pins = []
        for rec in store.pin_ls():
            pins.append(f"{rec.cid} {rec.mode}")
            h.update(rec.to_msgpack())
        for key, count in sorted(store.recount().items()):
            h.update(key + count.to_bytes(8, "big"))
        st = store.stat()
        return Fingerprint(blocks=st.blocks, bytes=st.bytes, pins=tuple(sorted(pins)),
                           digest=h.hexdigest())


def live_fingerprint(client: Client) -> Fingerprint:
    """Fingerprint of a running daemon's store through the RPC (counts and pins)."""
    st = client.repo_stat()
    pins = sorted(f"{p['cid']} {p['mode']}" for p in client.pins())
    return Fingerprint(blocks=st["blocks"], bytes=st["bytes"], pins=tuple(pins))


# ------------------------------------------------------------------ content


@dataclass(frozen=True, slots=True, kw_only=True)
class Content:
    """One file the campaigns add: its bytes and the UnixFS DAG pinfold makes of it.

    Attributes:
        name: a label unique in the campaign.
        data: the file's bytes.
        chunk_size: the chunker size used (bytes), passed to ``add``.
        root: the DAG's root CID.
        blocks: every block of the DAG, ``(CID, bytes)``, distinct.
    """

    name: str
    data: bytes
    chunk_size: int
    root: CID
    blocks: tuple[tuple[CID, bytes], ...] = field(repr=False)

    @property
    def root_text(self) -> str:
        return str(self.root)

    def car(self) -> bytes:
        """The DAG as a CARv1 file with this root."""
        out = bytearray(carfmt.car_header([self.root]))
        for cid, data in self.blocks:
            out += carfmt.car_section(cid, data)
        return bytes(out)

    def missing_or_wrong(self, store: LmdbBlockStore) -> list[str]:
        """Blocks of this DAG absent from ``store`` or with other bytes (CID text)."""
        bad = []
        for cid, data in self.blocks:
            try:
                if store.get(cid) != data:
                    bad.append(str(cid))
            except BlockNotFound:
                bad.append(str(cid))
        return bad


def make_content(name: str, rng: random.Random, *, sizes: Sequence[int],
                 chunk_sizes: Sequence[int]) -> Content:
    """Random bytes of a size from ``sizes`` chunked with one of ``chunk_sizes``."""
    size = rng.choice(sizes)
    size = rng.randint(max(1, size // 2), size)
    chunk = rng.choice(chunk_sizes)
    data = rng.randbytes(size)
    blocks, root, _ = unixfs.import_bytes(data, unixfs.ImportParams(chunk_size=chunk))
    distinct: dict[bytes, tuple[CID, bytes]] = {}
    for cid, block in blocks:
        distinct.setdefault(cid_key(cid), (cid, bytes(block)))
    return Content(name=name, data=data, chunk_size=chunk, root=root,
                   blocks=tuple(distinct.values()))


def chunks_of(data: bytes, size: int = MiB) -> Iterable[bytes]:
    """``data`` in pieces of ``size`` bytes (an upload iterator)."""
    for i in range(0, len(data), size):
        yield data[i:i + size]
