"""The one unsigned-varint codec (pinfold/blockstore/varint.py): round trip, limits, errors."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pinfold.blockstore.errors import DecodeError
from pinfold.blockstore.varint import (
    MAX_UINT64,
    encode_uvarint,
    read_uvarint,
    try_read_uvarint,
)
from pinfold.daemon.p2p.bitswap.errors import MalformedMessage

U64 = st.integers(min_value=0, max_value=MAX_UINT64)


@given(U64, st.binary(max_size=8), st.binary(max_size=8))
def test_round_trip_at_any_offset(value: int, before: bytes, after: bytes) -> None:
    raw = encode_uvarint(value)
    assert 1 <= len(raw) <= 10
    assert all(b & 0x80 for b in raw[:-1]) and raw[-1] < 0x80
    buf = before + raw + after
    assert read_uvarint(buf, len(before), minimal=True) == (value, len(before) + len(raw))
    assert try_read_uvarint(buf, len(before), minimal=True) == (value, len(before) + len(raw))


@given(U64)
def test_every_proper_prefix_is_truncated(value: int) -> None:
    raw = encode_uvarint(value)
    for n in range(len(raw)):
        with pytest.raises(DecodeError, match="truncated"):
            read_uvarint(raw[:n], 0)
        assert try_read_uvarint(raw[:n], 0) is None


@pytest.mark.parametrize("value", [-1, MAX_UINT64 + 1])
def test_encode_rejects_out_of_range(value: int) -> None:
    with pytest.raises(ValueError):
        encode_uvarint(value)


def test_known_encodings() -> None:
    assert encode_uvarint(0) == b"\x00"
    assert encode_uvarint(127) == b"\x7f"
    assert encode_uvarint(128) == b"\x80\x01"
    assert encode_uvarint(300) == b"\xac\x02"
    assert encode_uvarint(MAX_UINT64) == b"\xff" * 9 + b"\x01"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\xff" * 10 + b"\x01", "longer than 10 bytes"),
        (b"\xff" * 9 + b"\x02", "exceeds 64 bits"),
        (b"\x80", "truncated"),
        (b"", "truncated"),
    ],
)
def test_malformed_raise_the_given_error(raw: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        read_uvarint(raw, 0)
    with pytest.raises(MalformedMessage, match=reason):
        read_uvarint(raw, 0, error=MalformedMessage)


def test_end_bounds_the_read() -> None:
    with pytest.raises(DecodeError, match="truncated"):
        read_uvarint(b"\x80\x01", 0, 1)


def test_non_minimal_only_rejected_when_asked() -> None:
    assert read_uvarint(b"\x81\x00", 0) == (1, 2)
    with pytest.raises(DecodeError, match="not minimally encoded"):
        read_uvarint(b"\x81\x00", 0, minimal=True)
    with pytest.raises(DecodeError, match="byte 7 is not minimally"):
        try_read_uvarint(b"\x81\x00", 0, minimal=True, base=7)


def test_streaming_reader_caps_the_length() -> None:
    assert try_read_uvarint(b"\xff" * 8, 0, max_bytes=9) is None
    with pytest.raises(MalformedMessage, match="longer than 9 bytes"):
        try_read_uvarint(b"\xff" * 9, 0, max_bytes=9, error=MalformedMessage)
    with pytest.raises(DecodeError, match="longer than 10 bytes"):
        try_read_uvarint(b"\xff" * 10, 0)
