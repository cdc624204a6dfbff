"""Errors of the Bitswap exchange.

``RemoteProtocolError`` and its subclasses mean the *peer* broke the protocol
(garbage bytes, an oversize message, a block that does not hash to a CID we
asked for); the driver disconnects such a peer and keeps serving the others.
``FetchTimeout`` is what a caller of ``fetch_blocks``/``fetch_dag``/``get_block``
sees when no peer delivered a block in time.
"""

from __future__ import annotations

from collections.abc import Sequence


class BitswapError(Exception):
    """Base class of every error the Bitswap exchange raises."""

    code = "bitswap_error"


class RemoteProtocolError(BitswapError):
    """A peer sent something the Bitswap spec does not allow; the peer is cut off."""

    code = "remote_protocol_error"

    #: short reason used as a metrics label ("malformed", "oversize", ...)
    reason = "protocol"


class MalformedMessage(RemoteProtocolError):
    """A Bitswap message is not valid protobuf of the spec's ``Message`` shape
    (bitswap-protocol.md, "Wire Format"): truncated, wrong wire type, bad CID."""

    reason = "malformed"


class MessageTooLarge(RemoteProtocolError):
    """A length prefix announces a message over the 4 MiB limit
    (bitswap-protocol.md, "Protocol Format"), or a block over 2 MiB ("Block Sizes")."""

    reason = "oversize"


class WantlistTooLarge(RemoteProtocolError):
    """A peer's wantlist grew past the per-peer limit (a wantlist flood)."""

    reason = "wantlist_flood"


class TooManyBadBlocks(RemoteProtocolError):
    """A peer sent too many blocks that hash to no CID we asked it for."""

    reason = "bad_blocks"


def answers(peers_asked: Sequence[str], dont_have: Sequence[str]) -> str:
    """What the peers asked for a block answered, for a message:
    ``3 peers asked: 3 DONT_HAVE`` or ``2 peers asked: 1 DONT_HAVE, 1 did not send it``."""
    n, d = len(peers_asked), len(dont_have)
    parts = [f"{d} DONT_HAVE"] if d else []
    if n > d:
        parts.append(f"{n - d} did not send it")
    return f"{n} peer{'s' if n != 1 else ''} asked: {', '.join(parts)}"


class FetchTimeout(BitswapError, TimeoutError):
    """No peer delivered a wanted block before its deadline.

    Attributes:
        cid: the CID that did not arrive.
        timeout_s: the deadline that passed, seconds (no progress for that long).
        peers_asked: peer IDs (text) that were asked for it.
        dont_have: peer IDs (text) among them that answered DONT_HAVE.
    """

    code = "fetch_timeout"

    def __init__(
        self,
        cid: object,
        *,
        timeout_s: float,
        peers_asked: Sequence[str] = (),
        dont_have: Sequence[str] = (),
    ) -> None:
        self.cid = cid
        self.timeout_s = timeout_s
        self.peers_asked = tuple(peers_asked)
        self.dont_have = tuple(dont_have)
        detail = answers(self.peers_asked, self.dont_have) if self.peers_asked \
            else "no connected peer to ask"
        super().__init__(f"no peer had block {cid} within {timeout_s:g} s; {detail}")

    def __reduce__(self):  # keep pickling (and trio's exception copying) working
        return (
            _rebuild_fetch_timeout,
            (self.cid, self.timeout_s, self.peers_asked, self.dont_have),
        )


def _rebuild_fetch_timeout(cid, timeout_s, peers_asked, dont_have):
    return FetchTimeout(cid, timeout_s=timeout_s, peers_asked=peers_asked, dont_have=dont_have)


class BlockUnavailable(FetchTimeout):
    """Every connected peer asked for a block answered DONT_HAVE and none is
    expected to get it: the fetch ends at once instead of at its deadline.

    A ``FetchTimeout`` subclass, so callers that retry on a timeout still do.
    """

    code = "not_found"

    def __init__(self, cid: object, *, peers_asked: Sequence[str] = (),
                 dont_have: Sequence[str] = (), timeout_s: float = 0.0) -> None:
        super().__init__(cid, timeout_s=timeout_s, peers_asked=peers_asked, dont_have=dont_have)
        Exception.__init__(
            self, f"no peer has block {cid}: {answers(self.peers_asked, self.dont_have)}")

    def __reduce__(self):
        return (_rebuild_block_unavailable, (self.cid, self.peers_asked, self.dont_have))


def _rebuild_block_unavailable(cid, peers_asked, dont_have):
    return BlockUnavailable(cid, peers_asked=peers_asked, dont_have=dont_have)


class BitswapNotRunning(BitswapError):
    """A fetch was started before ``Bitswap.run`` started, or after it stopped."""

    code = "bitswap_not_running"
