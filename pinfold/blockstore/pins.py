"""Local pins, GC protection and the value types of GC and verify.

A *pin* keeps a DAG's blocks from garbage collection. The store records, per
pin, the distinct blocks it holds (``pin_blocks``) and, per block, how many
pins hold it (its *reference count*; absent = 0). GC deletes blocks whose
reference count is 0 and that no live :class:`Protection` holds, so neither
unpinning nor GC ever walks a DAG: the caller hands ``pin_add`` the DAG's
block list once (from ``blockstore.dag``), and the store remembers it.

Protections cover the window between writing a block and pinning it (an
``add`` or a bitswap fetch in flight): the writer registers each block in a
protection *before* writing it and releases the protection after the pin is
committed or the operation failed. GC re-checks protections inside each of its
write transactions, so a block registered before it is written is never lost.

This module is pure: no LMDB, no trio. ``txn.ops`` applies the pin arithmetic
inside a store transaction.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Self

import msgpack

from pinfold.blockstore.cid import CID, cid_key, cid_v1, is_identity, parse_cid
from pinfold.blockstore.errors import DecodeError

__all__ = [
    "PIN_OWNERS",
    "FrozenDict",
    "GcResult",
    "PinMode",
    "PinRecord",
    "Protection",
    "ProtectionSet",
    "VerifyResult",
    "key_of",
    "strongest",
]

PinMode = Literal["recursive", "direct"]
_MODES: Final = ("recursive", "direct")
#: Who may hold a pin: ``"local"`` (a user's ``pin add``/``add`` on a standalone
#: node) and ``"cluster"`` (the replication manager, for the shared pinset).
PIN_OWNERS: Final = ("local", "cluster")
#: Longest pin name accepted, characters (IPFS Cluster allows any length; a
#: bound keeps records small and listings readable).
MAX_PIN_NAME: Final = 1024
_RECORD_VERSION: Final = 1


class FrozenDict(dict):  # type: ignore[type-arg]
    """A ``dict`` that refuses changes: pin metadata inside a frozen record.

    A real ``dict`` subclass, so ``dataclasses.asdict``, ``json`` and
    ``msgpack`` take it as they take a dict. Not hashable.
    """

    __slots__ = ()

    def _refuse(self, *args: object, **kwargs: object) -> None:
        raise TypeError("pin metadata is read-only")

    __setitem__ = __delitem__ = _refuse  # type: ignore[assignment]
    clear = pop = popitem = setdefault = update = _refuse  # type: ignore[assignment]
    __ior__ = _refuse  # type: ignore[assignment]


_EMPTY: Final = FrozenDict()


def key_of(cid_or_key: CID | bytes | bytearray | memoryview) -> bytes:
    """The store key (multihash bytes) of a CID, or the key itself.

    Raises:
        TypeError: neither a ``CID`` nor bytes.
    """
    if isinstance(cid_or_key, CID):
        return cid_key(cid_or_key)
    if isinstance(cid_or_key, (bytes, bytearray, memoryview)):
        return bytes(cid_or_key)
    raise TypeError(f"expected a CID or multihash bytes, got {type(cid_or_key).__name__}")


@dataclass(frozen=True, slots=True, kw_only=True)
class PinRecord:
    """One local pin, as stored in the ``pins`` database (msgpack).

    Attributes:
        cid: the pinned root CID, as given to ``pin_add``.
        mode: ``"recursive"`` (the whole DAG) or ``"direct"`` (the root block only).
        name: a label for people, may be empty (at most 1024 characters).
        blocks: number of distinct blocks the pin holds (identity CIDs excluded).
        bytes: total size of those blocks, bytes.
        created_at: when the root was first pinned, unix seconds. Re-pinning
            keeps the first value.
        metadata: string -> string labels (as IPFS Cluster's pin metadata), a
            read-only dict. ``PinRecord`` is therefore comparable but not hashable.
        holds: who holds the pin and how, ``{owner: mode}`` with owners from
            ``PIN_OWNERS`` (a read-only dict; default ``{"local": mode}``).
            ``mode`` is the strongest of them: recursive when any hold is.
            One owner's unpin never releases blocks another owner's hold keeps.

    Raises:
        ValueError: a field out of range (unknown mode, negative count, name
            too long, metadata not str -> str).
        TypeError: ``cid`` not a CID, or ``metadata`` not a mapping.
    """

    cid: CID
    mode: PinMode
    name: str = ""
    blocks: int
    bytes: int
    created_at: float
    metadata: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    holds: Mapping[str, PinMode] = field(default_factory=lambda: _EMPTY)

    def __post_init__(self) -> None:
        if not isinstance(self.cid, CID):
            raise TypeError(f"pin cid must be a CID, got {type(self.cid).__name__}")
        if self.mode not in _MODES:
            raise ValueError(f"pin mode must be 'recursive' or 'direct', got {self.mode!r}")
        if not isinstance(self.name, str) or len(self.name) > MAX_PIN_NAME:
            raise ValueError(f"pin name must be a string of at most {MAX_PIN_NAME} characters")
        if self.blocks < 0 or self.bytes < 0:
            raise ValueError(f"pin counts must be >= 0, got blocks={self.blocks} bytes={self.bytes}")
        object.__setattr__(self, "metadata", _check_metadata(self.metadata))
        object.__setattr__(self, "holds", _check_holds(self.holds, self.mode))

    def to_msgpack(self) -> bytes:
        """The record's stored form: a msgpack map with a format version ``v``."""
        return msgpack.packb(
            {
                "v": _RECORD_VERSION,
                "cid": bytes(self.cid),
                "mode": self.mode,
                "name": self.name,
                "blocks": self.blocks,
                "bytes": self.bytes,
                "created_at": self.created_at,
                "metadata": dict(self.metadata),
                "holds": dict(self.holds),
            },
            use_bin_type=True,
        )

    @classmethod
    def from_msgpack(cls, data: bytes | memoryview) -> PinRecord:
        """Decode a stored record.

        Raises:
            DecodeError: not a pin record of a known version; the message names
                the problem.
        """
        try:
            obj = msgpack.unpackb(bytes(data), raw=False)
        except Exception as exc:
            raise DecodeError(f"pin record is not valid msgpack: {exc}") from exc
        if not isinstance(obj, dict) or obj.get("v") != _RECORD_VERSION:
            raise DecodeError(f"pin record has unknown format (version {_version(obj)!r})")
        try:
            cid = parse_cid(obj["cid"])
            return cls(
                cid=cid_v1(cid) if cid.version == 1 else cid,
                mode=obj["mode"],
                name=obj["name"],
                blocks=obj["blocks"],
                bytes=obj["bytes"],
                created_at=obj["created_at"],
                metadata=obj["metadata"],
                holds=obj.get("holds") or _legacy_holds(obj),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DecodeError(f"pin record is malformed: {exc}") from exc


def _version(obj: Any) -> Any:
    return obj.get("v") if isinstance(obj, dict) else None


def _legacy_holds(obj: dict[str, Any]) -> dict[str, Any]:
    """Holds of a record written before ``holds`` existed: the cluster's pins were
    the ones named ``cluster`` (``pinfold/daemon/cluster_pins.py``), every other pin was local."""
    name = obj.get("name")
    owner = "cluster" if isinstance(name, str) and name.startswith("cluster") else "local"
    return {owner: obj.get("mode")}


def strongest(modes: Iterable[str]) -> PinMode:
    """``"recursive"`` if any of ``modes`` is, else ``"direct"``."""
    return "recursive" if "recursive" in modes else "direct"


def _check_holds(holds: Mapping[str, str] | None, mode: str) -> Mapping[str, PinMode]:
    if not holds:
        return FrozenDict({"local": mode})
    if not isinstance(holds, Mapping):
        raise TypeError(f"pin holds must be a mapping, got {type(holds).__name__}")
    for owner, m in holds.items():
        if owner not in PIN_OWNERS or m not in _MODES:
            raise ValueError(f"pin hold must map one of {', '.join(PIN_OWNERS)} to "
                             f"'recursive' or 'direct', got {owner!r}: {m!r}")
    if strongest(holds.values()) != mode:
        raise ValueError(f"pin mode {mode!r} is not the strongest of its holds {dict(holds)}")
    return FrozenDict(holds)


def _check_metadata(metadata: Mapping[str, str] | None) -> Mapping[str, str]:
    if not metadata:
        return _EMPTY
    if not isinstance(metadata, Mapping):
        raise TypeError(f"pin metadata must be a mapping, got {type(metadata).__name__}")
    for k, v in metadata.items():
        if not isinstance(k, str) or not k or not isinstance(v, str):
            raise ValueError(f"pin metadata must map non-empty str to str, got {k!r}: {v!r}")
    return FrozenDict(metadata)


def held_keys(root: CID, *, recursive: bool, blocks: Iterable[CID]) -> list[tuple[bytes, CID]]:
    """The distinct blocks a pin holds, in first-seen order, root first.

    Args:
        root: the pin's root CID.
        recursive: True for a recursive pin (root + ``blocks``), False for a
            direct pin (the root only).
        blocks: the DAG's block CIDs (any order, duplicates allowed; may
            include the root). Must be empty or the root alone for a direct pin.

    Returns:
        ``[(key, cid), ...]`` without identity CIDs (their data is inline).

    Raises:
        ValueError: a direct pin was given blocks other than its root.
    """
    root_key = cid_key(root)
    out: dict[bytes, CID] = {}
    if not is_identity(root):
        out[root_key] = root
    for cid in blocks:
        if not isinstance(cid, CID):
            raise TypeError(f"pin blocks must be CIDs, got {type(cid).__name__}")
        if is_identity(cid):
            continue
        key = cid_key(cid)
        if not recursive and key != root_key:
            raise ValueError(f"a direct pin holds only its root {root}, but was given block {cid}")
        out.setdefault(key, cid)
    return list(out.items())


@dataclass(frozen=True, slots=True, kw_only=True)
class GcResult:
    """What one GC pass did.

    Attributes:
        blocks_freed: blocks deleted.
        bytes_freed: their total size, bytes.
        seconds: wall time of the pass, seconds.
    """

    blocks_freed: int
    bytes_freed: int
    seconds: float


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifyResult:
    """What ``verify`` found.

    Attributes:
        checked: blocks re-hashed.
        corrupt: blocks whose data does not hash to their key, in key order,
            each named by a CIDv1 with the raw codec (the store keys blocks by
            multihash and keeps no codec; Bitswap peers find a block by this
            CID all the same).
        dropped: corrupt blocks deleted (``verify(drop=True)``), else 0.
    """

    checked: int
    corrupt: tuple[CID, ...]
    dropped: int = 0


class ProtectionSet:
    """The registry of live GC protections: a thread-safe multiset of keys.

    ``is_protected`` is what GC calls (inside its write transaction) for every
    candidate block. A key stays protected while at least one live
    :class:`Protection` holds it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[bytes] = Counter()

    def protect(self) -> Protection:
        """A new, empty protection handle; use it as a context manager."""
        return Protection(self)

    def is_protected(self, key: bytes) -> bool:
        """True while some live protection holds ``key`` (multihash bytes)."""
        with self._lock:
            return key in self._counts

    def __len__(self) -> int:
        """Number of distinct protected keys."""
        with self._lock:
            return len(self._counts)

    def _add(self, keys: Iterable[bytes]) -> None:
        with self._lock:
            self._counts.update(keys)

    def _remove(self, keys: Iterable[bytes]) -> None:
        with self._lock:
            self._counts.subtract(keys)
            for k in [k for k, n in self._counts.items() if n <= 0]:
                del self._counts[k]


class Protection:
    """A handle keeping a set of blocks from GC until released.

    Register a block with :meth:`add` *before* writing it; release (leave the
    ``with`` block, or call :meth:`release`) once the blocks are pinned or the
    operation failed. Thread-safe; releasing twice is harmless.
    """

    __slots__ = ("_keys", "_released", "_set")

    def __init__(self, registry: ProtectionSet) -> None:
        self._set = registry
        self._keys: set[bytes] = set()
        self._released = False

    def add(self, cid_or_key: CID | bytes) -> None:
        """Protect one block, named by CID or multihash key; identity CIDs are ignored.

        Raises:
            RuntimeError: the protection was already released.
        """
        self.add_many((cid_or_key,))

    def add_many(self, cids_or_keys: Iterable[CID | bytes]) -> None:
        """Protect several blocks (see :meth:`add`)."""
        if self._released:
            raise RuntimeError("cannot add to a released GC protection")
        new: list[bytes] = []
        for item in cids_or_keys:
            if isinstance(item, CID) and is_identity(item):
                continue
            key = key_of(item)
            if key not in self._keys:
                self._keys.add(key)
                new.append(key)
        self._set._add(new)

    @property
    def keys(self) -> frozenset[bytes]:
        """The keys this handle protects."""
        return frozenset(self._keys)

    def release(self) -> None:
        """Stop protecting this handle's blocks (idempotent)."""
        if not self._released:
            self._released = True
            self._set._remove(self._keys)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()
