"""GET /: what answers here and where its API lives, for whoever starts at the root.

A script gets JSON; a browser (an Accept header that ranks text/html above JSON) gets
the same links as a small HTML page:

    {"name": "kvs", "version": "0.1.0", "node": "n1",
     "links": {"health": "/health", "openapi": "/openapi.json", ...}}

Only `/` itself: any other unknown path is still the JSON 404 of the fallback route.
"""

from __future__ import annotations

import html

from aiohttp import web

from kvs import __version__
from kvs.http.toolkit import json_response

LINKS = {
    "health": "/health", "openapi": "/openapi.json", "metrics": "/metrics", "kv": "/kv/",
    "cluster": "/cluster/status", "members": "/cluster/members", "services": "/services",
    "ui": "/ui/",
}


def routes(node_id: str) -> list[web.RouteDef]:
    body = {"name": "kvs", "version": __version__, "node": node_id, "links": LINKS}
    page = _page(node_id)

    async def index(request: web.Request) -> web.Response:
        if prefers_html(request.headers.get("Accept", "")):
            return web.Response(text=page, content_type="text/html")
        return json_response(body)

    return [web.get("/", index)]


def prefers_html(accept: str) -> bool:
    """Whether the Accept header ranks text/html strictly above application/json.

    A tie (`*/*`, curl's default, or no header) is JSON: the API speaks JSON, and a
    browser always names text/html explicitly.
    """
    ranges = [_media_range(part) for part in accept.split(",") if part.strip()]
    return _quality(ranges, "text", "html") > _quality(ranges, "application", "json")


def _media_range(part: str) -> tuple[str, float]:
    media, *params = (p.strip() for p in part.split(";"))
    q = 1.0
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                q = float(value)
            except ValueError:
                q = 0.0  # a malformed weight counts for nothing rather than failing the page
    return media.lower(), q


def _quality(ranges: list[tuple[str, float]], kind: str, subtype: str) -> float:
    """The q of the most specific range matching kind/subtype (RFC 9110 section 12.5.1)."""
    for candidate in (f"{kind}/{subtype}", f"{kind}/*", "*/*"):
        matches = [q for media, q in ranges if media == candidate]
        if matches:
            return max(matches)
    return 0.0


def _page(node_id: str) -> str:
    items = "\n".join(f'<li><a href="{path}">{name}</a> <code>{path}</code></li>'
                      for name, path in LINKS.items())
    return (f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>kvs</title></head>\n"
            f"<body><h1>kvs {__version__}</h1><p>node <code>{html.escape(node_id)}</code></p>\n"
            f"<ul>\n{items}\n</ul></body></html>\n")
