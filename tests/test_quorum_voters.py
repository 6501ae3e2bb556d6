"""Changing the voters of quorum keys (POST /cluster/voters): one voter at a time, with the
new epoch installed everywhere and every quorum key rescanned. Real in-process nodes."""

from __future__ import annotations

import aiohttp

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

    qd = await make_node(node_id="qd", seed_nodes=[qa.address], **FAST)
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
