"""Memory after a mass expiry: what a written key costs, and what is left once it expired."""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import Callable

from kvs.engine import Engine
from tests.test_engine import Clock, clock, open_engine, put  # noqa: F401

KEYS = 20_000
TTL_MS = 1000


async def test_expired_keys_leave_memory_and_a_written_key_costs_about_its_size(
        open_engine: Callable[..., Engine], clock: Clock) -> None:  # noqa: F811
    engine = open_engine()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for start in range(0, KEYS, 500):
            await asyncio.gather(*(engine.put(put(f"exp/{i:06d}", {"n": i}, ttl_ms=TTL_MS))
                                   for i in range(start, start + 500)))
        written = tracemalloc.get_traced_memory()[0] - base
        clock.now += TTL_MS
        assert await engine.sweep() == (KEYS, 0)
        left = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    print(f"{KEYS} keys: {written / KEYS:.0f} B/key held after writing, "
          f"{left / KEYS:.0f} B/key after they expired")
    # A set of ~180 encoded bytes, decoded and cached: ~1 KB (it was 4.6 KB: every cached
    # row pinned orjson's 4 KiB buffer).
    assert written / KEYS < 2048
    # The sweeper drops expired sets from the cache: what stays is the Merkle tree's share.
    assert left < written / 4
