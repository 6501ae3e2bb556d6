"""The Python client in twenty lines: the snippet of the README and of docs/client.md.

    kvs cluster up --nodes 3                 # in another shell
    python examples/quickstart.py            # or: python examples/quickstart.py URL [URL...]

It can run any number of times: every write is either unconditional or retried.
"""

import asyncio
import sys

from kvs.client import AsyncClient, CASConflict
from kvs.coordination import Lock

NODES = sys.argv[1:] or ["http://127.0.0.1:8080", "http://127.0.0.1:8081", "http://127.0.0.1:8082"]


async def main() -> None:
    async with AsyncClient(NODES) as kv:
        await kv.put("config/feature", {"enabled": True})             # any JSON value
        v = await kv.get("config/feature")                            # VersionRecord: value, version...
        try:                                                          # write only if nobody did since
            await kv.put("config/feature", {"enabled": False}, if_version=v.version)
        except CASConflict as conflict:
            print("someone else wrote", conflict.current.version)
        hits = await kv.update("stats/hits", lambda n: (n or 0) + 1)  # read-modify-write, retried
        print("hits:", hits.value)
        async with Lock(kv, "locks/deploy", ttl=10) as lock:          # LockLost if lost meanwhile
            print("holding locks/deploy, fencing token", lock.fencing_token)
        async for event in kv.watch("config/", prefix=True):          # the state now, then changes
            print(event.index, {item.key: item.value for item in event.items})
            break                                                     # a real watcher keeps going


asyncio.run(main())
