"""In-process cluster helpers: real nodes on loopback, partitions at the transport, dumps."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kvs.node import Node
from tests.conftest import NodeFactory, eventually

FAST = {"gossip_interval_ms": 50, "probe_timeout_ms": 150, "sync_interval_ms": 200,
        "ttl_sweep_interval_ms": 100}
QUORUM = {"consistency": "quorum"}  # in a PUT body, or as GET/DELETE parameters


async def start_cluster(make_node: NodeFactory, n: int, **overrides: Any) -> list[Node]:
    first = await make_node(**{**FAST, **overrides})
    nodes = [first]
    for _ in range(n - 1):
        nodes.append(await make_node(**{**FAST, "seed_nodes": [first.address], **overrides}))
    await eventually(lambda: all(len(x.membership.alive_peers()) == n - 1 for x in nodes),
                     what=f"{n} nodes to see each other alive")
    return nodes


async def three(make_node: NodeFactory, **overrides: Any) -> list[Node]:
    """Nodes qa, qb, qc, the three voters of quorum keys (initial_voters)."""
    ids = ["qa", "qb", "qc"]
    settings = {**FAST, "initial_voters": ids, **overrides}
    first = await make_node(node_id=ids[0], **settings)
    nodes = [first]
    for node_id in ids[1:]:
        nodes.append(await make_node(node_id=node_id, seed_nodes=[first.address], **settings))
    await eventually(lambda: all(len(x.membership.alive_peers()) == 2 for x in nodes),
                     what="3 nodes to see each other alive")
    return nodes


def partition(side_a: Sequence[Node], side_b: Sequence[Node]) -> None:
    """Cut every link between the two sides (both directions) at the transport."""
    for a in side_a:
        for b in side_b:
            a.transport.blocked.add(b.address)
            b.transport.blocked.add(a.address)


def heal(nodes: Sequence[Node]) -> None:
    for node in nodes:
        node.transport.blocked.clear()


def dump(node: Node) -> list[list[dict[str, Any]]]:
    """Full state of a node without node-local fields (which legitimately differ)."""
    local = ("modify_index", "create_index")
    return [
        [{k: v for k, v in version.to_json().items() if k not in local} for version in versions]
        for versions in node.storage.scan_sets("")
    ]


def roots(nodes: Sequence[Node]) -> set[int]:
    return {node.storage.tree.root() for node in nodes}


async def converged(nodes: Sequence[Node], timeout: float = 20.0) -> None:
    await eventually(lambda: len(roots(nodes)) == 1, timeout=timeout, interval=0.05,
                     what="identical Merkle roots")
    first = dump(nodes[0])
    for other in nodes[1:]:
        assert dump(other) == first
