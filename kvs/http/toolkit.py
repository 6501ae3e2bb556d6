"""What every route shares: reading bodies, parsing parameters, JSON answers, errors.

Handlers only translate: they turn a request into typed values (raising BadRequest,
400, for anything malformed) and an engine result into JSON. Every expected failure
is a KVSError that `render_error` turns into {"error", "message"} with its status;
anything else is a bug, logged with its traceback and answered as a JSON 500 (tests
assert none). The same rules hold for client routes and for the /internal/ routes
peers call: a peer's bad input is a 400, never a 500.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
import zlib
from typing import Any
from urllib.parse import unquote_to_bytes

import orjson
from aiohttp import web

from kvs import acl
from kvs.conditions import MISSING, NONE, Conditions
from kvs.errors import BadRequest, Forbidden, KVSError, RequestTimeout, TooLarge
from kvs.keys import validate_key
from kvs.model import MAX_TTL_MS, MAX_U64, Version

log = logging.getLogger("kvs.http")

MAX_TTL_SECONDS = MAX_TTL_MS // 1000
MAX_WAIT_SECONDS = 600
# orjson encodes at most 254 levels of arrays/objects, and kvs wraps a value a few levels
# deeper (stored revision set, history, listing, txn results, replication batches).
MAX_VALUE_DEPTH = 128
_HEADROOM = 254 - MAX_VALUE_DEPTH
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m)?$")
# Every ASCII digit -> "0", any other byte -> " ": a run of 20 digits is then a plain
# substring search (see has_long_digit_run).
_DIGITS_AS_ZERO = bytes(0x30 if 0x30 <= byte <= 0x39 else 0x20 for byte in range(256))
_LONG_RUN = b"0" * 20
_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 413: "too_large"}


# -- answers -------------------------------------------------------------------------------

# On the read-only answers a web UI served by another member may read (GET /health and
# /cluster/status: node id, counters, Merkle root; nothing from the key space), so the UI
# of one node can show every node. No credentials are involved.
ANY_ORIGIN = {"Access-Control-Allow-Origin": "*"}

def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None
                  ) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, headers=headers,
                        content_type="application/json")


# Set on an answer that shows nothing but the versions its own write created: the value
# is the index counter as of that write (see own_write).
OWN_WRITE = web.ResponseKey("kvs.own_write_index", int)


def own_write(body: Any, versions: list[Version]) -> web.Response:
    """The answer to a write that shows only the versions it created.

    Those were settled when the engine's write call returned, so the route wrapper need
    not wait for other requests' writes staged meanwhile (under load it would wait one
    more event-loop round for nothing), and X-KVS-Index is the counter as of this write.
    """
    response = json_response(body)
    response[OWN_WRITE] = max(v.modify_index for v in versions)
    return response


def error_response(status: int, code: str, message: str, **extra: Any) -> web.Response:
    return json_response({"error": code, "message": message, **extra}, status)


def render_error(request: web.Request, exc: Exception) -> web.Response:
    """The JSON answer for an exception out of a handler: {"error", "message"} and its status.

    A KVSError is expected; an HTTPException (404, 405, 413 from aiohttp) keeps its status;
    anything else is a bug, logged with its traceback. A non-error HTTPException (a
    redirect) is re-raised for aiohttp to send.
    """
    if isinstance(exc, KVSError):
        return json_response(exc.body(), exc.status, exc.headers() or None)
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


# -- ACLs: what the request's token may do ------------------------------------------------

# The request's compiled ACL rules, set by the route wrapper (kvs/http/server.py) once it
# has resolved the token; while ACLs are off, acl.OPEN (every key but the reserved ones).
ACCESS = web.RequestKey("kvs.access", acl.Authorizer)


def access(request: web.Request) -> acl.Authorizer:
    try:
        return request[ACCESS]
    except KeyError:  # a route the wrapper does not admit (peers'); it touches no client key
        return acl.OPEN


def require(request: web.Request, action: str, key: str) -> None:
    """Refuse (403) unless the token may `action` (read, write) `key`. Every route that
    touches a named key calls this before touching it (after kvs.http.kv's rule for the
    hidden keys, which answers the same whatever the token)."""
    if not access(request).may(action, key):
        raise Forbidden(f"this token may not {action} key {key!r}", key=key)


def require_prefix(request: web.Request, action: str, prefix: str) -> None:
    """Refuse (403) unless the token may `action` every key under `prefix` (a recursive
    delete, Consul's get-tree): decided from the rules alone, so it tells nothing of
    which keys exist."""
    if not access(request).may_prefix(action, prefix):
        raise Forbidden(f"this token may not {action} every key under {prefix!r} (a rule "
                        "under that prefix restricts it)", prefix=prefix)


# -- bodies --------------------------------------------------------------------------------

# Content-Encoding -> zlib wbits. RFC 9110's "deflate" is the zlib format, not raw deflate.
_CODINGS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


async def read_body(request: web.Request, timeout: float | None = None) -> bytes:
    """The whole request body, decoded from its Content-Encoding.

    kvs decodes, not aiohttp (auto_decompress is off): aiohttp's decoder fails deep in its
    parser, which surfaced as a 500 plus a second traceback from aiohttp itself. Here a
    corrupt or unknown encoding is a 400 naming it. `timeout` bounds the whole read, so a
    body that trickles or never ends cannot hold its connection (408). aiohttp keeps the
    raw bytes once read: the route wrapper reads (and checks) every body first, so a
    handler's call costs no wait, and a decode only for the rare encoded body.

    A body that has arrived whole (the common case: it came with the headers) is read
    without arming the timer: that read cannot wait, and the timer's set-up and cancel
    cost a few µs on every request.
    """
    if timeout is None or request.content.is_eof():
        raw = await request.read()
    else:
        raw = await _read_within(request, timeout)
    return _decoded(request.headers.get("Content-Encoding", "identity"), raw,
                    request.client_max_size)


async def _read_within(request: web.Request, timeout: float) -> bytes:
    try:
        async with asyncio.timeout(timeout):
            return await request.read()
    except TimeoutError:
        raise RequestTimeout(f"the request body did not arrive within {timeout:g}s "
                             "(http_body_timeout_seconds)") from None


def _decoded(coding: str, raw: bytes, limit: int) -> bytes:
    name = coding.strip().lower()
    if name in ("", "identity"):
        return raw
    if name not in _CODINGS:
        raise BadRequest(f"Content-Encoding {coding[:40]!r} is not supported; send the body "
                         f"unencoded or as {', '.join(_CODINGS)}")
    decoder = zlib.decompressobj(_CODINGS[name])
    try:
        body = decoder.decompress(raw, limit + 1)  # a bomb stops at the limit, not at memory
    except zlib.error as exc:
        raise BadRequest(f"body is not valid {name} data ({exc}); nothing was done") from None
    if len(body) > limit:
        raise TooLarge(f"body is larger than this node accepts once decoded ({limit} bytes)")
    if not decoder.eof or decoder.unused_data:
        raise BadRequest(f"body is not valid {name} data (truncated, or data after its end); "
                         "nothing was done")
    return body


async def json_body(request: web.Request, kind: type = object) -> Any:
    """The request body as JSON of the given kind (dict, list; object: any JSON value)."""
    raw = await read_body(request)
    if not raw:
        raise BadRequest("request body is empty; expected JSON")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"body is not valid JSON (UTF-8): {exc}") from None
    if has_long_digit_run(raw):
        # orjson turns integers beyond 64 bits into floats, silently dropping digits.
        # Only bodies with a 20+ digit run pay for the stdlib parse that can tell.
        json.loads(raw, parse_int=_int64)
    if not isinstance(body, kind):
        raise BadRequest(f"body must be a JSON {_KIND_NAMES.get(kind, kind.__name__)}")
    return body


_KIND_NAMES: dict[type, str] = {dict: "object", list: "array"}


def has_long_digit_run(raw: bytes) -> bool:
    """True if `raw` holds 20 ASCII digits in a row (what re's rb"\\d{20}" finds).

    Two C passes (translate, then a substring search) instead of the regex, which tried
    a match at every byte: 4.9 µs on a 450-byte txn body of 4 ops, four times the orjson
    parse itself, against 0.5 µs this way."""
    return _LONG_RUN in raw.translate(_DIGITS_AS_ZERO)


def _int64(text: str) -> int:
    value = int(text)
    if not -(2**63) <= value <= MAX_U64:
        raise BadRequest(f"integer {text[:30]}... does not fit in 64 bits; send it as a string "
                         "to keep every digit")
    return value


def uint(name: str, raw: Any, maximum: int = MAX_U64) -> int:
    """A JSON integer from 0 to `maximum` (booleans are not integers here)."""
    if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw <= maximum:
        raise BadRequest(f"{name} must be an integer from 0 to {maximum}, got {raw!r}")
    return raw


def check_depth(name: str, value: Any) -> Any:
    """Reject JSON nesting more than MAX_VALUE_DEPTH arrays/objects deep ([] is 1 level).

    The test is the property kvs needs: the value must still encode when wrapped
    _HEADROOM levels deeper. orjson does the walk (in C; a Python walk of a 1 MiB
    value costs ~100 ms of event loop).
    """
    encoded_size(name, value)
    return value


def encoded_size(name: str, value: Any) -> int:
    """Bytes of the value's JSON encoding, after check_depth's test: one orjson pass for both."""
    if not isinstance(value, dict | list):
        return len(orjson.dumps(value))
    wrapped = value
    for _ in range(_HEADROOM):
        wrapped = [wrapped]
    try:
        return len(orjson.dumps(wrapped)) - 2 * _HEADROOM  # each wrapper adds "[" and "]"
    except orjson.JSONEncodeError:
        raise BadRequest(f"{name} nests deeper than {MAX_VALUE_DEPTH} levels of arrays/objects") from None


def parse_ttl(raw: Any) -> int:
    """TTL in seconds (number > 0, at most ten years) -> milliseconds. null is a wrong type."""
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise BadRequest(f"ttl must be a number of seconds, got {raw!r}")
    if not 0 < raw <= MAX_TTL_SECONDS:
        raise BadRequest(f"ttl must be > 0 and at most {MAX_TTL_SECONDS} seconds, got {raw!r}")
    return max(1, round(raw * 1000))


def body_conditions(body: dict[str, Any]) -> Conditions:
    """Conditions from a JSON body (PUT, txn op); absent fields impose nothing."""
    if Conditions.FIELDS.isdisjoint(body):
        return NONE
    return Conditions(
        cas=uint("cas", body["cas"]) if "cas" in body else None,
        if_version=_uuid(body["if_version"]) if "if_version" in body else None,
        if_timestamp=uint("if_timestamp", body["if_timestamp"]) if "if_timestamp" in body else None,
        if_value=check_depth("if_value", body["if_value"]) if "if_value" in body else MISSING,
    )


def _uuid(raw: Any) -> str:
    if not isinstance(raw, str):
        raise BadRequest(f"if_version must be a UUID string, got {raw!r}")
    try:
        uuid.UUID(raw)
    except ValueError:
        raise BadRequest(f"if_version {raw!r} is not a UUID") from None
    return raw


# -- query parameters ----------------------------------------------------------------------

def check_params(query: Any, allowed: frozenset[str]) -> None:
    unknown = sorted(set(query) - allowed)
    if unknown:
        known = ", ".join(sorted(allowed)) or "none (this request takes no query string)"
        raise BadRequest(f"unknown query parameter {unknown[0]!r}; allowed: {known}")


def flag(query: Any, name: str) -> bool:
    raw = query.get(name)
    if raw is None:
        return False
    if raw in ("", "true", "1"):
        return True
    if raw in ("false", "0"):
        return False
    raise BadRequest(f"{name} must be true or false, got {raw!r}")


def query_uint(query: Any, name: str, maximum: int = MAX_U64) -> int:
    """A non-negative integer parameter (at most `maximum`), in plain decimal digits."""
    raw = query[name]
    if not raw.isascii() or not raw.isdigit() or len(raw) > 20:
        raise BadRequest(f"{name} must be a non-negative integer, got {raw!r}")
    return uint(name, int(raw), maximum)


def query_duration(query: Any, name: str, default_seconds: float) -> float:
    """A duration like 30s, 500ms or 5m (at most MAX_WAIT_SECONDS) -> seconds."""
    raw = query.get(name)
    if raw is None:
        return default_seconds
    match = _DURATION.match(raw)
    if not match:
        raise BadRequest(f"{name} must look like 30s, 500ms or 5m, got {raw!r}")
    number, unit = float(match.group(1)), match.group(2) or "s"
    seconds = number * {"ms": 0.001, "s": 1, "m": 60}[unit]
    if seconds > MAX_WAIT_SECONDS:
        raise BadRequest(f"{name} is at most {MAX_WAIT_SECONDS // 60}m")
    return seconds


def query_conditions(query: Any) -> Conditions:
    """Conditions from query parameters (DELETE); if_value is JSON text."""
    if_value: Any = MISSING
    if "if_value" in query:
        try:
            if_value = orjson.loads(query["if_value"])
        except orjson.JSONDecodeError:
            raise BadRequest("if_value must be JSON (quote strings: if_value=\"text\")") from None
        check_depth("if_value", if_value)
    return Conditions(
        cas=query_uint(query, "cas") if "cas" in query else None,
        if_version=_uuid(query["if_version"]) if "if_version" in query else None,
        if_timestamp=query_uint(query, "if_timestamp") if "if_timestamp" in query else None,
        if_value=if_value,
    )


def path_key(request: web.Request, *, prefix: bool = False, segments: int = 1) -> str:
    """The key from the raw path after its first `segments` segments (/kv/<key>,
    /v1/kv/<key>), percent-decoded strictly: %FF is not a key, it is an error."""
    key = request.rel_url.raw_path.split("/", segments + 1)[segments + 1]
    if "%" in key:  # without a percent sign, decoding would change nothing
        try:
            key = unquote_to_bytes(key).decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("key is not valid UTF-8 once percent-decoded") from None
    return validate_key(key, prefix=prefix)
