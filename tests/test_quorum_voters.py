"""Changing the voters of quorum keys (POST /cluster/voters): one voter at a time, with the
new epoch installed everywhere and every quorum key rescanned; a joining node that adds
itself once it has caught up (auto_voter). Real in-process nodes."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from kvs.node import Node
from tests.cluster import FAST, QUORUM, heal, partition, three
from tests.conftest import Api, NodeFactory, eventually

Q = QUORUM


async def test_remove_then_add_a_voter(make_node: NodeFactory, http: aiohttp.ClientSession) -> None:
    nodes = await three(make_node)
    qa, qb, qc = nodes
    a, b = Api(http, qa.url), Api(http, qb.url)
    assert (await a.put("k", {"value": 1, **Q})).status == 200

    removed = await a.request("POST", "/cluster/voters", json={"remove": "qc"})
    assert (removed.status, removed.body) == (200, {"epoch": 2, "ids": ["qa", "qb"]}), removed.body
    for node in nodes:  # the removed voter was told too
        assert node.engine.voters is not None and node.engine.voters.epoch == 2
    await qc.stop()
    wrote = await b.put("k", {"value": 2, "if_seq": 1, **Q})  # both remaining voters needed
    assert (wrote.status, wrote.body["seq"]) == (200, 2), wrote.body

    qd = await make_node(node_id="qd", seed_nodes=[qa.address], auto_voter=False, **FAST)
    await eventually(lambda: all(n.membership.member("qd") for n in (qa, qb)), what="qd to join")
    added = await b.request("POST", "/cluster/voters", json={"add": "qd"})
    assert (added.status, added.body) == (200, {"epoch": 3, "ids": ["qa", "qb", "qd"]}), added.body
    assert qd.engine.voters is not None and qd.engine.voters.epoch == 3
    # qd counts now: with qa cut off, qb and qd are a majority of the three voters.
    partition([qa], [qb, qd])
    moved = await b.put("k", {"value": 3, "if_seq": 2, **Q})
    assert (moved.status, moved.body["seq"]) == (200, 3), moved.body
    heal([qa, qb, qd])
    read = await Api(http, qd.url).get("k", consistency="quorum")
    assert (read.body["value"], read.body["seq"]) == (3, 3)


async def test_bad_voter_changes_are_400s_that_change_nothing(make_node: NodeFactory,
                                                              http: aiohttp.ClientSession) -> None:
    node = await make_node()
    api = Api(http, node.url)
    me = node.engine.node_id
    for body, words in (({"add": me}, "already a voter"), ({"remove": "nobody"}, "not a voter"),
                        ({"remove": me}, "not a voter that can be removed"),
                        ({"add": "x", "remove": "y"}, "body must be"), ({"add": 5}, "body must be"),
                        ({}, "body must be")):
        reply = await api.request("POST", "/cluster/voters", json=body)
        assert reply.status == 400 and words in reply.body["message"], (body, reply.body)
    for body, status, words in (({}, 400, "body must be"), ({"id": 5}, 400, "body must be"),
                                ({"id": "nobody"}, 409, "not an alive member")):
        reply = await api.request("POST", "/internal/voters/join", json=body)
        assert reply.status == status and words in reply.body["message"], (body, reply.body)
    assert node.engine.voters is not None and node.engine.voters.epoch == 1
    local = await api.put("_kvs/voters", {"value": 1})
    assert local.status == 400 and "kvs's own" in local.body["message"]


async def test_members_remove_and_leave_take_a_voter_out_first(make_node: NodeFactory,
                                                               http: aiohttp.ClientSession) -> None:
    nodes = await three(make_node)
    qa, qb, qc = nodes
    a = Api(http, qa.url)
    await qc.stop()
    await eventually(lambda: (m := qa.membership.member("qc")) is not None and m.state == "dead",
                     timeout=20, what="qc to be declared dead")
    removed = await a.request("DELETE", "/cluster/members/qc")
    assert removed.status == 200, removed.body
    assert qa.engine.voters is not None
    assert (qa.engine.voters.epoch, sorted(qa.engine.voters.voters)) == (2, ["qa", "qb"])
    left = await Api(http, qb.url).request("POST", "/cluster/leave")
    assert left.status == 200, left.body
    assert (qa.engine.voters.epoch, sorted(qa.engine.voters.voters)) == (3, ["qa"])
    assert (await a.put("k", {"value": 1, **Q})).status == 200  # qa alone is the majority now


def voter_ids(node: Node) -> tuple[int, list[str]] | None:
    voters = node.engine.voters
    return None if voters is None else (voters.epoch, sorted(voters.voters))


async def test_a_joining_node_becomes_a_voter_once_caught_up(make_node: NodeFactory,
                                                            http: aiohttp.ClientSession) -> None:
    qa, qb, qc = await three(make_node)
    a = Api(http, qa.url)
    assert (await a.put("k", {"value": 1, **Q})).status == 200

    qd = await make_node(node_id="qd", seed_nodes=[qa.address], **FAST)
    added = (2, ["qa", "qb", "qc", "qd"])
    await eventually(lambda: all(voter_ids(n) == added for n in (qa, qb, qc, qd)), timeout=30,
                     what="qd to add itself to the voters")
    assert qd.replicator.caught_up.is_set()
    status = await a.request("GET", "/cluster/status")
    assert status.body["voters"] == {"epoch": 2, "ids": ["qa", "qb", "qc", "qd"]}
    d = Api(http, qd.url)
    wrote = await d.put("k", {"value": 2, "if_seq": 1, **Q})
    assert (wrote.status, wrote.body["seq"]) == (200, 2), wrote.body
    # Four voters now: qa and qb cut off leave qc and qd, two, short of the three needed.
    partition([qa, qb], [qc, qd])
    refused = await d.put("other", {"value": 3, **Q})
    assert (refused.status, refused.body["error"]) == (503, "quorum_unavailable"), refused.body


async def test_joining_needs_only_the_cluster_signature_with_acls_on(make_node: NodeFactory) -> None:
    settings: dict[str, Any] = {"acl_enabled": True, "cluster_secret": "join-secret"}
    qa, qb, qc = await three(make_node, **settings)
    qd = await make_node(node_id="qd", seed_nodes=[qa.address], **FAST, **settings)
    added = (2, ["qa", "qb", "qc", "qd"])
    await eventually(lambda: all(voter_ids(n) == added for n in (qa, qb, qc, qd)), timeout=30,
                     what="qd to add itself to the voters")


async def test_a_node_with_auto_voter_off_stays_a_non_voter(make_node: NodeFactory) -> None:
    """Nor do the initial voters (as under `kvs cluster up`) change anything once caught up."""
    nodes = await three(make_node)
    qd = await make_node(node_id="qd", seed_nodes=[nodes[0].address], auto_voter=False, **FAST)
    await eventually(lambda: all(n.replicator.caught_up.is_set() for n in (*nodes, qd)),
                     timeout=20, what="every node to catch up")
    rounds = qd.replicator.stats.rounds
    await eventually(lambda: qd.replicator.stats.rounds >= rounds + 3, timeout=20,
                     what="three more anti-entropy rounds on qd")
    assert [voter_ids(n) for n in nodes] == [(1, ["qa", "qb", "qc"])] * 3
    assert voter_ids(qd) is None


async def test_a_node_that_has_not_caught_up_is_not_added(make_node: NodeFactory,
                                                          http: aiohttp.ClientSession) -> None:
    """qd refuses a value larger than its max_value_bytes, so no anti-entropy round of its
    completes; restarted with the cluster's limit it catches up and is added."""
    qa, qb, qc = await three(make_node)
    assert (await Api(http, qa.url).put("big", {"value": "x" * 4096})).status == 200
    qd = await make_node(node_id="qd", seed_nodes=[qa.address], max_value_bytes=1024, **FAST)
    await eventually(lambda: qa.membership.member("qd") is not None
                     and sum(r.error is not None for r in qd.replicator.rounds) >= 3,
                     timeout=20, what="qd to join and fail three anti-entropy rounds")
    assert not qd.replicator.caught_up.is_set()
    assert [voter_ids(n) for n in (qa, qb, qc)] == [(1, ["qa", "qb", "qc"])] * 3
    assert voter_ids(qd) is None

    data_dir = qd.config.data_dir
    await qd.stop()
    qd = await make_node(node_id="qd", seed_nodes=[qa.address], data_dir=data_dir, **FAST)
    added = (2, ["qa", "qb", "qc", "qd"])
    await eventually(lambda: all(voter_ids(n) == added for n in (qa, qb, qc, qd)), timeout=30,
                     what="qd, caught up, to add itself to the voters")


@pytest.mark.parametrize("leave", [True, False], ids=["leave", "members-remove"])
async def test_an_added_node_goes_out_of_the_voters_as_any_voter(
        make_node: NodeFactory, http: aiohttp.ClientSession, leave: bool) -> None:
    """Graceful leave, or removal once dead, takes the joined voter out; it is not added
    back while it is gone."""
    qa, qb, qc = await three(make_node)
    qd = await make_node(node_id="qd", seed_nodes=[qa.address], **FAST)
    await eventually(lambda: voter_ids(qa) == (2, ["qa", "qb", "qc", "qd"]), timeout=30,
                     what="qd to add itself to the voters")
    if leave:
        left = await Api(http, qd.url).request("POST", "/cluster/leave")
        assert left.status == 200, left.body
    else:
        await qd.stop()
        await eventually(lambda: (m := qa.membership.member("qd")) is not None and m.state == "dead",
                         timeout=20, what="qd to be declared dead")
        removed = await Api(http, qa.url).request("DELETE", "/cluster/members/qd")
        assert removed.status == 200, removed.body
    assert [voter_ids(n) for n in (qa, qb, qc)] == [(3, ["qa", "qb", "qc"])] * 3


async def test_a_voter_removed_while_down_is_added_back_when_it_rejoins(
        make_node: NodeFactory, http: aiohttp.ClientSession) -> None:
    """qd's stored configuration still names it after `kvs members remove`; started again,
    it learns the newer one and asks to be added."""
    qa, qb, qc = await three(make_node)
    qd = await make_node(node_id="qd", seed_nodes=[qa.address], **FAST)
    await eventually(lambda: voter_ids(qa) == (2, ["qa", "qb", "qc", "qd"]), timeout=30,
                     what="qd to add itself to the voters")
    data_dir = qd.config.data_dir
    await qd.stop()
    await eventually(lambda: (m := qa.membership.member("qd")) is not None and m.state == "dead",
                     timeout=20, what="qd to be declared dead")
    removed = await Api(http, qa.url).request("DELETE", "/cluster/members/qd")
    assert removed.status == 200, removed.body
    assert voter_ids(qa) == (3, ["qa", "qb", "qc"])

    qd = await make_node(node_id="qd", seed_nodes=[qa.address], data_dir=data_dir, **FAST)
    back = (4, ["qa", "qb", "qc", "qd"])
    await eventually(lambda: all(voter_ids(n) == back for n in (qa, qb, qc, qd)), timeout=30,
                     what="qd to add itself back")
