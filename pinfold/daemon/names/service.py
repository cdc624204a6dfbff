"""The names service of a node: keeps the ``NameBook`` in step with the cluster
pinset and publishes this node's records (DESIGN.md "Names").

In a cluster every record is a direct pin of its block with the bytes in the
pin's metadata (``pinfold/names/carrier.py``), so gossip and anti-entropy
carry it. ``run`` reads the pinset's changes (``PinSet.delta_since``) at each
change of the pinset and feeds record pins to the book, which verifies them.
Records are immutable and the book grow-only: an entry that removes a known
record (an unpin) or replaces its bytes is answered by putting the genuine
record back, so no member can erase a name's history. Standalone, records are
local direct pins of their blocks, read back at start.

Imports the pure names core, the cluster driver and the pin path.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
from libp2p.crypto.keys import KeyPair
from pinfold.blockstore.cid import CID, parse_cid
from pinfold.blockstore.errors import BlockNotFound
from pinfold.blockstore.lmdbstore import LmdbBlockStore
from pinfold.blockstore.writer import BatchWriter
from pinfold.names.book import NameBook, NameRef
from pinfold.names.carrier import MARKER, record_block, record_pin_label, record_pin_metadata
from pinfold.names.records import KeySigner, NameError_, RecordError, SignedRecord, key_from_text
from pinfold.replication.entries import Entry
from pinfold.replication.types import PinMode

from pinfold.daemon.cluster import Cluster
from pinfold.daemon.metrics import counter, gauge
from pinfold.daemon.names.keys import SELF, load_signer
from pinfold.daemon.pinning import Pinner

__all__ = ["NameService", "NameStats"]

log = logging.getLogger("pinfold.names")

#: Copies of each record block held as pins (the bytes are on every node anyway).
RECORD_RMIN, RECORD_RMAX = 1, 2
#: Longest wait between two reads of the pinset's changes, seconds.
POLL_S = 1.0


def witnesses(members: Iterable[str]) -> set[bytes] | None:
    """The raw keys of the cluster members (``cluster.trusted_peers``) whose claims
    count; None (every key's) when the cluster trusts any peer."""
    keys = set()
    for peer in members:
        try:
            keys.add(key_from_text(peer))
        except NameError_:
            log.warning("cluster.trusted_peers: %s is not an Ed25519 peer ID; its name "
                        "claims do not count", peer)
    return keys or None


@dataclass(frozen=True, slots=True, kw_only=True)
class NameStats:
    """Counts for metrics: records in the book, records that change nothing
    (ungranted keys, conflicts), invalid record pins (bad signature, forged or
    damaged bytes) and records put back after a member removed or replaced them."""

    names: int
    records: int
    rejected: int
    invalid: int
    restored: int


class NameService:
    """The node's name book and its link to the cluster pinset (or local pins).

    Args:
        home_root: the node's home (named keys in ``keys/``).
        identity: the node's key pair (the ``self`` key).
        store, writer: the node's block store and its writer.
        pinner: the local pin path (standalone records).
        cluster: the node's cluster, None when standalone.
    """

    def __init__(self, *, home_root: Path, identity: KeyPair, store: LmdbBlockStore,
                 writer: BatchWriter, pinner: Pinner, cluster: Cluster | None,
                 members: Iterable[str] = ()) -> None:
        self.home_root = home_root
        self.identity = identity
        self.store = store
        self.writer = writer
        self.pinner = pinner
        self.cluster = cluster
        self.book = NameBook(witnesses(members))
        self._node_signer = load_signer(home_root, SELF, identity)
        self._claimed: set[str] = set()
        self.restored = 0
        self._seen_version = 0
        self._changed = trio.Event()

    # ------------------------------------------------------------------ running

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Load the records known at start, then follow the pinset until cancelled."""
        if self.cluster is None:
            await self._load_local()
            task_status.started()
            return
        await self._follow_once()
        task_status.started()
        manager = self.cluster.manager
        while True:
            with trio.move_on_after(POLL_S):
                await manager.changed().wait()
            await self._follow_once()

    async def _follow_once(self) -> None:
        assert self.cluster is not None
        pinset = self.cluster.manager.pinset
        version = pinset.version
        if version == self._seen_version:
            return
        entries = pinset.delta_since(self._seen_version)
        self._seen_version = version
        restore: list[SignedRecord] = []
        grew = False
        for e in entries:
            known = self.book.get(e.cid)
            if e.pin is None or MARKER not in e.pin.metadata_dict:
                if known is not None:
                    restore.append(known)  # a known record's pin removed or replaced
                continue
            grew |= self._ingest(e, known, restore)
        for signed in restore:
            e = pinset.get(signed.key)
            log.warning("name record %s of %s was removed or altered by %s; putting it back",
                        signed.cid, signed.record.name, e.peer_id if e else "?")
            self.restored += 1
            await self._put_record_pin(signed, stage=False)
        if grew:
            self._wake()
        await self._claim_names()

    async def _claim_names(self) -> None:
        """Witness the creator of every name this node has not claimed yet (once:
        a member's claim never changes; see ``pinfold/names/book.py``)."""
        me = self._node_signer
        todo = []
        for name in self.book.names():
            if name in self._claimed:
                continue
            self._claimed.add(name)
            if not self.book.has_claim(name, me.public_key):
                todo.append(self.book.new_claim(name, key=me.public_key, sign=me.sign,
                                                time_ms=self.now_ms()))
        if todo:
            await self.publish(todo)

    def _ingest(self, e: Entry, known: SignedRecord | None, restore: list[SignedRecord]) -> bool:
        assert e.pin is not None
        block = record_block(e.cid, e.pin.metadata_dict)
        if block is None:
            self.book.invalid += 1
            log.warning("dropped a name record pin from %s: its bytes do not match its CID",
                        e.peer_id)
            if known is not None:
                restore.append(known)
            return False
        if known is not None:
            return False
        try:
            self.book.add_block(block)
        except RecordError as exc:
            log.warning("dropped a name record from %s: %s", e.peer_id, exc)
            return False
        return True

    async def _load_local(self) -> None:
        def scan() -> list[bytes]:
            blocks = []
            for rec in self.store.pin_ls():
                if MARKER in rec.metadata:
                    try:
                        blocks.append(self.store.get(rec.cid))
                    except BlockNotFound:
                        continue
            return blocks

        for block in await trio.to_thread.run_sync(scan):
            try:
                self.book.add_block(block)
            except RecordError as exc:
                log.warning("ignored a stored name record: %s", exc)

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_record(self, predicate: Any, timeout_s: float) -> bool:
        """Wait until ``predicate()`` is true (checked at each new record); False on timeout."""
        with trio.move_on_after(timeout_s):
            while not predicate():
                await self._changed.wait()
            return True
        return False

    # ------------------------------------------------------------------ publishing

    def signer(self, key: str) -> KeySigner:
        """The signer of key ``key`` (``self`` or a named key). Raises ``KeyError_``."""
        return load_signer(self.home_root, key, self.identity)

    @staticmethod
    def now_ms() -> int:
        return int(time.time() * 1000)

    async def publish(self, records: Iterable[SignedRecord]) -> None:
        """Store, pin (cluster: write to the pinset) and add each record, in order."""
        for signed in records:
            await self._put_record_pin(signed, stage=True)
            self.book.add(signed)
        self._wake()
        if self.cluster is not None and any(s.record.kind == "version" for s in records):
            await self._claim_names()

    async def _put_record_pin(self, signed: SignedRecord, *, stage: bool) -> None:
        await self.writer.put_many([(signed.cid, signed.block)])
        if self.cluster is None:
            await self.pinner.pin(signed.cid, recursive=False, name=record_pin_label(signed),
                                  metadata={MARKER: signed.record.kind}, local_only=True)
            return
        await self.cluster.manager.pin_add(
            signed.key, name=record_pin_label(signed), mode=PinMode.DIRECT,
            rmin=RECORD_RMIN, rmax=RECORD_RMAX, metadata=record_pin_metadata(signed),
            stage=stage)

    # ------------------------------------------------------------------ reading

    def parse(self, ref: str) -> NameRef:
        """``NameBook.parse_known`` (``NAME/path`` of a known name too) that refuses
        CID paths (a name is expected here)."""
        parsed = self.book.parse_known(ref)
        if parsed is None:
            raise NameError_(f"{ref!r} is a CID, not a name")
        return parsed

    def root_of(self, ref: str) -> CID:
        """The root CID ``ref``'s version names. Raises ``NameNotFound``, ``NameError_``."""
        return parse_cid(self.book.lookup(self.parse(ref)).root)

    def statistics(self) -> NameStats:
        """Counts for ``metric_families``."""
        return NameStats(names=len(self.book.names()), records=len(self.book),
                         rejected=self.book.rejected(), invalid=self.book.invalid,
                         restored=self.restored)

    def metric_families(self) -> Iterable[Any]:
        """The names metric families (``pinfold_names_*``)."""
        st = self.statistics()
        yield gauge("pinfold_names", "Names this node resolves", st.names)
        yield gauge("pinfold_names_records", "Signed name records this node holds", st.records)
        yield gauge("pinfold_names_records_rejected", "Validly signed name records that change "
                    "nothing: keys not granted the name, conflicting versions", st.rejected)
        yield counter("pinfold_names_records_invalid", "Name records dropped for a bad "
                      "signature or bytes that do not match their CID", st.invalid)
        yield counter("pinfold_names_records_restored", "Name records put back after a member "
                      "unpinned or replaced them", st.restored)
