"""Service registry (as in Konsul): /services, stored as ordinary KV versions.

A registration is the JSON value of the key `_services/<name>`, written through
the engine like any other key, so it replicates, converges, expires and keeps
history exactly as KV data does:

    POST /services {"name": "web", "port": 80, "ttl": 10}
        -> engine.put(Op("set", "_services/web", {"name": "web", "address": null, "port": 80,
                                        "tags": [], "meta": {}, "ttl": 10}, ttl_ms=10_000)

    GET    /services                   live registrations, by name
    GET    /services/{name}            one registration (?metadata=true: its entry, below)
    PUT    /services/{name}/renew      fresh TTL, conditioned on the current version
    DELETE /services/{name}?cas=N      tombstone

Writes and metadata reads answer in Konsul's shape, so its users' code reads them
unchanged (the list keeps kvs's {"services": [...]}): an entry is
the registration under "service" beside its version's identity, and a write adds a
human "message":

    GET  /services/web?metadata=true -> {"service": {"name": "web", ...}, "version",
                                         "modify_index", "create_index", "expires_at"}
    POST /services                   -> {"message": "service registered", ...the entry}
    PUT  /services/web/renew         -> {"message": "service renewed", ...the entry}
    DELETE /services/web             -> {"message": "service deregistered", "name": "web",
                                         "version", "modify_index"}

`cas` means what it means for `/kv` (create-only with 0, modify_index otherwise)
and needs `cas_enabled`. A renewal is different: its `if_version` condition is
the server's own guard against resurrecting a registration that expired or was
deregistered meanwhile, not a client CAS, so it works with `cas_enabled: false`.
The `/kv` API treats the `_services/` prefix as read-only (see kvs.http.kv.RESERVED_PREFIX).

With ACLs on, a registration is governed by the rules on its key: reading `web` needs
read on `_services/web`, registering, renewing or deregistering it needs write there,
and a listing shows only the registrations the token may read.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from kvs import acl
from kvs.conditions import NONE, Conditions
from kvs.config import Config
from kvs.engine import Engine, Op
from kvs.errors import BadRequest, NotFound, TooLarge
from kvs.http.kv import RESERVED_PREFIX
from kvs.http.toolkit import (
    access,
    check_params,
    flag,
    json_body,
    json_response,
    own_write,
    parse_ttl,
    query_conditions,
    read_body,
    require,
    uint,
)
from kvs.model import Version

PREFIX = RESERVED_PREFIX
NAME = re.compile(r"[A-Za-z0-9._-]{1,128}")
REGISTER_FIELDS = frozenset({"name", "address", "port", "tags", "meta", "ttl", "cas"})


def validate_name(raw: Any) -> str:
    if not isinstance(raw, str) or not NAME.fullmatch(raw):
        raise BadRequest(f"service name must be 1 to 128 characters of A-Z a-z 0-9 . _ -, got {raw!r}")
    return raw


def parse_registration(body: Any) -> tuple[dict[str, Any], int | None, Conditions]:
    """POST /services body -> (registration value, ttl in ms or None, conditions)."""
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object like {\"name\": \"web\", \"port\": 80}")
    unknown = sorted(set(body) - REGISTER_FIELDS)
    if unknown:
        raise BadRequest(f"unknown field {unknown[0]!r}; allowed: {', '.join(sorted(REGISTER_FIELDS))}")
    if "name" not in body:
        raise BadRequest("missing field 'name'")
    name = validate_name(body["name"])
    address = body.get("address")
    if address is not None and not isinstance(address, str):
        raise BadRequest(f"address must be a string, got {address!r}")
    port = body.get("port")
    if port is not None and (isinstance(port, bool) or not isinstance(port, int)
                             or not 1 <= port <= 65535):
        raise BadRequest(f"port must be an integer from 1 to 65535, got {port!r}")
    tags = body.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise BadRequest("tags must be a list of strings")
    meta = body.get("meta", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise BadRequest("meta must be an object of string values")
    ttl = body.get("ttl")
    ttl_ms = parse_ttl(ttl) if ttl is not None else None
    cond = Conditions(cas=uint("cas", body["cas"])) if "cas" in body else NONE
    value = {"name": name, "address": address, "port": port, "tags": tags, "meta": meta, "ttl": ttl}
    return value, ttl_ms, cond


def _is_registration(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("name"), str)


def live_registrations(engine: Engine, visible: Callable[[str], bool]) -> list[dict[str, Any]]:
    """Every live registration whose key `visible` accepts, in name order: GET /services,
    and the Consul catalog."""
    return [v.value for v in engine.live(PREFIX) if _is_registration(v.value) and visible(v.key)]


class ServiceApi:
    def __init__(self, config: Config, engine: Engine) -> None:
        self.config = config
        self.engine = engine

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/services", self.register),
            web.get("/services", self.list_services),
            web.get("/services/{name}", self.get),
            web.put("/services/{name}/renew", self.renew),
            web.delete("/services/{name}", self.deregister),
        ]

    def _current(self, name: str) -> Version:
        try:
            current = self.engine.get(PREFIX + name)
        except NotFound:
            raise NotFound(f"service {name!r} is not registered (or its ttl ran out)") from None
        if not _is_registration(current.value):
            raise NotFound(f"service {name!r} is not registered")
        return current

    # -- handlers ------------------------------------------------------------------------

    async def register(self, request: web.Request) -> web.Response:
        check_params(request.query, frozenset())
        value, ttl_ms, cond = parse_registration(await json_body(request))
        size = len(orjson.dumps(value))
        if size > self.config.max_value_bytes:
            raise TooLarge(f"registration is {size} bytes encoded; max_value_bytes is "
                           f"{self.config.max_value_bytes}")
        name = value["name"]
        require(request, acl.WRITE, PREFIX + name)
        try:
            version = await self.engine.put(Op("set", PREFIX + name, value, ttl_ms, cond=cond))
        except NotFound:
            raise NotFound(f"service {name!r} is not registered; cas={cond.cas} needs an existing "
                           "registration (cas=0 creates one)") from None
        return own_write({"message": "service registered", **_entry(version)}, [version])

    async def list_services(self, request: web.Request) -> web.Response:
        check_params(request.query, frozenset())
        return json_response({"services": live_registrations(self.engine, access(request).may_read)})

    async def get(self, request: web.Request) -> web.Response:
        check_params(request.query, frozenset({"metadata"}))
        metadata = flag(request.query, "metadata")
        name = validate_name(request.match_info["name"])
        require(request, acl.READ, PREFIX + name)
        current = self._current(name)
        return json_response(_entry(current) if metadata else current.value)

    async def renew(self, request: web.Request) -> web.Response:
        """Rewrite the registration with a fresh TTL, only if it is still the same version.

        The if_version condition is the server's own (a lease renewal must not
        resurrect a registration that expired or was deregistered, nor overwrite one
        that changed meanwhile), so it is allowed with cas_enabled: false.
        """
        check_params(request.query, frozenset())
        name = validate_name(request.match_info["name"])
        require(request, acl.WRITE, PREFIX + name)
        ttl: Any = None
        if await read_body(request):
            body = await json_body(request)
            if not isinstance(body, dict) or set(body) - {"ttl"}:
                raise BadRequest("body must be empty or {\"ttl\": <seconds>}")
            ttl = body.get("ttl")
        current = self._current(name)
        if ttl is None:
            ttl = current.value.get("ttl")
            if ttl is None:
                raise BadRequest(f"service {name!r} was registered without a ttl; pass "
                                 "{\"ttl\": <seconds>} to renew it with one")
        ttl_ms = parse_ttl(ttl)
        value = {**current.value, "ttl": ttl}
        try:
            version = await self.engine.put(
                Op("set", PREFIX + name, value, ttl_ms, current.flags,
                   Conditions(if_version=current.version)), internal=True)
        except NotFound:
            raise NotFound(f"service {name!r} expired or was deregistered; register it again") from None
        return own_write({"message": "service renewed", **_entry(version)}, [version])

    async def deregister(self, request: web.Request) -> web.Response:
        query = request.query
        check_params(query, frozenset({"cas"}))
        name = validate_name(request.match_info["name"])
        require(request, acl.WRITE, PREFIX + name)
        cond = query_conditions(query)
        try:
            tombstone = await self.engine.delete(PREFIX + name, cond)
        except NotFound:
            raise NotFound(f"service {name!r} is not registered") from None
        return own_write({"message": "service deregistered", "name": name,
                          "version": tombstone.version, "modify_index": tombstone.modify_index},
                         [tombstone])


def _entry(v: Version) -> dict[str, Any]:
    """A registration's version as Konsul's entry: the registration under "service"."""
    return {"service": v.value, "version": v.version, "modify_index": v.modify_index,
            "create_index": v.create_index, "expires_at": v.expires_at}
