"""The fast path (kvs/http/fastpath.py) against aiohttp alone, byte for byte.

The same raw byte streams go to a node's port (fast path first, aiohttp after a hand-off)
and to a second listener of another node that aiohttp alone serves (`plain_listener`);
the answers must match but for what differs between any two nodes (Server, Date, versions,
timestamps, indexes). The streams are attacks on a second parser in front of aiohttp:
smuggling shapes (CL.TE, TE.CL, duplicate or odd Content-Length, obs-fold, bare CR or LF,
NUL bytes, a space before the colon), limits (long lines, many headers), keys with
percent-encoding, unicode or dot segments, HTTP/1.0 and Connection headers, pipelining
and hand-offs in the middle of a connection, and streams cut at random places.

One kind of stream is left out on purpose: a request the fast path serves followed, in
the same read, by bytes aiohttp refuses (a malformed request, or anything after a
Connection: close request). aiohttp's parser then drops every request of that read and
answers 400 alone; when the same bytes arrive in two reads it answers the first request.
The fast path answers as aiohttp does in the second case, whatever the reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from kvs.http import connections
from kvs.http.fastpath import MAX_BUFFERED
from kvs.node import Node
from tests.conftest import NodeFactory, eventually
from tests.test_acl_http import bootstrapped, rule
from tests.test_http_fastpath import answers
from tests.test_http_limits import raw_request
from tests.test_tls import Pki

# Short timeouts: every conversation ends with the node closing the connection.
SETTINGS = {"http_keepalive_seconds": 1, "http_header_timeout_seconds": 1,
            "http_body_timeout_seconds": 1}


@dataclass(frozen=True)
class Side:
    """Where a stream goes: a port, the values of the placeholders its streams carry (such
    as a token's secret, which differs between nodes), a TLS client context for a TLS port."""

    port: int
    fill: Mapping[bytes, bytes] = field(default_factory=dict)
    tls: ssl.SSLContext | None = None


Sides = tuple[Side, Side]  # (a node's port, with the fast path; another's, aiohttp alone)


@contextlib.asynccontextmanager
async def plain_listener(node: Node) -> AsyncIterator[int]:
    """A second port of `node` that aiohttp alone serves (no fast path): its port."""
    assert node.site is not None
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    site = await connections.serve(node.site._runner, sock, node.connections,
                                   header_timeout=node.config.http_header_timeout_seconds,
                                   keepalive_timeout=node.config.http_keepalive_seconds,
                                   ssl_context=node.tls.server if node.tls else None)
    try:
        yield sock.getsockname()[1]
    finally:
        await site.stop()


@contextlib.asynccontextmanager
async def two_nodes(make_node: NodeFactory, **settings: Any) -> AsyncIterator[tuple[Node, Node, int]]:
    """Two nodes made alike, so a stream finds the same state on both: the first, the
    second, and the port of the second that aiohttp alone serves."""
    fast = await make_node(**SETTINGS, **settings)
    other = await make_node(**SETTINGS, **settings)
    async with plain_listener(other) as port:
        yield fast, other, port


@pytest.fixture
async def ports(make_node: NodeFactory) -> AsyncIterator[Sides]:
    async with two_nodes(make_node) as (fast, _, port):
        yield Side(fast.port), Side(port)


# What differs between two nodes answering the same requests.
_VARYING = re.compile(rb'"(version|timestamp|logical|origin|origin_joined_at|modify_index|'
                      rb'create_index|parent)":("[^"]*"|\d+)')


def normalised(raw: bytes) -> list[tuple[bytes, list[tuple[bytes, bytes]], bytes]]:
    """The answers in `raw`, read by Content-Length: (status line, sorted headers, body),
    without what differs between nodes. Bytes that are not an answer end the list as a
    last entry of their own."""
    found: list[tuple[bytes, list[tuple[bytes, bytes]], bytes]] = []
    rest = raw
    while rest:
        end = rest.find(b"\r\n\r\n")
        if end < 0:
            found.append((b"<not an answer>", [], rest))
            break
        lines = rest[:end].split(b"\r\n")
        headers = []
        length = 0
        for line in lines[1:]:
            name, _, value = (part.strip() for part in line.partition(b":"))
            name = name.lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"x-kvs-index":
                headers.append((name, b"N"))
            elif name not in (b"server", b"date"):
                headers.append((name, value))
        body = rest[end + 4:end + 4 + length]
        rest = rest[end + 4 + length:]
        found.append((lines[0], sorted(headers), _VARYING.sub(rb'"\1":N', body)))
    return found


async def conversation(side: Side, pieces: list[bytes]) -> list[object]:
    """Send `pieces` (one write each, the loop run in between), then read until the node
    closes the connection: the answers, normalised."""
    reader, writer = await asyncio.open_connection("127.0.0.1", side.port, ssl=side.tls)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        for piece in pieces:
            writer.write(piece)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            await asyncio.sleep(0)
        try:
            got = await asyncio.wait_for(reader.read(), 15)
        except ConnectionError as exc:
            return [f"connection error: {exc}"]
        return list(normalised(got))
    finally:
        writer.close()


def whole(stream: bytes) -> list[bytes]:
    return [stream]


def filled(stream: bytes, side: Side) -> bytes:
    for placeholder, value in side.fill.items():
        stream = stream.replace(placeholder, value)
    return stream


async def differences(sides: Sides, streams: dict[str, bytes],
                      cut: Callable[[bytes], list[bytes]] = whole
                      ) -> dict[str, tuple[list[object], list[object]]]:
    """The streams (by name) whose answers differ: (fast path's, aiohttp's). All run at
    once, each sent in the same pieces to both sides (those `cut` makes of it; then each
    side's placeholders are filled in), each with its own keys (/kv/a becomes /kv/<name>)."""

    async def compare(name: str, stream: bytes) -> tuple[str, list[object], list[object]]:
        pieces = cut(stream.replace(b"/kv/a", f"/kv/{name}".encode()))
        got, expected = await asyncio.gather(
            *(conversation(side, [filled(piece, side) for piece in pieces]) for side in sides))
        return name, got, expected

    results = await asyncio.gather(*(compare(n, p) for n, p in streams.items()))
    return {name: (got, expected) for name, got, expected in results if got != expected}


def req(*lines: bytes) -> bytes:
    return b"\r\n".join(lines)


H = b"Host: x"
G = b"GET /kv/a HTTP/1.1"
BODY = b'{"value": 1}'


def put(*extra: bytes, body: bytes = BODY, line: bytes = b"PUT /kv/a HTTP/1.1") -> bytes:
    return req(line, H, *extra, b"Content-Length: " + str(len(body)).encode(), b"", body)


END = req(G, H, b"", b"")
CASES = {
    "get": END,
    "put": put(),
    "pipeline": put() + END + req(b"DELETE /kv/a HTTP/1.1", H, b"", b"") + END,
    "http10": req(b"GET /kv/a HTTP/1.0", b"", b""),
    "http10-ka": req(b"GET /kv/a HTTP/1.0", b"Connection: keep-alive", b"", b"") + END,
    "ka": req(G, H, b"Connection: keep-alive", b"", b"") + END,
    "conn-te": req(G, H, b"Connection: TE", b"", b"") + END,
    "cl-te": req(b"PUT /kv/a HTTP/1.1", H, b"Content-Length: 5", b"Transfer-Encoding: chunked",
                 b"", b"0", b"", b"") + END,
    "te-cl": req(b"PUT /kv/a HTTP/1.1", H, b"Transfer-Encoding: chunked", b"Content-Length: 3",
                 b"", b"c", BODY, b"0", b"", b"") + END,
    "te-identity": req(b"PUT /kv/a HTTP/1.1", H, b"Transfer-Encoding: identity",
                       b"Content-Length: 12", b"", BODY) + END,
    "dup-cl": req(b"PUT /kv/a HTTP/1.1", H, b"Content-Length: 12", b"Content-Length: 12", b"",
                  BODY) + END,
    "dup-cl-diff": req(b"PUT /kv/a HTTP/1.1", H, b"Content-Length: 12", b"Content-Length: 0", b"",
                       BODY) + END,
    "cl-zero-lead": req(b"PUT /kv/a HTTP/1.1", H, b"Content-Length: 012", b"", BODY) + END,
    "cl-plus": req(b"PUT /kv/a HTTP/1.1", H, b"Content-Length: +12", b"", BODY) + END,
    "cl-empty": req(b"PUT /kv/a HTTP/1.1", H, b"Content-Length:", b"", BODY) + END,
    "cl-huge": req(b"PUT /kv/a HTTP/1.1", H, b"Content-Length: 99999999999999999999", b"", BODY),
    "cl-18": req(b"PUT /kv/a HTTP/1.1", H, b"Content-Length: 999999999999999999", b"", BODY),
    "cl-over": req(b"PUT /kv/a HTTP/1.1", H, b"Content-Length: 900000000", b"", BODY),
    "cl-tab": req(b"PUT /kv/a HTTP/1.1", H, b"Content-Length:\t12\t", b"", BODY) + END,
    "cl-zero-put": req(b"PUT /kv/a HTTP/1.1", H, b"Content-Length: 0", b"", b"") + END,
    "get-cl0": req(G, H, b"Content-Length: 0", b"", b"") + END,
    "get-body": req(G, H, b"Content-Length: 3", b"", b"abc") + END,
    "delete-body": req(b"DELETE /kv/a HTTP/1.1", H, b"Content-Length: 3", b"", b"abc") + END,
    "put-no-cl": req(b"PUT /kv/a HTTP/1.1", H, b"", b"") + END,
    "put-short": req(b"PUT /kv/a HTTP/1.1", H, b"Content-Length: 30", b"", BODY),
    "put-extra": put(body=BODY + b"GET /kv/z HTTP/1.1\r\nHost: x\r\n\r\n"),
    "put-bad-json": put(body=b"{nope") + END,
    "put-not-obj": put(body=b"[1]") + END,
    "put-nul": put(body=b'{"value": "\x00"}') + END,
    "put-utf8": put(body='{"value": "é"}'.encode()) + END,
    "put-latin1": put(body=b'{"value": "\xe9"}') + END,
    "obs-fold": req(G, H, b"X-A: 1", b" 2", b"", b"") + END,
    "obs-fold-cl": req(b"PUT /kv/a HTTP/1.1", H, b"Content-Length:", b" 12", b"", BODY) + END,
    "bare-lf": b"GET /kv/a HTTP/1.1\nHost: x\n\n" + END,
    "bare-lf-mixed": b"GET /kv/a HTTP/1.1\r\nHost: x\n\r\n" + END,
    "bare-lf-end": b"GET /kv/a HTTP/1.1\r\nHost: x\r\n\n" + END,
    "bare-cr": b"GET /kv/a HTTP/1.1\r\nHost: x\rX: y\r\n\r\n" + END,
    "nul-head": req(G, H, b"X: a\x00b", b"", b"") + END,
    "nul-name": req(G, H, b"X\x00: a", b"", b"") + END,
    "space-colon": req(G, H, b"X-A : 1", b"", b"") + END,
    "space-colon-cl": req(b"PUT /kv/a HTTP/1.1", H, b"Content-Length : 12", b"", BODY) + END,
    "tab-name": req(G, H, b"\tX: 1", b"", b"") + END,
    "no-colon": req(G, H, b"Garbage", b"", b"") + END,
    "empty-name": req(G, H, b": v", b"", b"") + END,
    "no-host": req(G, b"", b"") + END,
    "two-hosts": req(G, H, H, b"", b"") + END,
    "empty-host": req(G, b"Host:", b"", b"") + END,
    "host-odd": req(G, b"Host: a b@c", b"", b"") + END,
    "long-line": req(G, H, b"X: " + b"a" * 8200, b"", b"") + END,
    "long-8180": req(G, H, b"X: " + b"a" * 8170, b"", b"") + END,
    "long-head": req(G, H, *[b"X-%d: " % i + b"a" * 100 for i in range(80)], b"", b"") + END,
    "many-headers": req(G, H, *[b"X-%d: 1" % i for i in range(200)], b"", b"") + END,
    "long-target": req(b"GET /kv/" + b"a" * 8000 + b" HTTP/1.1", H, b"", b"") + END,
    "target-9000": req(b"GET /kv/" + b"a" * 9000 + b" HTTP/1.1", H, b"", b"") + END,
    "garbage": b"HELLO\r\n\r\n" + END,
    "lead-crlf": b"\r\n" + END,
    "lead-crlf-after": END + b"\r\n" + END,
    "lower-method": req(b"get /kv/a HTTP/1.1", H, b"", b"") + END,
    "head": req(b"HEAD /kv/a HTTP/1.1", H, b"", b"") + END,
    "options": req(b"OPTIONS /kv/a HTTP/1.1", H, b"", b"") + END,
    "http2-pri": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "http11-lower": req(b"GET /kv/a http/1.1", H, b"", b"") + END,
    "http12": req(b"GET /kv/a HTTP/1.2", H, b"", b"") + END,
    "expect": req(b"PUT /kv/a HTTP/1.1", H, b"Expect: 100-continue", b"Content-Length: 12", b"",
                  BODY) + END,
    "expect-odd": req(b"PUT /kv/a HTTP/1.1", H, b"Expect: nope", b"Content-Length: 12", b"",
                      BODY) + END,
    "gzip": req(b"PUT /kv/a HTTP/1.1", H, b"Content-Encoding: gzip", b"Content-Length: 12", b"",
                BODY) + END,
    "upgrade": req(G, H, b"Connection: Upgrade", b"Upgrade: websocket", b"", b"") + END,
    "upgrade-alone": req(G, H, b"Upgrade: websocket", b"", b"") + END,
    "te-get": req(G, H, b"Transfer-Encoding: chunked", b"", b"0", b"", b"") + END,
    "te-xchunked": req(b"PUT /kv/a HTTP/1.1", H, b"Transfer-Encoding: xchunked", b"",
                       BODY) + END,
    "key-pct": req(b"GET /kv/a%2Fb HTTP/1.1", H, b"", b"") + END,
    "key-pct-lower": put(line=b"PUT /kv/a%c3%a9 HTTP/1.1") + req(b"GET /kv/a%C3%A9 HTTP/1.1", H,
                                                                   b"", b""),
    "key-pct-bad": req(b"GET /kv/%ff HTTP/1.1", H, b"", b"") + END,
    "key-pct-trunc": req(b"GET /kv/a%2 HTTP/1.1", H, b"", b"") + END,
    "key-pct-zz": req(b"GET /kv/a%zz HTTP/1.1", H, b"", b"") + END,
    "key-pct-nul": req(b"GET /kv/a%00 HTTP/1.1", H, b"", b"") + END,
    "key-pct-lf": req(b"GET /kv/a%0a HTTP/1.1", H, b"", b"") + END,
    "key-pct-dots": req(b"GET /kv/%2e%2e HTTP/1.1", H, b"", b"") + END,
    "key-pct-dots2": req(b"GET /kv/%2e%2e/%2e%2e/health HTTP/1.1", H, b"", b"") + END,
    "key-dotdot": req(b"GET /kv/a/../b HTTP/1.1", H, b"", b"") + END,
    "key-dotdot-end": req(b"GET /kv/.. HTTP/1.1", H, b"", b"") + END,
    "key-dot-mid": req(b"GET /kv/a.b HTTP/1.1", H, b"", b"") + END,
    "key-trailing-dot": req(b"GET /kv/a. HTTP/1.1", H, b"", b"") + END,
    "key-empty": req(b"GET /kv/ HTTP/1.1", H, b"", b"") + END,
    "key-put-empty": put(line=b"PUT /kv/ HTTP/1.1") + END,
    "key-slash-end": req(b"GET /kv/a/ HTTP/1.1", H, b"", b"") + END,
    "key-double-slash": req(b"GET /kv/a//b HTTP/1.1", H, b"", b"") + END,
    "key-unicode": req("GET /kv/é HTTP/1.1".encode(), H, b"", b"") + END,
    "key-specials": put(line=b"PUT /kv/a;b=c,d:e@f!$&'()*+ HTTP/1.1") + req(
        b"GET /kv/a;b=c,d:e@f!$&'()*+ HTTP/1.1", H, b"", b""),
    "key-quotes": req(b'GET /kv/a"b<c>d{e}f|g\\h^i`j HTTP/1.1', H, b"", b"") + END,
    "key-tilde": put(line=b"PUT /kv/a~b HTTP/1.1") + req(b"GET /kv/a%7Eb HTTP/1.1", H, b"", b""),
    "key-pct-slash": put(line=b"PUT /kv/a%2F HTTP/1.1") + req(b"GET /kv/a%2f HTTP/1.1", H, b"", b""),
    "key-reserved": req(b"GET /kv/_kvs/x HTTP/1.1", H, b"", b"") + END,
    "key-long": req(b"GET /kv/" + b"k" * 2000 + b" HTTP/1.1", H, b"", b"") + END,
    "query": req(b"GET /kv/a?raw=true HTTP/1.1", H, b"", b"") + END,
    "query-empty": req(b"GET /kv/a? HTTP/1.1", H, b"", b"") + END,
    "fragment": req(b"GET /kv/a#b HTTP/1.1", H, b"", b"") + END,
    "absolute": req(b"GET http://x/kv/a HTTP/1.1", H, b"", b"") + END,
    "asterisk": req(b"GET * HTTP/1.1", H, b"", b"") + END,
    "kvx": req(b"GET /kvx HTTP/1.1", H, b"", b"") + END,
    "kv": req(b"GET /kv HTTP/1.1", H, b"", b"") + END,
    "auth-bearer": req(G, H, b"Authorization: Bearer nope", b"", b"") + END,
    "auth-basic": req(G, H, b"Authorization: Basic Zm9v", b"", b"") + END,
    "token": req(G, H, b"X-KVS-Token: nope", b"", b"") + END,
    "accept-gzip": req(G, H, b"Accept-Encoding: gzip", b"", b"") + END,
    "split-crlf": req(G, H, b"", b"")[:-1],
    "only-head-line": b"GET /kv/a HTTP/1.1\r\n",
    "empty": b"",
    "tls-hello": bytes.fromhex("160301020001 0001fc0303") + bytes(range(40)),
    "garbage-line": b"HELLO\r\n",
    "bad-method-partial": b"FOO /kv/a HTTP/1.1\r\nHost: x\r\n",
    "nul-partial": b"GET /kv/a\x00",
    "bare-cr-partial": b"GET /kv/a HTTP/1.1\rHost: x\r",
    "lower-partial": b"get /kv/a HTTP/1.1\r\n",
    "http10-partial": b"GET /kv/a HTTP/1.0\r\n",
    "query-partial": b"GET /kv/a?x HTTP/1.1\r\n",
    "version-partial": b"GET /kv/a HTTP/9",
    "ctl-partial": b"GET /kv/a HTTP/1.1\r\nX: \x01",
    "proxy-conn": req(G, H, b"Proxy-Connection: close", b"", b""),
    "proxy-conn-ka": req(b"GET /kv/a HTTP/1.0", b"Proxy-Connection: keep-alive", b"", b""),
    "dup-ctype": req(G, H, b"Content-Type: a", b"Content-Type: b", b"", b""),
    "dup-ua": req(G, H, b"User-Agent: a", b"User-Agent: b", b"", b""),
    "dup-etag": req(G, H, b"ETag: a", b"ETag: b", b"", b""),
    "dup-server": req(G, H, b"Server: a", b"server: b", b"", b""),
    "dup-maxfwd": req(G, H, b"Max-Forwards: 1", b"Max-Forwards: 2", b"", b""),
    "dup-cloc": req(G, H, b"Content-Location: 1", b"Content-Location: 2", b"", b""),
    "dup-crange": req(G, H, b"Content-Range: 1", b"Content-Range: 2", b"", b""),
    "dup-x": req(G, H, b"X-A: 1", b"X-A: 2", b"", b"") + END,
    "dup-token": req(G, H, b"X-KVS-Token: 1", b"X-KVS-Token: 2", b"", b"") + END,
    "ws-key1": req(G, H, b"Sec-WebSocket-Key1: 1", b"", b"") + END,
    "h127": req(G, H, *[b"X-%d: 1" % i for i in range(127)], b"", b"") + END,
    "h128": req(G, H, *[b"X-%d: 1" % i for i in range(128)], b"", b"") + END,
    "empty-value": req(G, H, b"X-A:", b"Content-Type:", b"", b"") + END,
    "odd-name": req(G, H, b"X-A!#$%&'*+-.^_`|~: 1", b"", b"") + END,
    "pct-alone": req(b"GET /kv/a% HTTP/1.1", H, b"", b"") + END,
    "pct-pct": req(b"GET /kv/%% HTTP/1.1", H, b"", b"") + END,
    "tab-target": req(b"GET /kv/a\tb HTTP/1.1", H, b"", b"") + END,
    "te-http10": req(b"PUT /kv/a HTTP/1.0", b"Transfer-Encoding: chunked", b"", b"0", b"", b""),
    "conn-ka-close-10": req(b"GET /kv/a HTTP/1.0", b"Connection: close", b"", b""),
    "keepalive-hdr": req(G, H, b"Keep-Alive: timeout=1", b"", b"") + END,
    "te-header": req(G, H, b"TE: trailers", b"Connection: TE", b"", b"") + END,
    "cl-space-inside": req(b"PUT /kv/a HTTP/1.1", H, b"Content-Length: 1 2", b"", BODY) + END,
    "cl-neg": req(b"PUT /kv/a HTTP/1.1", H, b"Content-Length: -1", b"", BODY) + END,
    "cl-hex": req(b"PUT /kv/a HTTP/1.1", H, b"Content-Length: 0x0c", b"", BODY) + END,
    "host-cl-case": req(b"PUT /kv/a HTTP/1.1", b"HOST: x", b"CONTENT-LENGTH: 12", b"", BODY) + END,
    "put-big-ok": put(body=b'{"value": "' + b"v" * 60000 + b'"}') + END,
    "newline": b"\r\n",
}


def txn(key: str, *extra: bytes, line: bytes = b"POST /txn HTTP/1.1",
        body: bytes = b'{"ops": [{"op": "set", "key": "K", "value": 1}, '
                      b'{"op": "get", "key": "K"}]}') -> bytes:
    """A POST /txn on `key` (its own, as the streams run at once) followed by a GET."""
    return put(*extra, body=body.replace(b'"K"', f'"{key}"'.encode()), line=line) + END


CASES.update({
    "txn": txn("t1"),
    "txn-conflict": txn("t2", body=b'{"ops": [{"op": "check", "key": "K", "if_version": "v"}]}'),
    "txn-bad-json": txn("t3", body=b'{"ops": ['),
    "txn-not-obj": txn("t4", body=b"[1]"),
    "txn-empty": txn("t5", body=b'{"ops": []}'),
    "txn-quorum": txn("t6", body=b'{"ops": [{"op": "get", "key": "K", "consistency": "quorum"}]}'),
    "txn-bad-op": txn("t7", body=b'{"ops": [{"op": "nope", "key": "K"}]}'),
    "txn-empty-body": txn("t8", body=b""),
    "txn-short": req(b"POST /txn HTTP/1.1", H, b"Content-Length: 40", b"", b'{"ops": ['),
    "txn-no-cl": req(b"POST /txn HTTP/1.1", H, b"", b"") + END,
    "txn-query": txn("t9", line=b"POST /txn?x=1 HTTP/1.1"),
    "txn-slash": txn("t10", line=b"POST /txn/ HTTP/1.1"),
    "txn-put": txn("t11", line=b"PUT /txn HTTP/1.1"),
    "txn-get": req(b"GET /txn HTTP/1.1", H, b"", b"") + END,
    "txn-pipeline": txn("t12") + txn("t12") + req(b"GET /kv/a?raw=true HTTP/1.1", H, b"", b""),
})


async def test_every_stream_is_answered_as_aiohttp_answers_it(ports: Sides) -> None:
    assert await differences(ports, CASES) == {}


# Streams whose requests all keep the connection open: cut anywhere, aiohttp answers them
# the same, so they are compared cut at random places (a close with bytes still unread
# resets the connection, and what the client then reads depends on timing).
PIPELINES = {
    "fast": put() + END + req(b"DELETE /kv/a HTTP/1.1", H, b"", b"") + END,
    "handed": put() + END + req(b"GET /kv/a?raw=true HTTP/1.1", H, b"", b"") + put() + END,
    "chunked": END + req(b"PUT /kv/a HTTP/1.1", H, b"Transfer-Encoding: chunked", b"",
                         b"c", BODY, b"0", b"", b"") + END,
    "expect": END + CASES["expect"],
    "http10": END + CASES["http10-ka"],
    "keys": CASES["key-specials"] + CASES["key-pct-lower"] + CASES["key-tilde"],
    "headers": CASES["h127"] + CASES["long-8180"] + CASES["odd-name"],
    "big": CASES["put-big-ok"] + END,
}


def cutter(seed: int) -> Callable[[bytes], list[bytes]]:
    """Cuts a stream in 2 to 13 pieces at random places."""
    rng = random.Random(seed)

    def cut(stream: bytes) -> list[bytes]:
        points = sorted(rng.sample(range(1, len(stream)), rng.randint(1, 12)))
        return [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]

    return cut


def bytewise(stream: bytes) -> list[bytes]:
    return [stream[i:i + 1] for i in range(len(stream))]


async def test_streams_cut_at_random_places_are_answered_as_aiohttp_answers_them(
        ports: Sides) -> None:
    streams = {f"{name}-{n}": stream for name, stream in PIPELINES.items() for n in range(4)}
    assert await differences(ports, streams, cutter(17)) == {}
    short = {f"{name}-bytes": stream for name, stream in PIPELINES.items() if len(stream) < 1000}
    assert await differences(ports, short, bytewise) == {}



# -- ACLs and TLS -------------------------------------------------------------------------------

def token(header: bytes, *lines: bytes, method: bytes = b"GET") -> bytes:
    """A request of `method` for /kv/a carrying `header`: {R}, {W} stand for a token that may
    read, one that may write everything."""
    if method == b"PUT":
        return put(header, *lines)
    return req(method + b" /kv/a HTTP/1.1", H, header, *lines, b"", b"")


ACL_STREAMS = {
    "none": END + put(),
    "read": token(b"Authorization: Bearer {R}") + token(b"Authorization: Bearer {R}",
                                                         method=b"PUT"),
    "write": token(b"X-KVS-Token: {W}", method=b"PUT") + token(b"X-Consul-Token: {R}")
    + token(b"X-KVS-Token: {R}", method=b"DELETE") + token(b"X-KVS-Token: {W}", method=b"DELETE"),
    "both": token(b"Authorization: Bearer {R}", b"X-KVS-Token: {W}", method=b"PUT") + END,
    "basic": token(b"Authorization: Basic Zm9vOmJhcg==") + END,
    "empty": token(b"Authorization: Bearer") + token(b"Authorization:") + token(b"X-KVS-Token:"),
    "scheme-case": token(b"Authorization: bearer {R}") + token(b"Authorization: BEARER  {R} "),
    "unknown": token(b"X-KVS-Token: 0123456789abcdef0123456789abcdef") + END,
    "malformed": token(b"X-KVS-Token: not a token!") + token(b"Authorization: Bearer {R}x"),
    "long": token(b"X-KVS-Token: " + b"t" * 5000) + END,
    "reserved": req(b"GET /kv/_kvs/acl/tokens HTTP/1.1", H, b"X-KVS-Token: {W}", b"", b"") + END,
    "txn-none": txn("acl1"),
    "txn-read": txn("acl2", b"X-KVS-Token: {R}"),
    "txn-write": txn("acl3", b"X-KVS-Token: {W}"),
    "txn-reserved": txn("_kvs/acl/tokens/x", b"X-KVS-Token: {W}"),
}


async def test_acl_answers_are_aiohttps(make_node: NodeFactory,
                                        http: aiohttp.ClientSession) -> None:
    """401 and 403 with the same bodies, and the connection kept as aiohttp keeps it, for
    tokens in Authorization (Bearer, other schemes, odd spacing) and X-KVS-Token or
    X-Consul-Token headers, known, unknown, malformed or missing."""
    sides = []
    async with two_nodes(make_node, acl_enabled=True) as (fast, other, port):
        for node, side_port in ((fast, fast.port), (other, port)):
            admin = await bootstrapped(node, http)
            reader = await admin.token_for("reader", [rule("", "read")])
            writer = await admin.token_for("writer", [rule("", "write")])
            sides.append(Side(side_port, {b"{R}": reader.encode(), b"{W}": writer.encode()}))
        assert await differences((sides[0], sides[1]), ACL_STREAMS) == {}


async def test_over_tls_hand_offs_and_cut_streams_are_answered_as_by_aiohttp(
        make_node: NodeFactory, tmp_path: Path) -> None:
    """TLS on the client port: the fast path serves, hands a TLS connection over to aiohttp
    mid-stream, and reads streams cut anywhere, as aiohttp alone answers them."""
    pki = Pki(tmp_path / "pki")
    client = ssl.create_default_context()
    pki.ca.configure_trust(client)
    async with contextlib.AsyncExitStack() as stack:
        fast = await make_node(**SETTINGS, **pki.settings("fast"))
        other = await make_node(**SETTINGS, **pki.settings("other"))
        port = await stack.enter_async_context(plain_listener(other))
        sides = (Side(fast.port, tls=client), Side(port, tls=client))
        streams = {name: PIPELINES[name] for name in ("handed", "chunked", "expect", "big")}
        streams.update({name: CASES[name] for name in ("many-headers", "long-line", "bare-lf")})
        assert await differences(sides, streams) == {}
        assert await differences(sides, {f"{name}-cut": stream for name, stream in
                                         PIPELINES.items()}, cutter(5)) == {}

async def test_pipelined_requests_are_buffered_within_the_bound(node: Node) -> None:
    """2 MB of pipelined requests in one write, answers read as they come: the node reads
    the connection as it serves it, never holding much more than MAX_BUFFERED bytes of
    requests (plus one read) however many arrive."""
    count = 1000
    request = req(b"GET /kv/k HTTP/1.1", H, b"X-Pad: " + b"p" * 2000, b"", b"")
    reader, writer = await raw_request(node, END)
    try:
        await answers(reader, 1)
        assert node.site is not None and node.site.fast is not None
        [connection] = node.site.fast.live
        most = 0

        async def watch() -> None:
            nonlocal most
            while True:
                most = max(most, connection.buffered)
                await asyncio.sleep(0)

        watcher = asyncio.create_task(watch())
        writer.write(request * count)
        got = await answers(reader, count)
        watcher.cancel()
        assert len(got) == count and most > MAX_BUFFERED
        assert most < MAX_BUFFERED + (512 << 10), most
    finally:
        writer.close()


async def test_a_connection_paused_on_a_large_pipelined_body_reads_again(node: Node) -> None:
    """Two PUTs of 100 kB bodies in one write hold more than MAX_BUFFERED: reading pauses
    while the first is served. Once both are, the connection reads (and answers) the next
    request."""
    big = put(body=b'{"value": "' + b"v" * 100_000 + b'"}').replace(b"/kv/a", b"/kv/big")
    reader, writer = await raw_request(node, big * 2)
    try:
        assert [h.split(b" ")[1] for h, _ in await answers(reader, 2)] == [b"200", b"200"]
        writer.write(END.replace(b"/kv/a", b"/kv/big"))
        [(answer, body)] = await answers(reader, 1)
        assert answer.startswith(b"HTTP/1.1 200 ") and len(body) > 100_000
    finally:
        writer.close()


async def trickle(port: int) -> bytes:
    """A PUT whose body trickles in, a byte every 0.1 s, past the body timeout (1 s) for
    another second; then everything the node sends until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(req(b"PUT /kv/t HTTP/1.1", H, b"Content-Length: 100", b"", b"{"))
        for _ in range(20):
            await asyncio.sleep(0.1)
            writer.write(b" ")
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


async def test_a_body_answered_early_is_read_and_dropped_before_the_close(
        ports: Sides) -> None:
    """The 408 of a body that did not arrive in time reaches a client still sending it:
    the node reads and drops what comes (connections.LINGER_SECONDS) before it closes, as
    aiohttp does. Closing at once, with bytes unread, sends a reset that destroys the 408."""
    got, expected = await asyncio.gather(*(trickle(side.port) for side in ports))
    assert normalised(got) == normalised(expected)
    assert got.startswith(b"HTTP/1.1 408 ")


# -- clients that leave --------------------------------------------------------------------------

async def leave(port: int, data: bytes, *, reset: bool = False, read: int = 0) -> None:
    """Send `data`, read `read` bytes of the answers, then go: close, or reset."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    if read:
        await asyncio.wait_for(reader.readexactly(read), 10)
    if reset:
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                   struct.pack("ii", 1, 0))
    writer.close()


async def test_clients_leaving_at_any_point_leave_no_trace(
        make_node: NodeFactory, caplog: pytest.LogCaptureFixture) -> None:
    """Clients that go mid-head, mid-body, mid-answer, mid-pipeline, or while the node drops
    the rest of a late body: no error or traceback logged, and every connection uncounted."""
    caplog.set_level(logging.DEBUG)
    node = await make_node(**SETTINGS)
    big = put(body=b'{"value": "' + b"v" * 500_000 + b'"}')
    await leave(node.port, big, read=12)
    get = END
    late = req(b"PUT /kv/a HTTP/1.1", H, b"Content-Length: 100", b"", b"{")
    for reset in (False, True):
        await asyncio.gather(
            leave(node.port, b"GET /kv/a HTT", reset=reset),
            leave(node.port, big[:-1000], reset=reset),
            leave(node.port, get * 200, reset=reset),
            leave(node.port, get * 200, reset=reset, read=100),
            leave(node.port, late, reset=reset),
            leave(node.port, get + b"GET /kv/a?raw=true HTTP/1.1\r\nHost: x\r\n\r\n" + late,
                  reset=reset),
        )
    reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
    writer.write(late)
    assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).startswith(b"HTTP/1.1 408")
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                               struct.pack("ii", 1, 0))
    writer.close()
    await eventually(lambda: node.connections.open == 0, what="every connection uncounted")
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert not noisy, [r.getMessage() for r in noisy]


async def test_over_tls_a_connection_past_the_cap_gets_its_503_without_an_error_logged(
        make_node: NodeFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A TLS transport cannot be half-closed (write_eof): the refusal must not try to, which
    logged a fatal error with its traceback for every refused TLS connection."""
    caplog.set_level(logging.DEBUG)
    pki = Pki(tmp_path / "pki")
    client = ssl.create_default_context()
    pki.ca.configure_trust(client)
    node = await make_node(max_connections=1, **pki.settings("n"))
    held_reader, held = await asyncio.open_connection("127.0.0.1", node.port, ssl=client)
    try:
        held.write(END)
        await answers(held_reader, 1)
        reader, writer = await asyncio.open_connection("127.0.0.1", node.port, ssl=client)
        writer.write(END)
        refused = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert refused.startswith(b"HTTP/1.1 503 ") and b"too_many_connections" in refused
    finally:
        held.close()
    await eventually(lambda: node.connections.open == 0 and node.connections.refusing == 0,
                     what="both connections closed")
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not errors, [r.getMessage() for r in errors]
