"""UnixFS v1: the Data message, a streaming file importer, directories, and an exporter.

Parts: ``data`` (the Data message, limits), ``importer`` (files),
``directory`` (directories, symlinks), ``hamt`` (HAMT shards: hash, buckets,
writer), ``reader`` (cat, walk_tree, stat), ``paths``; this module re-exports
the names of data, importer, directory and reader.

Spec: ipfs/specs ``src/unixfs.md`` (UnixFS), on top of dag-pb (``dagpb.py``).

Importer (sans-IO): ``FileImporter`` turns a byte stream into blocks with a
fixed-size chunker and the *balanced* layout of Kubo (boxo
``ipld/unixfs/importer/balanced``) and js ``ipfs-unixfs-importer``: every leaf
at the same depth, nodes filled left to right with at most ``max_links``
children, the tree only as deep as needed, a one-chunk file is its own root
(the leaf itself), and the empty file is one empty leaf. Same bytes and same
``ImportParams`` give the same root CID as Kubo and Helia; tests/vectors/
holds CIDs produced by the real js importer to prove it.

Exporter: ``cat`` (file bytes, with ranges that fetch only the blocks they
overlap), ``walk_tree`` (a directory tree, directory before children) and
``stat``. They are plain ``async def`` over a ``get_block`` coroutine so the
daemon can back them with the local store and Bitswap; nothing here imports
trio. ``get_block`` is trusted to return bytes that match the CID (the store
and Bitswap verify); this module does not re-hash on read.
"""

from __future__ import annotations

from pinfold.blockstore.unixfs.data import (
    IDENTITY_MAX_BYTES,
    MAX_CHUNK_SIZE,
    MAX_LINKS,
    DataType,
    GetBlock,
    UnixFSData,
    UnixTime,
    decode_data,
    encode_data,
)
from pinfold.blockstore.unixfs.directory import DirectoryBuilder, symlink_node
from pinfold.blockstore.unixfs.importer import FileImporter, ImportParams, import_bytes
from pinfold.blockstore.unixfs.reader import Entry, Stat, cat, stat, walk_tree

__all__ = [
    "IDENTITY_MAX_BYTES",
    "MAX_CHUNK_SIZE",
    "MAX_LINKS",
    "DataType",
    "GetBlock",
    "DirectoryBuilder",
    "Entry",
    "FileImporter",
    "ImportParams",
    "Stat",
    "UnixFSData",
    "UnixTime",
    "cat",
    "decode_data",
    "encode_data",
    "import_bytes",
    "stat",
    "symlink_node",
    "walk_tree",
]
