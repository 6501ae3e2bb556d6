"""The HTTP front options of issue 17 on one engine: server CPU µs per request of each.

    pip install httptools      # the C parser of option (d); not a kvs dependency
    python -m bench.front_options --ops get,put_one,cas_index --reps 5 --duration 3

One process (pinned to CPU 0, wrk on CPU 1) runs one kvs node and three more listeners
on the same engine, so every option serves the same data and pays the same engine:

    application  (a) the node's Application, as before the front: aiohttp's router for
                 every request, aiohttp's own connection class
    front        (b) the Application with kvs.http.server.front (with aiohttp's connection
                 class here: the node's own, with its header timer, is a little dearer)
    low-level    (c) aiohttp's low-level web.Server handing KV requests to the node's
                 wrapped routes (the same table the front uses), aiohttp's connection class
    protocol     (d) an asyncio Protocol on httptools calling the engine for GET and PUT
                 /kv/{key}: a prototype of the floor, not a server. It has no ACL admission,
                 body timeout, Content-Encoding, header timeout, connection cap, settle
                 wait, pipelining order for writes, Expect or chunked-body limits.
    fast path    (e) the node's own port: kvs.http.fastpath (plain KV requests served by
                 an asyncio Protocol calling the node's wrapped routes; anything else
                 handed to the Application of (b)), with kvs's connection class

Each round runs every operation on every listener back to back; the table gives medians,
and the CPU ratio to (a) is the median of per-round ratios (the CPU time is the whole
process's over one wrk run, so background work such as anti-entropy hits every cell alike).
"""

from __future__ import annotations

import argparse
import asyncio
import email.utils
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any
from urllib.parse import unquote_to_bytes

import orjson
from aiohttp import web

from bench.run import OPS, Rep, run_wrk
from bench.targets import have_taskset, pinned
from kvs.config import load
from kvs.errors import BadRequest, KVSError
from kvs.http.kv import OP_FIELDS, parse_op, write_result
from kvs.http.server import SUBTREES, front
from kvs.keys import validate_key
from kvs.node import Node
from kvs.testing import REPO_ROOT

OPTIONS = ("application", "front", "low-level", "protocol", "fast path")
_REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed",
            409: b"Conflict", 412: b"Precondition Failed"}


class _Protocol(asyncio.Protocol):
    """Option (d): httptools parses, the engine answers, one write per answer."""

    def __init__(self, node: Node) -> None:
        import httptools

        assert node.engine is not None
        self.node, self.engine = node, node.engine
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.body: list[bytes] = []
        self.transport: asyncio.Transport | None = None
        self.date = (0, b"")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except Exception:  # httptools.HttpParserError
            self.send(400, b'{"error":"bad_request"}', 0, keep=False)

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        method, path = self.parser.get_method(), self.url.split(b"?", 1)[0]
        body, self.url, self.body = b"".join(self.body), b"", []
        if not path.startswith(b"/kv/"):
            self.send(404, b'{"error":"not_found"}', self.engine.index)
        elif method == b"GET":
            try:
                found = self.engine.get(self._key(path)).json_bytes()
                self.send(200, found, self.engine.index)
            except KVSError as exc:
                self.send(exc.status, orjson.dumps(exc.body()), self.engine.index)
        elif method == b"PUT":
            asyncio.get_running_loop().create_task(self._put(path, body))
        else:
            self.send(405, b'{"error":"method_not_allowed"}', self.engine.index)

    def _key(self, path: bytes) -> str:
        try:
            return validate_key(unquote_to_bytes(path[4:]).decode())
        except UnicodeDecodeError:
            raise BadRequest("key is not valid UTF-8") from None

    async def _put(self, path: bytes, body: bytes) -> None:
        try:
            op = parse_op(orjson.loads(body), "set", self._key(path), OP_FIELDS, self.node.config)
            version = await self.engine.put(op)
            self.send(200, orjson.dumps(write_result(version)), version.modify_index)
        except KVSError as exc:
            self.send(exc.status, orjson.dumps(exc.body()), self.engine.index)

    def send(self, status: int, body: bytes, index: int, keep: bool = True) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        now = int(time.time())
        if now != self.date[0]:
            self.date = (now, email.utils.formatdate(now, usegmt=True).encode())
        transport.write(b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d"
                        b"\r\nX-KVS-Index: %d\r\nDate: %s\r\n\r\n%s"
                        % (status, _REASONS.get(status, b"Error"), len(body), index,
                           self.date[1], body))
        if not keep or not self.parser.should_keep_alive():
            transport.close()


async def _serve(data_dir: str) -> None:
    node = Node(load(environ={}, overrides={"port": 0, "data_dir": data_dir, "cas_enabled": True}))
    await node.start()
    assert node.app is not None
    loop = asyncio.get_running_loop()
    table = node.app[SUBTREES]

    async def low_level(request: web.BaseRequest) -> web.StreamResponse:
        for prefix, handler in table.get(request.method, ()):
            if request.raw_path.startswith(prefix):
                return await handler(request)  # type: ignore[arg-type]
        return web.Response(status=404)

    front_server = node.app._make_handler(loop=loop, access_log=None, handler_cancellation=True)
    front_server.request_handler = front(node.app)(front_server.request_handler)
    factories: dict[str, Any] = {
        # The Application's own server (what AppRunner builds): its router for every request.
        "application": node.app._make_handler(loop=loop, access_log=None,
                                              handler_cancellation=True),
        "front": front_server,
        "low-level": web.Server(low_level, handler_cancellation=True, access_log=None),
        "protocol": lambda: _Protocol(node),
    }
    ports = {"fast path": node.port}
    for name, factory in factories.items():
        server = await loop.create_server(factory, "127.0.0.1", 0)
        ports[name] = server.sockets[0].getsockname()[1]
    print(json.dumps(ports), flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await node.stop()


@dataclass
class _Listener:
    """What bench.run.run_wrk needs of a target."""

    name: str
    url: str
    procs: list[Any]
    kind: str = "kvs"
    token: str | None = None


def _measure(ops: Sequence[str], reps: int, duration: int, connections: int
             ) -> dict[tuple[str, str], list[Rep]]:
    pin = have_taskset()
    with tempfile.TemporaryDirectory(prefix="kvs-front-") as tmp:
        command = pinned([sys.executable, "-m", "bench.front_options", "--serve", tmp],
                         "0" if pin else None)
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT)
        try:
            assert proc.stdout is not None
            ports = json.loads(proc.stdout.readline())
            listeners = [_Listener(name, f"http://127.0.0.1:{ports[name]}", [proc])
                         for name in OPTIONS]
            put = urllib.request.Request(listeners[0].url + "/kv/bench/get", method="PUT",
                                         data=orjson.dumps({"value": "v" * 64}))
            urllib.request.urlopen(put, timeout=10).read()
            cells: dict[tuple[str, str], list[Rep]] = {}
            for rnd in range(reps + 1):  # round 0 is the warm-up
                for op in ops:
                    for listener in listeners:
                        rep = run_wrk(listener, op, 1 if rnd == 0 else duration,  # type: ignore[arg-type]
                                      f"f{rnd}", connections=connections,
                                      cpus="1" if pin else None, log_path=Path(tmp) / "wrk.log")
                        if rnd:
                            cells.setdefault((listener.name, op), []).append(rep)
                print(f"round {rnd}/{reps} done", flush=True)
            return cells
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def table(cells: dict[tuple[str, str], list[Rep]], ops: Sequence[str]) -> str:
    lines = ["| op | option | CPU µs/req | req/s (CAS: ok/s) | CPU / application |",
             "|---|---|---:|---:|---:|"]
    for op in ops:
        base = cells["application", op]
        for name in OPTIONS:
            reps = cells[name, op]
            cpu = [r.cpu_us_per_req or float("nan") for r in reps]
            ratio = median(c / (b.cpu_us_per_req or float("nan")) for c, b in zip(cpu, base, strict=True))
            rate = median(r.ok_rps if OPS[op].cas else r.rps for r in reps)
            lines.append(f"| {OPS[op].label} | {name} | {median(cpu):.0f} | {rate:,.0f} | {ratio:.2f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.front_options",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--ops", default="get,put_one,cas_index")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--duration", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--serve", metavar="DIR", help=argparse.SUPPRESS)  # the server process
    args = parser.parse_args(argv)
    if args.serve:
        import uvloop

        uvloop.run(_serve(args.serve))
        return 0
    ops = args.ops.split(",")
    print(table(_measure(ops, args.reps, args.duration, args.connections), ops))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
