"""Service registration with a TTL heartbeat, and discovery (blocking `Client`, no asyncio).

    kvs cluster up --nodes 3                 # in another shell
    python examples/service_registration.py --name web-1 --port 8001
    python examples/service_registration.py --name web-2 --port 8002

Each registers itself with a ttl, renews the registration every ttl/3 and prints the
services it can see. Ctrl-C deregisters at once; after `kill -9` the registration
disappears by itself when its ttl runs out. `kvs services` shows the registry.
"""

from __future__ import annotations

import argparse
import contextlib
import time

from kvs.client import Client, NotFound

NODES = ["http://127.0.0.1:8080", "http://127.0.0.1:8081", "http://127.0.0.1:8082"]


def main(nodes: list[str], name: str, port: int, ttl: float, duration: float | None) -> int:
    with Client(nodes) as kv:
        kv.register_service(name, address="127.0.0.1", port=port, tags=["example"], ttl=ttl)
        print(f"registered {name} on port {port} (ttl {ttl:g}s)", flush=True)
        end = None if duration is None else time.monotonic() + duration
        seen: list[str] = []
        try:
            while end is None or time.monotonic() < end:
                time.sleep(min(ttl / 3, max(0.0, end - time.monotonic())) if end else ttl / 3)
                try:
                    kv.renew_service(name)
                except NotFound:  # we were too late (or someone deregistered us): register again
                    kv.register_service(name, address="127.0.0.1", port=port, tags=["example"], ttl=ttl)
                visible = sorted(f"{s.name}@{s.address}:{s.port}" for s in kv.list_services())
                if visible != seen:
                    print("services:", ", ".join(visible) or "(none)", flush=True)
                    seen = visible
        finally:
            with contextlib.suppress(NotFound):
                kv.deregister_service(name)
            print(f"deregistered {name}", flush=True)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--node", action="append", help=f"node URL, repeatable (default {NODES})")
    parser.add_argument("--name", default="example-service")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--ttl", type=float, default=9.0)
    parser.add_argument("--duration", type=float, help="deregister and exit after this many seconds")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main(args.node or NODES, args.name, args.port, args.ttl, args.duration))
