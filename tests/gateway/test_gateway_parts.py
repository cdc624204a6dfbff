"""The gateway's pure parts: ``Range`` and ``entity-bytes`` resolution, content
types from names and bytes, and the listing page's escaping."""

from __future__ import annotations

import pytest

from pinfold.blockstore.cid import make_cid
from pinfold.blockstore.unixfs.paths import DirEntry
from pinfold.daemon.gateway.listing import human_size, render_listing
from pinfold.daemon.gateway.mime import content_type, sniff
from pinfold.daemon.gateway.ranges import ByteRange, Unsatisfiable, parse_entity_bytes, parse_range


@pytest.mark.parametrize(("header", "size", "want"), [
    ("bytes=0-0", 10, ByteRange(0, 0)),
    ("bytes=2-", 10, ByteRange(2, 9)),
    ("bytes=-3", 10, ByteRange(7, 9)),
    ("bytes=-30", 10, ByteRange(0, 9)),
    ("bytes=5-100", 10, ByteRange(5, 9)),
    ("bytes=0-1,4-5", 10, None),  # several ranges: ignored, the whole file is sent
    ("items=0-1", 10, None),
    ("bytes=5-2", 10, None),
    ("bytes=x-", 10, None),
])
def test_range_header_resolves_against_the_size(header: str, size: int,
                                                 want: ByteRange | None) -> None:
    assert parse_range(header, size) == want


@pytest.mark.parametrize(("header", "size"), [("bytes=10-", 10), ("bytes=-0", 10),
                                              ("bytes=0-", 0)])
def test_range_past_the_end_is_unsatisfiable(header: str, size: int) -> None:
    with pytest.raises(Unsatisfiable):
        parse_range(header, size)


@pytest.mark.parametrize(("text", "size", "want"), [
    ("0:*", 100, ByteRange(0, 99)),
    ("10:19", 100, ByteRange(10, 19)),
    ("-10:*", 100, ByteRange(90, 99)),
    ("49:-50", 100, ByteRange(49, 50)),  # -N names byte SIZE-N, as FROM does
    ("50:-60", 100, None),  # empty after resolving: answered as dag-scope=block
    ("90:500", 100, ByteRange(90, 99)),
])
def test_entity_bytes_resolve_with_negative_offsets_and_star(text: str, size: int,
                                                             want: ByteRange | None) -> None:
    assert parse_entity_bytes(text, size) == want


def test_entity_bytes_outside_or_malformed_are_refused() -> None:
    with pytest.raises(Unsatisfiable):
        parse_entity_bytes("100:*", 100)
    for bad in ("1-2", "a:b", "5"):
        with pytest.raises(ValueError, match="entity-bytes"):
            parse_entity_bytes(bad, 100)


@pytest.mark.parametrize("text", ["10:5", "-5:-10", "1:0"])
def test_entity_bytes_with_from_after_to_is_refused_naming_the_parameter(text: str) -> None:
    """RFC 9110 14.1.1: last before first makes the range invalid, not empty."""
    with pytest.raises(ValueError, match=f"entity-bytes='{text}': FROM .* is after TO"):
        parse_entity_bytes(text, 1000)


@pytest.mark.parametrize(("name", "head", "want"), [
    ("a.csv", b"x", "text/csv; charset=utf-8"),
    ("a.json", b"{}", "application/json; charset=utf-8"),
    ("model.safetensors", b"\x08\x00", "application/octet-stream"),
    (None, b"\x89PNG\r\n\x1a\n....", "image/png"),
    (None, b"  <!doctype html><p>", "text/html; charset=utf-8"),
    (None, "plain \u00fc text\n".encode(), "text/plain; charset=utf-8"),
    (None, b"\x00\x01\x02binary", "application/octet-stream"),
    ("noext", b"%PDF-1.7", "application/pdf"),
])
def test_content_type_from_name_then_bytes(name: str | None, head: bytes, want: str) -> None:
    assert content_type(name, head) == want


def test_sniff_tolerates_a_character_cut_at_the_sniff_boundary() -> None:
    head = ("a" * 510 + "\u00fc").encode()[:511]
    assert sniff(head) == "text/plain; charset=utf-8"


def test_listing_escapes_names_and_links_them_percent_encoded() -> None:
    cid = make_cid(b"x")
    entries = [DirEntry(name='<b>"x"&y.txt', cid=cid, kind="file", size=2048, tsize=None),
               DirEntry(name="d ir", cid=cid, kind="dir", size=None, tsize=5000)]
    page = render_listing(f"/ipfs/{cid}/sub/", str(cid), entries).decode()
    assert "&lt;b&gt;&quot;x&quot;&amp;y.txt" in page and "<b>" not in page
    assert 'href="%3Cb%3E%22x%22%26y.txt"' in page and 'href="d%20ir/"' in page
    assert "2.0 KiB" in page and "~4.9 KiB" in page and 'href="../"' in page
    assert human_size(None) == "-" and human_size(5) == "5 B"
