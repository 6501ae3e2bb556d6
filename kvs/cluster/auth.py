"""HMAC authentication of node-to-node and operations requests.

With `cluster_secret` set, every `/internal/` request (gossip, replication, the dump)
and every state-changing `/cluster/` request (leave) is accepted only if it carries

    X-KVS-Timestamp: <ms since epoch when it was signed>
    X-KVS-Nonce:     <random hex, new for every request>
    X-KVS-Signature: hex(HMAC-SHA256(secret, "<ts>\\n<nonce>\\n<METHOD>\\n<path?query>\\n" + body))

its timestamp is within `window_ms` of the receiver's clock, either way, and its
signature was not seen before. Signing the path as well as the body stops a captured
ping body from being replayed against, say, the replication endpoint; the window
bounds how long a captured request could be replayed, and the replay cache (`Guard`)
refuses it within the window: a captured request is applied at most once.

`sign` and `verify` are pure (the caller passes `now_ms`); `Guard` keeps the replay
cache and answers the 401 (the route wrapper, kvs/http/server.py, calls it).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from kvs.clock import wall_ms
from kvs.errors import Unauthorized

if TYPE_CHECKING:
    from aiohttp import web

TIMESTAMP_HEADER = "X-KVS-Timestamp"
NONCE_HEADER = "X-KVS-Nonce"
SIGNATURE_HEADER = "X-KVS-Signature"
INTERNAL_PREFIX = "/internal/"
OPERATIONS_PREFIX = "/cluster/"
DEFAULT_WINDOW_MS = 30_000
MAX_NONCE_LEN = 64
# `cause` in a 401's body, so a peer can tell "our clocks disagree" from "wrong secret".
CAUSE_WINDOW = "timestamp_outside_window"


def needs_signature(method: str, path: str) -> bool:
    """Which routes a cluster secret protects: everything peers call, and every operations
    request that changes state (reads of /cluster/ stay open, as /health and /metrics)."""
    return path.startswith(INTERNAL_PREFIX) or (
        path.startswith(OPERATIONS_PREFIX) and method.upper() not in ("GET", "HEAD"))


# /internal/ routes that operators' tools call (`kvs snapshot save`, the chaos checker's
# dump), not peers: signed like peers' requests, but no peer certificate is asked for.
OPERATOR_INTERNAL = frozenset({"/internal/snapshot", "/internal/dump"})


def needs_peer_certificate(path: str) -> bool:
    """Which routes mutual TLS protects (tls_verify_peer): every route one node calls on another."""
    return path.startswith(INTERNAL_PREFIX) and path not in OPERATOR_INTERNAL


def require_peer_certificate(request: web.Request) -> None:
    """Raise Unauthorized unless the connection presented a client certificate. The server's
    TLS context verified it against tls_ca_file during the handshake (kvs/tls.py), so one that
    is there is one the cluster's CA signed."""
    transport = request.transport
    if transport is None or not transport.get_extra_info("peercert"):
        raise Unauthorized("this route is for cluster nodes: the node requires a client "
                           "certificate signed by its tls_ca_file (tls_verify_peer)",
                           cause="peer_certificate_required")


def _digest(secret: str, method: str, path: str, body: bytes, timestamp: str, nonce: str) -> str:
    prefix = f"{timestamp}\n{nonce}\n{method.upper()}\n{path}\n".encode()
    return hmac.new(secret.encode(), prefix + body, hashlib.sha256).hexdigest()


def operator_headers(secret: str | None, method: str, path: str, body: bytes = b"") -> dict[str, str]:
    """What an operations tool (CLI, chaos run) sends with a request a node may want signed:
    the signature headers, stamped now, when it knows the cluster secret; none otherwise."""
    return sign(secret, method, path, body, wall_ms()) if secret else {}


def sign(secret: str, method: str, path: str, body: bytes, now_ms: int) -> dict[str, str]:
    """Headers that authenticate this exact request, once; `path` includes the query string."""
    timestamp, nonce = str(int(now_ms)), secrets.token_hex(8)
    return {
        TIMESTAMP_HEADER: timestamp,
        NONCE_HEADER: nonce,
        SIGNATURE_HEADER: _digest(secret, method, path, body, timestamp, nonce),
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
) -> str:
    """The request's signature if it was signed with `secret` within the window; else raise
    Unauthorized. The messages say what to check, never the receiver's clock: a stranger
    must not learn it from a refusal."""
    timestamp = _header(headers, TIMESTAMP_HEADER)
    nonce = _header(headers, NONCE_HEADER)
    signature = _header(headers, SIGNATURE_HEADER)
    for name, value in ((TIMESTAMP_HEADER, timestamp), (NONCE_HEADER, nonce),
                        (SIGNATURE_HEADER, signature)):
        if value is None:
            raise Unauthorized(f"request without {name} header; it must be signed with the "
                               "cluster_secret (every node needs the same one)")
    assert timestamp is not None and nonce is not None and signature is not None
    if not timestamp.isascii() or not timestamp.isdigit():
        raise Unauthorized(f"{TIMESTAMP_HEADER} must be milliseconds since epoch")
    if not 0 < len(nonce) <= MAX_NONCE_LEN or not nonce.isascii() or not nonce.isprintable():
        raise Unauthorized(f"{NONCE_HEADER} must be 1 to {MAX_NONCE_LEN} printable ASCII characters")
    if abs(int(now_ms) - int(timestamp)) > window_ms:
        raise Unauthorized(
            f"request timestamp is outside this node's {window_ms // 1000} s window: it was "
            "replayed, or the two nodes' clocks disagree (check NTP on both)",
            cause=CAUSE_WINDOW)
    expected = _digest(secret, method, path, body, timestamp, nonce)
    if not hmac.compare_digest(expected.encode(), signature.strip().lower().encode()):
        raise Unauthorized(
            "request signature does not match; the sender uses another cluster_secret or "
            "the request was altered")
    return expected


class Guard:
    """Verifies signed requests and refuses each signature the second time it is seen.

    A signature stays remembered for twice the window after it was first seen, which
    covers the longest time its timestamp stays acceptable (signed up to one window in
    our future, acceptable until one window after that). Memory: one entry per signed
    request of the last 2 * window (at 1,000 requests/s and 30 s, ~60,000 short strings).
    """

    def __init__(self, secret: str, window_ms: int = DEFAULT_WINDOW_MS,
                 now_ms: Callable[[], int] = wall_ms) -> None:
        self.secret = secret
        self.window_ms = window_ms
        self.now_ms = now_ms
        self._seen: set[str] = set()
        self._expiry: deque[tuple[int, str]] = deque()  # (forget at, signature), in order
        self.replays = 0

    def check(self, method: str, path: str, body: bytes, headers: Mapping[str, str]) -> None:
        """Return if the request is signed and new; raise Unauthorized."""
        now = self.now_ms()
        signature = verify(self.secret, method, path, body, headers, now, self.window_ms)
        while self._expiry and self._expiry[0][0] <= now:
            self._seen.discard(self._expiry.popleft()[1])
        if signature in self._seen:
            self.replays += 1
            raise Unauthorized("this signed request was already received once; a signed request "
                               "is accepted only once (sign each request anew)")
        self._seen.add(signature)
        self._expiry.append((now + 2 * self.window_ms, signature))

    async def refuse(self, request: web.Request) -> web.Response | None:
        """The 401 answer to a request not signed with the secret (or replayed), or None.

        The body is read here and stays cached on the request, so handlers read it again
        for free.
        """
        from aiohttp import web

        body = await request.read()
        try:
            self.check(request.method, request.raw_path, body, request.headers)
        except Unauthorized as exc:
            return web.json_response(exc.body(), status=exc.status)
        return None
