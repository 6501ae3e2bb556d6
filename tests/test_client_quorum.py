"""The Python clients' quorum mode (issue 14) against real in-process nodes: consistency=,
if_seq, seq, the quorum errors as typed exceptions, and update() by seq.

Three nodes with `initial_voters` form one voter set (tests/test_quorum.py's `three`).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kvs.client import (
    AsyncClient,
    BadRequest,
    CASConflict,
    Client,
    NotFound,
    QuorumIndeterminate,
    QuorumKey,
    QuorumUnavailable,
    VersionRecord,
    _settle,
)
from kvs.node import Node
from tests.cluster import heal, partition
from tests.quorum_clients import clients_fixture, nodes_fixture  # noqa: F401  (fixtures)


async def test_quorum_put_get_delete_carry_seq_across_nodes(clients: list[AsyncClient]) -> None:
    a, b, c = clients
    created = await a.put("q/k", {"n": 1}, consistency="quorum")
    assert created.seq == 1
    read = await b.get("q/k", consistency="quorum")
    assert (read.value, read.seq, read.version) == ({"n": 1}, 1, created.version)
    assert await c.get_value("q/k", consistency="quorum") == {"n": 1}
    changed = await c.put("q/k", {"n": 2}, if_seq=1, consistency="quorum")
    assert changed.seq == 2
    with pytest.raises(CASConflict) as stale:
        await a.put("q/k", {"n": 3}, if_seq=1, consistency="quorum")
    assert stale.value.current is not None
    assert (stale.value.current.seq, stale.value.current.version) == (2, changed.version)
    with pytest.raises(QuorumKey, match="consistency=quorum"):
        await b.put("q/k", {"n": 4})  # a local write to a quorum key
    deleted = await b.delete("q/k", if_seq=2, consistency="quorum")
    assert deleted.seq == 3
    with pytest.raises(NotFound) as gone:
        await a.get("q/k", consistency="quorum")
    assert gone.value.seq == 3
    local = await a.put("plain", 1)
    assert local.seq is None and (await a.get("plain")).seq is None


async def test_blocking_client_speaks_quorum_too(nodes: list[Node]) -> None:
    await asyncio.to_thread(_blocking_round, nodes[1].url)  # the nodes run on this event loop


def _blocking_round(url: str) -> None:
    with Client(url) as kv:
        first = kv.put("q/blocking", "x", cas=0, consistency="quorum")
        assert first.seq == 1
        assert kv.get("q/blocking", consistency="local").value == "x"
        with pytest.raises(BadRequest, match="use if_seq"):
            kv.put("q/blocking", "y", cas=first.modify_index or 1, consistency="quorum")
        with pytest.raises(BadRequest, match="needs consistency=quorum"):
            kv.put("local/k", "y", if_seq=0, consistency="local")


async def test_bad_consistency_is_refused_before_anything_is_sent() -> None:
    # Nothing listens there: a request that went out would be Unavailable instead.
    async with AsyncClient("http://127.0.0.1:9", timeout=1.0) as kv:
        for call in (lambda: kv.put("k", 1, consistency="strong"),
                     lambda: kv.get("k", consistency="QUORUM"),
                     lambda: kv.delete("k", consistency=""),
                     lambda: kv.update("k", lambda v: v, consistency="linearizable")):
            with pytest.raises(BadRequest, match="consistency must be one of local, quorum"):
                call()


async def test_concurrent_quorum_updates_through_three_nodes_lose_nothing(
        clients: list[AsyncClient]) -> None:
    async def bump(kv: AsyncClient) -> int:
        done = await kv.update("q/counter", lambda n: (n or 0) + 1, retries=100, backoff=0.005,
                               consistency="quorum")
        assert done.result.seq is not None
        return done.result.seq

    seqs = await asyncio.gather(*(bump(clients[i % 3]) for i in range(24)))
    final = await clients[0].get("q/counter", consistency="quorum")
    assert final.value == 24 and final.seq == 24
    assert sorted(seqs) == list(range(1, 25))  # each success is one step of the chain


async def test_first_quorum_update_of_a_local_key_starts_from_its_value(
        clients: list[AsyncClient]) -> None:
    a, b, _ = clients
    await a.put("q/was-local", 10, flags=3)
    done = await a.update("q/was-local", lambda n: (n or 0) + 1, consistency="quorum")
    assert (done.value, done.result.seq) == (11, 1)
    read = await b.get("q/was-local", consistency="quorum")
    assert (read.value, read.flags) == (11, 3)
    with pytest.raises(QuorumKey):  # from now on a quorum key
        await a.put("q/was-local", 0)


async def test_minority_answers_quorum_unavailable_with_its_counts(
        nodes: list[Node], clients: list[AsyncClient]) -> None:
    await clients[0].put("q/m", "before", consistency="quorum")
    partition(nodes[2:], nodes[:2])
    try:
        with pytest.raises(QuorumUnavailable) as refused:
            await clients[2].put("q/m", "minority", consistency="quorum")
        assert (refused.value.answered, refused.value.voters, refused.value.needed) == (1, 3, 2)
        assert "1 of 3 voters answered; 2 needed" in refused.value.message
        with pytest.raises(QuorumUnavailable):
            await clients[2].update("q/m", lambda v: "updated", consistency="quorum")
    finally:
        heal(nodes)
    assert (await clients[1].get("q/m", consistency="quorum")).value == "before"


# -- _settle, the pure plan update() follows after quorum_indeterminate ------------------------

def _record(value: Any, seq: int) -> VersionRecord:
    return VersionRecord(key="k", version="v", timestamp=0, logical=0, origin="n", origin_joined_at=0,
                         flags=0, expires_at=None, deleted=False, parent=None, superseded=False,
                         modify_index=1, create_index=1, seq=seq, value=value)


def _unknown() -> QuorumIndeterminate:
    return QuorumIndeterminate("may or may not be applied; read with consistency=quorum")


def _start(value: Any = 5, seq: int = 4, ttl: float | None = None) -> tuple[Any, Any, QuorumIndeterminate]:
    from kvs.client import _PLAN
    write = _PLAN.put("k", value, if_seq=seq, consistency="quorum")
    unknown = _unknown()
    plan = _settle("k", write, value, seq, unknown, ttl)
    read = next(plan)
    assert (read.method, read.target) == ("GET", "/kv/k?consistency=quorum")
    return plan, write, unknown


def test_settle_resends_the_same_write_when_nothing_was_chosen() -> None:
    plan, write, _ = _start()
    assert plan.send(_record(4, seq=4)) is write  # the identical request, not a new fn value
    with pytest.raises(StopIteration) as done:
        plan.send("the write's result")
    assert done.value.value == "the write's result"


def test_settle_gives_up_its_write_when_another_value_was_chosen() -> None:
    plan, _, _ = _start()
    with pytest.raises(StopIteration) as done:
        plan.send(_record("someone else's", seq=5))
    assert done.value.value is None
    plan, _, _ = _start()
    with pytest.raises(StopIteration) as done:
        plan.throw(NotFound("deleted", seq=5))  # deleted by another writer, ours had no ttl
    assert done.value.value is None


@pytest.mark.parametrize(("seen", "ttl"), [
    (_record(5, seq=5), None),     # our value at seq+1: ours, or an equal one from a rival
    (_record(7, seq=6), None),     # the key moved further on
    (NotFound("gone", seq=5), 10.0),  # absent at seq+1: ours may have expired
])
def test_settle_raises_when_the_outcome_cannot_be_told(seen: Any, ttl: float | None) -> None:
    plan, _, unknown = _start(ttl=ttl)
    with pytest.raises(QuorumIndeterminate) as raised:
        plan.throw(seen) if isinstance(seen, Exception) else plan.send(seen)
    assert raised.value is unknown


def test_settle_raises_when_the_read_reaches_no_majority() -> None:
    plan, _, unknown = _start()
    with pytest.raises(QuorumIndeterminate) as raised:
        plan.throw(QuorumUnavailable("1 of 3 voters answered; 2 needed"))
    assert raised.value is unknown
