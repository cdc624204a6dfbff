"""The pinset's digest tree: what two replicas compare to find where they differ.

A complete 16-ary tree over a pinset's ``2**tree_bits`` buckets (DESIGN.md
"Replication", anti-entropy). Each node keeps the count of entries below it and
the XOR of their 128-bit entry hashes. The leaves (buckets) are updated in
O(1) per change: XOR the old entry's hash out and the new one's in. The levels
above are rebuilt from the leaves when read after a change (65,536 XORs, a few
ms). Two replicas compare roots, then the children of differing nodes, ... so
they find the differing buckets in ``tree_bits / 4`` round trips (``sync.py``).

Pure: no trio, no I/O. ``PinSet`` owns one and feeds it every change.
"""

from __future__ import annotations

from typing import Final

from pinfold.replication.errors import InvalidPin

__all__ = ["FANOUT_BITS", "DigestTree"]

#: Bits per digest-tree level (fan-out 16).
FANOUT_BITS: Final = 4


class DigestTree:
    """Counts and XOR digests of entry hashes per bucket and per tree node.

    Nodes are named ``(level, index)``: level 0 is the root, level ``levels`` the
    buckets; node ``(level, i)`` has children ``(level + 1, 16 * i .. 16 * i + 15)``.

    Args:
        tree_bits: bucket-number bits, a multiple of 4 (checked by ``PinSet``).
    """

    __slots__ = ("_levels", "_tree", "leaf_count", "leaf_digest")

    def __init__(self, tree_bits: int) -> None:
        self._levels = tree_bits // FANOUT_BITS
        # Leaf (bucket) digests and counts are kept up to date; the levels above
        # are rebuilt from them on demand (65,536 XORs, a few ms) when dirty.
        self.leaf_digest = [0] * (1 << tree_bits)
        #: entries per bucket (read it to skip empty buckets)
        self.leaf_count = [0] * (1 << tree_bits)
        self._tree: list[tuple[list[int], list[int]]] | None = None

    @property
    def levels(self) -> int:
        """Depth of the leaf (bucket) level; the root is level 0."""
        return self._levels

    def update(self, bucket: int, delta_hash: int, delta_count: int) -> None:
        """XOR ``delta_hash`` into ``bucket``'s digest and add ``delta_count`` to its count."""
        self.leaf_digest[bucket] ^= delta_hash
        self.leaf_count[bucket] += delta_count
        self._tree = None

    def _levels_cache(self) -> list[tuple[list[int], list[int]]]:
        """``[(digests, counts)]`` per level, root first, rebuilt when stale."""
        if self._tree is None:
            levels = [(self.leaf_digest, self.leaf_count)]
            fan = 1 << FANOUT_BITS
            for _ in range(self._levels):
                d, c = levels[-1]
                nd = [0] * (len(d) // fan)
                nc = [0] * (len(d) // fan)
                for i in range(len(nd)):
                    x = 0
                    for v in d[i * fan : (i + 1) * fan]:
                        x ^= v
                    nd[i] = x
                    nc[i] = sum(c[i * fan : (i + 1) * fan])
                levels.append((nd, nc))
            levels.reverse()
            self._tree = levels
        return self._tree

    def _check_node(self, level: int, index: int) -> None:
        if type(level) is not int or not 0 <= level <= self._levels:
            raise InvalidPin(f"level: must be in 0..{self._levels}, got {level!r}")
        if type(index) is not int or not 0 <= index < (1 << (FANOUT_BITS * level)):
            last = (1 << (FANOUT_BITS * level)) - 1
            raise InvalidPin(f"index: must be in 0..{last}, got {index!r}")

    def summary(self, level: int, index: int) -> tuple[int, int]:
        """``(digest, count)`` of one node.

        Raises:
            InvalidPin: no such node.
        """
        self._check_node(level, index)
        d, c = self._levels_cache()[level]
        return d[index], c[index]

    def children(self, level: int, index: int) -> list[tuple[int, int]]:
        """``(digest, count)`` of the 16 children (at ``level + 1``) of a node.

        Raises:
            InvalidPin: no such node, or it is a leaf.
        """
        self._check_node(level, index)
        if level >= self._levels:
            raise InvalidPin(f"level {level} is the leaf level; it has no children")
        lo = index << FANOUT_BITS
        d, c = self._levels_cache()[level + 1]
        return [(d[i], c[i]) for i in range(lo, lo + (1 << FANOUT_BITS))]

    def bucket_range(self, level: int, index: int) -> tuple[int, int]:
        """The buckets ``[lo, hi)`` under a node.

        Raises:
            InvalidPin: no such node.
        """
        self._check_node(level, index)
        shift = FANOUT_BITS * (self._levels - level)
        return index << shift, (index + 1) << shift
