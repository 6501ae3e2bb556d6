"""The aiohttp application of one node: every route group behind one wrapper.

The wrapper is applied to each route rather than installed as aiohttp middleware:
a middleware costs every request a partial, an extra coroutine and aiohttp's
current-app bookkeeping, which a GET noticeably pays for. In order it:

1. refuses unsigned /internal/ requests when a cluster secret is set (401);
2. runs the handler and turns any failure into a JSON error (toolkit.render_error);
3. waits until whatever the answer may show is settled (Engine.settle): writes are
   settled by the engine before their handler answers, but a read, a 409's
   `current` or a blocking-query wake-up may show another mutation's staged write
   (during a storage fault it answers at once: see docs/design.md, Storage faults);
4. adds X-KVS-Index to KV answers and counts the answer for /metrics.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterable

from aiohttp import web

from kvs.clock import wall_ms
from kvs.cluster import auth
from kvs.engine import Engine
from kvs.errors import StorageFailed
from kvs.http.toolkit import render_error

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_INDEXED = ("/kv/", "/txn")  # responses that carry X-KVS-Index, errors included


def make_app(routes: Iterable[web.RouteDef], *, secret: str | None, client_max_size: int,
             engine: Engine | None = None,
             count: Callable[[str, int], None] = lambda method, status: None) -> web.Application:
    """An Application serving `routes`, each wrapped; a last route answers 404/405.

    Without an engine (a membership-only node) there is nothing to settle or index.
    """
    app = web.Application(client_max_size=client_max_size)
    around = _wrapper(engine, count, secret)
    app.add_routes([web.RouteDef(r.method, r.path, around(r.handler, r.path), r.kwargs)
                    for r in routes])
    app.router.add_route("*", "/{path:.*}", around(_no_route, None))  # last: the fallback
    return app


def _wrapper(engine: Engine | None, count: Callable[[str, int], None], secret: str | None
             ) -> Callable[[Handler, str | None], Handler]:
    def around(handler: Handler, path: str | None) -> Handler:
        """`path`: the route's; None for the fallback route, which matches any path."""
        internal = path is not None and path.startswith(auth.INTERNAL_PREFIX)
        signed_with = secret if internal else None
        indexed = None if path is None else path.startswith(_INDEXED)

        async def wrapped(request: web.Request) -> web.StreamResponse:
            try:
                response = None
                if signed_with is not None:
                    response = await auth.refuse(signed_with, request, wall_ms())
                if response is None:
                    response = await handler(request)
            except Exception as exc:
                response = render_error(request, exc)
            if engine is not None:
                index = engine.index  # staged now, so written (and synced) once settled
                if engine.unsettled:
                    # A storage fault leaves what a read showed pending: it is written once the
                    # disk heals (lost if the node stops first). Reads are still answered; a
                    # write whose own batch failed has raised in its handler already.
                    with contextlib.suppress(StorageFailed):
                        await engine.settle()
                if indexed or (indexed is None and request.path.startswith(_INDEXED)):
                    response.headers["X-KVS-Index"] = str(index)
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
