"""GET /ui/...: the web UI, static files shipped in the package (kvs/ui/), no build step.

Every file is read once, when the node builds its routes, into a table keyed by its
path under kvs/ui/; a request is a lookup in that table and never touches the disk,
so no path (`..`, percent-encoded dots, absolute paths, symlinks) can reach anything
else. Only the suffixes below are shipped; anything else is the usual JSON 404.

    GET /ui           301 -> /ui/
    GET /ui/          index.html
    GET /ui/js/app.js the module, ETag + Cache-Control: no-cache (If-None-Match -> 304)

The file names carry no content hash (there is no build step), so a browser must
revalidate each file: after an upgrade it gets the new UI at once, and an unchanged
file costs a 304.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable

import xxhash
from aiohttp import web

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
# The UI talks to its own node and reads /cluster/status and /health of the other members
# (other origins when they listen on other ports); nothing else is loaded from anywhere.
CSP = ("default-src 'self'; connect-src 'self' http: https:; img-src 'self' data:; "
       "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


def load_assets(root: Traversable | None = None) -> dict[str, Asset]:
    """Every shippable file under `root` (default: the package's kvs/ui), by relative path."""
    assets: dict[str, Asset] = {}
    pending = [("", root or resources.files("kvs") / "ui")]
    while pending:
        prefix, folder = pending.pop()
        for entry in folder.iterdir():
            path = prefix + entry.name
            if entry.is_dir():
                pending.append((path + "/", entry))
            elif (suffix := "." + entry.name.rpartition(".")[2]) in CONTENT_TYPES:
                body = entry.read_bytes()
                assets[path] = Asset(body, CONTENT_TYPES[suffix], f'"{xxhash.xxh3_64_hexdigest(body)}"')
    return assets


def routes(assets: dict[str, Asset] | None = None) -> list[web.RouteDef]:
    table = load_assets() if assets is None else assets

    async def redirect(request: web.Request) -> web.Response:
        return web.Response(status=301, headers={"Location": "/ui/"})

    async def serve(request: web.Request) -> web.Response:
        asset = table.get(request.match_info["path"] or "index.html")
        if asset is None:
            raise web.HTTPNotFound()
        headers = {"ETag": asset.etag, "Cache-Control": "no-cache",
                   "X-Content-Type-Options": "nosniff"}
        if asset.content_type.startswith("text/html"):
            headers["Content-Security-Policy"] = CSP
            headers["Referrer-Policy"] = "no-referrer"
        if asset.etag in request.headers.get("If-None-Match", ""):
            return web.Response(status=304, headers=headers)
        headers["Content-Type"] = asset.content_type
        return web.Response(body=asset.body, headers=headers)

    return [web.get("/ui", redirect), web.get("/ui/{path:.*}", serve)]
