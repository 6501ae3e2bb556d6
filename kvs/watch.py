"""Blocking queries: waiters parked on a key or a prefix, woken by committed versions.

No polling: a waiter is a future in a dict; each committed mutation wakes the
futures of exactly its keys and of every registered prefix that covers them.
Hundreds of idle watchers cost a dict entry each.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

from kvs.model import Version


class Watchers:
    def __init__(self) -> None:
        self._keys: dict[str, set[asyncio.Future[None]]] = defaultdict(set)
        self._prefixes: dict[str, set[asyncio.Future[None]]] = defaultdict(set)

    async def wait(self, key: str, *, prefix: bool, timeout: float) -> bool:
        """Wait for a change under `key` (or prefix); False on timeout."""
        table = self._prefixes if prefix else self._keys
        future = asyncio.get_running_loop().create_future()
        table[key].add(future)
        try:
            await asyncio.wait_for(future, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            waiters = table.get(key)
            if waiters is not None:
                waiters.discard(future)
                if not waiters:
                    del table[key]

    def notify(self, versions: list[Version]) -> None:
        for key in {v.key for v in versions}:
            self._wake(self._keys.get(key))
            for prefix, waiters in list(self._prefixes.items()):
                if key.startswith(prefix):
                    self._wake(waiters)

    def __len__(self) -> int:
        return sum(map(len, self._keys.values())) + sum(map(len, self._prefixes.values()))

    @staticmethod
    def _wake(waiters: set[asyncio.Future[None]] | None) -> None:
        for future in waiters or ():
            if not future.done():
                future.set_result(None)
