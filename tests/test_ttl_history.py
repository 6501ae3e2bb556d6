"""TTL, leases, purge, history and listing/blocking reads (docs/api.md#versions, #reads and #durability).

TTLs are a few hundred milliseconds; where a test must let one pass it sleeps until
the server's own `expires_at` (same process, same wall clock) plus a small margin.
Everything else waits on a condition.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from kvs.clock import wall_ms
from kvs.node import Node
from tests.conftest import Api, NodeFactory, eventually


async def node_api(make_node: NodeFactory, http: Any, **settings: Any) -> tuple[Node, Api]:
    node = await make_node(**settings)
    return node, Api(http, node.url)


async def sleep_past(expires_at_ms: int, margin_ms: int = 30) -> None:
    """Let a TTL pass: sleep until the wall clock is beyond `expires_at_ms`."""
    await asyncio.sleep(max(0, expires_at_ms + margin_ms - wall_ms()) / 1000)
    assert wall_ms() > expires_at_ms


# -- TTL -----------------------------------------------------------------------------------

async def test_expires_at_is_the_wall_clock_plus_ttl(api: Api) -> None:
    """The accepting node's wall clock when it took the write + ttl; the HLC stamp is at
    least that wall time (it may run ahead after observing a peer's clock)."""
    async def written_at(call: Any) -> tuple[int, Any, int]:
        before = wall_ms()
        reply = await call
        return before, reply, wall_ms()

    for ttl, expected_ms in [(0.3, 300), (2.5, 2500), (60, 60_000), (1, 1000), (1.2345, 1234)]:
        before, put, after = await written_at(api.put("ttl", {"value": ttl, "ttl": ttl}))
        assert put.status == 200
        accepted_at = put.body["expires_at"] - expected_ms
        assert before <= accepted_at <= min(after, put.body["timestamp"])
        got = await api.get("ttl")
        assert got.body["expires_at"] == put.body["expires_at"]
    # rounds up to 1 ms, never 0
    before, tiny, after = await written_at(api.put("ttl/tiny", {"value": 0, "ttl": 0.0004}))
    assert before + 1 <= tiny.body["expires_at"] <= after + 1
    before, txn, after = await written_at(
        api.txn([{"op": "set", "key": "ttl/txn", "value": 1, "ttl": 7}]))
    result = txn.body["results"][0]
    assert before + 7000 <= result["expires_at"] <= min(after, result["timestamp"]) + 7000
    # a write without ttl clears it
    plain = await api.put("ttl/txn", {"value": 2})
    assert plain.body["expires_at"] is None
    assert (await api.get("ttl/txn")).body["expires_at"] is None


async def test_expired_key_is_absent_to_every_read_before_the_sweeper(
        make_node: NodeFactory, http: Any) -> None:
    node, api = await node_api(make_node, http, ttl_sweep_interval_ms=60_000)
    assert (await api.put("exp/keep", {"value": "stays"})).status == 200
    put = await api.put("exp/gone", {"value": "soon", "ttl": 0.2})
    version = put.body["version"]
    assert (await api.get("exp/gone")).status == 200
    assert (await api.get("exp/", keys="true")).body["keys"] == ["exp/gone", "exp/keep"]
    await sleep_past(put.body["expires_at"])

    assert node.engine is not None and node.storage is not None
    assert node.engine.stats.expired == 0  # the sweeper has not run
    got = await api.get("exp/gone")
    assert got.status == 404 and got.body["error"] == "not_found"
    assert (await api.get("exp/gone", raw="true")).status == 404
    assert (await api.get("exp/", recurse="true")).body["items"] == [(await api.get("exp/keep")).body]
    assert (await api.get("exp/", keys="true")).body["keys"] == ["exp/keep"]
    assert (await api.get("", keys="true", separator="/")).body["keys"] == ["exp/"]
    assert (await api.txn([{"op": "get", "key": "exp/gone"}])).body["results"] == [None]
    assert (await api.delete("exp/gone")).status == 404
    # history still holds the version, and ?version= finds it
    history = await api.get("exp/gone", history="true")
    assert [r["version"] for r in history.body["revisions"]] == [version]
    assert (await api.get("exp/gone", version=version)).body["value"] == "soon"
    assert node.storage.check_consistency() == []


async def test_sweeper_drops_expired_keys(make_node: NodeFactory, http: Any) -> None:
    node, api = await node_api(make_node, http, ttl_sweep_interval_ms=50)
    assert node.engine is not None and node.storage is not None
    storage = node.storage
    assert (await api.put("s/keep", {"value": 1})).status == 200
    puts = [await api.put(f"s/t{i}", {"value": i, "ttl": 0.2}) for i in range(3)]
    assert all(p.status == 200 for p in puts)
    assert storage.live_keys == 4
    await eventually(lambda: node.engine.stats.expired == 3 and storage.live_keys == 1,
                     timeout=5, what="the sweeper to expire three keys")
    assert (await api.get("s/", keys="true")).body["keys"] == ["s/keep"]
    assert storage.check_consistency() == []
    # a swept key can be re-created, and counts again
    again = await api.put("s/t0", {"value": "back", "cas": 0})
    assert again.status == 200 and again.body["create_index"] == again.body["modify_index"]
    assert (await api.get("s/t0")).body["parent"] == puts[0].body["version"]
    assert storage.live_keys == 2
    assert storage.check_consistency() == []


async def test_lease_renewal(make_node: NodeFactory, http: Any) -> None:
    node, api = await node_api(make_node, http, ttl_sweep_interval_ms=50)
    assert node.storage is not None
    first = await api.put("lease", {"value": "holder-1", "ttl": 0.5, "cas": 0})
    assert first.status == 200
    original = first.body["expires_at"]
    await asyncio.sleep(0.25)
    # a competitor cannot take or renew it
    stolen = await api.put("lease", {"value": "holder-2", "if_value": "holder-2", "ttl": 0.5})
    assert stolen.status == 409
    assert (await api.put("lease", {"value": "holder-2", "cas": 0})).status == 409
    renewed = await api.put("lease", {"value": "holder-1", "if_value": "holder-1", "ttl": 0.5})
    assert renewed.status == 200, renewed.body
    extended = renewed.body["expires_at"]
    assert extended == renewed.body["timestamp"] + 500 and extended > original
    assert renewed.body["create_index"] == first.body["create_index"]

    await sleep_past(original)
    got = await api.get("lease")
    assert got.status == 200, "a renewed lease must outlive its original expiry"
    assert got.body["value"] == "holder-1" and got.body["expires_at"] == extended

    await sleep_past(extended)
    late = await api.put("lease", {"value": "holder-1", "if_value": "holder-1", "ttl": 0.5})
    assert late.status == 404 and late.body["error"] == "not_found"
    assert (await api.get("lease")).status == 404
    taken = await api.put("lease", {"value": "holder-2", "ttl": 0.5, "cas": 0})
    assert taken.status == 200
    assert taken.body["create_index"] == taken.body["modify_index"] > first.body["create_index"]
    history = (await api.get("lease", history="true")).body["revisions"]
    assert [r["value"] for r in history] == ["holder-2", "holder-1", "holder-1"]
    assert history[0]["parent"] == renewed.body["version"]
    assert node.storage.check_consistency() == []


async def test_tombstones_and_expired_versions_are_purged(make_node: NodeFactory, http: Any) -> None:
    node, api = await node_api(make_node, http, tombstone_gc_seconds=1, ttl_sweep_interval_ms=50)
    assert node.engine is not None and node.storage is not None
    for n in range(3):
        last = await api.put("p/deleted", {"value": n})
        assert last.status == 200
    assert (await api.delete("p/deleted")).status == 200
    assert len((await api.get("p/deleted", history="true")).body["revisions"]) == 4
    expiring = await api.put("p/expired", {"value": "x", "ttl": 0.2})
    assert (await api.put("p/kept", {"value": "k"})).status == 200
    index = (await api.get("p/kept")).index

    async def purged() -> bool:
        return all([(await api.get(k, history="true")).status == 404
                    for k in ("p/deleted", "p/expired")])

    await eventually(purged, timeout=5, what="the purge of the tombstone and the expired key")
    assert node.engine.stats.purged == 2
    for key, version in (("p/deleted", last.body["version"]), ("p/expired", expiring.body["version"])):
        reply = await api.get(key, history="true")
        assert reply.body["error"] == "not_found"
        assert (await api.get(key, version=version)).status == 404
    assert (await api.get("p/", keys="true")).body["keys"] == ["p/kept"]
    assert node.storage.live_keys == 1
    assert node.storage.check_consistency() == []
    # purging applies no version: the index did not move, and never goes back
    assert (await api.get("p/kept")).index == index
    again = await api.put("p/deleted", {"value": "new life", "cas": 0})
    assert again.status == 200 and again.body["modify_index"] == index + 1
    fresh = (await api.get("p/deleted", history="true")).body["revisions"]
    assert len(fresh) == 1 and fresh[0]["parent"] is None
    assert node.storage.check_consistency() == []


# -- history -------------------------------------------------------------------------------

async def test_history_is_bounded_newest_first_and_chained(make_node: NodeFactory, http: Any) -> None:
    _, api = await node_api(make_node, http, revision_history_limit=3)
    writes = [(await api.put("h", {"value": n})).body for n in range(5)]
    history = await api.get("h", history="true")
    assert history.status == 200 and history.body["key"] == "h"
    revisions = history.body["revisions"]
    assert [r["value"] for r in revisions] == [4, 3, 2]
    assert [r["version"] for r in revisions] == [w["version"] for w in reversed(writes[2:])]
    assert [r["parent"] for r in revisions] == [w["version"] for w in reversed(writes[1:4])]
    assert all(not r["superseded"] and not r["deleted"] for r in revisions)
    assert [r["modify_index"] for r in revisions] == sorted(
        (r["modify_index"] for r in revisions), reverse=True)
    assert revisions[0] == (await api.get("h")).body
    # ?version= reads from history while the version is kept, 404 once it fell out
    old = await api.get("h", version=writes[2]["version"])
    assert old.status == 200 and old.body["value"] == 2 and old.body == revisions[2]
    for gone in writes[:2]:
        reply = await api.get("h", version=gone["version"])
        assert reply.status == 404 and reply.body["error"] == "not_found"
    assert (await api.delete("h")).status == 200
    revisions = (await api.get("h", history="true")).body["revisions"]
    assert [(r["value"], r["deleted"]) for r in revisions] == [(None, True), (4, False), (3, False)]
    assert (await api.get("h", version=writes[2]["version"])).status == 404
    assert (await api.get("h", version=writes[4]["version"])).body["value"] == 4
    assert (await api.get("never", history="true")).status == 404


async def test_default_history_limit_is_ten(api: Api) -> None:
    for n in range(12):
        assert (await api.put("h", {"value": n})).status == 200
    revisions = (await api.get("h", history="true")).body["revisions"]
    assert [r["value"] for r in revisions] == list(range(11, 1, -1))


async def test_history_disabled_keeps_only_the_current_version(make_node: NodeFactory,
                                                               http: Any) -> None:
    node, api = await node_api(make_node, http, revision_history_enabled=False)
    writes = [(await api.put("h", {"value": n})).body for n in range(3)]
    revisions = (await api.get("h", history="true")).body["revisions"]
    assert revisions == [(await api.get("h")).body]
    assert revisions[0]["value"] == 2 and revisions[0]["parent"] == writes[1]["version"]
    assert (await api.get("h", version=writes[0]["version"])).status == 404
    assert (await api.get("h", version=writes[2]["version"])).status == 200
    # CAS still works against the current version
    assert (await api.put("h", {"value": 3, "if_version": writes[2]["version"]})).status == 200
    assert (await api.delete("h")).status == 200
    revisions = (await api.get("h", history="true")).body["revisions"]
    assert len(revisions) == 1 and revisions[0]["deleted"] is True
    assert node.storage is not None and node.storage.check_consistency() == []


# -- listing -------------------------------------------------------------------------------

async def put_all(api: Api, keys: list[str]) -> None:
    shuffled = list(keys)
    random.Random(7).shuffle(shuffled)
    for key in shuffled:
        assert (await api.put(key, {"value": key})).status == 200, key


async def test_recurse_and_keys_in_key_order(api: Api) -> None:
    await put_all(api, ["l/b", "l/a", "l/c/d", "l/a/x", "lx", "l", "k", "m/1"])
    assert (await api.delete("l/c/d")).status == 200
    await api.put("l/ttl", {"value": 1, "ttl": 30})
    items = (await api.get("l/", recurse="true")).body
    assert items["prefix"] == "l/" and items["next"] is None
    names = ["l/a", "l/a/x", "l/b", "l/ttl"]
    assert [i["key"] for i in items["items"]] == names
    assert items["items"][0] == (await api.get("l/a")).body
    keys = await api.get("l/", keys="true")
    assert keys.body == {"prefix": "l/", "keys": names, "next": None}
    assert (await api.get("l", keys="true")).body["keys"] == ["l", *names, "lx"]
    everything = (await api.get("", keys="true")).body["keys"]
    assert everything == ["k", "l", *names, "lx", "m/1"]
    assert (await api.get("nothing/", keys="true")).body == {"prefix": "nothing/", "keys": [],
                                                           "next": None}
    assert (await api.get("nothing/", recurse="true")).body["items"] == []


async def test_separator_groups_like_consul(api: Api) -> None:
    await put_all(api, ["web/a", "web/b/c", "web/b/d", "web/e/", "web/f/g/h", "weba", "x/y", "z"])

    async def keys(prefix: str, **params: str) -> list[str]:
        reply = await api.get(prefix, keys="true", separator="/", **params)
        assert reply.status == 200, reply.body
        return reply.body["keys"]

    assert await keys("web/") == ["web/a", "web/b/", "web/e/", "web/f/"]
    assert await keys("web") == ["web/", "weba"]
    assert await keys("") == ["web/", "weba", "x/", "z"]
    assert await keys("web/b/") == ["web/b/c", "web/b/d"]
    assert await keys("web/f/") == ["web/f/g/"]
    reply = await api.get("web/", keys="true", separator="b/")
    assert reply.body["keys"] == ["web/a", "web/b/", "web/e/", "web/f/g/h"]


async def test_pagination_visits_every_key_once(api: Api) -> None:
    keys = sorted({f"pg/{random.Random(n).randrange(10**6):06}" for n in range(23)} | {"pg/", "pg/z/1"})
    await put_all(api, [*keys, "pf", "ph"])
    for limit in (1, 4, 7, len(keys), len(keys) + 5):
        for mode in ("keys", "recurse"):
            seen: list[str] = []
            after: str | None = None
            pages = 0
            while True:
                params = {mode: "true", "limit": str(limit)}
                if after is not None:
                    params["after"] = after
                page = (await api.get("pg/", **params)).body
                got = page["keys"] if mode == "keys" else [i["key"] for i in page["items"]]
                assert len(got) <= limit
                seen += got
                pages += 1
                after = page["next"]
                if after is None:
                    break
                assert after == got[-1]
            assert seen == keys, (limit, mode)
            assert pages == -(-len(keys) // limit)  # no empty trailing page


async def test_pagination_with_separator(api: Api) -> None:
    await put_all(api, ["g/a/1", "g/a/2", "g/a/3", "g/b", "g/c/1", "g/d/x/y", "g/d/z", "g/e",
                        "g/f/1", "g/f/2"])
    expected = ["g/a/", "g/b", "g/c/", "g/d/", "g/e", "g/f/"]
    for limit in (1, 2, 4, 6):
        seen: list[str] = []
        after: str | None = None
        while True:
            params = {"keys": "true", "separator": "/", "limit": str(limit)}
            if after is not None:
                params["after"] = after
            page = (await api.get("g/", **params)).body
            seen += page["keys"]
            after = page["next"]
            if after is None:
                break
        assert seen == expected, limit


async def test_after_outside_the_prefix(api: Api) -> None:
    await put_all(api, ["a1", "b/1", "b/2", "c"])
    assert (await api.get("b", keys="true", after="a")).body["keys"] == ["b/1", "b/2"]
    assert (await api.get("b", keys="true", after="")).body["keys"] == ["b/1", "b/2"]
    assert (await api.get("b/", recurse="true", after="b")).body["items"][0]["key"] == "b/1"
    assert (await api.get("b", keys="true", after="b/1")).body["keys"] == ["b/2"]
    assert (await api.get("b", keys="true", after="c")).body["keys"] == []


# -- blocking queries ----------------------------------------------------------------------

async def blocked(node: Node, count: int = 1) -> None:
    await eventually(lambda: len(node.watchers) == count, timeout=5, what="the query to block")


async def test_blocking_query_on_a_key(node: Node, api: Api) -> None:
    put = await api.put("w", {"value": 1})
    index = put.body["modify_index"]
    loop = asyncio.get_running_loop()
    start = loop.time()
    task = asyncio.create_task(api.get("w", index=str(index), wait="2s"))
    await blocked(node)
    assert not task.done()
    assert (await api.put("other", {"value": 1})).status == 200  # another key: still blocked
    await asyncio.sleep(0)
    changed = await api.put("w", {"value": 2})
    reply = await asyncio.wait_for(task, 1.5)
    assert loop.time() - start < 1.5
    assert reply.status == 200 and reply.body["value"] == 2
    assert reply.body["modify_index"] == changed.body["modify_index"] > index
    assert reply.index >= changed.body["modify_index"]
    assert len(node.watchers) == 0

    # an index already behind the key answers at once
    start = loop.time()
    reply = await api.get("w", index=str(index), wait="2s")
    assert reply.body["value"] == 2 and loop.time() - start < 0.5

    # a delete wakes it too
    task = asyncio.create_task(api.get("w", index=str(changed.body["modify_index"]), wait="2s"))
    await blocked(node)
    assert (await api.delete("w")).status == 200
    reply = await asyncio.wait_for(task, 1.5)
    assert reply.status == 404

    # an absent key blocks until it is created
    task = asyncio.create_task(api.get("new", index=str(reply.index), wait="2s"))
    await blocked(node)
    assert (await api.put("new", {"value": "here"})).status == 200
    reply = await asyncio.wait_for(task, 1.5)
    assert reply.status == 200 and reply.body["value"] == "here"


async def test_blocking_query_on_a_prefix(node: Node, api: Api) -> None:
    await put_all(api, ["p/a", "p/b", "q"])
    index = (await api.get("p/a")).index
    loop = asyncio.get_running_loop()
    for mode in ("recurse", "keys"):
        start = loop.time()
        task = asyncio.create_task(api.get("p/", **{mode: "true"}, index=str(index), wait="2s"))
        await blocked(node)
        assert (await api.put("q", {"value": "outside"})).status == 200
        assert (await api.put("pz", {"value": "outside too"})).status == 200
        await asyncio.sleep(0)
        assert not task.done()
        key = f"p/new-{mode}"
        written = await api.put(key, {"value": mode})
        reply = await asyncio.wait_for(task, 1.5)
        assert loop.time() - start < 1.5
        names = reply.body["keys"] if mode == "keys" else [i["key"] for i in reply.body["items"]]
        assert key in names and "q" not in names and "pz" not in names
        index = written.body["modify_index"]


async def test_blocking_query_times_out_with_current_state(node: Node, api: Api) -> None:
    put = await api.put("t/k", {"value": "same"})
    index = str(put.body["modify_index"])
    loop = asyncio.get_running_loop()
    start = loop.time()
    key_task = asyncio.create_task(api.get("t/k", index=index, wait="1s"))
    prefix_task = asyncio.create_task(api.get("t/", recurse="true", index=index, wait="1000ms"))
    await blocked(node, 2)
    assert (await api.put("u", {"value": "elsewhere"})).status == 200
    key_reply, prefix_reply = await asyncio.wait_for(asyncio.gather(key_task, prefix_task), 5)
    elapsed = loop.time() - start
    assert 0.9 <= elapsed < 2.5, elapsed
    assert key_reply.status == 200 and key_reply.body["version"] == put.body["version"]
    assert [i["version"] for i in prefix_reply.body["items"]] == [put.body["version"]]
    assert len(node.watchers) == 0


@pytest.mark.parametrize("wait", ["0s", "0ms", "10ms"])
async def test_short_waits(api: Api, wait: str) -> None:
    put = await api.put("k", {"value": 1})
    reply = await api.get("k", index=str(put.body["modify_index"]), wait=wait)
    assert reply.status == 200 and reply.body["value"] == 1
