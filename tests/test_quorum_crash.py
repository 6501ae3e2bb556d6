"""Quorum keys across kill -9 (issue 14): a `kvs serve` subprocess, the only voter, takes
concurrent quorum increments (GET consistency=quorum, PUT if_seq) and is SIGKILLed at a
random moment, a few times. After each restart: the key's quorum value is at least every
acknowledged one and equals its seq minus one (each increment is one change on the chain:
nothing acknowledged was lost, nothing was applied twice).
"""

from __future__ import annotations

import asyncio
import random

import aiohttp

from kvs.testing import KvsNode, NodeGroup
from tests.procs import procs_fixture  # noqa: F401  (the `procs` fixture)

ROUNDS = 3
WORKERS = 6
Q = {"consistency": "quorum"}


async def _increment_until_killed(http: aiohttp.ClientSession, url: str, acked: list[int]) -> None:
    while True:
        try:
            async with http.get(f"{url}/kv/n", params=Q) as read:
                current = await read.json()
                if read.status != 200:
                    continue
            body = {"value": current["value"] + 1, "if_seq": current["seq"], **Q}
            async with http.put(f"{url}/kv/n", json=body) as wrote:
                if wrote.status == 200:
                    acked.append(body["value"])
        except (TimeoutError, aiohttp.ClientError):
            return  # the node is gone


async def _quorum_get(http: aiohttp.ClientSession, node: KvsNode) -> dict[str, int]:
    async with http.get(f"{node.url}/kv/n", params=Q) as read:
        assert read.status == 200, await read.text()
        return await read.json()  # type: ignore[no-any-return]


async def test_kill_9_keeps_every_acknowledged_quorum_change(procs: NodeGroup) -> None:
    node = procs.start("q", env={"KVS_CAS_ENABLED": "true"})
    rng = random.Random()
    acked: list[int] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        async with http.put(f"{node.url}/kv/n", json={"value": 0, **Q}) as created:
            assert created.status == 200
        for _ in range(ROUNDS):
            workers = [asyncio.create_task(_increment_until_killed(http, node.url or "", acked))
                       for _ in range(WORKERS)]
            await asyncio.sleep(rng.uniform(0.2, 0.8))
            node.kill()
            await asyncio.wait_for(asyncio.gather(*workers), 30)
            await node.astart()
            after = await _quorum_get(http, node)
            assert after["value"] >= max(acked, default=0), (after, max(acked, default=0))
            assert after["seq"] == after["value"] + 1, after
        assert len(acked) == len(set(acked)), "an increment was acknowledged twice"
        assert acked, "no increment was acknowledged before the kills"
