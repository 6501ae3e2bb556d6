"""ACL tokens and policies replicate like data: made on one node they work on every node,
and a revoked token stops working everywhere within one replication round."""

from __future__ import annotations

import time

import aiohttp

from kvs.node import Node
from tests.cluster import converged, start_cluster
from tests.conftest import NodeFactory, eventually
from tests.test_acl_http import Caller, bootstrapped

# Eager push delivers a tombstone in milliseconds; anti-entropy (sync_interval_ms 200 in
# tests.cluster.FAST) repairs within a round or two if a push was lost. Either way well
# under this bound, which only keeps a broken build from waiting forever.
REVOCATION_BOUND_S = 2.0


async def test_a_token_made_on_one_node_works_everywhere_and_its_revocation_too(
        make_node: NodeFactory, http: aiohttp.ClientSession) -> None:
    nodes = await start_cluster(make_node, 3, acl_enabled=True)
    admin = await bootstrapped(nodes[0], http)
    made = await admin("POST", "/acl/policies", {"name": "rw", "rules": [
        {"prefix": "app/", "access": "write"}]})
    assert made.status == 200
    token = (await admin("POST", "/acl/tokens", {"policies": ["rw"]})).body
    users = [Caller(http, n.url, token["secret"]) for n in nodes]

    async def works_everywhere() -> bool:
        return all([(await u("PUT", "/kv/app/x", {"value": 1})).status == 200 for u in users])

    await eventually(works_everywhere, what="the token to reach every node")
    again = await Caller(http, nodes[2].url)("POST", "/acl/bootstrap")
    assert again.status == 409  # the bootstrap marker replicated too
    await converged(nodes)

    started = time.monotonic()
    assert (await admin("DELETE", f"/acl/tokens/{token['id']}")).status == 200
    revoked_after: dict[str, float] = {}

    async def revoked_everywhere() -> bool:
        for node, user in zip(nodes, users, strict=True):
            if node.url not in revoked_after and (await user("GET", "/kv/app/x")).status == 401:
                revoked_after[node.url] = time.monotonic() - started
        return len(revoked_after) == len(nodes)

    await eventually(revoked_everywhere, timeout=REVOCATION_BOUND_S, interval=0.001,
                     what="the revocation to reach every node")
    print(f"revocation seen on every node after (s): {sorted(revoked_after.values())}")
    await converged(nodes)


async def test_a_node_restarted_keeps_its_tokens(make_node: NodeFactory,
                                                 http: aiohttp.ClientSession) -> None:
    node = await make_node(acl_enabled=True)
    admin = await bootstrapped(node, http)
    data_dir = node.config.data_dir
    await node.stop()
    again: Node = await make_node(acl_enabled=True, data_dir=data_dir)
    assert (await Caller(http, again.url, admin.token)("GET", "/acl/tokens")).status == 200
