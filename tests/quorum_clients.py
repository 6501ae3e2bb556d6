"""Fixtures for the client side of quorum CAS: three in-process voters and one AsyncClient
per node (writers that never share a node). Import them into a test module:

    from tests.quorum_clients import clients_fixture, nodes_fixture  # noqa: F401  (fixtures)
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from kvs.client import AsyncClient
from kvs.node import Node
from tests.conftest import NodeFactory
from tests.test_quorum import three


@pytest.fixture(name="nodes")
async def nodes_fixture(make_node: NodeFactory) -> list[Node]:
    # A long history, as `kvs chaos` runs: a node tells whether an indeterminate write was
    # chosen by walking the key's parent chain in its history, and under the heaviest
    # contention here (24 updates of one key through 3 nodes) the rounds that were never
    # chosen push the chain out of a 10-version history (503 quorum_indeterminate in 3 of
    # 40 runs; docs/consistency.md, "What is not built yet").
    return await three(make_node, revision_history_limit=1000)


@pytest.fixture(name="clients")
async def clients_fixture(nodes: list[Node]) -> AsyncIterator[list[AsyncClient]]:
    kvs = [AsyncClient(n.url, timeout=5.0) for n in nodes]
    try:
        yield kvs
    finally:
        for kv in kvs:
            await kv.close()
