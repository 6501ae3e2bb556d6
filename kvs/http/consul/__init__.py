"""A Consul-compatible HTTP API under /v1/: a second front door to the same data.

Consul's clients and tools (py-consul, the npm `consul` client, consul-template,
Traefik's Consul KV provider, Spring Cloud Consul Config) point at a kvs node
unchanged. The native API stays as it is; docs/consul.md has the endpoint table
and what differs.

    kv.py       GET/PUT/DELETE /v1/kv/{key}, blocking queries through KVApi.block
    txn.py      PUT /v1/txn, all-or-nothing through Engine.txn
    sessions.py /v1/session/*: create, renew, destroy, info, list, node
    locks.py    sessions and locks in the store; acquire, release, invalidation (one CAS)
    writes.py   where a value write goes: local, or quorum CAS for quorum keys
    probes.py   status, agent, catalog and health reads
    common.py   the dialect (plain-text errors, X-Consul-* headers), parameters, values

Every route answers in Consul's dialect: kvs/http/server.py applies DIALECT to /v1/.
"""

from __future__ import annotations

from aiohttp import web

from kvs.cluster.swim.membership import Membership
from kvs.config import Config
from kvs.engine import Engine
from kvs.http.consul.common import DIALECT
from kvs.http.consul.kv import Block, ConsulKV
from kvs.http.consul.locks import Locks
from kvs.http.consul.probes import ConsulProbes
from kvs.http.consul.sessions import ConsulSessions
from kvs.http.consul.txn import ConsulTxn
from kvs.http.consul.writes import Writes

PREFIX = "/v1/"

__all__ = ["DIALECT", "PREFIX", "Locks", "Writes", "routes"]


def routes(config: Config, engine: Engine, membership: Membership, block: Block,
           locks: Locks) -> list[web.RouteDef]:
    """`locks`: the node's, whose sweep (Node runs it) frees the locks of gone sessions."""
    kv = ConsulKV(config, engine, block, locks)
    return [*kv.routes(), *ConsulTxn(config, engine, locks).routes(),
            *ConsulSessions(config, engine, locks, kv).routes(),
            *ConsulProbes(engine, membership, kv).routes()]
