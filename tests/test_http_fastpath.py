"""The protocol-level path for plain KV requests (kvs/http/fastpath.py).

The whole HTTP suite runs through it; these tests cover what only it can get wrong: which
heads it serves and which it hands to aiohttp, a hand-off in the middle of a connection
(pipelined requests of both kinds answered in order), heads and bodies split across reads,
its own timeouts, back-pressure, and a node stopping with connections open.

A served answer is told from aiohttp's by the Server header: aiohttp sends one, this path
does not.
"""

from __future__ import annotations

import asyncio
import gzip

import orjson
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from kvs.engine import Op
from kvs.http.fastpath import MAX_HEAD, Routes, may_be_served, parse_head
from kvs.node import Node
from tests.cluster import start_cluster
from tests.conftest import Api, NodeFactory, eventually
from tests.test_http_limits import closed_by_server, raw_request


async def _route(request: web.Request) -> web.Response:
    return web.Response()


METHODS = Routes({b"GET": _route, b"PUT": _route, b"DELETE": _route},
                 {(b"POST", b"/internal/push"): _route})
LIMIT = 1 << 20


def head(*lines: bytes) -> bytes:
    return b"\r\n".join(lines)


# -- which heads are served here (pure) -----------------------------------------------------

def test_a_plain_kv_head_is_parsed() -> None:
    parsed = parse_head(head(b"PUT /kv/a%2Fb HTTP/1.1", b"Host: x", b"Content-Length:  12 ",
                             b"X-KVS-Token: t", b"Connection: Close"), METHODS, LIMIT)
    assert parsed is not None
    assert (parsed.method, parsed.path, parsed.length, parsed.close) == ("PUT", "/kv/a%2Fb", 12, True)
    assert parsed.headers["x-kvs-token"] == "t"
    assert parsed.headers["Content-Length"] == "12"


@pytest.mark.parametrize("raw", [
    head(b"GET /kv/a HTTP/1.0"),                                  # another version
    head(b"HEAD /kv/a HTTP/1.1"),                                 # another method
    head(b"POST /kv/a HTTP/1.1", b"Content-Length: 1"),
    head(b"GET /internal/push HTTP/1.1"),                         # a peers' route: POST only
    head(b"POST /internal/push HTTP/1.1"),                        # ... with a length
    head(b"POST /internal/push/x HTTP/1.1", b"Content-Length: 1"),  # exact paths only
    head(b"POST /internal/pus HTTP/1.1", b"Content-Length: 1"),
    head(b"get /kv/a HTTP/1.1"),
    head(b"GET /kv/a?raw=true HTTP/1.1"),                         # a query
    head(b"GET /kv/a#x HTTP/1.1"),
    head(b"GET /kv/a/../b HTTP/1.1"),                             # dot and empty segments
    head(b"GET /kv/./b HTTP/1.1"),
    head(b"GET /kv//b HTTP/1.1"),
    head(b"GET /txn HTTP/1.1"),                                   # another route
    head(b"GET /kvx/a HTTP/1.1"),
    head(b"GET http://x/kv/a HTTP/1.1"),                          # absolute form
    head(b"GET /kv/\xc3\xa9 HTTP/1.1"),                           # not ASCII
    head(b"GET /kv/a\x00 HTTP/1.1"),
    head(b"GET  /kv/a HTTP/1.1"),                                 # two spaces
    head(b"GET /kv/a HTTP/1.1", b"Host : x"),                     # space before the colon
    head(b"GET /kv/a HTTP/1.1", b"Host x"),
    head(b"GET /kv/a HTTP/1.1", b" folded"),                      # obs-fold
    head(b"GET /kv/a HTTP/1.1", b"X: a\nContent-Length: 5"),      # bare LF
    head(b"GET /kv/a HTTP/1.1", b"X: a\rb"),                      # bare CR
    head(b"GET /kv/a HTTP/1.1", b"X: \xff"),                      # obs-text
    head(b"GET /kv/a HTTP/1.1", b"X: \x01"),
    head(b"PUT /kv/a HTTP/1.1"),                                  # a PUT without a length
    head(b"PUT /kv/a HTTP/1.1", b"Content-Length: 1", b"Content-Length: 1"),
    head(b"PUT /kv/a HTTP/1.1", b"Content-Length: +1"),
    head(b"PUT /kv/a HTTP/1.1", b"Content-Length: 1, 1"),
    head(b"PUT /kv/a HTTP/1.1", b"Content-Length: " + str(LIMIT + 1).encode()),
    head(b"GET /kv/a HTTP/1.1", b"Content-Length: 1"),            # a body on GET
    head(b"PUT /kv/a HTTP/1.1", b"Transfer-Encoding: chunked"),
    head(b"PUT /kv/a HTTP/1.1", b"Content-Length: 2", b"Content-Encoding: gzip"),
    head(b"PUT /kv/a HTTP/1.1", b"Content-Length: 2", b"Expect: 100-continue"),
    head(b"GET /kv/a HTTP/1.1", b"Connection: Upgrade", b"Upgrade: websocket"),
    head(b"GET /kv/a HTTP/1.1", b"Connection: keep-alive, close"),
    head(b"GET /kv/a HTTP/1.1", b"Host: x", b"Host: y"),
    # aiohttp answers 400 to these: a repeated singleton header, too many headers, the old
    # WebSocket handshake; and closes after a Proxy-Connection: close (llhttp reads it as
    # Connection).
    head(b"GET /kv/a HTTP/1.1", b"Content-Type: a", b"Content-Type: b"),
    head(b"GET /kv/a HTTP/1.1", b"User-Agent: a", b"user-agent: b"),
    head(b"GET /kv/a HTTP/1.1", b"X-KVS-Token: a", b"X-KVS-Token: b"),
    head(b"GET /kv/a HTTP/1.1", *[b"X-%d: 1" % i for i in range(200)]),
    head(b"GET /kv/a HTTP/1.1", b"Sec-WebSocket-Key1: 1"),
    head(b"GET /kv/a HTTP/1.1", b"Proxy-Connection: close"),
])
def test_anything_outside_the_subset_is_left_to_aiohttp(raw: bytes) -> None:
    lines = raw.split(b"\r\n")
    if b"Host: x" not in lines:  # every head here has its Host, so that is not the reason
        lines.insert(1, b"Host: x")
    assert parse_head(b"\r\n".join(lines), METHODS, LIMIT) is None


def test_a_peers_post_is_parsed() -> None:
    parsed = parse_head(head(b"POST /internal/push HTTP/1.1", b"Host: x", b"Content-Length: 2",
                             b"X-KVS-Signature: abc"), METHODS, LIMIT)
    assert parsed is not None and (parsed.method, parsed.length) == ("POST", 2)
    assert may_be_served(b"POST /internal/pu", METHODS)
    assert not may_be_served(b"POST /internal/x", METHODS)


@pytest.mark.parametrize("start", [
    bytes.fromhex("16030100a5010000a10303"),                    # a TLS handshake
    b"HELLO ", b"FOO /kv/a HTTP/1.1\r\n", b"get ", b"GETT",      # other methods
    b"GET /kv/a HTTP/1.0", b"GET /kv/a HTTP/1.1 ", b"GET /v1/kv/a", b"GET  ",
    b"GET /kv/a\x00", b"GET /kv/\xc3",                           # not printable ASCII
    b"GET /kv/a HTTP/1.1\rHost", b"GET /kv/a HTTP/1.1\nHost",    # bare CR, bare LF
    b"GET /kv/a HTTP/1.1\r\nHost : x\r\n",                       # space before the colon
    b"GET /kv/a HTTP/1.1\r\nHost : ",
    b"GET /kv/a HTTP/1.1\r\nX: \x01",                             # a control character
    b"GET /kv/a HTTP/1.1\r\nHost: x\r\n folded",                 # obs-fold
    b"GET /kv/a HTTP/1.1\r\nHost: x\r\nHost: y\r\n",             # a name twice
])
def test_a_start_that_cannot_be_served_goes_to_aiohttp_at_once(start: bytes) -> None:
    """aiohttp answers these 400 (or closes) as soon as it reads them: waiting here for a
    blank line would hold the client until the header timeout."""
    assert not may_be_served(start, METHODS)


def test_a_head_without_a_host_is_left_to_aiohttp() -> None:
    assert parse_head(head(b"GET /kv/a HTTP/1.1", b"Accept: */*"), METHODS, LIMIT) is None


_NAME = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12).filter(
    lambda name: name not in ("host", "content-length", "connection", "transfer-encoding",
                              "content-encoding", "expect", "upgrade"))


@given(st.lists(st.tuples(_NAME, st.text(alphabet="abc xyz;=/019", max_size=20)), max_size=8,
                unique_by=lambda field: field[0]),
       st.binary(max_size=3))
def test_a_head_is_served_only_if_every_header_line_is_clean(
        fields: list[tuple[str, str]], noise: bytes) -> None:
    """Plain headers keep a head on this path, with their values trimmed; one byte that
    is not a printable character, space or tab in any line sends it to aiohttp."""
    lines = [b"GET /kv/k HTTP/1.1", b"Host: h"] + [f"{n}: {v}".encode() for n, v in fields]
    parsed = parse_head(head(*lines), METHODS, LIMIT)
    assert parsed is not None
    assert [("Host", "h")] + [(n, v.strip(" ")) for n, v in fields] == list(parsed.headers.items())
    dirty = [b for b in noise if (b < 0x20 and b != 0x09) or b >= 0x7F]
    if dirty and fields:
        lines[-1] += bytes(dirty)
        assert parse_head(head(*lines), METHODS, LIMIT) is None


@given(st.sampled_from([b"GET", b"PUT", b"DELETE"]), st.text(alphabet="abc%2F~-_;", max_size=12),
       st.lists(st.tuples(_NAME, st.text(alphabet="abc xyz;=/019", max_size=20)), max_size=6,
                unique_by=lambda field: field[0]))
def test_every_start_of_a_served_head_may_be_served(
        method: bytes, key: str, fields: list[tuple[str, str]]) -> None:
    """A head arriving a byte at a time is never handed to aiohttp before its end."""
    lines = [method + b" /kv/k" + key.encode() + b" HTTP/1.1", b"Host: h",
             *(f"{n}: {v}".encode() for n, v in fields)]
    if method == b"PUT":
        lines.append(b"Content-Length: 2")
    raw = head(*lines)
    assert parse_head(raw, METHODS, LIMIT) is not None
    whole = raw + b"\r\n\r\n"
    assert all(may_be_served(whole[:end], METHODS) for end in range(len(whole) - 3))


# -- on a node ----------------------------------------------------------------------------------

async def answers(reader: asyncio.StreamReader, count: int) -> list[tuple[bytes, bytes]]:
    """The next `count` answers on a connection: (head, body), read by Content-Length."""
    found = []
    for _ in range(count):
        raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        length = next(int(line.split(b":")[1]) for line in raw.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        found.append((raw, await asyncio.wait_for(reader.readexactly(length), 10)))
    return found


def served_here(answer_head: bytes) -> bool:
    return b"\r\nServer:" not in answer_head


def put(key: str, value: object, *extra: bytes) -> bytes:
    body = orjson.dumps({"value": value})
    return head(f"PUT /kv/{key} HTTP/1.1".encode(), b"Host: x", *extra,
                b"Content-Length: " + str(len(body)).encode(), b"", body)


async def test_plain_requests_are_served_here_with_the_usual_answer(node: Node) -> None:
    reader, writer = await raw_request(node, put("p", 1) + head(
        b"GET /kv/p HTTP/1.1", b"Host: x", b"", b"") + head(
        b"DELETE /kv/p HTTP/1.1", b"Host: x", b"", b"") + head(
        b"GET /kv/p HTTP/1.1", b"Host: x", b"", b""))
    try:
        (put_head, put_body), (get_head, get_body), (del_head, _), (gone_head, gone) = \
            await answers(reader, 4)
        assert all(served_here(h) for h in (put_head, get_head, del_head, gone_head))
        assert put_head.startswith(b"HTTP/1.1 200 OK\r\n") and b"\r\nX-KVS-Index: " in put_head
        assert b"\r\nDate: " in put_head and b"Content-Type: application/json" in put_head
        assert orjson.loads(get_body)["value"] == 1
        assert orjson.loads(get_body)["version"] == orjson.loads(put_body)["version"]
        assert del_head.startswith(b"HTTP/1.1 200 ")
        assert gone_head.startswith(b"HTTP/1.1 404 Not Found\r\n")
        assert orjson.loads(gone)["error"] == "not_found"
    finally:
        writer.close()


async def test_a_txn_is_served_here_with_the_usual_answer(node: Node) -> None:
    """POST /txn, a plain one and a failing one: the same answers as through aiohttp."""
    def txn(*ops: dict[str, object]) -> bytes:
        body = orjson.dumps({"ops": ops})
        return head(b"POST /txn HTTP/1.1", b"Host: x",
                    b"Content-Length: " + str(len(body)).encode(), b"", body)
    reader, writer = await raw_request(node, txn(
        {"op": "set", "key": "t/a", "value": 1}, {"op": "set", "key": "t/b", "value": 2},
    ) + txn({"op": "check", "key": "t/a", "if_value": 9}, {"op": "delete", "key": "t/b"}))
    try:
        (done_head, done), (failed_head, failed) = await answers(reader, 2)
        assert served_here(done_head) and served_here(failed_head)
        assert done_head.startswith(b"HTTP/1.1 200 ") and b"\r\nX-KVS-Index: " in done_head
        assert [r["key"] for r in orjson.loads(done)["results"]] == ["t/a", "t/b"]
        assert failed_head.startswith(b"HTTP/1.1 409 ")
        assert orjson.loads(failed)["failed"][0]["index"] == 0
    finally:
        writer.close()
    assert node.engine.get("t/b") is not None


async def test_pipelined_requests_of_both_kinds_are_answered_in_order(node: Node) -> None:
    """Served, served, then one aiohttp must serve (a query): it and every later request
    of the connection, plain or not, are aiohttp's, answered in the order sent."""
    sent = (put("q", 1) + head(b"GET /kv/q HTTP/1.1", b"Host: x", b"", b"")
            + head(b"GET /kv/q?raw=true HTTP/1.1", b"Host: x", b"", b"")
            + put("q", 2) + head(b"GET /kv/q HTTP/1.1", b"Host: x", b"", b""))
    reader, writer = await raw_request(node, sent)
    try:
        got = await answers(reader, 5)
        assert [served_here(h) for h, _ in got] == [True, True, False, False, False]
        assert got[2][1] == b"1"
        assert orjson.loads(got[4][1])["value"] == 2
    finally:
        writer.close()


async def test_a_request_split_at_every_byte_is_served(node: Node) -> None:
    data = put("s", "split", b"X-Extra: yes") + head(b"GET /kv/s HTTP/1.1", b"Host: x", b"", b"")
    reader, writer = await raw_request(node, b"")
    try:
        for i in range(len(data)):
            writer.write(data[i:i + 1])
            await writer.drain()
        (put_head, _), (get_head, get_body) = await answers(reader, 2)
        assert served_here(put_head) and served_here(get_head)
        assert orjson.loads(get_body)["value"] == "split"
    finally:
        writer.close()


_GZIPPED = gzip.compress(b'{"value": 3}')


@pytest.mark.parametrize(("request_bytes", "status"), [
    # A chunked body, a gzip body, bare LF line ends: aiohttp's, with aiohttp's answers.
    (b"PUT /kv/h HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nc\r\n"
     b'{"value": 3}\r\n0\r\n\r\n', b"200"),
    (b"PUT /kv/h HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\nContent-Length: "
     + str(len(_GZIPPED)).encode() + b"\r\n\r\n" + _GZIPPED, b"200"),
    (b"PUT /kv/h HTTP/1.1\nHost: x\nContent-Length: 12\n\n" + b'{"value": 3}', b"400"),
])
async def test_unusual_requests_are_answered_by_aiohttp(node: Node, api: Api,
                                                        request_bytes: bytes, status: bytes) -> None:
    reader, writer = await raw_request(node, request_bytes)
    try:
        [(answer, _)] = await answers(reader, 1)
        assert not served_here(answer)
        assert answer.split(b" ")[1] == status
        stored = (await api.get("h")).body
        assert stored.get("value") == (3 if status == b"200" else None)
    finally:
        writer.close()


async def test_a_long_head_goes_to_aiohttp(node: Node) -> None:
    reader, writer = await raw_request(node, head(b"GET /kv/l HTTP/1.1", b"Host: x",
                                                  b"X-Long: " + b"a" * MAX_HEAD, b"", b""))
    try:
        [(answer, _)] = await answers(reader, 1)
        assert not served_here(answer)
    finally:
        writer.close()


async def test_connection_close_is_honoured(node: Node) -> None:
    reader, _ = await raw_request(node, head(b"GET /kv/c HTTP/1.1", b"Host: x", b"Connection: close",
                                             b"", b""))
    answer = await closed_by_server(reader, 10)
    assert answer.startswith(b"HTTP/1.1 404 ") and b"\r\nConnection: close\r\n" in answer
    assert served_here(answer)


async def test_an_idle_connection_is_closed_at_the_keep_alive_timeout(
        make_node: NodeFactory) -> None:
    node = await make_node(http_keepalive_seconds=1)
    reader, _ = await raw_request(node, head(b"GET /kv/k HTTP/1.1", b"Host: x", b"", b""))
    started = asyncio.get_running_loop().time()
    answer = await closed_by_server(reader, 10)
    assert answer.startswith(b"HTTP/1.1 404 ") and served_here(answer)
    assert asyncio.get_running_loop().time() - started >= 0.9


async def test_a_head_must_arrive_within_the_header_timeout_after_a_request(
        make_node: NodeFactory) -> None:
    """The first request is answered; the next head, begun but never finished, is cut
    off at the header timeout though the keep-alive timeout is far away."""
    node = await make_node(http_header_timeout_seconds=1, http_keepalive_seconds=60)
    reader, writer = await raw_request(node, head(b"GET /kv/k HTTP/1.1", b"Host: x", b"", b""))
    try:
        await answers(reader, 1)
        writer.write(b"GET /kv/k HTTP/1.1\r\nHo")
        assert await closed_by_server(reader, 10) == b""
    finally:
        writer.close()


async def test_a_client_that_does_not_read_its_answers_is_not_buffered_forever(
        node: Node) -> None:
    """Pipelined GETs of a large value, never read: the node stops reading the connection
    once its answers back up, instead of holding every answer in memory; it goes on once
    the client reads."""
    value = "v" * 100_000
    reader, writer = await raw_request(node, put("big", value))
    try:
        await answers(reader, 1)
        assert node.site is not None and node.site.fast is not None
        [connection] = node.site.fast.live
        count = 300  # 30 MB of answers, were they all buffered
        writer.write(head(b"GET /kv/big HTTP/1.1", b"Host: x", b"", b"") * count)
        await eventually(lambda: not connection.reading)
        for _ in range(100):
            await asyncio.sleep(0)
        assert connection.backlog < 1_000_000
        got = await answers(reader, count)
        assert all(orjson.loads(body)["value"] == value for _, body in got)
    finally:
        writer.close()


async def test_a_stopping_node_closes_idle_connections_and_finishes_answers(
        make_node: NodeFactory) -> None:
    node = await make_node()
    idle_reader, idle_writer = await raw_request(node, head(b"GET /kv/k HTTP/1.1", b"Host: x", b"", b""))
    await answers(idle_reader, 1)
    await asyncio.wait_for(node.stop(), 10)
    assert await closed_by_server(idle_reader, 5) == b""
    idle_writer.close()


async def test_peers_calls_are_served_here(make_node: NodeFactory) -> None:
    """Node-to-node calls (signed with the cluster secret) stay on this path: the peers'
    pooled connections are never handed to aiohttp, and replication works through them."""
    nodes = await start_cluster(make_node, 2, cluster_secret="s" * 32)
    a, b = nodes
    assert (await a.engine.put(Op("set", "k", "v"))).value == "v"
    await eventually(lambda: b.storage is not None and b.storage.read("k") is not None,
                     what="the push to b")
    for node in nodes:
        assert node.site is not None and node.site.fast is not None
        assert node.site.fast.live, "a peer's connection was handed to aiohttp"
