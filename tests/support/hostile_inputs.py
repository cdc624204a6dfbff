"""Hostile inputs for the parser campaigns: valid encodings of every format
that takes outside bytes (corpora to mutate), Hypothesis strategies for config
files, and the adapters that feed bytes to each parser. Used by
``tests/reliability/test_hostile_codecs.py``, ``test_hostile_live.py`` and
``test_hostile_config.py``.
"""

from __future__ import annotations

import math
import random
import tomllib

from hypothesis import strategies as st
from pinfold.blockstore import car as carfmt
from pinfold.blockstore import dag as dagmod
from pinfold.blockstore import dagpb, unixfs
from pinfold.blockstore.cid import DAG_CBOR, DAG_PB, RAW, make_cid
from pinfold.blockstore.errors import BlockstoreError
from pinfold.config import ConfigError, loader
from pinfold.daemon.rpc import wire as rpcwire
from pinfold.daemon.p2p.bitswap.message import (
    PROTOCOL_1_0_0,
    PROTOCOL_1_2_0,
    Block,
    BlockPresence,
    CidPrefix,
    FrameDecoder,
    Message,
    PresenceType,
    WantEntry,
    WantType,
    decode_message,
    encode_message,
)

from tests.support.campaign import KiB

_rng = random.Random(7)


def _raw(n: int) -> tuple:
    data = _rng.randbytes(n)
    return make_cid(data, RAW), data


# ------------------------------------------------------------------ corpora


def _file_dag(size: int, chunk: int, **kw: object) -> list[tuple]:
    blocks, _, _ = unixfs.import_bytes(_rng.randbytes(size),
                                       unixfs.ImportParams(chunk_size=chunk, **kw))
    return blocks


def _dir_dag() -> list[tuple]:
    builder = unixfs.DirectoryBuilder()
    for i, name in enumerate(["a.txt", "b/c.bin", "b/d/e", "ünïcode"]):
        cid, data = _raw(100 + i)
        builder.add_file(name, cid, len(data), len(data))
    builder.add_dir("empty")
    blocks, _ = builder.finish()
    return blocks


def dagpb_corpus() -> list[bytes]:
    nodes = [d for c, d in _file_dag(300 * KiB, 16 * KiB) if c.codec.code == DAG_PB]
    nodes += [d for c, d in _file_dag(40 * KiB, 4 * KiB, cid_version=0, raw_leaves=False)
              if c.codec.code == DAG_PB][:3]
    nodes += [d for c, d in _dir_dag() if c.codec.code == DAG_PB]
    nodes.append(dagpb.encode(dagpb.PBNode(links=(), data=b"")))
    nodes.append(dagpb.encode(dagpb.PBNode(links=(), data=None)))
    return nodes


def unixfs_corpus() -> list[bytes]:
    T = unixfs.DataType
    msgs = [
        unixfs.UnixFSData(type=T.FILE, data=b"hello", filesize=5),
        unixfs.UnixFSData(type=T.FILE, filesize=3 * 1024, blocksizes=(1024, 1024, 1024)),
        unixfs.UnixFSData(type=T.RAW, data=b"\x00" * 20, filesize=20),
        unixfs.UnixFSData(type=T.DIRECTORY, mode=0o755,
                          mtime=unixfs.UnixTime(seconds=1_700_000_000, nanos=5)),
        unixfs.UnixFSData(type=T.SYMLINK, data=b"../target"),
        unixfs.UnixFSData(type=T.HAMT_SHARD, data=b"\xff\x01", hash_type=0x22, fanout=256),
        unixfs.UnixFSData(type=T.METADATA, data=b"text/plain"),
    ]
    return [unixfs.encode_data(m) for m in msgs]


def bitswap_corpus() -> list[bytes]:
    raws = [_raw(n) for n in (0, 10, 300)]
    v0 = make_cid(b"\x0a\x00", DAG_PB, version=0)
    wants = (WantEntry(cid=raws[0][0]),
             WantEntry(cid=raws[1][0], priority=-5, want_type=WantType.HAVE, send_dont_have=True),
             WantEntry(cid=v0, cancel=True, priority=2**31 - 1))
    blocks = tuple(Block(prefix=CidPrefix.of(c), data=d) for c, d in raws)
    presences = (BlockPresence(cid=raws[2][0], type=PresenceType.DONT_HAVE),
                 BlockPresence(cid=v0, type=PresenceType.HAVE))
    msgs = [Message(wantlist=wants, full=True), Message(blocks=blocks),
            Message(presences=presences, pending_bytes=12345),
            Message(wantlist=wants[:1], blocks=blocks[:1], presences=presences[:1]), Message()]
    out = [encode_message(m) for m in msgs]
    out.append(encode_message(Message(wantlist=wants[:2], blocks=(
        Block(prefix=CidPrefix.of(v0), data=b"\x0a\x00"),)), protocol=PROTOCOL_1_0_0))
    return out


def car_corpus() -> list[bytes]:
    blocks = _file_dag(200 * KiB, 32 * KiB)
    root = blocks[-1][0]
    v1 = carfmt.car_header([root]) + b"".join(carfmt.car_section(c, d) for c, d in blocks)
    two_roots = carfmt.car_header([root, blocks[0][0]]) + carfmt.car_section(*blocks[0])
    small = carfmt.car_header([blocks[0][0]]) + carfmt.car_section(*blocks[0])
    cbor = dagmod.cbor_encode({"a": [1, 2, root], "b": b"x"})
    cbor_cid = make_cid(cbor, DAG_CBOR)
    with_cbor = carfmt.car_header([cbor_cid]) + carfmt.car_section(cbor_cid, cbor)
    payload = small
    v2 = (carfmt.CARV2_PRAGMA + bytes(16) + (51).to_bytes(8, "little")
          + len(payload).to_bytes(8, "little") + bytes(8) + payload)
    return [small, two_roots, with_cbor, v2, v1[:4096], carfmt.car_header([root])]


def cid_corpus() -> list[str]:
    c1 = make_cid(b"hello", RAW)
    c0 = make_cid(b"\x0a\x00", DAG_PB, version=0)
    c2 = make_cid(b"x", DAG_CBOR)
    return [str(c1), str(c0), str(c2), c1.encode("base58btc"), c1.encode("base16"),
            c1.encode("base64"), c1.encode("base36")]


CONFIG_VALUES = st.one_of(
    st.integers(-2**70, 2**70), st.floats(allow_nan=True), st.booleans(), st.text(max_size=20),
    st.lists(st.text(max_size=10), max_size=3), st.lists(st.integers(), max_size=3),
    st.sampled_from(["/ip4/127.0.0.1/tcp/0", "/dns4/x", "127.0.0.1:0", "cluster", "all", "",
                     "debug", "/ip4/999.1.1.1/tcp/1", "nan", "inf"]),
)


def _toml_value(v: object) -> str:
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    if isinstance(v, float) and v in (float("inf"), float("-inf")):
        return "inf" if v > 0 else "-inf"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return str(v)


SECTIONS = sorted(loader.SECTIONS)


@st.composite
def hostile_configs(draw: st.DrawFn) -> str:
    """A TOML config: known and unknown sections and keys with values of any type,
    or a rendered valid config mutated at the byte level."""
    import dataclasses

    if draw(st.booleans()):
        text = loader.render(commented_defaults=False)
        ops = draw(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 1 << 16),
                                      st.binary(max_size=4)), min_size=1, max_size=4))
        from tests.support.fuzzing import mutate

        return mutate(text.encode(), ops).decode("utf-8", "replace")
    lines = []
    for _ in range(draw(st.integers(1, 4))):
        section = draw(st.one_of(st.sampled_from(SECTIONS), st.text(min_size=1, max_size=8)))
        cls = loader.SECTIONS.get(section)
        keys = [f.name for f in dataclasses.fields(cls.default_factory)] if cls else ["x"]
        lines.append(f"[{_toml_value(section) if not section.isidentifier() else section}]")
        for _ in range(draw(st.integers(0, 4))):
            key = draw(st.one_of(st.sampled_from(keys), st.text(min_size=1, max_size=8)))
            key = key if key.isidentifier() else _toml_value(key)
            lines.append(f"{key} = {_toml_value(draw(CONFIG_VALUES))}")
    return "\n".join(lines) + "\n"


def _load_config(text: str) -> object:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:  # what ``loader.load`` turns into ConfigError
        raise ConfigError("", str(exc)) from exc
    return loader.from_mapping(data)


# ------------------------------------------------------------------ parsers


def _bitswap_stream(data: bytes) -> list[Message]:
    """Framing + decoding as the exchange does: length-prefixed messages, fed in pieces."""
    decoder = FrameDecoder()
    out = []
    for i in range(0, len(data), 97):
        decoder.feed(data[i:i + 97])
        while (body := decoder.next_frame()) is not None:
            out.append(decode_message(body))
    return out


def _reencodes(_data: bytes, msg: Message) -> None:
    # a decoded message must be usable: re-encoding it may not crash
    assert decode_message(encode_message(msg, protocol=PROTOCOL_1_2_0)) is not None


def _car_both_ways(data: bytes) -> tuple:
    """Whole and streamed reads of a CAR must agree (value or error class)."""
    error: BlockstoreError | None = None
    try:
        whole = carfmt.read_car(data)
    except BlockstoreError as exc:
        error, whole = exc, type(exc)
    reader = carfmt.CarReader()
    try:
        blocks = []
        for i in range(0, len(data), 61):
            blocks += reader.feed(data[i:i + 61])
        reader.finish()
        streamed = (reader.roots, blocks)
    except BlockstoreError as exc:
        streamed = type(exc)
    assert whole == streamed, f"whole read {whole!r} != streamed read {streamed!r}"
    if error is not None:
        raise error
    return whole


def _rpc_frames(data: bytes) -> list:
    decoder = rpcwire.FrameDecoder()
    out = []
    for body in _feed_rpc(decoder, data):
        out.append(rpcwire.decode_client_message(body))
    return out


def _feed_rpc(decoder: rpcwire.FrameDecoder, data: bytes) -> list:
    bodies = []
    view = memoryview(data)
    while view:
        if want := decoder.bulk_wanted():
            piece, view = bytes(view[:want]), view[want:]
            decoder.add_bulk(piece)
        else:
            buf = decoder.get_buffer()
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            view = view[n:]
            decoder.commit(n)
        while (body := decoder.next_body()) is not None:
            bodies.append(body)
    return bodies


def rpc_corpus() -> list[bytes]:
    msgs = [rpcwire.Hello(window=rpcwire.DEFAULT_WINDOW_BYTES),
            rpcwire.Request(id=1, method="add", params={"pin": True}, upload=True),
            rpcwire.Data(id=1, data=b"x" * 300), rpcwire.End(id=1),
            rpcwire.Credit(id=1, nbytes=4096), rpcwire.Cancel(id=1),
            rpcwire.Request(id=2, method="cat", params={"cid": cid_corpus()[0], "offset": 3})]
    frames = [rpcwire.encode_bytes(m) for m in msgs]
    return frames + [b"".join(frames)]
