"""The RPC methods: what ``pinfold`` commands do inside the daemon.

Each handler takes an RPC ``Call`` (``.params``, ``.upload()``, ``.send()``) and
returns the final result (a msgpack-able dict). Handlers translate user input
into blockstore calls; errors raised here carry a ``code`` that the RPC server
turns into a structured error reply.

Method names and their parameters (the client in ``client.py`` mirrors them):

=================  ===========================================================
``id``             -> {peer_id, addresses, version}
``add``            upload: file bytes; params: chunk_size, cid_version,
                   raw_leaves, max_links, name, pin (default true), rmin, rmax,
                   availability -> {cid, bytes, blocks, pin}
``add_dir``        upload: entries framed as [u32 len][msgpack {path, type,
                   size, target}][size bytes] (type file, dir or symlink; a
                   symlink has a target and no bytes); same params
                   -> {cid, bytes, blocks, files, symlinks}
``cat``            {cid, offset, length, timeout, progress} -> stream of bytes
                   -> {cid, bytes, blocks}; ``cid`` of cat, get and pin_add may
                   be a CID path or a name ref
``get``            {cid, timeout, progress} -> stream of {path, type, size}
                   headers, each file's header followed by its bytes
                   -> {cid, files, bytes}
``block_put``      upload: one block; {codec, cid_version} -> {cid, size}
``block_get``      {cid} -> stream of bytes -> {cid, size}
``block_stat``     {cid} -> {cid, size}
``block_rm``       {cid} -> {cid, removed}
``dag_import``     upload: CAR v1; {pin_roots} -> {roots, blocks, bytes}
``dag_export``     {cid} -> stream of CAR v1 bytes -> {cid, blocks, bytes}
``pin_add``        {cid, recursive, name, rmin, rmax, availability, expire_in,
                   timeout, progress} -> the pin record (+ ``path`` when ``cid``
                   was a path)
``pin_rm``         {cid, force}; refused (``pin_in_use``) when cid is the root
                   of a live version of a name unless ``force`` (``pin_names.py``)
``pin_ls``         {state, records} -> stream of pin dicts (the root of a
                   version also has ``versions``: [{name, version, ref, tags,
                   retired}]) -> {count}; state:
                   a local state, ``error`` (failed pins, with ``error``) or
                   ``incomplete`` (pins missing blocks, ``blocks_present``);
                   name-record pins only with ``records`` true
``pin_status``     {cid} -> DESIGN.md contract (+ ``versions`` as ``pin_ls``)
``pin_wait``       {cid, timeout} -> stream of {pinned, wanted, holders} ->
                   pin_status record + {done}
``repo_stat``      -> {blocks, bytes, pins, map_used_bytes, ...}
``repo_gc``        -> {blocks_freed, bytes_freed, seconds}
``repo_verify``    {heal} -> {checked, corrupt, healed, incomplete}
``shutdown``       -> {stopping: true}
``resolve``        ``ls``, ``stat`` too: see ``api_paths.py``
=================  ===========================================================

``cid`` of cat, get, dag_export, pin_add: ``CID`` or ``CID/path`` (``resolver.py``).
``timeout`` (seconds > 0) bounds a ``cat``, ``get`` or ``pin_add`` (error code
``timeout``, naming the CID and what arrived); ``progress: true`` asks for
progress frames while it runs (``daemon/transfer.py``; DESIGN.md, "Progress
events").
"""

from __future__ import annotations

import logging
import math
import os
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgpack
import trio

from pinfold.blockstore import car as carfmt
from pinfold.blockstore import dag as dagmod
from pinfold.blockstore import unixfs
from pinfold.blockstore.cid import (
    CID,
    DAG_CBOR,
    DAG_PB,
    MAX_BLOCK_SIZE,
    RAW,
    check_block_size,
    cid_v1,
    identity_data,
    is_identity,
    make_cid,
    parse_cid,
)
from pinfold.blockstore.errors import BlockNotFound, PinError

from pinfold.daemon.api_node import ApiNode
from pinfold.daemon.api_paths import path_handlers
from pinfold.daemon.api_shapes import is_record_listing, pin_dict, unpinned_dict
from pinfold.daemon.errors import InvalidArgument, OutputClosed, PinInUse
from pinfold.daemon.ingest import BlockSink, undo_on_failure
from pinfold.daemon.p2p.streams import UploadReader
from pinfold.daemon.pin_names import check_unpin, labelled
from pinfold.daemon.pin_wait import wait_for_holders
from pinfold.daemon.resolver import Resolver
from pinfold.daemon.transfer import (DagVisits, expected_size, fetch_timeout_s, metered_get,
                                     metered_prefetch, transfer)

log = logging.getLogger("pinfold.api")

#: Largest item a stream sends (CAR export packs small blocks together).
SEND_CHUNK = 1024 * 1024
DIR_HEADER_MAX = 64 * 1024


def _param(params: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any = None,
           *, required: bool = False) -> Any:
    if key not in params or params[key] is None:
        if required:
            raise InvalidArgument(f"missing parameter {key!r}")
        return default
    value = params[key]
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        name = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise InvalidArgument(f"parameter {key!r} must be {name}, got {value!r}")
    return value


async def send_bytes(call: Any, data: bytes) -> None:
    """Stream ``data`` as items of at most ``SEND_CHUNK`` bytes (the RPC frame bound)."""
    if len(data) <= SEND_CHUNK:
        await call.send(data)
        return
    view = memoryview(data)
    for i in range(0, len(data), SEND_CHUNK):
        await call.send(view[i:i + SEND_CHUNK])


def _write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd``, then close ``fd`` (the thread's own duplicate)."""
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


async def _write_fd(fd: int, data: bytes) -> None:
    """Write ``data`` to a client's file descriptor (blocking, so in a worker thread).

    ``cat`` to a passed descriptor writes the bytes straight to the client's
    stdout, saving the copy through the socket and the client process.
    Raises ``OutputClosed`` when the reader went away (EPIPE).
    """
    try:
        # The thread writes to its own duplicate: if a timeout or cancel abandons
        # it mid-write and the handler closes ``fd``, the number cannot be reused
        # under the thread's feet.
        await trio.to_thread.run_sync(_write_all, os.dup(fd), data, abandon_on_cancel=True)
    except BrokenPipeError as exc:
        raise OutputClosed("the output was closed before the end of the file") from exc


def _cid_param(params: dict[str, Any], key: str = "cid") -> CID:
    return parse_cid(_param(params, key, str, required=True))


def _import_params(node: ApiNode, params: dict[str, Any]) -> unixfs.ImportParams:
    d = node.config.import_
    cid_version = _param(params, "cid_version", int, d.cid_version)
    raw_default = d.raw_leaves if cid_version == d.cid_version else cid_version == 1
    if cid_version == 0 and "chunk_size" not in params and d.cid_version != 0:
        base = unixfs.ImportParams.kubo_classic()
        chunk, links = base.chunk_size, base.max_links
    else:
        chunk, links = d.chunk_size_bytes, d.max_links
    try:
        return unixfs.ImportParams(
            chunk_size=_param(params, "chunk_size", int, chunk),
            cid_version=cid_version,
            raw_leaves=_param(params, "raw_leaves", bool, raw_default),
            max_links=_param(params, "max_links", int, links),
        )
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from exc


class Api:
    """The handlers, bound to one node."""

    def __init__(self, node: ApiNode) -> None:
        self.node = node
        self.resolver = Resolver(node.get_block, node.has_block,
                                 lambda cid: node.store.get_size(cid), book=self._book,
                                 read_local=lambda cids, fn: node.store.read_each(cids, fn))

    def _book(self) -> Any:
        """The node's name book, once the names service runs (else ``None``)."""
        names = getattr(self.node, "names", None)
        return names.book if names is not None else None

    async def _ref(self, params: dict[str, Any]) -> CID:
        """The CID the ``cid`` parameter (a CID, ``CID/path`` or ``NAME@REF[/path]``) names.

        A bare CID (or a name ref without a path) is returned without reading
        a block: a cluster ``pin add`` of content held elsewhere only writes the
        pin, and a non-UnixFS root is read by the handler that knows its codec."""
        text = _param(params, "cid", str, required=True)
        path = self.resolver.content_path(text)
        if not path.segments:
            return path.root
        return (await self.resolver.resolve_ref(text)).cid

    def handlers(self) -> dict[str, Callable[[Any], Awaitable[Any]]]:
        """Method name -> handler, for the RPC server."""
        names = ["id", "add", "add_dir", "cat", "get", "block_put", "block_get", "block_stat",
                 "block_rm", "dag_import", "dag_export", "pin_add", "pin_rm", "pin_ls",
                 "pin_status", "pin_wait", "repo_stat", "repo_gc", "repo_verify", "shutdown"]
        table = {name: getattr(self, name) for name in names}
        table.update(path_handlers(self.resolver))
        table.update(self.node.extra_handlers())
        return table

    # ------------------------------------------------------------------ basics

    async def id(self, call: Any) -> dict[str, Any]:
        return self.node.identity_info()

    async def shutdown(self, call: Any) -> dict[str, Any]:
        self.node.request_stop()
        return {"stopping": True}

    # ------------------------------------------------------------------ add

    async def _import_file(self, sink: BlockSink, chunks: AsyncIterator[bytes],
                           params: unixfs.ImportParams) -> tuple[CID, int, int]:
        """Import one file; returns (root CID, file size in bytes, Tsize of the root in bytes)."""
        importer = unixfs.FileImporter(params)
        async for chunk in chunks:
            blocks = importer.feed(chunk)
            if blocks:
                await sink.put(blocks)
            self.node.metrics.add_bytes.inc(len(chunk))
        blocks, root, size = importer.finish()
        await sink.put(blocks)
        return root, size, importer.root_tsize

    def _early_pin_opts(self, call: Any) -> dict[str, Any] | None:
        """The pin options of an ``add``/``add_dir``, checked before its upload is
        read. It pins unless ``pin`` is false (as Kubo's ``add``); pin options
        without the pin are refused, not dropped; a bad or impossible pin request
        is refused at once, not after the data arrived. None: no pin."""
        if not _param(call.params, "pin", bool, True):
            given = [k for k in ("name", "rmin", "rmax", "availability", "expire_in")
                     if call.params.get(k) is not None]
            if given:
                raise InvalidArgument(f"{', '.join(given)} set but pin is false: these are "
                                      "options of the pin")
            return None
        opts = self._pin_opts(call)
        self.node.check_pin_request(**opts)
        return opts

    async def add(self, call: Any) -> dict[str, Any]:
        node = self.node
        params = _import_params(self.node, call.params)
        pin_opts = self._early_pin_opts(call)
        async with undo_on_failure(node.store, node.writer) as created:
            with self.node.store.protect() as protection:
                async with trio.open_nursery() as nursery:
                    sink = BlockSink(node.writer, nursery, protection, created,
                                     on_stored=node.blocks_added)
                    root, size, _ = await self._import_file(sink, call.upload(), params)
                    await sink.flush()
                result = {"cid": str(root), "bytes": size, "blocks": sink.blocks}
                if pin_opts is not None:
                    result["pin"] = pin_dict(await node.pin(root, recursive=True, **pin_opts))
        return result

    async def add_dir(self, call: Any) -> dict[str, Any]:
        node = self.node
        params = _import_params(self.node, call.params)
        pin_opts = self._early_pin_opts(call)
        builder = unixfs.DirectoryBuilder(params)
        reader = UploadReader(call.upload())
        files = 0
        links = 0
        total = 0
        async with undo_on_failure(node.store, node.writer) as created:
            with self.node.store.protect() as protection:
                async with trio.open_nursery() as nursery:
                    sink = BlockSink(node.writer, nursery, protection, created,
                                     on_stored=node.blocks_added)
                    while not await reader.at_eof():
                        (hlen,) = struct.unpack(">I", await reader.read_exactly(4))
                        if hlen > DIR_HEADER_MAX:
                            raise InvalidArgument(
                                f"directory entry header of {hlen} bytes is too large")
                        try:
                            header = msgpack.unpackb(await reader.read_exactly(hlen))
                            path = _param(header, "path", str, required=True)
                            kind = _param(header, "type", str, required=True)
                            size = _param(header, "size", int, 0)
                        except (ValueError, msgpack.UnpackException) as exc:
                            raise InvalidArgument(f"bad directory entry header: {exc}") from exc
                        try:
                            if kind == "dir":
                                builder.add_dir(path)
                                continue
                            if kind == "symlink":
                                target = _param(header, "target", str, required=True)
                                await sink.put([builder.add_symlink(path, target)])
                                links += 1
                                continue
                            if kind != "file" or size < 0:
                                raise InvalidArgument(
                                    f"bad directory entry {path!r}: type {kind!r}")

                            async def body(n: int = size) -> AsyncIterator[bytes]:
                                left = n
                                while left:
                                    piece = await reader.read_some(min(left, 1 << 20))
                                    if not piece:
                                        raise InvalidArgument(f"upload ended inside {path!r}")
                                    left -= len(piece)
                                    yield piece

                            root, fsize, tsize = await self._import_file(sink, body(), params)
                            builder.add_file(path, root, fsize, tsize)
                        except ValueError as exc:
                            raise InvalidArgument(str(exc)) from exc
                        files += 1
                        total += size
                    try:
                        blocks, root = builder.finish()
                    except ValueError as exc:  # ShardTooDeep: two names, one 64-bit hash
                        raise InvalidArgument(str(exc)) from exc
                    await sink.put(blocks)
                    await sink.flush()
                result = {"cid": str(root), "bytes": total, "blocks": sink.blocks,
                          "files": files, "symlinks": links}
                if pin_opts is not None:
                    result["pin"] = pin_dict(await node.pin(root, recursive=True, **pin_opts))
        return result

    # ------------------------------------------------------------------ read

    async def cat(self, call: Any) -> dict[str, Any]:
        ref = _param(call.params, "cid", str, required=True)
        offset = _param(call.params, "offset", int, 0)
        length = _param(call.params, "length", int, None)
        if offset < 0 or (length is not None and length < 0):
            raise InvalidArgument("offset and length must be >= 0")
        to_fd = _param(call.params, "to_fd", bool, False)
        fd = call.take_fd() if to_fd else None
        if to_fd and fd is None:
            raise InvalidArgument("to_fd is set but no file descriptor came with the request")
        sent = 0
        fetch_t = fetch_timeout_s(call.params)
        blocks = 0
        try:
            async with transfer(call, "cat", ref, self.node.received) as meter, \
                    self.node.prefetcher(timeout_s=fetch_t) as prefetch:
                cid = await self._ref(call.params)  # inside the bound: may fetch the path
                metered = metered_get(self.node, meter, fetch_t, dag_bytes=False)
                prefetch = metered_prefetch(prefetch, meter)

                async def get(c: CID) -> bytes:  # counts the blocks this read touches
                    nonlocal blocks
                    blocks += 1
                    return await metered(c)

                meter.total = expected_size(cid, await metered(cid), content=True,
                                            offset=offset, length=length)
                async for chunk in unixfs.cat(get, cid, offset, length, prefetch=prefetch):
                    if fd is None:
                        await send_bytes(call, chunk)
                    else:
                        await _write_fd(fd, chunk)
                    sent += len(chunk)
                    meter.done = sent
        finally:
            if fd is not None:
                os.close(fd)
        self.node.metrics.cat_bytes.inc(sent)
        return {"cid": str(cid), "bytes": sent, "blocks": blocks}

    async def get(self, call: Any) -> dict[str, Any]:
        ref = _param(call.params, "cid", str, required=True)
        files = 0
        sent = 0
        fetch_t = fetch_timeout_s(call.params)
        # One prefetcher for the whole tree: opening one per file cost more than
        # reading a small file; each file's wants are read by its own cat.
        async with transfer(call, "get", ref, self.node.received) as meter, \
                self.node.prefetcher(timeout_s=fetch_t) as prefetch:
            cid = await self._ref(call.params)  # inside the bound: may fetch the path
            get = metered_get(self.node, meter, fetch_t, dag_bytes=True)
            prefetch = metered_prefetch(prefetch, meter)
            async for entry in unixfs.walk_tree(get, cid):
                header: dict[str, Any] = {"path": entry.path, "type": entry.kind,
                                          "size": entry.size or 0}
                if entry.kind == "symlink":
                    target = entry.target
                    header["target"] = target.decode("utf-8", "replace") if isinstance(
                        target, bytes) else str(target)
                await call.send(header)
                if entry.kind == "file":
                    files += 1
                    async for chunk in unixfs.cat(get, entry.cid, prefetch=prefetch):
                        await send_bytes(call, chunk)
                        sent += len(chunk)
        self.node.metrics.cat_bytes.inc(sent)
        return {"cid": str(cid), "files": files, "bytes": sent}

    # ------------------------------------------------------------------ blocks

    async def block_put(self, call: Any) -> dict[str, Any]:
        codec_name = _param(call.params, "codec", str, "raw")
        codecs = {"raw": RAW, "dag-pb": DAG_PB, "dag-cbor": DAG_CBOR}
        if codec_name not in codecs:
            raise InvalidArgument(f"codec must be one of {', '.join(codecs)}, got {codec_name!r}")
        version = _param(call.params, "cid_version", int, 1)
        if version not in (0, 1):
            raise InvalidArgument(f"cid_version must be 0 or 1, got {version}")
        buf = bytearray()
        async for chunk in call.upload():
            buf += chunk
            check_block_size(len(buf), MAX_BLOCK_SIZE)
        data = bytes(buf)
        if codec_name == "dag-pb":
            try:
                dagmod.links(make_cid(data, DAG_PB), data)
            except ValueError as exc:
                raise InvalidArgument(f"not a valid dag-pb block: {exc}") from exc
        cid = make_cid(data, codecs[codec_name], version=version)
        await self.node.writer.put_many([(cid, data)])
        self.node.blocks_added([cid])
        return {"cid": str(cid), "size": len(data)}

    async def block_get(self, call: Any) -> dict[str, Any]:
        cid = _cid_param(call.params)
        data = await self.node.get_block(cid)
        await send_bytes(call, data)
        return {"cid": str(cid), "size": len(data)}

    async def block_stat(self, call: Any) -> dict[str, Any]:
        cid = _cid_param(call.params)
        if is_identity(cid):
            return {"cid": str(cid), "size": len(identity_data(cid))}
        if not self.node.store.has(cid):
            await self.node.get_block(cid)
        return {"cid": str(cid), "size": self.node.store.get_size(cid)}

    async def block_rm(self, call: Any) -> dict[str, Any]:
        cid = _cid_param(call.params)

        def rm(t: Any) -> bool:
            if t.refcount(cid) > 0:
                raise PinError(f"block {cid} is held by a pin; unpin it first")
            if not t.has(cid):
                raise BlockNotFound(cid)
            return t.delete(cid)

        removed = await self.node.writer.submit(rm)
        return {"cid": str(cid), "removed": bool(removed)}

    # ------------------------------------------------------------------ CAR

    async def dag_import(self, call: Any) -> dict[str, Any]:
        node = self.node
        pin_roots = _param(call.params, "pin_roots", bool, True)
        reader = carfmt.CarReader()
        async with undo_on_failure(node.store, node.writer) as created:
            with self.node.store.protect() as protection:
                async with trio.open_nursery() as nursery:
                    sink = BlockSink(node.writer, nursery, protection, created,
                                     on_stored=node.blocks_added)
                    async for chunk in call.upload():
                        await sink.put(reader.feed(chunk))
                    reader.finish()
                    await sink.flush()
                roots = list(reader.roots)
                pins = []
                if pin_roots:
                    for root in roots:
                        pins.append(pin_dict(await node.pin(root, recursive=True, fetch=False)))
        return {"roots": [str(r) for r in roots], "blocks": sink.blocks, "bytes": sink.bytes,
                "pinned": len(pins)}

    async def dag_export(self, call: Any) -> dict[str, Any]:
        root = await self._ref(call.params)
        await self.node.ensure_dag(root)
        pending = bytearray(carfmt.car_header([root]))
        blocks = 0
        total = 0
        async for cid in dagmod.walk(self.node.get_block, root, has_block=self.node.has_block):
            data = await self.node.get_block(cid)
            pending += carfmt.car_section(cid, data)
            blocks += 1
            if len(pending) >= SEND_CHUNK:
                total += len(pending)
                await send_bytes(call, bytes(pending))
                pending.clear()
        if pending:
            total += len(pending)
            await send_bytes(call, bytes(pending))
        return {"cid": str(root), "blocks": blocks, "bytes": total}

    # ------------------------------------------------------------------ pins

    def _pin_opts(self, call: Any) -> dict[str, Any]:
        p = call.params
        opts: dict[str, Any] = {}
        for key in ("rmin", "rmax"):
            v = _param(p, key, int, None)
            if v is not None:
                if v < 1:
                    raise InvalidArgument(f"{key} must be >= 1, got {v}")
                opts[key] = v
        if "rmin" in opts and "rmax" in opts and opts["rmax"] < opts["rmin"]:
            raise InvalidArgument(f"rmax ({opts['rmax']}) must be >= rmin ({opts['rmin']})")
        avail = _param(p, "availability", (int, float), None)
        if avail is not None:
            if not 0.0 < float(avail) < 1.0:
                raise InvalidArgument(f"availability must be in (0, 1), got {avail}")
            opts["availability"] = float(avail)
        name = _param(p, "name", str, None)
        if name is not None:
            if len(name) > 255:
                raise InvalidArgument("name must be at most 255 characters")
            opts["name"] = name
        expire_in = _param(p, "expire_in", (int, float), None)
        if expire_in is not None:
            if expire_in <= 0:
                raise InvalidArgument(f"expire_in must be > 0 seconds, got {expire_in}")
            opts["expire_at"] = time.time() + float(expire_in)
        return opts

    async def pin_add(self, call: Any) -> dict[str, Any]:
        ref = _param(call.params, "cid", str, required=True)
        recursive = _param(call.params, "recursive", bool, True)
        opts = self._pin_opts(call)
        async with transfer(call, "pin add", ref, self.node.received) as meter:
            cid = await self._ref(call.params)  # inside the bound: may fetch the path
            visits = DagVisits(self.node.store, meter)
            pinned = await self.node.pin(cid, recursive=recursive,
                                         timeout_s=fetch_timeout_s(call.params),
                                         on_visit=visits.on_visit,
                                         on_fetched=visits.on_fetched, **opts)
        res = pin_dict(pinned)
        if self.resolver.content_path(call.params["cid"]).segments:  # a path: say what it named
            res["path"] = call.params["cid"]
        return res

    async def pin_wait(self, call: Any) -> dict[str, Any]:
        """``pin_wait``: see ``daemon/pin_wait.py`` (``wait_for_holders``)."""
        cid = _cid_param(call.params)
        timeout = _param(call.params, "timeout", (int, float), None)
        if timeout is not None and not 0 < timeout < math.inf:
            raise InvalidArgument(f"timeout must be > 0 seconds, got {timeout}")
        return await wait_for_holders(self.node, cid, timeout=timeout, send=call.send)

    async def pin_rm(self, call: Any) -> dict[str, Any]:
        cid = _cid_param(call.params)
        if not _param(call.params, "force", bool, False):
            try:
                check_unpin(self._book(), cid, call.params["cid"])
            except PinInUse:
                await self.node.pin_status(cid)  # not pinned at all: NotPinned says so
                raise
        return unpinned_dict(await self.node.unpin(cid))

    async def pin_ls(self, call: Any) -> dict[str, Any]:
        state = _param(call.params, "state", str, None)
        records = _param(call.params, "records", bool, False)
        count = 0
        book = self._book()
        async for item in self.node.pin_list(state):
            if not records and is_record_listing(item):
                continue  # a name record's pin: bookkeeping, listed when asked
            await call.send(labelled(book, pin_dict(item)))
            count += 1
        return {"count": count}

    async def pin_status(self, call: Any) -> dict[str, Any]:
        return labelled(self._book(), await self.node.pin_status(_cid_param(call.params)))

    # ------------------------------------------------------------------ repo

    async def repo_stat(self, call: Any) -> dict[str, Any]:
        return await self.node.repo_stat()

    async def repo_gc(self, call: Any) -> dict[str, Any]:
        return await self.node.gc()

    async def repo_verify(self, call: Any) -> dict[str, Any]:
        heal = _param(call.params, "heal", bool, False)
        return await self.node.verify(heal=heal)


__all__ = ["Api", "InvalidArgument", "cid_v1"]
