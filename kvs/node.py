"""Wiring and lifecycle of one node: storage, engine, API, background loops.

`Node.start()` brings the parts up in dependency order and `Node.stop()` tears
them down in reverse, so an interrupted start-up or a test failure never
leaves a RocksDB lock or a listening socket behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable
from functools import partial

from aiohttp import web

from kvs import auth, openapi
from kvs.api import KVApi, render_error
from kvs.clock import wall_ms
from kvs.cluster_api import ClusterApi
from kvs.config import Config
from kvs.engine import Engine
from kvs.errors import StorageFailed
from kvs.metrics import Metrics
from kvs.replication import Replicator
from kvs.services import ServiceApi
from kvs.storage import Storage
from kvs.swim.node import Membership
from kvs.transport import HttpTransport
from kvs.watch import Watchers

log = logging.getLogger("kvs.node")

ENVELOPE_BYTES = 1 << 20


class Node:
    def __init__(self, config: Config, now_ms: Callable[[], int] = wall_ms) -> None:
        self.config = config
        self.now_ms = now_ms  # injectable wall clock: clock-skew tests run a node in the future
        self.storage: Storage | None = None
        self.engine: Engine | None = None
        self.watchers = Watchers()
        self.runner: web.AppRunner | None = None
        self.transport: HttpTransport | None = None
        self.membership: Membership | None = None
        self.replicator: Replicator | None = None
        self.port: int | None = None
        self.left = asyncio.Event()  # set after POST /cluster/leave: the process should exit
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def url(self) -> str:
        return f"http://{self.config.bind_address}:{self.port}"

    @property
    def address(self) -> str:
        return f"{self.config.bind_address}:{self.port}"

    def build_app(self) -> web.Application:
        assert self.engine and self.membership and self.replicator
        metrics = Metrics(self.engine, self.replicator, self.membership, self.watchers)
        app = web.Application(client_max_size=self.config.max_value_bytes * 4 + ENVELOPE_BYTES)
        routes = [
            *KVApi(self.config, self.engine, self.watchers).routes(),
            *ClusterApi(self.engine, self.membership, self.replicator, self.left.set).routes(),
            *self.membership.routes(),
            *self.replicator.routes(),
            web.get("/metrics", metrics.handle),
            *ServiceApi(self.config, self.engine).routes(),
            web.get("/openapi.json", openapi.handle),
        ]
        around = _around(self.engine, metrics, self.config.cluster_secret)
        app.add_routes([web.RouteDef(r.method, r.path, around(r.handler, r.path), r.kwargs)
                        for r in routes])
        app.router.add_route("*", "/{path:.*}", around(_no_route, None))  # last: the fallback
        return app

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        config, now_ms = self.config, self.now_ms
        self.storage = Storage(config.data_path, compression=config.compression,
                               gc_ms=config.tombstone_gc_seconds * 1000,
                               sync_writes=config.sync_writes)
        self.storage.ensure_identity(config.node_id, now_ms())
        self.engine = Engine(config, self.storage, now_ms)
        self.engine.listeners.append(self.watchers.notify)
        self.engine.expiry_listeners.append(partial(self.watchers.notify_keys, expired=True))
        # Bind first, so the address peers must use is known before membership starts.
        sock = _bind(config.bind_address, config.port)
        self.port = sock.getsockname()[1]
        self.transport = HttpTransport(config.cluster_secret)
        self.membership = Membership(
            node_id=self.engine.node_id, address=self.address, joined_at=self.storage.joined_at,
            seeds=config.seed_nodes, config=config, transport=self.transport)
        self.replicator = Replicator(self.engine, self.transport, self.membership,
                                     sync_interval_ms=config.sync_interval_ms,
                                     eager_push=config.eager_push)
        self.runner = web.AppRunner(self.build_app(), access_log=None, handle_signals=False)
        await self.runner.setup()
        await web.SockSite(self.runner, sock).start()
        await self.membership.start()
        self._spawn(self.replicator.run(), "anti-entropy")
        self._spawn(self._every(config.ttl_sweep_interval_ms, self._sweep), "sweeper")
        log.info("event=started node=%s url=%s data_dir=%s cas_enabled=%s seeds=%s",
                 self.engine.node_id, self.url, config.data_dir, config.cas_enabled,
                 ",".join(config.seed_nodes) or "-")

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        self._tasks.append(asyncio.create_task(coro, name=name))  # type: ignore[arg-type]

    async def _every(self, interval_ms: int, step: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(interval_ms / 1000)
            try:
                await step()
            except Exception:
                log.exception("event=background_step_failed step=%s", step.__name__)

    async def _sweep(self) -> None:
        assert self.engine is not None
        expired, purged = self.engine.sweep()
        if expired or purged:
            log.debug("event=sweep expired=%d purged=%d", expired, purged)

    async def stop(self) -> None:
        """Tear down in reverse order of start; safe to call after a partial start."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self.membership is not None:
            await self.membership.stop()
        if self.replicator is not None:
            await self.replicator.stop()
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
        if self.transport is not None:
            await self.transport.close()
        if self.storage is not None:
            self.storage.close()
            self.storage = None


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_INDEXED = ("/kv/", "/txn")  # responses that carry X-KVS-Index, errors included


def _around(engine: Engine, metrics: Metrics, secret: str | None
            ) -> Callable[[Handler, str | None], Handler]:
    """What runs around every handler, wrapped onto each route rather than installed as
    aiohttp middleware: a middleware costs every request a partial, an extra coroutine
    and aiohttp's current-app bookkeeping, which a GET noticeably pays for.

    In order: /internal/ requests must be signed (401), failures become JSON errors
    (api.render_error), the answer waits until what it shows is durable
    (Storage.settled: handlers return as soon as their mutation is staged), KV
    responses get X-KVS-Index, and the answer is counted.
    """
    storage = engine.storage
    commits = storage.commits

    def around(handler: Handler, path: str | None) -> Handler:
        """`path`: the route's; None for the fallback route, which matches any path."""
        internal = path is not None and path.startswith(auth.INTERNAL_PREFIX)
        signed_with = secret if internal else None
        indexed = None if path is None else path.startswith(_INDEXED)

        async def wrapped(request: web.Request) -> web.StreamResponse:
            try:
                response = None
                if signed_with is not None:
                    response = await auth.refuse(signed_with, request, wall_ms())
                if response is None:
                    response = await handler(request)
            except Exception as exc:
                response = render_error(request, exc)
            index = storage.index  # staged now, so written (and synced) once settled
            if commits.issued != commits.settled:
                try:
                    await storage.settled()
                except StorageFailed as exc:
                    response = render_error(request, exc)
            if indexed or (indexed is None and request.path.startswith(_INDEXED)):
                response.headers["X-KVS-Index"] = str(index)
            metrics.count(request.method, response.status)
            return response

        return wrapped

    return around


async def _no_route(request: web.Request) -> web.StreamResponse:
    """The last route, matching any path and method: 405 with Allow if another route has
    the path (under another method), else 404. aiohttp's own answers would skip `_around`."""
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if resource is not request.match_info.route.resource:
            allowed |= (await resource.resolve(request))[1]
    if allowed:
        raise web.HTTPMethodNotAllowed(request.method, allowed)
    raise web.HTTPNotFound()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror}; "
                      "is another process using that port? Pick another with --port") from exc
    sock.listen(1024)
    sock.setblocking(False)
    return sock
