"""Lock and LeaderElection in quorum mode (issue 14), across real in-process nodes.

Three voters, each contender writing through its own node: one holder at a time, fencing
tokens (the key's cluster-wide seq) strictly increasing whichever node grants them, a holder
cut off from the majority steps down before a contender on the majority side takes over,
and an election of three candidates on three nodes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import pytest

from kvs.client import (
    AsyncClient,
    BadRequest,
    Call,
    Client,
    NotFound,
    QuorumIndeterminate,
    Sleep,
    WriteResult,
)
from kvs.coordination import LeaderElection, Lock
from kvs.node import Node
from kvs.testing import Cluster
from tests.cluster import heal, partition
from tests.conftest import eventually
from tests.quorum_clients import clients_fixture, nodes_fixture  # noqa: F401  (fixtures)
from tests.test_coordination import crash_rounds


async def test_contenders_on_different_nodes_never_both_hold_and_tokens_grow(
        clients: list[AsyncClient]) -> None:
    tokens: list[int] = []
    for round_ in range(6):
        locks = [Lock(kv, "locks/q", ttl=5, holder=f"c{i}") for i, kv in enumerate(clients)]
        won = await asyncio.gather(*(lock.acquire(timeout=0) for lock in locks))
        holders = [lock for lock, ok in zip(locks, won, strict=True) if ok]
        assert len(holders) <= 1, f"round {round_}: {holders} all hold the lock"
        assert all(lock.consistency == "quorum" for lock in locks)  # 3 voters: chosen by itself
        if holders:
            (holder,) = holders
            assert holder.fencing_token is not None
            tokens.append(holder.fencing_token)
            assert await holder.release()
    assert len(tokens) >= 3
    assert tokens == sorted(set(tokens)), tokens  # strictly increasing across nodes


async def test_fencing_token_is_the_seq_and_local_mode_stays_available(
        clients: list[AsyncClient]) -> None:
    a, b, _ = clients
    first = Lock(a, "locks/fence", ttl=5)
    assert await first.acquire(timeout=0)
    assert first.result is not None and first.fencing_token == first.result.seq
    assert await first.release()
    second = Lock(b, "locks/fence", ttl=5)
    assert await second.acquire(timeout=0)
    assert second.fencing_token is not None and second.fencing_token > first.fencing_token
    assert (await a.get("locks/fence", consistency="quorum")).seq == second._seq
    await second.release()
    local = Lock(a, "locks/local", ttl=5, consistency="local")  # the override
    assert await local.acquire(timeout=0)
    assert local.result is not None and local.fencing_token == local.result.create_index
    assert local.result.seq is None
    await local.release()
    with pytest.raises(BadRequest, match="consistency must be one of"):
        Lock(a, "locks/x", consistency="strong")


async def test_a_quorum_lock_is_renewed_by_seq_and_a_rival_write_loses_it(
        clients: list[AsyncClient]) -> None:
    a, b, _ = clients
    lock = Lock(a, "locks/renewed", ttl=0.9)
    assert await lock.acquire(timeout=0)
    acquired = lock._seq
    assert acquired is not None
    await eventually(lambda: lock._seq is not None and lock._seq >= acquired + 2,
                     what="two renewals")  # each renewal is one more step of the chain
    assert lock.held and lock.fencing_token == acquired  # the token is the acquisition's
    await b.delete("locks/renewed", consistency="quorum")  # through another node
    await asyncio.wait_for(lock.lost.wait(), 5)
    assert not lock.held and lock.reason is not None


async def test_a_holder_cut_off_from_the_majority_steps_down_before_a_takeover(
        nodes: list[Node], clients: list[AsyncClient]) -> None:
    a, b, _ = clients
    ttl = 1.0
    holder = Lock(a, "locks/split", ttl=ttl)
    assert await holder.acquire(timeout=0)
    lost_at: list[float] = []
    holder.on_lost = lambda lock, reason: lost_at.append(time.monotonic())
    partition(nodes[:1], nodes[1:])
    try:
        contender = Lock(b, "locks/split", ttl=ttl)
        assert await contender.acquire(timeout=ttl * 10)
        won_at = time.monotonic()
        assert lost_at and lost_at[0] <= won_at, (lost_at, won_at)
        assert not holder.held and contender.held
        assert contender.fencing_token is not None and holder.fencing_token is not None
        assert contender.fencing_token > holder.fencing_token
        await contender.release()
    finally:
        heal(nodes)


async def test_election_of_three_candidates_on_three_nodes(clients: list[AsyncClient]) -> None:
    elections = [LeaderElection(kv, "leaders/q", ttl=1.5, identity=f"n{i}", retry_interval=0.2)
                 for i, kv in enumerate(clients)]
    tasks = [asyncio.create_task(e.run()) for e in elections]
    try:
        tokens: list[int] = []
        for _term in range(3):
            await eventually(lambda: sum(e.is_leader for e in elections) == 1, what="one leader")
            (leader,) = [e for e in elections if e.is_leader]
            assert leader.consistency == "quorum" and leader.lock is not None and leader.lock.quorum
            assert leader.fencing_token is not None
            tokens.append(leader.fencing_token)
            await leader.resign()
            elections.remove(leader)
            assert sum(e.is_leader for e in elections) <= 1
            if not elections:
                break
        assert tokens == sorted(set(tokens)), tokens
    finally:
        for e in elections:
            await e.resign()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# -- crash rounds: holder processes on three `kvs serve` voters --------------------------------

@pytest.mark.slow
async def test_quorum_lock_holders_and_a_node_killed_never_overlap(tmp_path: Path) -> None:
    """Holder processes, each writing through a different node first, contend for one quorum
    lock; the holder is SIGKILLed again and again, and after the second kill a voter is
    SIGKILLed too (restarted after the fourth). The logs must show no two holders at once
    and every takeover after the dead holder's lease expired (tests/test_coordination.py's
    checks, with server timestamps from whichever node stamped them)."""
    names = ["qa", "qb", "qc"]
    env = {"KVS_CAS_ENABLED": "true", "KVS_INITIAL_VOTERS": ",".join(names),
           "KVS_GOSSIP_INTERVAL_MS": "100"}
    with Cluster(tmp_path / "nodes", names, env=env) as cluster:
        await cluster.astart_all()
        victim = cluster.by_name("qc")

        async def kill_and_restart_a_voter(kills: int) -> None:
            if kills == 2:
                victim.kill()
            elif kills == 4:
                await victim.astart()

        await crash_rounds(tmp_path, [n.url for n in cluster.nodes], "async-lock", rounds=6,
                           handovers=1, between=kill_and_restart_a_voter)
        async with AsyncClient(cluster.nodes[0].url) as kv:  # the holders used quorum mode
            try:
                seq = (await kv.get("crash/async-lock", consistency="quorum")).seq
            except NotFound as absent:
                seq = absent.seq
        assert seq is not None and seq > 6 * 2  # at least an acquire and a renewal per kill


# -- the renewal plan, driven by hand ----------------------------------------------------------

def _next_call(plan: Any, reply: Any = None, error: BaseException | None = None) -> Call[Any]:
    """Carry the plan to its next request, sleeping its Sleeps as a client would."""
    step = plan.throw(error) if error is not None else plan.send(reply)
    while isinstance(step, Sleep):
        time.sleep(step.seconds)
        step = plan.send(None)
    assert isinstance(step, Call), step
    return step


def test_after_an_indeterminate_renewal_the_next_one_is_conditioned_on_the_token() -> None:
    """An indeterminate renewal may have moved the seq on: conditioned on the old seq, the
    next renewal would fail and give up a lease that is still ours. Our token is ours alone."""
    lock = Lock(Client("http://127.0.0.1:9"), "locks/plan", ttl=3, renew_interval=0.01,
                watch=False, consistency="quorum")
    lock.value = {"holder": "h", "token": "t"}
    written = WriteResult(key="locks/plan", version="v", timestamp=0, modify_index=1, create_index=1,
                          expires_at=None, seq=4)
    lock._won(written, time.monotonic())
    plan = lock._keep_plan()
    try:
        first = _next_call(plan)
        assert json.loads(first.body or b"")["if_seq"] == 4
        second = _next_call(plan, error=QuorumIndeterminate("may or may not be applied"))
        body = json.loads(second.body or b"")
        assert body["if_value"] == lock.value and "if_seq" not in body
        assert body["consistency"] == "quorum"
        third = _next_call(plan, dataclasses.replace(written, seq=6))
        assert json.loads(third.body or b"")["if_seq"] == 6
        assert lock.held and lock.fencing_token == 4  # the acquisition's, through renewals
    finally:
        plan.close()
