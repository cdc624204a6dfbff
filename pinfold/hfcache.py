"""Hugging Face hub cache layout, on the client side (issue 16 item 6).

huggingface_hub keeps a repo as ``CACHE/models--ORG--MODEL/`` with
``blobs/<hash>`` (the files' bytes), ``snapshots/<revision>/<path>`` (relative
symbolic links into ``blobs``) and ``refs/<branch>`` (the revision a branch
points at). ``snapshot_download(repo_id, local_files_only=True)`` reads
``refs/main`` and returns ``snapshots/<that revision>``.

``lay_out`` moves a pulled tree into that layout; blobs are named by the
file's sha256 (what the hub shows for LFS files). ``snapshot_origin`` tells a
snapshot folder's repo and revision from its path, for ``push`` metadata.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

__all__ = ["default_cache_dir", "lay_out", "repo_folder", "revision_for", "sha256_file",
           "snapshot_origin"]

_SNAPSHOT = re.compile(r"(?:models|datasets|spaces)--(.+)$")
_REV = re.compile(r"[0-9a-f]{40}")


def default_cache_dir() -> Path:
    """``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(Path.home(), ".cache", "huggingface")
    return Path(home) / "hub"


def repo_folder(repo_id: str, repo_type: str = "model") -> str:
    """``models--ORG--MODEL`` for ``ORG/MODEL``."""
    return f"{repo_type}s--" + repo_id.replace("/", "--")


def sha256_file(path: Path) -> str:
    """The file's sha256 as 64 lowercase hex digits."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def snapshot_origin(path: Path) -> tuple[str, str] | None:
    """``(repo_id, revision)`` when ``path`` is ``.../models--ORG--MODEL/snapshots/REV``."""
    p = path.absolute()
    if p.parent.name != "snapshots" or not _REV.fullmatch(p.name):
        return None
    m = _SNAPSHOT.match(p.parent.parent.name)
    if m is None:
        return None
    return m.group(1).replace("--", "/"), p.name


def revision_for(record_cid: str) -> str:
    """A 40-hex revision for a version without one: sha1 of its record's CID text."""
    return hashlib.sha1(record_cid.encode()).hexdigest()


def lay_out(tree: Path, cache_dir: Path, repo_id: str, revision: str,
            refs: list[str]) -> Path:
    """Move every file of ``tree`` (a pulled version) into the cache layout of
    ``repo_id`` at ``revision`` and point ``refs`` at it; ``tree`` is removed.

    Returns the snapshot folder. Existing blobs are kept (same hash, same bytes).

    Raises:
        ValueError: ``revision`` is not 40 hex digits.
    """
    if not _REV.fullmatch(revision):
        raise ValueError(f"revision {revision!r}: the hub cache needs 40 hex digits")
    repo = cache_dir / repo_folder(repo_id)
    blobs = repo / "blobs"
    snap = repo / "snapshots" / revision
    blobs.mkdir(parents=True, exist_ok=True)
    snap.mkdir(parents=True, exist_ok=True)
    files = [p for p in sorted(tree.rglob("*")) if p.is_file() and not p.is_symlink()]
    for f in files:
        rel = f.relative_to(tree)
        digest = sha256_file(f)
        blob = blobs / digest
        if blob.exists():
            f.unlink()
        else:
            os.replace(f, blob)
        link = snap / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.relpath(blob, link.parent))
    for d in sorted((p for p in tree.rglob("*") if p.is_dir()), reverse=True):
        d.rmdir()
    tree.rmdir()
    (repo / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (repo / "refs" / ref).write_text(revision)
    return snap
