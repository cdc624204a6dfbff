"""The name book's rules (pinfold/names): record encoding and signatures,
trust (creator and grants), version conflicts, tag-move convergence, refs."""

from __future__ import annotations

import itertools
import random

import pytest

from pinfold.blockstore.cid import cid_v1, make_cid
from pinfold.blockstore.dag import cbor_decode, cbor_encode
from pinfold.names.book import NameBook, NameNotFound, NotAllowed, describe, parse_ref
from pinfold.names.carrier import record_block, record_pin_metadata
from pinfold.names.records import (
    ClaimRecord,
    FileEntry,
    KeySigner,
    NameError_,
    RecordError,
    TagRecord,
    VersionRecord,
    decode_record,
    key_from_text,
    key_text,
    sign_record,
)

ROOT1 = str(make_cid(b"one"))
ROOT2 = str(make_cid(b"two"))
FILES = [FileEntry(path="config.json", size=3, sha256="ab" * 32)]


def publish(book: NameBook, signer: KeySigner, name: str, root: str, t: int = 0):
    s = book.new_version(name, key=signer.public_key, sign=signer.sign, root=root, size=3,
                         files=FILES, message="m", meta=[("k", "v")], time_ms=t)
    book.add(s)
    return s


def test_record_round_trips_and_verifies():
    alice = KeySigner.generate()
    s = publish(NameBook(), alice, "org/model", ROOT1)
    again = decode_record(s.block)
    assert again.record == s.record and again.key == s.key == bytes(s.cid)
    assert s.cid == make_cid(s.block, 0x71)


def test_tampered_record_is_refused():
    alice = KeySigner.generate()
    s = publish(NameBook(), alice, "org/model", ROOT1)
    obj = cbor_decode(s.block)
    obj["body"]["root"] = ROOT2
    with pytest.raises(RecordError, match="bad signature"):
        decode_record(cbor_encode(obj))


def test_record_signed_by_another_key_is_refused():
    alice, mallory = KeySigner.generate(), KeySigner.generate()
    rec = TagRecord(name="org/model", lamport=5, time_ms=0, key=alice.public_key, tag="main",
                    version=1)
    forged = sign_record(rec, mallory.sign)
    with pytest.raises(RecordError, match="bad signature"):
        decode_record(forged.block)


def test_key_text_is_a_peer_id_and_round_trips():
    k = KeySigner.generate().public_key
    assert key_text(k).startswith("12D3KooW")
    assert key_from_text(key_text(k)) == k
    with pytest.raises(NameError_, match="not an Ed25519 key"):
        key_from_text("QmNotAKey")


def test_push_numbers_versions_and_parents():
    book, alice = NameBook(), KeySigner.generate()
    publish(book, alice, "m", ROOT1)
    book.add(book.new_tag("m", "main", 1, key=alice.public_key, sign=alice.sign, time_ms=1))
    v2 = publish(book, alice, "m", ROOT2)
    assert (v2.record.version, v2.record.parent) == (2, 1)
    assert str(book.resolve("m@1").root) == ROOT1
    assert str(book.resolve("m@2").root) == ROOT2
    assert str(book.resolve("m").root) == ROOT1  # main still at 1
    book.add(book.new_tag("m", "main", 2, key=alice.public_key, sign=alice.sign, time_ms=2))
    assert str(book.resolve("m@main").root) == ROOT2
    hist = describe(book.view("m"))
    assert [h["version"] for h in hist] == [2, 1]
    assert hist[0]["tags"] == ["main"]
    assert hist[1]["superseded"][0]["tag"] == "main"


def test_resolve_gives_root_and_path_and_none_for_cids():
    book, alice = NameBook(), KeySigner.generate()
    publish(book, alice, "org/model", ROOT1)
    cp = book.resolve("org/model@1/sub/config.json")
    assert (str(cp.root), cp.segments) == (ROOT1, ("sub", "config.json"))
    assert book.resolve("pinfold://org/model@1").segments == ()
    assert book.resolve(ROOT1) is None
    assert book.resolve(f"{ROOT1}/a") is None
    assert book.resolve(f"/ipfs/{ROOT1}") is None


def test_bad_and_unknown_refs_name_the_problem():
    book, alice = NameBook(), KeySigner.generate()
    publish(book, alice, "m", ROOT1)
    with pytest.raises(NameError_, match="nothing after '@'"):
        book.resolve("m@")
    with pytest.raises(NameError_, match="invalid name"):
        book.resolve("bad name@1")
    with pytest.raises(NameNotFound, match="no tag 'stable'"):
        book.resolve("m@stable")
    with pytest.raises(NameNotFound, match="no version 7"):
        book.resolve("m@7")
    with pytest.raises(NameNotFound, match="no name 'other'"):
        book.resolve("other@1")
    with pytest.raises(NameError_, match=r"'\.\.'|\.\."):
        parse_ref("m@1/../x")


def test_ungranted_key_cannot_publish_move_or_retire():
    book, alice, mallory = NameBook(), KeySigner.generate(), KeySigner.generate()
    publish(book, alice, "m", ROOT1)
    book.add(book.new_tag("m", "main", 1, key=alice.public_key, sign=alice.sign, time_ms=1))
    with pytest.raises(NotAllowed, match="may not publish"):
        book.new_tag("m", "main", 1, key=mallory.public_key, sign=mallory.sign, time_ms=2)
    # A hostile member signs records itself, with a high clock: they change nothing.
    evil_v2 = sign_record(VersionRecord(name="m", lamport=100, time_ms=9,
                                       key=mallory.public_key, version=2, parent=1,
                                       root=ROOT2, size=1), mallory.sign)
    evil_v1 = sign_record(VersionRecord(name="m", lamport=101, time_ms=9,
                                       key=mallory.public_key, version=1, parent=0,
                                       root=ROOT2, size=1), mallory.sign)
    evil_tag = sign_record(TagRecord(name="m", lamport=102, time_ms=9, key=mallory.public_key,
                                     tag="main", version=1), mallory.sign)
    for s in (evil_v2, evil_v1, evil_tag):
        book.add(decode_record(s.block))
    assert str(book.resolve("m@main").root) == ROOT1
    assert str(book.resolve("m@1").root) == ROOT1
    with pytest.raises(NameNotFound):
        book.resolve("m@2")
    assert book.rejected() == 3


def test_granted_key_may_publish_and_move_tags():
    book, alice, bob = NameBook(), KeySigner.generate(), KeySigner.generate()
    publish(book, alice, "m", ROOT1)
    book.add(book.new_grant("m", bob.public_key, key=alice.public_key, sign=alice.sign,
                            time_ms=1))
    publish(book, bob, "m", ROOT2)
    book.add(book.new_tag("m", "main", 2, key=bob.public_key, sign=bob.sign, time_ms=2))
    assert str(book.resolve("m").root) == ROOT2
    assert book.rejected() == 0


def test_concurrent_tag_moves_converge_in_any_order():
    base, alice, bob = NameBook(), KeySigner.generate(), KeySigner.generate()
    recs = [publish(base, alice, "m", ROOT1)]
    recs.append(base.new_grant("m", bob.public_key, key=alice.public_key, sign=alice.sign,
                               time_ms=1))
    base.add(recs[-1])
    recs.append(publish(base, alice, "m", ROOT2))
    # Both move main at once, from the same view (same lamport).
    a = base.new_tag("m", "main", 1, key=alice.public_key, sign=alice.sign, time_ms=5)
    b = base.new_tag("m", "main", 2, key=bob.public_key, sign=bob.sign, time_ms=5)
    assert a.record.lamport == b.record.lamport
    recs += [a, b]
    results = set()
    for perm in itertools.islice(itertools.permutations(recs), 0, None, 7):
        book = NameBook()
        for s in perm:
            book.add(s)
        v = book.view("m")
        results.add((v.tags["main"].version, len(v.moves)))
    assert len(results) == 1
    winner = max((a, b), key=lambda s: s.order)
    assert results == {(winner.record.version, 2)}


def test_conflicting_version_numbers_keep_the_first():
    base, alice, bob = NameBook(), KeySigner.generate(), KeySigner.generate()
    publish(base, alice, "m", ROOT1)
    base.add(base.new_grant("m", bob.public_key, key=alice.public_key, sign=alice.sign,
                            time_ms=1))
    va = base.new_version("m", key=alice.public_key, sign=alice.sign, root=ROOT1, size=1,
                          files=[], time_ms=2)
    vb = base.new_version("m", key=bob.public_key, sign=bob.sign, root=ROOT2, size=1,
                          files=[], time_ms=2)
    order = [va, vb]
    random.Random(0).shuffle(order)
    for s in order:
        base.add(s)
    first = min((va, vb), key=lambda s: s.order)
    assert str(base.resolve("m@2").root) == first.record.root
    assert base.rejected() == 1


def test_retired_version_is_kept_and_skipped_by_default():
    book, alice = NameBook(), KeySigner.generate()
    publish(book, alice, "m", ROOT1)
    publish(book, alice, "m", ROOT2)
    book.add(book.new_retire("m", 2, key=alice.public_key, sign=alice.sign, time_ms=3))
    assert str(book.resolve("m").root) == ROOT1
    assert str(book.resolve("m@2").root) == ROOT2
    assert describe(book.view("m"))[0]["retired"] is True


def test_carrier_round_trips_and_refuses_forged_bytes():
    book, alice = NameBook(), KeySigner.generate()
    files = [FileEntry(path=f"shard-{i:05d}.bin", size=i, sha256=f"{i:064x}")
             for i in range(400)]
    s = book.new_version("m", key=alice.public_key, sign=alice.sign, root=ROOT1, size=1,
                         files=files, time_ms=0)
    meta = record_pin_metadata(s)
    assert len(meta) <= 64 and all(len(v) <= 4096 for v in meta.values())
    assert record_block(s.key, meta) == s.block
    other = dict(meta)
    other["pinfold.name.00"] = "AAAA" + other["pinfold.name.00"][4:]
    assert record_block(s.key, other) is None


def test_claims_keep_a_name_with_its_creator_against_a_backdated_rival():
    alice, mallory = KeySigner.generate(), KeySigner.generate()
    members = [KeySigner.generate() for _ in range(3)]
    book = NameBook(witnesses={m.public_key for m in members} | {mallory.public_key})
    real = publish(book, alice, "m", ROOT1)
    for m in members:  # each member witnesses the creator it saw first
        book.add(book.new_claim("m", key=m.public_key, sign=m.sign, time_ms=1))
    for _ in range(20):  # whatever the rival's signature bytes, it loses
        rival = sign_record(VersionRecord(name="m", lamport=1, time_ms=0,
                                          key=mallory.public_key, version=1, parent=0,
                                          root=ROOT2, size=1), mallory.sign)
        book.add(rival)
        book.add(sign_record(ClaimRecord(name="m", lamport=2, time_ms=0, key=mallory.public_key,
                                         creator=mallory.public_key), mallory.sign))
    assert book.view("m").creator == alice.public_key
    assert str(book.resolve("m@1").root) == real.record.root


def test_claims_from_non_members_do_not_count():
    alice, mallory = KeySigner.generate(), KeySigner.generate()
    outsiders = [KeySigner.generate() for _ in range(5)]
    book = NameBook(witnesses={alice.public_key})
    publish(book, alice, "m", ROOT1)
    book.add(book.new_claim("m", key=alice.public_key, sign=alice.sign, time_ms=0))
    book.add(sign_record(VersionRecord(name="m", lamport=1, time_ms=0, key=mallory.public_key,
                                       version=1, parent=0, root=ROOT2, size=1),
                         mallory.sign))
    for o in outsiders:
        book.add(sign_record(ClaimRecord(name="m", lamport=3, time_ms=0, key=o.public_key,
                                         creator=mallory.public_key), o.sign))
    assert book.view("m").creator == alice.public_key


def test_version_record_refuses_a_root_that_is_not_a_cid():
    alice = KeySigner.generate()
    for root in ("bafkreiwldbx7iudcyn4ej42zw3bougjfzo5pjnxjp4ktfynsxwmztmebza", "hello", ""):
        with pytest.raises(RecordError, match="root: not a sha2-256 CID"):
            VersionRecord(name="m", lamport=1, time_ms=0, key=alice.public_key, version=1,
                          parent=0, root=root, size=0)


def test_versions_at_finds_every_version_of_a_root_with_tags_and_retirement():
    book, alice = NameBook(), KeySigner.generate()
    publish(book, alice, "org/a", ROOT1)
    publish(book, alice, "org/a", ROOT2)
    publish(book, alice, "org/b", ROOT1)
    book.add(book.new_tag("org/a", "stable", 1, key=alice.public_key, sign=alice.sign,
                          time_ms=1))
    uses = book.versions_at(make_cid(b"one"))
    assert [(u.ref, u.tags, u.retired) for u in uses] == [
        ("org/a@1", ("stable",), False), ("org/b@1", (), False)]
    book.add(book.new_retire("org/a", 1, key=alice.public_key, sign=alice.sign, time_ms=2))
    assert [u.retired for u in book.versions_at(make_cid(b"one"))] == [True, False]
    assert book.versions_at(make_cid(b"three")) == []
    v0 = make_cid(b"v0 root", 0x70, version=0)
    publish(book, alice, "org/c", str(v0))
    assert [u.ref for u in book.versions_at(cid_v1(v0))] == ["org/c@1"]  # same multihash


def test_describe_tells_a_tag_that_moved_on_from_one_that_lost_a_race():
    book, alice, bob = NameBook(), KeySigner.generate(), KeySigner.generate()
    publish(book, alice, "m", ROOT1)
    publish(book, alice, "m", ROOT2)
    book.add(book.new_grant("m", bob.public_key, key=alice.public_key, sign=alice.sign,
                            time_ms=0))
    for v in (1, 2):  # main moves on, as each push moves it
        book.add(book.new_tag("m", "main", v, key=alice.public_key, sign=alice.sign,
                              time_ms=v))
    # Signed against the same book: neither publisher has seen the other's move.
    race = [book.new_tag("m", "race", v, key=k.public_key, sign=k.sign, time_ms=9)
            for v, k in ((1, alice), (2, bob))]
    assert race[0].record.lamport == race[1].record.lamport
    for s in race:
        book.add(s)
    winner = book.view("m").tags["race"].version
    loser = 3 - winner
    hist = {h["version"]: h for h in describe(book.view("m"))}
    main_moves = [s for s in hist[1]["superseded"] if s["tag"] == "main"]
    assert [(s["moved_to"], s["concurrent"]) for s in main_moves] == [(2, False)]
    lost = [s for s in hist[loser]["superseded"] if s["tag"] == "race"]
    assert [(s["moved_to"], s["concurrent"]) for s in lost] == [(winner, True)]
    assert not [s for s in hist[winner]["superseded"] if s["tag"] == "race"]


def test_parse_known_splits_a_bare_name_path_after_the_longest_known_name():
    book, alice = NameBook(), KeySigner.generate()
    publish(book, alice, "org", ROOT1)
    publish(book, alice, "org/data", ROOT1)
    ref = book.parse_known("pinfold://org/data/sub/x.csv")
    assert (ref.name, ref.ref, ref.segments) == ("org/data", None, ("sub", "x.csv"))
    assert book.parse_known("org/other/x.csv").name == "org"  # the longest known run
    assert book.parse_known("org/data/a@2x.png").segments == ("a@2x.png",)
    explicit = book.parse_known("org/data@1/x.csv")
    assert (explicit.name, explicit.ref, explicit.segments) == ("org/data", 1, ("x.csv",))
    assert book.parse_known(f"{ROOT1}/x.csv") is None
    assert book.parse_known("nope/x.csv").name == "nope/x.csv"  # unknown: parse_ref's
    assert book.resolve("nope/x.csv") is None  # ...so resolve leaves it to the CID error
    cp = book.resolve("org/data/sub/x.csv")
    assert (str(cp.root), cp.segments) == (ROOT1, ("sub", "x.csv"))
    with pytest.raises(NameError_):
        book.parse_known("org/data/../x.csv")
