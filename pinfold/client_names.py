"""The ``Client``'s names methods (mixed into ``pinfold.Client``): push a
folder as a new version of a name, pull a version (optionally into the
Hugging Face cache layout), resolve refs, list versions and names, move tags,
grant publishers (DESIGN.md "Names").
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pinfold import hfcache
from pinfold.localtree import walk_local_tree

__all__ = ["NamesMixin", "file_manifest"]


def file_manifest(path: str | os.PathLike[str],
                  progress: Callable[[int], None] | None = None) -> list[list[Any]]:
    """``[[path, size, sha256], ...]`` of every file under ``path`` (links
    followed), or of the single file ``path`` under its own name."""
    root = Path(path)
    if not root.is_dir():
        return [[root.name, root.stat().st_size, _sha256(root, progress)]]
    out = []
    for kind, rel, full, size in walk_local_tree(root, dereference=True):
        if kind == "file":
            out.append([rel, size, _sha256(Path(full), progress)])
    return out


def _sha256(path: Path, progress: Callable[[int], None] | None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            if progress:
                progress(len(chunk))
    return h.hexdigest()


class NamesMixin:
    """Names methods of ``Client`` (they use its ``call``, ``add``, ``add_dir``,
    ``get`` and ``wait_pinned``)."""

    call: Any
    add_info: Any
    add_dir: Any
    get: Any
    wait_pinned: Any

    def push(self, name: str, path: str | os.PathLike[str], *, tags: list[str] | None = None,
             message: str = "", meta: dict[str, str] | None = None, move_main: bool = True,
             replicas: int | None = None, availability: float | None = None,
             key: str | None = None, wait: bool = False, wait_timeout: float | None = None,
             progress: Callable[[int], None] | None = None) -> dict[str, Any]:
        """Add ``path`` (a file or folder, links followed), pin it with the
        given replication and publish it as the next version of ``name``.

        Moves ``main`` (unless ``move_main`` is False) and each of ``tags`` to
        it. A Hugging Face snapshot folder (``.../models--ORG--MODEL/snapshots/
        REV``) records ``hf_repo`` and ``hf_revision`` in ``meta``.

        Returns ``{"name", "version", "cid", "record", "tags", "publisher", "pin"}``.

        Raises:
            RpcError: ``not_allowed`` (the key may not publish under ``name``),
                ``invalid_name``, ``key_error``, or the pin's error.
        """
        p = Path(path)
        check: dict[str, Any] = {"name": name}
        if key is not None:
            check["key"] = key
        self.call("name_check", check)  # a refused key or name before any upload
        meta = dict(meta or {})
        origin = hfcache.snapshot_origin(p)
        if origin is not None:
            meta.setdefault("hf_repo", origin[0])
            meta.setdefault("hf_revision", origin[1])
        files = file_manifest(p)
        repl: dict[str, Any] = {}
        if replicas is not None:
            repl["rmin"] = repl["rmax"] = replicas
        if availability is not None:
            repl["availability"] = availability
        if p.is_dir():
            added = self.add_dir(p, pin=True, dereference=True, progress=progress,
                                 name=name, **repl)
        else:
            added = self.add_info(p, pin=True, name=name, progress=progress, **repl)
        params: dict[str, Any] = {
            "name": name, "cid": added["cid"], "size": sum(f[1] for f in files),
            "files": files, "message": message, "meta": meta, "tags": list(tags or []),
            "no_main": not move_main}
        if key is not None:
            params["key"] = key
        res = self.call("name_publish", params)
        res["pin"] = added.get("pin", {})
        if wait or wait_timeout is not None:
            res["status"] = self.wait_pinned(added["cid"], timeout=wait_timeout)
        return res

    def resolve_info(self, ref: str) -> dict[str, Any]:
        """``{"name", "version", "cid", "path", "size", "files", "meta", "record",
        "tags", "default"}``: ``tags`` point at that version now, ``default`` is true
        when the name alone (``main``, else the newest) names it."""
        return self.call("name_resolve", {"ref": ref})

    def pull(self, ref: str, dest: str | os.PathLike[str] | None = None, *,
             hf_cache: str | os.PathLike[str] | bool | None = None,
             progress: Callable[[int], None] | None = None) -> dict[str, Any]:
        """Download the version ``ref`` names into ``dest`` (a new or empty folder;
        default: the name's last part), checking every file's sha256 against
        the version record.

        With ``hf_cache`` (a folder, or True for huggingface_hub's default) the
        files go into the hub cache layout instead (``hfcache.lay_out``), as
        repo ``meta["hf_repo"]`` or the name, at ``meta["hf_revision"]`` or a
        revision derived from the record. ``refs/BRANCH`` files are what
        huggingface_hub reads for a branch: ``refs/main`` is written when the
        version is the one the name alone names (``main``'s target, else the
        newest), however ``ref`` named it (``NAME``, ``NAME@main``, ``NAME@4``),
        and ``refs/TAG`` for every tag at that version; a ref pointing elsewhere
        is left alone. The snapshot folder is named by the revision, so
        ``revision=REV`` finds any pulled version.

        Returns the resolve record plus ``{"path", "files", "bytes"}``.

        Raises:
            RpcError: ``name_not_found``, ``invalid_name``, the fetch's error.
            ValueError: a file's sha256 differs from the record.
        """
        info = self.resolve_info(ref)
        if hf_cache:
            cache = hfcache.default_cache_dir() if hf_cache is True else Path(hf_cache)
            cache.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=".pinfold-pull-", dir=cache))
            try:
                got = self.get(info["path"], tmp / "tree", progress=progress)
                tree = Path(got.get("path", tmp / "tree"))
                self._check_files(tree, info)
                refs = set(info["tags"]) | ({"main"} if info["default"] else set())
                repo = info["meta"].get("hf_repo") or info["name"]
                rev = info["meta"].get("hf_revision") or hfcache.revision_for(info["record"])
                snap = hfcache.lay_out(tree, cache, repo, rev, sorted(refs))
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            return {**info, "path": str(snap), "repo": repo, "revision": rev}
        target = Path(dest) if dest is not None else Path(info["name"].rsplit("/", 1)[-1])
        got = self.get(info["path"], target, progress=progress)
        self._check_files(Path(got.get("path", target)), info)
        return {**info, **got, "path": str(got.get("path", target))}

    @staticmethod
    def _check_files(tree: Path, info: dict[str, Any]) -> None:
        if info["path"] != info["cid"]:
            return  # a path inside the version: no manifest entry to check against
        for rel, size, digest in info["files"]:
            f = tree / rel if tree.is_dir() else tree
            if f.stat().st_size != size or _sha256(f, None) != digest:
                raise ValueError(f"{rel}: does not match the sha256 in the version record")

    def versions(self, name: str) -> dict[str, Any]:
        """``{"name", "creator", "publishers", "versions": [...]}``, newest first (for
        ``NAME@VERSION`` or ``NAME@TAG`` only the version it names); each
        version has ``version, parent, cid, size, time_ms, message, meta,
        publisher, tags, superseded, retired, files, holders, availability``:
        ``tags`` point at it now; ``superseded`` are earlier moves of a tag to it
        that a later move replaced, each ``{tag, publisher, lamport, time_ms,
        moved_to, concurrent}`` (``concurrent``: lost a race, see
        ``names.book.describe``; false for a tag that simply moved on)."""
        return self.call("name_versions", {"name": name})

    def names(self) -> Iterator[dict[str, Any]]:
        """Every name: ``{"name", "versions", "retired", "latest", "creator", "tags",
        "retired_tags"}``: ``versions`` counts the live (not retired) versions,
        ``retired`` the retired ones; ``latest`` is the newest live version (None
        when all are retired); ``tags`` maps each tag to its version number;
        ``retired_tags`` lists the tags at a retired version."""
        return iter(self.call("name_ls")["names"])

    def tag(self, ref: str, tag: str, *, key: str | None = None) -> dict[str, Any]:
        """Move ``tag`` to the version ``ref`` (``NAME@VERSION`` or ``NAME@TAG``) names."""
        params = {"ref": ref, "tag": tag}
        if key is not None:
            params["key"] = key
        return self.call("name_tag", params)

    def grant(self, name: str, grantee: str, *, key: str | None = None) -> dict[str, Any]:
        """Let key ``grantee`` (a key ID, ``12D3KooW...``) publish under ``name``."""
        params = {"name": name, "grantee": grantee}
        if key is not None:
            params["key"] = key
        return self.call("name_grant", params)

    def retire(self, ref: str, *, key: str | None = None, force: bool = False
               ) -> dict[str, Any]:
        """Unpin version ``NAME@N`` and record it as retired (the record stays).

        Returns ``{"name", "version", "cid", "already_retired", "unpinned", "pinned",
        "shared_with", "tags"}``: a root another live version has (``shared_with``,
        their numbers) stays pinned; retiring a retired version publishes and
        unpins nothing (``already_retired``); ``pinned`` is the root's pin
        afterwards; ``tags`` are the tags at the version now (only with ``force``
        or on a version retired before).

        Raises:
            RpcError: ``pin_in_use`` when a tag points at the version (the
                message names the tags and ``pinfold tag`` to move them);
                ``force=True`` retires it anyway. ``name_not_found``.
        """
        params: dict[str, Any] = {"ref": ref}
        if key is not None:
            params["key"] = key
        if force:
            params["force"] = True
        return self.call("name_retire", params)

    def export_records(self, name: str) -> list[bytes]:
        """Every signed record of ``name`` (record blocks), oldest first."""
        return self.call("name_export", {"name": name})["records"]

    def import_records(self, blocks: list[bytes]) -> dict[str, Any]:
        """Publish signed record blocks (e.g. ``export_records`` of another cluster);
        each node's book decides what they change. Returns ``{"imported", "records"}``."""
        return self.call("name_import", {"records": list(blocks)})

    def key_gen(self, name: str) -> dict[str, str]:
        """Create the named signing key in the daemon's home: ``{"name", "id"}``."""
        return self.call("key_gen", {"name": name})

    def keys(self) -> list[dict[str, str]]:
        """The node's signing keys: ``[{"name", "id"}]`` (``self`` first)."""
        return self.call("key_ls")["keys"]
