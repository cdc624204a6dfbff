"""The names RPC methods (the CLI's ``push``, ``pull``, ``tag``, ``versions``,
``names``, ``name grant``, ``key ls``; the client mirrors them):

=====================  =======================================================
``name_publish``       {name, cid, size, files: [[path, size, sha256]],
                       message, meta: {k: v}, tags: [tag], key} -> {name,
                       version, cid, record, tags}; the content is added and
                       pinned first (``add_dir``); ``main`` moves unless
                       ``tags`` is given without it and ``no_main`` is set
``name_check``         {name, key} -> {name, publisher}: may ``key`` publish
                       under ``name`` (``push`` asks before adding anything)
``name_tag``           {ref: NAME@VERSION or NAME@TAG, tag, key} -> {name,
                       tag, version}; NAME alone is refused
``name_grant``         {name, grantee: key ID, key} -> {name, grantee}
``name_resolve``       {ref} -> {name, version, cid, path, size, files, meta,
                       record, tags (those at the version now), default (the
                       version NAME alone names)}
``name_versions``      {name: NAME[@REF]} -> {name, creator, publishers,
                       versions: [...]} each version with tags, retired,
                       superseded (earlier moves of a tag to it, each with
                       moved_to and concurrent: ``book.describe``), holders
                       and achieved availability; with @REF
                       only the version REF names
``name_retire``        {ref: NAME@VERSION, key, force} -> {name, version, cid,
                       already_retired, unpinned, pinned, shared_with:
                       [live versions with the same root, kept pinned],
                       tags: [tags at it now]}; refused (``pin_in_use``) while
                       a tag points at it unless ``force``
                       (``pin_names.check_retire``); retiring a retired
                       version changes nothing
``name_ls``            -> {names: [{name, versions, retired, latest, tags,
                       retired_tags, creator}]}: ``versions`` counts live
                       versions, ``retired`` retired ones, ``latest`` is the
                       newest live version (None when every one is retired),
                       ``retired_tags`` the tags at a retired version
``name_import``        {records: [block]} -> {imported, records}: signed
                       records (any key: the book decides what they change)
``name_export``        {name} -> {name, records: [block]}
``key_gen``            {name} -> {name, id}: a new key in ``HOME/keys``
``key_ls``             -> {keys: [{name, id}]}
=====================  =======================================================

Imports the names service and the pure core.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from pinfold.blockstore.cid import CID, parse_cid
from pinfold.blockstore.errors import NotPinned
from pinfold.names.book import DEFAULT_TAG, describe
from pinfold.names.records import (
    FileEntry,
    NameError_,
    check_tag,
    decode_record,
    key_from_text,
    key_text,
)

from pinfold.daemon.errors import InvalidArgument, param_str
from pinfold.daemon.names.keys import SELF, generate_key, list_keys
from pinfold.daemon.names.service import NameService
from pinfold.daemon.parts import Handler
from pinfold.daemon.pin_names import check_retire

__all__ = ["name_handlers"]


def _files(value: Any) -> list[FileEntry]:
    if not isinstance(value, list):
        raise InvalidArgument("parameter 'files' must be a list of [path, size, sha256]")
    out = []
    for f in value:
        if not (isinstance(f, list | tuple) and len(f) == 3 and isinstance(f[0], str)
                and isinstance(f[1], int) and isinstance(f[2], str)):
            raise InvalidArgument(f"files: {f!r} is not [path, size, sha256]")
        out.append(FileEntry(path=f[0], size=f[1], sha256=f[2]))
    return out


def _str_map(value: Any, what: str) -> list[tuple[str, str]]:
    if value is None:
        return []
    if not isinstance(value, dict):
        raise InvalidArgument(f"parameter {what!r} must be a map of strings")
    return sorted((str(k), str(v)) for k, v in value.items())


def name_handlers(names: NameService, *,
                  pin_status: Callable[[CID], Awaitable[dict[str, Any]]],
                  unpin: Callable[[CID], Awaitable[Any]]) -> dict[str, Handler]:
    """The names methods of a node.

    Args:
        names: the node's names service.
        pin_status: the node's pin status (holders, availability of a version).
        unpin: the node's unpin (``versions rm``).
    """
    book = names.book

    def key_of(params: dict[str, Any]):
        key = params.get("key") or SELF
        if not isinstance(key, str):
            raise InvalidArgument("parameter 'key' must be a key name")
        return names.signer(key)

    async def name_publish(call: Any) -> dict[str, Any]:
        p = call.params
        name = param_str(p, "name")
        root = str(parse_cid(param_str(p, "cid")))
        size = p.get("size")
        if not isinstance(size, int) or size < 0:
            raise InvalidArgument("parameter 'size' must be an integer >= 0")
        tags = p.get("tags") or []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise InvalidArgument("parameter 'tags' must be a list of tag names")
        tags = [check_tag(t) for t in tags]
        if not p.get("no_main") and DEFAULT_TAG not in tags:
            tags.insert(0, DEFAULT_TAG)
        message = p.get("message") or ""
        if not isinstance(message, str):
            raise InvalidArgument("parameter 'message' must be text")
        signer = key_of(p)
        now = names.now_ms()
        version = book.new_version(name, key=signer.public_key, sign=signer.sign, root=root,
                                   size=size, files=_files(p.get("files", [])),
                                   message=message, meta=_str_map(p.get("meta"), "meta"),
                                   time_ms=now)
        rec = version.record
        moves = [book.new_tag(name, t, rec.version, key=signer.public_key, sign=signer.sign,
                              time_ms=now, pending=rec) for t in tags]  # type: ignore[arg-type]
        await names.publish([version, *moves])
        return {"name": name, "version": rec.version, "cid": root,  # type: ignore[union-attr]
                "record": str(version.cid), "tags": tags,
                "publisher": key_text(signer.public_key)}

    async def name_check(call: Any) -> dict[str, Any]:
        name = param_str(call.params, "name")
        signer = key_of(call.params)
        book.check_may_publish(name, signer.public_key)
        return {"name": name, "publisher": key_text(signer.public_key)}

    async def name_tag(call: Any) -> dict[str, Any]:
        text = param_str(call.params, "ref")
        ref = names.parse(text)
        tag = check_tag(param_str(call.params, "tag"))
        if ref.ref is None or ref.segments:
            # NAME alone would silently mean "where main points now".
            raise NameError_(f"{text!r}: tag needs the version to point at: NAME@VERSION "
                             f"(or NAME@TAG), e.g. {ref.name}@1")
        if not isinstance(ref.ref, int):
            rec = book.lookup(ref)  # NAME@TAG: the version it names now
            number = rec.version
        else:
            number = ref.ref
        view = book.view(ref.name)
        if view is not None and number in view.retired:
            # its blocks are unpinned and may be collected: a tag on it would dangle
            raise NameError_(f"{ref.name}@{number} is retired (versions rm); "
                             f"tag a version that is not")
        signer = key_of(call.params)
        move = book.new_tag(ref.name, tag, number, key=signer.public_key, sign=signer.sign,
                            time_ms=names.now_ms())
        await names.publish([move])
        return {"name": ref.name, "tag": tag, "version": number}

    async def name_grant(call: Any) -> dict[str, Any]:
        name = param_str(call.params, "name")
        grantee = key_from_text(param_str(call.params, "grantee"))
        signer = key_of(call.params)
        grant = book.new_grant(name, grantee, key=signer.public_key, sign=signer.sign,
                               time_ms=names.now_ms())
        await names.publish([grant])
        return {"name": name, "grantee": key_text(grantee)}

    async def name_resolve(call: Any) -> dict[str, Any]:
        text = param_str(call.params, "ref")
        ref = names.parse(text)
        rec = book.lookup(ref)
        view = book.view(ref.name)
        assert view is not None
        return {"name": ref.name, "version": rec.version, "cid": rec.root,
                "path": "/".join((rec.root, *ref.segments)), "size": rec.size,
                "files": [[f.path, f.size, f.sha256] for f in rec.files],
                "meta": dict(rec.meta), "record": str(view.versions[rec.version].cid),
                "tags": view.tags_at(rec.version),
                "default": view.default_version() == rec.version}

    async def name_versions(call: Any) -> dict[str, Any]:
        """The history of ``NAME``; of ``NAME@VERSION`` or ``NAME@TAG``, only the
        version it names (``NameNotFound`` when there is none)."""
        text = param_str(call.params, "name")
        ref = names.parse(text)
        if ref.segments:
            raise NameError_(f"{text!r}: versions takes NAME or NAME@VERSION|TAG, "
                             "not a path inside a version")
        view = book.view(ref.name)
        if view is None:
            raise NameError_(f"no name {ref.name!r} in this cluster")
        versions = describe(view)
        if ref.ref is not None:
            number = view.version_of(ref.ref).version
            versions = [v for v in versions if v["version"] == number]
        for v in versions:
            try:
                st = await pin_status(parse_cid(str(v["cid"])))
            except NotPinned:
                v["holders"], v["availability"] = [], 0.0
                continue
            v["holders"] = [h.get("peer_id") for h in st.get("holders", [])
                            if h.get("state") == "pinned"]
            v["availability"] = st.get("availability", 0.0)
        return {"name": ref.name, "creator": key_text(view.creator),
                "publishers": sorted(key_text(k) for k in view.publishers),
                "versions": versions}

    async def name_retire(call: Any) -> dict[str, Any]:
        """Retire ``NAME@N`` once: a second call publishes nothing and unpins nothing,
        and the reply says what is true of the root's pin now. A version a tag
        points at is refused (``PinInUse``) unless ``force``."""
        ref = names.parse(param_str(call.params, "ref"))
        if not isinstance(ref.ref, int):
            raise NameError_("versions rm takes NAME@VERSION (a version number)")
        force = call.params.get("force", False)
        if not isinstance(force, bool):
            raise InvalidArgument(f"parameter 'force' must be bool, got {force!r}")
        signer = key_of(call.params)
        retire = book.new_retire(ref.name, ref.ref, key=signer.public_key, sign=signer.sign,
                                 time_ms=names.now_ms())
        rec = book.lookup(ref)
        view = book.view(ref.name)
        assert view is not None
        already = ref.ref in view.retired
        if not force:
            check_retire(book, ref.name, ref.ref)
        # A root another live version holds stays pinned (``shared`` names them).
        shared = view.sharing_root(ref.ref)
        unpinned = False
        if not already and not shared:
            try:
                await unpin(rec.root_cid)
                unpinned = True
            except NotPinned:
                pass  # already unpinned: the record still says so
        if not already:
            await names.publish([retire])
        try:
            await pin_status(rec.root_cid)
            pinned = True
        except NotPinned:
            pinned = False
        return {"name": ref.name, "version": ref.ref, "cid": rec.root,
                "already_retired": already, "unpinned": unpinned, "pinned": pinned,
                "shared_with": shared, "tags": view.tags_at(ref.ref)}

    async def name_ls(call: Any) -> dict[str, Any]:
        out = []
        for name in book.names():
            v = book.view(name)
            assert v is not None
            live = v.live()
            out.append({"name": name, "versions": len(live),
                        "retired": len(v.versions) - len(live),
                        "latest": max(live, default=None), "creator": key_text(v.creator),
                        "retired_tags": sorted(t for t, m in v.tags.items()
                                               if m.version in v.retired),
                        "tags": {t: m.version for t, m in sorted(v.tags.items())}})
        return {"names": out}

    async def name_import(call: Any) -> dict[str, Any]:
        blocks = call.params.get("records")
        if not isinstance(blocks, list) or not all(isinstance(b, bytes) for b in blocks):
            raise InvalidArgument("parameter 'records' must be a list of record blocks")
        # Signatures are checked here; who may publish is the book's decision on
        # every node, so records of any key are carried (and may change nothing).
        records = [decode_record(b) for b in blocks]
        await names.publish(records)
        return {"imported": len(records), "records": [str(r.cid) for r in records]}

    async def name_export(call: Any) -> dict[str, Any]:
        ref = names.parse(param_str(call.params, "name"))
        recs = [s for s in book.records() if s.record.name == ref.name]
        if not recs:
            raise NameError_(f"no name {ref.name!r} in this cluster")
        recs.sort(key=lambda s: s.order)
        return {"name": ref.name, "records": [s.block for s in recs]}

    async def key_gen(call: Any) -> dict[str, Any]:
        name = param_str(call.params, "name")
        return {"name": name, "id": generate_key(names.home_root, name)}

    async def key_ls(call: Any) -> dict[str, Any]:
        return {"keys": [{"name": n, "id": k}
                         for n, k in list_keys(names.home_root, names.identity)]}

    return {"name_publish": name_publish, "name_check": name_check, "name_tag": name_tag, "name_grant": name_grant,
            "name_resolve": name_resolve, "name_versions": name_versions,
            "name_retire": name_retire, "name_ls": name_ls, "name_import": name_import,
            "name_export": name_export, "key_gen": key_gen, "key_ls": key_ls}
