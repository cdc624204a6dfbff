"""The fast secure channel's framing as pure logic (pinfold.daemon.p2p.transport), no
sockets: the Noise message reader decrypts messages split anywhere across reads and
refuses tampered or truncated ones; fast Yamux reads frames split anywhere across
Noise messages, as Go's and JS's Yamux may send them.
"""

from __future__ import annotations

import random

import pytest
import trio
from noise.connection import NoiseConnection
from pinfold.daemon.p2p.transport import FastSecureSession, FastYamux
from pinfold.daemon.p2p.transport.noise import NoiseMessageError, NoiseMessageReader


# ---------------------------------------------------------------- Noise framing (pure logic)


def _noise_pair() -> tuple[NoiseConnection, NoiseConnection]:
    init = NoiseConnection.from_name(b"Noise_NN_25519_ChaChaPoly_SHA256")
    resp = NoiseConnection.from_name(b"Noise_NN_25519_ChaChaPoly_SHA256")
    init.set_as_initiator()
    resp.set_as_responder()
    init.start_handshake()
    resp.start_handshake()
    resp.read_message(init.write_message())
    init.read_message(resp.write_message())
    assert init.handshake_finished and resp.handshake_finished
    return init, resp


class _ChunkedConn:
    """Hands out ``wire`` in chunks of the given sizes (a socket's reads), then EOF."""

    def __init__(self, wire: bytes, sizes: list[int]) -> None:
        self.wire, self.sizes, self.pos = wire, sizes, 0

    async def read(self, n: int | None = None) -> bytes:
        size = self.sizes[len(self.sizes) and self.pos % len(self.sizes)] if self.sizes else n
        out = self.wire[self.pos:self.pos + min(size, n or size)]
        self.pos += len(out)
        return out


def _wire(sender: NoiseConnection, plaintexts: list[bytes]) -> bytes:
    out = bytearray()
    for p in plaintexts:
        ct = sender.encrypt(p)
        out += len(ct).to_bytes(2, "big") + ct
    return bytes(out)


@pytest.mark.parametrize("chunks", [[1], [7, 1, 300], [65537], [262144], [2, 65535, 3]],
                         ids=["1", "7-1-300", "65537", "256k", "2-65535-3"])
async def test_noise_reader_decrypts_messages_split_anywhere_across_reads(chunks):
    init, resp = _noise_pair()
    rng = random.Random(6)
    plaintexts = [rng.randbytes(n) for n in (65519, 1, 100, 65519, 17, 12, 65519, 4000)]
    reader = NoiseMessageReader(_ChunkedConn(_wire(init, plaintexts), chunks),
                                resp.noise_protocol.cipher_state_decrypt, chunk_bytes=1 << 20)
    got: list[bytes] = []
    while True:
        msgs = await reader.read_messages()
        if not msgs:
            break
        got.extend(msgs)
    assert got == plaintexts


async def test_noise_reader_refuses_a_tampered_message_and_a_truncated_one():
    init, resp = _noise_pair()
    wire = bytearray(_wire(init, [b"a" * 1000, b"b" * 1000]))
    wire[1002 + 500] ^= 1  # a bit of the second message
    reader = NoiseMessageReader(_ChunkedConn(bytes(wire), []), resp.noise_protocol.cipher_state_decrypt)
    with pytest.raises(NoiseMessageError, match="authentication"):
        await reader.read_messages()

    init, resp = _noise_pair()
    wire = _wire(init, [b"c" * 1000])[:-10]
    reader = NoiseMessageReader(_ChunkedConn(wire, []), resp.noise_protocol.cipher_state_decrypt)
    with pytest.raises(Exception, match="inside a Noise message"):
        await reader.read_messages()


# ---------------------------------------------------------------- Yamux framing (pure logic)


class _PlaintextSession(FastSecureSession):
    """Hands ``FastYamux`` the given decrypted messages, then a clean end; keeps what
    it writes (an in-memory stand-in for the Noise session)."""

    def __init__(self, messages: list[bytes]) -> None:  # no handshake: nothing of super()
        self.messages = messages
        self.written: list[bytes] = []
        self.is_initiator = True

    async def receive_plaintexts(self) -> list[bytes]:
        await trio.lowlevel.checkpoint()
        batch, self.messages = self.messages[:3], self.messages[3:]
        return batch

    def write_now(self, data: bytes) -> None:
        return None  # no socket: every write takes the awaited path

    async def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    async def close(self) -> None:
        return None


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_fast_yamux_reads_frames_split_anywhere_across_noise_messages(seed):
    """Go's and JS's Yamux may coalesce frames before Noise splits them at 65519 bytes,
    so a frame header can straddle two messages."""
    import struct

    from libp2p.peer.id import ID as PeerID

    rng = random.Random(seed)
    payload = rng.randbytes(200_000)
    hdr = struct.Struct("!BBHII")
    wire = bytearray(hdr.pack(0, 1, 1, 2, 0))  # WINDOW_UPDATE + SYN: the peer opens stream 2
    pos = 0
    while pos < len(payload):
        n = min(rng.choice([1, 12, 500, 65507, 70000]), len(payload) - pos)
        wire += hdr.pack(0, 0, 0, 2, n) + payload[pos:pos + n]
        pos += n
    wire += hdr.pack(0, 2, 1, 0, 77)  # a ping
    wire += hdr.pack(0, 1, 4, 2, 0)  # FIN
    cuts = sorted(rng.sample(range(1, len(wire)), 60) + [3, 5, 13, 14])
    messages = [bytes(wire[a:b]) for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True) if b > a]
    session = _PlaintextSession(messages)
    mux = FastYamux(session, PeerID(b"\x00\x03abc"), is_initiator=True)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(mux._read_frames, session)
            stream = await mux.accept_stream()
            got = bytearray()
            while True:
                try:
                    got += await stream.read(rng.choice([7, 4096, -1]))
                except Exception as exc:  # noqa: BLE001 - only a clean end is accepted
                    assert type(exc).__name__ == "MuxedStreamEOF"
                    break
            await stream.close()
    assert bytes(got) == payload
    # stream 2 is acknowledged once: the ACK rides on our first frame on it (a
    # window update, or the FIN of our close)
    acks = [f for f in session.written if hdr.unpack_from(f)[3] == 2 and hdr.unpack_from(f)[2] & 2]
    assert len(acks) == 1
    assert hdr.pack(0, 2, 2, 0, 77) in session.written  # the ping answered
