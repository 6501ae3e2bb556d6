"""A SIGKILLed node, restarted on its data dir, catches up on what it missed (real processes)."""

from __future__ import annotations

import aiohttp

from kvs.testing import NodeGroup
from tests.conftest import Api, eventually
from tests.procs import procs_fixture  # noqa: F401  (the `procs` fixture)

FAST = {"KVS_CAS_ENABLED": "true", "KVS_GOSSIP_INTERVAL_MS": "100", "KVS_PROBE_TIMEOUT_MS": "200",
        "KVS_SYNC_INTERVAL_MS": "300", "KVS_TTL_SWEEP_INTERVAL_MS": "100"}


async def _dump(http: aiohttp.ClientSession, url: str) -> list:  # type: ignore[type-arg]
    async with http.post(url + "/internal/dump", data=b"{}") as resp:
        assert resp.status == 200
        sets = await resp.json()
    local = ("modify_index", "create_index")
    return [[{k: v for k, v in ver.items() if k not in local} for ver in s] for s in sets]


async def test_killed_node_catches_up_and_deletes_and_expiries_stay_gone(
    procs: NodeGroup, http: aiohttp.ClientSession
) -> None:
    a = await procs.node("a", env=FAST).astart()
    b = await procs.node("b", env=FAST, seeds=[a]).astart()
    c = await procs.node("c", env=FAST, seeds=[a]).astart()
    api_a, api_c = Api(http, a.url), Api(http, c.url)
    for i in range(50):
        assert (await api_a.put(f"k{i}", {"value": i})).status == 200
    await eventually(lambda: _has(http, c.url, "k49"), what="initial replication to c")

    c.kill()
    for i in range(10):
        assert (await api_a.delete(f"k{i}")).status == 200  # deletes c never saw
    for i in range(50, 80):
        assert (await api_a.put(f"k{i}", {"value": i})).status == 200  # writes c never saw
    assert (await api_a.put("lease", {"value": "short", "ttl": 0.3})).status == 200
    await eventually(lambda: _missing(http, a.url, "lease"), what="lease expiry on a")

    await c.astart()  # same data dir, same port
    await eventually(lambda: _same_dump(http, a.url, c.url), timeout=20, interval=0.1,
                     what="c to converge with a after restart")
    assert await _same_dump(http, b.url, c.url)
    for i in range(10):
        assert (await api_c.get(f"k{i}")).status == 404, "a delete made while c was down came back"
    assert (await api_c.get("lease")).status == 404, "an expired key came back"
    assert (await api_c.get("k79")).body["value"] == 79


async def _has(http: aiohttp.ClientSession, url: str, key: str) -> bool:
    return (await Api(http, url).get(key)).status == 200


async def _missing(http: aiohttp.ClientSession, url: str, key: str) -> bool:
    return (await Api(http, url).get(key)).status == 404


async def _same_dump(http: aiohttp.ClientSession, one: str, other: str) -> bool:
    return await _dump(http, one) == await _dump(http, other)
