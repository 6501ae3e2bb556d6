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
    return await three(make_node)


@pytest.fixture(name="clients")
async def clients_fixture(nodes: list[Node]) -> AsyncIterator[list[AsyncClient]]:
    kvs = [AsyncClient(n.url, timeout=5.0) for n in nodes]
    try:
        yield kvs
    finally:
        for kv in kvs:
            await kv.close()
