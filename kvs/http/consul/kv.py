"""GET/PUT/DELETE /v1/kv/{key}: Consul's KV API on the engine.

    GET    /v1/kv/app/db             [{"Key": "app/db", "Value": "<base64>", "Flags": 0,
                                       "CreateIndex": 7, "ModifyIndex": 9, "LockIndex": 0}]
    GET    /v1/kv/app/?recurse       every entry under the prefix (404 if none)
    GET    /v1/kv/app/?keys&separator=/    ["app/db", "app/web/"]
    GET    /v1/kv/app/db?raw         the value's bytes
    GET    ...&index=9&wait=30s      blocks until something newer than 9 (KVApi.block)
    PUT    /v1/kv/app/db?cas=9&flags=3   body: the value's bytes -> true | false (Writes)
    PUT    /v1/kv/app/db?acquire=<session>    take the lock (and write) -> true | false
    PUT    /v1/kv/app/db?release=<session>    let it go (and write) -> true | false
    DELETE /v1/kv/app/?recurse       true;  DELETE /v1/kv/app/db?cas=9 -> true | false

Reads of a key that takes quorum writes (kvs/http/consul/writes.py), and every read with
`consistent`, are quorum reads (linearizable; `X-Consul-Effective-Consistency:
consistent`), unless `stale` asks for this node's copy; a key without quorum state is
read locally. Other unknown parameters are ignored, as Consul ignores them; `dc`, `ns`
and `partition` are accepted and have no effect (docs/consul.md says why). `token`
(and X-Consul-Token) carry the ACL token when ACLs are on (docs/acl.md): a read needs
read on the key, a listing shows only readable keys, a write needs write, a recursive
delete write on every key under the prefix. A missing key is a 404 with an empty body.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from kvs import acl
from kvs.conditions import NONE, Conditions
from kvs.config import Config
from kvs.engine import Engine, Op
from kvs.errors import BadRequest, NotFound, TooLarge
from kvs.http.consul.common import (
    entry,
    flag,
    index_param,
    quoted,
    to_bytes,
    to_native,
    uint_param,
    wait_param,
)
from kvs.http.consul.locks import Locks
from kvs.http.kv import NOT_DELETED_BY_PREFIX, hidden, readable, shown, writable, write_key
from kvs.http.toolkit import json_response, path_key, require, require_prefix
from kvs.model import Version

# KVApi.block: hold a request until the key's (or prefix's) modify index, among the keys
# the predicate accepts, exceeds an index.
Block = Callable[[str, bool, int, float, Callable[[str], bool]], Awaitable[None]]


def consul_key(request: web.Request, *, prefix: bool = False) -> str:
    """The key after /v1/kv/; empty only where a prefix is meant (recurse, keys)."""
    if not prefix and request.rel_url.raw_path == "/v1/kv/":
        raise BadRequest("Missing key name")
    return path_key(request, prefix=prefix, segments=2)


class ConsulKV:
    def __init__(self, config: Config, engine: Engine, block: Block, locks: Locks) -> None:
        self.config = config
        self.engine = engine
        self.block = block
        self.locks = locks
        self.writes = locks.writes

    def routes(self) -> list[web.RouteDef]:
        path = r"/v1/kv/{key:[\s\S]*}"
        return [web.get(path, self.get), web.put(path, self.put), web.delete(path, self.delete)]

    async def blocking(self, query: Any, key: str, prefix: bool,
                       visible: Callable[[str], bool] = acl.OPEN.may_read) -> None:
        """Consul's blocking query: with `index` N > 0, wait (at most `wait`) until the key
        or prefix changes past N. An N ahead of this node's counter (one that came from
        another node, or the 1 a fresh node reports) waits for the next change. Under a prefix
        only the keys `visible` accepts count (see KVApi.block)."""
        wait = wait_param(query)  # parsed even when unused: a malformed one is still a 400
        index = index_param(query)
        if index:
            await self.block(key, prefix, min(index, self.engine.index), wait, visible)

    # -- GET -----------------------------------------------------------------------------

    async def get(self, request: web.Request) -> web.StreamResponse:
        query = request.query
        keys, recurse = flag(query, "keys"), flag(query, "recurse")
        key = consul_key(request, prefix=keys or recurse)
        visible = shown(request)
        if not (keys or recurse or hidden(key)):  # a hidden key: 404 below, whatever the token
            require(request, acl.READ, key)
        await self.blocking(query, key, keys or recurse, visible)
        if keys:
            # Consul still accepts its historical misspelling.
            names = self._names(key, query.get("separator") or query.get("seperator") or "", visible)
            return json_response(names) if names or not key else web.Response(status=404)
        if recurse:
            entries = [self.entry(v) for v in self.engine.live(key) if visible(v.key)]
            return json_response(entries) if entries else web.Response(status=404)
        found = await self._read(readable(key), quorum=flag(query, "consistent") or (
            self.writes.quorum_for(key) and not flag(query, "stale")))
        if found is None:
            return web.Response(status=404)
        current, seq = found
        headers = {} if seq is None else {"X-Consul-Effective-Consistency": "consistent"}
        if flag(query, "raw"):
            return web.Response(body=to_bytes(current.value), content_type="text/plain",
                                headers={**headers, "X-Content-Type-Options": "nosniff",
                                         "Content-Security-Policy": "sandbox"})
        return json_response([self.entry(current, seq)], headers=headers)

    async def _read(self, key: str, *, quorum: bool) -> tuple[Version, int | None] | None:
        """The key's current version, and its seq if a quorum read found it (None: not
        found). `quorum`: `?consistent`, or a key that takes quorum writes without
        `?stale` (linearizable, as Consul's reads are). A key the round finds no quorum
        state for (a local-mode key, or none) is read from this node's copy."""
        if quorum:
            register = await self.writes.quorum.read(key)
            if register is not None:
                live = register.value
                if not live.is_live(self.engine.now_ms()):
                    return None
                return self.writes.quorum.local_copy(live), register.seq
        try:
            return self.engine.get(key), None
        except NotFound:
            return None

    def entry(self, version: Version, seq: int | None = None) -> dict[str, Any]:
        """A quorum key's ModifyIndex is its seq (what `cas` compares there): the quorum
        read's, or for this node's copy the seq it can tell without a round."""
        shown = version.to_json()
        if seq is None and self.engine.is_quorum_key(version.key):
            seq = self.writes.quorum.local_seq(version)
        if seq is not None:
            shown["modify_index"] = seq
        return entry(shown, self.locks.view(version.key))

    def _names(self, prefix: str, separator: str, visible: Callable[[str], bool]) -> list[str]:
        """Live keys under the prefix that `visible` accepts, each cut after the first
        separator past the prefix (so a "directory" is listed once, with its separator)."""
        names: list[str] = []
        for version in self.engine.live(prefix):
            name = version.key
            if not visible(name):
                continue
            cut = name.find(separator, len(prefix)) if separator else -1
            if cut >= 0:
                name = name[:cut + len(separator)]
            if not names or names[-1] != name:
                names.append(name)
        return names

    # -- PUT / DELETE --------------------------------------------------------------------

    async def put(self, request: web.Request) -> web.Response:
        query = request.query
        key = write_key(request, consul_key(request))
        flags = uint_param(query, "flags") or 0
        cas = uint_param(query, "cas")
        body = await request.read()
        limit = self.config.max_value_bytes
        if len(body) > limit:
            raise TooLarge(f"Request body({len(body)} bytes) too large, max size: {limit} bytes. "
                           "See max_value_bytes.")
        if "acquire" in query or "release" in query:
            return json_response(await self.lock(query, Op("set", key, to_native(body), None, flags)))
        cond = Conditions(cas=cas) if cas is not None else NONE
        return json_response(await self.writes.set(Op("set", key, to_native(body), None, flags, cond)))

    async def delete(self, request: web.Request) -> web.Response:
        query = request.query
        if flag(query, "recurse"):
            if "cas" in query:
                raise BadRequest("Conflicting flags: recurse and cas")
            prefix = consul_key(request, prefix=True)
            writable(prefix)  # a prefix covering the reserved ones skips them instead
            require_prefix(request, acl.WRITE, prefix)
            await self.engine.delete_prefix(prefix, skip=NOT_DELETED_BY_PREFIX)
            return json_response(True)
        key = write_key(request, consul_key(request))
        cas = uint_param(query, "cas")
        return json_response(await self.writes.delete(key, Conditions(cas=cas) if cas is not None
                                                      else NONE))

    async def lock(self, query: Any, write: Op) -> bool:
        """`?acquire=<session>` or `?release=<session>` with the write; as in Consul, `cas`
        does not apply then. Acquiring needs a live session (400 otherwise)."""
        if "acquire" in query and "release" in query:
            raise BadRequest("Conflicting flags: acquire and release")
        if "release" in query:
            return await self.locks.release(write.key, query["release"], write)
        session_id = query["acquire"]
        session = self.locks.session(session_id)
        if session is None:
            raise BadRequest(f"invalid session {quoted(session_id)}: no such session (never "
                             "created, destroyed or expired); nothing was written")
        return await self.locks.acquire(write.key, session.value, write)
