"""Merkle tree: incremental updates equal a rebuild; the diff finds exactly the differing keys."""

from __future__ import annotations

import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from kvs.merkle import SEGMENTS, MerkleTree, compare_leaves, descend, diff_trees, segment_of

keys = st.text(alphabet="abcdefgh/", min_size=1, max_size=6)
# Real leaf digests cover the key (model.set_digest), so derive them from key and content.
digests = st.integers(0, 3)


def _digest(key: str, content: int) -> int:
    return xxhash.xxh3_64_intdigest(f"{key}\0{content}".encode())


def _tree(leaves: dict[str, int]) -> MerkleTree:
    tree = MerkleTree()
    for key, content in leaves.items():
        tree.apply(segment_of(key), _digest(key, content))
    return tree


@given(st.dictionaries(keys, digests), st.dictionaries(keys, digests))
def test_incremental_updates_equal_a_rebuild(before: dict[str, int], after: dict[str, int]) -> None:
    tree = _tree(before)
    for key in before.keys() | after.keys():
        old = _digest(key, before[key]) if key in before else 0
        new = _digest(key, after[key]) if key in after else 0
        tree.apply(segment_of(key), old ^ new)
    rebuilt = _tree(after)
    assert tree.root() == rebuilt.root()
    assert tree.levels == rebuilt.levels


@settings(max_examples=200)
@given(st.dictionaries(keys, digests, max_size=40), st.dictionaries(keys, digests, max_size=8),
       st.sets(keys, max_size=5))
def test_diff_finds_exactly_the_differing_keys(
    common: dict[str, int], changed: dict[str, int], dropped: set[str]
) -> None:
    ours = dict(common)
    theirs = {**common, **changed}
    for key in dropped:
        theirs.pop(key, None)
    expected = {k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k)}

    segments = diff_trees(_tree(ours), _tree(theirs))
    found: set[str] = set()
    for segment in segments:
        leaves = compare_leaves(
            {k: d for k, d in ours.items() if segment_of(k) == segment},
            {k: d for k, d in theirs.items() if segment_of(k) == segment},
        )
        found.update(leaves.missing, leaves.remote_missing, leaves.different)
    assert found == expected
    # Reconcile, then there is nothing left to find.
    assert diff_trees(_tree(theirs), _tree(theirs)) == []


def test_descent_cost_grows_with_differences_not_keys() -> None:
    base = {f"key{i}": 0 for i in range(20_000)}
    other = dict(base)
    for i in range(10):
        other[f"key{i}"] = 1
    local, remote = _tree(base), _tree(other)
    walk = descend(local)
    requested = 0
    try:
        level, indices = next(walk)
        while True:
            requested += len(indices)
            level, indices = walk.send(remote.hashes(level, indices))
    except StopIteration as done:
        segments = done.value
    assert len(segments) == 10
    assert requested <= 1 + 3 * 16 * 10 + 16 * 10  # independent of the 20k keys
    assert SEGMENTS == 65536
