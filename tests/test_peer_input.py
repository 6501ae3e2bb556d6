"""Issue 12, findings 1 and 11: peers are distrusted as clients are.

Every attack the issue reproduced against `/internal/`, replayed against real in-process
nodes: each is refused with a 4xx (or dropped), changes nothing (dump, Merkle root, HLC,
member table), and leaves the node answering every later request without a 500.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiohttp
import orjson
import pytest

from kvs.cluster import auth
from kvs.errors import ConfigError
from kvs.model import MAX_U64, Version, new_version_id
from kvs.node import Node
from kvs.testing import run_kvs
from tests.cluster import FAST, dump, start_cluster
from tests.conftest import Api, NodeFactory, node_config

SECRET = "s3cret"
DAY_MS = 86_400_000
TEN_YEARS_MS = 10 * 365 * DAY_MS


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def wire(key: str, value: Any = "forged", *, ts: int | None = None, version: str | None = None,
         **fields: Any) -> list[Any]:
    v = Version(key, value, version or new_version_id(), now_ms() if ts is None else ts, 0,
                "mallory", 1)
    out = v.to_wire()
    names = ["key", "version", "timestamp", "logical", "origin", "origin_joined_at", "flags",
             "expires_at", "deleted", "parent", "value"]
    for name, raw in fields.items():
        out[names.index(name)] = raw
    return out


async def post(http: aiohttp.ClientSession, node: Node, path: str, payload: Any,
               secret: str | None = None, body: bytes | None = None) -> tuple[int, Any]:
    data = orjson.dumps(payload) if body is None else body
    headers = auth.sign(secret, "POST", path, data, now_ms()) if secret else {}
    async with http.post(node.url + path, data=data, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)


def state(node: Node) -> tuple[Any, ...]:
    assert node.engine is not None and node.membership is not None
    members = [(m["id"], m["state"], m["incarnation"]) for m in node.membership.members()]
    return dump(node), node.engine.status()["merkle_root"], node.engine.hlc.last, members


async def still_serves_every_write(http: aiohttp.ClientSession, node: Node) -> None:
    api = Api(http, node.url)
    assert (await api.put("victim", {"value": "after", "ttl": 30})).status == 200
    assert (await api.delete("victim")).status == 200


# -- finding 1: forged versions ----------------------------------------------------------------

MALICIOUS = {
    "timestamp 2^64-1": lambda _: [wire("victim", ts=MAX_U64)],
    "10 years ahead": lambda _: [wire("victim", ts=now_ms() + TEN_YEARS_MS)],
    "one day ahead": lambda _: [wire("victim", ts=now_ms() + DAY_MS)],
    "4 MiB value": lambda _: [wire("victim", "x" * (4 << 20))],
    "expires_at 2^64-1": lambda _: [wire("victim", expires_at=MAX_U64)],
    "logical 2^64-1": lambda _: [wire("victim", logical=MAX_U64)],
    "tombstone with a value": lambda _: [wire("victim", deleted=True)],
    "version id not a UUID": lambda _: [wire("victim", version="x")],
    "same id, other content": lambda held: [wire(held["key"], "tampered", ts=held["timestamp"],
                                                  version=held["version"],
                                                  origin=held["origin"],
                                                  origin_joined_at=held["origin_joined_at"])],
}


@pytest.mark.parametrize("attack", list(MALICIOUS))
async def test_a_forged_version_is_refused_and_changes_nothing(
        make_node: NodeFactory, http: aiohttp.ClientSession, attack: str) -> None:
    node = await make_node(max_value_bytes=1 << 20)
    assert (await Api(http, node.url).put("victim", {"value": "real"})).status == 200
    held = (await Api(http, node.url).get("victim")).body
    before = state(node)
    status, body = await post(http, node, "/internal/push", MALICIOUS[attack](held))
    assert status in (200, 400, 413), body
    assert state(node) == before, "a refused version changed the node"
    await still_serves_every_write(http, node)
    assert (await Api(http, node.url).get("victim")).status == 404


async def test_a_conflicting_version_is_counted_and_logged_once(
        make_node: NodeFactory, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture) -> None:
    node = await make_node()
    assert (await Api(http, node.url).put("k", {"value": "real"})).status == 200
    held = (await Api(http, node.url).get("k")).body
    forged = MALICIOUS["same id, other content"](held)
    with caplog.at_level(logging.WARNING, logger="kvs.engine"):
        for _ in range(3):
            assert (await post(http, node, "/internal/push", forged))[0] == 200
    assert node.engine is not None
    assert node.engine.stats.remote_conflicting == 3
    assert sum("conflicting_version" in r.message for r in caplog.records) == 1
    metrics = await Api(http, node.url).request("GET", "/metrics")
    assert "kvs_remote_versions_conflicting_total 3.0" in metrics.body


async def test_a_future_version_does_not_drag_the_clock_of_a_cluster(
        make_node: NodeFactory, http: aiohttp.ClientSession) -> None:
    nodes = await start_cluster(make_node, 2)
    status, _ = await post(http, nodes[0], "/internal/push",
                           [wire("k", ts=now_ms() + TEN_YEARS_MS)])
    assert status == 200
    written = await Api(http, nodes[1].url).put("k", {"value": "sane"})
    assert written.body["timestamp"] < now_ms() + 1000
    for node in nodes:
        assert node.engine is not None
        assert node.engine.hlc.last[0] < now_ms() + 1000
    assert nodes[0].engine is not None and nodes[0].engine.stats.remote_future == 1


# -- finding 1: forged membership -------------------------------------------------------------

async def test_a_forged_left_with_a_huge_incarnation_evicts_nobody(
        make_node: NodeFactory, http: aiohttp.ClientSession) -> None:
    a, b = await start_cluster(make_node, 2)
    assert a.membership is not None and b.membership is not None and b.engine is not None
    victim = b.engine.node_id
    forger = {"id": "mallory", "address": "127.0.0.1:1", "joined_at": 1, "state": "alive",
              "incarnation": 1}
    forged = {"id": victim, "address": b.address, "joined_at": b.engine.joined_at,
              "state": "left", "incarnation": 2**53 - 1}
    settings = a.membership.settings  # valid in every other way: only the incarnation is wrong
    status, _ = await post(http, a, "/internal/swim/ping",
                           {"from": forger, "target": "whoever", "updates": [forged],
                            "settings": settings})
    assert status == 200
    status, _ = await post(http, a, "/internal/swim/join",
                           {"from": forger, "members": [forged], "settings": settings})
    assert status == 200
    member = a.membership.member(victim)
    assert member is not None and member.state == "alive"
    assert member.incarnation < now_ms() + 1000
    assert a.membership.refused_updates >= 2
    assert b.membership.incarnation < now_ms() + 1000  # nothing made it refute sky-high


# -- finding 1: authentication ------------------------------------------------------------------

async def test_a_replayed_signed_push_is_refused(make_node: NodeFactory,
                                                 http: aiohttp.ClientSession) -> None:
    node = await make_node(cluster_secret=SECRET)
    body = orjson.dumps([wire("replayed")])
    headers = auth.sign(SECRET, "POST", "/internal/push", body, now_ms())
    async with http.post(node.url + "/internal/push", data=body, headers=headers) as first:
        assert first.status == 200
    assert node.storage is not None and node.storage.read("replayed")
    delete = await Api(http, node.url).delete("replayed")
    assert delete.status == 200
    before = state(node)
    async with http.post(node.url + "/internal/push", data=body, headers=headers) as replay:
        assert replay.status == 401
        assert "already received" in (await replay.json())["message"]
    assert state(node) == before


async def test_with_a_secret_leave_and_dump_need_a_signature(make_node: NodeFactory,
                                                            http: aiohttp.ClientSession) -> None:
    node = await make_node(cluster_secret=SECRET)
    api = Api(http, node.url)
    for path in ("/cluster/leave", "/internal/dump"):
        reply = await api.request("POST", path)
        assert reply.status == 401, path
        assert reply.body["error"] == "unauthorized"
    assert not node.left.is_set()
    assert (await api.request("GET", "/cluster/status")).status == 200  # reads stay open
    status, body = await post(http, node, "/cluster/leave", None, SECRET, body=b"")
    assert status == 200 and body["status"] == "left"
    assert node.left.is_set()


async def test_without_a_secret_leave_works_unsigned_on_loopback(
        make_node: NodeFactory, http: aiohttp.ClientSession) -> None:
    node = await make_node()
    assert (await Api(http, node.url).request("POST", "/cluster/leave")).status == 200


# -- finding 11: what refusals tell ---------------------------------------------------------------

async def test_a_401_does_not_tell_the_receivers_clock(make_node: NodeFactory,
                                                       http: aiohttp.ClientSession) -> None:
    node = await make_node(cluster_secret=SECRET)
    body = b"[]"
    stale = now_ms() - 123_456
    headers = auth.sign(SECRET, "POST", "/internal/push", body, stale)
    async with http.post(node.url + "/internal/push", data=body, headers=headers) as resp:
        assert resp.status == 401
        reply = await resp.json()
    text = orjson.dumps(reply).decode()
    assert reply["cause"] == auth.CAUSE_WINDOW
    assert "123" not in text and " ms " not in text, text


# -- finding 1: secure by default -----------------------------------------------------------------

async def test_a_node_refuses_to_listen_beyond_loopback_without_a_secret(tmp_path) -> None:  # type: ignore[no-untyped-def]
    node = Node(node_config(port=0, bind_address="0.0.0.0", data_dir=str(tmp_path / "a")))
    with pytest.raises(ConfigError, match="insecure: true"):
        await node.start()
    assert node.port is None  # refused before anything listened
    for allowed in ({"cluster_secret": SECRET}, {"bind_address": "localhost"}):
        settings = {"port": 0, "bind_address": "0.0.0.0", "data_dir": str(tmp_path / "b"),
                    **allowed}
        ok = Node(node_config(**settings))
        await ok.start()
        await ok.stop()


async def test_insecure_true_starts_with_a_loud_warning(
        tmp_path, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    node = Node(node_config(port=0, bind_address="0.0.0.0", insecure=True,
                            data_dir=str(tmp_path / "a"), **FAST))
    with caplog.at_level(logging.WARNING, logger="kvs.node"):
        await node.start()
    try:
        assert any("INSECURE" in r.message for r in caplog.records)
    finally:
        await node.stop()


# -- finding 2: TTLs follow the wall clock ---------------------------------------------------------

async def test_expires_at_comes_from_the_wall_clock_not_the_hlc(
        make_node: NodeFactory, http: aiohttp.ClientSession) -> None:
    node = await make_node()
    assert node.engine is not None
    node.engine.hlc.observe((now_ms() + 450, 0))  # a peer's clock, ahead but within range
    before = now_ms()
    written = await Api(http, node.url).put("lease", {"value": 1, "ttl": 1})
    assert written.body["timestamp"] >= before + 450
    assert before + 1000 <= written.body["expires_at"] <= now_ms() + 1000


async def test_kvs_leave_signs_with_the_secret(make_node: NodeFactory) -> None:
    node = await make_node(cluster_secret=SECRET)
    unsigned = await asyncio.to_thread(run_kvs, "leave", "--node", node.url)
    assert unsigned.returncode == 1 and "cluster_secret" in unsigned.stderr, unsigned.stderr
    wrong = await asyncio.to_thread(run_kvs, "leave", "--node", node.url, "--secret", "wrong")
    assert wrong.returncode == 1 and "does not match" in wrong.stderr, wrong.stderr
    assert not node.left.is_set()
    signed = await asyncio.to_thread(run_kvs, "leave", "--node", node.url,
                                     env={"KVS_CLUSTER_SECRET": SECRET})
    assert signed.returncode == 0, signed.stderr
    assert node.left.is_set()
