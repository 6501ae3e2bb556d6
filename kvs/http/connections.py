"""Connection-level bounds of the HTTP server: how many, and how long each may stay silent.

aiohttp bounds an idle keep-alive connection (keepalive_timeout) but has no header or
connection limit, so one host opening slow connections could hold every file
descriptor of the node. `serve()` listens with a RequestHandler that adds:

- a connection cap: past `max_connections` a new connection is answered 503
  too_many_connections (Retry-After: 1) and closed, before it costs more than its
  socket; reaching and leaving the cap is logged once per state change. The refused
  connection is shut for writing (not over TLS, which cannot be half-closed: the 503's
  Connection: close tells the client) and what the client sends is read and dropped until
  it closes, or REFUSE_GRACE seconds: closing with unread data would send a reset that
  can destroy the 503 before the client reads it. At most REFUSING_MAX refused
  connections wait so, so a flood cannot spend descriptors on them; beyond, close now;
- a header timeout: a request line and headers must arrive within `header_timeout`
  of the connection opening, or of the first byte after an idle keep-alive gap.

The header timeout reuses aiohttp's keep-alive timer, which closes a connection
still waiting for a complete request when the timer fires: it is brought forward
to the header deadline (the timer re-arms itself if it fires early). The body
timeout lives in the route wrapper (kvs/http/server.py), which reads every body.

Handlers are cancelled when their client goes away (handler_cancellation), so a
blocking query whose client left stops waiting at once.

With an SSL context the port speaks only TLS. A connection counts (and its header
timeout starts) once its handshake is done; the handshake itself must finish within the
header timeout too. A client that sends plaintext, or a certificate that does not
verify, fails the handshake: asyncio closes the connection and logs it at debug only.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
import ssl
from collections.abc import Callable
from typing import Any, cast

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

from kvs.http import fastpath
from kvs.http.server import Handler

log = logging.getLogger("kvs.http")

# Descriptors kept out of max_connections: RocksDB files, connections to peers, logs.
FD_RESERVE = 128
REFUSE_GRACE = 0.5  # seconds a refused connection may take to read its 503 and close
REFUSING_MAX = 64  # refused connections given that grace at once
# Seconds a connection keeps reading (and dropping) a body answered early, before closing,
# so a client still sending sees the answer instead of a reset (aiohttp's lingering_time,
# whose default is 10; the fast path does the same).
LINGER_SECONDS = 2.0
SHUTDOWN_GRACE = 5.0  # seconds a stopping node waits for the fast path's answers in progress


class ConnectionLimit:
    """Open client connections against the cap; logs when the cap is reached and when it
    is left (below 90%, so a node at the cap does not log every connection)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0
        self.refused = 0
        self.refusing = 0  # refused connections in their grace period
        self._full = False

    def admit(self) -> bool:
        if self.open >= self.limit:
            self.refused += 1
            if not self._full:
                self._full = True
                log.warning("event=connection_limit_reached open=%d max_connections=%d: new "
                            "connections get 503 until some close", self.open, self.limit)
            return False
        self.open += 1
        return True

    def release(self) -> None:
        self.open -= 1
        if self._full and self.open < self.limit * 0.9:
            self._full = False
            log.info("event=connection_limit_cleared open=%d refused_total=%d",
                     self.open, self.refused)


def fitted_limit(max_connections: int) -> int:
    """max_connections lowered, with a warning, to what the descriptor limit allows."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or max_connections <= soft - FD_RESERVE:
        return max_connections
    fitted = max(1, soft - FD_RESERVE)
    log.warning("event=max_connections_lowered max_connections=%d fd_limit=%d using=%d: raise "
                "the limit (ulimit -n) to allow more", max_connections, soft, fitted)
    return fitted


def _busy_response(limit: int) -> bytes:
    body = orjson.dumps({"error": "too_many_connections",
                         "message": f"this node holds its maximum of {limit} connections "
                                    "(max_connections); retry shortly or use another node"})
    head = ("HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Retry-After: 1\r\nConnection: close\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


class _Connection(RequestHandler):

    __slots__ = ("_admitted", "_busy", "_decided", "_first_due", "_header_timeout", "_limit",
                 "_refusing")

    def __init__(self, manager: web.Server, *, limit: ConnectionLimit, busy: bytes,
                 header_timeout: float, admitted: bool | None = None,
                 head_due: float | None = None, **kwargs: Any) -> None:
        """`admitted`, `head_due`: for a connection handed over by the fast path
        (kvs/http/fastpath.py), whether it was counted against the cap (False: refuse it),
        and the loop time by which its current request head must have arrived."""
        super().__init__(manager, **kwargs)
        self._limit = limit
        self._busy = busy
        self._header_timeout = header_timeout
        self._decided = admitted
        self._first_due = head_due
        self._admitted = False
        self._refusing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        admitted = self._limit.admit() if self._decided is None else self._decided
        if not admitted:
            self._refuse(cast(asyncio.Transport, transport))  # aiohttp never sees this connection
            return
        self._admitted = True
        super().connection_made(transport)
        self._head_due(self._first_due)

    def _refuse(self, transport: asyncio.Transport) -> None:
        transport.write(self._busy)
        if self._limit.refusing >= REFUSING_MAX:
            transport.close()
            return
        self._limit.refusing += 1
        self._refusing = True
        if transport.can_write_eof():  # a TLS transport cannot: the 503 says Connection: close
            transport.write_eof()
        self._loop.call_later(REFUSE_GRACE, transport.close)

    def data_received(self, data: bytes) -> None:
        if self._refusing:
            return  # read and dropped: see the module docstring
        if self._waiter is not None and not self._waiter.done():  # idle: a request head begins
            self._head_due()
        super().data_received(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._refusing:
            self._refusing = False
            self._limit.refusing -= 1
        if self._admitted:
            self._admitted = False
            self._limit.release()
            super().connection_lost(exc)

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """A malformed request is the client's mistake and is answered 400: one debug line
        without a traceback, where aiohttp logs an error with one (so one bad client cannot
        fill the log, and an operator is not sent looking for a bug in kvs)."""
        exc = kw.get("exc_info")
        if isinstance(exc, HttpProcessingError) and 400 <= exc.code < 500:
            log.debug("event=bad_http_request status=%d reason=%r", exc.code,
                      exc.message.partition("\n")[0])
            return
        super().log_exception(*args, **kw)

    def _head_due(self, due: float | None = None) -> None:
        """Bring the keep-alive timer forward to the header deadline (`due`, by default
        header_timeout from now). A timer due no later is kept: it re-arms itself for the
        deadline when it fires, so a busy connection does not replace its timer on every
        request."""
        if due is None:
            due = self._loop.time() + self._header_timeout
        if due < self._next_keepalive_close_time:
            self._next_keepalive_close_time = due
            handle = self._keepalive_handle
            if handle is not None:
                if cast(asyncio.TimerHandle, handle).when() <= due:
                    return
                handle.cancel()
            self._keepalive_handle = self._loop.call_at(due, self._process_keepalive)


class Site(web.BaseSite):
    """Listens on an already bound socket with `protocol` as the connection factory;
    `fast`: what its fast-path connections share (None: every connection is aiohttp's)."""

    def __init__(self, runner: web.AppRunner, sock: socket.socket, protocol: Any,
                 ssl_context: ssl.SSLContext | None, handshake_timeout: float,
                 fast: fastpath.Listener | None) -> None:
        super().__init__(runner, ssl_context=ssl_context)
        self._sock = sock
        self._protocol = protocol
        self._handshake_timeout = handshake_timeout
        self.fast = fast

    @property
    def name(self) -> str:
        host, port = self._sock.getsockname()[:2]
        return f"{'https' if self._ssl_context else 'http'}://{host}:{port}"

    async def start(self) -> None:
        await super().start()
        tls = self._ssl_context is not None
        self._server = await asyncio.get_running_loop().create_server(
            self._protocol, sock=self._sock, backlog=self._backlog, ssl=self._ssl_context,
            ssl_handshake_timeout=self._handshake_timeout if tls else None)

    async def stop(self) -> None:
        """Stop listening; then close the fast path's connections (aiohttp's server closes
        those it serves), giving answers in progress SHUTDOWN_GRACE seconds."""
        await super().stop()
        if self.fast is not None:
            await fastpath.shut(self.fast, SHUTDOWN_GRACE)




class _Runner(web.AppRunner):
    def __init__(self, app: web.Application, front: Callable[[Handler], Handler] | None) -> None:
        super().__init__(app, handle_signals=False, handler_cancellation=True)
        self._front = front

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        if self._front is not None:
            server.request_handler = self._front(server.request_handler)
        return server


def runner(app: web.Application, front: Callable[[Handler], Handler] | None = None
           ) -> web.AppRunner:
    """The runner for `app`: handlers are cancelled when their client goes away. `front`
    wraps the Application's request handler (kvs.http.server.front: hot routes skip the
    router)."""
    return _Runner(app, front)


async def serve(app_runner: web.AppRunner, sock: socket.socket, limit: ConnectionLimit, *,
                header_timeout: float, keepalive_timeout: float,
                ssl_context: ssl.SSLContext | None = None,
                fast: fastpath.Routes | None = None,
                client_max_size: int = 0) -> Site:
    """Start serving `sock` (already bound and listening) with the bounds above; TLS only,
    with `ssl_context`. With `fast` (kvs/http/fastpath.py: the wrapped routes it may
    call), each connection starts on the protocol-level path, bodies up to
    `client_max_size`, and is handed to aiohttp at its first request outside that path."""
    server = app_runner.server
    assert server is not None, "call runner.setup() first"
    busy = _busy_response(limit.limit)
    loop = asyncio.get_running_loop()

    def aiohttp_connection(admitted: bool | None = None, head_due: float | None = None
                           ) -> _Connection:
        return _Connection(server, loop=loop, limit=limit, busy=busy,
                           header_timeout=header_timeout, keepalive_timeout=keepalive_timeout,
                           access_log=None, lingering_time=LINGER_SECONDS,
                           auto_decompress=False, admitted=admitted, head_due=head_due)

    listener = None
    protocol: Callable[[], asyncio.Protocol] = aiohttp_connection
    if fast is not None:
        listener = fastpath.Listener(fast, client_max_size, header_timeout, keepalive_timeout,
                                     LINGER_SECONDS)

        def protocol() -> asyncio.Protocol:
            return fastpath.FastConnection(listener, admit=limit.admit, release=limit.release,
                                           hand_off=aiohttp_connection)

    site = Site(app_runner, sock, protocol, ssl_context, header_timeout, listener)
    await site.start()
    return site
