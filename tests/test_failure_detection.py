"""Failure detection with the DEFAULT timings on a 5-node loopback cluster (issue 3's bound)."""

from __future__ import annotations

import asyncio
import time

from kvs.node import Node
from tests.conftest import NodeFactory, eventually


def _state(observer: Node, member_id: str) -> str | None:
    member = observer.membership.member(member_id)
    return member.state if member else None


async def test_killed_node_is_dead_everywhere_within_10s_and_no_live_node_is_accused(
    make_node: NodeFactory,
) -> None:
    first = await make_node()
    nodes = [first] + [await make_node(seed_nodes=[first.address]) for _ in range(4)]
    await eventually(lambda: all(len(n.membership.alive_peers()) == 4 for n in nodes), timeout=15,
                     what="5 nodes alive")
    victim, survivors = nodes[-1], nodes[:-1]
    victim_id = victim.engine.node_id
    accused: set[str] = set()

    async def watch_for_false_accusations() -> None:
        while True:
            for observer in survivors:
                for member in observer.membership.members():
                    if member["id"] != victim_id and member["state"] == "dead":
                        accused.add(member["id"])
            await asyncio.sleep(0.05)

    watcher = asyncio.create_task(watch_for_false_accusations())
    try:
        await victim.stop()  # sockets closed without a goodbye: a crash, to its peers
        started = time.monotonic()
        await eventually(lambda: all(_state(s, victim_id) == "dead" for s in survivors), timeout=12,
                         interval=0.05, what="every survivor to declare the killed node dead")
        elapsed = time.monotonic() - started
        print(f"killed node declared dead by all 4 survivors after {elapsed:.2f} s")
        assert elapsed < 10
        await asyncio.sleep(2)  # a quiet period after the failure: nobody else is accused
    finally:
        watcher.cancel()
    assert not accused, f"live nodes were declared dead: {accused}"
