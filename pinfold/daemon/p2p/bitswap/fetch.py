"""Fetch sessions: the exchange's fetch API turned into ``WantManager`` sessions.

``Fetches`` opens one session per fetch (``blocks``: a list of CIDs; ``dag``:
a DAG walked as its nodes arrive), keeps at most ``session_window`` blocks
wanted at once, and hands each session the blocks and failures the exchange
routes to it (``deliver``, ``fail``). Wants go out through the ``apply``
callback the exchange gives it. Imports the client core, the store and the
DAG link reader.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Iterable
from types import MappingProxyType
from typing import Any

import trio
from libp2p.peer.id import ID
from pinfold.blockstore.cid import CID, cid_key, identity_data, is_identity, parse_cid
from pinfold.blockstore.dag import links as dag_links
from pinfold.blockstore.store import BlockStore

from pinfold.daemon.p2p.bitswap.config import ExchangeConfig
from pinfold.daemon.p2p.bitswap.errors import BlockUnavailable, FetchTimeout
from pinfold.daemon.p2p.bitswap.stats import FetchStats
from pinfold.daemon.p2p.bitswap.client_types import Action, WantFailed
from pinfold.daemon.p2p.bitswap.wants import WantManager

__all__ = ["FetchSession", "Fetches"]


class FetchSession:
    """One fetch's ``WantManager`` session: its ID, its inbox of blocks and errors,
    and the blocks each peer delivered."""

    __slots__ = ("by_peer", "recv", "send", "sid")

    def __init__(self, sid: int) -> None:
        self.sid = sid
        self.send, self.recv = trio.open_memory_channel[Any](math.inf)
        self.by_peer: Counter[str] = Counter()


class Fetches:
    """The open fetch sessions.

    Args:
        wants: the client core sessions are opened on.
        store: blocks already held are read from it, not fetched.
        config: ``session_window`` and ``default_timeout_s``.
        apply: sends the core's actions on (the exchange's ``_apply``).
        check_running: raises ``BitswapNotRunning`` when the exchange is stopped.
    """

    def __init__(
        self,
        wants: WantManager,
        store: BlockStore,
        config: ExchangeConfig,
        apply: Callable[[Iterable[Action]], None],
        check_running: Callable[[], None],
    ) -> None:
        self.sessions: dict[int, FetchSession] = {}
        self._want_times: dict[bytes, float] = {}  # key -> when first wanted (latency)
        self._wants = wants
        self._store = store
        self._config = config
        self._apply = apply
        self._check_running = check_running

    # ------------------------------------------------------------ routing

    def deliver(self, sids: Iterable[int], peer: ID, cid: CID, data: bytes) -> None:
        """Hand a received block to the sessions ``sids``."""
        for sid in sids:
            sess = self.sessions.get(sid)
            if sess is not None:
                sess.by_peer[str(peer)] += 1
                sess.send.send_nowait((cid, data))

    def fail(self, a: WantFailed) -> None:
        """Fail the sessions that wanted ``a.cid`` with ``FetchTimeout`` or ``BlockUnavailable``."""
        self._want_times.pop(cid_key(a.cid), None)
        peers_asked = [str(p) for p in a.peers_asked]
        dont_have = [str(p) for p in a.dont_have]
        err: FetchTimeout = (
            BlockUnavailable(a.cid, peers_asked=peers_asked, dont_have=dont_have)
            if a.all_dont_have
            else FetchTimeout(a.cid, timeout_s=a.timeout_s, peers_asked=peers_asked,
                              dont_have=dont_have)
        )
        for sid in a.sessions:
            sess = self.sessions.get(sid)
            if sess is not None:
                sess.send.send_nowait(err)

    def fail_sessions(self, sids: Iterable[int], exc: BaseException) -> None:
        """Fail the open sessions ``sids`` with ``exc`` (their blocks cannot be stored)."""
        for sid in sids:
            sess = self.sessions.get(sid)
            if sess is not None:
                sess.send.send_nowait(exc)

    def stop_all(self, exc: BaseException) -> None:
        """Fail every open fetch with ``exc`` (the exchange stopped)."""
        for sess in list(self.sessions.values()):
            sess.send.send_nowait(exc)

    def took(self, key: bytes, now: float) -> float | None:
        """Seconds since ``key`` was first wanted (None if unknown); forgets it."""
        t0 = self._want_times.pop(key, None)
        return None if t0 is None else now - t0

    # ------------------------------------------------------------ sessions

    def open(self, peers: Iterable[ID] | None, timeout_s: float | None) -> FetchSession:
        """A new session asking ``peers`` (None: every connected peer)."""
        self._check_running()
        t = self._config.default_timeout_s if timeout_s is None else timeout_s
        if t <= 0:
            raise ValueError(f"timeout_s must be > 0, got {t}")
        sid = self._wants.new_session(
            timeout_s=t, now=trio.current_time(), peers=list(peers) if peers is not None else None
        )
        sess = FetchSession(sid)
        self.sessions[sid] = sess
        return sess

    def close(self, sess: FetchSession) -> None:
        """End ``sess``; its wants no other session shares are cancelled."""
        self.sessions.pop(sess.sid, None)
        self._apply(self._wants.close_session(sess.sid))
        for key in [k for k in self._want_times if not self._wants.is_wanted(k)]:
            del self._want_times[key]

    def want(self, sess: FetchSession, cids: list[CID]) -> None:
        """Add ``cids`` to ``sess``'s wants."""
        now = trio.current_time()
        for c in cids:
            self._want_times.setdefault(cid_key(c), now)
        self._apply(self._wants.want(sess.sid, cids, now))

    # ------------------------------------------------------------ the fetch API

    async def blocks(
        self,
        cids: Iterable[CID | str],
        *,
        peers: Iterable[ID] | None = None,
        timeout_s: float | None = None,
    ) -> AsyncIterator[tuple[CID, bytes]]:
        """``Bitswap.fetch_blocks``: ``(cid, data)`` for every CID, local ones first."""
        self._check_running()
        todo: deque[CID] = deque()
        seen: set[bytes] = set()
        local: list[CID] = []
        for raw in cids:
            cid = parse_cid(raw)
            key = cid_key(cid)
            if key in seen:
                continue
            seen.add(key)
            if is_identity(cid) or self._store.has(cid):
                local.append(cid)
            else:
                todo.append(cid)
        for cid in local:
            yield cid, (identity_data(cid) if is_identity(cid) else self._store.get(cid))
        if not todo:
            return
        sess = self.open(peers, timeout_s)
        try:
            in_flight = 0
            while todo or in_flight:
                batch = []
                while todo and in_flight + len(batch) < self._config.session_window:
                    batch.append(todo.popleft())
                if batch:
                    in_flight += len(batch)
                    self.want(sess, batch)
                item = await sess.recv.receive()
                if isinstance(item, BaseException):
                    raise item
                in_flight -= 1
                yield item[0], bytes(item[1])  # received data may be a view into a message
        finally:
            self.close(sess)

    async def dag(
        self,
        root: CID | str,
        *,
        peers: Iterable[ID] | None = None,
        timeout_s: float | None = None,
        on_block: Callable[[CID, int], None] | None = None,
        on_visit: Callable[[CID], None] | None = None,
    ) -> FetchStats:
        """``Bitswap.fetch_dag``: every block of the DAG under ``root`` not in the store."""
        self._check_running()
        root = parse_cid(root)
        start = trio.current_time()
        seen = {cid_key(root)}
        todo: deque[CID] = deque([root])
        fetched = fetched_bytes = local = 0
        in_flight = 0
        sess: FetchSession | None = None

        def expand(cid: CID, data: bytes) -> None:
            for child in dag_links(cid, data):
                k = cid_key(child)
                if k not in seen:
                    seen.add(k)
                    todo.append(child)

        try:
            while todo or in_flight:
                batch: list[CID] = []
                while todo and in_flight + len(batch) < self._config.session_window:
                    cid = todo.popleft()
                    if is_identity(cid):
                        local += 1
                        expand(cid, identity_data(cid))
                    elif self._store.has(cid):
                        local += 1
                        if on_visit is not None:
                            on_visit(cid)
                        expand(cid, self._store.get(cid))
                        await trio.lowlevel.checkpoint()
                    else:
                        batch.append(cid)
                if batch:
                    if sess is None:
                        sess = self.open(peers, timeout_s)
                    in_flight += len(batch)
                    self.want(sess, batch)
                if not in_flight:
                    continue
                assert sess is not None
                item = await sess.recv.receive()
                if isinstance(item, BaseException):
                    raise item
                cid, data = item
                in_flight -= 1
                fetched += 1
                fetched_bytes += len(data)
                if on_block is not None:
                    on_block(cid, len(data))
                if on_visit is not None:
                    on_visit(cid)
                expand(cid, data)
        finally:
            if sess is not None:
                self.close(sess)
        return FetchStats(
            root=root,
            blocks=fetched + local,
            fetched_blocks=fetched,
            fetched_bytes=fetched_bytes,
            local_blocks=local,
            elapsed_s=trio.current_time() - start,
            blocks_by_peer=MappingProxyType(dict(sess.by_peer) if sess else {}),
        )
