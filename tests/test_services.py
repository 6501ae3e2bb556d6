"""Service registry (/services): CAS semantics, TTL expiry and renewal, replication.

Registrations are KV versions under `_services/<name>`, so these tests also check that
the registry cannot be written around (the prefix is read-only through /kv).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from kvs.clock import wall_ms
from kvs.node import Node
from tests.conftest import Api, NodeFactory, eventually, node_config

WEB = {"name": "web", "address": "10.0.0.1", "port": 8080, "tags": ["v1", "blue"],
       "meta": {"zone": "a"}}


async def register(api: Api, body: dict[str, Any]) -> Any:
    return await api.request("POST", "/services", json=body)


async def service(api: Api, name: str, **params: str) -> Any:
    return await api.request("GET", f"/services/{name}", params=params or None)


async def names(api: Api) -> list[str]:
    reply = await api.request("GET", "/services")
    assert reply.status == 200
    return [s["name"] for s in reply.body["services"]]


async def renew(api: Api, name: str, body: Any = ...) -> Any:
    return await api.request("PUT", f"/services/{name}/renew", json=body)


async def deregister(api: Api, name: str, **params: str) -> Any:
    return await api.request("DELETE", f"/services/{name}", params=params or None)


async def test_register_read_and_list(api: Api) -> None:
    created = await register(api, {**WEB, "cas": 0})
    assert created.status == 200, created.body
    assert created.body["expires_at"] is None
    assert created.body["create_index"] == created.body["modify_index"]

    got = await service(api, "web")
    assert got.status == 200
    assert got.body == {**WEB, "ttl": None}

    # absent optional fields are stored as null / [] / {}
    assert (await register(api, {"name": "a.min_1-x"})).status == 200
    assert (await service(api, "a.min_1-x")).body == {
        "name": "a.min_1-x", "address": None, "port": None, "tags": [], "meta": {}, "ttl": None}
    # and null is accepted for the fields stored as null, so a read can be written back
    back = await register(api, {**(await service(api, "web")).body, "cas": created.body["modify_index"]})
    assert back.status == 200, back.body
    listed = await api.request("GET", "/services")
    assert listed.body == {"services": [(await service(api, "a.min_1-x")).body,
                                        (await service(api, "web")).body]}
    assert (await service(api, "nope")).status == 404
    assert (await service(api, "nope")).body["error"] == "not_found"

    # a registration is a normal key version, readable (not writable) through /kv
    kv = await api.get("_services/web")
    assert kv.status == 200 and kv.body["value"] == {**WEB, "ttl": None}
    assert kv.body["version"] == back.body["version"]


async def test_answers_take_konsuls_shape(api: Api) -> None:
    """Konsul's users read the registration under "service", beside its indexes."""
    created = await register(api, {**WEB, "ttl": 30})
    registration = {**WEB, "ttl": 30}
    identity = {k: created.body[k] for k in ("version", "modify_index", "create_index", "expires_at")}
    assert created.body == {"message": "service registered", "service": registration, **identity}
    assert created.body["expires_at"] is not None

    entry = await service(api, "web", metadata="true")
    assert entry.body == {"service": registration, **identity}
    assert (await service(api, "web", metadata="false")).body == registration  # the plain form

    renewed = await renew(api, "web")
    assert renewed.body["message"] == "service renewed"
    assert renewed.body["service"] == registration
    assert renewed.body["modify_index"] > created.body["modify_index"]
    assert set(renewed.body) == set(created.body)

    gone = await deregister(api, "web")
    assert gone.body == {"message": "service deregistered", "name": "web",
                         "version": gone.body["version"], "modify_index": gone.body["modify_index"]}
    assert gone.body["modify_index"] > renewed.body["modify_index"]


async def test_create_only(api: Api) -> None:
    first = await register(api, {**WEB, "cas": 0})
    assert first.status == 200
    again = await register(api, {**WEB, "port": 9999, "cas": 0})
    assert again.status == 409 and again.body["error"] == "cas_conflict"
    assert again.body["current"]["version"] == first.body["version"]
    assert again.body["current"]["modify_index"] == first.body["modify_index"]
    assert (await service(api, "web")).body["port"] == 8080

    # after deregistration (or expiry) the name is free again for cas=0
    assert (await deregister(api, "web")).status == 200
    reborn = await register(api, {**WEB, "cas": 0})
    assert reborn.status == 200
    assert reborn.body["create_index"] == reborn.body["modify_index"] > first.body["modify_index"]


async def test_conditional_update(api: Api) -> None:
    first = await register(api, WEB)
    index = first.body["modify_index"]
    updated = await register(api, {**WEB, "port": 8081, "cas": index})
    assert updated.status == 200
    assert updated.body["create_index"] == first.body["create_index"]
    assert updated.body["modify_index"] > index
    stale = await register(api, {**WEB, "port": 8082, "cas": index})
    assert stale.status == 409 and stale.body["error"] == "cas_conflict"
    assert stale.body["current"]["modify_index"] == updated.body["modify_index"]
    assert (await service(api, "web")).body["port"] == 8081
    # an unconditional registration overwrites
    assert (await register(api, {**WEB, "port": 8083})).status == 200
    assert (await service(api, "web")).body["port"] == 8083
    # cas > 0 on a name that is not registered: 404, nothing created
    missing = await register(api, {"name": "ghost", "cas": 5})
    assert missing.status == 404 and missing.body["error"] == "not_found"
    assert await names(api) == ["web"]


async def test_conditional_deregister(api: Api) -> None:
    first = await register(api, WEB)
    assert (await register(api, {**WEB, "port": 1})).status == 200
    stale = await deregister(api, "web", cas=str(first.body["modify_index"]))
    assert stale.status == 409 and stale.body["error"] == "cas_conflict"
    assert await names(api) == ["web"]
    current = (await service(api, "web", metadata="true")).body["modify_index"]
    gone = await deregister(api, "web", cas=str(current))
    assert gone.status == 200
    assert gone.body["name"] == "web" and gone.body["message"] == "service deregistered"
    assert (await service(api, "web")).status == 404
    assert await names(api) == []
    assert (await deregister(api, "web")).status == 404
    assert (await deregister(api, "web", cas="0")).status == 404
    # the tombstone is a normal version in the key's history
    history = await api.get("_services/web", history="true")
    assert history.body["revisions"][0]["deleted"] is True


async def test_cas_disabled(make_node: NodeFactory, http: Any) -> None:
    node = await make_node(cas_enabled=False)
    api = Api(http, node.url)
    refused = await register(api, {**WEB, "cas": 0})
    assert refused.status == 501 and refused.body["error"] == "cas_disabled"
    assert await names(api) == []  # never downgraded to an unconditional write
    assert (await register(api, {**WEB, "ttl": 30})).status == 200
    assert (await deregister(api, "web", cas="1")).status == 501
    # renewal's version condition is the server's own: it works with CAS off
    renewed = await renew(api, "web")
    assert renewed.status == 200, renewed.body
    assert (await deregister(api, "web")).status == 200


class Clock:
    """The node's wall clock, moved by the test: TTL tests never sleep."""

    def __init__(self) -> None:
        self.now = wall_ms()

    def __call__(self) -> int:
        return self.now

    def advance(self, ms: int) -> None:
        self.now += ms


@pytest.fixture
async def clocked(tmp_path: Any, http: Any) -> AsyncIterator[tuple[Node, Api, Clock]]:
    clock = Clock()
    node = Node(node_config(port=0, data_dir=str(tmp_path / "clocked"), cas_enabled=True,
                            ttl_sweep_interval_ms=50), now_ms=clock)
    await node.start()
    try:
        yield node, Api(http, node.url), clock
    finally:
        await node.stop()


async def test_expiry(clocked: tuple[Node, Api, Clock]) -> None:
    node, api, clock = clocked
    short = await register(api, {**WEB, "ttl": 3})
    keep = await register(api, {"name": "db", "ttl": 60})
    assert short.status == keep.status == 200
    expires_at = short.body["expires_at"]
    assert expires_at == (await api.get("_services/web")).body["timestamp"] + 3000
    assert (await service(api, "web", metadata="true")).body["expires_at"] == expires_at
    clock.advance(2999)
    assert await names(api) == ["db", "web"]
    clock.advance(1)
    assert (await service(api, "web")).status == 404  # at expires_at, before the sweeper
    assert await names(api) == ["db"]
    assert (await renew(api, "web")).status == 404  # no resurrection
    await eventually(lambda: node.engine.stats.expired == 1, what="the sweeper")
    assert (await service(api, "web")).status == 404
    assert await names(api) == ["db"]
    # the name is free again
    assert (await register(api, {**WEB, "cas": 0})).status == 200


async def test_renew_before_expiry_keeps_it(clocked: tuple[Node, Api, Clock]) -> None:
    _, api, clock = clocked
    first = await register(api, {**WEB, "ttl": 10})
    last = first.body
    for _ in range(5):  # renew every 6 s: 30 s later, three times the ttl, it is still there
        clock.advance(6000)
        renewed = await renew(api, "web")
        assert renewed.status == 200, renewed.body
        assert renewed.body["expires_at"] == last["expires_at"] + 6000
        assert renewed.body["create_index"] == first.body["create_index"]
        assert renewed.body["modify_index"] > last["modify_index"]
        last = renewed.body
    got = await service(api, "web", metadata="true")
    assert got.status == 200 and got.body["service"]["ttl"] == 10
    assert got.body["version"] == last["version"] and got.body["expires_at"] == last["expires_at"]
    # a body ttl renews for that long and becomes the registration's ttl
    longer = await renew(api, "web", {"ttl": 30})
    assert longer.status == 200 and longer.body["expires_at"] == clock.now + 30_000
    assert (await service(api, "web")).body == {**WEB, "ttl": 30}
    clock.advance(29_999)
    assert (await service(api, "web")).status == 200


async def test_renew_after_expiry_is_404(clocked: tuple[Node, Api, Clock]) -> None:
    _, api, clock = clocked
    assert (await register(api, {**WEB, "ttl": 2})).status == 200
    clock.advance(2000)
    late = await renew(api, "web")
    assert late.status == 404 and late.body["error"] == "not_found"
    assert (await service(api, "web")).status == 404
    assert (await renew(api, "never")).status == 404
    # deregistered: no resurrection either
    assert (await register(api, {"name": "gone", "ttl": 30})).status == 200
    assert (await deregister(api, "gone")).status == 200
    assert (await renew(api, "gone")).status == 404
    assert await names(api) == []


async def test_renew_needs_a_ttl(api: Api) -> None:
    assert (await register(api, WEB)).status == 200
    no_ttl = await renew(api, "web")
    assert no_ttl.status == 400 and no_ttl.body["error"] == "bad_request"
    assert (await service(api, "web", metadata="true")).body["expires_at"] is None
    given = await renew(api, "web", {"ttl": 60})
    assert given.status == 200 and given.body["expires_at"] is not None
    for bad in ({"ttl": 0}, {"ttl": -1}, {"ttl": "10"}, {"ttl": 10, "x": 1}, [], "10"):
        reply = await renew(api, "web", bad)
        assert reply.status == 400, (bad, reply.body)


BAD_REGISTRATIONS: list[Any] = [
    {}, [], "web", None,
    {"name": ""}, {"name": "x" * 129}, {"name": "a/b"}, {"name": "a b"}, {"name": "é"}, {"name": 1},
    {"name": "web", "extra": 1},
    {"name": "web", "address": 1}, {"name": "web", "port": 0}, {"name": "web", "port": 65536},
    {"name": "web", "port": True}, {"name": "web", "port": "80"}, {"name": "web", "port": 1.5},
    {"name": "web", "tags": "a"}, {"name": "web", "tags": [1]}, {"name": "web", "tags": None},
    {"name": "web", "meta": []}, {"name": "web", "meta": {"a": 1}}, {"name": "web", "meta": None},
    {"name": "web", "ttl": 0}, {"name": "web", "ttl": -1}, {"name": "web", "ttl": "5"},
    {"name": "web", "ttl": True}, {"name": "web", "cas": -1}, {"name": "web", "cas": None},
    {"name": "web", "cas": "0"},
]


@pytest.mark.parametrize("body", BAD_REGISTRATIONS)
async def test_bad_registrations_are_400_and_change_nothing(node: Node, api: Api, body: Any) -> None:
    before = node.engine.index
    reply = await register(api, body)
    assert reply.status == 400, reply.body
    assert set(reply.body) == {"error", "message"} and reply.body["error"] == "bad_request"
    assert node.engine.index == before


async def test_bad_requests(node: Node, api: Api) -> None:
    assert (await register(api, WEB)).status == 200
    before = node.engine.index
    for method, path, data in [
        ("POST", "/services", b"{not json"),
        ("POST", "/services", b""),
        ("POST", "/services", b'{"name": "web", "cas": 18446744073709551616}'),
        ("POST", "/services?x=1", b'{"name": "web"}'),
        ("GET", "/services?tag=a", None),
        ("GET", "/services/web?x=1", None),
        ("GET", "/services/web?metadata=maybe", None),
        ("GET", "/services/a%20b", None),
        ("PUT", "/services/web/renew", b"{not json"),
        ("PUT", "/services/web/renew?ttl=5", None),
        ("DELETE", "/services/web?cas=x", None),
        ("DELETE", "/services/web?if_version=x", None),
        ("DELETE", "/services/a%20b", None),
    ]:
        reply = await api.request(method, path, data=data)
        assert reply.status == 400, (method, path, reply.body)
        assert reply.body["error"] == "bad_request"
    assert node.engine.index == before
    assert (await service(api, "web")).status == 200


async def test_registry_prefix_is_read_only_through_kv(node: Node, api: Api) -> None:
    assert (await register(api, WEB)).status == 200
    before = node.engine.index
    for reply in [
        await api.put("_services/web", {"value": "garbage"}),
        await api.put("_services/new", {"value": {"name": "new"}}),
        await api.delete("_services/web"),
        await api.delete("_services/", recurse="true"),
        await api.txn([{"op": "set", "key": "_services/web", "value": 1}]),
        await api.txn([{"op": "delete", "key": "_services/web"}]),
    ]:
        assert reply.status == 400 and reply.body["error"] == "bad_request", reply.body
    assert node.engine.index == before
    # reads are fine, and a recursive delete of a covering prefix skips the registry
    assert (await api.txn([{"op": "get", "key": "_services/web"}])).status == 200
    assert (await api.put("app/x", {"value": 1})).status == 200
    wiped = await api.delete("", recurse="true")
    assert wiped.status == 200 and wiped.body["deleted"] == ["app/x"]
    assert await names(api) == ["web"]
    # "_services" itself (no slash) is an ordinary key
    assert (await api.put("_services", {"value": 1})).status == 200


async def test_registration_replicates(make_node: NodeFactory, http: Any) -> None:
    timing = {"gossip_interval_ms": 50, "probe_timeout_ms": 150, "sync_interval_ms": 200}
    first = await make_node(**timing)
    second = await make_node(seed_nodes=[first.address], **timing)
    a, b = Api(http, first.url), Api(http, second.url)
    await eventually(lambda: len(first.membership.alive_peers()) == 1
                     and len(second.membership.alive_peers()) == 1, what="the nodes to meet")

    created = await register(a, {**WEB, "ttl": 30, "cas": 0})
    assert created.status == 200

    async def on_b(name: str, version: str | None) -> bool:
        got = await service(b, name, metadata="true")
        if version is None:
            return got.status == 404
        return got.status == 200 and got.body["version"] == version

    await eventually(lambda: on_b("web", created.body["version"]), what="the registration on b")
    got = (await service(b, "web", metadata="true")).body
    assert got["expires_at"] == created.body["expires_at"]  # the same version, same lease
    assert await names(b) == ["web"]
    # create-only on the other node sees it
    assert (await register(b, {**WEB, "cas": 0})).status == 409
    # a renewal on b replicates back to a
    renewed = await renew(b, "web")
    assert renewed.status == 200
    await eventually(lambda: on_b("web", renewed.body["version"]), what="b's own renewal")

    async def on_a(version: str | None) -> bool:
        got = await service(a, "web", metadata="true")
        return got.status == 404 if version is None else (
            got.status == 200 and got.body["version"] == version)

    await eventually(lambda: on_a(renewed.body["version"]), what="the renewal on a")
    # deregistration replicates too
    assert (await deregister(a, "web")).status == 200
    await eventually(lambda: on_b("web", None), what="the deregistration on b")
    assert await names(b) == []
