"""SWIM over real HTTP: five aiohttp servers on loopback, faults injected at the transport.

Timings are fast (50 ms interval, 100 ms probe timeout); every wait is a condition
polled until a deadline computed from those timings, never a sleep used as a
synchronisation. The one fixed wait is the quiet-cluster test, where the elapsed
time is the thing under test.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import aiohttp
import orjson
import pytest
from aiohttp import web

from kvs import config
from kvs.cluster import auth
from kvs.cluster.swim import ALIVE, DEAD, LEFT, Membership
from kvs.cluster.transport import HttpTransport, TransportError
from kvs.config import Config
from kvs.http.server import make_app

FAST = config.load(environ={}, overrides={
    "gossip_interval_ms": 50, "probe_timeout_ms": 100, "suspicion_multiplier": 4,
})
N = 5


@dataclass
class Node:
    id: str
    joined_at: int
    address: str
    runner: web.AppRunner
    transport: HttpTransport
    membership: Membership
    running: bool = True

    def view(self) -> dict[str, str]:
        return {m["id"]: m["state"] for m in self.membership.members()}


class Cluster:
    """Starts, kills and restarts nodes; `close` stops whatever is still running."""

    def __init__(self, cfg: Config) -> None:
        self.config = cfg
        self.nodes: dict[str, Node] = {}
        self.timing = Membership(
            node_id="-", address="x:1", joined_at=0, seeds=(), config=cfg,
            transport=HttpTransport(None),
        ).timing

    async def start(self, node_id: str, seeds: list[str], port: int = 0,
                    joined_at: int | None = None) -> Node:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        address = f"127.0.0.1:{sock.getsockname()[1]}"
        joined_at = joined_at if joined_at is not None else time.time_ns() // 1_000_000
        transport = HttpTransport(self.config.cluster_secret)
        membership = Membership(node_id=node_id, address=address, joined_at=joined_at,
                                seeds=seeds, config=self.config, transport=transport)
        app = make_app(membership.routes(), secret=self.config.cluster_secret, client_max_size=1 << 20)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        node = Node(node_id, joined_at, address, runner, transport, membership)
        self.nodes[node_id] = node
        try:
            await runner.setup()
            await web.SockSite(runner, sock).start()
            await membership.start()
        except BaseException:
            await self.kill(node_id)
            raise
        return node

    async def start_many(self, n: int) -> list[Node]:
        first = await self.start("n0", seeds=[])
        rest = [await self.start(f"n{i}", seeds=[first.address]) for i in range(1, n)]
        return [first, *rest]

    async def kill(self, node_id: str) -> None:
        """Stop a node abruptly: no leave, listening socket and connections closed."""
        node = self.nodes[node_id]
        if not node.running:
            return
        node.running = False
        try:
            await node.membership.stop()
        finally:
            try:
                await node.runner.cleanup()
            finally:
                await node.transport.close()

    async def close(self) -> None:
        for node_id in list(self.nodes):
            await self.kill(node_id)

    def live(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.running]

    def views(self) -> dict[str, dict[str, str]]:
        return {n.id: n.view() for n in self.live()}

    def all_see(self, expected: dict[str, str], among: list[Node] | None = None) -> bool:
        """True when every running node (or `among`) sees exactly these states for these ids."""
        return all(
            all(n.view().get(k) == v for k, v in expected.items())
            for n in (among if among is not None else self.live())
        )

    def partition(self, side_a: list[Node], side_b: list[Node]) -> None:
        for node in side_a:
            node.transport.blocked |= {other.address for other in side_b}
        for node in side_b:
            node.transport.blocked |= {other.address for other in side_a}

    def heal(self) -> None:
        for node in self.nodes.values():
            node.transport.blocked.clear()


async def eventually(cluster: Cluster, predicate: Callable[[], bool], within: float,
                     what: str) -> float:
    """Poll `predicate` until it holds; fail after `within` seconds. Returns elapsed time."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not predicate():
        if loop.time() - start > within:
            raise AssertionError(f"{what}: not within {within:.2f}s; views={cluster.views()}")
        await asyncio.sleep(0.01)
    return loop.time() - start


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    c = Cluster(FAST)
    try:
        yield c
    finally:
        await c.close()


def converge_bound(c: Cluster) -> float:
    # Joining is one round trip; everyone else hears of a newcomer by gossip or by
    # being probed by it, both within a couple of probe rounds.
    return 4 * N * c.timing.interval + 1.0


def death_bound(c: Cluster) -> float:
    # First declaration, then a few gossip rounds for the rest (they also detect it
    # themselves within the same bound); the extra second absorbs a slow CI machine.
    return c.timing.detection_bound(N) + 4 * c.timing.interval + 1.0


async def started(c: Cluster, n: int = N) -> list[Node]:
    nodes = await c.start_many(n)
    everyone = {node.id: ALIVE for node in nodes}
    await eventually(c, lambda: c.all_see(everyone), converge_bound(c), "all alive")
    return nodes


async def test_five_nodes_converge_to_five_alive(cluster: Cluster) -> None:
    nodes = await started(cluster)
    for node in nodes:
        rows = node.membership.members()
        assert [r["id"] for r in rows] == [f"n{i}" for i in range(N)]
        assert set(rows[0]) == {"id", "address", "joined_at", "state", "incarnation", "last_seen"}
        assert {r["id"]: r["address"] for r in rows} == {n.id: n.address for n in nodes}
        assert len(node.membership.alive_peers()) == N - 1
    # Members learned by gossip have last_seen null until we hear from them ourselves.
    await eventually(
        cluster,
        lambda: all(isinstance(r["last_seen"], int) for n in nodes for r in n.membership.members()),
        converge_bound(cluster), "every node probed every other",
    )


async def test_crashed_node_is_declared_dead_within_the_computed_bound(cluster: Cluster) -> None:
    await started(cluster)
    await cluster.kill("n4")
    bound = death_bound(cluster)
    elapsed = await eventually(cluster, lambda: cluster.all_see({"n4": DEAD}), bound, "n4 dead")
    assert elapsed <= bound
    assert cluster.all_see({f"n{i}": ALIVE for i in range(4)})


async def test_quiet_cluster_never_declares_a_live_node_dead(cluster: Cluster) -> None:
    nodes = await started(cluster)
    changes: list[tuple[str, str, str]] = []
    for node in nodes:
        node.membership.add_listener(
            lambda m, seer=node.id: changes.append((seer, m.id, m.state)))
    await asyncio.sleep(3.0)  # the quiet period is what is being tested
    assert [c for c in changes if c[2] == DEAD] == []
    assert cluster.all_see({n.id: ALIVE for n in nodes})


async def test_graceful_leave_shows_left_and_stays_left(cluster: Cluster) -> None:
    await started(cluster)
    await cluster.nodes["n4"].membership.leave()
    await cluster.kill("n4")
    await eventually(cluster, lambda: cluster.all_see({"n4": LEFT}), death_bound(cluster), "left")
    # Long enough for a wrongly probed node to be suspected and declared dead.
    await asyncio.sleep(cluster.timing.detection_bound(N))
    assert cluster.all_see({"n4": LEFT})


async def test_restarted_node_comes_back_alive(cluster: Cluster) -> None:
    nodes = await started(cluster)
    old = nodes[4]
    old_incarnation = old.membership.incarnation
    port = int(old.address.rsplit(":", 1)[1])
    heard: dict[str, list[str]] = {n.id: [] for n in nodes[:4]}
    for node in nodes[:4]:
        node.membership.add_listener(
            lambda m, seer=node.id: heard[seer].append(m.state) if m.id == "n4" else None)
    await cluster.kill("n4")
    await eventually(cluster, lambda: cluster.all_see({"n4": DEAD}), death_bound(cluster), "dead")

    new = await cluster.start("n4", seeds=[nodes[0].address], port=port, joined_at=old.joined_at)

    def back() -> bool:
        rows = [r for n in cluster.live() for r in n.membership.members() if r["id"] == "n4"]
        return all(r["state"] == ALIVE and r["incarnation"] > old_incarnation
                   and r["joined_at"] == old.joined_at for r in rows)

    await eventually(cluster, back, converge_bound(cluster), "n4 back")
    assert new.view() == {f"n{i}": ALIVE for i in range(N)}
    for seer, states in heard.items():  # what replication's listener would have seen
        assert DEAD in states and states[-1] == ALIVE, (seer, states)


async def test_restarted_seed_without_seeds_is_found_again(cluster: Cluster) -> None:
    nodes = await started(cluster)
    port = int(nodes[0].address.rsplit(":", 1)[1])
    await cluster.kill("n0")
    await eventually(cluster, lambda: cluster.all_see({"n0": DEAD}), death_bound(cluster), "dead")
    await cluster.start("n0", seeds=[], port=port, joined_at=nodes[0].joined_at)
    # Nobody joins through it: the others' reconnect pings must find it.
    everyone = {f"n{i}": ALIVE for i in range(N)}
    await eventually(cluster, lambda: cluster.all_see(everyone), death_bound(cluster), "n0 back")


async def test_partition_then_heal(cluster: Cluster) -> None:
    nodes = await started(cluster)
    side_a, side_b = nodes[:3], nodes[3:]
    cluster.partition(side_a, side_b)
    await eventually(
        cluster,
        lambda: cluster.all_see({n.id: DEAD for n in side_b}, among=side_a)
        and cluster.all_see({n.id: DEAD for n in side_a}, among=side_b),
        death_bound(cluster), "both sides see the other dead",
    )
    assert cluster.all_see({n.id: ALIVE for n in side_a}, among=side_a)
    assert cluster.all_see({n.id: ALIVE for n in side_b}, among=side_b)

    cluster.heal()
    everyone = {n.id: ALIVE for n in nodes}
    await eventually(cluster, lambda: cluster.all_see(everyone), death_bound(cluster), "healed")


async def test_bad_payloads_get_400_and_change_nothing(cluster: Cluster) -> None:
    nodes = await started(cluster, 2)
    before = nodes[0].membership.members()
    sender = {"id": "x", "address": "h:1", "joined_at": 1, "state": "alive", "incarnation": 1}
    common = [
        b"not json", b"[]", b'{"from": 1}', b'{"from": {"id": "x"}}',
        orjson.dumps({"from": sender, "target": "n0", "updates": [{"id": ""}]}),
        orjson.dumps({"from": sender, "target": "n0", "updates": "x"}),
        b'{"from": {"id": "x", "address": "h:1", "joined_at": 1, "state": "alive", '
        b'"incarnation": 99999999999999999999999}, "target": "n0"}',
    ]
    per_path = {
        "/internal/swim/ping": [orjson.dumps({"from": sender, "target": 5})],
        "/internal/swim/ping-req": [
            orjson.dumps({"from": sender, "target": "n1"}),
            orjson.dumps({"from": sender, "target": {"id": "n1", "address": "nope"}}),
        ],
        "/internal/swim/join": [
            orjson.dumps({"from": sender, "members": {"id": "y"}}),
            orjson.dumps({"from": sender, "members": [sender, {**sender, "state": "zombie"}]}),
        ],
    }
    async with aiohttp.ClientSession() as session:
        for path, specific in per_path.items():
            for body in common + specific:
                async with session.post(f"http://{nodes[0].address}{path}", data=body) as resp:
                    assert resp.status == 400, (path, body)
                    assert (await resp.json())["error"] == "bad_request"
    after = nodes[0].membership.members()
    assert [(m["id"], m["state"]) for m in after] == [(m["id"], m["state"]) for m in before]


async def test_signed_cluster_converges_and_rejects_forged_requests() -> None:
    c = Cluster(FAST.replace(cluster_secret="right-secret"))
    try:
        nodes = await started(c, 3)
        intruder = {"id": "intruder", "address": "127.0.0.1:1", "joined_at": 1,
                    "state": "alive", "incarnation": 1}
        victim = {"id": "n1", "address": nodes[1].address, "joined_at": nodes[1].joined_at,
                  "state": "dead", "incarnation": nodes[1].membership.incarnation + 5}
        body = orjson.dumps({"from": intruder, "members": [intruder, victim]})
        path = "/internal/swim/join"
        now = time.time_ns() // 1_000_000
        attempts = [
            {},  # unsigned
            auth.sign("wrong-secret", "POST", path, body, now),
            auth.sign("right-secret", "POST", path, body, now - 60_000),  # stale
            auth.sign("right-secret", "POST", path, b"{}", now),  # signature of another body
        ]
        async with aiohttp.ClientSession() as session:
            for headers in attempts:
                async with session.post(f"http://{nodes[0].address}{path}", data=body,
                                        headers=headers) as resp:
                    assert resp.status == 401
                    assert (await resp.json())["error"] == "unauthorized"
        for node in nodes:
            assert "intruder" not in node.view()
            assert node.view()["n1"] == ALIVE
        assert nodes[1].membership.incarnation < victim["incarnation"]  # nothing to refute
    finally:
        await c.close()


async def test_join_is_retried_until_a_seed_answers(cluster: Cluster) -> None:
    reserve = socket.socket()
    reserve.bind(("127.0.0.1", 0))
    port = reserve.getsockname()[1]
    reserve.close()
    late_seed = f"127.0.0.1:{port}"
    early = await cluster.start("n1", seeds=[late_seed])  # nobody listens there yet
    assert early.view() == {"n1": ALIVE}
    await cluster.start("n0", seeds=[], port=port)
    both = {"n0": ALIVE, "n1": ALIVE}
    await eventually(cluster, lambda: cluster.all_see(both), converge_bound(cluster), "joined")


# -- the transport on its own --------------------------------------------------------------


PEERS_SEEN: list[object] = []  # client addresses the echo server saw, one per request


@pytest.fixture
async def echo_server(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    async def ok(request: web.Request) -> web.Response:
        PEERS_SEEN.append(request.transport.get_extra_info("peername"))  # type: ignore[union-attr]
        return web.json_response({"echo": await request.json()})

    async def teapot(request: web.Request) -> web.Response:
        return web.Response(status=418, text="no")

    async def garbage(request: web.Request) -> web.Response:
        return web.Response(text="<html>")

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.json_response({})

    app = web.Application()
    app.add_routes([web.post("/ok", ok), web.post("/teapot", teapot),
                    web.post("/garbage", garbage), web.post("/slow", slow)])
    keepalive = getattr(request, "param", 75.0)  # seconds an idle connection stays open
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1, keepalive_timeout=keepalive)
    await runner.setup()
    PEERS_SEEN.clear()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        yield f"{host}:{port}"
    finally:
        await runner.cleanup()


async def test_transport_returns_the_decoded_reply(echo_server: str) -> None:
    transport = HttpTransport(None)
    try:
        assert await transport.call(echo_server, "/ok", {"a": [1, 2]}, 1.0) == {"echo": {"a": [1, 2]}}
    finally:
        await transport.close()


async def test_transport_reuses_one_connection_for_calls_in_sequence(echo_server: str) -> None:
    transport = HttpTransport(None)
    try:
        for i in range(5):
            assert await transport.call(echo_server, "/ok", i, 1.0) == {"echo": i}
        assert len(PEERS_SEEN) == 5 and len(set(PEERS_SEEN)) == 1
    finally:
        await transport.close()


@pytest.mark.parametrize("echo_server", [0.05], indirect=True)
async def test_transport_replaces_a_pooled_connection_the_peer_closed(echo_server: str) -> None:
    transport = HttpTransport(None)
    try:
        assert await transport.call(echo_server, "/ok", 1, 1.0) == {"echo": 1}
        pooled_reader = transport._peers[echo_server].idle[0][0]
        deadline = time.monotonic() + 5
        while not pooled_reader.at_eof():  # the server's 50 ms keep-alive timeout closes it
            assert time.monotonic() < deadline, "the server never closed the idle connection"
            await asyncio.sleep(0.01)
        assert await transport.call(echo_server, "/ok", 2, 1.0) == {"echo": 2}
        assert len(set(PEERS_SEEN)) == 2  # a second connection, and no error for the caller
    finally:
        await transport.close()


@pytest.mark.parametrize("path,timeout,reason", [
    ("/teapot", 1.0, "HTTP 418"), ("/garbage", 1.0, "not JSON"), ("/slow", 0.1, "Timeout"),
    ("/missing", 1.0, "HTTP 404"),
])
async def test_transport_turns_every_failure_into_transport_error(
    echo_server: str, path: str, timeout: float, reason: str
) -> None:
    transport = HttpTransport(None)
    try:
        with pytest.raises(TransportError, match=reason):
            await transport.call(echo_server, path, {}, timeout)
    finally:
        await transport.close()


async def test_transport_errors_for_unreachable_blocked_and_closed(echo_server: str) -> None:
    reserve = socket.socket()
    reserve.bind(("127.0.0.1", 0))
    dead_address = f"127.0.0.1:{reserve.getsockname()[1]}"
    reserve.close()
    transport = HttpTransport(None)
    try:
        with pytest.raises(TransportError):
            await transport.call(dead_address, "/ok", {}, 1.0)
        with pytest.raises(TransportError):
            await transport.call("not an address", "/ok", {}, 1.0)
        transport.blocked.add(echo_server)
        with pytest.raises(TransportError, match="blocked"):
            await transport.call(echo_server, "/ok", {}, 1.0)
    finally:
        await transport.close()
    with pytest.raises(TransportError, match="closed"):
        await transport.call(echo_server, "/ok", {}, 1.0)
