"""Hostile input, parser level: every parser that takes outside bytes, fuzzed (issue 7, item 3).

Each parser gets random bytes and mutated valid encodings; it must return a
value or raise its documented error with a message, nothing else. Counts go
to the ``hostile`` figures. The live campaigns (``test_hostile_live.py``) send
the same kinds of input to a running daemon.

Parsers: Bitswap messages and their length-prefixed stream framing, dag-pb
nodes, DAG links (dag-pb, DAG-CBOR), UnixFS ``Data``, CAR files (whole and
streamed, which must agree), CID strings and bytes, TOML config files, RPC
frames (the sans-IO decoder under the server).
"""

from __future__ import annotations


from hypothesis import strategies as st
from pinfold.blockstore import dag as dagmod
from pinfold.blockstore import dagpb, unixfs
from pinfold.blockstore.cid import DAG_CBOR, DAG_PB, RAW, make_cid, parse_cid
from pinfold.blockstore.errors import BlockstoreError, BlockTooLarge, DecodeError, InvalidCID
from pinfold.config import ConfigError
from pinfold.daemon.rpc import wire as rpcwire
from pinfold.daemon.p2p.bitswap.errors import RemoteProtocolError
from pinfold.daemon.p2p.bitswap.message import (
    Block,
    CidPrefix,
    Message,
    WantEntry,
    decode_message,
    encode_framed,
)

from tests.support.fuzzing import examples, hostile_bytes, run_fuzz
from tests.support.hostile_inputs import (
    _raw,
    dagpb_corpus,
    unixfs_corpus,
    bitswap_corpus,
    car_corpus,
    cid_corpus,
    hostile_configs,
    _load_config,
    _bitswap_stream,
    _reencodes,
    _car_both_ways,
    _rpc_frames,
    rpc_corpus,
)


# ------------------------------------------------------------------ tests


def test_bitswap_messages() -> None:
    c = run_fuzz("bitswap message (codec)", decode_message, (RemoteProtocolError,),
                 hostile_bytes(bitswap_corpus()), examples(), check=_reencodes)
    assert c["rejected"] > 0 and c["accepted"] > 0


def test_bitswap_stream_framing() -> None:
    corpus = [encode_framed(Message(wantlist=(WantEntry(cid=_raw(5)[0]),)))] * 2
    corpus += [b"".join(encode_framed(Message(blocks=(Block(prefix=CidPrefix.of(c), data=d),)))
                        for c, d in (_raw(30), _raw(70)))]
    c = run_fuzz("bitswap stream framing", _bitswap_stream, (RemoteProtocolError,),
                 hostile_bytes(corpus), examples())
    assert c["rejected"] > 0


def test_dagpb_nodes() -> None:
    c = run_fuzz("dag-pb node", dagpb.decode, (DecodeError,), hostile_bytes(dagpb_corpus()),
                 examples())
    assert c["rejected"] > 0 and c["accepted"] > 0


def test_dag_links_dagpb_and_dagcbor() -> None:
    cbor = [dagmod.cbor_encode(v) for v in (
        {"a": 1, "l": [make_cid(b"x", RAW)], "m": {"n": None, "f": 1.5}}, [b"bytes", "text", -3],
        {"deep": [[[[make_cid(b"y", DAG_PB)]]]]})]

    def parse(data: bytes) -> list:
        codec = DAG_CBOR if data[:1] and data[0] >= 0x80 else DAG_PB
        return dagmod.links(make_cid(data, codec), data)

    c = run_fuzz("DAG links (dag-pb, DAG-CBOR)", parse, (DecodeError,),
                 hostile_bytes(cbor + dagpb_corpus()), examples())
    assert c["rejected"] > 0


def test_unixfs_data() -> None:
    c = run_fuzz("UnixFS Data", unixfs.decode_data, (DecodeError,),
                 hostile_bytes(unixfs_corpus()), examples())
    assert c["rejected"] > 0 and c["accepted"] > 0


def test_car_files() -> None:
    c = run_fuzz("CAR file (whole + streamed)", _car_both_ways,
                 (DecodeError, BlockTooLarge, InvalidCID, BlockstoreError),
                 hostile_bytes(car_corpus(), max_random=200), examples())
    assert c["rejected"] > 0 and c["accepted"] > 0


def test_cid_strings_and_bytes() -> None:
    texts = cid_corpus()
    strategy = st.one_of(
        st.text(max_size=80),
        st.sampled_from(texts).flatmap(lambda t: st.lists(
            st.tuples(st.integers(0, 80), st.characters()), min_size=1, max_size=3).map(
            lambda edits, t=t: "".join(_edit(t, edits)))),
        hostile_bytes([bytes(make_cid(b"hello", RAW)), bytes(make_cid(b"\x0a\x00", DAG_PB,
                                                                      version=0))]),
    )
    c = run_fuzz("CID strings and bytes", parse_cid, (InvalidCID,), strategy, examples())
    assert c["rejected"] > 0


def _edit(text: str, edits: list[tuple[int, str]]) -> str:
    chars = list(text)
    for pos, ch in edits:
        if chars:
            chars[pos % len(chars)] = ch
    return "".join(chars)


def test_config_files() -> None:
    c = run_fuzz("config file (TOML)", _load_config, (ConfigError,), hostile_configs(),
                 examples(quick=200, full=3000))
    assert c["rejected"] > 0


def test_rpc_frames_decoder() -> None:
    c = run_fuzz("RPC frames (decoder)", _rpc_frames, (rpcwire.WireError,),
                 hostile_bytes(rpc_corpus()), examples())
    assert c["rejected"] > 0 and c["accepted"] > 0
