"""One HTTP operation against one node, recorded as an invoke and a completion.

How an answer becomes an outcome (history.py explains why these three):

    200                          ok        (result: the body)
    404, 409, other 4xx          fail      (error: the body's code; 409 keeps `current`)
    connection refused           fail      ("unavailable": the request never reached the node)
    503 quorum_unavailable       fail      (fewer than a majority of voters answered: nothing
                                            was written, the contract says; the checkers hold
                                            the node to it)
    timeout, reset, other 5xx    unknown   (it may have been applied, now or later; this
                                            includes 503 quorum_indeterminate)
    cancelled by the run ending  unknown   ("cancelled")

The invoke is written before the request leaves and the completion after the answer is
read, so the recorded interval always contains the operation's real effect.

One request, one attempt. aiohttp silently resends an "idempotent" request (PUT and
DELETE included) when a pooled connection breaks under it; when the node was killed
after applying the first attempt, the resend meets a refused connection and the
operation would be recorded as "never reached the node" although it took effect (found
by a 5-minute chaos run). So the session's resend is switched off (`no_resend`), and
independently every request traces whether its headers ever left: a connection error
after that is `unknown`, never `fail`.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from yarl import URL

from kvs.chaos.history import HistoryWriter


@dataclass
class Outcome:
    op_id: int
    kind: str  # ok | fail | unknown
    inv: float = 0.0  # wall-clock time of the invoke
    status: int | None = None
    body: Any = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.kind == "ok"

    @property
    def current(self) -> dict[str, Any] | None:
        if self.kind == "fail" and isinstance(self.body, dict):
            return self.body.get("current")
        return None


def no_resend(session: aiohttp.ClientSession) -> aiohttp.ClientSession:
    """Switch off aiohttp's automatic resend of idempotent requests (a private switch; the
    headers-sent trace below keeps outcomes right if a future aiohttp renames it)."""
    if hasattr(session, "_retry_connection"):
        session._retry_connection = False
    return session


def sent_trace() -> aiohttp.TraceConfig:
    """Marks `trace_request_ctx["sent"]` once a request's headers were written to a socket."""
    trace = aiohttp.TraceConfig()

    async def on_headers_sent(session: aiohttp.ClientSession, ctx: Any, params: Any) -> None:
        if isinstance(ctx.trace_request_ctx, dict):
            ctx.trace_request_ctx["sent"] = True

    trace.on_request_headers_sent.append(on_headers_sent)
    return trace


class NodeClient:
    """A client bound to one node; every call records one operation."""

    def __init__(self, session: aiohttp.ClientSession, history: HistoryWriter, *, client: str,
                 node: str, url: str, workload: str, timeout: float,
                 headers: Mapping[str, str] | None = None) -> None:
        """`headers`: sent with every request (the ACL token, with ACLs on)."""
        self.session = session
        self.headers = dict(headers or {})
        self.history = history
        self.client = client
        self.node = node
        self.url = url.rstrip("/")
        self.workload = workload
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    def _url(self, key: str, query: dict[str, str] | None = None) -> URL:
        path = "/kv/" + urllib.parse.quote(key, safe="/@")
        if query:
            path += "?" + urllib.parse.urlencode(query)
        return URL(self.url + path, encoded=True)

    async def read(self, key: str, *, tag: str | None = None, consistency: str | None = None) -> Outcome:
        query = {"consistency": consistency} if consistency else None
        return await self._call("GET", key, None, query=query,
                                op=dict(f="read", key=key, tag=tag, consistency=consistency))

    async def write(self, key: str, value: Any, *, cond: dict[str, Any] | None = None,
                    ttl: float | None = None, tag: str | None = None, op_id: int | None = None,
                    consistency: str | None = None) -> Outcome:
        body: dict[str, Any] = {"value": value, **(cond or {})}
        if ttl is not None:
            body["ttl"] = ttl
        if consistency:
            body["consistency"] = consistency
        return await self._call("PUT", key, body, op_id=op_id,
                                op=dict(f="write", key=key, value=value, cond=cond or None, ttl=ttl,
                                        tag=tag, consistency=consistency))

    async def delete(self, key: str, *, cond: dict[str, Any] | None = None,
                     tag: str | None = None, consistency: str | None = None) -> Outcome:
        query = {k: (orjson.dumps(v).decode() if k == "if_value" else str(v))
                 for k, v in (cond or {}).items()}
        if consistency:
            query["consistency"] = consistency
        return await self._call("DELETE", key, None, query=query,
                                op=dict(f="delete", key=key, cond=cond or None, tag=tag,
                                        consistency=consistency))

    async def _call(self, method: str, key: str, body: Any, *, op: dict[str, Any],
                    query: dict[str, str] | None = None, op_id: int | None = None) -> Outcome:
        op_id = op_id if op_id is not None else self.history.next_id()
        record = {k: v for k, v in op.items() if v is not None}
        inv = self.history.invoke(op_id, client=self.client, node=self.node, workload=self.workload,
                                  **record)
        data = orjson.dumps(body) if body is not None else None
        headers = {**self.headers, "Content-Type": "application/json"} if data is not None else self.headers
        trace: dict[str, bool] = {"sent": False}
        try:
            async with self.session.request(method, self._url(key, query), data=data, headers=headers,
                                            timeout=self.timeout, trace_request_ctx=trace) as resp:
                raw = await resp.read()
                status = resp.status
        except aiohttp.ClientConnectorError as exc:
            if trace["sent"]:  # an earlier attempt reached the node: this is no "never sent"
                return self._done(op_id, inv, "unknown", error=f"sent, then {exc.os_error or exc}")
            return self._done(op_id, inv, "fail", error=f"unavailable: {exc.os_error or exc}")
        except TimeoutError:
            return self._done(op_id, inv, "unknown", error=f"timeout after {self.timeout.total}s")
        except (aiohttp.ClientError, OSError) as exc:
            return self._done(op_id, inv, "unknown", error=f"{type(exc).__name__}: {exc}")
        except asyncio.CancelledError:
            self._done(op_id, inv, "unknown", error="cancelled")
            raise
        try:
            parsed = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            parsed = None
        if status == 200:
            return self._done(op_id, inv, "ok", status=status, body=parsed)
        code = parsed.get("error") if isinstance(parsed, dict) else None
        if 400 <= status < 500 or code == "quorum_unavailable":
            return self._done(op_id, inv, "fail", status=status, body=parsed, error=code or f"http_{status}")
        return self._done(op_id, inv, "unknown", status=status, body=parsed,
                          error=f"http_{status}" + (f" {code}" if code else ""))

    def _done(self, op_id: int, inv: float, kind: str, *, status: int | None = None, body: Any = None,
              error: str | None = None) -> Outcome:
        fields: dict[str, Any] = {}
        if status is not None:
            fields["status"] = status
        if kind == "ok":
            fields["result"] = body
        if error is not None:
            fields["error"] = error
        if kind == "fail" and isinstance(body, dict):
            fields.update({k: body[k] for k in ("current", "seq") if k in body})
        self.history.complete(op_id, kind, **fields)
        return Outcome(op_id, kind, inv, status, body, error)
