"""Transfers a user waits on (``cat``, ``get``, ``pin add``): what arrived
(``TransferMeter``), the progress events streamed to a client that asked for
them, the request's ``timeout`` and the error that says what timed out
(``TransferTimeout``), and the expected size read from the root's UnixFS sizes
(``expected_size``).

Used by the RPC handlers (``api.py``); the counters of blocks received come
from the node (``Node.received``), so this module imports no network code.
Imports trio and the blockstore's dag-pb and UnixFS decoders.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol

import trio

from pinfold.blockstore import dagpb
from pinfold.blockstore.cid import CID, DAG_PB, IDENTITY, RAW, cid_text
from pinfold.blockstore.errors import BlockNotFound, DecodeError
from pinfold.blockstore.store import BlockStore
from pinfold.blockstore.unixfs.data import DataType, decode_data

from pinfold.daemon.errors import InvalidArgument

__all__ = ["PROGRESS_INTERVAL_S", "DagVisits", "TransferMeter", "TransferTimeout",
           "expected_size", "fetch_timeout_s", "metered_get", "metered_prefetch",
           "timeout_param", "transfer"]

#: Seconds between progress events (a terminal redraws about 4 times a second).
PROGRESS_INTERVAL_S = 0.25
#: The block exchange's own no-progress bound under a ``timeout`` is that plus
#: this, so the request's deadline, with its fuller message, passes first.
FETCH_TIMEOUT_MARGIN_S = 1.0

#: ``() -> (blocks, bytes, blocks by peer ID)`` received from peers so far.
ReceivedCounts = Callable[[], tuple[int, int, dict[str, int]]]


def timeout_param(params: dict[str, Any]) -> float | None:
    """The request's ``timeout`` (seconds, > 0), or None.

    Raises:
        InvalidArgument: not a finite number > 0.
    """
    value = params.get("timeout")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not 0 < value < math.inf:
        raise InvalidArgument(f"timeout must be a number of seconds > 0, got {value!r}")
    return float(value)


def expected_size(cid: CID, block: bytes, *, content: bool, offset: int = 0,
                  length: int | None = None) -> int | None:
    """Bytes a transfer of ``cid`` (whose root block is ``block``) will move, from the
    root's UnixFS sizes.

    ``content``: the file's bytes (UnixFS ``filesize``, else data + blocksizes;
    a raw block's length); else the DAG's bytes (root block + the links'
    Tsizes, the cumulative size Kubo reports). None when the root does not say
    (not dag-pb or raw, a link without Tsize, not a file when ``content``).
    With ``content``, only the range ``[offset, offset + length)`` counts.
    """
    size = _root_size(cid, block, content=content)
    if size is None or not content:
        return size
    end = size if length is None else min(size, offset + length)
    return max(0, end - offset)


def _root_size(cid: CID, block: bytes, *, content: bool) -> int | None:
    codec = cid.codec.code
    if codec == RAW:
        return len(block)
    if codec != DAG_PB:
        return None
    try:
        node = dagpb.decode(block)
        if not content:
            if any(link.tsize is None for link in node.links):
                return None
            return len(block) + sum(link.tsize or 0 for link in node.links)
        ufs = decode_data(node.data)
    except (DecodeError, ValueError):
        return None
    if ufs.type not in (DataType.FILE, DataType.RAW):
        return None
    if ufs.filesize is not None:
        return ufs.filesize
    return len(ufs.data or b"") + sum(ufs.blocksizes)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


class TransferMeter:
    """Counters of one transfer; the handler feeds them, events and errors read them.

    ``done`` counts the transfer's own unit (a file's bytes for ``cat``, the
    DAG's block bytes for ``get`` and ``pin add``) toward ``total``; ``blocks``
    the blocks reached; ``local_bytes`` the part of ``done`` that was already
    in the store when the transfer reached it (a resumed fetch), so a rate is
    ``(done - local_bytes) / elapsed``. What arrived from peers is read from
    the node's counters (every fetch of the node while this one runs) against
    their value at the start: ``fetched_*`` and the peers that sent blocks.

    Attributes:
        what: the command, for messages (``cat``, ``get``, ``pin add``).
        cid: the CID asked for (text).
        total: bytes expected (``expected_size``), None if unknown.
        done: bytes done so far.
        local_bytes: bytes of ``done`` found in the store, not fetched by this run.
        wanted: multihashes of blocks this run asked peers for (prefetched).
        blocks: blocks reached so far.
        waiting_on: a block being fetched now, when the handler knows it.
        started: ``trio.current_time()`` at the start.
    """

    def __init__(self, what: str, cid: str, received: ReceivedCounts) -> None:
        self.what = what
        self.cid = cid
        self._total: int | None = None
        self._total_root: tuple[CID, bytes] | None = None
        self.done = 0
        self.local_bytes = 0
        self.wanted: set[bytes] = set()
        self.blocks = 0
        self.waiting_on: CID | None = None
        self.started = trio.current_time()
        self._received = received
        self._base = received()

    @property
    def total(self) -> int | None:
        """Bytes expected, None if unknown (from the root block on first read when
        ``total_from_root`` gave one)."""
        if self._total_root is not None:
            cid, block = self._total_root
            self._total_root = None
            self._total = expected_size(cid, block, content=False)
        return self._total

    @total.setter
    def total(self, value: int | None) -> None:
        self._total_root = None
        self._total = value

    def total_from_root(self, cid: CID, block: bytes) -> None:
        """Take ``total`` as the DAG bytes the root block ``block`` announces, decoded
        only when ``total`` is read (a progress event, a timeout): decoding the
        root of a directory of thousands of entries costs milliseconds."""
        self._total = None
        self._total_root = (cid, block)

    def fetched(self) -> tuple[int, int, int]:
        """``(blocks, bytes, peers)`` received from peers since the start."""
        blocks, nbytes, by_peer = self._received()
        b0, n0, peers0 = self._base
        peers = sum(1 for p, n in by_peer.items() if n > peers0.get(p, 0))
        return blocks - b0, nbytes - n0, peers

    def event(self, *, done: bool = False) -> dict[str, Any]:
        """The progress event now (DESIGN.md, "Progress events")."""
        fetched_blocks, fetched_bytes, peers = self.fetched()
        ev: dict[str, Any] = {
            "bytes": self.done, "local_bytes": min(self.local_bytes, self.done),
            "total": self.total, "blocks": self.blocks,
            "fetched_blocks": fetched_blocks, "fetched_bytes": fetched_bytes,
            "peers": peers, "elapsed_s": round(trio.current_time() - self.started, 3),
        }
        if done:
            ev["done"] = True
        return ev


class TransferTimeout(TimeoutError):
    """A ``cat``/``get``/``pin add`` did not finish within its ``timeout``.

    The message names the command, the CID, the bound, how far it got and what
    arrived from how many peers, and the block it was waiting for when known.

    Attributes:
        code: ``timeout`` (CLI exit status 5).
        cid: the CID asked for (text).
        timeout_s: the bound, seconds.
    """

    code = "timeout"

    def __init__(self, meter: TransferMeter, timeout_s: float) -> None:
        self.cid = meter.cid
        self.timeout_s = timeout_s
        blocks, nbytes, peers = meter.fetched()
        of = f" of {meter.total}" if meter.total is not None else ""
        text = (f"{meter.what} {meter.cid}: timed out after {timeout_s:g} s with "
                f"{meter.done}{of} bytes done; {_plural(blocks, 'block')} ({nbytes} bytes) "
                f"arrived from {_plural(peers, 'peer')}")
        if meter.waiting_on is not None and str(meter.waiting_on) != meter.cid:
            text += f"; waiting for block {meter.waiting_on}"
        elif meter.waiting_on is not None or not (meter.blocks or meter.done or blocks):
            text += "; no peer sent its root block"
        super().__init__(text)

    def __reduce__(self):  # keep pickling and copying working (the meter is not kept)
        return (_rebuild_timeout, (str(self), self.cid, self.timeout_s))


def _rebuild_timeout(text: str, cid: str, timeout_s: float) -> TransferTimeout:
    exc = TransferTimeout.__new__(TransferTimeout)
    TimeoutError.__init__(exc, text)
    exc.cid, exc.timeout_s = cid, timeout_s
    return exc


async def _report(call: Any, meter: TransferMeter) -> None:
    """Send a progress event every ``PROGRESS_INTERVAL_S`` while something changed."""
    last: tuple[int, int, int] | None = None
    while True:
        fetched = meter.fetched()
        now = (meter.done, meter.blocks, fetched[1])
        if now != last:
            await call.progress(meter.event())
            last = now
        await trio.sleep(PROGRESS_INTERVAL_S)


@asynccontextmanager
async def transfer(call: Any, what: str, cid: CID | str, received: ReceivedCounts
                   ) -> AsyncIterator[TransferMeter]:
    """Run a transfer's body under its request's ``timeout`` param (``cid``: the CID or
    reference the user gave, named in a timeout error), streaming progress
    events while it runs when the client asked (``progress: true``) and a last one,
    ``done``, when it succeeds.

    Yields the ``TransferMeter`` the body feeds; the body's fetches take
    ``fetch_timeout_s(call.params)`` as their no-progress bound.

    Raises:
        InvalidArgument: a bad ``timeout`` param.
        TransferTimeout: the timeout passed first.
    """
    timeout_s = timeout_param(call.params)
    meter = TransferMeter(what, str(cid), received)
    deadline = math.inf if timeout_s is None else trio.current_time() + timeout_s
    with trio.CancelScope(deadline=deadline) as scope:
        if call.wants_progress:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_report, call, meter)
                yield meter
                nursery.cancel_scope.cancel()
        else:
            yield meter
    if scope.cancelled_caught:
        assert timeout_s is not None
        raise TransferTimeout(meter, timeout_s)
    if call.wants_progress:  # the event reads the total, which may decode the root
        await call.progress(meter.event(done=True), wait=True)


class BlockSource(Protocol):
    """What ``metered_get`` reads blocks through (the node)."""

    def read_local(self, cids: Sequence[CID],
                   fn: Callable[[CID, bytes | memoryview], Any]) -> list[Any]: ...

    async def get_block(self, cid: CID, *, timeout_s: float | None = None,
                        wait_for_peers: bool = False) -> bytes: ...


def _copy(_: CID, block: bytes | memoryview) -> bytes:
    return bytes(block)


def _content_bytes(cid: CID, block: bytes) -> int:
    """The file bytes a block holds (a raw leaf's length, a dag-pb node's UnixFS data)."""
    if cid.codec.code == RAW:
        return len(block)
    try:
        return len(decode_data(dagpb.decode(block).data).data or b"")
    except (DecodeError, ValueError):
        return 0


def metered_get(node: BlockSource, meter: TransferMeter, timeout_s: float | None, *,
                dag_bytes: bool) -> Callable[[CID], Awaitable[bytes]]:
    """``get_block`` for a transfer: counts each distinct block reached (and, with
    ``dag_bytes``, its bytes toward ``meter.done``, reading the expected total from
    the root block, the first one read), and notes the block being fetched for a
    timeout's message.

    A block in the store when first reached and not prefetched by this run
    (``meter.wanted``) counts toward ``meter.local_bytes``: its block bytes with
    ``dag_bytes``, else the file bytes it holds (``cat``, whose ``done`` is
    file bytes). Such a block is read with ``read_local`` (one store read, as
    ``get_block`` would); one not there is then fetched through ``get_block``.

    The last block read is kept, so a reader that reads a block twice in a row
    (``get`` reads a file's root to list it, then to send it) reads the store
    once. Blocks count by multihash: two spellings of a CID are one block.

    Once peers have sent blocks during the transfer, a block fetched with no
    peer connected waits for one (``wait_for_peers``) within ``timeout_s``:
    the holder that left mid-transfer may be back, as under ``pin add``.
    """
    seen: set[bytes] = set()
    last_key = b""
    last_data = b""

    async def get(cid: CID) -> bytes:
        nonlocal last_key, last_data
        key = cid.digest
        if key == last_key:
            return last_data
        data: bytes | None = None
        if key not in seen and key not in meter.wanted and cid.hashfun.code != IDENTITY:
            data = node.read_local([cid], _copy)[0]
        local = data is not None
        if data is None:
            # A local read returns without a checkpoint, so nobody sees this unless
            # the block is being fetched from peers.
            meter.waiting_on = cid
            data = await node.get_block(cid, timeout_s=timeout_s,
                                        wait_for_peers=meter.fetched()[0] > 0)
            meter.waiting_on = None
        last_key, last_data = key, data
        if key not in seen:
            seen.add(key)
            meter.blocks += 1
            if local:
                meter.local_bytes += len(data) if dag_bytes else _content_bytes(cid, data)
            if dag_bytes:
                meter.done += len(data)
                if meter.blocks == 1 and meter.total is None and cid_text(cid) == meter.cid:
                    meter.total_from_root(cid, data)
        return data

    return get


def metered_prefetch(prefetch: Callable[[list[CID]], list[CID] | None],
                     meter: TransferMeter) -> Callable[[list[CID]], None]:
    """A reader's ``prefetch`` (``Node.prefetcher``'s, which returns the blocks it
    wanted from peers) that notes those in ``meter.wanted``, so ``metered_get``
    does not count them as local when they have arrived by the time they are read."""

    def wrapped(cids: list[CID]) -> None:
        meter.wanted.update(c.digest for c in prefetch(cids) or ())

    return wrapped


class DagVisits:
    """``on_visit`` and ``on_fetched`` for a pin's DAG walk (``Pinner.pin``): each
    block reached (stored by then) counts with its bytes, the root's gives the
    expected total, and a block not reported fetched first counts as local.

    The walk reports a fetched block to ``on_fetched`` just before it visits it
    (Bitswap's ``fetch_dag``: ``on_block``, then ``on_visit``).
    """

    def __init__(self, store: BlockStore, meter: TransferMeter) -> None:
        self._store = store
        self._meter = meter
        self._fetched = b""

    def on_fetched(self, cid: CID, size: int) -> None:
        """The walk fetched ``cid`` (``size`` bytes) from a peer."""
        self._fetched = cid.digest

    def on_visit(self, cid: CID) -> None:
        """The walk reached ``cid`` (in the store by now)."""
        meter = self._meter
        fetched, self._fetched = self._fetched == cid.digest, b""
        try:
            if meter.total is None and cid_text(cid) == meter.cid:
                meter.total = expected_size(cid, self._store.get(cid), content=False)
            size = self._store.get_size(cid)
        except BlockNotFound:
            return
        meter.done += size
        if not fetched:
            meter.local_bytes += size
        meter.blocks += 1


def fetch_timeout_s(params: dict[str, Any]) -> float | None:
    """The exchange's no-progress bound under a request's ``timeout`` (None: the
    configured default): a fetch may wait as long as the request allows."""
    timeout_s = timeout_param(params)
    return None if timeout_s is None else timeout_s + FETCH_TIMEOUT_MARGIN_S
