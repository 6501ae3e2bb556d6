"""Cluster and operations endpoints: /cluster/members, /cluster/status, /cluster/leave, dump."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web

from kvs.cluster.replication import Replicator
from kvs.cluster.swim.membership import Membership
from kvs.engine import Engine
from kvs.http.toolkit import ANY_ORIGIN, json_response

DUMP_PATH = "/internal/dump"


class ClusterApi:
    def __init__(self, engine: Engine, membership: Membership, replicator: Replicator,
                 on_leave: Callable[[], None]) -> None:
        self.engine = engine
        self.membership = membership
        self.replicator = replicator
        self.on_leave = on_leave

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/cluster/members", self.members),
            web.get("/cluster/status", self.status),
            web.post("/cluster/leave", self.leave),
            web.post(DUMP_PATH, self.dump),
        ]

    async def members(self, request: web.Request) -> web.Response:
        return json_response(self.membership.members())

    async def status(self, request: web.Request) -> web.Response:
        return json_response({**self.engine.status(), **self.replicator.status()}, headers=ANY_ORIGIN)

    async def leave(self, request: web.Request) -> web.Response:
        """Leave gracefully: peers learn `left` at once, then the node shuts down."""
        await self.membership.leave()
        asyncio.get_running_loop().call_soon(self.on_leave)
        return json_response({"status": "left", "node": self.engine.node_id})

    async def dump(self, request: web.Request) -> web.Response:
        """Every key's revision set on this node: what convergence checks compare."""
        return json_response([
            [v.to_json() for v in versions] for versions in self.engine.sync.dump()
        ])
