"""Small stream utilities shared by the RPC handlers (pure, no I/O of their own)."""

from __future__ import annotations

from collections.abc import AsyncIterator


class UploadReader:
    """Reads exact byte counts out of an async iterator of chunks (an RPC upload).

    Used to parse framed uploads (directory adds) without holding more than one
    chunk plus the bytes asked for.
    """

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = bytearray()
        self._eof = False

    async def _fill(self, n: int) -> None:
        while len(self._buf) < n and not self._eof:
            try:
                chunk = await self._chunks.__anext__()
            except StopAsyncIteration:
                self._eof = True
                return
            self._buf += chunk

    async def at_eof(self) -> bool:
        """True when no byte is left."""
        await self._fill(1)
        return not self._buf

    async def read_exactly(self, n: int) -> bytes:
        """``n`` bytes. Raises ``EOFError`` if the stream ends first."""
        await self._fill(n)
        if len(self._buf) < n:
            raise EOFError(f"upload ended after {len(self._buf)} of {n} bytes")
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    async def read_some(self, limit: int) -> bytes:
        """Up to ``limit`` (> 0) bytes; empty only at the end of the stream."""
        await self._fill(1)
        out = bytes(self._buf[:limit])
        del self._buf[:limit]
        return out
