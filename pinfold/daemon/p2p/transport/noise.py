"""Noise sessions with a buffered receive path (see the package docstring).

Noise transport messages on the wire: a 2-byte big-endian length, then that
many bytes of ChaCha20-Poly1305 ciphertext (plaintext + 16-byte tag), at most
65535 bytes. py-libp2p's session reads each message with two awaited socket
reads (the length, then the body); ``NoiseMessageReader`` reads the socket in
large chunks and decrypts every complete message in a chunk at once.
"""

from __future__ import annotations

import os
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from libp2p.abc import IRawConnection, ISecureConn
from libp2p.io.exceptions import ConnectionClosedError, IncompleteReadError, IOException
from libp2p.io.trio import TrioTCPStream
from libp2p.peer.id import ID
from libp2p.security.noise.io import NoiseTransportReadWriter
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.security.secure_session import SecureSession

__all__ = [
    "MAX_NOISE_MESSAGE_BYTES",
    "MAX_PLAINTEXT_BYTES",
    "READ_CHUNK_BYTES",
    "FastNoiseTransport",
    "FastSecureSession",
    "NoiseMessageError",
    "NoiseMessageReader",
]

#: largest Noise transport message (ciphertext incl. tag), bytes; its length field is 2 bytes
MAX_NOISE_MESSAGE_BYTES: Final = 65535
#: Poly1305 tag appended to every ciphertext, bytes
NOISE_TAG_BYTES: Final = 16
#: largest plaintext one Noise message carries, bytes (go-libp2p's MaxPlaintextLength)
MAX_PLAINTEXT_BYTES: Final = MAX_NOISE_MESSAGE_BYTES - NOISE_TAG_BYTES
#: bytes asked of the socket per read; a chunk holds about four full Noise messages
READ_CHUNK_BYTES: Final = 256 * 1024


class NoiseMessageError(IOException):
    """A Noise transport message failed authentication (corrupt, forged, or out of order)."""


class NoiseMessageReader:
    """Reads and decrypts Noise transport messages from a raw connection in large chunks.

    Decryption uses the handshake's receiving ``CipherState`` (its ChaCha20-Poly1305
    object and its nonce counter), exactly as py-libp2p's own reader does, but on a
    memoryview of the received chunk instead of a copied ``bytes`` body.
    """

    def __init__(self, raw: IRawConnection, cipher_state: Any, *, chunk_bytes: int = READ_CHUNK_BYTES) -> None:
        """
        Args:
            raw: the connection the handshake ran on (nothing of it may be buffered elsewhere).
            cipher_state: the handshake's receiving ``noise.state.CipherState``.
            chunk_bytes: bytes asked of the socket per read.
        """
        self._raw = raw
        self._decrypt = cipher_state.decrypt_with_ad
        self._chunk_bytes = chunk_bytes
        # an incomplete message (with its length prefix) from the last chunk(s)
        self._pending = bytearray()

    async def read_messages(self) -> list[bytes]:
        """The plaintexts of the next complete Noise messages, in order.

        Reads the socket (once, or more while no message is complete) and returns
        every message completed by what arrived.

        Returns:
            at least one plaintext; ``[]`` when the connection ended cleanly
            between messages.

        Raises:
            IncompleteReadError: the connection ended inside a message.
            NoiseMessageError: a message failed authentication.
            ConnectionClosedError, RawConnError: the connection broke.
        """
        out: list[bytes] = []
        while not out:
            chunk = await self._raw.read(self._chunk_bytes)
            if not chunk:
                if self._pending:
                    raise IncompleteReadError(
                        f"connection closed inside a Noise message ({len(self._pending)} bytes of it received)",
                        expected_bytes=_expected(self._pending), received_bytes=len(self._pending))
                return out
            self._parse(chunk, out)
        return out

    def _parse(self, chunk: bytes, out: list[bytes]) -> None:
        """Decrypt every message completed by ``chunk`` into ``out``; keep the tail."""
        decrypt = self._decrypt
        view = memoryview(chunk)
        end = len(chunk)
        pos = 0
        pending = self._pending
        if pending:
            if len(pending) < 2:
                pos = min(2 - len(pending), end)
                pending += view[:pos]
                if len(pending) < 2:
                    return
            total = 2 + ((pending[0] << 8) | pending[1])
            take = min(total - len(pending), end - pos)
            pending += view[pos:pos + take]
            pos += take
            if len(pending) < total:
                return
            self._pending = bytearray()
            out.append(self._open(memoryview(pending)[2:]))
        while end - pos >= 2:
            stop = pos + 2 + ((chunk[pos] << 8) | chunk[pos + 1])
            if stop > end:
                break
            try:
                out.append(decrypt(None, view[pos + 2:stop]))
            except InvalidTag:
                raise NoiseMessageError("a Noise message failed authentication") from None
            pos = stop
        if pos < end:
            self._pending += view[pos:]

    def _open(self, ciphertext: memoryview) -> bytes:
        try:
            return self._decrypt(None, ciphertext)
        except InvalidTag:
            raise NoiseMessageError("a Noise message failed authentication") from None


def _expected(pending: bytearray) -> int:
    return 2 + ((pending[0] << 8) | pending[1]) if len(pending) >= 2 else 2


class FastSecureSession(SecureSession):
    """py-libp2p's Noise ``SecureSession`` with a buffered, batch-decrypting receive path.

    Writing is py-libp2p's (``NoiseTransportReadWriter.write_msg``: plaintext split at
    65519 bytes, one Noise message each). ``read(n)`` keeps the stock contract (at most
    ``n`` bytes, at least one). ``FastYamux`` takes whole decrypted messages with
    ``receive_plaintexts``.
    """

    def __init__(self, stock: SecureSession, *, chunk_bytes: int = READ_CHUNK_BYTES) -> None:
        """Take over ``stock`` (a session just returned by py-libp2p's Noise handshake).

        Raises:
            TypeError: ``stock`` is not py-libp2p's Noise session over a raw connection.
        """
        rw = stock.conn
        if not isinstance(rw, NoiseTransportReadWriter):
            raise TypeError(f"expected a Noise transport session, got {type(rw).__name__}")
        super().__init__(
            local_peer=stock.local_peer,
            local_private_key=stock.local_private_key,
            remote_peer=stock.remote_peer,
            remote_permanent_pubkey=stock.remote_permanent_pubkey,
            is_initiator=stock.is_initiator,
            conn=rw,
        )
        raw = rw.read_writer.read_write_closer
        cipher_state = rw.noise_state.noise_protocol.cipher_state_decrypt
        self.reader = NoiseMessageReader(raw, cipher_state, chunk_bytes=chunk_bytes)
        self._plain: list[bytes] = []  # decrypted, not yet read (the first one from _offset)
        self._offset = 0
        self._raw = raw
        self._encrypt = rw.noise_state.noise_protocol.cipher_state_encrypt.encrypt_with_ad
        tcp = getattr(raw, "stream", None)  # RawConnection over a TrioTCPStream
        self._tcp = tcp if isinstance(tcp, TrioTCPStream) else None

    def write_now(self, data: bytes | memoryview) -> memoryview | None:
        """Encrypt ``data`` and hand the socket what it takes at once, without waiting.

        For a caller that keeps its own writes in order (``FastYamux``): no
        other write may be under way on this session. The messages are the
        ones ``write`` sends (plaintext split at ``MAX_PLAINTEXT_BYTES``).

        Returns:
            None when this cannot be tried (not TCP, the socket closed, a write
            through py-libp2p under way, or ``data`` empty): nothing was
            encrypted, write the usual way. Else the encrypted bytes the
            socket did not take (empty: all sent); they must be written with
            ``write_rest`` before anything else, or the peer's nonce falls out
            of step.

        Raises:
            ConnectionClosedError: the socket failed (reset, broken pipe).
        """
        tcp = self._tcp
        if tcp is None or not data or tcp.write_lock.locked():
            return None
        fd = tcp.stream.socket.fileno()
        if fd < 0:
            return None
        encrypt = self._encrypt
        view = memoryview(data)
        parts: list[bytes] = []
        for start in range(0, len(view), MAX_PLAINTEXT_BYTES):
            sealed = encrypt(None, view[start:start + MAX_PLAINTEXT_BYTES])
            parts.append(len(sealed).to_bytes(2, "big"))
            parts.append(sealed)
        wire = b"".join(parts)
        try:
            sent = os.write(fd, wire)  # the socket is non-blocking (trio's)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            raise ConnectionClosedError(f"TCP write failed: {exc}", transport="tcp") from exc
        return memoryview(wire)[sent:]

    async def write_rest(self, rest: memoryview) -> None:
        """Send what ``write_now`` left over (already encrypted), waiting for the socket.

        Raises:
            ConnectionClosedError, RawConnError: the connection broke.
        """
        await self._raw.write(bytes(rest))

    async def receive_plaintexts(self) -> list[bytes]:
        """What is buffered, else the next decrypted Noise messages.

        Returns:
            one or more non-empty byte strings; ``[]`` at a clean end of the connection.

        Raises:
            as ``NoiseMessageReader.read_messages``.
        """
        if self._plain:
            out = self._plain
            if self._offset:
                out[0] = out[0][self._offset:]
            self._plain, self._offset = [], 0
            return out
        msgs = await self.reader.read_messages()
        while msgs:
            kept = [m for m in msgs if m]  # an empty Noise message carries nothing
            if kept:
                return kept
            msgs = await self.reader.read_messages()
        return []

    async def read(self, n: int | None = None) -> bytes:
        """Up to ``n`` bytes of plaintext (everything buffered when ``n`` is None).

        Raises:
            IncompleteReadError: the connection ended (``received_bytes == 0``: cleanly).
            NoiseMessageError: a message failed authentication.
        """
        if n == 0:
            return b""
        if not self._plain:
            self._plain = await self.receive_plaintexts()
            self._offset = 0
            if not self._plain:
                raise IncompleteReadError("Connection closed", expected_bytes=n or 1, received_bytes=0)
        parts: list[bytes] = []
        want = n if n is not None and n > 0 else None
        while self._plain and (want is None or want > 0):
            head = self._plain[0]
            avail = len(head) - self._offset
            if want is not None and avail > want:
                parts.append(head[self._offset:self._offset + want])
                self._offset += want
                break
            parts.append(head[self._offset:] if self._offset else head)
            self._plain.pop(0)
            self._offset = 0
            if want is not None:
                want -= avail
        return parts[0] if len(parts) == 1 else b"".join(parts)


class FastNoiseTransport(NoiseTransport):
    """py-libp2p's Noise transport (``/noise``, XX handshake) returning ``FastSecureSession``s."""

    chunk_bytes: int = READ_CHUNK_BYTES

    async def secure_inbound(self, conn: IRawConnection) -> ISecureConn:
        stock = await super().secure_inbound(conn)
        return FastSecureSession(stock, chunk_bytes=self.chunk_bytes)  # type: ignore[arg-type]

    async def secure_outbound(self, conn: IRawConnection, peer_id: ID) -> ISecureConn:
        stock = await super().secure_outbound(conn, peer_id)
        return FastSecureSession(stock, chunk_bytes=self.chunk_bytes)  # type: ignore[arg-type]
