"""Errors raised by the blockstore layer.

One hierarchy (STYLE.md 7): every class says when it is raised. Callers in
daemon/ translate these into RPC error codes at the seam (``code`` below).
"""

from __future__ import annotations


class BlockstoreError(Exception):
    """Base class of every error the blockstore layer raises."""

    code = "blockstore_error"


class InvalidCID(BlockstoreError, ValueError):
    """A CID string or byte string could not be parsed, or names an unsupported codec/hash."""

    code = "invalid_cid"


class BlockNotFound(BlockstoreError, KeyError):
    """The block named by ``cid`` is not in the store."""

    code = "not_found"

    def __init__(self, cid: object, detail: str = "") -> None:
        super().__init__(f"block not found: {cid}" + (f" ({detail})" if detail else ""))
        self.cid = cid

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class BlockCorrupt(BlockstoreError):
    """Block bytes do not hash to the multihash of the CID they were stored or sent under."""

    code = "block_corrupt"

    def __init__(self, cid: object, detail: str = "") -> None:
        msg = f"block does not match its CID: {cid}"
        super().__init__(msg + (f" ({detail})" if detail else ""))
        self.cid = cid


class BlockTooLarge(BlockstoreError):
    """A block is larger than the 2 MiB limit (Bitswap spec, "Block Sizes")."""

    code = "block_too_large"

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"block of {size} bytes exceeds the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class StoreFull(BlockstoreError):
    """The LMDB map reached ``blockstore.max_size_bytes``; the write was rolled back, nothing committed is lost."""

    code = "store_full"


class StoreGone(BlockstoreError):
    """The store's files were removed or replaced on disk while it was open; writes are refused.

    LMDB would go on writing into the unlinked file, and every later write
    would be lost when the process ends.
    """

    code = "store_gone"


class StoreLocked(BlockstoreError):
    """Another process (a second daemon) already has this home's store open for writing."""

    code = "store_locked"


class DecodeError(BlockstoreError, ValueError):
    """Bytes from outside (dag-pb node, UnixFS data, CAR file) are malformed; the message names what."""

    code = "decode_error"


class PinError(BlockstoreError):
    """A pin operation cannot be carried out (e.g. a recursive pin whose DAG is incomplete)."""

    code = "pin_error"


class NotPinned(PinError):
    """``pin rm`` of a CID that has no pin."""

    code = "not_pinned"


class StoreClosed(BlockstoreError):
    """The store, or the batch writer in front of it, was closed before or while the call ran."""

    code = "store_closed"


class NotAFile(BlockstoreError, ValueError):
    """``cat`` of a CID that is not a UnixFS file (a directory, a symlink, or not UnixFS at all)."""

    code = "not_a_file"
