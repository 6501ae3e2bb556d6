"""/v1/session/*: Consul's sessions, stored by kvs/http/consul/locks.py.

    PUT /v1/session/create          {"Name", "Node", "TTL": "30s", "Behavior": "release",
                                     "LockDelay": "15s"} (all optional) -> {"ID": "<uuid>"}
    PUT /v1/session/renew/{id}      [session]; 404 "Session id '...' not found" once gone
    PUT /v1/session/destroy/{id}    true; its locks are released (or keys deleted) at once
    GET /v1/session/info/{id}       [session] or []
    GET /v1/session/list            [session, ...]
    GET /v1/session/node/{node}     the sessions of one node

A session is [{"ID", "Name", "Node", "LockDelay" (ns), "Behavior", "TTL", "NodeChecks",
"ServiceChecks", "CreateIndex", "ModifyIndex"}], as Consul's. A session with a TTL
lives twice its TTL after its last renewal (Consul's grace), on every node.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from aiohttp import web

from kvs.conditions import Conditions
from kvs.config import Config
from kvs.engine import Engine, Op
from kvs.errors import BadRequest, Forbidden
from kvs.http.consul.common import go_duration
from kvs.http.consul.kv import ConsulKV
from kvs.http.consul.locks import SESSION_PREFIX, Locks
from kvs.http.toolkit import access, json_response
from kvs.model import Version

MAX_TTL_SECONDS = 86_400  # Consul's bound
DEFAULT_LOCK_DELAY_NS = 15_000_000_000
MAX_LOCK_DELAY_NS = 60_000_000_000
BEHAVIORS = ("release", "delete")
# The only health check kvs can stand for: the node's own membership (Consul's default).
ACCEPTED_CHECKS = (None, [], ["serfHealth"])


def parse_session(raw: bytes, node: str, min_ttl_seconds: int) -> dict[str, Any]:
    """A create request's body as the session record (without its ID). Field names in
    any case, as Go decodes them; unknown fields ignored, as Consul ignores them."""
    try:
        body = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"Request decode failed: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("Request decode failed: the body must be a JSON object")
    fields = {name.lower(): value for name, value in body.items()}
    behavior = fields.get("behavior") or "release"
    if behavior not in BEHAVIORS:
        raise BadRequest(f"Invalid Behavior setting {behavior!r}: release or delete")
    for name in ("checks", "nodechecks", "servicechecks"):
        if fields.get(name) not in ACCEPTED_CHECKS:
            raise BadRequest(f"Request decode failed: {name} are not supported: kvs sessions "
                             "end only by their TTL or by destroy")
    return {"Name": _text(fields, "name", ""), "Node": _text(fields, "node", "") or node,
            "LockDelay": lock_delay_ns(fields.get("lockdelay")), "Behavior": behavior,
            "TTL": session_ttl(fields.get("ttl"), min_ttl_seconds)}


def _text(fields: dict[str, Any], name: str, default: str) -> str:
    value = fields.get(name, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise BadRequest(f"Request decode failed: {name.capitalize()} must be a string")
    return value


def session_ttl(raw: Any, min_seconds: int) -> str:
    """The TTL as given ("" for none), once it parses and is within Consul's bounds."""
    if raw is None or raw == "":
        return ""
    seconds = go_duration(raw) if isinstance(raw, str) else None
    if seconds is None:
        raise BadRequest(f"Request decode failed: invalid TTL {raw!r}: a duration like \"30s\"")
    if seconds != 0 and not min_seconds <= seconds <= MAX_TTL_SECONDS:
        raise BadRequest(f"Invalid Session TTL '{raw}', must be between [{min_seconds}s="
                         f"{MAX_TTL_SECONDS}s]")
    return raw if seconds else ""


def lock_delay_ns(raw: Any) -> int:
    """Consul's LockDelay: a duration string, or a number (seconds below 1000, else ns)."""
    if raw is None:
        return DEFAULT_LOCK_DELAY_NS
    if isinstance(raw, str):
        seconds = go_duration(raw)
        if seconds is None:
            raise BadRequest(f"Request decode failed: invalid LockDelay {raw!r}: a duration like \"15s\"")
        ns = round(seconds * 1e9)
    elif isinstance(raw, int) and not isinstance(raw, bool):
        ns = raw * 1_000_000_000 if raw < 1000 else raw
    else:
        raise BadRequest(f"Request decode failed: invalid LockDelay {raw!r}")
    if not 0 <= ns <= MAX_LOCK_DELAY_NS:
        raise BadRequest(f"Invalid LockDelay {raw!r}: between 0s and 60s")
    return ns


def ttl_ms(record: dict[str, Any]) -> int | None:
    """How long the stored session lives after a write: twice its TTL (Consul's grace)."""
    seconds = go_duration(record["TTL"]) if record["TTL"] else None
    return round(seconds * 2000) if seconds else None


OWNER = "_owner"  # the accessor id of the token that created the session (ACLs on)


def shown(version: Version) -> dict[str, Any]:
    fields = {k: v for k, v in version.value.items() if k != OWNER}
    return {**fields, "NodeChecks": [], "ServiceChecks": None,
            "CreateIndex": version.create_index, "ModifyIndex": version.modify_index}


def check_owner(request: web.Request, session: Version) -> None:
    """With ACLs on, a session is renewed or destroyed only by the token that created it,
    or by a management or operator-write token: destroying a session releases its locks
    or deletes its keys, which a token that may only read must not be able to do. (Consul
    decides this by `session:write` rules on node names; kvs has no node rules.)"""
    who = access(request)
    owner = session.value.get(OWNER)
    if who.token_id is None or owner in (None, who.token_id) or who.management \
            or who.may_operate("write"):
        return
    raise Forbidden(f"session {session.value['ID']!r} was created by another token: only that "
                    "token, or a management or operator-write token, may renew or destroy it")


class ConsulSessions:
    def __init__(self, config: Config, engine: Engine, locks: Locks, kv: ConsulKV) -> None:
        self.config = config
        self.engine = engine
        self.locks = locks
        self.kv = kv  # for its blocking queries

    def routes(self) -> list[web.RouteDef]:
        return [
            web.put("/v1/session/create", self.create),
            web.put("/v1/session/renew/{id}", self.renew),
            web.put("/v1/session/destroy/{id}", self.destroy),
            web.get("/v1/session/info/{id}", self.info),
            web.get("/v1/session/list", self.list),
            web.get("/v1/session/node/{node}", self.node),
        ]

    async def create(self, request: web.Request) -> web.Response:
        record = parse_session(await request.read(), self.engine.node_id,
                               self.config.consul_session_min_ttl_seconds)
        record = {"ID": str(uuid.uuid4()), **record}
        if (owner := access(request).token_id) is not None:
            record[OWNER] = owner
        await self.engine.put(Op("set", SESSION_PREFIX + record["ID"], record, ttl_ms(record)),
                              internal=True)
        return json_response({"ID": record["ID"]})

    async def renew(self, request: web.Request) -> web.Response:
        session_id = request.match_info["id"]
        current = self.locks.session(session_id)
        if current is None:
            return web.Response(status=404, text=f"Session id '{session_id}' not found")
        check_owner(request, current)
        renewed = await self.engine.put(Op("set", current.key, current.value, ttl_ms(current.value),
                                           cond=Conditions(cas=current.modify_index)), internal=True)
        return json_response([shown(renewed)])

    async def destroy(self, request: web.Request) -> web.Response:
        session_id = request.match_info["id"]
        current = self.locks.session(session_id)
        if current is not None:
            check_owner(request, current)
            await self.engine.delete(current.key)
        await self.locks.invalidate(session_id)
        return json_response(True)

    async def info(self, request: web.Request) -> web.Response:
        session_id = request.match_info["id"]
        await self.kv.blocking(request.query, SESSION_PREFIX + session_id, False)
        current = self.locks.session(session_id)
        return json_response([shown(current)] if current else [])

    async def list(self, request: web.Request) -> web.Response:
        await self.kv.blocking(request.query, SESSION_PREFIX, True)
        return json_response([shown(v) for v in self.locks.sessions()])

    async def node(self, request: web.Request) -> web.Response:
        await self.kv.blocking(request.query, SESSION_PREFIX, True)
        name = request.match_info["node"]
        return json_response([shown(v) for v in self.locks.sessions() if v.value["Node"] == name])
