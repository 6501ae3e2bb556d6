"""CPU time per request of the engine alone (no HTTP): txn of 4 ops, PUT random, PUT one.

    python -m bench.engine_cost                           # set cache 16 and 64 MiB, 3 rounds
    python -m bench.engine_cost --cache-mb 16,64 --ops txn4,put_random --reps 5
    python -m bench.engine_cost --cache-mb 64 --history 1         # the cost of history

What a node's request costs below its HTTP layer, steadier than through wrk: 32 tasks
call Engine.txn / Engine.put back to back (as wrk's 32 connections do, so the writes of
one event-loop round share a RocksDB batch), on real stores, one per set-cache size,
each warmed until every key has a full history (`revision_history_limit` versions) as
the HTTP bench's keys have after its warm-up. Rounds alternate between the stores.
Reported: process CPU time per request (RocksDB's threads included) and the share of
revision-set reads that missed the decoded-set cache (a RocksDB get and a decode).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import tempfile
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from bench.cpu_profile import cpu_row
from kvs.cli import GC_YOUNG_THRESHOLD
from kvs.config import load
from kvs.engine import Engine, Op
from kvs.store.cache import SetCache
from kvs.store.storage import CACHE_MAX_SET_BYTES, Storage

KEYS = 10_000  # as bench/lua/kvs_put_random.lua and kvs_txn4.lua
VALUE = "v" * 64
TASKS = 32
Workload = Callable[[Engine, random.Random], Coroutine[Any, Any, object]]


async def _txn4(engine: Engine, rng: random.Random) -> object:
    first = rng.randrange(KEYS)  # 4 neighbouring keys, as kvs_txn4.lua picks them
    return await engine.txn([Op("set", f"bench/t/{(first + i) % KEYS:05d}", VALUE) for i in range(4)])


async def _put_random(engine: Engine, rng: random.Random) -> object:
    return await engine.put(Op("set", f"bench/r/{rng.randrange(KEYS):05d}", VALUE))


async def _put_one(engine: Engine, rng: random.Random) -> object:
    return await engine.put(Op("set", "bench/one", VALUE))


OPS: dict[str, tuple[Workload, int]] = {  # workload, requests that fill every key's history
    "txn4": (_txn4, 4 * KEYS),
    "put_random": (_put_random, 15 * KEYS),
    "put_one": (_put_one, 1000),
}


class Misses:
    """Counts the decoded-set cache's lookups and misses of one store."""

    def __init__(self, storage: Storage) -> None:
        self.lookups = self.misses = 0
        self._get = storage._cache.get
        storage._cache.get = self.get  # type: ignore[method-assign]

    def get(self, key: str) -> Any:
        found = self._get(key)
        self.lookups += 1
        self.misses += found is None
        return found


async def _drive(engine: Engine, workload: Workload, requests: int) -> None:
    async def task(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(requests // TASKS):
            await workload(engine, rng)

    await asyncio.gather(*[task(random.randrange(2**32)) for _ in range(TASKS)])


def _open(directory: Path, cache_mb: int, history: int) -> tuple[Engine, Misses]:
    config = load(environ={}, overrides={"revision_history_limit": history})
    storage = Storage(directory, gc_ms=config.tombstone_gc_seconds * 1000)
    storage.ensure_identity("bench", int(time.time() * 1000))
    storage._cache = SetCache(cache_mb << 20, CACHE_MAX_SET_BYTES)
    return Engine(config, storage), Misses(storage)


async def run(ops: Sequence[str], sizes: Sequence[int], reps: int, requests: int, history: int = 10
              ) -> dict[tuple[str, int], list[tuple[float, float]]]:
    """(CPU µs per request, miss share) per round, by (operation, cache MiB)."""
    results: dict[tuple[str, int], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="kvs-engine-cost-") as tmp:
        stores = {mb: _open(Path(tmp) / f"{mb}mib", mb, history) for mb in sizes}
        try:
            for op in ops:
                workload, warm_up = OPS[op]
                for engine, _ in stores.values():
                    await _drive(engine, workload, warm_up)
                for _ in range(reps):
                    for mb, (engine, misses) in stores.items():
                        misses.lookups = misses.misses = 0
                        started = time.process_time()
                        await _drive(engine, workload, requests)
                        used = time.process_time() - started
                        results.setdefault((op, mb), []).append(
                            (1e6 * used / requests, misses.misses / max(misses.lookups, 1)))
        finally:
            for engine, _ in stores.values():
                engine.storage.close()
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.engine_cost", description=__doc__.split("\n")[0])
    parser.add_argument("--ops", default="txn4,put_random,put_one", help=f"of {', '.join(OPS)}")
    parser.add_argument("--cache-mb", default="16,64", help="set-cache sizes to compare, MiB")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--requests", type=int, default=20_000, help="per round and store")
    parser.add_argument("--history", type=int, default=10, help="revision_history_limit")
    args = parser.parse_args(argv)
    sizes = [int(mb) for mb in args.cache_mb.split(",")]
    gc.set_threshold(GC_YOUNG_THRESHOLD)  # as `kvs serve` runs
    results = asyncio.run(run(args.ops.split(","), sizes, args.reps, args.requests, args.history))
    first = sizes[0]
    print(f"\n| op | set cache | CPU µs/request | cache misses | CPU ÷ {first} MiB |")
    print("|---|---:|---:|---:|---:|")
    for (op, mb), rounds in results.items():
        print(cpu_row(rounds, results[op, first], op, f"{mb} MiB", second=".0%"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
