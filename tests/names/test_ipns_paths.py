"""``resolver.ipns_content_path``: how the gateway's ``/ipns/TEXT`` picks the name,
the ref and the path, and whether the answer may be cached as immutable."""

from __future__ import annotations

import pytest
from pinfold.blockstore.cid import make_cid
from pinfold.daemon.resolver import ipns_content_path
from pinfold.names.book import NameBook, NameNotFound
from pinfold.names.records import FileEntry, KeySigner, NameError_

ROOT_ORG = make_cid(b"org")
ROOT_DATA = make_cid(b"data")
FILES = [FileEntry(path="f", size=1, sha256="ab" * 32)]


@pytest.fixture(scope="module")
def book() -> NameBook:
    b = NameBook()
    key = KeySigner.generate()
    for name, root in (("org", ROOT_ORG), ("org/data", ROOT_DATA)):
        v = b.new_version(name, key=key.public_key, sign=key.sign, root=str(root), size=1,
                          files=FILES, time_ms=1)
        b.add(v)
        b.add(b.new_tag(name, "main", 1, key=key.public_key, sign=key.sign, time_ms=1,
                        pending=v.record))
    return b


@pytest.mark.parametrize(("text", "root", "segments", "immutable"), [
    ("org/data@main/x/y.csv", ROOT_DATA, ("x", "y.csv"), False),
    ("org/data@1/x", ROOT_DATA, ("x",), True),
    ("org@1/data/x", ROOT_ORG, ("data", "x"), True),
    ("org/data/x/y.csv", ROOT_DATA, ("x", "y.csv"), False),  # the longest known name
    ("org/other/a@b.txt", ROOT_ORG, ("other", "a@b.txt"), False),
    ("org/data", ROOT_DATA, (), False),
])
def test_ipns_text_resolves_to_the_name_path_and_caching(
        book: NameBook, text: str, root, segments: tuple[str, ...], immutable: bool) -> None:
    path, imm = ipns_content_path(text, book)
    assert (path.root, path.segments, imm) == (root, segments, immutable)


@pytest.mark.parametrize(("text", "error", "says"), [
    ("nope/x", NameNotFound, "no name 'nope/x'"),
    ("org/data@7", NameNotFound, "no version 7"),
    ("org/data@/x", NameError_, "nothing after '@'"),
    ("nope@main/x", NameNotFound, "no name 'nope'"),
    ("no/such/name/with/six/parts", NameNotFound, "no name 'no/such/name"),
    ("org/data/../x", NameError_, "not allowed"),
])
def test_ipns_errors_name_the_problem(book: NameBook, text: str, error: type,
                                      says: str) -> None:
    with pytest.raises(error, match=says):
        ipns_content_path(text, book)


def test_ipns_without_a_name_book_is_not_found() -> None:
    with pytest.raises(NameNotFound, match="keeps no names"):
        ipns_content_path("org/data", None)
