"""The RPC shapes of pin states: what ``pin add``, ``pin ls``, ``pin rm`` and
``add``'s ``pin`` return over the socket (the CLI prints them).

The node and the cluster answer with typed results (``Pinned``, ``LocalPin``,
``ClusterPin``, a ``PinRecord``); the RPC methods (``daemon/api.py``) turn them
into msgpack-able dicts here, and nowhere else. Imports the typed results.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from pinfold.blockstore.cid import CID
from pinfold.blockstore.pins import PinRecord
from pinfold.names.carrier import is_record_pin
from pinfold.replication.types import cid_text

from pinfold.daemon.cluster import ClusterPin
from pinfold.daemon.pinning import LocalPin, Pinned

__all__ = ["cluster_pin_dict", "is_record_listing", "pin_dict", "pin_record_dict",
           "unpinned_dict"]


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, CID):
        return str(value)
    return value


def pin_record_dict(rec: PinRecord, present: int | None = None) -> dict[str, Any]:
    """A local pin record as the RPC and CLI show it (CID as text).

    Args:
        rec: the record.
        present: how many of its ``rec.blocks`` blocks are in the store (None:
            not checked). A pin short of blocks has state ``incomplete`` and
            ``blocks_present``; otherwise its state is ``pinned``.
    """
    d = _jsonable(asdict(rec))
    d["cid"] = str(rec.cid)
    d["state"] = "pinned"
    if present is not None and present < rec.blocks:
        d["state"] = "incomplete"
        d["blocks_present"] = present
    return d


def cluster_pin_dict(cp: ClusterPin) -> dict[str, Any]:
    """A pin of the cluster pinset as the RPC and CLI show it, with this node's
    ``state`` (and ``error``); ``holders_pinned``/``holders_wanted`` when known."""
    pin = cp.pin
    d: dict[str, Any] = {"cid": cid_text(pin.cid), "name": pin.name, "mode": pin.mode.value,
                         "rmin": pin.rmin, "rmax": pin.rmax, "state": cp.state.value}
    if pin.availability is not None:
        d["availability"] = pin.availability
    if pin.expire_at is not None:
        d["expire_at"] = pin.expire_at
    if pin.metadata:
        d["metadata"] = dict(pin.metadata)
    if pin.size_bytes is not None:
        d["size_bytes"] = pin.size_bytes
    if cp.error:
        d["error"] = cp.error
    if cp.holders_pinned is not None:
        d["holders_pinned"] = cp.holders_pinned
    if cp.holders_wanted is not None:
        d["holders_wanted"] = cp.holders_wanted
    return d


def is_record_listing(item: ClusterPin | LocalPin) -> bool:
    """True for a pin that carries a name record (``names/carrier.py``): the
    names' bookkeeping, which ``pin ls`` hides unless asked."""
    meta = dict(item.pin.metadata) if isinstance(item, ClusterPin) else item.record.metadata
    return is_record_pin(meta)


def pin_dict(result: Pinned | ClusterPin | LocalPin) -> dict[str, Any]:
    """The RPC shape of a pin state: ``pin_add``'s result, ``add``'s ``pin``, a ``pin_ls`` item."""
    if isinstance(result, ClusterPin):
        return cluster_pin_dict(result)
    if isinstance(result, LocalPin):
        return pin_record_dict(result.record, result.present)
    d = pin_record_dict(result.record)
    d["fetched_bytes"] = result.fetched_bytes
    return d


def unpinned_dict(result: PinRecord | bytes) -> dict[str, Any]:
    """``pin_rm``'s result: the local record released, or the cluster pin's key."""
    if isinstance(result, PinRecord):
        d = pin_record_dict(result)
        d["state"] = "unpinned"
        return d
    return {"cid": cid_text(result), "state": "unpinned"}
