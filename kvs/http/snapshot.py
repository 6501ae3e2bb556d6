"""GET /internal/snapshot: a consistent point-in-time copy of this node, streamed.

Under /internal/ so that, with a cluster secret, only a holder of the secret (a peer,
or `kvs snapshot save` given the secret) may read every key at once. The copy is a
RocksDB checkpoint taken under the engine's lock (Engine.snapshot; kvs/store/snapshot.py
has the file format); the node keeps serving while it streams, and the checkpoint is removed after.
"""

from __future__ import annotations

import asyncio
import shutil
import uuid

from aiohttp import web

from kvs.config import Config
from kvs.engine import Engine

SNAPSHOT_PATH = "/internal/snapshot"


class SnapshotApi:
    def __init__(self, config: Config, engine: Engine) -> None:
        self.config = config
        self.engine = engine

    def routes(self) -> list[web.RouteDef]:
        return [web.get(SNAPSHOT_PATH, self.save)]

    async def save(self, request: web.Request) -> web.StreamResponse:
        work = self.config.data_path / ".snapshots" / uuid.uuid4().hex
        work.parent.mkdir(exist_ok=True)
        try:
            chunks = self.engine.snapshot(work)
            response = web.StreamResponse(headers={
                "Content-Type": "application/octet-stream",
                "Content-Disposition": f'attachment; filename="kvs-{self.engine.node_id}.snap"'})
            await response.prepare(request)
            for chunk in chunks:
                await response.write(chunk)
                await asyncio.sleep(0)  # a big snapshot must not starve other requests
            await response.write_eof()
            return response
        finally:
            shutil.rmtree(work, ignore_errors=True)
