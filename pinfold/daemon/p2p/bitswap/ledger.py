"""The exchange's peer ledger: whom we refuse, whom we leave alone a while, which blocks count.

Sans-IO: times are given (seconds, any monotonic clock), nothing is awaited.
The trio driver (``exchange``) asks it

* whether a peer is banned (cut off for misbehaviour: refused for ``ban_s``);
* how long to leave a peer alone after no stream to it could be opened or
  written (0.25 s, doubling on each failure in a row up to ``unusable_retry_s``;
  a successful write starts over);
* what a received block is: wanted, late (we asked for it lately, or received
  it lately: a duplicate, no fault of the peer) or unwanted (never asked for:
  counts against the peer, which is cut off after ``max_bad_blocks``).

Peers are any hashable (libp2p ``ID`` in the daemon); block keys are multihash
bytes (``cid_key``). Imports only ``bitswap.errors``.
"""

from __future__ import annotations

import enum
from collections import Counter, OrderedDict
from collections.abc import Hashable, Iterable, Mapping
from types import MappingProxyType
from typing import Final

from pinfold.daemon.p2p.bitswap.errors import TooManyBadBlocks

__all__ = ["FIRST_RETRY_S", "BlockVerdict", "PeerLedger"]

#: Seconds a peer is left alone after its first failed send: a reset connection is
#: usually replaced within that, and a repair whose only source it is waits for it.
FIRST_RETRY_S: Final = 0.25

#: Keys remembered as asked for / received lately (each an LRU of this size).
_MEMORY: Final = 65536

#: Peers with a backoff remembered; past this the table is emptied (peers long gone).
_MAX_BACKOFFS: Final = 4096


class BlockVerdict(enum.Enum):
    """What a received, hash-verified block is to us."""

    WANTED = "wanted"  # a session wants it: store and deliver
    LATE = "late"  # asked for or received lately: a duplicate, not the peer's fault
    UNWANTED = "unwanted"  # never asked for: counts against the peer


class PeerLedger:
    """Bans, send backoff and bad-block counts of the peers we exchange with.

    Args:
        ban_s: seconds a cut-off peer is refused.
        max_bad_blocks: unwanted blocks a peer may send before it is cut off.
        unusable_retry_s: longest wait before a peer we could not send to is
            used again, seconds.
    """

    def __init__(self, *, ban_s: float, max_bad_blocks: int, unusable_retry_s: float) -> None:
        self.ban_s = ban_s
        self.max_bad_blocks = max_bad_blocks
        self.unusable_retry_s = unusable_retry_s
        self._banned: dict[Hashable, float] = {}  # peer -> refused until
        self._retry: dict[Hashable, float] = {}  # peer -> delay after its next failure
        self._bad: Counter[Hashable] = Counter()
        # Keys we sent wants for lately: a block for one of them that arrives after
        # we cancelled the want (a fetch aborted or timed out, the cancel crossing
        # the block on the wire) is late, not unsolicited.
        self._asked: OrderedDict[bytes, None] = OrderedDict()
        self._recent: OrderedDict[bytes, None] = OrderedDict()  # keys received lately

    # ------------------------------------------------------------ bans

    def ban(self, peer: Hashable, now: float) -> None:
        """Refuse ``peer`` until ``now + ban_s``."""
        self._banned[peer] = now + self.ban_s

    def is_banned(self, peer: Hashable, now: float) -> bool:
        """Whether ``peer`` is refused at ``now``."""
        until = self._banned.get(peer)
        return until is not None and now < until

    def admit(self, peer: Hashable, now: float) -> bool:
        """Whether ``peer`` may be exchanged with at ``now``; forgets an expired ban."""
        until = self._banned.get(peer)
        if until is None:
            return True
        if now < until:
            return False
        del self._banned[peer]
        return True

    def expire(self, now: float) -> None:
        """Forget the bans over at ``now``."""
        for peer in [p for p, until in self._banned.items() if until <= now]:
            del self._banned[peer]

    # ------------------------------------------------------------ send backoff

    def unusable(self, peer: Hashable) -> float:
        """No stream to ``peer`` could be opened or written.

        Returns:
            Seconds to leave it alone before using it again (if still connected).
        """
        if len(self._retry) > _MAX_BACKOFFS:
            self._retry.clear()
        delay = self._retry.get(peer, FIRST_RETRY_S)
        self._retry[peer] = min(2 * delay, self.unusable_retry_s)
        return min(delay, self.unusable_retry_s)

    def usable(self, peer: Hashable) -> None:
        """A write to ``peer`` succeeded: its next failure waits the first delay again."""
        if self._retry:
            self._retry.pop(peer, None)

    @property
    def retry_delays(self) -> Mapping[Hashable, float]:
        """Per peer in backoff, the delay its next failure will get (read-only view)."""
        return MappingProxyType(self._retry)

    # ------------------------------------------------------------ blocks

    def asked(self, keys: Iterable[bytes]) -> None:
        """We sent wants for ``keys``."""
        asked = self._asked
        for key in keys:
            asked[key] = None
            asked.move_to_end(key)
        while len(asked) > _MEMORY:
            asked.popitem(last=False)

    def received(self, key: bytes) -> None:
        """A block for ``key`` was accepted."""
        self._recent[key] = None
        if len(self._recent) > _MEMORY:
            self._recent.popitem(last=False)

    def classify(self, key: bytes, *, wanted: bool) -> BlockVerdict:
        """What a block for ``key`` is, ``wanted`` being whether a session wants it now."""
        if wanted:
            return BlockVerdict.WANTED
        if key in self._recent or key in self._asked:
            return BlockVerdict.LATE
        return BlockVerdict.UNWANTED

    def add_bad_blocks(self, peer: Hashable, n: int) -> None:
        """Count ``n`` unwanted (or unverifiable) blocks from ``peer``.

        Raises:
            TooManyBadBlocks: ``peer`` has now sent more than ``max_bad_blocks``:
                cut it off.
        """
        if n <= 0:
            return
        self._bad[peer] += n
        if self._bad[peer] > self.max_bad_blocks:
            raise TooManyBadBlocks(f"{self._bad[peer]} blocks matched no CID we asked for")

    def forget(self, peer: Hashable) -> None:
        """``peer`` went away: its bad-block count starts over (bans and backoff stay)."""
        self._bad.pop(peer, None)
