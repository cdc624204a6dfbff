"""The RPC shapes of pin states (pinfold/daemon/api_shapes.py): typed results in, dicts out."""

from __future__ import annotations

from pinfold.blockstore.cid import RAW, make_cid
from pinfold.blockstore.pins import PinRecord
from pinfold.daemon.api_shapes import pin_dict, unpinned_dict
from pinfold.daemon.cluster import ClusterPin
from pinfold.daemon.pinning import LocalPin, Pinned
from pinfold.replication.types import Pin, PinState, cid_text, pin_key

CID_A = make_cid(b"a", RAW)


def record(blocks: int = 3) -> PinRecord:
    return PinRecord(cid=CID_A, mode="recursive", name="n", blocks=blocks, bytes=30,
                     created_at=1.0, metadata={"k": "v"})


def test_a_local_pin_shows_its_cid_as_text_with_the_bytes_fetched():
    d = pin_dict(Pinned(record=record(), fetched_bytes=7))
    assert d["cid"] == str(CID_A) and d["state"] == "pinned" and d["fetched_bytes"] == 7
    assert d["metadata"] == {"k": "v"} and d["holds"] == {"local": "recursive"}
    assert d["name"] == "n" and d["blocks"] == 3 and d["mode"] == "recursive"


def test_a_listed_local_pin_short_of_blocks_is_incomplete_with_blocks_present():
    item = LocalPin(record=record(blocks=3), present=2)
    assert item.state == "incomplete"
    d = pin_dict(item)
    assert d["state"] == "incomplete" and d["blocks_present"] == 2
    whole = pin_dict(LocalPin(record=record(blocks=3), present=3))
    assert whole["state"] == "pinned" and "blocks_present" not in whole
    assert "fetched_bytes" not in whole


def test_a_cluster_pin_shows_this_nodes_state_and_holders_only_when_known():
    pin = Pin(cid=pin_key(CID_A), name="c", rmin=2, rmax=3)
    listed = pin_dict(ClusterPin(pin=pin, state=PinState.QUEUED))
    assert listed == {"cid": cid_text(pin.cid), "name": "c", "mode": "recursive", "rmin": 2,
                      "rmax": 3, "state": "queued"}
    added = pin_dict(ClusterPin(pin=pin, state=PinState.PIN_ERROR, error="boom",
                                holders_pinned=1, holders_wanted=2))
    assert added["error"] == "boom" and added["state"] == "pin_error"
    assert (added["holders_pinned"], added["holders_wanted"]) == (1, 2)


def test_unpinned_is_the_released_record_or_the_cluster_key():
    assert unpinned_dict(record())["state"] == "unpinned"
    assert unpinned_dict(pin_key(CID_A)) == {"cid": cid_text(pin_key(CID_A)),
                                              "state": "unpinned"}
