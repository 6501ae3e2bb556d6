"""The Python HTTP ceiling: trivial GET/PUT handlers on a dict, on kvs's stack.

Same routes and body shapes as the kvs API, orjson, uvloop, no access log, but no
validation, no storage, no versions: whatever kvs does beyond this is its own cost.
Two HTTP servers: aiohttp's (the default), and with `--fast` the one a kvs node runs
(kvs/http/fastpath.py in front of aiohttp, the handlers wrapped by kvs's route wrapper),
the ceiling of issue 17 since kvs serves its plain requests that way.

    python -m bench.bare_app --port 0                  # dict only, aiohttp
    python -m bench.bare_app --port 0 --fast           # dict only, kvs's fast path
    python -m bench.bare_app --port 0 --fsync-dir D    # naive fsync-per-write baseline

With `--fsync-dir`, every PUT and txn also writes to RocksDB with `sync=True`,
blocking the event loop for the fsync: one fsync per request, no group commit.
That is the "naive" durable server that kvs `sync_writes: true` is compared with.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
from typing import Any

import orjson
from aiohttp import web

from kvs.http import connections, fastpath, server

PREFIX = "/kv/"
BODY_LIMIT = 1 << 20


def _key(request: web.Request) -> str:
    """The key as sent (still percent-encoded: the bench's keys have nothing to decode);
    read from the raw path (the fast path's requests have no match_info)."""
    return request.raw_path[len(PREFIX):]


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


class BareApp:
    def __init__(self, fsync_dir: str | None = None) -> None:
        self.data: dict[str, Any] = {}
        self.index = 0
        self.db: Any = None
        self.write_opt: Any = None
        if fsync_dir is not None:
            import rocksdict

            self.db = rocksdict.Rdict(fsync_dir)
            self.write_opt = rocksdict.WriteOptions()
            self.write_opt.sync = True

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/health", self.health),
            web.get(r"/kv/{key:[\s\S]*}", self.get),
            web.put(r"/kv/{key:[\s\S]*}", self.put),
            web.post("/txn", self.txn),
        ]

    async def health(self, request: web.Request) -> web.Response:
        return _json({"status": "ok", "node": "bare"})

    async def get(self, request: web.Request) -> web.Response:
        key = _key(request)
        if key not in self.data:
            return _json({"error": "not_found", "message": key}, 404)
        return _json({"key": key, "value": self.data[key]})

    def _set(self, key: str, value: Any) -> int:
        self.data[key] = value
        self.index += 1
        if self.db is not None:
            self.db.put(key, orjson.dumps(value), self.write_opt)
        return self.index

    async def put(self, request: web.Request) -> web.Response:
        key = _key(request)
        body = orjson.loads(await request.read())
        index = self._set(key, body["value"])
        return _json({"key": key, "modify_index": index})

    async def txn(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        results = []
        for op in body["ops"]:
            if op["op"] == "set":
                results.append({"key": op["key"], "modify_index": self._set(op["key"], op["value"])})
            else:
                results.append(self.data.get(op["key"]))
        return _json({"results": results})

    def close(self) -> None:
        if self.db is not None:
            self.db.close()


async def serve(port: int, fsync_dir: str | None, fast: bool) -> None:
    app_state = BareApp(fsync_dir)
    if fast:
        app = server.make_app(app_state.routes(), secret=None, client_max_size=BODY_LIMIT)
    else:
        app = web.Application()
        app.add_routes(app_state.routes())
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(1024)
    sock.setblocking(False)
    if fast:
        await connections.serve(runner, sock, connections.ConnectionLimit(10_000),
                                header_timeout=10.0, keepalive_timeout=75.0,
                                fast=fastpath.fast_routes(app), client_max_size=BODY_LIMIT)
    else:
        await web.SockSite(runner, sock).start()
    print(f"bare app listening on http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        app_state.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bare_app", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--fsync-dir", default=None, help="RocksDB dir: fsync every write (naive)")
    parser.add_argument("--fast", action="store_true", help="serve through kvs's fast path")
    args = parser.parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(args.port, args.fsync_dir, args.fast))


if __name__ == "__main__":
    main()
