"""The aiohttp application of one node: every route group behind one wrapper.

The wrapper is applied to each route rather than installed as aiohttp middleware:
a middleware costs every request a partial, an extra coroutine and aiohttp's
current-app bookkeeping, which a GET noticeably pays for. In order it:

1. refuses unsigned /internal/ requests when a cluster secret is set (401);
2. runs the handler and turns any failure into an error answer in the route's dialect
   (kvs's JSON, toolkit.render_error, unless the path's dialect says otherwise);
3. waits until whatever the answer may show is settled (Engine.settle): writes are
   settled by the engine before their handler answers, but a read, a 409's
   `current` or a blocking-query wake-up may show another mutation's staged write;
4. stamps the index counter on the answer as the dialect says (X-KVS-Index on KV
   answers) and counts the answer for /metrics.

A dialect belongs to a path prefix: the native API speaks kvs's (JSON errors,
X-KVS-Index on /kv/ and /txn), the Consul-compatible /v1/ routes speak Consul's
(plain-text errors, X-Consul-* headers: kvs/http/consul/).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

from aiohttp import web

from kvs.clock import wall_ms
from kvs.cluster import auth
from kvs.engine import Engine
from kvs.errors import StorageFailed
from kvs.http.toolkit import render_error

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Dialect:
    """How the routes under one path prefix answer: errors, and the index counter's header(s)."""

    render_error: Callable[[web.Request, Exception], web.Response] = render_error
    stamp: Callable[[web.StreamResponse, int], None] | None = None  # None: no index header


def _kvs_index(response: web.StreamResponse, index: int) -> None:
    response.headers["X-KVS-Index"] = str(index)


NATIVE = Dialect()
# Responses that carry X-KVS-Index, errors included.
NATIVE_DIALECTS: Mapping[str, Dialect] = {"/kv/": Dialect(stamp=_kvs_index),
                                          "/txn": Dialect(stamp=_kvs_index)}


def make_app(routes: Iterable[web.RouteDef], *, secret: str | None, client_max_size: int,
             engine: Engine | None = None,
             count: Callable[[str, int], None] = lambda method, status: None,
             dialects: Mapping[str, Dialect] | None = None) -> web.Application:
    """An Application serving `routes`, each wrapped; a last route answers 404/405.

    `dialects`: path prefix -> Dialect, beside the native ones. Without an engine (a
    membership-only node) there is nothing to settle or index.
    """
    app = web.Application(client_max_size=client_max_size)
    around = _wrapper(engine, count, secret, {**NATIVE_DIALECTS, **(dialects or {})})
    app.add_routes([web.RouteDef(r.method, r.path, around(r.handler, r.path), r.kwargs)
                    for r in routes])
    app.router.add_route("*", "/{path:.*}", around(_no_route, None))  # last: the fallback
    return app


def _wrapper(engine: Engine | None, count: Callable[[str, int], None], secret: str | None,
             dialects: Mapping[str, Dialect]) -> Callable[[Handler, str | None], Handler]:
    def dialect_of(path: str) -> Dialect:
        return next((d for prefix, d in dialects.items() if path.startswith(prefix)), NATIVE)

    def around(handler: Handler, path: str | None) -> Handler:
        """`path`: the route's; None for the fallback route, which matches any path."""
        internal = path is not None and path.startswith(auth.INTERNAL_PREFIX)
        signed_with = secret if internal else None
        fixed = None if path is None else dialect_of(path)

        async def wrapped(request: web.Request) -> web.StreamResponse:
            dialect = fixed if fixed is not None else dialect_of(request.path)
            try:
                response = None
                if signed_with is not None:
                    response = await auth.refuse(signed_with, request, wall_ms())
                if response is None:
                    response = await handler(request)
            except Exception as exc:
                response = dialect.render_error(request, exc)
            if engine is not None:
                index = engine.index  # staged now, so written (and synced) once settled
                if engine.unsettled:
                    try:
                        await engine.settle()
                    except StorageFailed as exc:
                        response = dialect.render_error(request, exc)
                if dialect.stamp is not None:
                    dialect.stamp(response, index)
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
