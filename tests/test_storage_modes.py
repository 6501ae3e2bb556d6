"""Storage modes: group commit under sync_writes, and compression invisible to clients and hashes."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import Api, NodeFactory


async def test_sync_writes_share_fsyncs_and_keep_the_loop_responsive(make_node: NodeFactory, http) -> None:  # type: ignore[no-untyped-def]
    node = await make_node(sync_writes=True)
    api = Api(http, node.url)
    replies = await asyncio.gather(*(api.put(f"k{i}", {"value": i}) for i in range(200)))
    assert all(r.status == 200 for r in replies)
    group = node.storage.group
    assert group.syncs >= 1
    assert group.syncs < 200, "every write paid its own fsync: group commit is not grouping"
    # Every acknowledged write was covered by an fsync that began after it.
    assert group.synced == group.issued == 200
    print(f"200 concurrent sync PUTs: {group.syncs} fsyncs")


@pytest.mark.parametrize("compression", ["zstd", "lz4"])
async def test_compression_is_invisible_to_clients_and_to_the_merkle_hash(
    make_node: NodeFactory, http, compression: str  # type: ignore[no-untyped-def]
) -> None:
    plain = await make_node()
    packed = await make_node(compression=compression)
    value = {"text": "compressible " * 500, "n": [1, 2.5, None, True]}
    source = Api(http, plain.url)
    assert (await source.put("x", {"value": value})).status == 200
    versions = plain.storage.read("x")
    packed.engine.apply_remote(versions)
    reply = await Api(http, packed.url).get("x")
    assert reply.status == 200 and reply.body["value"] == value
    assert packed.storage.tree.root() == plain.storage.tree.root()
