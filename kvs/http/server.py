"""The aiohttp application of one node: every route group behind one wrapper.

The wrapper is applied to each route rather than installed as aiohttp middleware:
a middleware costs every request a partial, an extra coroutine and aiohttp's
current-app bookkeeping, which a GET noticeably pays for. In order it:

1. reads and decodes the whole body, if there is one, within the body timeout
   (toolkit.read_body: 408 when late, 400 for a bad Content-Encoding);
2. refuses /internal/ requests made without a client certificate when peers must present
   one (mutual TLS, tls_verify_peer); then admits the request: with ACLs on, resolves its
   token and checks what the route needs
   (kvs/http/acl.py: 401 without a valid token, 403 when its policies do not grant it) and
   leaves the token's compiled rules on the request for the handler's per-key checks; and
   refuses unsigned or replayed requests to /internal/ and state-changing /cluster/
   routes when a cluster secret is set (401, kvs/cluster/auth.py). On operator routes a
   request signed with the cluster secret counts as an operator's, and an operator token
   takes the place of the signature;
3. runs the handler and turns any failure into an error answer in the route's dialect
   (kvs's JSON, toolkit.render_error, unless the path's dialect says otherwise); an
   answer sent before the body was read whole closes the connection;
4. waits until whatever the answer may show is settled (Engine.settle): writes are
   settled by the engine before their handler answers, but a read, a 409's
   `current` or a blocking-query wake-up may show another mutation's staged write
   (during a storage fault it answers at once: see docs/design.md, Storage faults).
   An answer that shows only its own write (toolkit.own_write) needs no such wait;
5. stamps the index counter on the answer as the dialect says (X-KVS-Index on KV
   answers: for a write, the counter as of that write; and X-KVS-Stale: true while
   the node's data may be stale: Engine.stale_reason) and counts the answer for /metrics.

A dialect belongs to a path prefix: the native API speaks kvs's (JSON errors,
X-KVS-Index on /kv/ and /txn), the Consul-compatible /v1/ routes speak Consul's
(plain-text errors, X-Consul-* headers: kvs/http/consul/).

When the client goes away, aiohttp cancels the handler (handler_cancellation, see
kvs/http/connections.py): the request is counted as CLIENT_GONE and logged at debug,
never as an internal error. Cancellation cannot cut a write in half: the engine
stages a mutation with no await inside its lock, and only the wait for it to settle
is cancelled (the write itself still lands).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

from aiohttp import hdrs, web

from kvs.acl import OPEN, Authorizer
from kvs.cluster import auth
from kvs.engine import Engine
from kvs.errors import StorageFailed
from kvs.http import acl
from kvs.http.toolkit import ACCESS, OWN_WRITE, read_body, render_error

log = logging.getLogger("kvs.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# None: go on; a response: the refusal to send instead (it may also raise a KVSError).
Admission = Callable[[web.Request], Awaitable[web.Response | None]]
# The rules of the request's token (raises Unauthorized or Forbidden).
Rules = Callable[[web.Request], Authorizer]
CLIENT_GONE = 499  # the status counted for a request whose client left before its answer (nginx's)


@dataclass(frozen=True)
class Dialect:
    """How the routes under one path prefix answer: errors, and the index counter's header(s)."""

    render_error: Callable[[web.Request, Exception], web.Response] = render_error
    # Puts the index counter (and whatever goes with it) on an answer; None: no header.
    stamp: Callable[[web.StreamResponse, int, Engine], None] | None = None


def _kvs_index(response: web.StreamResponse, index: int, engine: Engine) -> None:
    response.headers["X-KVS-Index"] = str(index)
    if engine.stale_reason is not None:
        response.headers["X-KVS-Stale"] = "true"


NATIVE = Dialect()
# Responses that carry X-KVS-Index, errors included.
NATIVE_DIALECTS: Mapping[str, Dialect] = {"/kv/": Dialect(stamp=_kvs_index),
                                          "/txn": Dialect(stamp=_kvs_index)}


def make_app(routes: Iterable[web.RouteDef], *, secret: str | None, client_max_size: int,
             engine: Engine | None = None,
             count: Callable[[str, int], None] = lambda method, status: None,
             body_timeout: float | None = None,
             dialects: Mapping[str, Dialect] | None = None,
             peer_certificates: bool = False,
             gate: acl.Gate | None = None) -> web.Application:
    """An Application serving `routes`, each wrapped; a last route answers 404/405.

    Without an engine (a membership-only node) there is nothing to settle or index.
    `body_timeout`: seconds a request body may take to arrive (None: no bound).
    `dialects`: path prefix -> Dialect, beside the native ones. `gate`: ACLs (None: off).
    `peer_certificates`: peers' routes require a client certificate (mutual TLS).
    """
    app = web.Application(client_max_size=client_max_size)
    around = _wrapper(engine, count, auth.Guard(secret) if secret is not None else None,
                      body_timeout, {**NATIVE_DIALECTS, **(dialects or {})}, peer_certificates,
                      gate)
    wrapped = [web.RouteDef(r.method, r.path, around(r.handler, r.method, r.path), r.kwargs)
               for r in routes]
    app.add_routes(wrapped)
    app.router.add_route("*", "/{path:.*}", around(_no_route, "*", None))  # last: the fallback
    app[SUBTREES] = subtrees(wrapped)
    app[POST_ROUTES] = {(r.method, r.path): r.handler for r in wrapped
                        if r.method == "POST" and _FAST_POSTS.match(r.path)}
    return app


# -- the front: hot routes without aiohttp's router -------------------------------------------

# A route answering every path under a prefix: /kv/{key:[\s\S]*}.
_SUBTREE = re.compile(r"^(/[^{}]*/)\{\w+:\[\\s\\S\]\*\}$")
# method -> ((path prefix, wrapped handler), ...): see subtrees.
Subtrees = Mapping[str, tuple[tuple[str, Handler], ...]]
SUBTREES = web.AppKey("kvs.subtrees", Subtrees)
# (method, path) -> wrapped handler of the POST routes kvs/http/fastpath.py serves too: the
# peers' (every node-to-node call is one of those: kvs/cluster/transport.py) and /txn. Their
# handlers read only what fastpath.Exchange offers (no match_info, app or remote).
POST_ROUTES = web.AppKey("kvs.post_routes", Mapping[tuple[str, str], Handler])
_FAST_POSTS = re.compile(r"^(/internal/[^{}]+|/txn)$")


def subtrees(routes: Iterable[web.RouteDef]) -> Subtrees:
    """The routes `front` may dispatch itself: those whose path is a prefix followed by one
    variable matching anything, where no other route's path begins like the prefix (aiohttp's
    router would try a more specific one first, or one it indexes under the same part, such
    as /kv{rest}, in the order they were added). For a path under such a prefix the router
    can only pick that route: which one is then decided by a string comparison."""
    routes = list(routes)
    table: dict[str, list[tuple[str, Handler]]] = {}
    for route in routes:
        match = _SUBTREE.match(route.path)
        if match is None:
            continue
        prefix = match.group(1)
        stem = prefix.rstrip("/")
        if all(other.path == route.path or not other.path.startswith(stem) for other in routes):
            table.setdefault(route.method, []).append((prefix, route.handler))
    return {method: tuple(entries) for method, entries in table.items()}


def front(app: web.Application) -> Callable[[Handler], Handler]:
    """The request handler of `app`'s server: a request for a subtree route (a KV read or
    write, the hot path) goes straight to its wrapped handler, anything else to aiohttp's
    router (`routed`, the Application's own handler).

    The Application's dispatch costs a GET about a tenth of its CPU time (the router's walk
    of the path's parts, a match-info object, the current-app bookkeeping): see
    docs/design.md, The HTTP front. A request with an Expect header takes the router, which
    answers 100-continue. The raw path is compared: a path that starts with a prefix also
    does once decoded, and one that only starts with it once decoded (/k%76/) takes the
    router, which routes it the same way.
    """
    table = app[SUBTREES]

    def wrap(routed: Handler) -> Handler:
        async def dispatch(request: web.Request) -> web.StreamResponse:
            entries = table.get(request.method)
            if entries is not None and hdrs.EXPECT not in request.headers:
                path = request.raw_path
                for prefix, handler in entries:
                    if path.startswith(prefix):
                        return await handler(request)
            return await routed(request)

        return dispatch

    return wrap


def _admission(gate: acl.Gate | None, guard: auth.Guard | None, method: str,
               path: str | None) -> tuple[Admission | None, Rules]:
    """What a route checks before its handler runs (step 2 of the module docstring): an
    asynchronous check that may answer instead (the signature; it leaves the rules on the
    request itself), or else the rules of the request's token, found without an await (a
    KV request, the hot path, pays no extra coroutine)."""
    signed = path is not None and auth.needs_signature(method, path)
    need = acl.PEER if gate is None else gate.need_of(method, path)
    if need in (acl.PEER, acl.PUBLIC):
        return (guard.refuse if signed and guard is not None else None), _open
    assert gate is not None
    if need not in (acl.OPERATOR_READ, acl.OPERATOR_WRITE) or guard is None:
        return None, gate.admission(need)

    async def operator(request: web.Request) -> web.Response | None:
        if auth.SIGNATURE_HEADER in request.headers or (signed and not acl.carries_token(request)):
            return await guard.refuse(request)  # signed with the cluster secret: an operator
        request[ACCESS] = gate.admit(request, need)
        return None

    return operator, _open


def _open(request: web.Request) -> Authorizer:
    return OPEN


def _wrapper(engine: Engine | None, count: Callable[[str, int], None], guard: auth.Guard | None,
             body_timeout: float | None, dialects: Mapping[str, Dialect], peer_certificates: bool,
             gate: acl.Gate | None
             ) -> Callable[[Handler, str, str | None], Handler]:
    def dialect_of(path: str) -> Dialect:
        return next((d for prefix, d in dialects.items() if path.startswith(prefix)), NATIVE)

    def around(handler: Handler, method: str, path: str | None) -> Handler:
        """`path`: the route's; None for the fallback route, which matches any path."""
        certified = peer_certificates and path is not None and auth.needs_peer_certificate(path)
        check, rules = _admission(gate, guard, method, path)
        fixed = None if path is None else dialect_of(path)

        async def answer(request: web.Request, dialect: Dialect) -> web.StreamResponse:
            try:
                response = None
                if path is not None and request.body_exists:  # the fallback: 404/405 first
                    await read_body(request, body_timeout)
                if certified:
                    auth.require_peer_certificate(request)
                if check is not None:
                    response = await check(request)
                else:
                    request[ACCESS] = rules(request)
                if response is None:
                    response = await handler(request)
            except Exception as exc:
                response = dialect.render_error(request, exc)
                if not request.content.is_eof():  # the rest of the body can't be told
                    response.force_close()        # from a next request: close after this
            if engine is None:
                return response
            index = response.get(OWN_WRITE)
            if index is None:
                index = engine.index  # staged now, so written (and synced) once settled
                if engine.unsettled:
                    # A storage fault leaves what a read showed pending: it is written once the
                    # disk heals (lost if the node stops first). Reads are still answered; a
                    # write whose own batch failed has raised in its handler already.
                    with contextlib.suppress(StorageFailed):
                        await engine.settle()
            if dialect.stamp is not None:
                dialect.stamp(response, index, engine)
            return response

        async def wrapped(request: web.Request) -> web.StreamResponse:
            try:
                response = await answer(request, fixed or dialect_of(request.path))
            except asyncio.CancelledError:
                count(request.method, CLIENT_GONE)
                log.debug("event=client_gone method=%s path=%s", request.method, request.path)
                raise
            count(request.method, response.status)
            return response

        return wrapped

    return around


async def _no_route(request: web.Request) -> web.StreamResponse:
    """The last route, matching any path and method: 405 with Allow if another route has
    the path (under another method), else 404. aiohttp's own answers would skip the wrapper."""
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if resource is not request.match_info.route.resource:
            allowed |= (await resource.resolve(request))[1]
    if allowed:
        raise web.HTTPMethodNotAllowed(request.method, allowed)
    raise web.HTTPNotFound()
