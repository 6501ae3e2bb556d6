"""Client KV routes: GET/PUT/DELETE /kv/{key}, and /health.

Handlers validate input into engine calls and engine results into JSON (see
kvs/http/toolkit.py for the shared rules). A write returns once the engine says
it is settled; the route wrapper (kvs/http/server.py) then adds X-KVS-Index.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp import web

from kvs import acl
from kvs.cluster.quorum import Quorum, quorum_json
from kvs.conditions import Conditions
from kvs.config import CONSISTENCIES, Config
from kvs.engine import Engine, Op
from kvs.errors import BadRequest, NotFound, Overloaded, TooLarge
from kvs.http.toolkit import (
    ANY_ORIGIN,
    access,
    body_conditions,
    check_params,
    encoded_size,
    flag,
    json_body,
    json_response,
    own_write,
    parse_ttl,
    path_key,
    query_conditions,
    query_duration,
    query_uint,
    require,
    require_prefix,
    uint,
)
from kvs.model import Version
from kvs.watch import Watchers

# Keys the server writes itself (the service registry): readable through /kv, and
# watchable with blocking queries, but written only through /services.
RESERVED_PREFIX = "_services/"
INTERNAL_PREFIX = "_kvs/"
# Keys the server keeps for itself and shows nowhere, whatever the token: a read finds
# nothing, a listing or blocking query skips them, a write is refused and a recursive
# delete skips them. Replicated like any key. The value says whose they are.
HIDDEN: dict[str, str] = {
    acl.RESERVED: "ACL tokens and policies; administer them through /acl/",
    INTERNAL_PREFIX: "the voters of quorum keys; changed through POST /cluster/voters",
    "_consul/": "Consul sessions and locks",
}
HIDDEN_PREFIXES = tuple(HIDDEN)
NOT_DELETED_BY_PREFIX = (RESERVED_PREFIX, *HIDDEN_PREFIXES)
DEFAULT_WAIT_SECONDS = 300
OP_FIELDS = frozenset({"value", "ttl", "flags", *Conditions.FIELDS})  # a PUT's, a txn op's
PUT_FIELDS = OP_FIELDS | {"consistency", "if_seq"}
GET_PARAMS = frozenset({"raw", "version", "history", "recurse", "keys", "separator", "limit",
                        "after", "index", "wait", "consistency"})
DELETE_PARAMS = frozenset({"recurse", "consistency", "if_seq", *Conditions.FIELDS})
IF_SEQ_LOCAL = ("if_seq needs consistency=quorum (seq is the cluster-wide number of quorum "
                "keys); a local write's conditions are cas, if_version, if_timestamp, if_value")


class KVApi:
    def __init__(self, config: Config, engine: Engine, watchers: Watchers, quorum: Quorum) -> None:
        self.config = config
        self.engine = engine
        self.watchers = watchers
        self.quorum = quorum

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/health", self.health),
            # [\s\S]: `.` would not match a decoded %0A, and the key would 404 instead of 400.
            web.get(r"/kv/{key:[\s\S]*}", self.get),
            web.put(r"/kv/{key:[\s\S]*}", self.put),
            web.delete(r"/kv/{key:[\s\S]*}", self.delete),
        ]

    async def health(self, request: web.Request) -> web.Response:
        """200 while the node answers reads; `status` says whether it is fit (a load balancer
        should prefer another node while it is not "ok"): "degraded" (a full or failing
        disk: writes refused, `problems` says why), else "clock_skew" (writes refused until
        its clock is back in range), else "stale" (its data may miss deletions its peers
        purged while it was cut off: kvs.cluster.replication, long partitions)."""
        engine = self.engine
        body: dict[str, Any] = {"status": "ok", "node": engine.node_id}
        if engine.stale_reason is not None:
            body.update(status="stale", stale=engine.stale_reason)
        if engine.clocks.skewed:
            body.update(status="clock_skew", message=engine.skew_message(),
                        clock=engine.clocks.report())
        problems = storage_problems(engine)
        if problems:
            body.update(status="degraded", problems=problems)
        return json_response(body, headers=ANY_ORIGIN)

    # -- GET -----------------------------------------------------------------------------

    async def get(self, request: web.Request) -> web.StreamResponse:
        quorum = self.config.default_consistency == "quorum"
        if not request.query_string and not quorum:  # the common read: current version, no options
            body = self.engine.get(read_key(request, path_key(request))).json_bytes()
            return web.Response(body=body, content_type="application/json")
        query = request.query
        check_params(query, GET_PARAMS)
        if consistency(query.get("consistency"), self.config) == "quorum":
            plain = set(query) <= {"consistency", "raw"}
            if plain or "consistency" in query:
                if not plain:
                    raise BadRequest("consistency=quorum reads the current value (raw=true "
                                     "allowed); history, version, listings and index are local")
                return await self._quorum_get(read_key(request, path_key(request)),
                                             flag(query, "raw"))
        # Every flag is parsed, also those this mode ignores: a malformed one is a 400.
        flags = {name: flag(query, name) for name in ("raw", "history", "recurse", "keys")}
        listing = flags["recurse"] or flags["keys"]
        if not listing:
            misplaced = sorted({"separator", "limit", "after"} & set(query))
            if misplaced:
                goes_with = "keys=true" if misplaced[0] == "separator" else "recurse=true or keys=true"
                raise BadRequest(f"{misplaced[0]} goes with {goes_with}")
        key = path_key(request, prefix=listing)
        if not listing:
            read_key(request, key)
        visible = shown(request)
        wait = query_duration(query, "wait", DEFAULT_WAIT_SECONDS)
        if "index" in query:
            await self.block(key, listing, query_uint(query, "index"), wait, visible)
        if listing:
            return json_response(self._list(key, query, visible))
        if flags["history"]:
            revisions = [v.to_json() for v in self.engine.history(key)]
            return json_response({"key": key, "revisions": revisions})
        if "version" in query:
            found = self.engine.get_version(key, query["version"])
            return json_response(found.to_json())
        current = self.engine.get(key)
        if flags["raw"]:
            return self._raw(current)
        return json_response(current.to_json())

    async def _quorum_get(self, key: str, raw: bool) -> web.Response:
        register = await self.quorum.read(key)
        live = register.value if register and register.value.is_live(self.engine.now_ms()) else None
        seq = register.seq if register else 0
        if live is None:
            hint = "" if register else (" among the voters (a key written with consistency=local "
                                        "is read with consistency=local)")
            raise NotFound(f"key {key!r} not found{hint}", seq=seq)
        if raw:
            return self._raw(live)
        return json_response(quorum_json(self.quorum.local_copy(live), seq))

    def _raw(self, current: Version) -> web.Response:
        if isinstance(current.value, str):
            return web.Response(text=current.value)
        return json_response(current.value)

    def _list(self, prefix: str, query: Any, visible: Callable[[str], bool]) -> dict[str, Any]:
        """One page of the keys under `prefix` that the token may read. The others are
        skipped before the page is counted, so neither its length nor `next` tells of them."""
        # Any limit is fine (a huge one lists everything), as long as it is a number.
        limit = query_uint(query, "limit", maximum=10**20) if "limit" in query else None
        if limit is not None and limit <= 0:
            raise BadRequest("limit must be > 0")
        after = query.get("after")
        separator = query.get("separator")
        if separator is not None and (not separator or not flag(query, "keys")):
            raise BadRequest("separator must be non-empty and goes with keys=true")
        names_only = flag(query, "keys")
        items: list[Any] = []
        last_group: str | None = None
        more = False
        for version in self.engine.live(prefix, after):
            name = version.key
            if not visible(name):
                continue
            if separator:
                cut = name.find(separator, len(prefix))
                name = name[: cut + len(separator)] if cut >= 0 else name
                if name == last_group or (after is not None and name <= after):
                    continue
                last_group = name
            if limit is not None and len(items) == limit:
                more = True
                break
            items.append(name if names_only else version.to_json())
        next_after = None
        if more and items:
            next_after = items[-1] if names_only else items[-1]["key"]
        field = "keys" if names_only else "items"
        return {"prefix": prefix, field: items, "next": next_after}

    async def block(self, key: str, prefix: bool, index: int, wait: float,
                    visible: Callable[[str], bool] = acl.OPEN.may_read) -> None:
        """Hold the request until the key's (or prefix's) modify index exceeds `index`.

        Under a prefix only the keys `visible` accepts count (those the token may read),
        so a change the token may not see neither ends the wait nor shows in its timing.

        Shared by every blocking query: /kv here, /v1/kv and the registry probes of the
        Consul-compatible API (kvs/http/consul/).

        One watch stays registered for the whole wait (see kvs/watch.py); a wake-up
        reads only the keys that changed. The prefix scan runs at most once, and not at
        all when `index` is this node's own counter (the usual X-KVS-Index round trip).
        A TTL expiry of a watched key also ends the wait: what a read returns changed.
        At most max_blocking_queries wait at once (503 beyond); a stopping node answers
        every waiting query at once.
        """
        if len(self.watchers) >= self.config.max_blocking_queries:
            raise Overloaded("too_many_blocking_queries",
                             f"this node already holds {self.config.max_blocking_queries} "
                             "blocking queries (max_blocking_queries); retry shortly or use "
                             "another node")
        with self.watchers.watch(key, prefix=prefix) as watch:
            if self.watchers.closed:
                return
            if (index < self.engine.index
                    and self.engine.modify_index(key, prefix=prefix, visible=visible) > index):
                return
            loop = asyncio.get_running_loop()
            deadline = loop.time() + wait
            while (remaining := deadline - loop.time()) > 0:
                news = await watch.next(remaining)
                if news is None or self.watchers.closed:
                    return
                changed, expired = news
                if expired or any(self.engine.modify_index(k) > index
                                  for k in changed if visible(k)):
                    return

    # -- PUT / DELETE --------------------------------------------------------------------

    async def put(self, request: web.Request) -> web.Response:
        if request.query_string:  # request.query is parsed on first use: only when there is one
            check_params(request.query, frozenset())
        key = path_key(request)
        body = await json_body(request)
        if not isinstance(body, dict):
            raise BadRequest("body must be a JSON object like {\"value\": ...}")
        given = "consistency" in body
        mode = consistency(body.pop("consistency", None), self.config, given=given)
        if_seq = uint("if_seq", body.pop("if_seq")) if "if_seq" in body else None
        write_key(request, key)
        op = parse_op(body, "set", key, OP_FIELDS, self.config)
        if mode == "quorum":
            register = await self.quorum.put(key, op.cond, if_seq, value=op.value,
                                            flags=op.flags, ttl_ms=op.ttl_ms)
            version = self.quorum.local_copy(register.value)
            return json_response({**write_result(version), "seq": register.seq})
        if if_seq is not None:
            raise BadRequest(IF_SEQ_LOCAL)
        version = await self.engine.put(op)
        return own_write(write_result(version), [version])

    async def delete(self, request: web.Request) -> web.Response:
        query = request.query
        check_params(query, DELETE_PARAMS)
        mode = consistency(query.get("consistency"), self.config)
        if_seq = query_uint(query, "if_seq") if "if_seq" in query else None
        if mode == "quorum" and not flag(query, "recurse"):
            key = write_key(request, path_key(request))
            register = await self.quorum.put(key, query_conditions(query), if_seq, deleted=True)
            return json_response({**delete_result(self.quorum.local_copy(register.value)),
                                  "seq": register.seq})
        if "consistency" in query and mode == "quorum":
            raise BadRequest("recurse=true deletes on this node (consistency=local); a quorum "
                             "delete names one key")
        if if_seq is not None:
            raise BadRequest(IF_SEQ_LOCAL)
        if flag(query, "recurse"):
            prefix = path_key(request, prefix=True)
            if set(query) - {"recurse"}:
                raise BadRequest("conditions do not combine with recurse=true")
            writable(prefix)  # a prefix covering the reserved ones skips them instead
            require_prefix(request, acl.WRITE, prefix)
            tombstones = await self.engine.delete_prefix(prefix, skip=NOT_DELETED_BY_PREFIX)
            body = {"prefix": prefix, "deleted": [t.key for t in tombstones],
                    "modify_index": self.engine.index}
            return own_write(body, tombstones) if tombstones else json_response(body)
        key = write_key(request, path_key(request))
        tombstone = await self.engine.delete(key, query_conditions(query))
        return own_write(delete_result(tombstone), [tombstone])


def consistency(raw: Any, config: Config, *, given: bool | None = None) -> str:
    """The consistency a request asks for (`given`: whether it named one; by default,
    whether `raw` is not None), else default_consistency."""
    if not (raw is not None if given is None else given):
        return config.default_consistency
    if raw not in CONSISTENCIES:
        raise BadRequest(f"consistency must be one of {', '.join(CONSISTENCIES)}, got {raw!r}")
    return raw  # type: ignore[no-any-return]


def storage_problems(engine: Engine) -> list[dict[str, Any]]:
    """A storage fault as /health reports it: the error writes get now, and since when."""
    fault = engine.storage_fault
    if fault is None:
        return []
    return [{"error": fault.code, "message": fault.message, "since": engine.storage_fault_since}]


def parse_op(body: dict[str, Any], kind: str, key: str, allowed: frozenset[str],
             config: Config) -> Op:
    """A PUT body or a txn op (already a dict) -> a validated Op."""
    if not allowed.issuperset(body):
        unknown = sorted(set(body) - allowed)
        raise BadRequest(f"unknown field {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}")
    if kind == "set" and "value" not in body:
        raise BadRequest("missing field 'value'")
    flags = uint("flags", body["flags"]) if "flags" in body else 0
    ttl_ms = parse_ttl(body["ttl"]) if "ttl" in body else None
    return Op(kind, key, checked_value(body.get("value"), config), ttl_ms, flags,
              body_conditions(body))


def checked_value(value: Any, config: Config) -> Any:
    size = encoded_size("value", value)
    if size > config.max_value_bytes:
        raise TooLarge(f"value is {size} bytes encoded; max_value_bytes is {config.max_value_bytes}")
    return value


def writable(key: str) -> None:
    if key.startswith(RESERVED_PREFIX):
        raise BadRequest(f"keys under {RESERVED_PREFIX!r} are the service registry's; "
                         "write them through /services")
    if key.startswith(INTERNAL_PREFIX):
        raise BadRequest(f"keys under {INTERNAL_PREFIX!r} are kvs's own (the voters of quorum "
                         "keys); readable, written only by the node (POST /cluster/voters)")
    if hidden(key):
        prefix = next(p for p in HIDDEN_PREFIXES if key.startswith(p))
        raise BadRequest(f"keys under {prefix!r} are reserved for kvs's own records "
                         f"({HIDDEN[prefix]})", key=key)


def hidden(key: str) -> bool:
    return key.startswith(HIDDEN_PREFIXES)


def readable(key: str) -> str:
    """The key, unless it is hidden: then it is not found, as if it did not exist."""
    if hidden(key):
        raise NotFound(f"key {key!r} not found")
    return key


def read_key(request: web.Request, key: str) -> str:
    """The key, once this request may read it: a hidden key is not found (404) whatever
    the token, so that a token's rules never reveal whether one exists; then the ACL (403)."""
    require(request, acl.READ, readable(key))
    return key


def write_key(request: web.Request, key: str) -> str:
    """The key, once this request may write it: never a hidden or registry key (400), then
    the ACL (403)."""
    writable(key)
    require(request, acl.WRITE, key)
    return key


def shown(request: web.Request) -> Callable[[str], bool]:
    """Which keys a listing or blocking query of this request counts: never a hidden one,
    and of the others those the token may read."""
    may_read = access(request).may_read
    return lambda key: not hidden(key) and may_read(key)


def write_result(v: Version) -> dict[str, Any]:
    return {"key": v.key, "version": v.version, "timestamp": v.timestamp,
            "modify_index": v.modify_index, "create_index": v.create_index,
            "expires_at": v.expires_at}


def delete_result(v: Version) -> dict[str, Any]:
    return {"key": v.key, "version": v.version, "modify_index": v.modify_index}
