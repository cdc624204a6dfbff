"""Content types of UnixFS files: from the name (``mimetypes``), else from the
first bytes (a small sniffer after the WHATWG MIME sniffing signatures), as
ipfs/specs path-gateway "Content-Type" asks. Pure functions, no I/O.
"""

from __future__ import annotations

import mimetypes
from typing import Final

#: Bytes of the file's start the sniffer looks at.
SNIFF_BYTES: Final = 512

_SIGNATURES: Final[tuple[tuple[bytes, str], ...]] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"%PDF-", "application/pdf"),
    (b"PK\x03\x04", "application/zip"),
    (b"\x1f\x8b\x08", "application/gzip"),
    (b"\x00asm", "application/wasm"),
    (b"OggS\x00", "application/ogg"),
    (b"ID3", "audio/mpeg"),
)
_HTML_STARTS: Final = (b"<!doctype html", b"<html", b"<head", b"<body", b"<script")

#: Types that get ``; charset=utf-8`` (their bytes are served as stored).
_TEXTUAL: Final = ("text/", "application/json", "application/javascript",
                   "image/svg+xml", "application/xml")


def _with_charset(ctype: str) -> str:
    return ctype + "; charset=utf-8" if ctype.startswith(_TEXTUAL) else ctype


def from_name(name: str) -> str | None:
    """The type ``mimetypes`` gives the file name ``name``, or ``None``."""
    ctype, _ = mimetypes.guess_type(name, strict=False)
    return _with_charset(ctype) if ctype else None


def sniff(head: bytes) -> str:
    """The type of a file whose first bytes are ``head`` (up to ``SNIFF_BYTES``).

    Known binary signatures first, then HTML, then UTF-8 text without control
    bytes (``text/plain``); anything else is ``application/octet-stream``.
    """
    head = head[:SNIFF_BYTES]
    for magic, ctype in _SIGNATURES:
        if head.startswith(magic):
            return ctype
    if head[:12] == b"RIFF" + head[4:8] + b"WEBP":
        return "image/webp"
    lowered = head.lstrip(b" \t\r\n\xef\xbb\xbf").lower()
    if lowered.startswith(_HTML_STARTS):
        return "text/html; charset=utf-8"
    if lowered.startswith(b"<svg") or (lowered.startswith(b"<?xml") and b"<svg" in lowered):
        return "image/svg+xml"
    if not head:
        return "text/plain; charset=utf-8"
    if any(b < 0x20 and b not in b"\t\n\r\x0c\x1b" for b in head):
        return "application/octet-stream"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:  # not just a character cut at the sniff boundary
            return "application/octet-stream"
    return "text/plain; charset=utf-8"


def content_type(name: str | None, head: bytes | None) -> str:
    """The ``Content-Type`` of a file named ``name`` (``None`` for a bare CID)
    starting with ``head`` (``None`` when not read): the name wins, then the bytes."""
    if name:
        by_name = from_name(name)
        if by_name:
            return by_name
    if head is None:
        return "application/octet-stream"
    return sniff(head)
