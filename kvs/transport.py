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

import time
from typing import Any

import aiohttp
import orjson
from yarl import URL

from kvs import auth

# Probes, pushes and anti-entropy share the pool; per host it bounds how many
# requests one slow peer can hold open, in total it bounds the sockets we use.
CONNECTIONS_TOTAL = 256
CONNECTIONS_PER_HOST = 32


class TransportError(Exception):
    """The peer at `address` did not give a usable answer; `status` is set for HTTP errors."""

    def __init__(self, address: str, path: str, reason: str, status: int | None = None) -> None:
        super().__init__(f"{address}{path}: {reason}")
        self.address = address
        self.path = path
        self.reason = reason
        self.status = status


class HttpTransport:
    """A shared aiohttp session that signs requests when the cluster has a secret."""

    def __init__(self, secret: str | None) -> None:
        self._secret = secret
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        # Addresses (host:port) treated as unreachable; tests use it to cut the network.
        self.blocked: set[str] = set()

    def _get_session(self) -> aiohttp.ClientSession:
        # Created lazily: a ClientSession must be born inside the running event loop.
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=CONNECTIONS_TOTAL, limit_per_host=CONNECTIONS_PER_HOST
            )
            self._session = aiohttp.ClientSession(connector=connector, raise_for_status=False)
        return self._session

    async def call(self, address: str, path: str, payload: Any, timeout: float) -> Any:
        """POST `payload` as JSON to http://{address}{path}; return the decoded JSON reply.

        `path` goes on the wire exactly as given (it is what gets signed), so it must
        already be percent-encoded.
        """
        if self._closed:
            raise TransportError(address, path, "transport is closed")
        if address in self.blocked:
            raise TransportError(address, path, "blocked (simulated partition)")
        body = orjson.dumps(payload)
        headers = {"Content-Type": "application/json"}
        if self._secret is not None:
            headers.update(auth.sign(self._secret, "POST", path, body, time.time_ns() // 1_000_000))
        url = URL(f"http://{address}{path}", encoded=True)
        try:
            async with self._get_session().post(
                url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as response:
                raw = await response.read()
                if not 200 <= response.status < 300:
                    detail = raw[:200].decode("utf-8", "replace")
                    raise TransportError(
                        address, path, f"HTTP {response.status}: {detail}", response.status
                    )
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            # ValueError: yarl/aiohttp reject a malformed address before connecting.
            raise TransportError(address, path, f"{type(exc).__name__}: {exc}") from exc
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise TransportError(address, path, f"reply is not JSON: {exc}") from exc

    async def close(self) -> None:
        """Close pooled connections; later calls raise TransportError."""
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None
