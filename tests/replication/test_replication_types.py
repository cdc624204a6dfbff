"""Value types of the replication layer (pinfold/replication/types.py): validated when built."""

from __future__ import annotations

import pytest
from pinfold.blockstore.cid import DAG_PB, make_cid
from pinfold.replication.errors import InvalidPeerID, InvalidPin
from pinfold.replication.types import (
    ExpireAction,
    Heartbeat,
    Pin,
    PinAction,
    PinMode,
    Reason,
    ReportAction,
    ReportKind,
    UnpinAction,
    check_cid_key,
    cid_text,
    pin_key,
    sort_actions,
)

CID = bytes(make_cid(b"weights"))


def test_pin_key_is_the_binary_cidv1_and_converts_cidv0() -> None:
    v0 = make_cid(b"node", DAG_PB, version=0)
    key = pin_key(str(v0))
    assert key[0] == 1 and key[1] == DAG_PB
    assert pin_key(key) == key == pin_key(v0)
    assert cid_text(key).startswith("bafy")
    assert check_cid_key(key) is key
    with pytest.raises(InvalidPin, match="binary CIDv1"):
        check_cid_key(bytes(v0))  # a CIDv0 is not the canonical key
    with pytest.raises(InvalidPin, match="cid"):
        pin_key("not-a-cid")


def test_pin_defaults_and_metadata_normalisation() -> None:
    p = Pin(cid=CID, metadata={"b": "2", "a": "1"})
    assert (p.mode, p.rmin, p.rmax, p.availability) == (PinMode.RECURSIVE, 2, 3, None)
    assert p.metadata == (("a", "1"), ("b", "2")) and p.metadata_dict == {"a": "1", "b": "2"}
    assert Pin(cid=CID, mode="direct").mode is PinMode.DIRECT
    assert Pin(cid=CID, metadata={}).metadata == ()
    assert Pin(cid=CID, expire_at=10).expired(10.0) and not Pin(cid=CID, expire_at=10).expired(9)
    assert hash(p) == hash(Pin(cid=CID, metadata=(("a", "1"), ("b", "2"))))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cid": "bafy"}, "cid: must be binary"),
        ({"cid": b"\x01\x55"}, "cid"),
        ({"name": 5}, "name"),
        ({"name": "x" * 1025}, "name"),
        ({"mode": "sideways"}, "mode"),
        ({"rmin": 0}, "rmin"),
        ({"rmin": True}, "rmin"),
        ({"rmin": 3, "rmax": 2}, "rmax"),
        ({"rmax": 5000}, "rmax"),
        ({"availability": 1.0}, "availability"),
        ({"availability": float("nan")}, "availability"),
        ({"expire_at": -1}, "expire_at"),
        ({"expire_at": float("inf")}, "expire_at"),
        ({"metadata": {"": "x"}}, "metadata"),
        ({"metadata": {"k": 5}}, "metadata"),
        ({"metadata": (("b", "1"), ("a", "2"))}, "sorted"),
        ({"metadata": [("a", "1")]}, "metadata"),
        ({"size_bytes": -5}, "size_bytes"),
    ],
)
def test_pin_refuses_bad_fields_naming_them(kwargs: dict, message: str) -> None:
    args = {"cid": CID, **kwargs}
    with pytest.raises(InvalidPin, match=message):
        Pin(**args)


def test_heartbeat_validation() -> None:
    hb = Heartbeat(peer_id="12D3KooWx", capacity_bytes=10, free_bytes=4,
                   addresses=("/ip4/127.0.0.1/tcp/4101/p2p/12D3KooWx",))
    assert hb.free_bytes == 4
    with pytest.raises(InvalidPin, match="free_bytes"):
        Heartbeat(peer_id="p", capacity_bytes=1, free_bytes=2)
    with pytest.raises(InvalidPin, match="addresses"):
        Heartbeat(peer_id="p", addresses=("127.0.0.1:4101",))
    with pytest.raises(InvalidPin, match="seq"):
        Heartbeat(peer_id="p", seq=-1)
    for bad in ("", "has space", "x" * 129, "é"):
        with pytest.raises(InvalidPeerID):
            Heartbeat(peer_id=bad)


def test_actions_sort_by_cid_then_peer_then_kind() -> None:
    a, b = b"\x01a", b"\x01b"
    acts = [
        ReportAction(cid=a, peer_id="p2", kind=ReportKind.UNDER_REPLICATED, holders=1, wanted=2),
        UnpinAction(cid=b, peer_id="p1", reason=Reason.EXTRA),
        ExpireAction(cid=a, peer_id="p1"),
        PinAction(cid=a, peer_id="p2", mode=PinMode.RECURSIVE, sources=(), reason=Reason.REPAIR),
        UnpinAction(cid=a, peer_id="p1", reason=Reason.EXPIRED),
    ]
    out = sort_actions(list(acts))
    assert [(x.cid, x.peer_id, type(x).__name__) for x in out] == [
        (a, "p1", "UnpinAction"),
        (a, "p1", "ExpireAction"),
        (a, "p2", "PinAction"),
        (a, "p2", "ReportAction"),
        (b, "p1", "UnpinAction"),
    ]
