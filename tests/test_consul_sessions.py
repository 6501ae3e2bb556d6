"""Consul sessions and locks (/v1/session/*, PUT /v1/kv ?acquire/?release), driven by
py-consul and raw HTTP against real nodes (real RocksDB, real aiohttp on 127.0.0.1).

Expiry is tested with consul_session_min_ttl_seconds lowered to 1 (Consul's bound is
10) so a session lives its 1s TTL plus Consul's grace (2s in all), not 20s.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from consul.aio import Consul
from consul.exceptions import ClientError
from consul.exceptions import NotFound as ConsulNotFound

from kvs.errors import BadRequest
from kvs.http.consul.locks import LockState
from kvs.http.consul.sessions import parse_session, session_ttl, ttl_ms
from kvs.node import Node
from tests.cluster import start_cluster, three
from tests.conftest import NodeFactory, eventually

pytestmark = pytest.mark.filterwarnings("ignore:ssl_context is deprecated:DeprecationWarning")

SHORT_TTL = {"consul_session_min_ttl_seconds": 1, "ttl_sweep_interval_ms": 100}


@pytest.fixture
async def consul(node: Node) -> AsyncIterator[Consul]:
    async with Consul(host="127.0.0.1", port=node.port) as client:
        yield client


async def raw(http: aiohttp.ClientSession, node: Node, method: str, path: str,
              data: bytes | None = None) -> tuple[int, bytes]:
    async with http.request(method, node.url + path, data=data) as resp:
        return resp.status, await resp.read()


async def create(http: aiohttp.ClientSession, node: Node, **body: Any) -> str:
    status, answer = await raw(http, node, "PUT", "/v1/session/create", json.dumps(body).encode())
    assert status == 200, answer
    return str(json.loads(answer)["ID"])


async def holder(http: aiohttp.ClientSession, node: Node, key: str) -> str | None:
    status, answer = await raw(http, node, "GET", f"/v1/kv/{key}")
    assert status == 200, answer
    return json.loads(answer)[0].get("Session")  # type: ignore[no-any-return]


async def test_session_create_info_list_renew_destroy(consul: Consul, node: Node) -> None:
    sid = await consul.session.create(name="web-lock", ttl=30, behavior="delete", lock_delay=5)
    _, info = await consul.session.info(sid)
    assert info["ID"] == sid and info["Name"] == "web-lock" and info["Behavior"] == "delete"
    assert info["TTL"] == "30s" and info["LockDelay"] == 5_000_000_000
    assert info["Node"] == node.engine.node_id
    assert info["CreateIndex"] == info["ModifyIndex"] >= 1
    plain = await consul.session.create()  # Consul's defaults: release, 15s delay, no TTL
    _, listed = await consul.session.list()
    by_id = {s["ID"]: s for s in listed}
    assert set(by_id) == {sid, plain}
    assert by_id[plain]["Behavior"] == "release" and by_id[plain]["TTL"] == ""
    assert by_id[plain]["LockDelay"] == 15_000_000_000
    _, mine = await consul.session.node(node.engine.node_id)
    assert {s["ID"] for s in mine} == {sid, plain}
    assert (await consul.session.node("elsewhere"))[1] == []
    renewed = await consul.session.renew(sid)
    assert renewed["ID"] == sid and renewed["ModifyIndex"] > info["ModifyIndex"]
    assert await consul.session.destroy(sid) is True
    assert (await consul.session.info(sid))[1] is None
    with pytest.raises(ConsulNotFound):
        await consul.session.renew(sid)
    assert await consul.session.destroy(sid) is True  # gone already: still true, as Consul


async def test_lock_acquire_and_release_through_two_clients(node: Node) -> None:
    async with Consul(host="127.0.0.1", port=node.port) as one, \
            Consul(host="127.0.0.1", port=node.port) as two:
        s1, s2 = await one.session.create(lock_delay=0), await two.session.create(lock_delay=0)
        assert await one.kv.put("svc/leader", "one", acquire=s1) is True
        _, item = await two.kv.get("svc/leader")
        assert item["Session"] == s1 and item["LockIndex"] == 1 and item["Value"] == b"one"
        assert await two.kv.put("svc/leader", "two", acquire=s2) is False
        assert await two.kv.put("svc/leader", "two", release=s2) is False  # not its lock
        assert (await one.kv.get("svc/leader"))[1]["Value"] == b"one"  # refusals wrote nothing
        assert await one.kv.put("svc/leader", "one again", acquire=s1) is True  # the holder
        assert (await one.kv.get("svc/leader"))[1]["LockIndex"] == 1
        assert await one.kv.put("svc/leader", "released", release=s1) is True
        _, item = await two.kv.get("svc/leader")
        assert "Session" not in item and item["LockIndex"] == 1 and item["Value"] == b"released"
        assert await two.kv.put("svc/leader", "two", acquire=s2) is True  # no delay on release
        _, item = await one.kv.get("svc/leader")
        assert item["Session"] == s2 and item["LockIndex"] == 2
        assert await one.kv.put("svc/leader", "plain write") is True  # Consul allows it
        assert (await one.kv.get("svc/leader"))[1]["Session"] == s2


async def test_session_expiry_releases_its_lock(make_node: NodeFactory, http: aiohttp.ClientSession) -> None:
    node = await make_node(**SHORT_TTL)
    sid = await create(http, node, TTL="1s", LockDelay="0s")
    async with Consul(host="127.0.0.1", port=node.port) as one, \
            Consul(host="127.0.0.1", port=node.port) as two:
        other = await two.session.create(lock_delay=0)
        assert await one.kv.put("job", "one", acquire=sid) is True
        assert await two.kv.put("job", "two", acquire=other) is False
        assert await holder(http, node, "job") == sid
        await eventually(_negate(lambda: holder(http, node, "job")), timeout=15,
                         what="the expired session's lock to be released")
        assert (await one.session.info(sid))[1] is None
        assert await two.kv.put("job", "two", acquire=other) is True
        assert (await one.kv.get("job"))[1]["LockIndex"] == 2


def _negate(check: Any) -> Any:
    async def negated() -> bool:
        return not await check()
    return negated


async def test_destroy_with_behavior_delete_deletes_and_lock_delay_holds(
        make_node: NodeFactory, http: aiohttp.ClientSession) -> None:
    node = await make_node(**SHORT_TTL)
    doomed = await create(http, node, Behavior="delete", LockDelay="0s")
    delayed = await create(http, node, LockDelay="1s")
    other = await create(http, node, LockDelay="0s")
    assert (await raw(http, node, "PUT", f"/v1/kv/eph?acquire={doomed}", b"x")) == (200, b"true")
    assert (await raw(http, node, "PUT", f"/v1/kv/held?acquire={delayed}", b"y")) == (200, b"true")
    for sid in (doomed, delayed):
        assert (await raw(http, node, "PUT", f"/v1/session/destroy/{sid}")) == (200, b"true")
    assert (await raw(http, node, "GET", "/v1/kv/eph"))[0] == 404  # deleted with its session
    assert await holder(http, node, "held") is None  # released at once...
    # ...but not to be taken by another session within the destroyed one's lock delay.
    assert (await raw(http, node, "PUT", f"/v1/kv/held?acquire={other}", b"z")) == (200, b"false")

    async def taken() -> bool:
        return (await raw(http, node, "PUT", f"/v1/kv/held?acquire={other}", b"z")) == (200, b"true")
    await eventually(taken, timeout=10, interval=0.1, what="the lock delay to pass")


async def test_sessions_and_locks_are_invisible_to_kv(
        consul: Consul, node: Node, http: aiohttp.ClientSession) -> None:
    sid = await consul.session.create()
    assert await consul.kv.put("a", "1", acquire=sid) is True
    assert (await consul.kv.get("", keys=True))[1] == ["a"]
    assert [i["Key"] for i in (await consul.kv.get("", recurse=True))[1]] == ["a"]
    status, body = await raw(http, node, "GET", "/kv/?keys=true")
    assert status == 200 and json.loads(body)["keys"] == ["a"]
    for path in (f"/kv/_consul/session/{sid}", "/kv/_consul/lock/a", f"/v1/kv/_consul/session/{sid}",
                 f"/kv/_consul/session/{sid}?history=true"):
        assert (await raw(http, node, "GET", path))[0] == 404, path
    assert (await raw(http, node, "DELETE", "/v1/kv/?recurse"))[0] == 200
    assert (await consul.session.info(sid))[1]["ID"] == sid  # a delete-all spares sessions
    assert (await raw(http, node, "PUT", "/kv/_consul/session/x", b'{"value": 1}'))[0] == 400
    for op, status in (({"op": "get"}, 404), ({"op": "set", "value": 1}, 400)):
        body = json.dumps({"ops": [{**op, "key": "_consul/lock/a"}]}).encode()
        assert (await raw(http, node, "POST", "/txn", body))[0] == status, op  # neither reads nor writes


async def test_bad_session_input_is_a_plain_text_400_and_writes_nothing(
        node: Node, http: aiohttp.ClientSession) -> None:
    cases = [
        (b'{"TTL": "10x"}', "invalid TTL"), (b'{"TTL": "5s"}', "between [10s=86400s]"),
        (b'{"TTL": "86401s"}', "between"), (b'{"TTL": 30}', "invalid TTL"),
        (b'{"Behavior": "explode"}', "Behavior"), (b'{"LockDelay": "soon"}', "LockDelay"),
        (b'{"LockDelay": "61s"}', "LockDelay"), (b'{"Name": 5}', "Name"),
        (b'{"Checks": ["service:web"]}', "not supported"), (b"{nope", "decode failed"),
        (b"[1]", "JSON object"),
    ]
    index = node.engine.index
    for body, words in cases:
        async with http.put(node.url + "/v1/session/create", data=body) as resp:
            text = await resp.text()
            assert resp.status == 400, (body, text)
            assert words.lower() in text.lower(), (body, text)
            assert not resp.headers["Content-Type"].startswith("application/json")
    status, text = await raw(http, node, "PUT", "/v1/kv/k?acquire=00000000-0000-0000-0000-000000000000", b"v")
    assert status == 400 and b"invalid session" in text
    assert node.engine.index == index  # nothing written
    assert (await raw(http, node, "GET", "/v1/session/list")) == (200, b"[]")


async def test_with_three_voters_a_lock_taken_through_a_is_refused_on_b_at_once(
        make_node: NodeFactory, http: aiohttp.ClientSession) -> None:
    """Replication is off (no eager push, anti-entropy rare), so b learns of a's lock only
    through the quorum CAS on the lock record: a node-local CAS would grant it on b."""
    a, b, c = await three(make_node, eager_push=False, sync_interval_ms=600_000, **SHORT_TTL)
    sessions = [await create(http, n, LockDelay="0s") for n in (a, b, c)]
    assert (await raw(http, a, "PUT", f"/v1/kv/leader?acquire={sessions[0]}", b"a")) == (200, b"true")
    assert (await raw(http, b, "PUT", f"/v1/kv/leader?acquire={sessions[1]}", b"b")) == (200, b"false")
    assert (await raw(http, c, "PUT", f"/v1/kv/leader?release={sessions[2]}", b"c")) == (200, b"false")
    # Racing acquires of another lock through the three nodes: exactly one wins.
    answers = await asyncio.gather(*[raw(http, n, "PUT", f"/v1/kv/race?acquire={sid}", b"x")
                                     for n, sid in zip((a, b, c), sessions, strict=True)])
    assert sorted(body for _, body in answers) == [b"false", b"false", b"true"], answers
    # Destroyed through a, the session's lock is free for b's session through b.
    assert (await raw(http, a, "PUT", f"/v1/session/destroy/{sessions[0]}")) == (200, b"true")
    assert (await raw(http, b, "PUT", f"/v1/kv/leader?acquire={sessions[1]}", b"b")) == (200, b"true")
    assert await holder(http, b, "leader") == sessions[1]
    status, body = await raw(http, a, "PUT", "/v1/txn", json.dumps(
        [{"KV": {"Verb": "lock", "Key": "t", "Session": sessions[0]}}]).encode())
    assert status == 400 and b"more than one voter" in body
    # A session that expires on c (the only node that has it) is invalidated by c's sweep,
    # through the quorum: b's session gets its lock.
    short = await create(http, c, TTL="1s", LockDelay="0s")
    assert (await raw(http, c, "PUT", f"/v1/kv/expiring?acquire={short}", b"c")) == (200, b"true")
    assert (await raw(http, b, "PUT", f"/v1/kv/expiring?acquire={sessions[1]}", b"b")) == (200, b"false")

    async def expired_for_b() -> bool:
        answer = await raw(http, b, "PUT", f"/v1/kv/expiring?acquire={sessions[1]}", b"b")
        return answer == (200, b"true")
    await eventually(expired_for_b, timeout=15, interval=0.2, what="c's expired session's lock freed")


async def test_a_lock_taken_through_one_node_is_refused_on_another(
        make_node: NodeFactory, http: aiohttp.ClientSession) -> None:
    """One voter (the first node alone): once the lock has replicated. Two acquires
    racing on two nodes before they meet can both win here; with more than one voter
    the quorum CAS settles it (the test above)."""
    a, b = await start_cluster(make_node, 2, auto_voter=False, **SHORT_TTL)
    on_a = await create(http, a, LockDelay="0s")
    on_b = await create(http, b, LockDelay="0s")
    assert (await raw(http, a, "PUT", f"/v1/kv/shared?acquire={on_a}", b"a")) == (200, b"true")

    async def seen_on_b() -> bool:
        status, body = await raw(http, b, "GET", "/v1/kv/shared")
        return status == 200 and json.loads(body)[0].get("Session") == on_a
    await eventually(seen_on_b, what="the lock to replicate to b")
    assert (await raw(http, b, "PUT", f"/v1/kv/shared?acquire={on_b}", b"b")) == (200, b"false")
    # Destroyed through a: b sees the lock freed, and b's session takes it there.
    assert (await raw(http, a, "PUT", f"/v1/session/destroy/{on_a}")) == (200, b"true")

    async def taken_on_b() -> bool:
        return (await raw(http, b, "PUT", f"/v1/kv/shared?acquire={on_b}", b"b")) == (200, b"true")
    await eventually(taken_on_b, interval=0.1, what="b to see the lock freed")
    async def b_holds_on_a() -> bool:
        return await holder(http, a, "shared") == on_b
    await eventually(b_holds_on_a, what="a to see b's lock")


async def test_a_lock_held_with_one_voter_stays_held_once_there_are_two(
        make_node: NodeFactory, http: aiohttp.ClientSession) -> None:
    """With one voter a lock is a local CAS on its record; with two, a quorum CAS. The
    first quorum round on a record no round has changed starts from the node's copy:
    before, it saw no record, and b's session took the lock a's session held."""
    a, b = await start_cluster(make_node, 2, auto_voter=False, **SHORT_TTL)
    on_a = await create(http, a, LockDelay="0s")
    on_b = await create(http, b, LockDelay="0s")
    assert (await raw(http, a, "PUT", f"/v1/kv/shared?acquire={on_a}", b"a")) == (200, b"true")

    async def seen_on_b() -> bool:
        return await holder(http, b, "shared") == on_a
    await eventually(seen_on_b, what="the lock to replicate to b")
    async with http.post(a.url + "/cluster/voters", json={"add": b.engine.node_id}) as reply:
        assert reply.status == 200, await reply.text()
    assert b.engine.voters is not None and len(b.engine.voters.voters) == 2
    assert (await raw(http, b, "PUT", f"/v1/kv/shared?acquire={on_b}", b"b")) == (200, b"false")
    assert await holder(http, a, "shared") == on_a
    # Released through a (a quorum round now), b's session takes it.
    assert (await raw(http, a, "PUT", f"/v1/kv/shared?release={on_a}", b"a")) == (200, b"true")
    assert (await raw(http, b, "PUT", f"/v1/kv/shared?acquire={on_b}", b"b")) == (200, b"true")


async def test_txn_lock_unlock_check_session(consul: Consul, node: Node) -> None:
    sid, other = await consul.session.create(lock_delay=0), await consul.session.create(lock_delay=0)
    result = await consul.txn.put([
        {"KV": {"Verb": "lock", "Key": "t/l", "Value": "", "Session": sid}},
        {"KV": {"Verb": "check-session", "Key": "t/l", "Session": sid}},
    ])
    assert result["Errors"] is None
    assert [(r["KV"]["Key"], r["KV"]["Session"], r["KV"]["LockIndex"]) for r in result["Results"]] \
        == [("t/l", sid, 1)]
    index = node.engine.index
    for ops, what in [
        ([{"KV": {"Verb": "set", "Key": "t/x", "Value": ""}},
          {"KV": {"Verb": "lock", "Key": "t/l", "Session": other}}],
         'failed to lock key "t/l", lock is already held'),
        ([{"KV": {"Verb": "unlock", "Key": "t/l", "Session": other}}],
         'failed to unlock key "t/l", lock isn\'t held, or is held by another session'),
        ([{"KV": {"Verb": "check-session", "Key": "t/l", "Session": other}}],
         f'failed session check for key "t/l", current session "{sid}" != "{other}"'),
        ([{"KV": {"Verb": "lock", "Key": "t/m", "Session": "nope"}}],
         'failed to lock key "t/m": invalid session "nope"'),
    ]:
        with pytest.raises(ClientError) as failed:
            await consul.txn.put(ops)
        status, _, body = str(failed.value).partition(" ")
        assert status == "409" and json.loads(body)["Errors"][-1]["What"] == what
    assert node.engine.index == index  # the failing transactions wrote nothing
    result = await consul.txn.put([{"KV": {"Verb": "unlock", "Key": "t/l", "Session": sid}}])
    assert "Session" not in result["Results"][0]["KV"]
    assert (await consul.kv.put("t/l", "o", acquire=other)) is True
    assert (await consul.kv.get("t/l"))[1]["LockIndex"] == 2


# -- the pure parts, directly ----------------------------------------------------------------------

def test_lock_state_rules() -> None:
    one = {"ID": "s1", "Behavior": "delete", "LockDelay": 2_000_000_000}
    two = {"ID": "s2", "Behavior": "release", "LockDelay": 0}
    held = LockState().acquired(one, now_ms=100)
    assert held == LockState("s1", 1, "delete", 2000, 0)
    assert held.acquired(one, 100) == held  # the holder again: same LockIndex
    assert held.acquired(two, 100) is None and held.released("s2") is None
    released = held.released("s1")
    assert released is not None and released.session is None and released.delay_until_ms == 0
    assert released.acquired(two, 100) == LockState("s2", 2, "release", 0, 0)
    gone = held.invalidated(now_ms=100)
    assert gone.session is None and gone.delay_until_ms == 2100
    assert gone.acquired(two, 2099) is None and gone.acquired(two, 2100) is not None
    assert LockState.of(held.to_json()) == held and LockState.of(None) == LockState()


@pytest.mark.parametrize(("body", "expected"), [
    (b"", {"Name": "", "Node": "n1", "LockDelay": 15_000_000_000, "Behavior": "release", "TTL": ""}),
    (b'{"name": "x", "ttl": "1m", "lockdelay": "0s", "behavior": "delete", "node": "n2"}',
     {"Name": "x", "Node": "n2", "LockDelay": 0, "Behavior": "delete", "TTL": "1m"}),
    (b'{"TTL": "0s", "LockDelay": 3, "Checks": ["serfHealth"]}',
     {"Name": "", "Node": "n1", "LockDelay": 3_000_000_000, "Behavior": "release", "TTL": ""}),
    (b'{"LockDelay": 5000000000, "Unknown": 1}',
     {"Name": "", "Node": "n1", "LockDelay": 5_000_000_000, "Behavior": "release", "TTL": ""}),
])
def test_parse_session(body: bytes, expected: dict[str, Any]) -> None:
    assert parse_session(body, "n1", 10) == expected


def test_session_ttl_bounds_and_grace() -> None:
    assert session_ttl("1s", 1) == "1s"
    with pytest.raises(BadRequest, match="between"):
        session_ttl("1s", 10)
    assert ttl_ms({"TTL": "10s"}) == 20_000 and ttl_ms({"TTL": ""}) is None
