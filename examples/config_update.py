"""Optimistic concurrency: many editors change one config document and no edit is lost.

    kvs cluster up --nodes 3                 # in another shell
    python examples/config_update.py         # 20 concurrent editors

Each editor calls `update(key, fn)`: read the document, apply `fn`, write the result with
`if_version` = the version it read. When another editor wrote first the write fails with a
409, and update() reads again and retries after a jittered backoff. So every editor's change
is in the final document, without a lock.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from kvs.client import AsyncClient

NODES = ["http://127.0.0.1:8080", "http://127.0.0.1:8081", "http://127.0.0.1:8082"]


def enable(feature: str) -> Any:
    def edit(doc: dict[str, Any] | None) -> dict[str, Any]:
        doc = doc or {"revision": 0, "features": []}   # None: the key does not exist yet
        return {"revision": doc["revision"] + 1, "features": sorted({*doc["features"], feature})}
    return edit


async def main(nodes: list[str], key: str, editors: int) -> int:
    async with AsyncClient(nodes) as kv:
        await kv.put(key, {"revision": 0, "features": []})
        results = await asyncio.gather(*(kv.update(key, enable(f"feature-{i:02d}"), retries=100)
                                         for i in range(editors)))
        doc = await kv.get(key)
        retries = sum(r.attempts - 1 for r in results)
        print(f"{editors} editors, {retries} retries after conflicts")
        print(f"{key} = revision {doc.value['revision']}, {len(doc.value['features'])} features")
        ok = doc.value["revision"] == editors and len(doc.value["features"]) == editors
        print("no update lost" if ok else "LOST UPDATES")
        return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--node", action="append", help=f"node URL, repeatable (default {NODES})")
    parser.add_argument("--key", default="examples/config")
    parser.add_argument("--editors", type=int, default=20)
    args = parser.parse_args()
    raise SystemExit(asyncio.run(main(args.node or NODES, args.key, args.editors)))
