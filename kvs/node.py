"""Wiring and lifecycle of one node: storage, engine, API, background loops.

`Node.start()` brings the parts up in dependency order and `Node.stop()` tears
them down in reverse, so an interrupted start-up or a test failure never
leaves a RocksDB lock or a listening socket behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from kvs.api import KVApi, error_middleware, index_middleware
from kvs.clock import wall_ms
from kvs.config import Config
from kvs.engine import Engine
from kvs.storage import Storage
from kvs.watch import Watchers

log = logging.getLogger("kvs.node")

ENVELOPE_BYTES = 1 << 20


class Node:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.storage: Storage | None = None
        self.engine: Engine | None = None
        self.watchers = Watchers()
        self.runner: web.AppRunner | None = None
        self.port: int | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def url(self) -> str:
        return f"http://{self.config.bind_address}:{self.port}"

    @property
    def address(self) -> str:
        return f"{self.config.bind_address}:{self.port}"

    def build_app(self) -> web.Application:
        assert self.engine is not None
        app = web.Application(
            middlewares=[index_middleware(lambda: self.engine.index if self.engine else 0), error_middleware],
            client_max_size=self.config.max_value_bytes * 4 + ENVELOPE_BYTES,
        )
        app.add_routes(KVApi(self.config, self.engine, self.watchers).routes())
        return app

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        config = self.config
        self.storage = Storage(config.data_path, compression=config.compression,
                               gc_ms=config.tombstone_gc_seconds * 1000)
        self.storage.ensure_identity(config.node_id, wall_ms())
        self.engine = Engine(config, self.storage)
        self.engine.listeners.append(self.watchers.notify)
        self.runner = web.AppRunner(self.build_app(), access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, config.bind_address, config.port, reuse_address=True)
        await site.start()
        self.port = self.runner.addresses[0][1]
        self._spawn(self._every(config.ttl_sweep_interval_ms, self._sweep), "sweeper")
        log.info("event=started node=%s url=%s data_dir=%s cas_enabled=%s",
                 self.engine.node_id, self.url, config.data_dir, config.cas_enabled)

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
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
        if self.storage is not None:
            self.storage.close()
            self.storage = None
