"""A fixed-shape Merkle tree of XOR-aggregated key digests, for anti-entropy.

    level 0                    [root]                       1 node
    level 1         [0] [1] ... [15]                        16
    level 2        [0..255]                                 256
    level 3        [0..4095]                                4096
    level 4        [0..65535]   = segments                  65536
                      |
    keys:  segment = top 16 bits of xxh3(key); leaf digest = model.set_digest

Every node's hash is the XOR of the leaf digests below it. XOR is its own
inverse, so a write changes a leaf by `delta = old ^ new` and applies that same
delta to the five nodes on its path: O(depth) per write, never a rebuild. The
shape is fixed (not sized to the data) so two nodes' trees always line up
index for index and can be compared without negotiation.

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
    __slots__ = ("levels",)

    def __init__(self, segments: Mapping[int, int] | None = None) -> None:
        self.levels = [[0] * (FANOUT**level) for level in range(DEPTH + 1)]
        for segment, value in (segments or {}).items():
            self.apply(segment, value)

    def apply(self, segment: int, delta: int) -> None:
        """Fold a leaf change (old digest XOR new digest) into the segment and its ancestors."""
        if not delta:
            return
        index = segment
        for level in range(DEPTH, -1, -1):
            self.levels[level][index] ^= delta
            index //= FANOUT

    def root(self) -> int:
        return self.levels[0][0]

    def segment(self, segment: int) -> int:
        return self.levels[DEPTH][segment]

    def hashes(self, level: int, indices: list[int]) -> list[int]:
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
