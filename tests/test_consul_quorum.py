"""The Consul front on quorum keys: `?consistent` is a quorum read, and with
default_consistency: quorum every /v1/kv write is a quorum CAS whose `cas` compares the
key's cluster-wide seq (its ModifyIndex), driven by py-consul against three real voters.

Replication is off in these clusters (no eager push, anti-entropy rare) and node qc is
cut off from qa while qa writes: whatever qc answers about that write afterwards came
through a quorum round, not through its own replica.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager

import aiohttp
import pytest
from consul.aio import Consul

from kvs.node import Node
from tests.cluster import heal, partition, three
from tests.conftest import NodeFactory, eventually

pytestmark = pytest.mark.filterwarnings("ignore:ssl_context is deprecated:DeprecationWarning")

QUIET = {"eager_push": False, "sync_interval_ms": 600_000}


@asynccontextmanager
async def consul(node: Node) -> AsyncIterator[Consul]:
    async with Consul(host="127.0.0.1", port=node.port) as client:
        yield client


async def get(http: aiohttp.ClientSession, node: Node, path: str) -> tuple[int, str, bytes]:
    async with http.get(node.url + path) as resp:
        return resp.status, resp.headers["X-Consul-Effective-Consistency"], await resp.read()


async def while_cut_off(nodes: Sequence[Node], write: Callable[[], Awaitable[bool]]) -> None:
    """Run `write` (through qa) while qc cannot reach qa nor qa reach qc."""
    qa, _, qc = nodes
    partition([qa], [qc])
    try:
        assert await write() is True
    finally:
        heal(nodes)


async def test_consistent_reads_a_quorum_key_through_a_quorum_round(
        make_node: NodeFactory, http: aiohttp.ClientSession) -> None:
    nodes = await three(make_node, **QUIET)
    qa, qb, qc = nodes

    async def native_quorum_put() -> bool:
        async with http.put(qa.url + "/kv/cfg/db", json={"value": "pg", "consistency": "quorum"}) as r:
            return r.status == 200
    await while_cut_off(nodes, native_quorum_put)
    assert (await get(http, qc, "/v1/kv/cfg/db?stale"))[0] == 404  # qc's own replica lacks it
    status, consistency, body = await get(http, qc, "/v1/kv/cfg/db?consistent")
    assert (status, consistency) == (200, "consistent")
    [entry] = json.loads(body)
    assert entry["Value"] == "cGc=" and entry["ModifyIndex"] == 1  # the key's seq
    # A local-mode key is read from the node's copy, `consistent` or not.
    async with consul(qa) as client:
        assert await client.kv.put("plain", "x") is True
    status, consistency, _ = await get(http, qa, "/v1/kv/plain?consistent")
    assert (status, consistency) == (200, "stale")
    # A Consul write to the quorum key, through a node that knows it is one (qb accepted
    # it; qc need not have), goes through the quorum too: a local write would be refused.
    async with consul(qb) as client:
        assert await client.kv.put("cfg/db", "mysql", cas=1) is True
    async with consul(qa) as client:
        assert await client.kv.put("cfg/db", "lost", cas=1) is False
    status, _, body = await get(http, qa, "/v1/kv/cfg/db")
    assert status == 200 and json.loads(body)[0]["Value"] == "bXlzcWw="


async def test_with_default_quorum_consul_writes_and_cas_are_cluster_wide(
        make_node: NodeFactory, http: aiohttp.ClientSession) -> None:
    nodes = await three(make_node, default_consistency="quorum", **QUIET)
    qa, qb, qc = nodes

    async def consul_put() -> bool:
        async with consul(qa) as client:
            return await client.kv.put("app/leader", "a", flags=7)  # type: ignore[no-any-return]
    await while_cut_off(nodes, consul_put)
    async with consul(qc) as client:
        _, item = await client.kv.get("app/leader")  # a plain read of a quorum key: a round
        assert (item["Value"], item["Flags"], item["ModifyIndex"]) == (b"a", 7, 1)
        assert await client.kv.put("app/leader", "c", cas=item["ModifyIndex"]) is True
    async with consul(qb) as client:
        assert await client.kv.put("app/leader", "b", cas=1) is False  # stale seq: refused
        assert await client.kv.put("app/new", "n", cas=0) is True  # cas=0: only if absent
        assert await client.kv.put("app/new", "n2", cas=0) is False
        _, item = await client.kv.get("app/leader")
        assert (item["Value"], item["ModifyIndex"]) == (b"c", 2)

    async def listed_with_seq() -> bool:  # a recursive (local) listing shows the seq too
        async with consul(qb) as client:
            _, items = await client.kv.get("app/", recurse=True)
        return {i["Key"]: i["ModifyIndex"] for i in items or []} == {"app/leader": 2, "app/new": 1}
    await eventually(listed_with_seq, what="qb's listing to show the seqs it accepted")
    async with consul(qc) as client:
        assert await client.kv.delete("app/leader", cas=1) is False
        assert await client.kv.delete("app/leader", cas=2) is True
        assert await client.kv.delete("app/leader") is True  # already gone: true, as Consul
    assert (await get(http, qa, "/v1/kv/app/leader"))[0] == 404
    # A transaction is node-local: it may read, not write, a quorum key.
    async with http.put(qa.url + "/v1/txn", json=[{"KV": {"Verb": "get", "Key": "app/new"}},
                                                  {"KV": {"Verb": "set", "Key": "app/x"}}]) as r:
        assert r.status == 400 and "operation 1: a transaction is node-local" in await r.text()
    assert (await get(http, qa, "/v1/kv/app/x?stale"))[0] == 404


async def test_with_default_quorum_a_lock_and_its_value_are_seen_on_every_node(
        make_node: NodeFactory, http: aiohttp.ClientSession) -> None:
    nodes = await three(make_node, default_consistency="quorum", **QUIET)
    qa, qb, _ = nodes
    async with consul(qa) as client:
        session = await client.session.create(lock_delay=0)
        assert await client.kv.put("svc/lock", "holder-a", acquire=session) is True
    async with consul(qb) as client:
        _, item = await client.kv.get("svc/lock")  # the value: through a quorum round
        assert item["Value"] == b"holder-a"
        other = await client.session.create(lock_delay=0)
        assert await client.kv.put("svc/lock", "holder-b", acquire=other) is False

    async def holder_on_qb() -> bool:  # the holder: qb's copy of the lock record
        async with consul(qb) as client:
            return (await client.kv.get("svc/lock"))[1].get("Session") == session
    await eventually(holder_on_qb, what="qb's copy of the lock record")


async def test_a_node_that_is_not_a_voter_sends_consul_writes_of_a_quorum_key_to_the_voters(
        make_node: NodeFactory, http: aiohttp.ClientSession) -> None:
    """qb is not a voter and holds no acceptor state: it knows the key is a quorum key only
    from the replicated version's id, and must not take a /v1/kv write to it as a local one
    (which quorum reads would never see)."""
    nodes = await three(make_node, initial_voters=["qa"], auto_voter=False)
    qa, qb, _ = nodes
    async with http.put(qa.url + "/kv/cfg/db", json={"value": "pg", "consistency": "quorum"}) as r:
        assert r.status == 200
    await eventually(lambda: bool(qb.storage.read("cfg/db")), what="replication to qb")
    assert qb.engine.acceptor_state("cfg/db").accepted is None
    async with consul(qb) as client:
        assert await client.kv.put("cfg/db", "mysql", cas=1) is True  # cas: the key's seq
    async with http.get(qa.url + "/kv/cfg/db", params={"consistency": "quorum"}) as r:
        read = await r.json()
    assert (read["value"], read["seq"]) == ("mysql", 2)
