"""A fixed-shape Merkle tree over key digests, for anti-entropy.

    level 0                    [root]                       1 node
    level 1         [0] [1] ... [15]                        16
    level 2        [0..255]                                 256
    level 3        [0..4095]                                4096
    level 4        [0..65535]   = segments                  65536
                      |
    keys:  segment = top 16 bits of xxh3(key); leaf digest = model.set_digest

A segment's hash is the XOR of its keys' digests. XOR is its own inverse, so a
write changes its segment by `delta = old ^ new` in O(1), and the digest covers
the key itself, so two keys cannot cancel out. Inner nodes are xxh3 of their 16
children; like Riak's hashtree, a write only marks its segment dirty and the
dirty paths are rehashed bottom-up the next time a hash is read (just before
an exchange), never the whole tree. The shape is fixed (not sized to the data)
so two nodes' trees always line up index for index.

Comparing with a peer (`descend`) walks down only where hashes differ: with d
differing keys it fetches at most 16 * d hashes per level, whatever the number
of keys, then the two sides list the keys of the differing segments only.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from dataclasses import dataclass, field

import xxhash

FANOUT = 16
DEPTH = 4
SEGMENTS = FANOUT**DEPTH


def segment_of(key: str) -> int:
    return xxhash.xxh3_64_intdigest(key.encode()) >> (64 - 4 * DEPTH)


class MerkleTree:
    __slots__ = ("_dirty", "levels")

    def __init__(self, segments: Mapping[int, int] | None = None) -> None:
        self.levels = [[0] * (FANOUT**level) for level in range(DEPTH + 1)]
        self._dirty: set[int] = set()
        for segment, value in (segments or {}).items():
            self.apply(segment, value)

    def apply(self, segment: int, delta: int) -> None:
        """Fold a leaf change (old digest XOR new digest) into its segment."""
        if delta:
            self.levels[DEPTH][segment] ^= delta
            self._dirty.add(segment)

    def _refresh(self) -> None:
        dirty = self._dirty
        for level in range(DEPTH - 1, -1, -1):
            below = self.levels[level + 1]
            nodes = self.levels[level]
            parents = {i // FANOUT for i in dirty}
            for parent in parents:
                start = parent * FANOUT
                children = below[start:start + FANOUT]
                # An empty subtree hashes to 0, as in a fresh tree.
                nodes[parent] = xxhash.xxh3_64_intdigest(
                    b"".join(h.to_bytes(8, "big") for h in children)) if any(children) else 0
            dirty = parents
        self._dirty = set()

    def root(self) -> int:
        return self.hashes(0, [0])[0]

    def segment(self, segment: int) -> int:
        return self.levels[DEPTH][segment]

    def hashes(self, level: int, indices: list[int]) -> list[int]:
        if self._dirty:
            self._refresh()
        nodes = self.levels[level]
        return [nodes[i] for i in indices]


def descend(local: MerkleTree) -> Generator[tuple[int, list[int]], list[int], list[int]]:
    """Find the segments where `local` and a remote tree differ.

    Yields (level, indices) requests; the driver sends back the remote hashes of
    those nodes. Returns the differing segment numbers. Keeping the remote behind
    a generator lets the same walk run against a second local tree in tests and
    against a peer over HTTP.
    """
    differing = [0]
    for level in range(DEPTH + 1):
        if level:
            differing = [p * FANOUT + c for p in differing for c in range(FANOUT)]
        remote = yield level, differing
        ours = local.hashes(level, differing)
        differing = [i for i, a, b in zip(differing, ours, remote, strict=True) if a != b]
        if not differing:
            break
    return differing


def diff_trees(local: MerkleTree, remote: MerkleTree) -> list[int]:
    """`descend` driven against another in-memory tree."""
    walk = descend(local)
    try:
        level, indices = next(walk)
        while True:
            level, indices = walk.send(remote.hashes(level, indices))
    except StopIteration as done:
        return done.value


@dataclass
class LeafDiff:
    """Typed differences between two segments' leaves (Riak's missing/remote_missing/different)."""

    missing: list[str] = field(default_factory=list)  # the remote has it, we do not
    remote_missing: list[str] = field(default_factory=list)  # we have it, the remote does not
    different: list[str] = field(default_factory=list)  # both have it, digests differ


def compare_leaves(local: Mapping[str, int], remote: Mapping[str, int]) -> LeafDiff:
    out = LeafDiff()
    for key, digest in local.items():
        theirs = remote.get(key)
        if theirs is None:
            out.remote_missing.append(key)
        elif theirs != digest:
            out.different.append(key)
    out.missing = [key for key in remote if key not in local]
    return out
