"""The Consul-compatible /v1/ API, driven by a real Consul client (py-consul) and raw HTTP.

py-consul's asyncio client talks to an in-process node (real RocksDB, real aiohttp on
127.0.0.1); the raw requests check what the client hides: headers, statuses, bodies.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from consul.aio import Consul
from consul.callback import CB
from consul.exceptions import ClientError

from kvs.node import Node
from tests.cluster import start_cluster
from tests.conftest import Api, NodeFactory, eventually

# py-consul's own aiohttp connector arguments, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:ssl_context is deprecated:DeprecationWarning")

CONSUL_HEADERS = ("X-Consul-Index", "X-Consul-KnownLeader", "X-Consul-LastContact",
                  "X-Consul-Effective-Consistency")


@pytest.fixture
async def consul(node: Node) -> AsyncIterator[Consul]:
    async with Consul(host="127.0.0.1", port=node.port) as client:
        yield client


async def raw(http: aiohttp.ClientSession, node: Node, method: str, path: str,
              data: bytes | None = None) -> tuple[int, bytes, Any]:
    async with http.request(method, node.url + path, data=data) as resp:
        return resp.status, await resp.read(), resp.headers


def txn_set(key: str, value: bytes, **extra: Any) -> dict[str, Any]:
    return {"KV": {"Verb": "set", "Key": key, "Value": base64.b64encode(value).decode(), **extra}}


# -- py-consul: the KV cases ---------------------------------------------------------------------

async def test_put_get_delete_with_flags(consul: Consul) -> None:
    assert await consul.kv.put("app/db", "postgres://x", flags=42) is True
    index, item = await consul.kv.get("app/db")
    assert int(index) >= item["ModifyIndex"] >= 1
    assert item["Key"] == "app/db" and item["Value"] == b"postgres://x" and item["Flags"] == 42
    assert item["LockIndex"] == 0 and item["CreateIndex"] == item["ModifyIndex"]
    assert "Session" not in item
    assert await consul.kv.put("app/db", "other") is True  # no flags: 0 again, as in Consul
    _, item = await consul.kv.get("app/db")
    assert item["Value"] == b"other" and item["Flags"] == 0
    assert item["CreateIndex"] < item["ModifyIndex"]
    assert await consul.kv.delete("app/db") is True
    assert (await consul.kv.get("app/db"))[1] is None
    assert await consul.kv.delete("app/db") is True  # deleting a missing key is true


async def test_values_are_bytes_and_empty_is_null(consul: Consul, api: Api) -> None:
    binary = bytes(range(256))
    assert await consul.kv.put("bin", binary) is True
    assert await consul.kv.put("empty", None) is True
    assert (await consul.kv.get("bin"))[1]["Value"] == binary
    assert (await consul.kv.get("empty"))[1]["Value"] is None
    # Through the native API: text is a JSON string, other bytes {"$base64": ...}.
    assert await consul.kv.put("text", "héllo") is True
    assert (await api.get("text")).body["value"] == "héllo"
    assert (await api.get("bin")).body["value"] == {"$base64": base64.b64encode(binary).decode()}
    assert (await api.get("empty")).body["value"] == ""


async def test_native_values_read_as_their_json_text(consul: Consul, api: Api) -> None:
    assert (await api.put("n/obj", {"value": {"a": [1, 2]}})).status == 200
    assert (await api.put("n/num", {"value": 42})).status == 200
    assert (await api.put("n/str", {"value": "plain"})).status == 200
    assert (await api.put("n/b64", {"value": {"$base64": "/wA="}})).status == 200
    assert (await api.put("n/fake", {"value": {"$base64": "not base64!"}})).status == 200
    _, items = await consul.kv.get("n/", recurse=True)
    values = {i["Key"]: i["Value"] for i in items}
    assert values == {"n/obj": b'{"a":[1,2]}', "n/num": b"42", "n/str": b"plain",
                      "n/b64": b"\xff\x00", "n/fake": b'{"$base64":"not base64!"}'}


async def test_cas(consul: Consul, node: Node) -> None:
    assert await consul.kv.put("c", "1", cas=0) is True  # create-only
    assert await consul.kv.put("c", "2", cas=0) is False
    _, item = await consul.kv.get("c")
    assert await consul.kv.put("c", "3", cas=item["ModifyIndex"]) is True
    assert await consul.kv.put("c", "4", cas=item["ModifyIndex"]) is False  # stale
    assert await consul.kv.put("missing", "x", cas=5) is False  # cas=N on a missing key
    assert (await consul.kv.get("c"))[1]["Value"] == b"3"
    assert (await consul.kv.get("missing"))[1] is None
    _, item = await consul.kv.get("c")
    assert await consul.kv.delete("c", cas=item["ModifyIndex"] + 1) is False
    assert (await consul.kv.get("c"))[1] is not None
    assert await consul.kv.delete("c", cas=item["ModifyIndex"]) is True
    assert (await consul.kv.get("c"))[1] is None
    assert await consul.kv.delete("c", cas=3) is True  # already absent: true, as in Consul


async def test_recurse_keys_separator_and_raw(consul: Consul) -> None:
    for key in ("cfg/a", "cfg/b/x", "cfg/b/y", "cfg/c/z", "other"):
        assert await consul.kv.put(key, key.upper()) is True
    _, items = await consul.kv.get("cfg/", recurse=True)
    assert [(i["Key"], i["Value"]) for i in items] == [
        ("cfg/a", b"CFG/A"), ("cfg/b/x", b"CFG/B/X"), ("cfg/b/y", b"CFG/B/Y"), ("cfg/c/z", b"CFG/C/Z")]
    assert (await consul.kv.get("cfg/", keys=True))[1] == ["cfg/a", "cfg/b/x", "cfg/b/y", "cfg/c/z"]
    assert (await consul.kv.get("cfg/", keys=True, separator="/"))[1] == ["cfg/a", "cfg/b/", "cfg/c/"]
    assert (await consul.kv.get("", keys=True, separator="/"))[1] == ["cfg/", "other"]
    assert (await consul.kv.get("nothing/", recurse=True))[1] is None  # 404
    assert await consul.kv.put("blob", b"\x00\xffraw") is True
    body = await consul.http.get(CB.binary(), "/v1/kv/blob", params=[("raw", "1")], raw=True)
    assert body == b"\x00\xffraw"
    assert await consul.kv.delete("cfg/b/", recurse=True) is True
    assert (await consul.kv.get("cfg/", keys=True))[1] == ["cfg/a", "cfg/c/z"]


async def test_blocking_get_wakes_on_a_write(consul: Consul, node: Node) -> None:
    assert await consul.kv.put("w/k", "v1") is True
    index, _ = await consul.kv.get("w/k")
    for kwargs in ({"key": "w/k"}, {"key": "w/", "recurse": True}):
        key = kwargs.pop("key")
        waiter = asyncio.create_task(consul.kv.get(key, index=index, wait="30s", **kwargs))
        await eventually(lambda: len(node.watchers) == 1, what="the blocking query to register")
        assert await consul.kv.put("w/k", "v2" if key == "w/k" else "v3") is True
        new_index, data = await asyncio.wait_for(waiter, 10)
        assert int(new_index) > int(index)
        item = data if isinstance(data, dict) else data[0]
        assert item["ModifyIndex"] == int(new_index)
        index = new_index


async def test_blocking_get_times_out_on_no_change(consul: Consul, node: Node) -> None:
    assert await consul.kv.put("quiet", "v") is True
    index, _ = await consul.kv.get("quiet")
    loop = asyncio.get_running_loop()
    started = loop.time()
    same, item = await consul.kv.get("quiet", index=index, wait="300ms")
    assert loop.time() - started >= 0.25
    assert same == index and item["Value"] == b"v"


async def test_index_zero_and_minus_one_answer_at_once(http: aiohttp.ClientSession, node: Node) -> None:
    """Spring's first watch sends index=-1; index=0 is "no index": neither blocks, even
    on a missing key (which a blocking query on index 0 would wait for)."""
    for index in ("0", "-1"):
        status, body, headers = await asyncio.wait_for(
            raw(http, node, "GET", f"/v1/kv/absent?index={index}&wait=5m"), 5)
        assert (status, body) == (404, b"") and int(headers["X-Consul-Index"]) >= 1


async def test_blocking_on_a_fresh_node_sees_the_first_write(consul: Consul, node: Node) -> None:
    """A fresh node reports index 1 before any write (Consul's never 0); blocking on it
    must still wake on the first write, whose modify index is 1 too."""
    index, item = await consul.kv.get("first")
    assert (index, item) == ("1", None)
    waiter = asyncio.create_task(consul.kv.get("first", index=index, wait="30s"))
    await eventually(lambda: len(node.watchers) == 1, what="the blocking query to register")
    assert await consul.kv.put("first", "v") is True
    _, item = await asyncio.wait_for(waiter, 10)
    assert item["Value"] == b"v"


async def test_txn_success(consul: Consul) -> None:
    assert await consul.kv.put("t/old", "o") is True
    _, old = await consul.kv.get("t/old")
    result = await consul.txn.put([
        txn_set("t/a", b"A", Flags=7),
        {"KV": {"Verb": "cas", "Key": "t/old", "Value": base64.b64encode(b"O2").decode(),
                "Index": old["ModifyIndex"]}},
        {"KV": {"Verb": "check-not-exists", "Key": "t/none"}},
        {"KV": {"Verb": "get", "Key": "t/a"}},
        {"KV": {"Verb": "get-tree", "Key": "t/"}},
        {"KV": {"Verb": "delete", "Key": "t/missing"}},
    ])
    assert result["Errors"] is None
    kvs = [r["KV"] for r in result["Results"]]
    assert [(r["Key"], r["Value"]) for r in kvs] == [
        ("t/a", None), ("t/old", None),  # writes: the value blanked, as Consul does
        ("t/a", base64.b64encode(b"A").decode()),
        ("t/a", base64.b64encode(b"A").decode()), ("t/old", base64.b64encode(b"O2").decode())]
    assert kvs[0]["Flags"] == 7 and kvs[1]["ModifyIndex"] > old["ModifyIndex"]
    assert (await consul.kv.get("t/old"))[1]["Value"] == b"O2"
    result = await consul.txn.put([
        {"KV": {"Verb": "check-index", "Key": "t/a", "Index": kvs[0]["ModifyIndex"]}},
        {"KV": {"Verb": "delete-cas", "Key": "t/a", "Index": kvs[0]["ModifyIndex"]}},
        {"KV": {"Verb": "delete-tree", "Key": "t/"}},
    ])
    assert [r["KV"]["Key"] for r in result["Results"]] == ["t/a"]
    assert (await consul.kv.get("t/", keys=True))[1] is None


async def test_a_failing_txn_writes_nothing(consul: Consul, node: Node) -> None:
    assert await consul.kv.put("f/x", "x") is True
    index = node.engine.index
    with pytest.raises(ClientError) as failed:
        await consul.txn.put([
            txn_set("f/new", b"n"),
            {"KV": {"Verb": "delete-tree", "Key": "f/"}},
            {"KV": {"Verb": "cas", "Key": "f/x", "Value": "", "Index": 999}},
            {"KV": {"Verb": "get", "Key": "f/absent"}},
        ])
    status, _, body = str(failed.value).partition(" ")
    assert status == "409"
    answer = json.loads(body)
    assert answer["Results"] is None
    assert {"OpIndex": 3, "What": 'key "f/absent" doesn\'t exist'} in answer["Errors"]
    with pytest.raises(ClientError) as failed:
        await consul.txn.put([txn_set("f/new", b"n"),
                              {"KV": {"Verb": "cas", "Key": "f/x", "Value": "", "Index": 999}}])
    assert json.loads(str(failed.value).partition(" ")[2])["Errors"] == [
        {"OpIndex": 1, "What": 'failed to set key "f/x", index is stale'}]
    assert node.engine.index == index
    assert (await consul.kv.get("f/", keys=True))[1] == ["f/x"]


async def test_txn_sees_its_own_writes(consul: Consul, node: Node) -> None:
    """Ops run in order: a get-tree lists what the txn wrote and not what it deleted, and a
    check-index after a set compares with that set's index."""
    assert await consul.kv.put("o/gone", "g") is True
    result = await consul.txn.put([
        txn_set("o/a", b"1"),
        {"KV": {"Verb": "delete", "Key": "o/gone"}},
        {"KV": {"Verb": "get-tree", "Key": "o/"}},
        {"KV": {"Verb": "check-not-exists", "Key": "o/gone"}},
    ])
    assert [r["KV"]["Key"] for r in result["Results"]] == ["o/a", "o/a"]
    written = result["Results"][0]["KV"]["ModifyIndex"]
    next_index = node.engine.index + 1  # what the next set gets on this node
    result = await consul.txn.put([
        txn_set("o/a", b"2"), {"KV": {"Verb": "check-index", "Key": "o/a", "Index": next_index}}])
    assert [r["KV"]["ModifyIndex"] for r in result["Results"]] == [next_index, next_index]
    with pytest.raises(ClientError) as failed:
        await consul.txn.put([
            txn_set("o/a", b"3"), {"KV": {"Verb": "check-index", "Key": "o/a", "Index": written}}])
    assert json.loads(str(failed.value).partition(" ")[2])["Errors"] == [{
        "OpIndex": 1,
        "What": f'failed index check for key "o/a", current modify index {next_index + 1} != {written}'}]
    assert (await consul.kv.get("o/a"))[1]["Value"] == b"2"


# -- the wire: headers, flag forms, ignored parameters, errors ------------------------------------

async def test_every_v1_answer_carries_consul_headers(http: aiohttp.ClientSession, node: Node) -> None:
    requests = [("GET", "/v1/kv/none", None, 404), ("PUT", "/v1/kv/h", b"v", 200),
                ("GET", "/v1/kv/h", None, 200), ("POST", "/v1/kv/h", None, 405),
                ("GET", "/v1/kv/h?index=1&wait=1y", None, 400), ("GET", "/v1/nothing", None, 404),
                ("PUT", "/v1/txn", b"[]", 200), ("PUT", "/v1/txn", b"{", 400),
                ("GET", "/v1/status/leader", None, 200), ("DELETE", "/v1/kv/h", None, 200)]
    last = 0
    for method, path, data, expected in requests:
        status, body, headers = await raw(http, node, method, path, data)
        assert status == expected, (method, path, status, body)
        assert all(h in headers for h in CONSUL_HEADERS), (method, path, headers)
        assert headers["X-Consul-KnownLeader"] == "true" and headers["X-Consul-LastContact"] == "0"
        assert int(headers["X-Consul-Index"]) >= max(1, last)  # never backwards
        last = int(headers["X-Consul-Index"])
        if status >= 400:  # Consul's errors are plain text, not kvs's JSON
            assert not headers.get("Content-Type", "").startswith("application/json"), path
        assert "X-KVS-Index" not in headers


async def test_flag_forms_and_ignored_parameters(http: aiohttp.ClientSession, node: Node) -> None:
    for key in ("p/a", "p/b"):
        assert (await raw(http, node, "PUT", f"/v1/kv/{key}?dc=dc1&token=t&ns=x&partition=y&whatever=1",
                          b"v"))[:2] == (200, b"true")
    for form in ("recurse", "recurse=", "recurse=1", "recurse=true", "recurse=True"):
        status, body, _ = await raw(http, node, "GET", f"/v1/kv/p/?{form}&stale&consistent&dc=dc1"
                                    "&ns=default&partition=default&token=secret&unknown=3")
        assert status == 200 and [i["Key"] for i in json.loads(body)] == ["p/a", "p/b"], form
    for form in ("keys", "keys=", "keys=1", "keys=true"):
        status, body, _ = await raw(http, node, "GET", f"/v1/kv/p/?{form}")
        assert (status, json.loads(body)) == (200, ["p/a", "p/b"]), form
    status, body, _ = await raw(http, node, "GET", "/v1/kv/p/a?raw")
    assert (status, body) == (200, b"v")
    async with http.get(node.url + "/v1/kv/p/a", headers={"X-Consul-Token": "anything"}) as resp:
        assert resp.status == 200
    assert (await raw(http, node, "GET", "/v1/kv/p/?recurse=false"))[0] == 404  # p/ itself


async def test_bad_input_is_a_plain_text_4xx_and_writes_nothing(
        http: aiohttp.ClientSession, make_node: NodeFactory) -> None:
    node = await make_node(max_value_bytes=1024)
    big = base64.b64encode(b"x" * 1025).decode()
    cases: list[tuple[str, str, bytes | None, int, str]] = [
        ("PUT", "/v1/kv/big", b"x" * 1025, 413, "too large"),
        ("GET", "/v1/kv/k?index=1&wait=10x", None, 400, "Invalid wait time"),
        ("GET", "/v1/kv/k?index=1&wait=10", None, 400, "Invalid wait time"),
        ("GET", "/v1/kv/k?index=abc", None, 400, "Invalid index"),
        ("PUT", "/v1/kv/k?flags=-1", b"v", 400, "flags"),
        ("PUT", "/v1/kv/k?cas=x", b"v", 400, "cas"),
        ("PUT", "/v1/kv/k?acquire=3f2a", b"v", 400, "invalid session"),
        ("PUT", "/v1/kv/k?acquire=a&release=a", b"v", 400, "Conflicting flags"),
        ("PUT", "/v1/kv/_consul/lock/k", b"v", 400, "reserved"),
        ("PUT", "/v1/kv/", b"v", 400, "Missing key name"),
        ("GET", "/v1/kv/", None, 400, "Missing key name"),
        ("DELETE", "/v1/kv/k?recurse&cas=1", None, 400, "Conflicting flags"),
        ("PUT", "/v1/kv/_services/web", b"v", 400, "service registry"),
        ("PUT", "/v1/kv/bad%FFkey", b"v", 400, "UTF-8"),
        ("PUT", "/v1/txn", b"{not json", 400, "Failed to parse body"),
        ("PUT", "/v1/txn", b'{"KV": {}}', 400, "Failed to parse body"),
        ("PUT", "/v1/txn", b'[{"KV": {"Verb": "frobnicate", "Key": "k"}}]', 400, "unknown KV verb"),
        ("PUT", "/v1/txn", b'[{"KV": {"Verb": ["set"], "Key": "k"}}]', 400, "unknown KV verb"),
        ("PUT", "/v1/txn", b'[{"KV": {"Verb": "lock", "Key": "k", "Session": 5}}]', 400, "Session"),
        ("PUT", "/v1/txn", b'[{"KV": {"Verb": "unlock", "Key": "k"}}]', 400, "needs a Session"),
        ("PUT", "/v1/txn", b'[{"KV": {"Verb": "check-session", "Key": "k"}}]', 400, "needs a Session"),
        ("PUT", "/v1/txn", b'[{"Node": {"Verb": "set"}}]', 400, "only KV"),
        ("PUT", "/v1/txn", b'[{"KV": {"Verb": "set", "Key": "k", "Value": "!!"}}]', 400, "decode"),
        ("PUT", "/v1/txn", b'[{"KV": {"Verb": "set", "Key": "k", "Value": 5}}]', 400, "base64"),
        ("PUT", "/v1/txn", b'[{"KV": {"Verb": "set", "Key": "k", "Flags": -1}}]', 400, "Flags"),
        ("PUT", "/v1/txn", b'[{"KV": {"Verb": "cas", "Key": "k", "Index": "1"}}]', 400, "Index"),
        ("PUT", "/v1/txn", b'[{"KV": {"Verb": "set", "Key": ""}}]', 400, "empty"),
        ("PUT", "/v1/txn", json.dumps([txn_set("k", b"v")] * 65).encode(), 413, "too many operations"),
        ("PUT", "/v1/txn", json.dumps([{"KV": {"Verb": "set", "Key": "k", "Value": big}}]).encode(),
         413, "too large"),
        ("PUT", "/v1/txn", json.dumps([txn_set("k", b"v"), txn_set("_services/x", b"v")]).encode(),
         400, "service registry"),
    ]
    index = node.engine.index
    for method, path, data, expected, words in cases:
        status, body, headers = await raw(http, node, method, path, data)
        assert status == expected, (path, data, status, body)
        assert words.lower() in body.decode().lower(), (path, data, body)
        assert not headers["Content-Type"].startswith("application/json"), (path, body)
    assert node.engine.index == index
    assert (await raw(http, node, "GET", "/v1/kv/?keys"))[:2] == (200, b"[]")


async def test_cas_needs_cas_enabled(http: aiohttp.ClientSession, make_node: NodeFactory) -> None:
    node = await make_node(cas_enabled=False)
    status, body, _ = await raw(http, node, "PUT", "/v1/kv/k?cas=0", b"v")
    assert status == 501 and b"cas_enabled" in body
    assert (await raw(http, node, "PUT", "/v1/kv/k", b"v"))[:2] == (200, b"true")


# -- probes ----------------------------------------------------------------------------------------

async def test_status_agent_and_catalog(make_node: NodeFactory, http: aiohttp.ClientSession) -> None:
    nodes = await start_cluster(make_node, 2)
    async with Consul(host="127.0.0.1", port=nodes[1].port) as consul:
        assert await consul.status.leader() == nodes[1].address  # every node leads itself
        assert sorted(await consul.status.peers()) == sorted(n.address for n in nodes)
        me = await consul.agent.self()
        assert me["Config"]["NodeName"] == nodes[1].engine.node_id
        assert me["Config"]["Datacenter"] == "dc1" and me["Member"]["Name"] == nodes[1].engine.node_id
        _, catalog = await consul.catalog.nodes()
        assert sorted(n["Node"] for n in catalog) == sorted(n.engine.node_id for n in nodes)
        assert all(n["Datacenter"] == "dc1" and n["Address"] == "127.0.0.1" for n in catalog)
        index, services = await consul.catalog.services()
        assert services == {}
        waiter = asyncio.create_task(consul.health.service("web", index=index, wait="30s"))
        await eventually(lambda: len(nodes[1].watchers) == 1, what="the health query to block")
        async with http.post(nodes[1].url + "/services", json={
                "name": "web", "address": "10.0.0.5", "port": 8080, "tags": ["blue"]}) as resp:
            assert resp.status == 200
        _, instances = await asyncio.wait_for(waiter, 10)
        assert len(instances) == 1
        assert instances[0]["Service"] == {"ID": "web", "Service": "web", "Tags": ["blue"],
                                           "Address": "10.0.0.5", "Port": 8080, "Meta": {}}
        assert instances[0]["Checks"][0]["Status"] == "passing"
        assert (await consul.catalog.services())[1] == {"web": ["blue"]}
        assert (await consul.health.service("other"))[1] == []
