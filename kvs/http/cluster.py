"""Cluster and operations endpoints: /cluster/members, /cluster/status, /cluster/leave, dump.

`DELETE /cluster/members/{id}` (`kvs members remove ID`) and `POST /cluster/leave` change
the cluster, so with a cluster_secret they must be signed like a peer's request: the
route wrapper checks that (kvs/http/server.py, auth.needs_signature); the CLI signs when
given the secret.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web

from kvs.cluster.replication import Replicator
from kvs.cluster.swim.membership import Membership
from kvs.cluster.voters import VoterChanges
from kvs.engine import Engine
from kvs.http.toolkit import ANY_ORIGIN, json_response

DUMP_PATH = "/internal/dump"


class ClusterApi:
    def __init__(self, engine: Engine, membership: Membership, replicator: Replicator,
                 on_leave: Callable[[], None], voters: VoterChanges) -> None:
        self.engine = engine
        self.voters = voters
        self.membership = membership
        self.replicator = replicator
        self.on_leave = on_leave
        self._leaving: asyncio.Task[None] | None = None

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/cluster/members", self.members),
            web.delete("/cluster/members/{id}", self.remove),
            web.get("/cluster/status", self.status),
            web.post("/cluster/leave", self.leave),
            web.post(DUMP_PATH, self.dump),
        ]

    async def members(self, request: web.Request) -> web.Response:
        return json_response(self.membership.members())

    async def status(self, request: web.Request) -> web.Response:
        return json_response({**self.engine.status(), **self.replicator.status(),
                              **self.membership.status()}, headers=ANY_ORIGIN)

    async def remove(self, request: web.Request) -> web.StreamResponse:
        """Remove a dead or left member now (Consul's force-leave -prune); it may rejoin.
        A voter of quorum keys stops being one first (a 503 there leaves the member in)."""
        member_id = request.match_info["id"]
        if self.membership.member(member_id) is not None:
            self.membership.check_removable(member_id)
            await self._unvote(member_id)
        member = self.membership.remove(member_id)
        return json_response({"removed": member.id, "address": member.address,
                              "incarnation": member.incarnation})

    async def leave(self, request: web.Request) -> web.Response:
        """Leave gracefully: peers learn `left` at once, then the node shuts down.

        The leave runs as its own task: a client that hangs up cancels only its wait, never
        a leave half done (membership stopped, yet the node never shutting down).
        """
        if self._leaving is None:
            await self.voters.stop_joining(settle=True)  # no voter again once it has left
            await self._unvote(self.engine.node_id)  # a 503 here: the node stays
            self._leaving = asyncio.create_task(self._leave(), name="leave")
        await asyncio.shield(self._leaving)
        return json_response({"status": "left", "node": self.engine.node_id})

    async def _unvote(self, node_id: str) -> None:
        """A voter that goes is removed from the voters first, unless it is the last one
        (then quorum keys stay unavailable until it is back)."""
        voters = self.engine.voters
        if voters is not None and node_id in voters.voters and len(voters.voters) > 1:
            await self.voters.change(remove=node_id)

    async def _leave(self) -> None:
        await self.membership.leave()
        self.on_leave()

    async def dump(self, request: web.Request) -> web.Response:
        """Every key's revision set on this node: what convergence checks compare."""
        return json_response([
            [v.to_json() for v in versions] for versions in self.engine.sync.dump()
        ])
