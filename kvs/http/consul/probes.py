"""What Consul clients ask before (or besides) the KV: status, agent, catalog, health.

kvs has no leader: every node serves reads and writes, so the leader a client is
told of is the node it asked. The catalog's nodes are the alive members; its services
are the service registry's registrations (kvs/http/services.py), each one instance,
passing while it is registered (a registration's TTL is its health check: an expired
one is gone).

    GET /v1/status/leader            "127.0.0.1:8500"        (this node)
    GET /v1/status/peers             ["127.0.0.1:8500", ...]  (alive members)
    GET /v1/agent/self               {"Config": {"NodeName", "Datacenter": "dc1", ...}, "Member"}
    GET /v1/catalog/nodes            [{"ID", "Node", "Address", "Datacenter", ...}]
    GET /v1/catalog/services         {"web": ["tag"], ...}
    GET /v1/health/service/{name}    [{"Node", "Service", "Checks"}]

The catalog and health reads are blocking queries too (`index`, `wait`), on the
registry's keys. With ACLs on, status needs no token (as in Consul), agent and catalog
nodes an operator's, and the services only what the token may read of `_services/`.
"""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web

from kvs import __version__, acl
from kvs.cluster.swim.membership import Membership
from kvs.cluster.swim.state import ALIVE
from kvs.engine import Engine
from kvs.http.consul.common import DATACENTER
from kvs.http.consul.kv import ConsulKV
from kvs.http.services import PREFIX, live_registrations
from kvs.http.toolkit import access, json_response, require


def node_uuid(node_id: str) -> str:
    """Consul's node IDs are UUIDs: a stable one derived from the kvs node id."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"kvs-node:{node_id}"))


class ConsulProbes:
    def __init__(self, engine: Engine, membership: Membership, kv: ConsulKV) -> None:
        self.engine = engine
        self.membership = membership
        self.kv = kv  # for its blocking queries

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/v1/status/leader", self.leader),
            web.get("/v1/status/peers", self.peers),
            web.get("/v1/agent/self", self.agent_self),
            web.get("/v1/catalog/nodes", self.catalog_nodes),
            web.get("/v1/catalog/services", self.catalog_services),
            web.get("/v1/health/service/{name}", self.health_service),
        ]

    def alive(self) -> list[dict[str, Any]]:
        return [m for m in self.membership.members() if m["state"] == ALIVE]

    async def leader(self, request: web.Request) -> web.Response:
        return json_response(self.membership.address)

    async def peers(self, request: web.Request) -> web.Response:
        return json_response([m["address"] for m in self.alive()])

    async def agent_self(self, request: web.Request) -> web.Response:
        node_id, address = self.engine.node_id, self.membership.address
        host, _, port = address.rpartition(":")
        return json_response({
            "Config": {"Datacenter": DATACENTER, "PrimaryDatacenter": DATACENTER,
                       "NodeName": node_id, "NodeID": node_uuid(node_id), "Server": True,
                       "Version": __version__, "Revision": "kvs"},
            "Member": {"Name": node_id, "Addr": host, "Port": int(port), "Status": 1,
                       "Tags": {"dc": DATACENTER, "role": "consul", "build": f"kvs {__version__}"}},
            "Meta": {},
        })

    async def catalog_nodes(self, request: web.Request) -> web.Response:
        return json_response([_node(m["id"], m["address"]) for m in self.alive()])

    async def catalog_services(self, request: web.Request) -> web.Response:
        await self.kv.blocking(request.query, PREFIX, True, access(request).may_read)
        registrations = live_registrations(self.engine, access(request).may_read)
        return json_response({r["name"]: r.get("tags") or [] for r in registrations})

    async def health_service(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        require(request, acl.READ, PREFIX + name)
        await self.kv.blocking(request.query, PREFIX + name, False)
        here = _node(self.engine.node_id, self.membership.address)
        registrations = live_registrations(self.engine, access(request).may_read)
        return json_response([_instance(here, r) for r in registrations if r["name"] == name])


def _node(node_id: str, address: str) -> dict[str, Any]:
    host = address.rpartition(":")[0]
    return {"ID": node_uuid(node_id), "Node": node_id, "Address": host, "Datacenter": DATACENTER,
            "TaggedAddresses": {"lan": host, "wan": host}, "Meta": {"kvs-address": address}}


def _instance(node: dict[str, Any], registration: dict[str, Any]) -> dict[str, Any]:
    """One registration as Consul's health entry: the instance and its passing check."""
    name = registration["name"]
    return {
        "Node": node,
        "Service": {"ID": name, "Service": name, "Tags": registration.get("tags") or [],
                    "Address": registration.get("address") or "",
                    "Port": registration.get("port") or 0, "Meta": registration.get("meta") or {}},
        "Checks": [{"Node": node["Node"], "CheckID": f"service:{name}", "Name": f"Service '{name}' check",
                    "Status": "passing", "ServiceID": name, "ServiceName": name,
                    "Output": "registered in kvs; a registration's TTL is its check"}],
    }
