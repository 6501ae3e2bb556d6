"""Blocking queries (`?index=N&wait=`): prompt on change, on time-out, cheap when many wait.

tests/test_ttl_history.py covers the edge cases of the protocol (an index already behind,
deletes, absent keys); this module covers promptness, scale and cost.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiohttp
import pytest

from kvs.node import Node
from kvs.watch import Watchers
from tests.conftest import Api, NodeFactory, eventually

MODES: list[dict[str, str]] = [{}, {"recurse": "true"}, {"keys": "true"}]
MODE_IDS = ["key", "recurse", "keys"]


async def blocked(node: Node, count: int = 1) -> None:
    await eventually(lambda: len(node.watchers) == count, timeout=10, what=f"{count} blocked queries")


def path_for(mode: dict[str, str]) -> str:
    return "w/k" if not mode else "w/"


def names_in(reply: Any, mode: dict[str, str]) -> list[str]:
    if "keys" in mode:
        return reply.body["keys"]
    if "recurse" in mode:
        return [item["key"] for item in reply.body["items"]]
    return [reply.body["key"]]


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
async def test_returns_promptly_on_change(node: Node, api: Api, mode: dict[str, str]) -> None:
    put = await api.put("w/k", {"value": 1})
    loop = asyncio.get_running_loop()
    start = loop.time()
    task = asyncio.create_task(api.get(path_for(mode), **mode, index=str(put.index), wait="30s"))
    await blocked(node)
    assert (await api.put("elsewhere", {"value": 1})).status == 200
    assert (await api.put("w", {"value": 1})).status == 200  # not under "w/"
    await asyncio.sleep(0.05)
    assert not task.done()
    changed = await api.put("w/k", {"value": 2})
    reply = await asyncio.wait_for(task, 5)
    assert loop.time() - start < 5  # far from the 30 s wait
    assert reply.status == 200 and names_in(reply, mode) == ["w/k"]
    if "keys" not in mode:
        item = reply.body if not mode else reply.body["items"][0]
        assert item["value"] == 2 and item["modify_index"] == changed.body["modify_index"]
    assert reply.index >= changed.body["modify_index"]
    assert len(node.watchers) == 0


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
async def test_returns_current_state_after_wait(node: Node, api: Api, mode: dict[str, str]) -> None:
    put = await api.put("w/k", {"value": "same"})
    loop = asyncio.get_running_loop()
    start = loop.time()
    task = asyncio.create_task(api.get(path_for(mode), **mode, index=str(put.index), wait="600ms"))
    await blocked(node)
    assert (await api.put("other", {"value": 1})).status == 200
    reply = await asyncio.wait_for(task, 5)
    elapsed = loop.time() - start
    assert 0.55 <= elapsed < 5, elapsed
    assert reply.status == 200 and names_in(reply, mode) == ["w/k"]
    assert len(node.watchers) == 0


async def test_hundreds_of_watchers_wake_on_one_write_and_the_node_stays_responsive(
        node: Node) -> None:
    counts = {"key": 150, "recurse": 100, "keys": 100}  # 350 blocked requests
    total = sum(counts.values())
    connector = aiohttp.TCPConnector(limit=0)  # the default pool (100) would queue them
    async with aiohttp.ClientSession(connector=connector) as session:
        api = Api(session, node.url)
        put = await api.put("hot/key", {"value": 0})
        index = str(put.index)
        tasks = (
            [api.get("hot/key", index=index, wait="60s") for _ in range(counts["key"])]
            + [api.get("hot/", recurse="true", index=index, wait="60s")
               for _ in range(counts["recurse"])]
            + [api.get("hot/", keys="true", index=index, wait="60s") for _ in range(counts["keys"])]
        )
        waiting = [asyncio.create_task(t) for t in tasks]
        await blocked(node, total)

        # while they wait, the node answers other requests at once
        loop = asyncio.get_running_loop()
        for _ in range(5):
            start = loop.time()
            assert (await api.request("GET", "/health")).status == 200
            assert (await api.put("cold/key", {"value": 1})).status == 200
            assert (await api.get("cold/key")).status == 200
            assert loop.time() - start < 2  # milliseconds when idle; generous for loaded CI
        assert not any(t.done() for t in waiting)  # writes elsewhere woke nobody
        assert len(node.watchers) == total

        start = loop.time()
        written = await api.put("hot/key", {"value": 1})
        replies = await asyncio.wait_for(asyncio.gather(*waiting), 10)
        assert loop.time() - start < 10
    assert all(r.status == 200 for r in replies)
    key_replies = replies[: counts["key"]]
    assert all(r.body["version"] == written.body["version"] for r in key_replies)
    recurse_replies = replies[counts["key"]: counts["key"] + counts["recurse"]]
    assert all(r.body["items"][0]["version"] == written.body["version"] for r in recurse_replies)
    assert all(r.body["keys"] == ["hot/key"] for r in replies[-counts["keys"]:])
    assert len(node.watchers) == 0


async def test_a_wake_up_does_not_rescan_the_prefix(node: Node, api: Api,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The prefix scan runs at most once per query, and not at all for the node's own index."""
    for i in range(20):
        await api.put(f"scan/{i:02}", {"value": i})
    index = (await api.put("unrelated", {"value": 0})).index
    scans: list[str] = []
    real = node.storage.scan_sets

    def counting(prefix: str, after: str | None = None) -> Any:
        scans.append(prefix)
        return real(prefix, after)

    monkeypatch.setattr(node.storage, "scan_sets", counting)
    # X-KVS-Index round trip: no scan to decide to block, none per wake-up
    task = asyncio.create_task(api.get("scan/", keys="true", index=str(index), wait="30s"))
    await blocked(node)
    for i in range(5):  # outside the prefix: no wake-up
        await api.put(f"scam/{i}", {"value": i})
    assert scans == [] and not task.done()
    await api.put("scan/new", {"value": 1})
    reply = await asyncio.wait_for(task, 5)
    assert "scan/new" in reply.body["keys"]
    assert scans == ["scan/"]  # only the listing that answers

    # an older index: one scan to see it is already exceeded, then the listing
    scans.clear()
    reply = await api.get("scan/", keys="true", index=str(index), wait="30s")
    assert reply.status == 200 and scans == ["scan/", "scan/"]


async def test_expiry_of_a_watched_key_ends_the_wait(make_node: NodeFactory, http: Any) -> None:
    node = await make_node(ttl_sweep_interval_ms=50)
    api = Api(http, node.url)
    put = await api.put("lease/holder", {"value": "a", "ttl": 0.3})
    loop = asyncio.get_running_loop()
    start = loop.time()
    key = asyncio.create_task(api.get("lease/holder", index=str(put.index), wait="30s"))
    prefix = asyncio.create_task(api.get("lease/", keys="true", index=str(put.index), wait="30s"))
    await blocked(node, 2)
    key_reply, prefix_reply = await asyncio.wait_for(asyncio.gather(key, prefix), 10)
    assert loop.time() - start < 10
    assert key_reply.status == 404
    assert prefix_reply.status == 200 and prefix_reply.body["keys"] == []


async def test_watching_the_service_registry(node: Node, api: Api) -> None:
    """Registrations are KV versions, so `/kv/_services/` blocking queries watch the registry."""
    index = (await api.get("_services/", keys="true")).index
    task = asyncio.create_task(api.get("_services/", recurse="true", index=str(index), wait="30s"))
    await blocked(node)
    reply = await api.request("POST", "/services", json={"name": "web", "port": 80})
    assert reply.status == 200
    watched = await asyncio.wait_for(task, 5)
    assert [item["value"]["name"] for item in watched.body["items"]] == ["web"]


async def test_changes_between_wake_ups_are_not_lost() -> None:
    """A watch stays registered while its query checks, so what lands meanwhile is kept."""
    watchers = Watchers()
    with watchers.watch("p/", prefix=True) as watch:
        watchers.notify_keys(["p/a"])
        watchers.notify_keys(["q/x", "p/b"])  # nobody is awaiting right now
        assert await watch.next(1) == ({"p/a", "p/b"}, False)
        assert await watch.next(0.01) is None
        watchers.notify_keys(["p/c"], expired=True)
        assert await watch.next(1) == ({"p/c"}, True)
    assert len(watchers) == 0
    # many registered prefixes: the covering ones are found either way
    with contextlib.ExitStack() as stack:
        root = stack.enter_context(watchers.watch("", prefix=True))
        deep = stack.enter_context(watchers.watch("a/b", prefix=True))
        others = [stack.enter_context(watchers.watch(f"zz{i}", prefix=True)) for i in range(50)]
        watchers.notify_keys(["a/bc"])  # 52 prefixes, a 4-character key: walks the key
        assert root.changed == deep.changed == {"a/bc"}
        assert not any(w.changed for w in others)
    assert len(watchers) == 0


async def test_a_stopping_node_answers_its_blocking_queries_at_once(make_node: NodeFactory) -> None:
    """Shutdown does not wait out the blocking queries (a UI tab always holds one open)."""
    node = await make_node()
    async with aiohttp.ClientSession() as http:
        api = Api(http, node.url)
        put = await api.put("w/k", {"value": 1})
        waiting = [asyncio.create_task(api.get(path_for(mode), **mode, index=str(put.index), wait="30s"))
                   for mode in MODES]
        await blocked(node, len(MODES))
        loop = asyncio.get_running_loop()
        start = loop.time()
        await node.stop()
        assert loop.time() - start < 5  # far from the 30 s wait
        replies = await asyncio.wait_for(asyncio.gather(*waiting), 5)
        assert [reply.status for reply in replies] == [200] * len(MODES)
        assert replies[0].body["value"] == 1
