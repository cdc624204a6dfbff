"""Per-request flow control bookkeeping: ``RecvWindow`` (when to grant credit)
and ``SendCredit`` (what may be sent), in bytes of frame body.

Imports ``errors``."""

from __future__ import annotations

from dataclasses import dataclass

from pinfold.daemon.rpc.wire.errors import WireError


class FlowControlError(WireError):
    """A peer sent beyond its credit or granted credit beyond the window."""

    def __init__(self, message: str) -> None:
        super().__init__("protocol_error", message)


@dataclass(slots=True)
class RecvWindow:
    """Receiver side of one request's stream: how much may arrive, when to grant more.

    ``window`` bytes are granted implicitly at the start. Each arriving frame
    costs its body length (``on_receive``); when the consumer takes a frame
    (``on_consume``), its cost is freed and handed back as credit once at least
    ``window // 4`` bytes are free. Since ``window >= 2 * MAX_FRAME_BYTES``, a
    sender blocked for credit always gets it once the consumer drains the
    buffer, so the stream cannot deadlock; and the buffer never holds more
    than ``window`` bytes.

    Attributes:
        window: the window, bytes.
        outstanding: credit the sender holds or has in flight, bytes.
        buffered: bytes received and not yet consumed.
        freed: bytes consumed and not yet granted back.
        peak_buffered: the largest ``buffered`` seen, bytes.
    """

    window: int
    outstanding: int = -1
    buffered: int = 0
    freed: int = 0
    peak_buffered: int = 0

    def __post_init__(self) -> None:
        if self.outstanding < 0:
            self.outstanding = self.window

    def on_receive(self, cost: int) -> None:
        """A frame of ``cost`` body bytes arrived. Raises ``FlowControlError`` beyond credit."""
        if cost > self.outstanding:
            raise FlowControlError(
                f"peer sent a {cost}-byte frame with only {self.outstanding} bytes of credit")
        self.outstanding -= cost
        self.buffered += cost
        self.peak_buffered = max(self.peak_buffered, self.buffered)

    def on_consume(self, cost: int) -> int:
        """The consumer took a frame of ``cost`` bytes; returns bytes to grant now (0 = none)."""
        self.buffered -= cost
        self.freed += cost
        if self.freed >= self.window // 4:
            grant, self.freed = self.freed, 0
            self.outstanding += grant
            return grant
        return 0


@dataclass(slots=True)
class SendCredit:
    """Sender side of one request's stream: the credit left, in bytes of frame body.

    Attributes:
        window: the receiver's window, bytes (the initial credit).
        available: credit left, bytes.
    """

    window: int
    available: int = -1

    def __post_init__(self) -> None:
        if self.available < 0:
            self.available = self.window

    def can_send(self, cost: int) -> bool:
        """True if a frame of ``cost`` bytes fits in the credit."""
        return cost <= self.available

    def spend(self, cost: int) -> None:
        """Take ``cost`` bytes of credit (the caller checked ``can_send``)."""
        if cost > self.available:
            raise ValueError(f"spending {cost} bytes with only {self.available} of credit")
        self.available -= cost

    def grant(self, nbytes: int) -> None:
        """The receiver granted ``nbytes``. Raises ``FlowControlError`` above the window."""
        if self.available + nbytes > self.window:
            raise FlowControlError(
                f"credit overflow: a grant of {nbytes} bytes lifts credit to "
                f"{self.available + nbytes}, above the {self.window}-byte window")
        self.available += nbytes

