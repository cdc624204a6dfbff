"""Name refs as users write them (DESIGN.md "Names"): ``NAME``, ``NAME@3``,
``NAME@TAG``, each with an optional ``/path``, told apart from CID paths.
Parsing only; which name a bare ``NAME/path`` means needs the book
(``NameBook.parse_known``). Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from pinfold.blockstore.cid import parse_cid
from pinfold.blockstore.unixfs.paths import parse_path
from pinfold.names.records import NameError_, check_name, check_tag

__all__ = ["MAX_NAME_SEGMENTS", "NameRef", "parse_ref", "parse_ref_is_cid"]

#: Most '/'-separated parts a name has (``records.check_name``).
MAX_NAME_SEGMENTS = 4


@dataclass(frozen=True, slots=True, kw_only=True)
class NameRef:
    """A parsed ``NAME[@REF][/path]``: ``ref`` is ``None``, a version number or a tag."""

    name: str
    ref: int | str | None = None
    segments: tuple[str, ...] = ()


def parse_ref(text: str) -> NameRef | None:
    """Parse a name ref; ``None`` when ``text`` is a CID path instead.

    A text is a CID path when it starts with ``/ipfs/`` or ``ipfs://`` or its
    first segment parses as a CID. ``pinfold://`` is stripped first.

    Raises:
        NameError_: a bad name, an empty ``@``, a bad tag or a bad path segment.
    """
    t = text.strip()
    if t.startswith("pinfold://"):
        t = t[len("pinfold://"):]
    if not t or t.startswith(("/ipfs/", "ipfs://")):
        return None
    head = t.split("/", 1)[0].split("@", 1)[0]
    try:
        parse_cid(head)
        return None
    except Exception:
        pass
    if "@" in t:
        name, rest = t.split("@", 1)
        ref_text, _, path = rest.partition("/")
        if not ref_text:
            raise NameError_(f"{text!r}: nothing after '@' (use NAME@VERSION or NAME@TAG)")
        ref: int | str | None = int(ref_text) if ref_text.isdigit() else check_tag(ref_text)
        if isinstance(ref, int) and ref < 1:
            raise NameError_(f"{text!r}: versions count from 1")
    else:
        name, ref, path = t.rstrip("/"), None, ""
    check_name(name)
    segments: tuple[str, ...] = ()
    if path.strip("/"):
        # The path rules of CID paths (no '.', '..' or NUL segments).
        try:
            segments = parse_path("bafkqaaa/" + path).segments
        except Exception as exc:
            raise NameError_(f"{text!r}: {exc}") from None
    return NameRef(name=name, ref=ref, segments=segments)


def parse_ref_is_cid(text: str) -> bool:
    """True when ``text`` is a CID path as ``parse_ref`` decides (``/ipfs/``,
    ``ipfs://``, or a first segment that parses as a CID)."""
    t = text.strip()
    if t.startswith("pinfold://"):
        t = t[len("pinfold://"):]
    if not t or t.startswith(("/ipfs/", "ipfs://")):
        return True
    try:
        parse_cid(t.split("/", 1)[0].split("@", 1)[0])
        return True
    except Exception:
        return False
