"""The name book: every verified record, and what they say together (DESIGN.md
"Names"): each name's owner and publishers, versions, tags, retired versions.

The book is a grow-only set of signed records. A name's state is a function of
that set alone, so every node holding the same records resolves every name the
same way, whatever order the records arrived in:

- *creator*: among the keys with a version-1 record of the name, the one
  most cluster members claim (``ClaimRecord``: each member's node key
  witnesses the first creator it saw, once, and never changes it), then the
  first by ``(lamport, signature)``. The name belongs to it. Claims are what
  stop a member from taking over a name by back-dating a rival version 1:
  by then the members have witnessed the real creator.
- *publishers*: the creator plus every key granted by a grant record signed by
  a publisher (taken in record order until nothing changes).
- *versions*: for each number, the first version record by a publisher; a
  later one for the same number is a conflict and is rejected.
- *tags*: each tag points where its last move (greatest ``(lamport,
  signature)``) by a publisher to an existing version says; earlier moves are
  kept (``describe``: ``superseded``, each with the version the tag's next
  move went to and whether that move was concurrent: same Lamport clock, so
  its publisher had not seen this one).
- records by keys that are not publishers (a hostile or merely ungranted
  member) are kept but change nothing; ``rejected`` counts them.

Refs: ``NAME`` (tag ``main``, else the newest version not retired),
``NAME@3``, ``NAME@TAG``, and any of them followed by ``/path``.

Pure: no I/O, no clock (callers pass ``time_ms``).
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from pinfold.blockstore.cid import CID, cid_key, parse_cid
from pinfold.blockstore.unixfs.paths import ContentPath, parse_path
from pinfold.names.records import (
    ClaimRecord,
    FileEntry,
    GrantRecord,
    NameError_,
    RecordError,
    RetireRecord,
    SignedRecord,
    TagRecord,
    VersionRecord,
    check_name,
    check_tag,
    decode_record,
    key_text,
    sign_record,
)
from pinfold.names.refs import MAX_NAME_SEGMENTS, NameRef, parse_ref, parse_ref_is_cid

__all__ = ["DEFAULT_TAG", "MAX_NAME_SEGMENTS", "NameBook", "NameNotFound", "NameRef", "NameView",
           "NotAllowed", "TagMove", "VersionUse", "describe", "parse_ref", "parse_ref_is_cid"]

DEFAULT_TAG = "main"


class NameNotFound(LookupError):
    """No such name, version or tag in the book; the message names it."""

    code = "name_not_found"


class NotAllowed(PermissionError):
    """The signing key may not publish under the name; the message names both."""

    code = "not_allowed"


@dataclass(frozen=True, slots=True, kw_only=True)
class TagMove:
    """One move of a tag, ``current`` when it is the one in force."""

    tag: str
    version: int
    key: bytes
    lamport: int
    time_ms: int
    current: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class VersionUse:
    """A version whose root is a given CID (``NameBook.versions_at``): ``tags``
    point at it now; ``retired`` after ``versions rm``."""

    name: str
    version: int
    tags: tuple[str, ...]
    retired: bool

    @property
    def ref(self) -> str:
        """``NAME@N``."""
        return f"{self.name}@{self.version}"


@dataclass(slots=True, kw_only=True)
class NameView:
    """What a name's accepted records say (see the module docstring)."""

    name: str
    creator: bytes
    publishers: set[bytes] = field(default_factory=set)
    versions: dict[int, SignedRecord] = field(default_factory=dict)
    tags: dict[str, TagMove] = field(default_factory=dict)
    moves: list[TagMove] = field(default_factory=list)
    retired: set[int] = field(default_factory=set)
    rejected: int = 0
    max_lamport: int = 0

    def live(self) -> list[int]:
        """The version numbers not retired, in the order they were added."""
        return [v for v in self.versions if v not in self.retired]

    def sharing_root(self, version: int) -> list[int]:
        """The live versions other than ``version`` whose root CID is ``version``'s,
        ascending: retiring ``version`` must leave that root pinned for them."""
        root = self.versions[version].record.root  # type: ignore[union-attr]
        return sorted(n for n in self.live() if n != version
                      and self.versions[n].record.root == root)  # type: ignore[union-attr]

    def latest(self) -> int | None:
        """The newest version not retired (else the newest), or None."""
        pool = self.live() or list(self.versions)
        return max(pool) if pool else None

    def default_version(self) -> int | None:
        """The version ``NAME`` alone names: where ``main`` points, else ``latest``."""
        move = self.tags.get(DEFAULT_TAG)
        return move.version if move is not None else self.latest()

    def tags_at(self, version: int) -> list[str]:
        """The tags that point at ``version`` now, sorted."""
        return sorted(t for t, m in self.tags.items() if m.version == version)

    def version_of(self, ref: int | str | None) -> VersionRecord:
        """The version record ``ref`` names. Raises ``NameNotFound``."""
        if ref is None:
            number = self.default_version()
        elif isinstance(ref, int):
            number = ref
        else:
            move = self.tags.get(ref)
            if move is None:
                have = ", ".join(sorted(self.tags)) or "none"
                raise NameNotFound(f"{self.name} has no tag {ref!r} (tags: {have})")
            number = move.version
        if number is None or number not in self.versions:
            raise NameNotFound(f"{self.name} has no version {number} "
                               f"(versions 1..{max(self.versions, default=0)})")
        rec = self.versions[number].record
        assert isinstance(rec, VersionRecord)
        return rec


def _creator(recs: Sequence[SignedRecord], witnesses: Collection[bytes] | None
             ) -> tuple[bytes | None, int]:
    """The creator (see the module docstring) and the number of counted claims."""
    first_at: dict[bytes, int] = {}
    for i, s in enumerate(recs):
        r = s.record
        if isinstance(r, VersionRecord) and r.version == 1:
            first_at.setdefault(r.key, i)
    if not first_at:
        return None, 0
    claim_of: dict[bytes, bytes] = {}  # witness -> the creator it claims (its first claim)
    for s in recs:
        r = s.record
        if isinstance(r, ClaimRecord) and (witnesses is None or r.key in witnesses):
            claim_of.setdefault(r.key, r.creator)
    votes = Counter(claim_of.values())
    creator = min(first_at, key=lambda k: (-votes[k], first_at[k]))
    return creator, len(claim_of)


def _compute(name: str, records: Sequence[SignedRecord],
             witnesses: Collection[bytes] | None) -> NameView | None:
    recs = sorted(records, key=lambda s: s.order)
    creator, claims = _creator(recs, witnesses)
    if creator is None:
        return None
    view = NameView(name=name, creator=creator,
                    max_lamport=max(s.record.lamport for s in recs))
    view.publishers.add(view.creator)
    grants = [s for s in recs if isinstance(s.record, GrantRecord)]
    changed = True
    while changed:  # grants by keys granted later in the order count too
        changed = False
        for s in grants:
            g = s.record
            assert isinstance(g, GrantRecord)
            if g.key in view.publishers and g.grantee not in view.publishers:
                view.publishers.add(g.grantee)
                changed = True
    accepted = claims
    moves: list[SignedRecord] = []
    for s in recs:
        r = s.record
        if r.key not in view.publishers:
            continue
        if isinstance(r, VersionRecord):
            if r.version not in view.versions:
                view.versions[r.version] = s
                accepted += 1
        elif isinstance(r, TagRecord):
            moves.append(s)
        elif isinstance(r, RetireRecord):
            view.retired.add(r.version)
            accepted += 1
        elif isinstance(r, GrantRecord):
            accepted += 1
    winner: dict[str, SignedRecord] = {}
    for s in moves:
        r = s.record
        assert isinstance(r, TagRecord)
        if r.version in view.versions:
            winner[r.tag] = s  # moves are in ascending order: the last one wins
            accepted += 1
    for s in moves:
        r = s.record
        assert isinstance(r, TagRecord)
        if r.version in view.versions:
            move = TagMove(tag=r.tag, version=r.version, key=r.key, lamport=r.lamport,
                           time_ms=r.time_ms, current=winner[r.tag] is s)
            view.moves.append(move)
            if move.current:
                view.tags[r.tag] = move
    view.rejected = len(recs) - accepted
    return view


@functools.lru_cache(maxsize=1 << 16)
def _root_cid(text: str) -> CID:
    """A version's root parsed (cached: multiformats parsing costs ~0.1 ms)."""
    return parse_cid(text)


class NameBook:
    """All verified name records a node knows, and the views of the names."""

    def __init__(self, witnesses: Collection[bytes] | None = None) -> None:
        """``witnesses``: raw keys whose claims count (the cluster members' node
        keys); None counts every key's claims (an open cluster)."""
        self._witnesses = frozenset(witnesses) if witnesses is not None else None
        self._records: dict[bytes, SignedRecord] = {}
        self._by_name: dict[str, list[SignedRecord]] = {}
        self._views: dict[str, NameView | None] = {}
        #: root multihash -> [(name, version)], built when first asked after a change.
        self._roots: dict[bytes, list[tuple[str, int]]] | None = None
        #: Blocks refused for a bad encoding or signature (metric).
        self.invalid = 0

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, cid_bytes: object) -> bool:
        return cid_bytes in self._records

    def get(self, cid_bytes: bytes) -> SignedRecord | None:
        """The record with this ID (binary CID), or None."""
        return self._records.get(cid_bytes)

    def add(self, signed: SignedRecord) -> bool:
        """Add a verified record; True when it was new."""
        key = signed.key
        if key in self._records:
            return False
        self._records[key] = signed
        self._by_name.setdefault(signed.record.name, []).append(signed)
        self._views.pop(signed.record.name, None)
        self._roots = None
        return True

    def add_block(self, block: bytes) -> SignedRecord:
        """Verify and add a record block; returns the record.

        Raises:
            RecordError: malformed or badly signed (``invalid`` is counted).
        """
        try:
            signed = decode_record(block)
        except RecordError:
            self.invalid += 1
            raise
        self.add(signed)
        return signed

    def names(self) -> list[str]:
        """Names with at least one accepted version, sorted."""
        return sorted(n for n in self._by_name if self.view(n) is not None)

    def set_witnesses(self, witnesses: Collection[bytes] | None) -> None:
        """Change whose claims count (a config reload); every view is recomputed."""
        self._witnesses = frozenset(witnesses) if witnesses is not None else None
        self._views.clear()
        self._roots = None

    def view(self, name: str) -> NameView | None:
        """The name's view (cached until a record of it arrives), or None."""
        try:
            return self._views[name]
        except KeyError:
            v = self._views[name] = _compute(name, self._by_name.get(name, ()),
                                             self._witnesses)
            return v

    def knows(self, name: str) -> bool:
        """True when ``name`` has an accepted version. Unlike ``view``, caches
        nothing for a name without records (callers probe arbitrary text)."""
        return name in self._by_name and self.view(name) is not None

    def has_claim(self, name: str, key: bytes) -> bool:
        """True when ``key`` signed a claim for ``name``."""
        return any(isinstance(s.record, ClaimRecord) and s.record.key == key
                   for s in self._by_name.get(name, ()))

    def new_claim(self, name: str, *, key: bytes, sign: Callable[[bytes], bytes],
                  time_ms: int) -> SignedRecord:
        """Sign this member's claim that the name's current creator created it.

        Raises:
            NameNotFound: the book has no version 1 of ``name``.
        """
        v = self.view(name)
        if v is None:
            raise NameNotFound(f"no name {name!r} in this cluster")
        return sign_record(ClaimRecord(name=name, lamport=self._lamport(name), time_ms=time_ms,
                                       key=key, creator=v.creator), sign)

    def rejected(self) -> int:
        """Records (validly signed) that change nothing: ungranted keys, conflicts,
        tag moves to unknown versions, records of names without a creator."""
        total = 0
        for name, recs in self._by_name.items():
            v = self.view(name)
            total += len(recs) if v is None else v.rejected
        return total

    def records(self) -> Iterator[SignedRecord]:
        """Every record (any order)."""
        return iter(self._records.values())

    # ---------------------------------------------------------------- resolve

    def lookup(self, ref: NameRef) -> VersionRecord:
        """The version record ``ref`` names. Raises ``NameNotFound``."""
        v = self.view(ref.name)
        if v is None:
            raise NameNotFound(f"no name {ref.name!r} in this cluster")
        return v.version_of(ref.ref)

    def parse_known(self, text: str) -> NameRef | None:
        """``parse_ref`` that also reads ``NAME/path`` (no ``@``): names may hold
        ``/``, so ``org/data/x.csv`` is split after the longest run of leading
        segments that is a known name (``org/data``), with ``ref`` None (tag
        ``main``, as Hugging Face's default revision); an ``@`` after the name
        is then part of the path (``org/data/a@2x.png``), as the gateway reads
        ``/ipns/``. ``NAME@REF[/path]`` of a known NAME, and any text in which
        no leading run is a known name, go to ``parse_ref``. None for a CID path.

        Raises:
            NameError_: a malformed name ref or path segment.
        """
        t = text.strip()
        if t.startswith("pinfold://"):
            t = t[len("pinfold://"):]
        if "@" in t and self.knows(t.split("@", 1)[0]):
            return parse_ref(t)
        if parse_ref_is_cid(t):
            return None
        segs = [x for x in t.split("/") if x]
        for k in range(min(MAX_NAME_SEGMENTS, len(segs)), 0, -1):
            name = "/".join(segs[:k])
            if "@" in name or not self.knows(name):
                continue
            rest = "/".join(segs[k:])
            if not rest:
                return NameRef(name=name)
            try:
                segments = parse_path("bafkqaaa/" + rest).segments
            except Exception as exc:
                raise NameError_(f"{text!r}: {exc}") from None
            return NameRef(name=name, segments=segments)
        return parse_ref(t)

    def resolve(self, ref: str) -> ContentPath | None:
        """``NAME[@REF][/path]`` as a content path (root CID and segments); a bare
        ``NAME/path`` is read by ``parse_known`` (the longest known name, at ``main``).

        Returns None when ``ref`` is a CID path, not a name ref (``parse_ref``),
        and for a bare ``NAME`` (no ``@``) the book does not know, with or
        without a path: that text may as well be a mistyped CID, and the
        caller's CID error says so.

        Raises:
            NameError_: a malformed name ref.
            NameNotFound: no such name, version or tag.
        """
        parsed = self.parse_known(ref)
        if parsed is None or (parsed.ref is None and not self.knows(parsed.name)
                              and "@" not in ref):
            return None
        rec = self.lookup(parsed)
        return ContentPath(root=_root_cid(rec.root), segments=parsed.segments)

    def versions_at(self, root: CID | str) -> list[VersionUse]:
        """Every accepted version whose root is ``root`` (a CID or its text;
        compared by multihash, so a CIDv0 and its CIDv1 match), retired ones
        included, sorted by name and number. The index is rebuilt on the first
        call after a record arrives (one pass over the versions); then a call
        is a dict lookup (text is parsed through a cache).

        Raises:
            InvalidCID: ``root`` is text that is not a CID."""
        if not self._records:
            return []
        if isinstance(root, str):
            root = _root_cid(root)
        if self._roots is None:
            index: dict[bytes, list[tuple[str, int]]] = {}
            for name in self.names():
                view = self.view(name)
                assert view is not None
                for number, s in view.versions.items():
                    rec = s.record
                    assert isinstance(rec, VersionRecord)
                    index.setdefault(cid_key(_root_cid(rec.root)), []).append((name, number))
            self._roots = index
        out = []
        for name, number in sorted(self._roots.get(cid_key(root), ())):
            view = self.view(name)
            assert view is not None
            out.append(VersionUse(name=name, version=number, tags=tuple(view.tags_at(number)),
                                  retired=number in view.retired))
        return out

    # ---------------------------------------------------------------- publish

    def check_may_publish(self, name: str, key: bytes) -> NameView | None:
        """The name's view when ``key`` may publish under it (None: a new name).

        Raises:
            NameError_: a bad name.
            NotAllowed: the name exists and ``key`` is not one of its publishers.
        """
        check_name(name)
        v = self.view(name)
        if v is not None and key not in v.publishers:
            raise NotAllowed(f"key {key_text(key)} may not publish under {name!r} (it belongs "
                             f"to {key_text(v.creator)}; ask it to `pinfold name grant`)")
        return v

    def _lamport(self, name: str) -> int:
        return max((s.record.lamport for s in self._by_name.get(name, ())), default=0) + 1

    def new_version(self, name: str, *, key: bytes, sign: Callable[[bytes], bytes],
                    root: str, size: int, files: Iterable[FileEntry], message: str = "",
                    meta: Iterable[tuple[str, str]] = (), time_ms: int) -> SignedRecord:
        """Sign the next version of ``name`` (number = newest + 1, parent = the
        version ``main`` points at, else the newest). Not added: the caller
        publishes it, then ``add``s it.

        Raises:
            NotAllowed: ``key`` is not a publisher of an existing name.
            RecordError: too many files for one record.
        """
        v = self.check_may_publish(name, key)
        number = max(v.versions, default=0) + 1 if v is not None else 1
        parent = 0
        if v is not None:
            main = v.tags.get(DEFAULT_TAG)
            parent = main.version if main is not None else (v.latest() or 0)
        rec = VersionRecord(name=name, lamport=self._lamport(name), time_ms=time_ms, key=key,
                            version=number, parent=parent, root=root, size=size,
                            files=tuple(sorted(files, key=lambda f: f.path)), message=message,
                            meta=tuple(sorted(meta)))
        return sign_record(rec, sign)

    def new_tag(self, name: str, tag: str, version: int, *, key: bytes,
                sign: Callable[[bytes], bytes], time_ms: int,
                pending: VersionRecord | None = None) -> SignedRecord:
        """Sign a move of ``tag`` to ``version`` (``pending``: a version signed but
        not yet added, for ``push --tag``).

        Raises:
            NotAllowed, NameNotFound: no such name or version.
        """
        check_tag(tag)
        v = self.check_may_publish(name, key)
        known = pending is not None and pending.version == version
        if not known and (v is None or version not in v.versions):
            raise NameNotFound(f"{name} has no version {version}")
        lamport = max(self._lamport(name), pending.lamport + 1 if pending else 0)
        return sign_record(TagRecord(name=name, lamport=lamport, time_ms=time_ms, key=key,
                                     tag=tag, version=version), sign)

    def new_grant(self, name: str, grantee: bytes, *, key: bytes,
                  sign: Callable[[bytes], bytes], time_ms: int) -> SignedRecord:
        """Sign a grant of ``name`` to ``grantee``. Raises ``NotAllowed``, ``NameNotFound``."""
        v = self.check_may_publish(name, key)
        if v is None:
            raise NameNotFound(f"no name {name!r} in this cluster (push a version first)")
        return sign_record(GrantRecord(name=name, lamport=self._lamport(name), time_ms=time_ms,
                                       key=key, grantee=grantee), sign)

    def new_retire(self, name: str, version: int, *, key: bytes,
                   sign: Callable[[bytes], bytes], time_ms: int) -> SignedRecord:
        """Sign the retirement of ``version``. Raises ``NotAllowed``, ``NameNotFound``."""
        v = self.check_may_publish(name, key)
        if v is None or version not in v.versions:
            raise NameNotFound(f"{name} has no version {version}")
        return sign_record(RetireRecord(name=name, lamport=self._lamport(name),
                                        time_ms=time_ms, key=key, version=version), sign)


def _next_moves(view: NameView) -> dict[int, TagMove]:
    """``id(move) -> the next move of the same tag`` in ``(lamport, signature)``
    order, for every move that is not the last of its tag."""
    last: dict[str, TagMove] = {}
    out: dict[int, TagMove] = {}
    for m in view.moves:  # in record order
        before = last.get(m.tag)
        if before is not None:
            out[id(before)] = m
        last[m.tag] = m
    return out


def describe(view: NameView) -> list[dict[str, object]]:
    """The history of a name for ``versions``: one dict per version, newest
    first, with ``tags`` (those at it now), ``retired`` and ``superseded``: the
    earlier moves of a tag to it that a later move of that tag replaced, each
    ``{tag, publisher, lamport, time_ms, moved_to, concurrent}``: ``moved_to``
    the version the tag's next move went to, ``concurrent`` true when that move
    has the same Lamport clock (its publisher had not seen this move: the two
    raced and this one lost the tie-break). A tag moving on (a push moving
    ``main``) is ``concurrent`` false: the version is not worse for it."""
    following = _next_moves(view)
    out: list[dict[str, object]] = []
    for number in sorted(view.versions, reverse=True):
        s = view.versions[number]
        r = s.record
        assert isinstance(r, VersionRecord)
        out.append({
            "version": number, "parent": r.parent, "cid": r.root, "size": r.size,
            "time_ms": r.time_ms, "message": r.message, "meta": dict(r.meta),
            "publisher": key_text(r.key), "record": str(s.cid),
            "tags": view.tags_at(number),
            "superseded": [
                {"tag": m.tag, "publisher": key_text(m.key), "lamport": m.lamport,
                 "time_ms": m.time_ms, "moved_to": following[id(m)].version,
                 "concurrent": following[id(m)].lamport == m.lamport}
                for m in view.moves if m.version == number and not m.current],
            "retired": number in view.retired,
            "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in r.files],
        })
    return out
