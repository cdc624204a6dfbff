"""What the name book says about a pin (DESIGN.md "Names"): the guard that keeps
``pin rm`` from unpinning the root of a live version, and the ``NAME@N``
labels ``pin ls`` shows.

The pins layer knows nothing of names (``pinfold.blockstore``,
``pinfold.replication`` sit below ``pinfold.names``); the RPC methods in
``daemon/api.py`` ask here before unpinning and when listing. Pure: reads the
book, no I/O. Imports the names core.
"""

from __future__ import annotations

from typing import Any

from pinfold.blockstore.cid import CID
from pinfold.names.book import NameBook, VersionUse

from pinfold.daemon.errors import PinInUse

__all__ = ["check_unpin", "version_labels"]


def _uses(book: NameBook | None, cid: CID | str) -> list[VersionUse]:
    return book.versions_at(cid) if book is not None else []


def _one(use: VersionUse) -> str:
    tags = f"tags: {', '.join(use.tags)}" if use.tags else "no tags"
    return f"{use.ref} (version {use.version} of {use.name}, {tags})"


def check_unpin(book: NameBook | None, cid: CID, cid_text: str) -> None:
    """Refuse to unpin ``cid`` when it is the root of a live version (one not
    retired with ``versions rm``, tagged or not): ``repo gc`` would then delete
    its blocks and ``pull NAME@N`` would break. Kubo refuses the same way to
    remove a pin another pin still needs.

    Args:
        book: the node's name book (None before the names service runs).
        cid: the CID ``pin rm`` names; ``cid_text``: as the user typed it.

    Raises:
        PinInUse: the message names each live version (name, number, tags) and
            the command that removes it (``pinfold versions rm NAME@N``), and
            ``pin rm --force`` for unpinning anyway.
    """
    live = [u for u in _uses(book, cid) if not u.retired]
    if not live:
        return
    what = " and ".join(_one(u) for u in live)
    rm = " then ".join(f"`pinfold versions rm {u.ref}`" for u in live)
    raise PinInUse(f"{cid_text} is the root of {what}: remove the "
                   f"version{'s' if len(live) > 1 else ''} with {rm} "
                   f"(or unpin it anyway with `pinfold pin rm --force {cid_text}`, after "
                   f"which `repo gc` deletes its blocks)")


def version_labels(book: NameBook | None, cid: CID | str) -> list[dict[str, Any]]:
    """The versions whose root ``cid`` (a CID or its text) is, for ``pin ls``:
    ``[{name, version, ref: "NAME@N", tags, retired}]`` (empty when none)."""
    return [{"name": u.name, "version": u.version, "ref": u.ref, "tags": list(u.tags),
             "retired": u.retired} for u in _uses(book, cid)]
