"""The HTTP front: KV routes dispatched without aiohttp's router, and answered as before.

`subtrees` decides which routes the front may dispatch itself; the node tests below send
the requests whose routing is subtle (an Expect header, an encoded prefix, HEAD, a method
the route lacks) and check they are answered as the router answers them.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from kvs.http.server import SUBTREES, subtrees
from kvs.node import Node
from tests.conftest import Api
from tests.test_http_limits import raw_request


async def _handler(request: web.Request) -> web.Response:
    return web.Response()


async def _other(request: web.Request) -> web.Response:
    return web.Response()


def test_subtrees_are_catch_all_routes_with_no_other_route_under_their_prefix() -> None:
    table = subtrees([
        web.get(r"/kv/{key:[\s\S]*}", _handler),
        web.put(r"/kv/{key:[\s\S]*}", _other),
        web.get(r"/v1/kv/{key:[\s\S]*}", _handler),
        web.get(r"/svc/{name:[\s\S]*}", _handler),
        web.get("/svc/special", _other),     # more specific: the router would prefer it
        web.get("/svc/{name}", _handler),    # a segment, not a subtree
        web.get(r"/doc/{page:[\s\S]*}", _handler),
        web.get(r"/doc{rest:.*}", _other),   # indexed under /doc too: it may come first
        web.get("/health", _handler),
    ])
    assert table == {"GET": (("/kv/", _handler), ("/v1/kv/", _handler)),
                     "PUT": (("/kv/", _other),)}


def test_a_node_dispatches_its_kv_routes_itself(node: Node) -> None:
    assert node.app is not None
    table = node.app[SUBTREES]
    assert {(method, prefix) for method, entries in table.items() for prefix, _ in entries} >= {
        ("GET", "/kv/"), ("PUT", "/kv/"), ("DELETE", "/kv/"),
        ("GET", "/v1/kv/"), ("PUT", "/v1/kv/"), ("DELETE", "/v1/kv/")}


async def test_expect_continue_still_gets_its_interim_answer(node: Node) -> None:
    body = b'{"value": 1}'
    reader, writer = await raw_request(node, b"PUT /kv/e HTTP/1.1\r\nHost: x\r\n"
                                             b"Expect: 100-continue\r\nContent-Length: "
                                             + str(len(body)).encode() + b"\r\n\r\n")
    try:
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert interim.startswith(b"HTTP/1.1 100 Continue")
        writer.write(body)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200 ")
        assert b"X-KVS-Index: " in head
    finally:
        writer.close()


async def test_paths_and_methods_the_front_leaves_to_the_router(api: Api) -> None:
    assert (await api.put("k", {"value": "v"})).status == 200
    encoded = await api.request("GET", "/k%76/k")  # /kv/k once decoded: the same route
    assert encoded.status == 200 and encoded.body["value"] == "v"
    head = await api.request("HEAD", "/kv/k")
    assert head.status == 200 and "X-KVS-Index" in head.headers
    post = await api.request("POST", "/kv/k", json={"value": 1})
    assert post.status == 405 and post.body["error"] == "method_not_allowed"
    assert {m.strip() for m in post.headers["Allow"].split(",")} >= {"GET", "PUT", "DELETE"}
