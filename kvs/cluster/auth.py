"""HMAC authentication of node-to-node requests (everything under `/internal/`).

With `cluster_secret` set, a request is accepted only if it carries

    X-KVS-Timestamp: <ms since epoch when it was signed>
    X-KVS-Signature: hex(HMAC-SHA256(secret, "<ts>\\n<METHOD>\\n<path?query>\\n" + body))

and the timestamp is within `window_ms` of the receiver's clock, either way.
Signing the path as well as the body stops a captured ping body from being
replayed against, say, the replication endpoint; the timestamp bounds how long
a captured request stays usable. Requests inside the window can be replayed:
every internal endpoint is idempotent (gossip is incarnation-guarded, versions
are applied by id), so a replay changes nothing that the original did not.

`sign` and `verify` are pure (the caller passes `now_ms`); only `refuse` touches
aiohttp (the route wrapper, kvs/http/server.py, calls it).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import TYPE_CHECKING

from kvs.errors import Unauthorized

if TYPE_CHECKING:
    from aiohttp import web

TIMESTAMP_HEADER = "X-KVS-Timestamp"
SIGNATURE_HEADER = "X-KVS-Signature"
INTERNAL_PREFIX = "/internal/"
DEFAULT_WINDOW_MS = 30_000


def _digest(secret: str, method: str, path: str, body: bytes, timestamp: str) -> str:
    prefix = f"{timestamp}\n{method.upper()}\n{path}\n".encode()
    return hmac.new(secret.encode(), prefix + body, hashlib.sha256).hexdigest()


def sign(secret: str, method: str, path: str, body: bytes, now_ms: int) -> dict[str, str]:
    """Headers that authenticate this exact request; `path` includes the query string."""
    timestamp = str(int(now_ms))
    return {
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: _digest(secret, method, path, body, timestamp),
    }


def _header(headers: Mapping[str, str], name: str) -> str | None:
    # aiohttp's headers are case-insensitive; a plain dict (tests, other clients) is not.
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    return next((v for k, v in headers.items() if k.lower() == lowered), None)


def verify(
    secret: str,
    method: str,
    path: str,
    body: bytes,
    headers: Mapping[str, str],
    now_ms: int,
    window_ms: int = DEFAULT_WINDOW_MS,
) -> None:
    """Return if the request was signed with `secret` within the window; raise Unauthorized."""
    timestamp = _header(headers, TIMESTAMP_HEADER)
    signature = _header(headers, SIGNATURE_HEADER)
    if timestamp is None or signature is None:
        missing = TIMESTAMP_HEADER if timestamp is None else SIGNATURE_HEADER
        raise Unauthorized(
            f"internal request without {missing} header; every node needs the same "
            "cluster_secret"
        )
    if not timestamp.isascii() or not timestamp.isdigit():
        raise Unauthorized(f"{TIMESTAMP_HEADER} must be milliseconds since epoch")
    skew = int(now_ms) - int(timestamp)
    if abs(skew) > window_ms:
        direction = "old" if skew > 0 else "in the future"
        raise Unauthorized(
            f"internal request signed {abs(skew)} ms {direction} (window {window_ms} ms); "
            "replayed, or the nodes' clocks disagree"
        )
    expected = _digest(secret, method, path, body, timestamp)
    if not hmac.compare_digest(expected.encode(), signature.strip().lower().encode()):
        raise Unauthorized(
            "internal request signature does not match; the sender uses another "
            "cluster_secret or the request was altered"
        )


async def refuse(secret: str, request: web.Request, now_ms: int,
                 window_ms: int = DEFAULT_WINDOW_MS) -> web.Response | None:
    """The 401 answer to an `/internal/` request not signed with `secret`, or None if it was.

    The body is read here and stays cached on the request, so handlers read it again for free.
    """
    from aiohttp import web

    body = await request.read()
    try:
        verify(secret, request.method, request.raw_path, body, request.headers, now_ms, window_ms)
    except Unauthorized as exc:
        return web.json_response(exc.body(), status=exc.status)
    return None

