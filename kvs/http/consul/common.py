"""What every Consul-compatible route shares: the dialect, query parameters, values, entries.

The dialect (kvs/http/server.py runs every route through it):

    every /v1/ answer    X-Consul-Index: <this node's index counter, at least 1>
                         X-Consul-KnownLeader: true   X-Consul-LastContact: 0
                         X-Consul-Effective-Consistency: stale (consistent: a quorum read)
    a failure            its status, and Consul's plain-text body ("Invalid wait time")
    an ACL refusal       403 "Permission denied: ..." (no token, or its policies deny), or
                         403 "ACL not found: ..." (an unknown, expired or malformed token)

Values: Consul's are bytes, kvs's are JSON. The mapping is lossless for bytes:

    bytes written through /v1/kv      stored (native /kv shows)       /v1/kv reads back
    b"hello" (valid UTF-8)            "hello"                         b"hello"
    b"\\xff\\x00" (not UTF-8)           {"$base64": "/wA="}             b"\\xff\\x00"
    (written natively) {"a": 1}       {"a": 1}                        b'{"a":1}' (JSON text)
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from kvs.engine import Engine
from kvs.errors import BadRequest, Forbidden, KVSError, Unauthorized
from kvs.http.consul.locks import LockState
from kvs.http.server import Dialect
from kvs.model import MAX_U64

log = logging.getLogger("kvs.http.consul")

DATACENTER = "dc1"
DEFAULT_WAIT_SECONDS = 300.0  # Consul's default and maximum blocking-query wait
MAX_WAIT_SECONDS = 600.0
BASE64_FIELD = "$base64"
_FALSE = ("false", "0")
_GO_DURATION = re.compile(r"(?:(?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|μs|ms|s|m|h))+")
_GO_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0,
             "h": 3600.0}


# -- the dialect -----------------------------------------------------------------------------

def text_response(status: int, message: str) -> web.Response:
    return web.Response(status=status, text=message)


def render_error(request: web.Request, exc: Exception) -> web.Response:
    """Consul's error shape: the status and a plain-text reason, never a JSON object.
    ACL refusals are Consul's 403s, whose first words its clients look for."""
    if isinstance(exc, Forbidden) or (isinstance(exc, Unauthorized)
                                      and exc.extra.get("cause") == "missing"):
        return text_response(403, f"Permission denied: {exc.message}")
    if isinstance(exc, Unauthorized):
        return text_response(403, f"ACL not found: {exc.message}")
    if isinstance(exc, KVSError):
        return text_response(exc.status, exc.message)
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        response = text_response(exc.status, exc.text or exc.reason)
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    log.error("event=internal_error method=%s path=%s", request.method, request.path, exc_info=exc)
    return text_response(500, "internal error; see the node's log")


def stamp(response: web.StreamResponse, index: int, engine: Engine) -> None:
    """Consul's query metadata. The index is the node's counter: it never goes back on one
    node (restarts included), and is at least 1, as Consul's is. Every node serves
    reads, so the leader is known and contacted; a read from this node's replica is what
    Consul calls stale, a quorum read of a quorum key (kvs/http/consul/kv.py) consistent."""
    headers = response.headers
    headers["X-Consul-Index"] = str(max(1, index))
    headers["X-Consul-KnownLeader"] = "true"
    headers["X-Consul-LastContact"] = "0"
    headers.setdefault("X-Consul-Effective-Consistency", "stale")  # a quorum read's: consistent


DIALECT = Dialect(render_error=render_error, stamp=stamp)


# -- query parameters --------------------------------------------------------------------------

def flag(query: Mapping[str, str], name: str) -> bool:
    """Consul's flags are on by being present (`?recurse`, `recurse=`, `recurse=1`,
    `recurse=true`, `keys=True`); an explicit false or 0 is taken at its word."""
    raw = query.get(name)
    return raw is not None and raw.lower() not in _FALSE


def uint_param(query: Mapping[str, str], name: str) -> int | None:
    raw = query.get(name)
    if raw is None:
        return None
    if not raw.isascii() or not raw.isdigit() or int(raw) > MAX_U64:
        raise BadRequest(f"Invalid {name}: {raw!r} is not an unsigned 64-bit integer")
    return int(raw)


def index_param(query: Mapping[str, str]) -> int:
    """`index`: 0 (absent, 0 or negative, as Spring's first watch sends -1) answers at once."""
    raw = query.get("index")
    if raw is None or raw == "":
        return 0
    try:
        index = int(raw)
    except ValueError:
        raise BadRequest("Invalid index") from None
    if index > MAX_U64:
        raise BadRequest("Invalid index")
    return max(0, index)


def wait_param(query: Mapping[str, str]) -> float:
    """`wait` in Go's duration syntax (`10s`, `5m`, `1m30s`, `250ms`), in seconds; as in
    Consul, none or a non-positive one means 5 minutes, and more than 10 minutes means 10."""
    raw = query.get("wait")
    if not raw:
        return DEFAULT_WAIT_SECONDS
    seconds = go_duration(raw)
    if seconds is None:
        raise BadRequest("Invalid wait time")
    if seconds <= 0:
        return DEFAULT_WAIT_SECONDS
    return min(seconds, MAX_WAIT_SECONDS)


def go_duration(raw: str) -> float | None:
    """Seconds from a Go duration string (time.ParseDuration); None if it is not one."""
    sign, text = (-1.0, raw[1:]) if raw[:1] == "-" else (1.0, raw.removeprefix("+"))
    if text == "0":
        return 0.0
    if not _GO_DURATION.fullmatch(text):
        return None
    return sign * sum(float(n) * _GO_UNITS[unit] for n, unit in _GO_PART.findall(text))


# -- values and entries ------------------------------------------------------------------------

def to_native(raw: bytes) -> Any:
    """Bytes from a Consul client -> the JSON value kvs stores (see the module docstring)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return {BASE64_FIELD: base64.b64encode(raw).decode("ascii")}


def to_bytes(value: Any) -> bytes:
    """A stored JSON value -> the bytes a Consul client reads (see the module docstring)."""
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, dict) and len(value) == 1 and isinstance(value.get(BASE64_FIELD), str):
        try:
            return base64.b64decode(value[BASE64_FIELD], validate=True)
        except binascii.Error:
            pass  # not ours: an object that merely looks like it, read as JSON text
    return orjson.dumps(value)


def entry(version: Mapping[str, Any], lock: LockState, *, with_value: bool = True) -> dict[str, Any]:
    """A version (as Version.to_json() has it) and its lock as Consul's KV entry. An empty
    value is null, as Consul shows it; `with_value` False blanks it (a txn write's
    result). `Session` is there only while a session holds the lock, as in Consul."""
    raw = to_bytes(version["value"]) if with_value else b""
    shown = {
        "LockIndex": lock.lock_index, "Key": version["key"], "Flags": version["flags"],
        "Value": base64.b64encode(raw).decode("ascii") if raw else None,
        "CreateIndex": version["create_index"], "ModifyIndex": version["modify_index"],
    }
    if lock.session is not None:
        shown["Session"] = lock.session
    return shown


def quoted(text: str) -> str:
    """A key quoted as Consul's messages quote it (Go's %q)."""
    return orjson.dumps(text).decode()
