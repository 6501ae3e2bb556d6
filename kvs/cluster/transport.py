"""Node-to-node calls: one JSON POST, one JSON reply, or one TransportError.

Membership (SWIM pings), replication pushes and Merkle anti-entropy all talk to
peers through `HttpTransport.call`. Every lower-layer failure (refused or reset
connection, timeout, non-2xx status, a reply that is not JSON) is converted to
`TransportError` here, at the boundary, so callers handle exactly one
exception: a peer that did not answer usefully. A payload that orjson cannot
encode is a bug in the caller and is left to fail loudly (TypeError).

For in-process fault injection, `blocked` holds peer addresses this transport
refuses to reach, as if the network dropped the packets. Blocking both
directions (each side's transport blocks the other side's addresses) makes a
clean partition without touching sockets.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import orjson

from kvs.clock import wall_ms
from kvs.cluster import auth

# Per peer, a bound on open connections: how many requests one slow peer can hold.
CONNECTIONS_PER_HOST = 32

_Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class TransportError(Exception):
    """The peer at `address` did not give a usable answer; for an HTTP error, `status`, the
    whole answer `body` (the peer's {"error", "message", ...}) and `cause` when that body
    names one (auth.CAUSE_WINDOW: our clocks disagree)."""

    def __init__(self, address: str, path: str, reason: str, status: int | None = None,
                 body: bytes = b"") -> None:
        super().__init__(f"{address}{path}: {reason}")
        self.address = address
        self.path = path
        self.reason = reason
        self.status = status
        self.body = body
        self.cause = _cause(body) if body else None


class _Peer:
    """Idle keep-alive connections to one peer, and the bound on how many are in use."""

    def __init__(self) -> None:
        self.idle: list[_Stream] = []
        self.slots = asyncio.Semaphore(CONNECTIONS_PER_HOST)


class HttpTransport:
    """HTTP/1.1 POSTs over pooled keep-alive connections, signed when the cluster has a secret.

    Hand-written on asyncio streams rather than aiohttp's client: every write is pushed
    to each peer, and aiohttp's client cost a node more CPU per push than serving the
    PUT itself (profiled on a 3-node cluster). The peers are kvs's own aiohttp servers,
    whose replies to these calls always carry a Content-Length; anything else is a
    TransportError. Every call here is idempotent (pings, pushes, Merkle exchanges), so
    a request on a pooled connection the peer had closed is simply sent again.

    With `ssl_context` (the node's peer context, kvs/tls.py) every connection is TLS: the
    peer's certificate must verify and name the address dialled, and this node presents
    its own. A failed handshake is an OSError (ssl.SSLError) like any other, so a TransportError.
    """

    def __init__(self, secret: str | None, ssl_context: ssl.SSLContext | None = None) -> None:
        self._secret = secret
        self._ssl = ssl_context
        self._peers: dict[str, _Peer] = {}
        self._closed = False
        # Addresses (host:port) treated as unreachable; tests use it to cut the network.
        self.blocked: set[str] = set()

    async def call(self, address: str, path: str, payload: Any, timeout: float) -> Any:
        """POST `payload` as JSON to http(s)://{address}{path}; return the decoded JSON reply.

        `path` goes on the wire exactly as given (it is what gets signed), so it must
        already be percent-encoded.
        """
        if self._closed:
            raise TransportError(address, path, "transport is closed")
        if address in self.blocked:
            raise TransportError(address, path, "blocked (simulated partition)")
        body = orjson.dumps(payload)
        peer = self._peers.get(address) or self._peers.setdefault(address, _Peer())
        try:
            request = self._request(address, path, body)
            async with asyncio.timeout(timeout), peer.slots:
                status, raw = await self._send_on_pooled(peer, address, request)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
            raise TransportError(address, path, self._reason(exc)) from exc
        if not 200 <= status < 300:
            detail = raw[:200].decode("utf-8", "replace")
            raise TransportError(address, path, f"HTTP {status}: {detail}", status, raw)
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise TransportError(address, path, f"reply is not JSON: {exc}") from exc

    def _reason(self, exc: BaseException) -> str:
        reason = f"{type(exc).__name__}: {exc}"
        if self._ssl is not None and isinstance(exc, asyncio.IncompleteReadError) and not exc.partial:
            # TLS 1.3: a server that refuses our certificate closes after the handshake.
            reason += (" (closed before answering: the peer may have refused this node's "
                       "certificate; check that one CA signed both nodes' certificates)")
        return reason

    def _request(self, address: str, path: str, body: bytes) -> bytes:
        if not path.startswith("/") or not path.isprintable() or " " in path:
            raise ValueError(f"path {path[:80]!r} is not a percent-encoded absolute path")
        head = (f"POST {path} HTTP/1.1\r\nHost: {address}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n")
        if self._secret is not None:
            signed = auth.sign(self._secret, "POST", path, body, wall_ms())
            head += "".join(f"{name}: {value}\r\n" for name, value in signed.items())
        return (head + "\r\n").encode("latin-1") + body

    async def _send_on_pooled(self, peer: _Peer, address: str, request: bytes) -> tuple[int, bytes]:
        while peer.idle:
            stream = peer.idle.pop()
            try:
                return await self._roundtrip(peer, stream, request)
            except (OSError, asyncio.IncompleteReadError):
                pass  # the peer closed it while it sat idle: next one, or a new one
        host, _, port = address.rpartition(":")
        host = host.strip("[]")
        stream = await asyncio.open_connection(host, int(port), ssl=self._ssl,
                                               server_hostname=host if self._ssl else None)
        return await self._roundtrip(peer, stream, request)

    async def _roundtrip(self, peer: _Peer, stream: _Stream, request: bytes) -> tuple[int, bytes]:
        reader, writer = stream
        try:
            writer.write(request)
            await writer.drain()
            status_line = await reader.readline()
            if not status_line:
                raise asyncio.IncompleteReadError(b"", None)
            status = int(status_line.split(None, 2)[1])
            length, keep = None, True
            while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection":
                    keep = value.strip().lower() != b"close"
                elif name == b"transfer-encoding":
                    raise ValueError("a chunked reply (kvs peers always send Content-Length)")
            if length is None:
                raise ValueError("a reply without Content-Length")
            raw = await reader.readexactly(length)
        except BaseException:
            writer.close()  # cancelled or broken half-way: the connection's state is unknown
            raise
        if keep and not self._closed:
            peer.idle.append(stream)
        else:
            writer.close()
        return status, raw

    async def close(self) -> None:
        """Close pooled connections; later calls raise TransportError."""
        self._closed = True
        for peer in self._peers.values():
            for _, writer in peer.idle:
                writer.close()
            peer.idle.clear()


def _cause(raw: bytes) -> str | None:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    cause = body.get("cause") if isinstance(body, dict) else None
    return cause if isinstance(cause, str) else None
