"""Public HTTP API (SPEC section 3): /kv, /txn, /health. JSON in, JSON out.

Handlers only translate: they validate input into engine calls and engine
results into JSON. Every expected failure is a KVSError that `render_error` (called
by the wrapper around every route, kvs/node.py) renders as {"error", "message"} with its status; anything
else is a bug, logged with its traceback and answered as a JSON 500 (tests assert none).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any
from urllib.parse import unquote_to_bytes

import orjson
from aiohttp import web

from kvs import conditions
from kvs.config import Config
from kvs.engine import MAX_TTL_SECONDS, Engine, Op
from kvs.errors import BadRequest, KVSError, TooLarge
from kvs.keys import validate_key
from kvs.model import Version
from kvs.watch import Watchers

log = logging.getLogger("kvs.api")

# Keys the server writes itself (the service registry): readable through /kv, and
# watchable with blocking queries, but written only through /services.
RESERVED_PREFIX = "_services/"
MAX_WAIT_SECONDS = 600
DEFAULT_WAIT_SECONDS = 300
PUT_FIELDS = frozenset({"value", "ttl", "flags", *conditions.FIELDS})
TXN_FIELDS = PUT_FIELDS | {"op", "key"}
GET_PARAMS = frozenset({"raw", "version", "history", "recurse", "keys", "separator", "limit",
                        "after", "index", "wait"})
DELETE_PARAMS = frozenset({"recurse", *conditions.FIELDS})
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m)?$")
_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found",
               405: "method_not_allowed", 413: "too_large"}


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None
                  ) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, headers=headers,
                        content_type="application/json")


def error_response(status: int, code: str, message: str, **extra: Any) -> web.Response:
    return json_response({"error": code, "message": message, **extra}, status)


def render_error(request: web.Request, exc: Exception) -> web.Response:
    """The JSON answer for an exception out of a handler: {"error", "message"} and its status.

    A KVSError is expected; an HTTPException (404, 405, 413 from aiohttp) keeps its status;
    anything else is a bug, logged with its traceback. A non-error HTTPException (a
    redirect) is re-raised for aiohttp to send.
    """
    if isinstance(exc, KVSError):
        return json_response(exc.body(), exc.status)
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        code = _HTTP_CODES.get(exc.status, "http_error")
        if exc.status == 413:
            return error_response(413, code, "request body is larger than this node accepts "
                                  "(max_value_bytes plus envelope)")
        response = error_response(exc.status, code, exc.reason)
        if "Allow" in exc.headers:  # RFC 9110: a 405 lists the methods the resource has
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    log.error("event=internal_error method=%s path=%s", request.method, request.path, exc_info=exc)
    return error_response(500, "internal", "internal error; see the node's log")


# -- input parsing ---------------------------------------------------------------------

def flag(query: Any, name: str) -> bool:
    raw = query.get(name)
    if raw is None:
        return False
    if raw in ("", "true", "1"):
        return True
    if raw in ("false", "0"):
        return False
    raise BadRequest(f"{name} must be true or false, got {raw!r}")


def check_params(query: Any, allowed: frozenset[str]) -> None:
    unknown = sorted(set(query) - allowed)
    if unknown:
        raise BadRequest(f"unknown query parameter {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}")


def parse_duration(raw: str) -> float:
    match = _DURATION.match(raw)
    if not match:
        raise BadRequest(f"wait must look like 30s, 500ms or 5m, got {raw!r}")
    number, unit = float(match.group(1)), match.group(2) or "s"
    seconds = number * {"ms": 0.001, "s": 1, "m": 60}[unit]
    if seconds > MAX_WAIT_SECONDS:
        raise BadRequest(f"wait is at most {MAX_WAIT_SECONDS // 60}m")
    return seconds


def parse_ttl(raw: Any) -> int:
    """TTL in seconds (number > 0, at most ten years) -> milliseconds. null is a wrong type."""
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise BadRequest(f"ttl must be a number of seconds, got {raw!r}")
    if not 0 < raw <= MAX_TTL_SECONDS:
        raise BadRequest(f"ttl must be > 0 and at most {MAX_TTL_SECONDS} seconds, got {raw!r}")
    return max(1, round(raw * 1000))


def _path_key(request: web.Request, *, prefix: bool = False) -> str:
    """The key from the raw path, percent-decoded strictly: %FF is not a key, it is an error."""
    key = request.rel_url.raw_path.split("/", 2)[2]
    if "%" in key:  # without a percent sign, decoding would change nothing
        try:
            key = unquote_to_bytes(key).decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("key is not valid UTF-8 once percent-decoded") from None
    return validate_key(key, prefix=prefix)


async def json_body(request: web.Request) -> Any:
    raw = await request.read()
    if not raw:
        raise BadRequest("request body is empty; expected a JSON object")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"body is not valid JSON (UTF-8): {exc}") from None
    if _LONG_DIGITS.search(raw):
        # orjson turns integers beyond 64 bits into floats, silently dropping digits.
        # Only bodies with a 20+ digit run pay for the stdlib parse that can tell.
        json.loads(raw, parse_int=_int64)
    return body


_LONG_DIGITS = re.compile(rb"\d{20}")


def _int64(text: str) -> int:
    value = int(text)
    if not -(2**63) <= value <= 2**64 - 1:
        raise BadRequest(f"integer {text[:30]}... does not fit in 64 bits; send it as a string "
                         "to keep every digit")
    return value


class KVApi:
    def __init__(self, config: Config, engine: Engine, watchers: Watchers) -> None:
        self.config = config
        self.engine = engine
        self.watchers = watchers

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/health", self.health),
            # [\s\S]: `.` would not match a decoded %0A, and the key would 404 instead of 400.
            web.get(r"/kv/{key:[\s\S]*}", self.get),
            web.put(r"/kv/{key:[\s\S]*}", self.put),
            web.delete(r"/kv/{key:[\s\S]*}", self.delete),
            web.post("/txn", self.txn),
        ]

    def _value(self, value: Any) -> Any:
        size = conditions.encoded_size("value", value)
        if size > self.config.max_value_bytes:
            raise TooLarge(f"value is {size} bytes encoded; max_value_bytes is "
                           f"{self.config.max_value_bytes}")
        return value

    async def health(self, request: web.Request) -> web.Response:
        return json_response({"status": "ok", "node": self.engine.node_id})

    # -- GET -----------------------------------------------------------------------------

    async def get(self, request: web.Request) -> web.StreamResponse:
        if not request.query_string:  # the common read: the current version, no options
            body = self.engine.get(_path_key(request)).json_bytes()
            return web.Response(body=body, content_type="application/json")
        query = request.query
        check_params(query, GET_PARAMS)
        # Every flag is parsed, also those this mode ignores: a malformed one is a 400.
        flags = {name: flag(query, name) for name in ("raw", "history", "recurse", "keys")}
        listing = flags["recurse"] or flags["keys"]
        if not listing:
            misplaced = sorted({"separator", "limit", "after"} & set(query))
            if misplaced:
                goes_with = "keys=true" if misplaced[0] == "separator" else "recurse=true or keys=true"
                raise BadRequest(f"{misplaced[0]} goes with {goes_with}")
        key = _path_key(request, prefix=listing)
        wait = parse_duration(query.get("wait", f"{DEFAULT_WAIT_SECONDS}s"))
        if "index" in query:
            await self._block(key, listing, conditions.uint("index", _int_param(query, "index")), wait)
        if listing:
            return json_response(self._list(key, query))
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

    def _raw(self, current: Version) -> web.Response:
        if isinstance(current.value, str):
            return web.Response(text=current.value)
        return json_response(current.value)

    def _list(self, prefix: str, query: Any) -> dict[str, Any]:
        limit = _int_param(query, "limit") if "limit" in query else None
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

    async def _block(self, key: str, prefix: bool, index: int, wait: float) -> None:
        """Hold the request until the key's (or prefix's) modify index exceeds `index`.

        One watch stays registered for the whole wait (see kvs/watch.py); a wake-up
        reads only the keys that changed. The prefix scan runs at most once, and not at
        all when `index` is this node's own counter (the usual X-KVS-Index round trip).
        A TTL expiry of a watched key also ends the wait: what a read returns changed.
        """
        with self.watchers.watch(key, prefix=prefix) as watch:
            if index < self.engine.index and self._modify_index(key, prefix) > index:
                return
            loop = asyncio.get_running_loop()
            deadline = loop.time() + wait
            while (remaining := deadline - loop.time()) > 0:
                news = await watch.next(remaining)
                if news is None:
                    return
                changed, expired = news
                if expired or any(self._modify_index(k, False) > index for k in changed):
                    return

    def _modify_index(self, key: str, prefix: bool) -> int:
        if not prefix:
            versions = self.engine.storage.read(key)
            return versions[0].modify_index if versions else 0
        return max((s[0].modify_index for s in self.engine.storage.scan_sets(key)), default=0)

    # -- PUT / DELETE --------------------------------------------------------------------

    async def put(self, request: web.Request) -> web.Response:
        if request.query_string:  # request.query is parsed on first use: only when there is one
            check_params(request.query, frozenset())
        key = _path_key(request)
        body = await json_body(request)
        if not isinstance(body, dict):
            raise BadRequest("body must be a JSON object like {\"value\": ...}")
        _writable(key)
        version = self.engine.set(self._op(body, "set", key, allowed=PUT_FIELDS))
        return json_response(_write_result(version))

    async def delete(self, request: web.Request) -> web.Response:
        query = request.query
        check_params(query, DELETE_PARAMS)
        if flag(query, "recurse"):
            prefix = _path_key(request, prefix=True)
            if set(query) - {"recurse"}:
                raise BadRequest("conditions do not combine with recurse=true")
            _writable(prefix)  # a prefix covering the reserved one skips it instead
            tombstones = self.engine.delete_prefix(prefix, skip=RESERVED_PREFIX)
            return json_response({"prefix": prefix, "deleted": [t.key for t in tombstones],
                                  "modify_index": self.engine.index})
        key = _path_key(request)
        _writable(key)
        tombstone = self.engine.delete(key, conditions.from_query(dict(query)))
        return json_response({"key": key, "version": tombstone.version,
                              "modify_index": tombstone.modify_index})

    # -- transactions --------------------------------------------------------------------

    async def txn(self, request: web.Request) -> web.Response:
        check_params(request.query, frozenset())
        body = await json_body(request)
        if not isinstance(body, dict) or set(body) != {"ops"} or not isinstance(body["ops"], list):
            raise BadRequest("body must be {\"ops\": [...]}")
        raw_ops = body["ops"]
        if not raw_ops:
            raise BadRequest("ops must not be empty")
        if len(raw_ops) > self.config.max_txn_ops:
            raise BadRequest(f"{len(raw_ops)} ops; max_txn_ops is {self.config.max_txn_ops}")
        ops = [self._txn_op(i, raw) for i, raw in enumerate(raw_ops)]
        results = self.engine.txn(ops)
        return json_response({"results": [
            _write_result(r) if isinstance(r, Version) and not r.deleted
            else _delete_result(r) if isinstance(r, Version) else r
            for r in results
        ]})

    def _txn_op(self, index: int, raw: Any) -> Op:
        if not isinstance(raw, dict):
            raise BadRequest(f"ops[{index}] must be an object")
        kind = raw.get("op")
        if kind not in ("set", "delete", "check", "get"):
            raise BadRequest(f"ops[{index}].op must be set, delete, check or get, got {kind!r}")
        key = raw.get("key")
        if not isinstance(key, str):
            raise BadRequest(f"ops[{index}].key must be a string")
        try:
            if kind in ("set", "delete"):
                _writable(key)
            allowed = TXN_FIELDS if kind == "set" else TXN_FIELDS - {"value", "ttl", "flags"}
            return self._op(raw, kind, validate_key(key), allowed=allowed)
        except BadRequest as exc:
            raise BadRequest(f"ops[{index}]: {exc.message}") from None

    def _op(self, body: dict[str, Any], kind: str, key: str, *, allowed: frozenset[str]) -> Op:
        if not allowed.issuperset(body):
            unknown = sorted(set(body) - allowed)
            raise BadRequest(f"unknown field {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}")
        if kind == "set" and "value" not in body:
            raise BadRequest("missing field 'value'")
        flags = conditions.uint("flags", body["flags"]) if "flags" in body else 0
        ttl_ms = parse_ttl(body["ttl"]) if "ttl" in body else None
        return Op(kind, key, self._value(body.get("value")), ttl_ms, flags, conditions.from_body(body))


def _writable(key: str) -> None:
    if key.startswith(RESERVED_PREFIX):
        raise BadRequest(f"keys under {RESERVED_PREFIX!r} are the service registry's; "
                         "write them through /services")


def _int_param(query: Any, name: str) -> int:
    raw = query[name]
    if not raw.isascii() or not raw.isdigit() or len(raw) > 20:
        raise BadRequest(f"{name} must be a non-negative integer, got {raw!r}")
    return int(raw)


def _write_result(v: Version) -> dict[str, Any]:
    return {"key": v.key, "version": v.version, "timestamp": v.timestamp,
            "modify_index": v.modify_index, "create_index": v.create_index,
            "expires_at": v.expires_at}


def _delete_result(v: Version) -> dict[str, Any]:
    return {"key": v.key, "version": v.version, "modify_index": v.modify_index}
