"""Membership operations on in-process clusters: settings checked at join, removing and
reaping gone members, and their rejoining (real sockets, real RocksDB)."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from kvs import cli
from kvs.cluster import auth
from kvs.node import Node
from tests.cluster import FAST, start_cluster
from tests.conftest import Api, NodeFactory, Reply, eventually


def listed(node: Node) -> dict[str, str]:
    return {m["id"]: m["state"] for m in node.membership.members()}


async def test_a_node_with_another_revision_history_limit_is_refused_on_both_sides(
        make_node: NodeFactory, http: aiohttp.ClientSession) -> None:
    seed = await make_node(**FAST, revision_history_limit=10)
    joiner = await make_node(**FAST, revision_history_limit=3, seed_nodes=[seed.address])

    def refused(node: Node) -> list[str]:
        return [r["message"] for r in node.membership.status()["incompatible_peers"]]

    await eventually(lambda: refused(seed) and refused(joiner), what="both sides to refuse")
    assert refused(seed) == [f"settings that must be equal on every node differ: "
                             f"revision_history_limit is 10 here but 3 on "
                             f"{joiner.engine.node_id} ({joiner.address})"]
    assert refused(joiner) == [f"settings that must be equal on every node differ: "
                               f"revision_history_limit is 3 here but 10 on "
                               f"{seed.engine.node_id} ({seed.address})"]
    status = (await Api(http, joiner.url).request("GET", "/cluster/status")).body
    assert "revision_history_limit is 3 here but 10" in status["incompatible_peers"][0]["message"]
    # The joiner keeps retrying (as Consul's retry_join) and is refused every time.
    refusals_before = seed.membership.status()["incompatible_peers"][0]["at"]
    await eventually(lambda: seed.membership.status()["incompatible_peers"][0]["at"]
                     > refusals_before, what="a retried join")
    for node in (seed, joiner):
        assert list(listed(node)) == [node.engine.node_id]
        assert node.membership.alive_peers() == []
        assert node.replicator.stats.rounds == 0


async def test_a_refused_message_is_answered_409_with_the_settings_and_applies_nothing(
        make_node: NodeFactory, http: aiohttp.ClientSession) -> None:
    node = await make_node(**FAST)
    sender = {"id": "x", "address": "127.0.0.1:1", "joined_at": 1, "state": "alive",
              "incarnation": 1}
    theirs = {**node.membership.settings, "tombstone_gc_seconds": 60}
    reply = await Api(http, node.url).request(
        "POST", "/internal/swim/join", json={"from": sender, "settings": theirs, "members": []})
    assert reply.status == 409
    assert reply.body["error"] == "incompatible_settings"
    assert "tombstone_gc_seconds is 86400 here but 60 on x (127.0.0.1:1)" in reply.body["message"]
    assert reply.body["settings"] == node.membership.settings
    assert "x" not in listed(node)


async def test_a_dead_member_is_removed_on_request_and_rejoins_when_restarted(
        make_node: NodeFactory, http: aiohttp.ClientSession) -> None:
    # auto_voter off: b and c would join the voters at moments of their own, and a removal
    # of dead c from voters {a, c} (b not yet added) has no majority. Voters: test_quorum_voters.
    a, b, c = await start_cluster(make_node, 3, cluster_secret="s3cret", auto_voter=False)
    c_id, c_dir = c.engine.node_id, c.config.data_dir
    path = f"/cluster/members/{c_id}"
    assert (await Api(http, a.url).request("DELETE", path)).status == 401  # unsigned
    signed = await _delete(http, a.url, path, "s3cret")
    assert signed.status == 409 and signed.body["error"] == "not_removable"  # c is alive
    await c.stop()
    await eventually(lambda: listed(a).get(c_id) == listed(b).get(c_id) == "dead", timeout=15,
                     what="c dead on a and b")
    code = await asyncio.to_thread(cli.main, ["members", "remove", c_id, "--node", a.url,
                                              "--secret", "s3cret"])
    assert code == 0
    assert c_id not in listed(a)
    await eventually(lambda: c_id not in listed(b), what="the removal gossiped to b")
    assert (await _delete(http, a.url, path, "s3cret")).status == 404  # gone already
    back = await make_node(**FAST, cluster_secret="s3cret", data_dir=c_dir,
                           seed_nodes=[a.address], auto_voter=False)
    assert back.engine.node_id == c_id
    await eventually(lambda: listed(a).get(c_id) == listed(b).get(c_id) == "alive",
                     timeout=15, what="the restarted node alive again on a and b")


async def test_dead_members_are_reaped_after_reap_after_seconds(make_node: NodeFactory) -> None:
    a, b, c = await start_cluster(make_node, 3, reap_after_seconds=1)
    c_id = c.engine.node_id
    await c.stop()
    await eventually(lambda: listed(a).get(c_id) == "dead", timeout=15, what="c dead")
    await eventually(lambda: c_id not in listed(a) and c_id not in listed(b), timeout=5,
                     what="c reaped on a and b")
    assert set(listed(a)) == set(listed(b)) == {a.engine.node_id, b.engine.node_id}


async def _delete(http: aiohttp.ClientSession, url: str, path: str, secret: str) -> Reply:
    headers = auth.sign(secret, "DELETE", path, b"", int(time.time() * 1000))
    async with http.delete(url + path, headers=headers) as resp:
        return Reply(resp.status, await resp.json(), resp.headers)
