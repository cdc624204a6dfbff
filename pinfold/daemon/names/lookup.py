"""What a ``cid`` parameter names: a CID, a CID path or a name ref.

``to_cid`` is the one place the RPC methods that read content (``cat``,
``get``) turn their ``cid`` parameter into the CID to read: a name ref
(``NAME``, ``NAME@3``, ``NAME@main/config.json``) through the node's
``NameBook.resolve``, else a CID or ``CID/path`` (``unixfs.paths``); a path is
walked through its directories (HAMT shards included).
"""

from __future__ import annotations

import re

from pinfold.blockstore.cid import CID, parse_cid
from pinfold.blockstore.errors import InvalidCID
from pinfold.blockstore.unixfs.paths import ContentPath, GetBlock, parse_path, resolve
from pinfold.names.book import NameBook

__all__ = ["to_cid", "to_content_path"]

_NAME_LIKE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def to_content_path(text: str, book: NameBook | None) -> ContentPath:
    """``text`` as a root CID and path segments.

    Raises:
        NameError_, NameNotFound: a bad or unknown name ref (``NAME@REF``, or
            ``NAME/...`` whose first part is no CID).
        InvalidCID: a bare word that is neither a CID nor a known name.
        InvalidPath: a bad CID path.
    """
    if book is not None:
        cp = book.resolve(text)
        if cp is not None:
            return cp
    if "/" not in text:
        try:
            return ContentPath(root=parse_cid(text))
        except InvalidCID as exc:
            if book is not None and _NAME_LIKE.fullmatch(text):
                raise InvalidCID(f"{exc}; nor is it a name of this cluster") from None
            raise
    return parse_path(text)


async def to_cid(text: str, book: NameBook | None, get_block: GetBlock) -> CID:
    """The CID ``text`` names (see ``to_content_path``), its path resolved.

    Raises:
        as ``to_content_path``; ``PathNotFound``/``BlockNotFound`` from ``resolve``.
    """
    cp = to_content_path(text, book)
    if not cp.segments:
        return cp.root
    return (await resolve(get_block, cp)).cid
