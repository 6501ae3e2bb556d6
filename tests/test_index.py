"""GET / answers an index of the API (JSON, or HTML for a browser); other unknown paths 404."""

from __future__ import annotations

import re

import aiohttp
import pytest

from kvs import __version__
from kvs.http.index import prefers_html
from kvs.node import Node
from tests.conftest import Api

LINKS = {"health": "/health", "openapi": "/openapi.json", "metrics": "/metrics", "kv": "/kv/",
         "cluster": "/cluster/status", "members": "/cluster/members", "services": "/services",
         "ui": "/ui/"}
BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,*/*;q=0.8"


async def fetch(http: aiohttp.ClientSession, url: str, accept: str | None) -> tuple[int, str, bytes]:
    headers = {"Accept": accept} if accept is not None else {}
    async with http.get(url, headers=headers) as resp:
        return resp.status, resp.content_type, await resp.read()


async def test_root_is_a_json_index(node: Node, api: Api) -> None:
    reply = await api.request("GET", "/")
    assert reply.status == 200 and reply.headers["Content-Type"].startswith("application/json")
    assert reply.body == {"name": "kvs", "version": __version__, "node": node.engine.node_id,
                          "links": LINKS}
    for name, path in LINKS.items():  # every link leads somewhere real (kv: the key space)
        target = await api.request("GET", path, params={"keys": "true"} if name == "kv" else None)
        assert target.status == 200, (name, path, target.status)


@pytest.mark.parametrize("accept", [None, "*/*", "application/json", "application/json, text/html",
                                    "text/html;q=0.5, application/json"])
async def test_scripts_get_json(node: Node, http: aiohttp.ClientSession, accept: str | None) -> None:
    status, content_type, _ = await fetch(http, node.url + "/", accept)
    assert (status, content_type) == (200, "application/json")


async def test_a_browser_gets_the_same_links_as_html(node: Node, http: aiohttp.ClientSession) -> None:
    status, content_type, raw = await fetch(http, node.url + "/", BROWSER)
    assert (status, content_type) == (200, "text/html")
    page = raw.decode()
    assert re.findall(r'href="([^"]+)"', page) == list(LINKS.values())
    assert node.engine.node_id in page and __version__ in page


async def test_other_unknown_paths_still_404_json(api: Api) -> None:
    for path in ["/nope", "/index.html", "/ui/nope", "/kv"]:
        reply = await api.request("GET", path)
        assert reply.status == 404, path
        assert reply.body["error"] == "not_found"
    wrong_method = await api.request("POST", "/", json={})
    assert wrong_method.status == 405 and "GET" in wrong_method.headers["Allow"]


@pytest.mark.parametrize(("accept", "html"), [
    ("text/html", True), (BROWSER, True), ("text/*", True), ("text/html;q=bad, */*", False),
    ("", False), ("*/*", False), ("application/*, text/html", False),
    ("text/html;q=0.9, application/json;q=0.8", True), ("image/png", False),
])
def test_prefers_html(accept: str, html: bool) -> None:
    assert prefers_html(accept) is html
