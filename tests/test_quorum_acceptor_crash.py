"""An acceptor SIGKILLed between two steps of one Paxos round (issue 14): what it promised
or accepted before it answered must survive the crash, or two proposers can both think
they hold a majority. The test is the proposer: it drives one `kvs serve` subprocess,
voter `a` of {a, b, c}, through the signed /internal/paxos/ routes exactly as a peer's
proposer does (kvs/cluster/transport.py signs with the cluster secret), gets an answer,
kill -9s the node, restarts it on the same data dir and asks again.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator

import aiohttp
import pytest

from kvs import paxos
from kvs import paxos_wire as W
from kvs.clock import wall_ms
from kvs.cluster.quorum import ACCEPT_PATH, PREPARE_PATH
from kvs.cluster.transport import HttpTransport
from kvs.model import Version, new_version_id
from kvs.paxos import Accept, Ack, Ballot, Nack, Prepare, Promise, Proposal, Register
from kvs.testing import KvsNode, NodeGroup
from tests.procs import procs_fixture  # noqa: F401  (the `procs` fixture)

SECRET = "acceptor-crash-secret"
KEY = "lease"
VOTERS = paxos.Config.majority(1, "abc")
PROMISED = Ballot(5, "b")  # the test plays voter b's proposer
LOWER = Ballot(4, "c")  # an older round of c's proposer, arriving late
HIGHER = Ballot(6, "c")


@pytest.fixture(name="acceptor")
def acceptor_fixture(procs: NodeGroup) -> KvsNode:
    return procs.start("a", node_id="a", env={"KVS_CLUSTER_SECRET": SECRET,
                                              "KVS_INITIAL_VOTERS": ",".join(sorted(VOTERS.voters))})


@pytest.fixture(name="proposer")
async def proposer_fixture() -> AsyncIterator[HttpTransport]:
    transport = HttpTransport(SECRET)
    try:
        yield transport
    finally:
        await transport.close()


async def send(proposer: HttpTransport, node: KvsNode, message: Prepare | Accept) -> paxos.Reply:
    path = ACCEPT_PATH if isinstance(message, Accept) else PREPARE_PATH
    raw = await proposer.call(node.address, path, W.message_json(KEY, message), 10.0)
    return W.reply_from(raw)


async def crash(node: KvsNode) -> None:
    assert node.kill() == -signal.SIGKILL  # no shutdown code ran
    await node.astart()


def register(value: str) -> Register:
    version = Version(key=KEY, value=value, version=new_version_id(), timestamp=wall_ms(),
                      logical=0, origin="b", origin_joined_at=1)
    return Register(1, version)


async def test_a_promise_survives_kill_9_between_promise_and_accept(
        acceptor: KvsNode, proposer: HttpTransport) -> None:
    assert await send(proposer, acceptor, Prepare(PROMISED, VOTERS)) == Promise("a", PROMISED, None)
    await crash(acceptor)
    value = register("held")
    # Refused: the restarted acceptor still promised PROMISED (and holds no value).
    assert await send(proposer, acceptor, Accept(LOWER, value, VOTERS)) == Nack(
        "a", LOWER, PROMISED, of_accept=True, accepted=None)
    assert await send(proposer, acceptor, Prepare(LOWER, VOTERS)) == Nack("a", LOWER, PROMISED)
    # The round the promise was for goes on as if nothing happened.
    assert await send(proposer, acceptor, Accept(PROMISED, value, VOTERS)) == Ack("a", PROMISED, None)


async def test_an_accepted_value_survives_kill_9_and_is_reported_by_the_next_promise(
        acceptor: KvsNode, proposer: HttpTransport) -> None:
    value = register("chosen?")
    assert isinstance(await send(proposer, acceptor, Prepare(PROMISED, VOTERS)), Promise)
    assert await send(proposer, acceptor, Accept(PROMISED, value, VOTERS)) == Ack("a", PROMISED, None)
    await crash(acceptor)
    # The next round's proposer must learn of the value: it may have been chosen.
    assert await send(proposer, acceptor, Prepare(HIGHER, VOTERS)) == Promise(
        "a", HIGHER, Proposal(PROMISED, value))
    assert await send(proposer, acceptor, Accept(PROMISED, register("late"), VOTERS)) == Nack(
        "a", PROMISED, HIGHER, of_accept=True, accepted=PROMISED)
    # Stored in the same batch as the acceptor state: the version a local read shows.
    async with aiohttp.ClientSession() as http, http.get(f"{acceptor.url}/kv/{KEY}") as local:
        assert local.status == 200 and (await local.json())["value"] == "chosen?"
