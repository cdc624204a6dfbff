"""The HTML listing of a UnixFS directory that has no ``index.html``
(ipfs/specs path-gateway, "Generated HTML with directory index"): a table of
names (links), types, sizes and CIDs, readable in a browser, with links to
the parent folder and to the directory as a CAR. Pure: takes entries, returns
bytes.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Final
from urllib.parse import quote

from pinfold.blockstore.cid import cid_text
from pinfold.blockstore.unixfs.paths import DirEntry

#: Bumped when the page changes, so cached listings are replaced (it is in the ETag).
LISTING_VERSION: Final = "pinfold-dirindex-1"

_STYLE: Final = """
body{font-family:system-ui,-apple-system,sans-serif;margin:2rem auto;max-width:60rem;
padding:0 1rem;color:#1b1f23;background:#fff}
h1{font-size:1.2rem;word-break:break-all}h1 small{color:#6a737d;font-weight:normal}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.35rem .6rem;
border-bottom:1px solid #e1e4e8}th{font-size:.8rem;color:#6a737d;text-transform:uppercase}
td.size{text-align:right;white-space:nowrap}td.cid{font-family:ui-monospace,monospace;
font-size:.75rem;color:#6a737d;word-break:break-all}a{color:#0366d6;text-decoration:none}
a:hover{text-decoration:underline}footer{margin-top:1rem;font-size:.8rem;color:#6a737d}
"""


def human_size(n: int | None) -> str:
    """``1.5 MiB`` style size, or ``-`` when unknown."""
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def render_listing(ipfs_path: str, dir_cid: str, entries: Sequence[DirEntry]) -> bytes:
    """The page for the directory at ``ipfs_path`` (``/ipfs/CID/a/b/``, ending in ``/``).

    Entry links are relative (the URL ends in ``/``), names are HTML-escaped
    and percent-encoded, so any UnixFS name is safe to show and to follow.
    Sizes are file sizes where known, else the DAG size (Tsize) marked ``~``.
    """
    rows = []
    if ipfs_path.rstrip("/").count("/") > 2:  # below the root CID: a parent link
        rows.append('<tr><td><a href="../">..</a></td><td>dir</td><td class="size"></td>'
                    '<td class="cid"></td></tr>')
    for e in entries:
        href = quote(e.name, safe="") + ("/" if e.kind == "dir" else "")
        name = html.escape(e.name) + ("/" if e.kind == "dir" else "")
        if e.size is not None:
            size = human_size(e.size)
        elif e.tsize is not None:
            size = "~" + human_size(e.tsize)
        else:
            size = "-"
        cid = html.escape(cid_text(e.cid))
        rows.append(f'<tr><td><a href="{href}">{name}</a></td><td>{e.kind}</td>'
                    f'<td class="size">{size}</td>'
                    f'<td class="cid"><a href="/ipfs/{cid}">{cid}</a></td></tr>')
    title = html.escape(ipfs_path)
    car = html.escape(ipfs_path.rstrip("/") + "?format=car")
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{title}</title><style>{_STYLE}</style></head><body>"
        f"<h1>Index of {title}<br><small>{html.escape(dir_cid)}</small></h1>"
        "<table><thead><tr><th>Name</th><th>Type</th><th>Size</th><th>CID</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
        f"<footer>{len(entries)} entries &middot; <a href=\"{car}\">download as CAR</a>"
        " &middot; served by pinfold</footer></body></html>\n"
    )
    return page.encode("utf-8")
