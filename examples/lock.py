"""A lock around a critical section: one process at a time runs it.

    kvs cluster up --nodes 3                 # in another shell
    python examples/lock.py & python examples/lock.py & python examples/lock.py

The three take turns. `kill -9` the one holding the lock: the next one gets it once the
holder's lease (--ttl) has run out. Delete the key behind the holder's back
(`kvs delete examples/lock`) and the holder notices at once and stops its work.
"""

from __future__ import annotations

import argparse
import asyncio
import os

from kvs.client import AsyncClient
from kvs.coordination import Lock, LockLost

NODES = ["http://127.0.0.1:8080", "http://127.0.0.1:8081", "http://127.0.0.1:8082"]


async def main(nodes: list[str], key: str, ttl: float, work: float) -> int:
    me = f"pid {os.getpid()}"
    async with AsyncClient(nodes) as kv:
        lock = Lock(kv, key, ttl=ttl, holder=me)
        print(f"{me}: waiting for {key}", flush=True)
        try:
            async with lock:  # acquires; renews every ttl/3; releases on exit
                print(f"{me}: holding {key} (fencing token {lock.fencing_token})", flush=True)
                await asyncio.sleep(work)  # the critical section; cancelled if the lock is lost
        except LockLost as exc:
            print(f"{me}: {exc.message}; stopped", flush=True)
            return 1
        print(f"{me}: done, released {key}", flush=True)
        return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--node", action="append", help=f"node URL, repeatable (default {NODES})")
    parser.add_argument("--key", default="examples/lock")
    parser.add_argument("--ttl", type=float, default=5.0, help="lease seconds")
    parser.add_argument("--work", type=float, default=3.0, help="seconds spent holding the lock")
    args = parser.parse_args()
    raise SystemExit(asyncio.run(main(args.node or NODES, args.key, args.ttl, args.work)))
