"""A node cut off for longer than tombstone_gc_seconds: it flags itself stale, resynchronises
from its peers without bringing purged deletions back, and converges (in-process nodes)."""

from __future__ import annotations

import logging

import aiohttp
import pytest

from kvs.cluster.replication import CONTACT_FILE
from kvs.node import Node
from tests.cluster import FAST, converged, heal, partition, start_cluster
from tests.conftest import Api, NodeFactory, eventually

GONE = [f"gone/{i}" for i in range(5)]


async def _health(http: aiohttp.ClientSession, node: Node) -> dict[str, str]:
    return (await Api(http, node.url).request("GET", "/health")).body


async def test_a_node_cut_off_past_the_gc_horizon_resyncs_without_resurrecting(
        make_node: NodeFactory, http: aiohttp.ClientSession) -> None:
    nodes = await start_cluster(make_node, 3, tombstone_gc_seconds=1)
    a, b, c = nodes
    api_a, api_c = Api(http, a.url), Api(http, c.url)
    for key in [*GONE, "kept"]:
        assert (await api_a.put(key, {"value": key})).status == 200
    await converged(nodes)
    partition([a, b], [c])
    for key in GONE:
        assert (await api_a.delete(key)).status == 200
    assert (await api_a.put("new/majority", {"value": 1})).status == 200
    # A write on the cut-off side is kept only if stamped after the deletions it will be
    # weighed against (docs/design.md, "Long partitions"): one in the same millisecond as
    # the last of them is refused by the purge watermark, by design.
    deleted_at = max(v.timestamp for k in GONE for v in a.storage.read(k) or ())
    await eventually(lambda: c.engine.now_ms() > deleted_at, what="c's clock past the deletes")
    assert (await api_c.put("new/cut-off", {"value": 2})).status == 200
    await eventually(lambda: not any(n.storage.read(k) for n in (a, b) for k in GONE),
                     timeout=10, what="the majority to purge the tombstones")

    await eventually(lambda: c.engine.stale_reason is not None, timeout=10,
                     what="the cut-off node to flag itself")
    health = await _health(http, c)
    assert health["status"] == "stale" and "tombstone_gc_seconds" in health["stale"]
    served = await api_c.get(GONE[0])  # still there, and flagged
    assert served.status == 200 and served.headers["X-KVS-Stale"] == "true"
    assert (await _health(http, a))["status"] == "ok"

    heal(nodes)
    await converged(nodes)
    await eventually(lambda: c.engine.stale_reason is None, what="the stale flag to clear")
    for node in nodes:
        api = Api(http, node.url)
        for key in GONE:
            reply = await api.get(key)
            assert reply.status == 404, (node.engine.node_id, key)
            assert "X-KVS-Stale" not in reply.headers
        for key, value in (("kept", "kept"), ("new/majority", 1), ("new/cut-off", 2)):
            reply = await api.get(key)
            assert (reply.status, reply.body.get("value")) == (200, value), (
                node.engine.node_id, key, reply.body)
    assert c.replicator.status()["stale"] is None
    assert (await _health(http, c)) == {"status": "ok", "node": c.engine.node_id}


async def test_a_node_stopped_past_the_gc_horizon_resyncs_when_restarted(
        make_node: NodeFactory, http: aiohttp.ClientSession,
        caplog: pytest.LogCaptureFixture) -> None:
    nodes = await start_cluster(make_node, 3, tombstone_gc_seconds=1)
    a, b, c = nodes
    api_a = Api(http, a.url)
    for key in GONE:
        assert (await api_a.put(key, {"value": key})).status == 200
    await converged(nodes)
    await eventually(lambda: (c.config.data_path / CONTACT_FILE).exists(),
                     what="c's last contact on disk")
    await c.stop()
    for key in GONE:
        assert (await api_a.delete(key)).status == 200
    await eventually(lambda: not any(n.storage.read(k) for n in (a, b) for k in GONE),
                     timeout=10, what="the others to purge the tombstones")
    with caplog.at_level(logging.WARNING, logger="kvs.replication"):
        back = await make_node(**FAST, tombstone_gc_seconds=1, data_dir=c.config.data_dir,
                               seed_nodes=[a.address])
        await converged([a, b, back])
    assert any("event=stale " in r.getMessage() for r in caplog.records)
    assert not any(back.storage.read(k) for k in GONE)
    await eventually(lambda: back.engine.stale_reason is None, what="the stale flag to clear")
