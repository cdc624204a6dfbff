"""What the name book says about a pin (DESIGN.md "Names"): the guards that keep
``pin rm`` from unpinning the root of a live version and ``versions rm`` from
retiring a version a tag points at, and the ``NAME@N`` labels ``pin ls`` and
``pin status`` show.

The pins layer knows nothing of names (``pinfold.blockstore``,
``pinfold.replication`` sit below ``pinfold.names``); the RPC methods in
``daemon/api.py`` and ``daemon/names/rpc.py`` ask here before unpinning or
retiring and when listing. Pure: reads the book, no I/O. Imports the names core.
"""

from __future__ import annotations

from typing import Any

from pinfold.blockstore.cid import CID
from pinfold.names.book import NameBook, VersionUse

from pinfold.daemon.errors import PinInUse

__all__ = ["check_retire", "check_unpin", "labelled", "version_labels"]


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


def check_retire(book: NameBook, name: str, version: int) -> None:
    """Refuse to retire ``NAME@N`` while a tag points at it: ``NAME@TAG`` (and
    ``NAME`` alone, for ``main``) would then resolve to a retired version whose
    root is unpinned, so ``repo gc`` deletes its blocks. The Hugging Face Hub
    likewise keeps the commit a branch points at. A version already retired
    passes (retiring it again changes nothing).

    Args:
        book: the node's name book; ``name``, ``version``: the version to retire
            (the caller has checked that it exists).

    Raises:
        PinInUse: the message names the version, the tags at it and what to
            do: move them with ``pinfold tag`` (to the newest other live
            version, when there is one), or ``versions rm --force``.
    """
    view = book.view(name)
    if view is None or version in view.retired:
        return
    tags = view.tags_at(version)
    if not tags:
        return
    ref, many = f"{name}@{version}", len(tags) > 1
    refs = [f"{name}@{t}" for t in tags]
    if view.default_version() == version:
        refs.append(f"{name} alone")
    live = [n for n in view.live() if n != version]
    if live:
        how = (f"move the tag{'s' if many else ''} first with "
               + " then ".join(f"`pinfold tag {name}@{max(live)} {t}`" for t in tags)
               + " (or to another version)")
    else:
        how = (f"push a new version and move the tag{'s' if many else ''} there with "
               f"`pinfold tag {name}@N TAG` (it is the only live version of {name})")
    after = "" if view.sharing_root(version) else " whose blocks `repo gc` deletes"
    raise PinInUse(f"{ref} has tag{'s' if many else ''} {', '.join(tags)} "
                   f"({', '.join(refs)} resolve{'' if len(refs) > 1 else 's'} to it): "
                   f"{how}, or retire it anyway with `pinfold versions rm --force {ref}` "
                   f"(the tag{'s then name' if many else ' then names'} a retired "
                   f"version{after})")


def version_labels(book: NameBook | None, cid: CID | str) -> list[dict[str, Any]]:
    """The versions whose root ``cid`` (a CID or its text) is, for ``pin ls`` and
    ``pin status``:
    ``[{name, version, ref: "NAME@N", tags, retired}]`` (empty when none)."""
    return [{"name": u.name, "version": u.version, "ref": u.ref, "tags": list(u.tags),
             "retired": u.retired} for u in _uses(book, cid)]


def labelled(book: NameBook | None, pin: dict[str, Any]) -> dict[str, Any]:
    """``pin`` (a ``pin_ls`` item or ``pin_status`` reply, with ``cid``) plus
    ``versions`` (``version_labels``) when its CID is the root of a version;
    else ``pin`` itself."""
    uses = version_labels(book, pin["cid"])
    return {**pin, "versions": uses} if uses else pin
