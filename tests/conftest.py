"""Shared fixtures: real nodes (real RocksDB, real aiohttp on 127.0.0.1:0) and an HTTP helper."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from kvs.config import Config, load
from kvs.node import Node

# The default run uses two pytest-xdist workers (addopts in pyproject.toml). Modules that
# change the host's network (iptables rules, network namespaces) and assert that they left
# nothing behind run one at a time, so that none sees another's rules: a lock file shared
# by every worker (and by any other test run on this host). xdist's own grouping
# (`--dist loadgroup`) does nothing with pytest 9: it renames `item._nodeid`, which
# pytest no longer reads.
HOST_NETWORK_MODULES = {"test_chaos_run.py", "test_netns.py"}
HOST_NETWORK_LOCK = Path(tempfile.gettempdir()) / "kvs-tests-host-network.lock"


@pytest.fixture(autouse=True, scope="module")
def _one_host_network_module_at_a_time(request: pytest.FixtureRequest) -> Iterator[None]:
    if request.path.name not in HOST_NETWORK_MODULES:
        yield
        return
    with HOST_NETWORK_LOCK.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # let go when the file closes, even if we are killed
        yield


@dataclass
class Reply:
    status: int
    body: Any
    headers: Any

    @property
    def index(self) -> int:
        return int(self.headers["X-KVS-Index"])


class Api:
    """Thin raw-HTTP helper: tests see exact statuses and bodies, nothing is interpreted."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url

    async def request(self, method: str, path: str, *, json: Any = ..., data: bytes | None = None,
                      params: dict[str, str] | None = None,
                      headers: dict[str, str] | None = None) -> Reply:
        if json is not ...:
            data = orjson.dumps(json)
        async with self.session.request(method, self.url + path, data=data, params=params,
                                        headers=headers) as resp:
            raw = await resp.read()
            try:
                body = orjson.loads(raw) if raw else None
            except orjson.JSONDecodeError:
                body = raw.decode(errors="replace")
            return Reply(resp.status, body, resp.headers)

    async def put(self, key: str, body: Any) -> Reply:
        return await self.request("PUT", f"/kv/{key}", json=body)

    async def get(self, key: str, **params: str) -> Reply:
        return await self.request("GET", f"/kv/{key}", params=params or None)

    async def delete(self, key: str, **params: str) -> Reply:
        return await self.request("DELETE", f"/kv/{key}", params=params or None)

    async def txn(self, ops: list[dict[str, Any]]) -> Reply:
        return await self.request("POST", "/txn", json={"ops": ops})


NodeFactory = Callable[..., Awaitable[Node]]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def make_node(tmp_path: Path) -> AsyncIterator[NodeFactory]:
    """Start in-process nodes; every one is stopped at teardown, even if the test failed."""
    async with node_factory(tmp_path) as factory:
        yield factory


@contextlib.asynccontextmanager
async def node_factory(tmp_path: Path) -> AsyncIterator[NodeFactory]:
    """make_node's factory, for fixtures that must run in another event loop scope."""
    nodes: list[Node] = []
    counter = 0

    async def factory(**overrides: Any) -> Node:
        nonlocal counter
        counter += 1
        settings: dict[str, Any] = {"port": 0, "data_dir": str(tmp_path / f"node{counter}"),
                                    "cas_enabled": True}
        settings.update(overrides)
        node = Node(node_config(**settings))
        await node.start()
        nodes.append(node)
        return node

    try:
        yield factory
    finally:
        for node in reversed(nodes):
            with contextlib.suppress(Exception):
                await node.stop()


def node_config(**settings: Any) -> Config:
    return load(environ={}, overrides=settings)


@pytest.fixture
async def node(make_node: NodeFactory) -> Node:
    return await make_node()


@pytest.fixture
def api(http: aiohttp.ClientSession, node: Node) -> Api:
    return Api(http, node.url)


async def eventually(check: Callable[[], Awaitable[bool]] | Callable[[], bool], timeout: float = 10.0,
                     interval: float = 0.02, what: str = "condition") -> None:
    """Await a condition with a deadline (synchronisation by condition, not by sleep)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)
