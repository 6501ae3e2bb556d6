"""Replication and convergence on real in-process clusters (real sockets, real RocksDB)."""

from __future__ import annotations

import asyncio
import errno
import random
import time

import aiohttp
import pytest

from kvs import keys as K
from kvs.engine import Op
from kvs.model import Version, decode_set, wins
from tests.cluster import FAST, converged, dump, heal, partition, roots, start_cluster
from tests.conftest import Api, NodeFactory, eventually


async def _visible_everywhere(http: aiohttp.ClientSession, nodes, key: str, expect) -> None:  # type: ignore[no-untyped-def]
    async def check() -> bool:
        for node in nodes:
            reply = await Api(http, node.url).get(key)
            if not expect(reply):
                return False
        return True

    await eventually(check, timeout=5, what=f"{key} on every node")


async def test_every_kind_of_write_reaches_every_node(make_node: NodeFactory, http) -> None:  # type: ignore[no-untyped-def]
    nodes = await start_cluster(make_node, 3)
    a, b, c = (Api(http, n.url) for n in nodes)
    put = await a.put("put", {"value": "p"})
    await _visible_everywhere(http, nodes, "put", lambda r: r.status == 200
                              and r.body["version"] == put.body["version"])
    cas = await b.put("put", {"value": "q", "if_version": put.body["version"]})
    assert cas.status == 200
    await _visible_everywhere(http, nodes, "put", lambda r: r.status == 200 and r.body["value"] == "q")
    txn = await c.txn([{"op": "set", "key": "t1", "value": 1}, {"op": "set", "key": "t2", "value": 2}])
    assert txn.status == 200
    await _visible_everywhere(http, nodes, "t2", lambda r: r.status == 200 and r.body["value"] == 2)
    assert (await a.delete("put")).status == 200
    await _visible_everywhere(http, nodes, "put", lambda r: r.status == 404)
    ttl = await a.put("lease", {"value": "x", "ttl": 0.5})
    await _visible_everywhere(http, nodes, "lease", lambda r: r.status == 200
                              and r.body["expires_at"] == ttl.body["expires_at"])
    await _visible_everywhere(http, nodes, "lease", lambda r: r.status == 404)
    await converged(nodes)


async def test_write_to_visible_latency_on_loopback(make_node: NodeFactory, http) -> None:  # type: ignore[no-untyped-def]
    nodes = await start_cluster(make_node, 3)
    writer, reader = Api(http, nodes[0].url), Api(http, nodes[2].url)
    delays = []
    for i in range(50):
        started = time.perf_counter()
        await writer.put(f"lat/{i}", {"value": i})
        await eventually(lambda i=i: nodes[2].storage.read(f"lat/{i}"), timeout=1.0, interval=0.001,
                         what="the write on another node within 1 s")
        delays.append(time.perf_counter() - started)
    assert (await reader.get("lat/49")).status == 200
    delays.sort()
    print(f"write-to-visible: p50={delays[25] * 1000:.1f} ms max={delays[-1] * 1000:.1f} ms")


async def test_anti_entropy_alone_converges(make_node: NodeFactory, http) -> None:  # type: ignore[no-untyped-def]
    nodes = await start_cluster(make_node, 3, eager_push=False)
    # Apart while writing: a round (every 200 ms) may otherwise run between the writes and
    # merge two nodes before the check below, which then sees two roots, not three.
    partition(nodes[:1], nodes[1:])
    partition(nodes[1:2], nodes[2:])
    try:
        for i, node in enumerate(nodes):
            api = Api(http, node.url)
            for j in range(30):
                assert (await api.put(f"k{j}", {"value": [i, j]})).status == 200
            assert (await api.delete(f"k{i}")).status == 200
        assert len(roots(nodes)) == 3
    finally:
        heal(nodes)
    await converged(nodes, timeout=10)  # a few sync intervals of 200 ms
    # The running total: `rounds` keeps only the last few, which may all postdate the repair.
    assert sum(n.replicator.stats.keys_repaired for n in nodes) > 0


async def test_partition_with_conflicting_writes_converges_to_the_conflict_order(
    make_node: NodeFactory, http: aiohttp.ClientSession
) -> None:
    nodes = await start_cluster(make_node, 3, revision_history_limit=1000)
    a, b, c = nodes
    base = Api(http, a.url)
    for k in range(20):
        assert (await base.put(f"hot/{k}", {"value": "base"})).status == 200
    await converged(nodes)
    partition([a], [b, c])
    rnd = random.Random(7)
    acked: dict[str, list[str]] = {}
    for round_no in range(700):  # 2,100 conflicting writes on 20 keys
        for node in (a, b, c):
            key = f"hot/{rnd.randrange(20)}"
            reply = await Api(http, node.url).put(key, {"value": [node.engine.node_id, round_no]})
            assert reply.status == 200
            acked.setdefault(key, []).append(reply.body["version"])
    assert len(roots(nodes)) > 1
    heal(nodes)
    healed = time.perf_counter()
    await converged(nodes, timeout=30)
    print(f"partition healed: 3 nodes converged {time.perf_counter() - healed:.2f} s after heal "
          f"(sync interval {FAST['sync_interval_ms']} ms)")
    for node in nodes:
        for key, versions in acked.items():
            revisions = node.storage.read(key)
            held = {v.version for v in revisions}
            assert set(versions) <= held, "an acknowledged version was lost"
            winner = revisions[0]
            assert all(wins(winner, v) for v in revisions[1:])
            assert not winner.superseded
    losers = [v for v in a.storage.read("hot/3") if v.superseded]
    assert losers, "concurrent writes on both sides leave superseded versions in history"
    assert a.engine.stats.superseded > 0


async def test_duplicate_and_reordered_pushes_are_idempotent(make_node: NodeFactory, http) -> None:  # type: ignore[no-untyped-def]
    source = await make_node()
    api = Api(http, source.url)
    for i in range(40):
        await api.put(f"k{i % 7}", {"value": i})
        if i % 5 == 0:
            await api.delete(f"k{i % 7}")
    versions = [v for sets in source.storage.scan_sets("") for v in sets]
    sinks = [await make_node(), await make_node()]
    rnd = random.Random(3)
    for sink in sinks:
        shuffled = versions * 2
        rnd.shuffle(shuffled)
        for start in range(0, len(shuffled), 9):
            await sink.engine.apply_remote([_copy(v) for v in shuffled[start:start + 9]])
    assert dump(sinks[0]) == dump(sinks[1]) == dump(source)
    assert roots([source, *sinks]) == {source.storage.tree.root()}


def _copy(version):  # type: ignore[no-untyped-def]
    from kvs.model import from_wire

    return from_wire(version.to_wire())


async def test_clock_skewed_node_cannot_win_after_others_saw_its_versions(
    make_node: NodeFactory, http: aiohttp.ClientSession
) -> None:
    ahead_ms = 10 * 60 * 1000
    # Tolerated here: the HLC's ordering is under test, not max_clock_offset_ms's refusal.
    tolerant = {**FAST, "max_clock_offset_ms": 2 * ahead_ms}
    normal = await make_node(**tolerant)
    skewed = await make_node(**tolerant, seed_nodes=[normal.address])
    skewed.engine.hlc.now_ms = lambda: time.time_ns() // 1_000_000 + ahead_ms
    await eventually(lambda: normal.membership.alive_peers(), what="join")
    fast_write = await Api(http, skewed.url).put("k", {"value": "from the future"})
    assert fast_write.body["timestamp"] > time.time() * 1000 + ahead_ms - 5000
    await eventually(lambda: normal.storage.read("k"), what="replication")
    later = await Api(http, normal.url).put("k", {"value": "later, from a sane clock"})
    assert later.body["timestamp"] >= fast_write.body["timestamp"]
    await converged([normal, skewed])
    for node in (normal, skewed):
        assert node.storage.read("k")[0].value == "later, from a sane clock"


async def test_tombstone_never_resurrects_through_sync(make_node: NodeFactory, http) -> None:  # type: ignore[no-untyped-def]
    nodes = await start_cluster(make_node, 2, tombstone_gc_seconds=1)
    a, b = nodes
    await Api(http, a.url).put("gone", {"value": 1})
    await converged(nodes)
    partition([a], [b])
    await Api(http, a.url).delete("gone")
    # b still holds the live value; a purges its tombstone after the gc horizon.
    await eventually(lambda: not a.storage.read("gone"), timeout=5, what="tombstone purge on a")
    heal(nodes)
    await eventually(lambda: b.replicator.stats.rounds + a.replicator.stats.rounds > 4, timeout=10)
    assert not a.storage.read("gone"), "an older version of a purged key came back"
    # a refuses b's old version; b, cut off past the gc horizon, drops it once it sees a's
    # purge watermark (whichever happens first), so both end without it.
    await converged(nodes)
    assert not b.storage.read("gone")
    assert (await Api(http, a.url).get("gone")).status == 404


async def test_anti_entropy_cost_follows_differences_not_keys(make_node: NodeFactory) -> None:
    from kvs.model import Version, new_version_id

    n_keys, n_diff = 100_000, 10
    a = await make_node(sync_interval_ms=3_600_000, eager_push=False)
    b = await make_node(sync_interval_ms=3_600_000, eager_push=False)  # no membership: only this test syncs
    base = [Version(f"user/{i:06d}", {"n": i, "pad": "x" * 40}, new_version_id(), 1_700_000_000_000 + i,
                    0, "seed", 1) for i in range(n_keys)]
    for node in (a, b):
        for start in range(0, n_keys, 5000):
            await node.engine.apply_remote([_copy(v) for v in base[start:start + 5000]])
    for i in range(n_diff):
        await a.engine.put(Op("set", f"user/{i * 997:06d}", "changed"))
    full_dump = sum(len(v.canonical()) for sets in a.storage.scan_sets("") for v in sets)
    started = time.perf_counter()
    result = await b.replicator.sync_with(a.address)
    elapsed = time.perf_counter() - started
    assert result is not None and result.error is None
    assert result.keys_repaired == n_diff
    assert roots([a, b]) == {a.storage.tree.root()}
    ratio = result.bytes / full_dump
    print(f"anti-entropy: {n_diff} of {n_keys} keys differ: {result.bytes} bytes moved "
          f"({ratio:.4%} of a {full_dump}-byte dump) in {elapsed * 1000:.0f} ms")
    assert ratio < 0.01


async def test_cluster_secret_authenticates_every_internal_request(make_node: NodeFactory, http) -> None:  # type: ignore[no-untyped-def]
    from kvs.cluster import auth
    from kvs.model import Version, new_version_id

    nodes = await start_cluster(make_node, 2, cluster_secret="s3cret")
    a, b = nodes
    assert (await Api(http, a.url).put("signed", {"value": 1})).status == 200
    await eventually(lambda: b.storage.read("signed"), what="signed replication")
    forged = Version("evil", "x", new_version_id(), int(time.time() * 1000), 0, "mallory", 0)
    body = _wire_body([forged])
    headers = [
        {},  # unsigned
        auth.sign("wrong-secret", "POST", "/internal/push", body, int(time.time() * 1000)),
        auth.sign("s3cret", "POST", "/internal/push", body, int(time.time() * 1000) - 120_000),  # stale
        auth.sign("s3cret", "POST", "/internal/push", b"[]", int(time.time() * 1000)),  # other body
    ]
    for h in headers:
        async with http.post(b.url + "/internal/push", data=body, headers=h) as resp:
            assert resp.status == 401
            assert (await resp.json())["error"] == "unauthorized"
    assert not b.storage.read("evil"), "an unauthenticated push was applied"
    good = auth.sign("s3cret", "POST", "/internal/push", body, int(time.time() * 1000))
    async with http.post(b.url + "/internal/push", data=body, headers=good) as resp:
        assert resp.status == 200
    assert b.storage.read("evil")


def _wire_body(versions) -> bytes:  # type: ignore[no-untyped-def]
    import orjson

    return orjson.dumps([v.to_wire() for v in versions])


async def test_graceful_leave_through_the_api(make_node: NodeFactory, http) -> None:  # type: ignore[no-untyped-def]
    nodes = await start_cluster(make_node, 3)
    leaver = nodes[2]
    reply = await Api(http, leaver.url).request("POST", "/cluster/leave")
    assert reply.status == 200 and reply.body["status"] == "left"
    assert leaver.left.is_set()  # `kvs serve` exits on this
    leaver_id = leaver.engine.node_id
    for other in nodes[:2]:
        await eventually(lambda o=other: o.membership.member(leaver_id).state == "left", timeout=5,
                         what="peers to see the node as left")
    members = (await Api(http, nodes[0].url).request("GET", "/cluster/members")).body
    assert {m["id"]: m["state"] for m in members}[leaver_id] == "left"


async def test_a_refused_transaction_replicates_nothing(make_node: NodeFactory, http) -> None:  # type: ignore[no-untyped-def]
    """Its first op was applied to the transaction's overlay before the second failed: that
    version was never stored, so no peer may receive it (it once was pushed anyway)."""
    nodes = await start_cluster(make_node, 2, cas_enabled=True)
    a, b = (Api(http, n.url) for n in nodes)
    refused = await a.txn([{"op": "set", "key": "phantom", "value": 1},
                           {"op": "check", "key": "absent", "if_value": 1}])
    assert refused.status == 409
    after = await a.put("after", {"value": 2})  # pushed behind anything queued before it
    await _visible_everywhere(http, nodes, "after", lambda r: r.status == 200
                              and r.body["version"] == after.body["version"])
    for api in (a, b):
        assert (await api.get("phantom", history="true")).status == 404


async def test_a_peer_that_moves_leaves_no_push_sender_behind(node, http) -> None:  # type: ignore[no-untyped-def]
    """A peer's new address gets a new push sender; the old one's task is cancelled (it used to
    stay behind, one task per move, waiting forever)."""
    api = Api(http, node.url)
    for incarnation, port in enumerate((1, 2), start=1):  # nothing listens there: pushes fail
        member = {"id": "mover", "address": f"127.0.0.1:{port}", "joined_at": 1,
                  "state": "alive", "incarnation": incarnation, "from": "mover"}
        reply = await api.request("POST", "/internal/swim/join",
                                  json={"from": member, "members": [],
                                        "settings": node.membership.settings})
        assert reply.status == 200
        assert (await api.put(f"k{incarnation}", {"value": incarnation})).status == 200

    # Right after the write that met the new address (before failure detection can drop the
    # peer and its current sender): exactly one sender is left that nobody has cancelled.
    senders = [t for t in asyncio.all_tasks()
               if t.get_name() == "push-mover" and not t.done() and not t.cancelling()]
    assert len(senders) == 1


async def test_a_version_reaches_peers_only_once_written_on_its_node(
        make_node: NodeFactory, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch) -> None:
    """A peer must never hold a version that its origin can still lose. A write whose batch
    the disk refused stays only in the origin's memory (a kill -9 would lose it); it reaches
    the peer once the origin has written it, by push or anti-entropy, never before. (A chaos
    run found a version that a killed node had pushed but never written: back from the
    restart, the node got its own write from a peer, out of its order.)"""
    a, b = await start_cluster(make_node, 2)
    early: list[str] = []

    def written_on_a(version: Version) -> bool:
        raw = a.storage.db.get(K.versions_key(version.key))  # the disk's copy, not staged
        return raw is not None and any(v.version == version.version for v in decode_set(version.key, raw))

    b.engine.listeners.append(lambda versions: early.extend(
        v.key for v in versions if v.origin == a.engine.node_id and not written_on_a(v)))
    disk = {"full": True}
    write = a.storage.commits._write_staged

    def refusing_write() -> None:
        if disk["full"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        write()

    monkeypatch.setattr(a.storage.commits, "_write_staged", refusing_write)
    api_a, api_b = Api(http, a.url), Api(http, b.url)
    reply = await api_a.put("unwritten", {"value": 1})
    assert reply.status == 507 and "outcome is unknown" in reply.body["message"], reply
    # Anti-entropy rounds in both directions while the version is staged on a only.
    rounds = a.replicator.stats.rounds + b.replicator.stats.rounds
    await eventually(lambda: a.replicator.stats.rounds + b.replicator.stats.rounds >= rounds + 4,
                     what="anti-entropy rounds during the fault")
    disk["full"] = False
    await eventually(lambda: a.engine.storage_fault is None, what="a's disk to heal")
    await _visible_everywhere(http, [a, b], "unwritten", lambda r: r.status == 200)
    assert early == [] and a.replicator.stats.pushes_withheld >= 1
    assert b.engine.stats.listener_errors == 0
    assert (await api_b.get("unwritten")).body["version"] == (await api_a.get("unwritten")).body["version"]
