"""How name records ride in the cluster's shared pinset (DESIGN.md "Names").

Each record is a pin of its own block (the record's CID, ``direct``, one or
two holders), and the record's bytes travel inline in the pin's metadata, so
the pinset's gossip and anti-entropy bring every record to every member, a
late joiner included, without fetching anything. The block is base64 in
chunks of ``CHUNK`` characters under ``pinfold.name.NN`` keys; the
``pinfold.name`` key holds the record's kind and name for people
(``pinfold pin ls --all`` shows them as ``name:NAME``; plain ``pin ls``
leaves them out).

A receiver checks that the bytes hash to the pin's CID (``record_block``)
before it verifies the signature; anything else is not a record.

Pure: no I/O.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Final

from pinfold.names.records import SignedRecord, record_key

__all__ = ["CHUNK", "MARKER", "is_record_pin", "record_block", "record_pin_label", "record_pin_metadata"]

#: Metadata key that marks a record pin; its value is ``KIND NAME``.
MARKER: Final = "pinfold.name"
#: Characters of base64 per metadata value (the pinset allows 4096).
CHUNK: Final = 4000


def record_pin_label(signed: SignedRecord) -> str:
    """The pin's name: ``name:NAME`` plus the kind and what it says."""
    r = signed.record
    what = getattr(r, "tag", None) or getattr(r, "version", "")
    return f"name:{r.name} {r.kind} {what}".rstrip()


def record_pin_metadata(signed: SignedRecord) -> dict[str, str]:
    """The metadata that carries ``signed``: the marker and the block in chunks."""
    text = base64.b64encode(signed.block).decode("ascii")
    meta = {MARKER: f"{signed.record.kind} {signed.record.name}"}
    for i in range(0, len(text), CHUNK):
        meta[f"{MARKER}.{i // CHUNK:02d}"] = text[i:i + CHUNK]
    return meta


def is_record_pin(metadata: Mapping[str, str]) -> bool:
    """True when a pin's metadata says it carries a name record."""
    return MARKER in metadata


def record_block(cid_bytes: bytes, metadata: Mapping[str, str]) -> bytes | None:
    """The record block a pin carries, or None when the pin carries none or
    its bytes do not hash to ``cid_bytes`` (a forged or damaged record)."""
    if MARKER not in metadata:
        return None
    parts = []
    i = 0
    while (chunk := metadata.get(f"{MARKER}.{i:02d}")) is not None:
        parts.append(chunk)
        i += 1
    try:
        block = base64.b64decode("".join(parts), validate=True)
    except ValueError:
        return None
    if record_key(block) != cid_bytes:
        return None
    return block

