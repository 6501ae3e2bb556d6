"""Client ACLs on a real node (docs/acl.md): who may do what on every client endpoint,
the /acl/ administration, Consul's /v1/ with py-consul's token=, and bad input."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from consul.aio import Consul
from consul.exceptions import ACLPermissionDenied

from kvs import acl
from kvs.cluster import auth
from kvs.http.acl import new_secret
from kvs.node import Node
from tests.conftest import Api, NodeFactory, Reply, eventually

SECRET = "s3cret-for-tests"


@dataclass
class Caller:
    """Raw HTTP to one node as one token (None: no token)."""

    session: aiohttp.ClientSession
    url: str
    token: str | None = None

    def as_(self, token: str | None) -> Caller:
        return Caller(self.session, self.url, token)

    async def __call__(self, method: str, path: str, body: Any = ..., *,
                       headers: dict[str, str] | None = None, data: bytes | None = None) -> Reply:
        sent = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        sent.update(headers or {})
        return await Api(self.session, self.url).request(method, path, json=body, data=data,
                                                         headers=sent)

    async def token_for(self, name: str, rules: list[dict[str, str]], **flags: Any) -> str:
        policy = await self("POST", "/acl/policies", {"name": name, "rules": rules, **flags})
        assert policy.status == 200, policy.body
        token = await self("POST", "/acl/tokens", {"policies": [name], "description": name})
        assert token.status == 200, token.body
        return str(token.body["secret"])


async def bootstrapped(node: Node, session: aiohttp.ClientSession) -> Caller:
    anonymous = Caller(session, node.url)
    reply = await anonymous("POST", "/acl/bootstrap")
    assert reply.status == 200, reply.body
    return anonymous.as_(reply.body["secret"])


@pytest.fixture
async def acl_node(make_node: NodeFactory) -> Node:
    return await make_node(acl_enabled=True, cluster_secret=SECRET)


@pytest.fixture
async def admin(acl_node: Node, http: aiohttp.ClientSession) -> AsyncIterator[Caller]:
    yield await bootstrapped(acl_node, http)


def rule(prefix: str, access: str) -> dict[str, str]:
    return {"prefix": prefix, "access": access}


# -- bootstrap, and what needs a token -----------------------------------------------------------

async def test_bootstrap_once_then_409(acl_node: Node, admin: Caller) -> None:
    again = await admin.as_(None)("POST", "/acl/bootstrap")
    assert again.status == 409 and again.body["error"] == "conflict"
    tokens = await admin("GET", "/acl/tokens")
    assert [t["policies"] for t in tokens.body["tokens"]] == [["global-management"]]
    assert "secret" not in tokens.body["tokens"][0] and "secret_hash" not in tokens.body["tokens"][0]


async def test_acl_administration_answers_acl_disabled_when_off(api: Any) -> None:
    reply = await api.request("POST", "/acl/bootstrap")
    assert (reply.status, reply.body["error"]) == (401, "acl_disabled")


async def test_without_a_token_every_client_endpoint_is_401(acl_node: Node, admin: Caller) -> None:
    anonymous = admin.as_(None)
    for method, path in [("GET", "/kv/a"), ("PUT", "/kv/a"), ("DELETE", "/kv/a"),
                         ("GET", "/kv/?keys=true"), ("POST", "/txn"), ("GET", "/services"),
                         ("GET", "/cluster/status"), ("GET", "/cluster/members"),
                         ("GET", "/metrics"), ("GET", "/acl/tokens"), ("GET", "/internal/snapshot")]:
        reply = await anonymous(method, path)
        assert reply.status == 401, (method, path, reply.status)
        assert reply.body["error"] == "unauthorized"
    assert (await anonymous("GET", "/health")).status == 200  # acl_anonymous_read: health
    assert (await anonymous("GET", "/openapi.json")).status == 200


async def test_anonymous_metrics_is_configurable(make_node: NodeFactory, http: Any) -> None:
    node = await make_node(acl_enabled=True, acl_anonymous_read=["metrics"])
    anonymous = Caller(http, node.url)
    assert (await anonymous("GET", "/metrics")).status == 200
    assert (await anonymous("GET", "/health")).status == 401


# -- keys --------------------------------------------------------------------------------------

async def test_policy_rules_decide_reads_and_writes(acl_node: Node, admin: Caller) -> None:
    for key in ("app/db", "app/secret/pw", "other"):
        assert (await admin("PUT", f"/kv/{key}", {"value": key})).status == 200
    reader = admin.as_(await admin.token_for("app", [rule("app/", "write"),
                                                    rule("app/secret/", "deny")]))
    assert (await reader("GET", "/kv/app/db")).body["value"] == "app/db"
    assert (await reader("PUT", "/kv/app/db", {"value": 2})).status == 200
    for method, path, body in [("GET", "/kv/app/secret/pw", ...), ("GET", "/kv/other", ...),
                               ("GET", "/kv/other?history=true", ...),
                               ("PUT", "/kv/other", {"value": 1}), ("DELETE", "/kv/other", ...),
                               ("DELETE", "/kv/app/?recurse=true", ...)]:
        reply = await reader(method, path, body)
        assert (reply.status, reply.body["error"]) == (403, "forbidden"), (method, path)
    assert (await admin("GET", "/kv/other")).body["value"] == "other"  # nothing changed
    assert (await admin("GET", "/kv/app/secret/pw")).status == 200


async def test_listings_show_only_readable_keys_without_leaking_counts_or_next(
        acl_node: Node, admin: Caller) -> None:
    for key in ("a/1", "b/1", "a/2", "b/2"):
        await admin("PUT", f"/kv/{key}", {"value": 1})
    reader = admin.as_(await admin.token_for("a", [rule("a/", "read")]))
    page = await reader("GET", "/kv/?keys=true&limit=2")
    assert page.body == {"prefix": "", "keys": ["a/1", "a/2"], "next": None}
    page = await reader("GET", "/kv/?recurse=true&limit=1")
    assert [i["key"] for i in page.body["items"]] == ["a/1"] and page.body["next"] == "a/1"
    page = await reader("GET", "/kv/?keys=true&separator=/")
    assert page.body["keys"] == ["a/"]
    everything = await admin("GET", "/kv/?keys=true")
    assert everything.body["keys"] == ["a/1", "a/2", "b/1", "b/2"]  # no _acl/ keys, ever


async def test_a_prefix_watch_is_not_woken_by_keys_the_token_cannot_read(
        acl_node: Node, admin: Caller) -> None:
    await admin("PUT", "/kv/a/1", {"value": 1})
    reader = admin.as_(await admin.token_for("a", [rule("a/", "read")]))
    index = (await reader("GET", "/kv/?recurse=true")).index
    started = time.monotonic()
    watch = asyncio.ensure_future(reader("GET", f"/kv/?recurse=true&index={index}&wait=600ms"))
    await eventually(lambda: len(acl_node.watchers) == 1, what="the watch to register")
    await admin("PUT", "/kv/b/1", {"value": 1})
    reply = await watch
    assert time.monotonic() - started >= 0.55  # held for its whole wait: b/1 did not count
    assert [i["key"] for i in reply.body["items"]] == ["a/1"]
    watch = asyncio.ensure_future(reader("GET", f"/kv/?recurse=true&index={index}&wait=30s"))
    await eventually(lambda: len(acl_node.watchers) == 1, what="the watch to register")
    await admin("PUT", "/kv/a/2", {"value": 2})
    assert [i["key"] for i in (await watch).body["items"]] == ["a/1", "a/2"]


async def test_the_reserved_prefix_is_invisible_through_every_kv_api(
        acl_node: Node, admin: Caller) -> None:
    # Hidden like kvs's other own keys (_kvs/, _consul/): reads find nothing, writes are refused.
    for path in ("/kv/_acl/tokens/x", "/kv/_acl/bootstrap", "/kv/_acl/bootstrap?history=true"):
        assert (await admin("GET", path)).status == 404, path
    for method, path, body in [("PUT", "/kv/_acl/bootstrap", {"value": 1}),
                               ("DELETE", "/kv/_acl/bootstrap", ...)]:
        reply = await admin(method, path, body)
        assert reply.status == 400 and "_acl/" in reply.body["message"], (method, path)
    txn = await admin("POST", "/txn", {"ops": [{"op": "get", "key": "_acl/bootstrap"}]})
    assert txn.status == 404
    assert (await admin("GET", "/kv/_?keys=true")).body["keys"] == []
    deleted = await admin("DELETE", "/kv/?recurse=true")
    assert deleted.status == 200 and deleted.body["deleted"] == []
    assert (await admin("GET", "/acl/tokens")).status == 200  # the recursive delete spared them
    assert (await admin("GET", "/v1/kv/_acl/bootstrap")).status == 404
    assert (await admin("GET", "/v1/kv/?keys")).status == 200
    assert (await admin("GET", "/v1/kv/?recurse")).status == 404  # nothing visible


async def test_every_txn_op_is_checked_before_anything_is_written(acl_node: Node, admin: Caller) -> None:
    writer = admin.as_(await admin.token_for("w", [rule("w/", "write"), rule("r/", "read")]))
    ops = [{"op": "set", "key": "w/1", "value": 1}, {"op": "get", "key": "r/1"},
           {"op": "set", "key": "r/1", "value": 1}]
    reply = await writer("POST", "/txn", {"ops": ops})
    assert reply.status == 403 and "'r/1'" in reply.body["message"]
    assert (await admin("GET", "/kv/w/1")).status == 404
    assert (await writer("POST", "/txn", {"ops": ops[:2]})).status == 200


async def test_services_follow_the_rules_on_their_keys(acl_node: Node, admin: Caller) -> None:
    await admin("POST", "/services", {"name": "db"})
    web = admin.as_(await admin.token_for("web", [rule("_services/web", "write")]))
    assert (await web("POST", "/services", {"name": "web", "port": 80})).status == 200
    assert (await web("POST", "/services", {"name": "db"})).status == 403
    assert (await web("GET", "/services/db")).status == 403
    assert (await web("DELETE", "/services/db")).status == 403
    assert [s["name"] for s in (await web("GET", "/services")).body["services"]] == ["web"]


# -- operator and management ---------------------------------------------------------------------

async def test_operator_routes(acl_node: Node, admin: Caller) -> None:
    reader = admin.as_(await admin.token_for("ops", [], operator="read"))
    assert (await reader("GET", "/cluster/status")).status == 200
    assert (await reader("GET", "/metrics")).status == 200
    assert (await reader("GET", "/internal/snapshot")).status == 403
    assert (await reader("DELETE", "/cluster/members/nobody")).status == 403
    assert (await reader("GET", "/acl/tokens")).status == 403
    writer = admin.as_(await admin.token_for("ops-w", [], operator="write"))
    snap = await writer("GET", "/internal/snapshot")
    assert snap.status == 200 and snap.headers["Content-Type"] == "application/octet-stream"
    # An operator token takes the signature's place; a member it does not know is a 404.
    assert (await writer("DELETE", "/cluster/members/nobody")).status == 404
    # A request signed with the cluster secret is an operator's, without a token.
    path = "/cluster/status"
    signed = auth.sign(SECRET, "GET", path, b"", int(time.time() * 1000))
    assert (await admin.as_(None)("GET", path, headers=signed)).status == 200
    forged = auth.sign("wrong", "GET", path, b"", int(time.time() * 1000))
    assert (await admin.as_(None)("GET", path, headers=forged)).status == 401
    # Peer routes take only the signature, never a token.
    assert (await admin("POST", "/internal/push", data=b"[]")).status == 401


async def test_quorum_routes_follow_the_route_table(acl_node: Node, admin: Caller) -> None:
    """Quorum keys: the KV rules apply to consistency=quorum reads and writes as to local
    ones; changing the voters is an operator write; the Paxos messages are peers'."""
    reader = admin.as_(await admin.token_for("q", [rule("q/", "read")], operator="read"))
    assert (await admin("PUT", "/kv/q/k", {"value": 1, "consistency": "quorum"})).status == 200
    assert (await reader("GET", "/kv/q/k?consistency=quorum")).body["value"] == 1
    assert (await reader("GET", "/kv/other?consistency=quorum")).status == 403
    assert (await reader("PUT", "/kv/q/k", {"value": 2, "consistency": "quorum"})).status == 403
    assert (await reader("DELETE", "/kv/q/k?consistency=quorum")).status == 403
    assert (await admin("GET", "/kv/_kvs/voters?consistency=quorum")).status == 404  # hidden
    assert (await reader("POST", "/cluster/voters", {})).status == 403
    assert (await admin.as_(None)("POST", "/cluster/voters", {})).status == 401
    writer = admin.as_(await admin.token_for("q-w", [], operator="write"))
    assert (await writer("POST", "/cluster/voters", {})).status == 400  # admitted: the body is bad
    for path in ("/internal/paxos/prepare", "/internal/paxos/accept", "/internal/paxos/install",
                 "/internal/paxos/keys"):
        assert (await admin("POST", path, data=b"{}")).status == 401, path  # no token admits
        signed = auth.sign(SECRET, "POST", path, b"{}", int(time.time() * 1000))
        admitted = await admin.as_(None)("POST", path, data=b"{}", headers=signed)
        assert admitted.status in (200, 400), path  # its handler answered


async def test_revoked_and_expired_tokens_stop_working(acl_node: Node, admin: Caller) -> None:
    made = await admin("POST", "/acl/policies", {"name": "all", "rules": [rule("", "read")]})
    assert made.status == 200
    token = (await admin("POST", "/acl/tokens", {"policies": ["all"]})).body
    user = admin.as_(token["secret"])
    assert (await user("GET", "/acl/token/self")).body["id"] == token["id"]
    assert (await user("GET", "/kv/x")).status == 404  # readable, absent
    assert (await admin("DELETE", f"/acl/tokens/{token['id']}")).status == 200
    reply = await user("GET", "/kv/x")
    assert reply.status == 401 and "not known" in reply.body["message"]
    short = (await admin("POST", "/acl/tokens", {"policies": ["all"], "ttl": 0.3})).body
    assert short["expires_at"] is not None
    brief = admin.as_(short["secret"])

    async def expired() -> bool:
        reply = await brief("GET", "/kv/x")
        return reply.status == 401 and "expired" in reply.body["message"]

    await eventually(expired, what="the token to expire")


async def test_deleting_a_policy_takes_its_rules_from_tokens_at_once(acl_node: Node, admin: Caller) -> None:
    user = admin.as_(await admin.token_for("p", [rule("", "read")]))
    assert (await user("GET", "/kv/x")).status == 404
    assert (await admin("DELETE", "/acl/policies/p")).status == 200
    assert (await user("GET", "/kv/x")).status == 403
    builtin = await admin("DELETE", "/acl/policies/global-management")
    assert builtin.status == 400


async def test_a_secret_is_hashed_once_until_a_token_or_policy_changes(
        acl_node: Node, admin: Caller, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hot path: a secret seen before costs no SHA-256 (docs/benchmarks.md, ACLs);
    secrets that match no token are never kept, so guessing cannot fill the cache; a
    token in use follows its policy being replaced."""
    hashed: list[str] = []
    real = acl.hash_secret
    monkeypatch.setattr(acl, "hash_secret", lambda secret: hashed.append(secret) or real(secret))
    secret = await admin.token_for("p", [rule("", "read")])
    hashed.clear()  # making the token hashed it to store it
    user = admin.as_(secret)
    for _ in range(3):
        assert (await user("GET", "/kv/x")).status == 404
    assert hashed.count(secret) == 1
    for _ in range(2):
        assert (await admin.as_("no-such-token")("GET", "/kv/x")).status == 401
    assert hashed.count("no-such-token") == 2
    assert (await admin("POST", "/acl/policies", {"name": "other", "rules": []})).status == 200
    assert (await user("GET", "/kv/x")).status == 404
    assert hashed.count(secret) == 2  # any change: looked up, and its rules compiled, afresh
    assert (await user("PUT", "/kv/x", {"value": 1})).status == 403
    assert (await admin("DELETE", "/acl/policies/p")).status == 200
    assert (await admin("POST", "/acl/policies", {"name": "p", "rules": [rule("", "write")]})).status == 200
    assert (await user("PUT", "/kv/x", {"value": 1})).status == 200  # the replaced rules apply


# -- Consul's /v1/ -------------------------------------------------------------------------------

async def test_consul_clients_send_their_token(acl_node: Node, admin: Caller) -> None:
    secret = await admin.token_for("cfg", [rule("config/", "write")])
    async with Consul(host="127.0.0.1", port=acl_node.port, token=secret) as consul:
        assert await consul.kv.put("config/db", "postgres") is True
        _, item = await consul.kv.get("config/db")
        assert item["Value"] == b"postgres"
        with pytest.raises(ACLPermissionDenied):
            await consul.kv.put("other", "x")
        txn = [{"KV": {"Verb": "set", "Key": "config/a", "Value": "MQ=="}},
               {"KV": {"Verb": "set", "Key": "other", "Value": "MQ=="}}]
        with pytest.raises(ACLPermissionDenied):
            await consul.txn.put(txn)
    await admin("PUT", "/kv/other2", {"value": 1})
    async with Consul(host="127.0.0.1", port=acl_node.port, token=secret) as consul:
        _, keys = await consul.kv.get("", keys=True)
        assert keys == ["config/db"]  # neither other2 nor anything under _acl/
    async with Consul(host="127.0.0.1", port=acl_node.port) as consul:
        with pytest.raises(ACLPermissionDenied):
            await consul.kv.get("config/db")
    assert (await admin("GET", "/kv/config/a")).status == 404  # the denied txn wrote nothing
    by_query = await admin.as_(None)("GET", f"/v1/kv/config/db?token={secret}")
    assert by_query.status == 200
    unknown = await admin.as_(None)("GET", "/v1/kv/config/db", headers={"X-Consul-Token": "nope"})
    assert (unknown.status, unknown.body.split(":")[0]) == (403, "ACL not found")


# -- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("headers", "problem"), [
    ({"Authorization": "Basic dXNlcjpwdw=="}, "must be 'Bearer <token>'"),
    ({"Authorization": "Bearer"}, "the token is empty"),
    ({"X-KVS-Token": "x" * 300}, "longer than 256"),
    ({"X-KVS-Token": "two words"}, "without spaces"),
    ({"X-KVS-Token": "not-a-token"}, "not known to this node"),
])
async def test_malformed_or_unknown_tokens_are_401_naming_the_problem(
        acl_node: Node, admin: Caller, headers: dict[str, str], problem: str) -> None:
    reply = await admin.as_(None)("PUT", "/kv/a", {"value": 1}, headers=headers)
    assert reply.status == 401 and problem in reply.body["message"]
    assert (await admin("GET", "/kv/a")).status == 404


async def test_a_huge_token_header_is_refused_cleanly(acl_node: Node, admin: Caller) -> None:
    reply = await admin.as_(None)("PUT", "/kv/a", {"value": 1}, headers={"X-KVS-Token": "x" * 100_000})
    assert 400 <= reply.status < 500
    assert (await admin("GET", "/kv/a")).status == 404
    assert (await admin("GET", "/health")).status == 200


async def test_bad_administration_requests_are_4xx_and_change_nothing(acl_node: Node, admin: Caller) -> None:
    before = (await admin("GET", "/acl/policies")).body, (await admin("GET", "/acl/tokens")).body
    cases = [
        ("POST", "/acl/policies", {"name": "p", "rules": [rule("a", "admin")]}, 400, "access"),
        ("POST", "/acl/policies", {"name": "p", "rules": [rule("a", "read"), rule("a", "write")]},
         400, "overlap"),
        ("POST", "/acl/policies", {"name": "p", "rules": [rule("\u0001", "read")]}, 400, "prefix"),
        ("POST", "/acl/policies", b"{not json", 400, "JSON"),
        ("POST", "/acl/policies", {"name": "global-management"}, 409, "exists"),
        ("POST", "/acl/tokens", {"policies": ["nope"]}, 400, "unknown policy 'nope'"),
        ("POST", "/acl/tokens", {"policies": []}, 400, "non-empty"),
        ("POST", "/acl/tokens", {"policies": ["global-management"], "ttl": -1}, 400, "ttl"),
        ("POST", "/acl/tokens", {"policies": ["global-management"], "expires_at": 5}, 400, "future"),
        ("POST", "/acl/tokens", {"policies": ["global-management"], "secret": "x"}, 400, "secret"),
        ("DELETE", "/acl/tokens/4f8e5c1e-0000-4000-8000-000000000000", ..., 404, "not found"),
        ("DELETE", "/acl/tokens/not-a-uuid", ..., 400, "not a UUID"),
        ("GET", "/acl/tokens/not-a-uuid", ..., 400, "not a UUID"),
        ("DELETE", "/acl/policies/nope", ..., 404, "not found"),
        ("DELETE", "/acl/policies/bad%20name", ..., 400, "policy name"),
        ("GET", "/acl/tokens?x=1", ..., 400, "unknown query parameter"),
    ]
    for method, path, body, status, words in cases:
        data = body if isinstance(body, bytes) else None
        reply = await admin(method, path, ... if data is not None else body, data=data)
        assert (reply.status, words in reply.body["message"]) == (status, True), (path, body, reply.body)
    after = (await admin("GET", "/acl/policies")).body, (await admin("GET", "/acl/tokens")).body
    assert after == before


async def test_a_consul_session_is_renewed_or_destroyed_only_by_its_creator(
        acl_node: Node, admin: Caller) -> None:
    """Destroying a session releases its locks (or deletes its keys): a token that may only
    read must not do it to someone else's session."""
    holder = admin.as_(await admin.token_for("holder", [rule("app/", "write")]))
    reader = admin.as_(await admin.token_for("reader", [rule("app/", "read")]))
    created = await holder("PUT", "/v1/session/create", {"TTL": "30s", "Behavior": "delete"})
    assert created.status == 200, created.body
    session = created.body["ID"]
    assert (await holder("PUT", f"/v1/kv/app/lock?acquire={session}", data=b"me")).body is True
    for verb in ("renew", "destroy"):
        refused = await reader("PUT", f"/v1/session/{verb}/{session}")
        assert refused.status == 403, (verb, refused.body)
    info = await holder("GET", f"/v1/session/info/{session}")
    assert [s["ID"] for s in info.body] == [session] and "_owner" not in info.body[0]
    assert (await holder("GET", "/v1/kv/app/lock?raw")).status == 200  # still held, not deleted
    assert (await holder("PUT", f"/v1/session/renew/{session}")).status == 200
    assert (await admin("PUT", f"/v1/session/destroy/{session}")).body is True  # management may
    assert (await holder("GET", f"/v1/session/info/{session}")).body == []


def test_a_new_secret_never_reads_as_a_command_line_option() -> None:
    """kvs --token SECRET: a secret beginning with "-" would be taken for an option."""
    made = [new_secret() for _ in range(2000)]
    assert not any(secret.startswith("-") for secret in made)
    assert len(set(made)) == len(made) and all(acl.malformed_secret(s) is None for s in made)
