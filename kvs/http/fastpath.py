"""The protocol-level path for plain KV requests (GET, PUT and DELETE /kv/<key>) and
for the POST routes of /txn and of the peers under /internal/ (every node-to-node call).

Why: aiohttp's server spends about 35 µs of CPU on a request before kvs sees it (its
connection loop, a task and a `Request` per request, a `Response` prepared through its
writer), as much as the engine spends on a write (docs/design.md, The HTTP front).
Most client traffic is the plainest kind of request, and that is what this path serves;
so is all peer traffic (kvs/cluster/transport.py sends nothing else), which every write
of a cluster causes (pushes, Paxos rounds).

How: every client connection starts with a `FastConnection`. It parses a request head
itself only when the head is in a strict subset of HTTP/1.1 (`parse_head`). Such a
request runs the same wrapped route handler aiohttp would call (admission and ACLs,
the body timeout, error answers, settle, X-KVS-Index, metrics: kvs/http/server.py),
given an `Exchange`, which has the part of `web.Request` that code reads. The first
request outside the subset hands the connection, with every byte of that request
received so far, to aiohttp's RequestHandler (kvs/http/connections.py), which serves it
and every later request of the connection. So chunked bodies, Content-Encoding,
`Expect: 100-continue`, HTTP/1.0, query strings (blocking queries among them), HEAD,
other routes, and heads that are malformed, unusual or long are all aiohttp's, exactly as
before: a request this path is unsure of is never answered here.

Kept from the aiohttp connection: the connection cap (a connection counts once, through a
hand-off too), the header timeout (a head must arrive within http_header_timeout_seconds
of the connection opening or of its first byte after a keep-alive gap, and within the
keep-alive deadline), the keep-alive timeout, the body timeout (the wrapper's: it reads
the body through `Exchange.read`) and the lingering close after it (the rest of the body
is read and dropped, so the 408 is not lost to a reset), the handler cancelled when its
client goes away, pipelined requests answered in order (one at a time, as aiohttp does),
back-pressure on a client that does not read its answers or pipelines faster than it is
served (at most MAX_BUFFERED bytes of requests held, plus one read), and TLS (a hand-off
works on any transport).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, cast

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy

from kvs.http.server import POST_ROUTES, SUBTREES, Handler

log = logging.getLogger("kvs.http")

PREFIX = "/kv/"
_PREFIX = PREFIX.encode()
METHODS = ("GET", "PUT", "DELETE")
# Heads longer than this go to aiohttp, which applies its own line and field limits.
MAX_HEAD = 8190
# Bytes of later (pipelined) requests buffered while one is served, before reading pauses.
MAX_BUFFERED = 1 << 16

_TOKEN = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_VISIBLE = bytes(range(0x21, 0x7F))
_FIELD_VALUE = _VISIBLE + b" \t"
# Header lines in a head served here; aiohttp answers 400 past 128 (its max_headers).
MAX_FIELDS = 100
# Headers that change how a message is framed or read, or that aiohttp refuses: such a
# request is aiohttp's. llhttp reads Proxy-Connection as Connection (close: the connection
# ends after the answer); aiohttp answers 400 to Sec-WebSocket-Key1 (the old handshake).
_HANDED_OVER = frozenset({b"transfer-encoding", b"content-encoding", b"expect", b"upgrade",
                          b"proxy-connection", b"sec-websocket-key1"})
_EMPTY_QUERY: MultiDictProxy[str] = MultiDictProxy(MultiDict())


@dataclass(frozen=True)
class Routes:
    """The wrapped route handlers this path may call: by method for every path under
    PREFIX (the KV routes), and by method and exact path (POST /txn, the peers' routes)."""

    prefixed: Mapping[bytes, Handler]
    exact: Mapping[tuple[bytes, bytes], Handler]

    def find(self, method: bytes, target: bytes) -> Handler | None:
        if target.startswith(_PREFIX):
            return self.prefixed.get(method)
        return self.exact.get((method, target))

    def methods(self) -> set[bytes]:
        return {*self.prefixed, *(method for method, _ in self.exact)}

    def may_lead(self, method: bytes, start: bytes) -> bool:
        """Whether a target beginning with `start` may still name a route of `method`."""
        if method in self.prefixed and (start.startswith(_PREFIX) or _PREFIX.startswith(start)):
            return True
        return any(m == method and path.startswith(start) for m, path in self.exact)


@dataclass(frozen=True, slots=True)
class Head:
    """A request head in the subset this path serves, and the handler it goes to."""

    method: str
    path: str
    headers: CIMultiDictProxy[str]
    length: int  # of the body
    close: bool  # the client asked to close after the answer (Connection: close)
    handler: Handler


def parse_head(raw: bytes, routes: Routes, max_body: int) -> Head | None:
    """The head of one request (its bytes up to, not including, the blank line), or None
    when it is outside the subset served here: then aiohttp must serve it.

    The subset: "METHOD TARGET HTTP/1.1" for a route of `routes` (GET, PUT, DELETE under
    /kv/; POST to /txn or a peers' path), with a target of printable ASCII, no query or fragment
    and no dot or empty segment (aiohttp may normalise those); header lines "name: value"
    with a token name and a value of printable ASCII, spaces and tabs, each line ending in
    CRLF (no bare CR or LF, no folding); at most MAX_FIELDS of them, no name twice (aiohttp
    refuses a second Content-Type, User-Agent, Host...: 400); a Host; a Content-Length, if
    any, in digits, at most `max_body`; a body only on PUT and POST, which have a
    Content-Length; none of the headers in _HANDED_OVER; Connection only keep-alive or
    close.
    """
    lines = raw.split(b"\r\n")
    if len(lines) > MAX_FIELDS + 1:
        return None
    start = _request_line(lines[0], routes)
    found = _fields(lines[1:])
    if start is None or found is None:
        return None
    fields, seen, length, close = found
    if b"host" not in seen:
        return None  # HTTP/1.1 needs one (aiohttp answers 400)
    method, target, handler = start
    with_body = method in ("PUT", "POST")
    if length is None:
        if with_body:
            return None  # aiohttp answers one without a length (an empty body: 400)
        length = 0
    if length > max_body or (length and not with_body):
        return None
    return Head(method, target, CIMultiDictProxy(CIMultiDict(fields)), length, close, handler)


def may_be_served(partial: bytes, routes: Routes) -> bool:
    """Whether the start of a head (no blank line yet) may still turn out to be one that
    `parse_head` serves. False once it cannot: then aiohttp must have it now, as it may
    answer at once (400 to a malformed line, or to a TLS handshake sent to a plain port)
    where waiting here for the rest would hold the client until the header timeout."""
    *lines, last = partial.split(b"\r\n")
    last = last.removesuffix(b"\r")  # a CR whose LF is still to come
    if not lines:
        return _request_line_start(last, routes)
    if (len(lines) > MAX_FIELDS or _request_line(lines[0], routes) is None
            or _fields(lines[1:]) is None):
        return False
    name, _, value = last.partition(b":")
    return not name.translate(None, _TOKEN) and not value.translate(None, _FIELD_VALUE)



def _request_line(line: bytes, routes: Routes) -> tuple[str, str, Handler] | None:
    """(method, target, handler) of a request line in the subset, else None."""
    parts = line.split(b" ")
    if len(parts) != 3 or parts[2] != b"HTTP/1.1":
        return None
    target = parts[1]
    handler = routes.find(parts[0], target)
    if (handler is None or target.translate(None, _VISIBLE)
            or any(mark in target for mark in (b"?", b"#", b"//", b"/."))):
        return None
    return parts[0].decode("ascii"), target.decode("ascii"), handler


def _request_line_start(start: bytes, routes: Routes) -> bool:
    """Whether the start of a request line may still become one in the subset."""
    method, space, rest = start.partition(b" ")
    if not space:
        return any(known.startswith(method) for known in routes.methods())
    target, space, version = rest.partition(b" ")
    if space:  # the target is whole
        return (b"HTTP/1.1".startswith(version)
                and _request_line(b"%s %s HTTP/1.1" % (method, target), routes) is not None)
    return not target.translate(None, _VISIBLE) and routes.may_lead(method, target)


def _fields(lines: list[bytes]
            ) -> tuple[list[tuple[str, str]], set[bytes], int | None, bool] | None:
    """The header lines of a head in the subset: (the fields, their names lowered, the
    Content-Length if any, whether Connection is close); None for lines outside it."""
    fields: list[tuple[str, str]] = []
    seen: set[bytes] = set()
    length: int | None = None
    close = False
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon or not name or name.translate(None, _TOKEN) or value.translate(None, _FIELD_VALUE):
            return None
        value = value.strip(b" \t")
        lowered = name.lower()
        if lowered in seen or lowered in _HANDED_OVER:
            return None
        seen.add(lowered)
        if lowered == b"content-length":
            if not value.isdigit() or len(value) > 18:
                return None
            length = int(value)
        elif lowered == b"connection":
            token = value.lower()
            if token not in (b"keep-alive", b"close"):
                return None
            close = token == b"close"
        fields.append((name.decode("ascii"), value.decode("ascii")))
    return fields, seen, length, close


class Exchange:
    """One request served here, as the route wrapper and the KV handlers read it: the part
    of `web.Request` they use (method, raw path, headers, an empty query, the body through
    `read`, per-request state such as the token's rules). The body arrives through `feed`.
    """

    __slots__ = ("_body", "_missing", "_state", "_waiter", "body_exists", "client_max_size",
                 "headers", "method", "raw_path", "transport")
    query_string = ""
    query = _EMPTY_QUERY

    def __init__(self, head: Head, client_max_size: int,
                 transport: asyncio.Transport | None) -> None:
        self.method = head.method
        self.transport = transport  # for the peer certificate (tls_verify_peer)
        self.raw_path = head.path
        self.headers = head.headers
        self.client_max_size = client_max_size
        self.body_exists = head.length > 0
        self._body: list[bytes] = []
        self._missing = head.length
        self._state: dict[Any, Any] = {}
        self._waiter: asyncio.Future[None] | None = None

    @property
    def path(self) -> str:
        return self.raw_path

    @property
    def rel_url(self) -> Exchange:
        return self  # rel_url.raw_path

    @property
    def content(self) -> Exchange:
        return self  # content.is_eof()

    def is_eof(self) -> bool:
        return self._missing == 0

    def feed(self, data: bytes | bytearray) -> int:
        """Take what belongs to the body from the start of `data`; return how many bytes
        that was (the rest is the next request)."""
        taken = bytes(data[:self._missing])
        if taken:
            self._body.append(taken)
            self._missing -= len(taken)
        if self._missing == 0 and self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        return len(taken)

    async def read(self) -> bytes:
        if self._missing:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return b"".join(self._body)

    def __getitem__(self, key: Any) -> Any:
        return self._state[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        self._state[key] = value

    def get(self, key: Any, default: Any = None) -> Any:
        return self._state.get(key, default)


# -- answers --------------------------------------------------------------------------------

_STATUS_LINES = {status.value: f"HTTP/1.1 {status.value} {status.phrase}\r\n" for status in HTTPStatus}
_OWN_HEADERS = frozenset({"content-length", "date", "connection", "transfer-encoding"})


@functools.lru_cache(maxsize=1)
def _http_date(second: int) -> str:
    return formatdate(second, usegmt=True)


def encode(response: web.StreamResponse, keep_alive: bool) -> bytes:
    """The bytes of an answer: its status, its headers, Content-Length, Date, the body."""
    body = cast(web.Response, response).body or b""
    assert isinstance(body, bytes), "a KV handler answers with a bytes body"
    status = response.status
    head = [_STATUS_LINES.get(status) or f"HTTP/1.1 {status} {response.reason}\r\n"]
    head.extend(f"{name}: {value}\r\n" for name, value in response.headers.items()
                if name.lower() not in _OWN_HEADERS)
    head.append(f"Content-Length: {len(body)}\r\nDate: {_http_date(int(time.time()))}\r\n")
    if not keep_alive:
        head.append("Connection: close\r\n")
    head.append("\r\n")
    return "".join(head).encode("latin-1") + body


# -- the connection -------------------------------------------------------------------------

def fast_routes(app: web.Application) -> Routes:
    """The routes this path serves of `app` (server.make_app's): the wrapped KV handlers
    for PREFIX among its subtree routes, and the POST routes of POST_ROUTES (peers', /txn)."""
    prefixed = {method.encode(): handler for method in METHODS
                for prefix, handler in app[SUBTREES].get(method, ()) if prefix == PREFIX}
    return Routes(prefixed, {(method.encode(), path.encode()): handler
                             for (method, path), handler in app[POST_ROUTES].items()})


@dataclass(frozen=True)
class Listener:
    """What the fast connections of one listening socket share: the handlers, the body
    bound, the timeouts, and the live connections (closed when the node stops). `linger`:
    seconds the rest of a body answered early is read and dropped before the close."""

    routes: Routes
    client_max_size: int
    header_timeout: float
    keepalive_timeout: float
    linger: float
    live: set[FastConnection] = field(default_factory=set)


# A connection is waiting for a head (HEAD), serving a request (BUSY), idle between
# requests (IDLE), or dropping the rest of a body answered early before it closes
# (LINGERING). A head must arrive by the header deadline; an idle connection closes at the
# keep-alive deadline; a busy one has no deadline of its own (the body timeout is the
# wrapper's, and a handler may wait, e.g. for a quorum round).
HEAD, BUSY, IDLE, LINGERING = "head", "busy", "idle", "lingering"


class FastConnection(asyncio.Protocol):
    """One client connection, served here until its first request outside the subset."""

    def __init__(self, listener: Listener, *, admit: Callable[[], bool],
                 release: Callable[[], None],
                 hand_off: Callable[[bool, float], asyncio.Protocol]) -> None:
        """`admit`: counts the connection against the cap (False: the cap is reached, and
        aiohttp's handler refuses it); `release` uncounts it. `hand_off(counted, due)`:
        aiohttp's handler for the connection (already counted, or not), with `due` the loop
        time by which a request head must have arrived."""
        self._listener = listener
        self._admit = admit
        self._release = release
        self._hand_off_to = hand_off
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._counted = False
        # Bytes of the next requests. A bytearray consumed from the front: deleting a served
        # request costs no copy of those behind it (many pipelined in one read).
        self._buffer = bytearray()
        self._state = HEAD
        self._due = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._exchange: Exchange | None = None
        self._task: asyncio.Task[web.StreamResponse] | None = None
        self._close_after = False
        self._reading = True
        self._writing = True

    @property
    def reading(self) -> bool:
        """False while reading is paused: the client is not reading its answers, or has
        sent more than MAX_BUFFERED bytes of later requests."""
        return self._reading

    @property
    def buffered(self) -> int:
        """Bytes of requests received but not yet served."""
        return len(self._buffer)

    @property
    def backlog(self) -> int:
        """Bytes of answers written but not yet taken by the kernel."""
        return 0 if self._transport is None else self._transport.get_write_buffer_size()

    # -- asyncio callbacks ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        if not self._admit():
            self._hand_off()  # aiohttp's handler answers 503 and closes
            return
        self._counted = True
        self._listener.live.add(self)
        self._deadline(self._loop.time() + self._listener.header_timeout)

    def data_received(self, data: bytes) -> None:
        exchange = self._exchange
        if exchange is not None and not exchange.is_eof():
            data = data[exchange.feed(data):]
        if self._state == LINGERING:
            if exchange is None or exchange.is_eof():
                self.close()  # the body is over: what follows is never served
            return
        self._buffer += data
        if self._state == IDLE and self._buffer:
            self._state = HEAD
            self._deadline(min(self._due, self._loop.time() + self._listener.header_timeout))
        if self._state == HEAD:
            self._next_request()
        if len(self._buffer) > MAX_BUFFERED:
            self._pause_reading()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._transport = None
        self._cancel_timer()
        self._listener.live.discard(self)
        if self._counted:
            self._counted = False
            self._release()
        if self._task is not None:
            self._task.cancel()  # as aiohttp's handler_cancellation: the client is gone

    def pause_writing(self) -> None:
        self._writing = False

    def resume_writing(self) -> None:
        self._writing = True
        if self._state != BUSY:
            timeout = self._listener.header_timeout if self._state == HEAD else (
                self._listener.keepalive_timeout)
            self._deadline(self._loop.time() + timeout)  # none while the client did not read
            self.data_received(b"")

    # -- requests -----------------------------------------------------------------------------

    def _next_request(self) -> None:
        """Serve the request at the start of the buffer, if its head is whole."""
        if not self._writing:
            self._pause_reading()  # the client is not reading its answers: wait for it
            return
        buffer = self._buffer
        listener = self._listener
        end = buffer.find(b"\r\n\r\n", 0, MAX_HEAD + 4)
        if end < 0:
            if len(buffer) > MAX_HEAD or not may_be_served(bytes(buffer), listener.routes):
                self._hand_off()  # a long head, or one this path will not serve: aiohttp's
            else:
                self._resume_reading()  # the rest of the head is still to come
            return
        head = parse_head(bytes(buffer[:end]), listener.routes, listener.client_max_size)
        if head is None:
            self._hand_off()
            return
        exchange = Exchange(head, listener.client_max_size, self._transport)
        del buffer[:end + 4]
        del buffer[:exchange.feed(buffer)]
        if len(buffer) <= MAX_BUFFERED:
            self._resume_reading()  # else once enough of what is buffered has been served
        self._exchange = exchange
        self._close_after = head.close
        self._state = BUSY
        self._due = float("inf")
        request = cast(web.Request, exchange)  # see Exchange: what the wrapper reads
        self._task = self._loop.create_task(head.handler(request))
        self._task.add_done_callback(self._answered)

    def _answered(self, task: asyncio.Task[web.StreamResponse]) -> None:
        self._task = None
        exchange, self._exchange = self._exchange, None
        transport = self._transport
        if transport is None or task.cancelled():
            return
        if task.exception() is not None:  # the wrapper answers every Exception: a bug
            path = exchange.raw_path if exchange is not None else "-"
            log.error("event=internal_error path=%s", path, exc_info=task.exception())
            self.close()
            return
        response = task.result()
        keep = not self._close_after and response.keep_alive is not False and (
            exchange is not None and exchange.is_eof())
        transport.write(encode(response, keep))
        if not keep:
            if exchange is not None and not exchange.is_eof():
                self._linger(exchange)
            else:
                self.close()
            return
        self._state = IDLE
        self._deadline(self._loop.time() + self._listener.keepalive_timeout)
        if self._buffer:
            self.data_received(b"")

    # -- the connection's life ----------------------------------------------------------------

    def _hand_off(self) -> None:
        """Give the connection, and what arrived of its current request, to aiohttp."""
        transport = self._transport
        assert transport is not None
        self._cancel_timer()
        self._listener.live.discard(self)
        handler = self._hand_off_to(self._counted, self._due)
        self._counted = False  # aiohttp's handler releases it now
        self._transport = None
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if self._buffer:
            handler.data_received(bytes(self._buffer))
        if not self._reading:
            transport.resume_reading()

    def _linger(self, exchange: Exchange) -> None:
        """Read and drop the rest of the body of a request answered early (408: it came too
        slowly), until it ends or for `linger` seconds, then close, as aiohttp does (its
        lingering_time): closing with bytes unread sends a reset, which can destroy the
        answer before the client reads it."""
        self._exchange = exchange
        self._state = LINGERING
        self._cancel_timer()
        self._timer = self._loop.call_later(self._listener.linger, self.close)

    def shut(self) -> asyncio.Task[web.StreamResponse] | None:
        """The node stops: close now if no request is in progress, else after its answer
        (returned: the task answering it)."""
        if self._task is None:
            self.close()
        self._close_after = True
        return self._task

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def _deadline(self, due: float) -> None:
        """Close at `due` unless the state moves on. One timer per connection: a timer due
        earlier is kept, and re-arms itself for the deadline when it fires."""
        self._due = due
        timer = self._timer
        if timer is not None:
            if timer.when() <= due:
                return
            timer.cancel()
        self._timer = self._loop.call_at(due, self._timed_out)

    def _timed_out(self) -> None:
        self._timer = None
        if self._state == BUSY or not self._writing or self._transport is None:
            return  # no deadline while serving, or while the client does not read its answers
        if self._loop.time() < self._due:
            self._timer = self._loop.call_at(self._due, self._timed_out)
            return
        self.close()  # no whole head in time, or idle past the keep-alive timeout

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _pause_reading(self) -> None:
        if self._reading and self._transport is not None:
            self._reading = False
            self._transport.pause_reading()

    def _resume_reading(self) -> None:
        if not self._reading and self._transport is not None:
            self._reading = True
            self._transport.resume_reading()


async def shut(listener: Listener, grace: float) -> None:
    """Close the connections this path serves (the node stops): idle ones now, busy ones
    once they have answered, within `grace` seconds (then they are closed anyway)."""
    busy = [task for connection in list(listener.live) if (task := connection.shut()) is not None]
    if busy:
        await asyncio.wait(busy, timeout=grace)
    for connection in list(listener.live):
        connection.close()
