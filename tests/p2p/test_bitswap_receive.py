"""The receive pipeline: stream framing with at most one copy per message, decode,
hashing off the trio thread, and stores that overlap with the next messages."""

from __future__ import annotations

import hashlib
import random

import pytest
import trio
from pinfold.blockstore.cid import cid_key
from pinfold.daemon.p2p.bitswap import Bitswap
from pinfold.daemon.p2p.bitswap.client_types import ClientConfig
from pinfold.daemon.p2p.bitswap.config import ExchangeConfig
from pinfold.daemon.p2p.bitswap.errors import MalformedMessage, MessageTooLarge
from pinfold.daemon.p2p.bitswap.message import (
    Block,
    BlockPresence,
    CidPrefix,
    FrameDecoder,
    Message,
    PresenceType,
    WantEntry,
    costly_to_decode,
    encode_message,
)

from tests.support.bitswap import DictStore, new_host, raw_blocks, running_nodes, wantlist_entries
from tests.support.wait import wait_until_trio

MiB = 1024 * 1024


# ------------------------------------------------------------------ framing


def _split(data: bytes, rnd: random.Random) -> list[bytes]:
    out, pos = [], 0
    while pos < len(data):
        n = rnd.choice([1, 2, 3, 7, 100, 65507, 300_000])
        out.append(data[pos:pos + n])
        pos += n
    return out


def test_frames_split_anywhere_come_out_whole_and_in_order() -> None:
    rnd = random.Random(0)
    bodies = [rnd.randbytes(n) for n in (0, 1, 127, 128, 65507, 65508, 1_000_000, 3)]
    stream = b"".join(encode_framed_body(b) for b in bodies)
    for seed in range(5):
        dec = FrameDecoder()
        got = []
        for piece in _split(stream, random.Random(seed)):
            dec.feed(piece)
            while (body := dec.next_frame()) is not None:
                got.append(bytes(body))
        assert got == bodies and dec.buffered == 0


def encode_framed_body(body: bytes) -> bytes:
    from pinfold.daemon.p2p.bitswap.framing import frame

    return frame(body)


def test_an_empty_message_alone_in_the_stream_is_an_empty_body() -> None:
    dec = FrameDecoder()
    dec.feed(b"\x00")
    assert dec.next_frame() == b"" and dec.next_frame() is None and dec.buffered == 0


def test_a_body_inside_one_fed_piece_is_a_view_of_it_not_a_copy() -> None:
    payload = b"\x01" * 1000
    piece = encode_framed_body(payload) + encode_framed_body(b"x")
    dec = FrameDecoder()
    dec.feed(piece)
    body = dec.next_frame()
    assert body is not None and body.obj is piece and bytes(body) == payload
    assert bytes(dec.next_frame() or b"") == b"x"


def test_a_writable_buffer_is_copied_on_feed_so_later_changes_do_not_leak_in() -> None:
    buf = bytearray(encode_framed_body(b"hello"))
    dec = FrameDecoder()
    dec.feed(buf)
    buf[:] = b"\x00" * len(buf)
    assert bytes(dec.next_frame() or b"") == b"hello"


def test_an_oversize_length_prefix_is_refused_before_its_body_arrives() -> None:
    from pinfold.blockstore.varint import encode_uvarint

    dec = FrameDecoder(max_message_size=1000)
    prefix = encode_uvarint(1001)
    dec.feed(prefix[:1])
    assert dec.next_frame() is None
    dec.feed(prefix[1:])
    with pytest.raises(MessageTooLarge, match="1001 bytes"):
        dec.next_frame()


def test_a_length_prefix_of_ten_bytes_is_malformed() -> None:
    dec = FrameDecoder()
    for b in b"\xff" * 10:
        dec.feed(bytes([b]))
    with pytest.raises(MalformedMessage, match="longer than 9 bytes"):
        dec.next_frame()


# ------------------------------------------------------------------ decode decisions


def test_block_messages_are_decoded_inline_and_big_wantlists_or_presence_lists_not() -> None:
    blocks = raw_blocks(4, 256 * 1024)
    msg = encode_message(Message(blocks=tuple(Block(prefix=CidPrefix.of(c), data=d)
                                              for c, d in blocks)))
    assert not costly_to_decode(msg)
    presences = tuple(BlockPresence(cid=c, type=PresenceType.DONT_HAVE)
                      for c, _ in raw_blocks(65, 8))
    assert costly_to_decode(encode_message(Message(presences=presences)))
    assert not costly_to_decode(encode_message(Message(presences=presences[:64])))
    # one wantlist field: few fields, but many bytes of wants
    wants = tuple(WantEntry(cid=c, priority=1) for c, _ in raw_blocks(3000, 8))
    assert costly_to_decode(encode_message(Message(wantlist=wants)))
    assert not costly_to_decode(encode_message(Message(wantlist=wants[:10])))
    assert not costly_to_decode(b"\xff")  # malformed: decode_message reports it


def test_the_key_made_from_a_digest_is_the_key_of_the_cid_built_from_it() -> None:
    for cid, data in raw_blocks(3, 100):
        prefix = CidPrefix.of(cid)
        digest = hashlib.sha256(data).digest()
        assert prefix.key_for_digest(digest) == cid_key(prefix.cid_for_digest(digest))
    bad = CidPrefix(version=0, codec=0x55, mh_code=0x12, mh_length=32)  # v0 must be dag-pb
    with pytest.raises(MalformedMessage):
        bad.key_for_digest(bytes(32))
    with pytest.raises(MalformedMessage, match="digest"):
        CidPrefix(version=1, codec=0x55, mh_code=0x12, mh_length=20).key_for_digest(bytes(32))


# ------------------------------------------------------------------ store overlap


class GatedStore(DictStore):
    """A dict store whose ``put_many`` waits for ``gate``; counts callers waiting."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = trio.Event()
        self.waiting = 0
        self.most_waiting = 0

    async def put_many(self, items) -> None:
        self.waiting += 1
        self.most_waiting = max(self.most_waiting, self.waiting)
        try:
            await self.gate.wait()
        finally:
            self.waiting -= 1
        await super().put_many(items)


async def test_next_messages_are_verified_while_earlier_blocks_wait_for_the_writer(nursery):
    """Three messages' blocks wait for the store at once (the writer may commit them
    together), and no block is handed to the fetch before it is stored."""
    blocks = raw_blocks(24, 512 * 1024, seed=9)  # 12 MiB: at least three 4 MiB messages
    async with running_nodes(1) as (holder,):
        holder.store.add(blocks)
        host = new_host()
        store = GatedStore()
        # A window of 32 want-blocks lets all 24 out before any is stored (the
        # session widens a peer's window only as its blocks are delivered).
        wide = ClientConfig(max_outstanding_per_peer=32, initial_outstanding_per_peer=32)
        bs = Bitswap(host, store, store.put_many, config=ExchangeConfig(client=wide))
        await nursery.start(host.run)
        await nursery.start(bs.run)
        await host.connect(holder.addr)
        await wait_until_trio(lambda: bs.statistics().peers == 1, what="holder seen")
        got: list[bytes] = []
        stored_when_yielded: list[bool] = []

        async def fetch() -> None:
            async for cid, data in bs.fetch_blocks([c for c, _ in blocks], timeout_s=60):
                stored_when_yielded.append(store.has(cid))
                got.append(data)

        async with trio.open_nursery() as inner:
            inner.start_soon(fetch)
            await wait_until_trio(lambda: store.waiting >= 3, timeout_s=60,
                                  what="three messages waiting for the store at once")
            assert got == []  # nothing delivered before it is stored
            store.gate.set()
        assert sorted(got) == sorted(d for _, d in blocks)
        assert all(stored_when_yielded) and len(got) == 24
        assert all(type(d) is bytes for d in got)
        assert bs.statistics().duplicate_blocks == 0


async def test_a_store_failure_reaches_no_fetch_as_delivered_and_later_blocks_still_arrive(
        nursery):
    """A put that fails loses only its own blocks: they stay wanted and come again."""
    blocks = raw_blocks(4, 1024, seed=10)

    class FailOnce(DictStore):
        failed = 0

        async def put_many(self, items) -> None:
            if not self.failed:
                self.failed += 1
                raise OSError("disk hiccup")
            await super().put_many(items)

    async with running_nodes(1) as (holder,):
        holder.store.add(blocks)
        host = new_host()
        store = FailOnce()
        bs = Bitswap(host, store, store.put_many)
        await nursery.start(host.run)
        await nursery.start(bs.run)
        await host.connect(holder.addr)
        await wait_until_trio(lambda: bs.statistics().peers == 1, what="holder seen")
        got = {cid_key(c): d async for c, d in bs.fetch_blocks([c for c, _ in blocks],
                                                                timeout_s=30)}
        assert store.failed == 1
        assert got == {cid_key(c): d for c, d in blocks}
        assert all(store.has(c) for c, _ in blocks)


# ------------------------------------------------------------------ a stream per message


async def test_replies_on_a_stream_each_as_kubo_sends_them_are_stored_without_duplicates(nursery):
    """Kubo and Helia send every reply on a new stream that selects the protocol in
    its first bytes and ends after one message: each is served by the connection's
    reader (no py-libp2p stream: ``transport/direct.py``), answered with the other
    answers of its batch, and counted in ``one_message_streams``; every block
    arrives once."""
    from pinfold.daemon.p2p.bitswap.message import PROTOCOL_1_2_0, WantType, encode_framed
    from pinfold.daemon.p2p.transport.select import MULTISTREAM_HEADER, muxed_echo

    async def _lazy_reply(stream, body: bytes) -> None:
        """The header, the protocol and one message in one DATA frame with FIN, as
        go-multistream's lazy select and go-yamux write a small reply and close."""
        await stream.answer(0, MULTISTREAM_HEADER + muxed_echo(PROTOCOL_1_2_0) + body,
                            window=0, close=True)

    blocks = raw_blocks(12, 32 * 1024, seed=12)
    by_key = {cid_key(c): (c, d) for c, d in blocks}
    async with running_nodes(1) as (fetcher,):
        kubo = new_host()
        await nursery.start(kubo.run)
        replies = 0

        async def reply(cid) -> None:
            nonlocal replies
            c, data = by_key[cid_key(cid)]
            (conn,) = kubo.libp2p.get_network().get_connections(fetcher.host.peer_id)
            stream = await conn.muxed_conn.open_stream()
            body = encode_framed(Message(blocks=(Block(prefix=CidPrefix.of(c), data=data),)))
            await _lazy_reply(stream, body)
            replies += 1

        async def wants(stream) -> None:
            async with trio.open_nursery() as sends:
                async for e in wantlist_entries(stream):  # until the fetcher closes it
                    if not e.cancel and e.want_type == WantType.BLOCK:
                        sends.start_soon(reply, e.cid)
                    elif not e.cancel:  # want-have: answer HAVE on a stream of its own
                        sends.start_soon(have, e.cid)

        async def have(cid) -> None:
            (conn,) = kubo.libp2p.get_network().get_connections(fetcher.host.peer_id)
            stream = await conn.muxed_conn.open_stream()
            body = encode_framed(Message(presences=(BlockPresence(cid=cid, type=PresenceType.HAVE),)))
            await _lazy_reply(stream, body)

        kubo.set_stream_handler(PROTOCOL_1_2_0, wants)
        await fetcher.host.connect(kubo.addrs()[0])
        await wait_until_trio(lambda: fetcher.bitswap.statistics().peers == 1, what="peer seen")
        with trio.fail_after(60):
            got = {cid_key(c): d async for c, d in fetcher.bitswap.fetch_blocks(
                [c for c, _ in blocks], timeout_s=60)}
            await wait_until_trio(lambda: replies == 12, what="every reply written")
        stats = fetcher.bitswap.statistics()
        assert got == {cid_key(c): d for c, d in blocks}
        assert stats.duplicate_blocks == 0
        assert stats.one_message_streams >= 12  # the replies (and any HAVEs)
        (conn,) = fetcher.host.libp2p.get_network().get_connections(kubo.peer_id)
        assert conn.muxed_conn.direct_streams >= 12
        assert fetcher.host._selector is not None and fetcher.host._selector.fast == 0


@pytest.mark.parametrize("bad", ["an oversize length prefix", "a body that is not a message"])
async def test_a_bad_message_on_a_stream_served_in_the_reader_cuts_the_peer_off(nursery, bad):
    """A stream that selects Bitswap in its first bytes goes to the connection's
    reader (transport/direct.py); what it carries is checked as on any stream."""
    from pinfold.blockstore.varint import encode_uvarint
    from pinfold.daemon.p2p.bitswap.message import PROTOCOL_1_2_0
    from pinfold.daemon.p2p.transport.select import MULTISTREAM_HEADER, muxed_echo

    body = (encode_uvarint(64 * MiB) if bad == "an oversize length prefix"
            else encode_uvarint(5) + b"\xff\xff\xff\xff\xff")
    async with running_nodes(1) as (fetcher,):
        hostile = new_host()
        await nursery.start(hostile.run)
        await fetcher.host.connect(hostile.addrs()[0])
        await wait_until_trio(lambda: fetcher.bitswap.statistics().peers == 1, what="peer seen")
        (conn,) = hostile.libp2p.get_network().get_connections(fetcher.host.peer_id)
        (ours,) = fetcher.host.libp2p.get_network().get_connections(hostile.peer_id)
        stream = await conn.muxed_conn.open_stream()
        with trio.fail_after(30):
            await stream.write(MULTISTREAM_HEADER + muxed_echo(PROTOCOL_1_2_0) + body)
            await wait_until_trio(lambda: fetcher.bitswap.statistics().peers_cut_off == 1,
                                  what="the peer cut off")
        assert ours.muxed_conn.direct_streams == 1
        assert fetcher.host._selector is not None and fetcher.host._selector.fast == 0
