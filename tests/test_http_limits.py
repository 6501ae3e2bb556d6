"""HTTP server bounds on an in-process node: body encodings, timeouts, the connection cap,
clients that leave mid-request. tests/test_http_limits_procs.py covers what needs a real
process (a descriptor limit, RSS, SIGTERM)."""

from __future__ import annotations

import asyncio
import gzip
import logging
import re
import zlib
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest

from kvs.node import Node
from tests.conftest import Api, NodeFactory, eventually

PUT_BODY = orjson.dumps({"value": "v"})
# (method, path, a body that would be accepted unencoded)
ENDPOINTS = [
    ("PUT", "/kv/enc", PUT_BODY),
    ("POST", "/txn", orjson.dumps({"ops": [{"op": "set", "key": "enc", "value": 1}]})),
    ("POST", "/services", orjson.dumps({"name": "enc", "address": "10.0.0.1", "port": 80})),
    ("POST", "/internal/push", b"[]"),
]
ENDPOINT_IDS = ["kv", "txn", "services", "push"]
BAD_BODIES = {
    "gzip-corrupt": ("gzip", b"this is not gzip"),
    "gzip-truncated": ("gzip", gzip.compress(PUT_BODY)[:-6]),
    "gzip-trailing": ("gzip", gzip.compress(PUT_BODY) + b"junk"),
    "deflate-corrupt": ("deflate", b"\x00\x01not deflate"),
    "unknown-br": ("br", PUT_BODY),
    "unknown-bogus": ("bogus", PUT_BODY),
}


async def raw_request(node: Node, data: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
    writer.write(data)
    await writer.drain()
    return reader, writer


async def closed_by_server(reader: asyncio.StreamReader, within: float) -> bytes:
    """Everything the server sends until it closes the connection (fails after `within`)."""
    return await asyncio.wait_for(reader.read(), within)


@pytest.fixture
def kvs_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="kvs")
    return caplog


@pytest.fixture
async def sockets() -> AsyncIterator[list[asyncio.StreamWriter]]:
    """Raw client connections a test opens; all closed at teardown."""
    writers: list[asyncio.StreamWriter] = []
    yield writers
    for writer in writers:
        writer.close()


# -- Content-Encoding -----------------------------------------------------------------------

@pytest.mark.parametrize("case", list(BAD_BODIES))
@pytest.mark.parametrize(("method", "path", "_body"), ENDPOINTS, ids=ENDPOINT_IDS)
async def test_a_bad_content_encoding_is_a_400_and_changes_nothing(
        http: aiohttp.ClientSession, node: Node, kvs_log: pytest.LogCaptureFixture,
        method: str, path: str, _body: bytes, case: str) -> None:
    coding, data = BAD_BODIES[case]
    index = node.engine.index
    async with http.request(method, node.url + path, data=data,
                            headers={"Content-Encoding": coding}) as resp:
        body = await resp.json()
    assert resp.status == 400, body
    assert body["error"] == "bad_request"
    assert coding in body["message"]
    assert node.engine.index == index  # nothing was written
    assert "internal_error" not in kvs_log.text
    assert "Traceback" not in kvs_log.text


@pytest.mark.parametrize("compress", [gzip.compress, zlib.compress], ids=["gzip", "deflate"])
async def test_an_encoded_body_is_decoded(api: Api, compress: object) -> None:
    coding = "gzip" if compress is gzip.compress else "deflate"
    async with api.session.put(api.url + "/kv/enc", data=compress(PUT_BODY),  # type: ignore[operator]
                               headers={"Content-Encoding": coding}) as resp:
        assert resp.status == 200, await resp.text()
    assert (await api.get("enc")).body["value"] == "v"


async def test_a_decompression_bomb_stops_at_the_body_limit(api: Api, node: Node) -> None:
    bomb = gzip.compress(b'{"value": "' + b"0" * (8 << 20) + b'"}')  # 8 MiB of zeros, ~8 KiB sent
    async with api.session.put(api.url + "/kv/bomb", data=bomb,
                               headers={"Content-Encoding": "gzip"}) as resp:
        body = await resp.json()
    assert resp.status == 413, body
    assert (await api.get("bomb")).status == 404


# -- clients that go away -------------------------------------------------------------------

@pytest.mark.parametrize("head", [
    b"GET /kv/a HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    b"GET /kv/a HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
    b"GET /kv/a HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n",
    b"GET /kv/a HTTP/1.1\r\nHost: x\r\nX: " + b"y" * 20_000 + b"\r\n\r\n",
    b"PUT /kv/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
], ids=["two-lengths", "no-colon", "nul", "long-header", "bad-chunk"])
async def test_a_malformed_request_is_a_400_logged_in_one_quiet_line(
        api: Api, node: Node, caplog: pytest.LogCaptureFixture, head: bytes) -> None:
    """aiohttp logs a malformed request as an error with a traceback; kvs answers 400 and
    logs one debug line, so a bad client can neither fill the log nor look like a bug."""
    caplog.set_level(logging.DEBUG)
    reader, writer = await raw_request(node, head)
    answer = await closed_by_server(reader, within=10)
    writer.close()
    assert re.match(rb"HTTP/1\.[01] 400 ", answer), answer
    noisy = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert not noisy
    assert "event=bad_http_request status=400" in caplog.text
    assert (await api.get("a")).status == 404


@pytest.mark.parametrize("head", [
    b"PUT /kv/gone HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"value\": \"",
    b"PUT /kv/gone HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"val\r\n",
], ids=["content-length", "chunked"])
async def test_a_client_leaving_mid_body_is_not_an_internal_error(
        api: Api, node: Node, kvs_log: pytest.LogCaptureFixture, head: bytes) -> None:
    _, writer = await raw_request(node, head)
    writer.close()
    await eventually(lambda: "client_gone" in kvs_log.text or "internal_error" in kvs_log.text,
                     what="the node to notice the client left")
    assert "internal_error" not in kvs_log.text
    assert "Traceback" not in kvs_log.text
    assert (await api.get("gone")).status == 404
    metrics = await api.request("GET", "/metrics")
    assert 'kvs_http_requests_total{method="PUT",status="499"} 1.0' in metrics.body


async def test_a_blocking_query_ends_when_its_client_leaves(api: Api, node: Node) -> None:
    await api.put("w", {"value": 1})
    index = (await api.get("w")).index
    _, writer = await raw_request(node, f"GET /kv/w?index={index}&wait=5m HTTP/1.1\r\n"
                                        "Host: x\r\n\r\n".encode())
    await eventually(lambda: len(node.watchers) == 1, what="the query to block")
    writer.close()
    await eventually(lambda: len(node.watchers) == 0, what="the query to end with its client")


async def test_a_cancelled_settle_wait_keeps_the_write(make_node: NodeFactory) -> None:
    """The engine stages a write with no await inside its lock; cancelling the caller while
    it waits for the fsync drops only the wait: the write lands, no waiter is left behind."""
    from kvs.engine import Op

    node = await make_node(sync_writes=True)
    assert node.engine is not None and node.storage is not None
    commits = node.storage.commits
    staged = commits.issued
    write = asyncio.create_task(node.engine.put(Op("set", "c", "v", None, 0)))
    await asyncio.sleep(0)  # one step: the task stages its write and starts waiting
    assert commits.issued == staged + 1 and commits.settled_through <= staged
    write.cancel()
    with pytest.raises(asyncio.CancelledError):
        await write
    await node.engine.settle()
    assert node.engine.get("c").value == "v"
    assert commits.settled_through > staged and commits._waiters == []


# -- timeouts -------------------------------------------------------------------------------

async def test_a_body_that_never_ends_gets_408_and_its_connection_closed(
        make_node: NodeFactory) -> None:
    node = await make_node(http_body_timeout_seconds=1)
    reader, writer = await raw_request(node, b"PUT /kv/slow HTTP/1.1\r\nHost: x\r\n"
                                             b"Transfer-Encoding: chunked\r\n\r\n5\r\n{\"val\r\n")
    try:
        answer = await closed_by_server(reader, within=10)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b'"error":"request_timeout"' in answer
    assert b"Connection: close" in answer


async def trickle(writer: asyncio.StreamWriter) -> None:
    """A slowloris client: one more byte of a request head every 0.2 s, forever."""
    while True:
        writer.write(b"X")
        await asyncio.sleep(0.2)


@pytest.mark.parametrize("first", [b"", b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"],
                         ids=["new-connection", "after-a-keep-alive-request"])
async def test_a_request_head_sent_byte_by_byte_is_cut_off(
        make_node: NodeFactory, sockets: list[asyncio.StreamWriter], first: bytes) -> None:
    """The header timeout counts from the connection, or from the first byte after an idle
    keep-alive gap; it is much shorter than the keep-alive timeout here."""
    node = await make_node(http_header_timeout_seconds=1, http_keepalive_seconds=60)
    reader, writer = await raw_request(node, first)
    sockets.append(writer)
    if first:
        assert (await reader.readuntil(b"}")).startswith(b"HTTP/1.1 200")
    writer.write(b"GET /health HTTP/1.1\r\nX-Slow: ")
    dribbler = asyncio.create_task(trickle(writer))
    try:
        assert await closed_by_server(reader, within=10) == b""
    finally:
        dribbler.cancel()


async def test_a_keep_alive_connection_is_held_for_the_idle_timeout_then_closed(
        make_node: NodeFactory, sockets: list[asyncio.StreamWriter]) -> None:
    node = await make_node(http_keepalive_seconds=1, http_header_timeout_seconds=30)
    reader, writer = await raw_request(node, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    sockets.append(writer)
    answer = await closed_by_server(reader, within=10)
    assert answer.startswith(b"HTTP/1.1 200")


# -- caps -----------------------------------------------------------------------------------

async def test_connections_beyond_the_cap_get_503_and_the_log_says_so_once(
        make_node: NodeFactory, kvs_log: pytest.LogCaptureFixture,
        sockets: list[asyncio.StreamWriter], http: aiohttp.ClientSession) -> None:
    node = await make_node(max_connections=4)
    held = []
    for _ in range(4):
        reader, writer = await raw_request(node, b"")
        sockets.append(writer)
        held.append(writer)
    await eventually(lambda: node.connections.open == 4, what="4 connections held")
    for _ in range(3):
        reader, writer = await raw_request(node, b"")
        sockets.append(writer)
        answer = await closed_by_server(reader, within=5)
        assert answer.startswith(b"HTTP/1.1 503"), answer
        assert b"Retry-After: 1" in answer and b'"error":"too_many_connections"' in answer
    for writer in held:
        writer.close()
    await eventually(lambda: node.connections.open == 0, what="the held connections to close")
    async with http.get(node.url + "/metrics") as resp:
        text = await resp.text()
    assert "kvs_http_connections_refused_total 3.0" in text
    assert kvs_log.text.count("event=connection_limit_reached") == 1
    assert kvs_log.text.count("event=connection_limit_cleared") == 1


async def test_blocking_queries_beyond_the_cap_get_503_with_retry_after(
        make_node: NodeFactory, http: aiohttp.ClientSession) -> None:
    node = await make_node(max_blocking_queries=2)
    api = Api(http, node.url)
    index = (await api.put("w", {"value": 1})).index
    waiting = [asyncio.create_task(api.get("w", index=str(index), wait="30s")) for _ in range(2)]
    try:
        await eventually(lambda: len(node.watchers) == 2, what="2 blocked queries")
        async with http.get(node.url + "/kv/w", params={"index": str(index)}) as resp:
            body = await resp.json()
            assert resp.status == 503, body
            assert resp.headers["Retry-After"] == "1"
        assert body["error"] == "too_many_blocking_queries"
        assert (await api.get("w")).status == 200  # a plain read is not a blocking query
        await api.put("w", {"value": 2})
        assert [r.status for r in await asyncio.gather(*waiting)] == [200, 200]
    finally:
        for task in waiting:
            task.cancel()
