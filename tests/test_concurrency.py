"""CAS is atomic on one node: 64 concurrent clients increment one counter for a few seconds.

Every client loops read -> conditional write -> (on 409) read again. If check and set
were not one critical section, two clients could both succeed from the same expected
state and one increment would be lost. So, per variant:

  * the final value equals the number of successful conditional writes;
  * no two successes were conditioned on the same expected state (modify_index,
    version, or checked index in a txn);
  * every 409 carries the current version's metadata, and it differs from what the
    loser expected;
  * the counter's history is the unbroken chain of successes (each parent is the
    previous success).
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from kvs.node import Node
from tests.conftest import Api

CLIENTS = 64
DURATION = 3.0  # seconds for the main (read-then-cas) variant, 2.0 for the others


@dataclass
class Tally:
    successes: list[Any] = field(default_factory=list)  # the expected state each success used
    new_versions: list[str] = field(default_factory=list)
    conflicts: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)


async def hammer(api: Api, attempt: Any, key: str, duration: float = DURATION) -> Tally:
    """Run CLIENTS copies of `attempt(api, key, tally)` in a loop for `duration` seconds."""
    created = await api.put(key, {"value": 0})
    assert created.status == 200
    tally = Tally()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + duration

    async def client() -> None:
        while loop.time() < deadline:
            await attempt(api, key, tally)

    await asyncio.gather(*(client() for _ in range(CLIENTS)))
    return tally


def conflict(tally: Tally, reply: Any, expected: Any, field_name: str) -> None:
    tally.conflicts += 1
    current = reply.body.get("current") if isinstance(reply.body, dict) else None
    if reply.body.get("error") != "cas_conflict" or not isinstance(current, dict):
        tally.problems.append(f"409 without current: {reply.body}")
    elif current[field_name] == expected:
        tally.problems.append(f"409 although current {field_name} is the expected {expected}")


async def read(api: Api, key: str) -> dict[str, Any]:
    got = await api.get(key)
    assert got.status == 200, got.body
    return got.body  # type: ignore[no-any-return]


async def cas_attempt(api: Api, key: str, tally: Tally) -> None:
    current = await read(api, key)
    expected = current["modify_index"]
    reply = await api.put(key, {"value": current["value"] + 1, "cas": expected})
    tally.statuses[reply.status] += 1
    if reply.status == 200:
        tally.successes.append(expected)
        tally.new_versions.append(reply.body["version"])
    elif reply.status == 409:
        conflict(tally, reply, expected, "modify_index")
    else:
        tally.problems.append(f"unexpected {reply.status}: {reply.body}")


class VersionChain:
    """if_version chaining: after a success, the next attempt reuses the returned version
    (no re-read); after a 409 the client reads again."""

    def __init__(self) -> None:
        self.known: dict[int, tuple[str, int]] = {}  # client id -> (version, value)

    async def attempt(self, api: Api, key: str, tally: Tally) -> None:
        me = id(asyncio.current_task())
        if me not in self.known:
            current = await read(api, key)
            self.known[me] = (current["version"], current["value"])
        expected, value = self.known.pop(me)
        reply = await api.put(key, {"value": value + 1, "if_version": expected})
        tally.statuses[reply.status] += 1
        if reply.status == 200:
            tally.successes.append(expected)
            tally.new_versions.append(reply.body["version"])
            self.known[me] = (reply.body["version"], value + 1)
        elif reply.status == 409:
            conflict(tally, reply, expected, "version")
        else:
            tally.problems.append(f"unexpected {reply.status}: {reply.body}")


async def txn_attempt(api: Api, key: str, tally: Tally) -> None:
    current = await read(api, key)
    expected = current["modify_index"]
    reply = await api.txn([
        {"op": "check", "key": key, "cas": expected},
        {"op": "set", "key": key, "value": current["value"] + 1},
    ])
    tally.statuses[reply.status] += 1
    if reply.status == 200:
        tally.successes.append(expected)
        tally.new_versions.append(reply.body["results"][1]["version"])
    elif reply.status == 409:
        tally.conflicts += 1
        failed = reply.body.get("failed")
        if (reply.body.get("error") != "cas_conflict" or not failed or failed[0]["index"] != 0
                or not isinstance(failed[0].get("current"), dict)):
            tally.problems.append(f"txn 409 without failed/current: {reply.body}")
        elif failed[0]["current"]["modify_index"] == expected:
            tally.problems.append(f"txn 409 although current modify_index is the expected {expected}")
    else:
        tally.problems.append(f"unexpected {reply.status}: {reply.body}")


async def assert_linear(api: Api, key: str, tally: Tally, label: str) -> None:
    final = await read(api, key)
    print(f"\n[{label}] {CLIENTS} clients: {len(tally.successes)} successes, "
          f"{tally.conflicts} conflicts, statuses {dict(tally.statuses)}, final value {final['value']}")
    assert not tally.problems, tally.problems[:5]
    assert len(tally.successes) >= 20, "too few successes to mean anything"
    assert tally.conflicts > 0, "no contention: the test did not exercise the race"
    duplicated = [e for e, n in Counter(tally.successes).items() if n > 1]
    assert not duplicated, f"two successes from the same expected state: {duplicated[:5]}"
    assert final["value"] == len(tally.successes), "lost or phantom increments"
    # The history (limit 10 by default) is the tail of the chain of successful writes.
    history = (await api.get(key, history="true")).body["revisions"]
    assert [r["value"] for r in history] == list(range(final["value"], final["value"] - len(history), -1))
    assert {r["version"] for r in history if r["value"] > 0} <= set(tally.new_versions)
    assert all(r["parent"] == older["version"] for r, older in itertools.pairwise(history))
    assert not any(r["superseded"] for r in history)


@pytest.fixture
async def api64(node: Node) -> AsyncIterator[Api]:
    """An Api whose connection pool is large enough for every client at once."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CLIENTS * 2)) as session:
        yield Api(session, node.url)


async def test_64_clients_read_then_cas(api64: Api) -> None:
    tally = await hammer(api64, cas_attempt, "counter/cas")
    await assert_linear(api64, "counter/cas", tally, "cas")


async def test_64_clients_if_version_chaining(api64: Api) -> None:
    tally = await hammer(api64, VersionChain().attempt, "counter/if_version", 2.0)
    await assert_linear(api64, "counter/if_version", tally, "if_version")


async def test_64_clients_txn_check_and_set(api64: Api) -> None:
    tally = await hammer(api64, txn_attempt, "counter/txn", 2.0)
    await assert_linear(api64, "counter/txn", tally, "txn")
