"""kvs.client against real nodes: every method, every exception, failover, update() under load.

Most tests run twice, through AsyncClient and through the blocking Client (in a worker thread:
the in-process node serves from this test's event loop), since both must behave the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from kvs import errors
from kvs.client import (
    AsyncClient,
    BadRequest,
    CASConflict,
    CASDisabled,
    CheckResult,
    Client,
    DeleteResult,
    KVSError,
    MemberRecord,
    NotFound,
    Page,
    ServerError,
    Service,
    Status,
    TooLarge,
    TxnOp,
    Unavailable,
    VersionMeta,
    VersionRecord,
    WatchEvent,
    WriteResult,
)
from kvs.node import Node
from kvs.testing import free_port, node_env
from tests.conftest import NodeFactory


class Kv:
    """One client seen through async calls; a blocking Client's calls run in a thread."""

    def __init__(self, client: AsyncClient | Client) -> None:
        self.client = client
        self.sync = isinstance(client, Client)

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.client, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            if self.sync:
                return await asyncio.to_thread(method, *args, **kwargs)
            return await method(*args, **kwargs)

        return call

    async def take(self, name: str, n: int, *args: Any, **kwargs: Any) -> list[Any]:
        """The first n items of an iterator method (scan, watch)."""
        method = getattr(self.client, name)
        if self.sync:
            def run() -> list[Any]:
                items = method(*args, **kwargs)
                try:
                    return list(itertools.islice(items, n))
                finally:
                    items.close()
            return await asyncio.to_thread(run)
        out: list[Any] = []
        async with contextlib.aclosing(method(*args, **kwargs)) as items:
            async for item in items:
                out.append(item)
                if len(out) == n:
                    break
        return out

    async def close(self) -> None:
        if self.sync:
            self.client.close()
        else:
            await self.client.close()  # type: ignore[misc]


def make_client(kind: str, nodes: Any, **options: Any) -> Kv:
    return Kv(AsyncClient(nodes, **options) if kind == "async" else Client(nodes, **options))


@pytest.fixture(params=["async", "sync"])
async def kv(request: pytest.FixtureRequest, node: Node) -> AsyncIterator[Kv]:
    client = make_client(request.param, node.url)
    yield client
    await client.close()


@pytest.fixture(params=["async", "sync"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# -- reads and writes --------------------------------------------------------------------------

async def test_put_get_history_delete(kv: Kv) -> None:
    written = await kv.put("docs/a", {"n": [1, 2]}, flags=7)
    assert isinstance(written, WriteResult) and written.key == "docs/a" and written.expires_at is None
    got = await kv.get("docs/a")
    assert isinstance(got, VersionRecord) and got.value == {"n": [1, 2]} and got.flags == 7
    assert (got.version, got.modify_index, got.create_index) == (
        written.version, written.modify_index, written.create_index)
    assert await kv.get_value("docs/a") == {"n": [1, 2]}

    await kv.put("docs/text", "42")  # a string stays a string through ?raw=true
    assert await kv.get_value("docs/text") == "42"
    await kv.put("docs/null", None)  # JSON null is a value, not a delete
    assert (await kv.get("docs/null")).value is None
    assert await kv.get_value("docs/absent", "fallback") == "fallback"
    assert await kv.get_value("docs/null", "fallback") is None

    second = await kv.put("docs/a", "v2")
    assert (await kv.get("docs/a", version=written.version)).value == {"n": [1, 2]}  # from history
    deleted = await kv.delete("docs/a")
    assert isinstance(deleted, DeleteResult) and deleted.modify_index > second.modify_index
    with pytest.raises(NotFound):
        await kv.get("docs/a")
    history = await kv.history("docs/a")
    assert [(v.deleted, v.value) for v in history] == [(True, None), (False, "v2"), (False, {"n": [1, 2]})]
    assert history[0].version == deleted.version and history[1].parent == written.version


async def test_every_condition_on_put_and_delete(kv: Kv) -> None:
    created = await kv.put("cond/k", 1, cas=0)
    with pytest.raises(CASConflict) as conflict:
        await kv.put("cond/k", 2, cas=0)
    current = conflict.value.current
    assert isinstance(current, VersionMeta) and not isinstance(current, VersionRecord)
    assert (current.version, current.modify_index) == (created.version, created.modify_index)
    assert isinstance(conflict.value, errors.CASConflict) and conflict.value.node == kv.client.nodes[0]

    by_index = await kv.put("cond/k", 2, cas=created.modify_index)
    with pytest.raises(CASConflict):
        await kv.put("cond/k", 3, cas=created.modify_index)
    by_version = await kv.put("cond/k", 3, if_version=by_index.version)
    with pytest.raises(CASConflict):
        await kv.put("cond/k", 4, if_version=by_index.version)
    by_timestamp = await kv.put("cond/k", 4, if_timestamp=by_version.timestamp)
    # Two writes in one millisecond share a timestamp, so a mismatch is built from the
    # current one rather than taken from an older version.
    with pytest.raises(CASConflict):
        await kv.put("cond/k", 5, if_timestamp=by_timestamp.timestamp - 1)
    await kv.put("cond/k", None, if_value=4)
    current = await kv.get("cond/k")
    six = await kv.put("cond/k", 6, if_value=None, if_version=current.version)  # if_value null
    with pytest.raises(CASConflict) as both:
        await kv.put("cond/k", 7, if_value=6, if_timestamp=six.timestamp - 1)  # one of two fails
    assert "if_timestamp" in both.value.message

    # Conditional deletes, with the same conditions.
    with pytest.raises(CASConflict):
        await kv.delete("cond/k", if_value=5)
    with pytest.raises(CASConflict):
        await kv.delete("cond/k", cas=created.modify_index)
    latest = await kv.get("cond/k")
    await kv.delete("cond/k", if_value=6, if_version=latest.version,
                    if_timestamp=latest.timestamp, cas=latest.modify_index)
    # Any condition but cas=0 on an absent key is NotFound, not a conflict.
    for condition in ({"cas": 3}, {"if_value": 6}, {"if_version": latest.version}):
        with pytest.raises(NotFound):
            await kv.put("cond/k", 1, **condition)
        with pytest.raises(NotFound):
            await kv.delete("cond/k", **condition)
    await kv.put("cond/k", "back", cas=0)  # a deleted key can be created again


async def test_ttl_flags_and_if_value_lease_renewal(kv: Kv) -> None:
    lease = await kv.put("ttl/k", "me", ttl=0.4, flags=3)
    assert lease.expires_at == lease.timestamp + 400
    await asyncio.sleep(0.2)
    renewed = await kv.put("ttl/k", "me", if_value="me", ttl=0.4)
    assert renewed.expires_at >= lease.expires_at + 200  # type: ignore[operator]
    await asyncio.sleep(0.3)
    assert (await kv.get("ttl/k")).flags == 0  # a put without flags resets them
    await asyncio.sleep(0.2)
    with pytest.raises(NotFound):
        await kv.get("ttl/k")
    await kv.put("ttl/k", "new owner", cas=0)  # expired counts as absent


async def test_txn_results_and_conflict(kv: Kv) -> None:
    await kv.put("txn/b", "b")
    results = await kv.txn([TxnOp.set("txn/a", 1, ttl=60, cas=0), TxnOp.get("txn/b"),
                            TxnOp.get("txn/none"), TxnOp.check("txn/b", if_value="b"),
                            TxnOp.delete("txn/none"), TxnOp.delete("txn/b", if_value="b")])
    written, got, missing, check, noop, deleted = results
    assert isinstance(written, WriteResult) and written.expires_at is not None
    assert isinstance(got, VersionRecord) and got.value == "b" and missing is None
    assert isinstance(check, CheckResult) and check.ok
    assert isinstance(noop, DeleteResult) and noop.version is None
    assert isinstance(deleted, DeleteResult) and deleted.version is not None

    with pytest.raises(CASConflict) as conflict:
        await kv.txn([TxnOp.set("txn/c", 1), TxnOp.check("txn/a", cas=0), TxnOp.check("txn/b", cas=0)])
    [failure] = conflict.value.failed
    assert (failure.index, failure.key) == (1, "txn/a")
    assert failure.current is not None and failure.current.version == written.version
    with pytest.raises(NotFound):
        await kv.get("txn/c")  # all or nothing


async def test_txn_takes_the_http_apis_json_ops_as_well_as_txn_ops(kv: Kv) -> None:
    await kv.put("jtxn/b", "b")
    results = await kv.txn([{"op": "set", "key": "jtxn/a", "value": 1, "cas": 0},
                            {"op": "get", "key": "jtxn/b"},
                            {"op": "check", "key": "jtxn/b", "if_value": "b"},
                            TxnOp.delete("jtxn/b")])
    written, got, check, deleted = results
    assert isinstance(written, WriteResult) and written.key == "jtxn/a"
    assert isinstance(got, VersionRecord) and got.value == "b"
    assert isinstance(check, CheckResult) and check.ok
    assert isinstance(deleted, DeleteResult) and deleted.version is not None
    with pytest.raises(CASConflict) as conflict:
        await kv.txn([{"op": "check", "key": "jtxn/a", "cas": 0}])
    assert conflict.value.failed[0].key == "jtxn/a"

    # A malformed op is refused before anything is sent: the other ops are not applied.
    for bad in ({"key": "jtxn/x", "value": 1}, {"op": "set", "value": 1}, {"op": "put", "key": "jtxn/x"},
                {"op": "set", "key": 7}, ["set", "jtxn/x", 1]):
        with pytest.raises(BadRequest, match="txn op") as refused:
            await kv.txn([{"op": "set", "key": "jtxn/c", "value": 1}, bad])
        assert refused.value.extra == {}  # no node answered: the client refused it
    assert await kv.get_value("jtxn/c", None) is None


def test_the_client_has_one_name_per_concept() -> None:
    """What a node reports is a record, named so: `Version` is the node's (kvs.model), and the
    client neither redefines nor re-exports it (nor the membership table's row)."""
    import kvs.client

    assert not hasattr(kvs.client, "Version") and not hasattr(kvs.client, "Member")
    assert {"VersionRecord", "MemberRecord", "VersionMeta"} <= set(kvs.client.__all__)
    assert all(hasattr(kvs.client, name) for name in kvs.client.__all__)


async def test_list_pages_and_scans(kv: Kv) -> None:
    keys = [f"ls/{g}/{i}" for g in "abc" for i in range(3)]
    for key in keys:
        await kv.put(key, key.upper())
    page = await kv.list("ls/", limit=4)
    assert isinstance(page, Page) and [v.key for v in page.items] == keys[:4] and page.next == keys[3]
    assert page.index >= 9 and page.items[0].value == "LS/A/0"
    rest = await kv.list("ls/", after=page.next)
    assert [v.key for v in rest.items] == keys[4:] and rest.next is None
    names = await kv.list_keys("ls/", limit=5)
    assert names.items == keys[:5] and names.next == keys[4]
    assert (await kv.list_keys("ls/", separator="/")).items == ["ls/a/", "ls/b/", "ls/c/"]
    assert [v.key for v in await kv.take("scan", 100, "ls/", page_size=2)] == keys
    assert await kv.take("scan_keys", 100, "ls/", page_size=4) == keys
    assert await kv.take("scan_keys", 100, "ls/", separator="/", page_size=1) == ["ls/a/", "ls/b/", "ls/c/"]
    assert await kv.take("scan", 100, "none/") == []

    removed = await kv.delete_prefix("ls/b/")
    assert removed.deleted == ["ls/b/0", "ls/b/1", "ls/b/2"]
    assert await kv.take("scan_keys", 100, "ls/") == keys[:3] + keys[6:]


async def test_cluster_endpoints(kv: Kv, node: Node) -> None:
    [member] = await kv.members()
    assert isinstance(member, MemberRecord) and member.address == node.address and member.state == "alive"
    await kv.put("status/k", 1)
    status = await kv.status()
    assert isinstance(status, Status) and status.node == member.id and status.keys >= 1
    assert status.index >= 1 and len(status.merkle_root) == 16
    assert (await kv.health()).node == member.id


# -- exceptions ----------------------------------------------------------------------------------

async def test_every_exception_type(kind: str, make_node: NodeFactory) -> None:
    small = await make_node(max_value_bytes=64)
    plain = await make_node(cas_enabled=False)
    kv = make_client(kind, small.url)
    off = make_client(kind, plain.url)
    try:
        cases: list[tuple[type[KVSError], type[KVSError], Any]] = [
            (BadRequest, errors.BadRequest, kv.put("bad\x01key", 1)),
            (BadRequest, errors.BadRequest, kv.put("k", 1, ttl=-1)),
            (BadRequest, errors.BadRequest, kv.put("k", math.nan)),  # refused before sending
            (NotFound, errors.NotFound, kv.get("never")),
            (TooLarge, errors.TooLarge, kv.put("big", "x" * 100)),
            (CASDisabled, errors.CASDisabled, off.put("k", 1, cas=0)),
        ]
        for cls, server_cls, attempt in cases:
            with pytest.raises(cls) as caught:
                await attempt
            assert isinstance(caught.value, server_cls) and caught.value.message
        with pytest.raises(CASDisabled) as disabled:
            await off.delete("k", if_value=1)
        assert "cas_enabled" in disabled.value.message
        with pytest.raises(NotFound):
            await off.get("k")  # nothing was written: not silently downgraded
        await kv.put("c", 1)
        with pytest.raises(CASConflict):
            await kv.put("c", 2, cas=0)
    finally:
        await kv.close()
        await off.close()

    closed = make_client(kind, f"http://127.0.0.1:{free_port()}", connect_timeout=0.5)
    with pytest.raises(Unavailable) as unavailable:
        await closed.get("k")
    assert "connection refused" in unavailable.value.message and "kvs serve" in unavailable.value.message
    await closed.close()


@contextlib.asynccontextmanager
async def foreign_server(status: int, body: bytes) -> AsyncIterator[str]:
    """A real HTTP server that is not kvs: what a proxy or the wrong port might answer."""
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=status, body=body, content_type="text/html")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def test_server_error_for_answers_kvs_does_not_send(kind: str, node: Node) -> None:
    for status, body in ((502, b"<html>Bad Gateway</html>"), (200, b"<html>hello</html>"),
                         (500, b'{"error": "internal", "message": "boom"}')):
        async with foreign_server(status, body) as url:
            # A node that answered is never retried elsewhere, even with a good node next.
            kv = make_client(kind, [url, node.url])
            try:
                with pytest.raises(ServerError) as caught:
                    await kv.get("k")
            finally:
                await kv.close()
            assert caught.value.status == status and caught.value.node == url


# -- failover --------------------------------------------------------------------------------------

@contextlib.contextmanager
def silent_listener() -> Iterator[tuple[str, list[socket.socket]]]:
    """Accepts connections and never answers: a hung node."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.05)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                accepted.append(server.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}", accepted
    finally:
        stop.set()
        thread.join()
        for sock in accepted:
            sock.close()
        server.close()


async def test_failover_past_a_closed_port_and_a_hung_node(kind: str, node: Node) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    kv = make_client(kind, [closed, node.url], timeout=0.5)
    written = await kv.put("fo/k", 1)
    assert (await kv.get("fo/k")).version == written.version
    assert kv.client._nodes.order()[0] == node.url  # sticks to the node that answered
    await kv.close()

    with silent_listener() as (hung, accepted):
        kv = make_client(kind, [hung, node.url], timeout=0.5)
        started = time.monotonic()
        assert (await kv.get("fo/k")).value == 1
        assert 0.5 <= time.monotonic() - started < 2.0 and accepted  # timed out, then moved on
        await kv.close()
        kv = make_client(kind, [hung], timeout=0.3)
        with pytest.raises(Unavailable) as caught:
            await kv.get("fo/k")
        assert "timed out" in caught.value.message
        await kv.close()


async def test_a_node_that_answered_is_not_retried_elsewhere(kind: str, make_node: NodeFactory) -> None:
    first, second = await make_node(), await make_node()  # two separate one-node clusters
    kv = make_client(kind, [first.url, second.url])
    await kv.put("once/k", "first")
    with pytest.raises(CASConflict):
        await kv.put("once/k", "again", cas=0)
    alone = make_client(kind, second.url)
    with pytest.raises(NotFound):
        await alone.get("once/k")  # the 409 was final: the write never went to the second node
    await kv.close()
    await alone.close()


# -- watch -----------------------------------------------------------------------------------------

async def test_watch_a_key_through_writes_deletes_and_expiry(kv: Kv) -> None:
    await kv.put("w/k", 0)
    events: asyncio.Task[list[WatchEvent]] = asyncio.create_task(kv.take("watch", 5, "w/k", wait=30))
    await asyncio.sleep(0.3)
    await kv.put("w/other", "not watched")
    await kv.put("w/k", 1)
    await asyncio.sleep(0.2)
    await kv.delete("w/k")
    await asyncio.sleep(0.2)
    leased = await kv.put("w/k", 2, ttl=0.5)
    started = time.monotonic()
    seen = await asyncio.wait_for(events, 5)
    assert [e.value for e in seen] == [0, 1, None, 2, None]
    assert [e.version is None for e in seen] == [False, False, True, False, True]
    # The expiry bumps no index, yet the watch saw it right away (not after wait=30s).
    assert time.monotonic() - started < 0.5 + 0.5 and seen[-1].index == seen[-2].index
    assert seen[3].version.version == leased.version  # type: ignore[union-attr]
    assert all(a.index <= b.index for a, b in itertools.pairwise(seen))


async def test_watch_a_prefix_and_from_an_index(kv: Kv) -> None:
    first = await kv.put("wp/a", 1)
    events = asyncio.create_task(kv.take("watch", 3, "wp/", prefix=True, wait=30))
    await asyncio.sleep(0.3)
    await kv.put("wp/b", 2)
    await kv.put("elsewhere", 0)
    await asyncio.sleep(0.2)
    await kv.delete("wp/a")
    seen = await asyncio.wait_for(events, 5)
    assert [[v.key for v in e.items] for e in seen] == [["wp/a"], ["wp/a", "wp/b"], ["wp/b"]]
    assert all(e.prefix and e.version is None for e in seen)

    # From an index: the first event is the first change after it, not the current state.
    later = asyncio.create_task(kv.take("watch", 1, "wp/", prefix=True, index=seen[-1].index, wait=30))
    await asyncio.sleep(0.3)
    assert not later.done()
    await kv.put("wp/c", 3)
    [change] = await asyncio.wait_for(later, 5)
    assert [v.key for v in change.items] == ["wp/b", "wp/c"] and change.index > first.modify_index


async def test_watch_once_returns_on_timeout_with_the_same_state(kv: Kv) -> None:
    await kv.put("wo/k", "x")
    now = await kv.watch_once("wo/k")
    started = time.monotonic()
    same = await kv.watch_once("wo/k", index=now.index, wait=0.3)
    assert 0.3 <= time.monotonic() - started < 0.3 + 0.5
    assert same.value == "x" and same.index == now.index
    absent = await kv.watch_once("wo/none")
    assert absent.items == [] and absent.version is None


async def test_watch_that_fails_over_starts_over_from_the_new_nodes_index(kind: str,
                                                                          make_node: NodeFactory) -> None:
    busy, quiet = await make_node(), await make_node()  # separate clusters: unrelated indexes
    kv_busy = make_client(kind, busy.url)
    for i in range(30):
        await kv_busy.put(f"pad/{i}", i)
    await kv_busy.put("fw/k", "busy")
    await kv_busy.close()
    kv_quiet = make_client(kind, quiet.url)
    await kv_quiet.put("fw/k", "quiet")
    await kv_quiet.close()

    client = AsyncClient([busy.url, quiet.url]) if kind == "async" else Client([busy.url, quiet.url])
    try:
        if kind == "async":
            assert isinstance(client, AsyncClient)
            events = client.watch("fw/k", wait=20)
            assert (await events.__anext__()).value == "busy"
            await busy.stop()
            started = time.monotonic()
            moved = await asyncio.wait_for(events.__anext__(), 5)
            await events.aclose()  # type: ignore[attr-defined]
        else:
            assert isinstance(client, Client)
            sync_events = client.watch("fw/k", wait=20)
            assert (await asyncio.to_thread(next, sync_events)).value == "busy"
            await busy.stop()
            started = time.monotonic()
            moved = await asyncio.wait_for(asyncio.to_thread(next, sync_events), 5)
            sync_events.close()
        # The busy node's index means nothing to the quiet one: no blocking on it.
        assert moved.value == "quiet" and moved.node == quiet.url
        assert time.monotonic() - started < 1.0
    finally:
        if isinstance(client, AsyncClient):
            await client.close()
        else:
            client.close()


# -- update() --------------------------------------------------------------------------------------

async def test_update_creates_keeps_flags_and_raises_what_it_must(kv: Kv, make_node: NodeFactory) -> None:
    created = await kv.update("up/k", lambda v: {"n": 1} if v is None else v)
    assert created.value == {"n": 1} and created.attempts == 1
    await kv.put("up/k", {"n": 1}, flags=9)
    bumped = await kv.update("up/k", lambda v: {"n": v["n"] + 1}, ttl=60)
    after = await kv.get("up/k")
    assert after.value == {"n": 2} and after.flags == 9 and after.expires_at is not None
    assert bumped.result.version == after.version

    def boom(value: Any) -> Any:
        raise ValueError("fn failed")

    with pytest.raises(ValueError, match="fn failed"):
        await kv.update("up/k", boom)
    assert (await kv.get("up/k")).version == after.version  # nothing written

    # Lost every race: fn itself writes the key, so each attempt's if_version is stale.
    calls = 0
    saboteur = Client(kv.client.nodes)

    def racing(value: Any) -> Any:
        nonlocal calls
        calls += 1
        saboteur.put("up/k", {"n": -calls})
        return {"n": 0}

    if kv.sync:
        with pytest.raises(CASConflict):
            await kv.update("up/k", racing, retries=3, backoff=0.001)
        assert calls == 4  # the first attempt and 3 retries
    saboteur.close()

    plain = make_client("sync" if kv.sync else "async", (await make_node(cas_enabled=False)).url)
    attempts = 0

    def count(value: Any) -> Any:
        nonlocal attempts
        attempts += 1
        return 1

    with pytest.raises(CASDisabled):  # not a conflict: raised at once, not retried
        await plain.update("k", count, retries=5)
    assert attempts == 1
    await plain.close()


async def test_update_with_an_async_fn(node: Node) -> None:
    async def add_one(value: Any) -> Any:
        await asyncio.sleep(0)
        return (value or 0) + 1

    async with AsyncClient(node.url) as kv:
        await kv.update("up/async", add_one)
        assert (await kv.update("up/async", add_one)).value == 2
    with Client(node.url) as blocking, pytest.raises(TypeError, match="AsyncClient"):
        await asyncio.to_thread(blocking.update, "up/async", add_one)


async def test_update_32_concurrent_async_updaters_lose_nothing(node: Node) -> None:
    returned = 0

    async def updater(client: AsyncClient) -> None:
        nonlocal returned
        for _ in range(5):
            await client.update("up/counter", lambda n: (n or 0) + 1, retries=200, backoff=0.002,
                                max_backoff=0.05)
            returned += 1

    clients = [AsyncClient(node.url) for _ in range(32)]
    try:
        await asyncio.gather(*(updater(c) for c in clients))
    finally:
        await asyncio.gather(*(c.close() for c in clients))
    async with AsyncClient(node.url) as kv:
        assert await kv.get_value("up/counter") == returned == 32 * 5


async def test_update_32_concurrent_threads_on_one_blocking_client_lose_nothing(node: Node) -> None:
    returned = 0
    lock = threading.Lock()

    def updater(client: Client) -> None:
        nonlocal returned
        for _ in range(3):
            client.update("up/threads", lambda n: (n or 0) + 1, retries=200, backoff=0.002,
                          max_backoff=0.05)
            with lock:
                returned += 1

    def run() -> None:
        with Client(node.url) as shared:  # one client, its connection pool shared by 32 threads
            threads = [threading.Thread(target=updater, args=(shared,)) for _ in range(32)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert 1 <= sum(map(len, shared._idle.values())) <= 32  # connections were kept

    await asyncio.to_thread(run)
    async with AsyncClient(node.url) as kv:
        assert await kv.get_value("up/threads") == returned == 32 * 3


# -- service registry ------------------------------------------------------------------------------

async def test_service_registry(kv: Kv) -> None:
    registered = await kv.register_service("web", address="10.0.0.1", port=80, tags=["a"],
                                           meta={"zone": "z1"}, ttl=0.6, cas=0)
    assert registered.name == "web" and registered.expires_at is not None
    with pytest.raises(CASConflict):
        await kv.register_service("web", port=81, cas=0)  # create-only
    service = await kv.get_service("web")
    assert isinstance(service, Service) and (service.address, service.port, service.tags, service.meta) == (
        "10.0.0.1", 80, ["a"], {"zone": "z1"})
    assert service.modify_index is None
    detailed = await kv.get_service("web", metadata=True)
    assert detailed.modify_index == registered.modify_index and detailed.expires_at == registered.expires_at
    await kv.register_service("db", port=5432)
    assert sorted(s.name for s in await kv.list_services()) == ["db", "web"]

    renewed = await kv.renew_service("web")
    assert renewed.expires_at > registered.expires_at  # type: ignore[operator]
    updated = await kv.register_service("web", port=8080, ttl=0.6, cas=renewed.modify_index)
    with pytest.raises(CASConflict):
        await kv.deregister_service("web", cas=renewed.modify_index)  # stale
    await asyncio.sleep(0.7)
    with pytest.raises(NotFound):
        await kv.renew_service("web", ttl=1)  # expired: renew cannot bring it back
    with pytest.raises(NotFound):
        await kv.get_service("web")
    assert updated.modify_index > renewed.modify_index
    gone = await kv.deregister_service("db", cas=(await kv.get_service("db", metadata=True)).modify_index)
    assert gone.name == "db"
    assert await kv.list_services() == []
    with pytest.raises(BadRequest):
        await kv.register_service("bad name!")


# -- the quickstart ------------------------------------------------------------------------------

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CLIENT_DOC = Path(__file__).resolve().parent.parent / "docs" / "client.md"


def quickstart_code() -> str:
    """examples/quickstart.py without its docstring: the snippet the docs show."""
    source = (EXAMPLES / "quickstart.py").read_text()
    return source[source.index("import asyncio"):]


async def test_quickstart_runs_as_written_and_is_the_docs_snippet(node: Node) -> None:
    assert f"```python\n{quickstart_code()}```" in CLIENT_DOC.read_text()
    for run in (1, 2):  # a second run works too: nothing in it is create-only
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(EXAMPLES / "quickstart.py"), node.url, env=node_env(),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=True)
        try:
            output = (await asyncio.wait_for(proc.communicate(), 30))[0].decode()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.returncode == 0, output
        assert f"hits: {run}" in output and "holding locks/deploy, fencing token" in output
        assert "{'config/feature': {'enabled': False}}" in output  # one watch event, then it ends
