"""Quorum CAS through the HTTP API (issue 14): real nodes, real RocksDB, real HTTP.

A single node votes alone; three nodes with `initial_voters` form one epoch-1 voter set.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from kvs import paxos
from kvs.cluster.quorum import _Combined, _Refused
from kvs.errors import CASConflict, NotFound, QuorumIndeterminate
from kvs.model import Version, new_quorum_version_id, new_version_id
from kvs.node import Node
from kvs.paxos import Register
from tests.cluster import FAST, QUORUM, heal, partition, three
from tests.conftest import Api, NodeFactory, eventually

Q = QUORUM


async def test_single_node_quorum_put_get_delete_and_seq(api: Api, node: Node) -> None:
    created = await api.put("k", {"value": 1, **Q})
    assert created.status == 200, created.body
    assert created.body["seq"] == 1
    read = await api.get("k", consistency="quorum")
    assert (read.status, read.body["value"], read.body["seq"]) == (200, 1, 1)
    assert read.body["version"] == created.body["version"]
    # The accepted value is an ordinary version: a local GET and history see it.
    assert (await api.get("k")).body["version"] == created.body["version"]
    changed = await api.put("k", {"value": 2, "if_seq": 1, **Q})
    assert (changed.status, changed.body["seq"]) == (200, 2)
    stale = await api.put("k", {"value": 3, "if_seq": 1, **Q})
    assert stale.status == 409 and stale.body["error"] == "cas_conflict"
    assert stale.body["current"]["seq"] == 2 and stale.body["current"]["version"] == changed.body["version"]
    # Its indexes are this node's, as in the write's own answer (the register has none).
    shown = {f: stale.body["current"][f] for f in ("modify_index", "create_index")}
    assert shown == {f: changed.body[f] for f in ("modify_index", "create_index")} != {
        "modify_index": 0, "create_index": 0}
    deleted = await api.delete("k", consistency="quorum")
    assert (deleted.status, deleted.body["seq"]) == (200, 3)
    gone = await api.get("k", consistency="quorum")
    assert (gone.status, gone.body["seq"]) == (404, 3)
    # A delete is a change: re-creating the key continues the sequence.
    again = await api.put("k", {"value": 4, "cas": 0, **Q})
    assert (again.status, again.body["seq"]) == (200, 4)
    status = await api.request("GET", "/cluster/status")
    assert status.body["voters"] == {"epoch": 1, "ids": [node.engine.node_id]}


async def test_local_writes_to_a_quorum_key_are_refused(api: Api, node: Node) -> None:
    assert (await api.put("q", {"value": 1, **Q})).status == 200
    for reply in (await api.put("q", {"value": 2}),
                  await api.delete("q"),
                  await api.txn([{"op": "set", "key": "q", "value": 3}]),
                  await api.request("DELETE", "/kv/", params={"recurse": "true"})):
        assert reply.status == 409 and reply.body["error"] == "quorum_key", reply.body
    assert (await api.get("q")).body["value"] == 1
    # Local reads and local keys are untouched, also by a quorum read (it leaves promises).
    assert (await api.put("plain", {"value": 1})).status == 200
    missing = await api.get("plain", consistency="quorum")
    assert missing.status == 404 and "read with consistency=local" in missing.body["message"]
    assert (await api.put("plain", {"value": 2})).status == 200


async def test_a_quorum_key_stays_one_after_a_restart(make_node: NodeFactory,
                                                     http: aiohttp.ClientSession) -> None:
    """The node keeps the set of its quorum keys in memory: it must be rebuilt from the
    acceptor records a restart finds."""
    node = await make_node()
    data_dir, api = node.config.data_dir, Api(http, node.url)
    assert (await api.put("q", {"value": 1, **Q})).status == 200
    assert (await api.get("plain", consistency="quorum")).status == 404  # promises only
    await node.stop()
    again = await make_node(data_dir=data_dir)
    api = Api(http, again.url)
    refused = await api.put("q", {"value": 2})
    assert refused.status == 409 and refused.body["error"] == "quorum_key", refused.body
    assert (await api.put("plain", {"value": 1})).status == 200


@pytest.mark.parametrize(("body", "words"), [
    ({"value": 1, "consistency": "strong"}, "consistency must be one of local, quorum"),
    ({"value": 1, "consistency": 1}, "consistency must be one of"),
    ({"value": 1, "consistency": None}, "consistency must be one of"),
    ({"value": 1, "cas": 3, **Q}, "with consistency=quorum use if_seq"),
    ({"value": 1, "if_seq": -1, **Q}, "if_seq must be an integer"),
    ({"value": 1, "if_seq": 10**30, **Q}, "does not fit in 64 bits"),
    ({"value": 1, "if_seq": "1", **Q}, "if_seq must be an integer"),
    ({"value": 1, "if_seq": True, **Q}, "if_seq must be an integer"),
    ({"value": 1, "if_seq": 0}, "if_seq needs consistency=quorum"),
])
async def test_bad_quorum_input_is_a_400_that_changes_nothing(api: Api, node: Node,
                                                              body: dict[str, Any], words: str) -> None:
    reply = await api.request("PUT", "/kv/bad", data=json.dumps(body).encode())
    assert reply.status == 400 and words in reply.body["message"], reply.body
    assert (await api.get("bad")).status == 404
    assert not node.engine.is_quorum_key("bad")


async def test_bad_quorum_query_parameters(api: Api, node: Node) -> None:
    for params, words in (({"consistency": "Quorum"}, "consistency must be one of"),
                          ({"consistency": "quorum", "history": "true"}, "history, version"),
                          ({"consistency": "quorum", "if_seq": "x"}, "if_seq must be"),
                          ({"if_seq": "1"}, "if_seq needs consistency=quorum")):
        method = "DELETE" if "if_seq" in params else "GET"
        reply = await api.request(method, "/kv/k", params=params)
        assert reply.status == 400 and words in reply.body["message"], (params, reply.body)
    txn = await api.request("POST", "/txn", json={"ops": [{"op": "get", "key": "k"}], **Q})
    assert txn.status == 400 and "transactions are local" in txn.body["message"]


async def test_ttl_on_a_quorum_key_expires_and_seq_continues(api: Api, node: Node) -> None:
    assert (await api.put("lease", {"value": "me", "ttl": 1, "cas": 0, **Q})).body["seq"] == 1
    renewed = await api.put("lease", {"value": "me", "ttl": 1, "if_value": "me", **Q})
    assert renewed.body["seq"] == 2 and renewed.body["expires_at"] is not None
    await eventually(lambda: node.engine.now_ms() > renewed.body["expires_at"], what="expiry")
    expired = await api.get("lease", consistency="quorum")
    assert (expired.status, expired.body["seq"]) == (404, 2)
    taken = await api.put("lease", {"value": "you", "cas": 0, **Q})
    assert (taken.status, taken.body["seq"]) == (200, 3)


async def test_default_consistency_quorum_applies_to_plain_requests(make_node: NodeFactory,
                                                                   http: aiohttp.ClientSession) -> None:
    node = await make_node(default_consistency="quorum")
    api = Api(http, node.url)
    assert (await api.put("d", {"value": 1})).body["seq"] == 1
    assert (await api.get("d")).body["seq"] == 1
    assert (await api.put("d", {"value": 2, "consistency": "local"})).status == 409


async def test_three_nodes_concurrent_increments_lose_nothing(make_node: NodeFactory,
                                                             http: aiohttp.ClientSession) -> None:
    nodes = await three(make_node)
    apis = [Api(http, n.url) for n in nodes]
    assert (await apis[0].put("counter", {"value": 0, **Q})).status == 200
    successes = maybe = 0

    async def increment(worker: int) -> None:
        nonlocal successes, maybe
        api = apis[worker % 3]
        while True:
            read = await api.get("counter", consistency="quorum")
            if read.status != 200:
                continue  # 503 under contention: nothing changed, read again
            wrote = await api.put("counter", {"value": read.body["value"] + 1,
                                              "if_seq": read.body["seq"], **Q})
            if wrote.status == 200:
                successes += 1
                return
            assert wrote.status in (409, 503), wrote.body
            if wrote.body["error"] == "quorum_indeterminate":
                maybe += 1  # may have been applied: the only answer that may hide an increment
            await asyncio.sleep(random.uniform(0, 0.01))

    await asyncio.wait_for(asyncio.gather(*(increment(i) for i in range(32))), 120)
    final = await apis[1].get("counter", consistency="quorum")
    assert successes == 32
    assert successes <= final.body["value"] <= successes + maybe
    assert final.body["seq"] == final.body["value"] + 1


async def test_minority_gets_503_and_changes_nothing(make_node: NodeFactory,
                                                    http: aiohttp.ClientSession) -> None:
    nodes = await three(make_node)
    apis = [Api(http, n.url) for n in nodes]
    assert (await apis[0].put("m", {"value": "before", **Q})).status == 200
    partition(nodes[2:], nodes[:2])
    refused = await apis[2].put("m", {"value": "minority", **Q})
    assert refused.status == 503 and refused.body["error"] == "quorum_unavailable", refused.body
    assert (refused.body["answered"], refused.body["voters"], refused.body["needed"]) == (1, 3, 2)
    assert "1 of 3 voters answered; 2 needed" in refused.body["message"]
    read = await apis[2].get("m", consistency="quorum")
    assert read.status == 503
    majority = await apis[1].put("m", {"value": "majority", **Q})
    assert (majority.status, majority.body["seq"]) == (200, 2)
    heal(nodes)
    for api in apis:
        after = await api.get("m", consistency="quorum")
        assert (after.body["value"], after.body["seq"]) == ("majority", 2)
    assert "minority" not in str(nodes[2].engine.history("m"))


async def test_a_cut_off_node_that_just_wrote_the_key_cannot_say_nothing_was_written(
        make_node: NodeFactory, http: aiohttp.ClientSession) -> None:
    """Its one-round-trip path sends the next change straight to accept, and its own
    acceptor takes it: that value may still be chosen by a later round, so the answer is
    quorum_indeterminate (never a success, never "nothing was written"); a later request
    without the cache fails in the prepare phase: quorum_unavailable."""
    nodes = await three(make_node)
    api = Api(http, nodes[0].url)
    assert (await api.put("f", {"value": 1, **Q})).status == 200
    partition(nodes[:1], nodes[1:])
    first = await api.put("f", {"value": 2, **Q})
    assert (first.status, first.body["error"]) == (503, "quorum_indeterminate"), first.body
    again = await api.put("f", {"value": 3, **Q})
    assert (again.status, again.body["error"]) == (503, "quorum_unavailable"), again.body
    heal(nodes)
    after = await Api(http, nodes[1].url).get("f", consistency="quorum")
    assert after.body["value"] in (1, 2) and after.body["value"] != 3


async def test_acceptor_state_survives_a_restart(make_node: NodeFactory,
                                                 http: aiohttp.ClientSession, tmp_path: Any) -> None:
    node = await make_node(data_dir=str(tmp_path / "durable"))
    api = Api(http, node.url)
    await api.put("k", {"value": 1, **Q})
    await api.put("k", {"value": 2, **Q})
    state = node.engine.acceptor_state("k")
    floor = node.engine.ballot_floor
    await node.stop()
    again = await make_node(data_dir=str(tmp_path / "durable"))
    assert again.engine.acceptor_state("k") == state
    assert again.engine.ballot_floor == floor
    api = Api(http, again.url)
    assert (await api.put("k", {"value": 3, "if_seq": 2, **Q})).body["seq"] == 3
    assert state.promised is not None
    assert again.engine.acceptor_state("k").promised.counter > state.promised.counter


async def test_nodes_that_are_not_voters_refuse_local_writes_to_a_quorum_key(
        make_node: NodeFactory, http: aiohttp.ClientSession) -> None:
    """One voter (qa) of three nodes (the others do not join the voters): a quorum write
    proposed by a non-voter is chosen by qa alone; the other nodes get its version by
    replication, as an ordinary version, and hold no acceptor state for it. They still
    know the key is a quorum key, from the version's id, and refuse local writes to it
    (a local write there would be a version beside the Paxos chain)."""
    nodes = await three(make_node, initial_voters=["qa"], auto_voter=False)
    voter, _, proposer = nodes
    wrote = await Api(http, proposer.url).put("r", {"value": "v", **Q})
    assert (wrote.status, wrote.body["seq"]) == (200, 1), wrote.body
    for node in nodes[1:]:
        await eventually(lambda node=node: bool(node.storage.read("r")), what="replication")
        assert node.engine.get("r").version == wrote.body["version"]
        assert node.engine.acceptor_state("r").accepted is None
        assert node.engine.is_quorum_key("r")
        api = Api(http, node.url)
        for reply in (await api.put("r", {"value": "local"}), await api.delete("r"),
                      await api.txn([{"op": "set", "key": "r", "value": "local"}])):
            assert reply.status == 409 and reply.body["error"] == "quorum_key", reply.body
        assert node.engine.get("r").version == wrote.body["version"]
    assert voter.engine.acceptor_state("r").accepted is not None
    status = await Api(http, proposer.url).request("GET", "/cluster/status")
    assert status.body["voters"] == {"epoch": 1, "ids": ["qa"]}


async def test_paxos_answers_wait_for_an_fsync_even_without_sync_writes(api: Api, node: Node) -> None:
    commits = node.storage.commits
    assert (await api.put("local", {"value": 1})).status == 200
    assert commits.syncs == 0  # sync_writes is false: a local write is not fsynced
    assert (await api.put("quorum", {"value": 1, **Q})).status == 200
    assert commits.syncs >= 1 and commits.synced == commits.issued


async def test_an_indeterminate_write_is_committed_only_if_the_chain_passes_through_it(
        api: Api, node: Node) -> None:
    """How the proposer resolves Indeterminate: the register chosen later either is its
    value, or descends from it through the versions' parents, or the write never happened."""
    quorum, engine = node.quorum, node.engine
    assert quorum is not None

    async def register(value: int) -> Register:
        assert (await api.put("i", {"value": value, **Q})).status == 200
        accepted = engine.acceptor_state("i").accepted
        assert accepted is not None
        return accepted.value  # type: ignore[no-any-return]

    first, second, third = await register(1), await register(2), await register(3)
    assert await quorum._chosen("i", first, first)
    assert await quorum._chosen("i", first, third)  # two changes later, through `second`
    assert await quorum._chosen("i", second, third)
    rival = Register(2, dataclasses.replace(second.value, version=new_version_id()))
    assert not await quorum._chosen("i", rival, third)  # another value took its place on the chain
    assert not await quorum._chosen("i", third, second)  # the chain has not reached it: never will
    assert not await quorum._chosen("i", first, None)


async def test_settling_waits_for_a_chain_version_that_is_still_on_its_way(
        api: Api, node: Node) -> None:
    """A voter one round behind lacks the newest links of the chain for a moment: the check
    waits for them (up to CHAIN_WAIT_S) instead of answering 503 at once."""
    quorum, engine = node.quorum, node.engine
    assert quorum is not None
    assert (await api.put("w", {"value": 1, **Q})).status == 200
    ours = engine.acceptor_state("w").accepted
    assert ours is not None
    now = engine.now_ms()
    late = Version("w", 2, new_quorum_version_id(now), now, 0, "another-node", 1,
                   parent=ours.value.value.version)
    tip = Version("w", 3, new_quorum_version_id(now), now, 1, "another-node", 1, parent=late.version)
    assert await engine.apply_remote([tip])

    async def arrive() -> None:
        await asyncio.sleep(0.05)  # the link comes a moment later, as an Accept would
        await engine.apply_remote([late])
    arriving = asyncio.create_task(arrive())
    assert await quorum._chosen("w", ours.value, Register(3, tip))
    await arriving
    with pytest.raises(QuorumIndeterminate):  # a link that never comes: 503, after the wait
        await quorum._chosen("w", ours.value, Register(4, dataclasses.replace(
            tip, version=new_quorum_version_id(now), parent=new_version_id())))


async def test_a_stale_one_round_trip_cache_never_wins_over_another_nodes_write(
        make_node: NodeFactory, http: aiohttp.ClientSession) -> None:
    """Node A commits (and caches a promise for its next change); node B changes the key;
    A's next changes must build on B's: its cached accept is refused, and the change runs
    again on the current value (no lost update, seq without gaps or repeats)."""
    nodes = await three(make_node)
    a, b = Api(http, nodes[0].url), Api(http, nodes[1].url)
    assert (await a.put("c", {"value": "a1", **Q})).body["seq"] == 1
    assert (await b.put("c", {"value": "b2", **Q})).body["seq"] == 2
    stale = await a.put("c", {"value": "a-stale", "if_value": "a1", **Q})
    assert (stale.status, stale.body["current"]["seq"]) == (409, 2), stale.body
    b3 = await b.put("c", {"value": "b3", **Q})
    assert b3.body["seq"] == 3
    blind = await a.put("c", {"value": "a4", **Q})
    assert (blind.status, blind.body["seq"]) == (200, 4), blind.body
    read = await b.get("c", consistency="quorum")
    assert (read.body["value"], read.body["seq"], read.body["parent"]) == ("a4", 4, b3.body["version"])
    chain = [v["value"] for v in (await a.get("c", history="true")).body["revisions"]]
    assert chain[0] == "a4" and "a-stale" not in chain


async def test_quorum_rounds_are_counted_by_outcome(api: Api, node: Node) -> None:
    assert (await api.put("m", {"value": 1, **Q})).status == 200
    assert (await api.put("m", {"value": 2, "if_seq": 5, **Q})).status == 409
    text = (await api.request("GET", "/metrics")).body
    assert 'kvs_quorum_rounds_total{outcome="committed"} 1.0' in text
    assert 'kvs_quorum_rounds_total{outcome="conflict"} 1.0' in text
    assert 'kvs_quorum_rounds_total{outcome="unavailable"} 0.0' in text


async def test_a_write_resolved_as_not_chosen_is_never_chosen_later(
        make_node: NodeFactory, http: aiohttp.ClientSession) -> None:
    """An indeterminate round left its value `y` on qa alone (qa and qb promised its
    ballot, only qa's accept arrived). qb, cut off from qa, resolves it: the chain ends
    at `x`, so `y` is not chosen and the change may run again. No later round may then
    choose `y`: qa's prepare quorum {qa, qb} must find `x` above it (the chaos run's CAS
    409 that showed its own value, and its blind put applied twice)."""
    qa, qb, qc = await three(make_node)
    a, b = Api(http, qa.url), Api(http, qb.url)
    assert (await b.put("r", {"value": "x", **Q})).body["seq"] == 1
    await eventually(lambda: all(n.engine.acceptor_state("r").accepted is not None
                                 for n in (qa, qb, qc)), what="x accepted by every voter")
    x = qa.engine.acceptor_state("r").accepted
    promised = qa.engine.acceptor_state("r").promised
    assert x is not None and promised is not None and qa.engine.voters is not None
    y = Register(2, dataclasses.replace(x.value.value, value="y", version=new_version_id(),
                                        parent=x.value.value.version))
    ballot, config = paxos.Ballot(promised.counter, "qz"), qa.engine.voters
    for node in (qa, qb):
        assert isinstance(await node.engine.paxos_step("r", paxos.Prepare(ballot, config)),
                          paxos.Promise)
    assert isinstance(await qa.engine.paxos_step("r", paxos.Accept(ballot, y, config)), paxos.Ack)

    partition([qa], [qb, qc])
    assert qb.quorum is not None
    chosen = await qb.quorum._resolve("r")
    assert chosen is not None and chosen.seq == 1
    assert not await qb.quorum._chosen("r", y, chosen)

    heal([qa, qb, qc])
    partition([qc], [qa, qb])
    read = await a.get("r", consistency="quorum")
    assert (read.status, read.body["value"], read.body["seq"]) == (200, "x", 1), read.body


async def test_a_quorum_version_is_pushed_to_non_voters_only(make_node: NodeFactory,
                                                            http: aiohttp.ClientSession) -> None:
    """Every voter was sent the version in the round's Accept: pushing it to them again
    cost two more requests per quorum write. A non-voter still gets it by eager push."""
    quiet = {"sync_interval_ms": 600_000}  # no anti-entropy: what arrives came by push
    qa, qb, qc = await three(make_node, **quiet)
    qd = await make_node(node_id="qd", seed_nodes=[qa.address], auto_voter=False, **{**FAST, **quiet})
    nodes = (qa, qb, qc, qd)
    await eventually(lambda: all(len(n.membership.alive_peers()) == 3 for n in nodes),
                     what="4 nodes to see each other alive")
    api, stats = Api(http, qa.url), qa.replicator.stats

    async def pushed(write: Any, key: str, receivers: tuple[Node, ...], count: int) -> int:
        """Versions pushed for `write`, once every receiver holds it and at least `count`
        pushes have been answered (a receiver applies a push before it answers). Extra
        pushes of the quorum write would show in the plain write's count, which follows
        them on each peer's queue."""
        before = stats.versions_pushed
        assert (await write).status == 200
        await eventually(lambda: all(_holds(n, key) for n in receivers)
                         and stats.versions_pushed - before >= count, what=f"{key} everywhere")
        return stats.versions_pushed - before
    assert await pushed(api.put("q", {"value": 1, **Q}), "q", nodes, 1) == 1  # to qd alone
    assert await pushed(api.put("plain", {"value": 1}), "plain", nodes, 3) == 3


def _holds(node: Node, key: str) -> bool:
    try:
        node.engine.get(key)
    except NotFound:
        return False
    return True


async def test_concurrent_rounds_share_calls_to_each_voter(make_node: NodeFactory,
                                                          http: aiohttp.ClientSession) -> None:
    """Messages for a voter that come while a call to it is in flight go together in the
    next call (one request, one fsync there): 16 writes of 16 keys through one node all
    commit, in fewer calls than messages, and every voter holds every value."""
    nodes = await three(make_node)
    api = Api(http, nodes[0].url)
    replies = await asyncio.gather(*(api.put(f"b/{i}", {"value": i, **Q}) for i in range(16)))
    assert [reply.status for reply in replies] == [200] * 16
    sent = nodes[0].quorum.sent  # type: ignore[union-attr]
    assert sent["messages"] >= 32 and sent["calls"] < sent["messages"], sent
    for node in nodes:
        await eventually(lambda node=node: all(  # type: ignore[misc]
            node.engine.acceptor_state(f"b/{i}").accepted is not None for i in range(16)))
    text = (await api.request("GET", "/metrics")).body
    assert f"kvs_paxos_calls_total {float(sent['calls'])}" in text


async def test_a_batch_with_one_bad_message_takes_none_of_them(api: Api, node: Node) -> None:
    """The batch route checks every message before it takes any: a bad one refuses the
    batch with a 400 and changes nothing; a good batch is answered in its order."""
    engine = node.engine
    config = {"epoch": 1, "voters": [engine.node_id], "prepare_quorum": 1, "accept_quorum": 1}
    made = Version("b", "v", new_version_id(), engine.now_ms(), 0, engine.node_id, engine.joined_at)
    ballot = [7, engine.node_id]
    accept = {"key": "b", "ballot": ballot, "config": config, "next": None,
              "value": {"seq": 1, "version": made.to_wire()}}
    prepare = {"key": "c", "ballot": ballot, "config": config}
    bad = await api.request("POST", "/internal/paxos/batch", json={
        "messages": [["accept", accept], ["prepare", {**prepare, "key": ""}]]})
    assert bad.status == 400 and bad.body["error"] == "bad_request", bad.body
    assert engine.acceptor_state("b") == engine.acceptor_state("c") == paxos.AcceptorState()
    assert (await api.get("b")).status == 404
    good = await api.request("POST", "/internal/paxos/batch", json={
        "messages": [["accept", accept], ["prepare", prepare]]})
    assert good.status == 200, good.body
    assert [reply["type"] for reply in good.body["replies"]] == ["ack", "promise"]
    assert (await api.get("b")).body["version"] == made.version


async def test_waiting_changes_of_a_key_share_rounds_and_each_gets_its_own_answer(
        api: Api, node: Node) -> None:
    """CAS requests on one key that come while a round of it runs go in the next round
    together: one of each group writes, the others are refused with the seq they saw
    (linearizable: all at the round's commit, in order). Fewer rounds than requests."""
    assert (await api.put("hot", {"value": 0, **Q})).status == 200
    assert node.quorum is not None
    before = sum(node.quorum.rounds.values())
    replies = await asyncio.gather(*(api.put("hot", {"value": i, "if_seq": 1, **Q})
                                     for i in range(1, 17)))
    assert sorted(reply.status for reply in replies) == [200] + [409] * 15
    won = next(reply for reply in replies if reply.status == 200)
    assert won.body["seq"] == 2
    assert {reply.body["current"]["seq"] for reply in replies if reply.status == 409} == {2}
    assert sum(node.quorum.rounds.values()) - before < 16
    # Reads and writes mixed: every write lands once, on its own seq.
    writes = await asyncio.gather(*(api.put("hot", {"value": i, **Q}) for i in range(8)),
                                  *(api.get("hot", consistency="quorum") for _ in range(8)))
    assert all(reply.status == 200 for reply in writes)
    assert sorted(reply.body["seq"] for reply in writes[:8]) == list(range(3, 11))
    assert all(3 <= reply.body["seq"] <= 10 or reply.body["seq"] == 2 for reply in writes[8:])
    history = (await api.get("hot", history="true")).body["revisions"]
    assert len({revision["version"] for revision in history}) == 10  # every write a version


def test_a_combined_round_answers_the_refusals_and_reads_after_its_write() -> None:
    """Changes that waited behind a round are applied in order on one register: the first
    that writes is the round's value, and the refusals and reads after it are answered on
    the register it writes (at the round's commit, just after the write), instead of
    waiting for another round. A second write waits for the next round."""
    def cas(expected: int) -> Callable[[Register | None], Register | None]:
        def change(current: Register | None) -> Register | None:
            seq = current.seq if current else 0
            if seq != expected:
                raise CASConflict(f"if_seq expected {expected}, actual {seq}", seq=seq)
            return Register(seq + 1, f"v{seq + 1}")
        return change

    def read(current: Register | None) -> Register | None:
        return current

    one = Register(1, "v1")
    combined = _Combined([cas(0), cas(1), cas(1), read, cas(2), cas(1)])
    assert combined(one) == Register(2, "v2") == combined.last
    refused, wrote, stale, seen = combined.results
    assert isinstance(refused, CASConflict) and refused.extra["seq"] == 1  # before the write
    assert wrote == Register(2, "v2")
    assert isinstance(stale, CASConflict) and stale.extra["seq"] == 2  # after it: sees seq 2
    assert seen == Register(2, "v2")
    # cas(2) would write seq 3: it and everything after it wait for the next round.
    only_refusals = _Combined([cas(5), read])
    with pytest.raises(_Refused):
        only_refusals(one)
    assert len(only_refusals.results) == 2 and only_refusals.last is None


async def test_the_first_quorum_write_of_a_local_key_checks_its_conditions_on_the_local_copy(
        api: Api, node: Node) -> None:
    """A key written locally (a lease taken while there was one voter) is not absent to its
    first quorum write: `cas: 0` must not take it over."""
    held = await api.put("lease", {"value": "holder-1", "ttl": 60})
    assert held.status == 200
    taken = await api.put("lease", {"value": "holder-2", "cas": 0, **Q})
    assert taken.status == 409 and taken.body["error"] == "cas_conflict", taken.body
    assert taken.body["current"]["version"] == held.body["version"]
    assert taken.body["current"]["seq"] == 0
    assert (await api.get("lease")).body["value"] == "holder-1"
    changed = await api.put("lease", {"value": "holder-1b", "if_value": "holder-1", **Q})
    assert (changed.status, changed.body["seq"]) == (200, 1), changed.body
    assert (await api.get("lease", consistency="quorum")).body["value"] == "holder-1b"


async def test_an_unchosen_quorum_version_held_locally_is_not_a_base(api: Api, node: Node) -> None:
    """What a minority accepted reaches other nodes by anti-entropy; with no register above
    it, it was never chosen, and the key is still absent to a create-only quorum write."""
    engine = node.engine
    stray = Version("s", "stray", new_quorum_version_id(engine.now_ms()), engine.now_ms(), 0,
                    "another-node", 1)
    assert await engine.apply_remote([stray])
    created = await api.put("s", {"value": "mine", "cas": 0, **Q})
    assert (created.status, created.body.get("seq")) == (200, 1), created.body
