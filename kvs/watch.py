"""Blocking queries: subscriptions on a key or a prefix, woken by committed versions.

No polling. A blocking GET registers one `Watch` for its whole wait; each
committed mutation appends the keys it changed to the watches of exactly those
keys and of every registered prefix that covers them, and wakes them:

    GET /kv/p/?recurse=true&index=41&wait=30s
        watch = Watch()  ->  _prefixes["p/"] = {watch, ...}
    PUT /kv/p/a  (modify_index 42)
        notify([p/a@42]) -> watch.changed = {"p/a"}, watch wakes
    the query reads only the changed keys: p/a's current modify_index 42 > 41 -> answer

A wake-up costs a read of the changed keys, never a rescan of the prefix, and an
idle watcher costs one set entry and one timer. Because a watch stays registered
between wake-ups, a change that lands while its query is checking is not lost.
Expiries found by the sweeper wake the watches of the expired keys too: the
version did not change, but what a read returns did. A stopping node closes every
watch, so its blocking queries answer at once instead of holding the shutdown for
their whole wait (a browser tab of the UI always has one open).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from kvs.model import Version


class Watch:
    """One blocking query's subscription: the keys changed since it last looked."""

    __slots__ = ("_future", "changed", "closed", "expired")

    def __init__(self, closed: bool = False) -> None:
        self.changed: set[str] = set()
        self.expired = False
        self.closed = closed
        self._future: asyncio.Future[None] | None = None

    def _add(self, key: str, expired: bool) -> None:
        self.changed.add(key)
        self.expired |= expired
        self._wake()

    def _wake(self) -> None:
        if self._future is not None and not self._future.done():
            self._future.set_result(None)

    def close(self) -> None:
        self.closed = True
        self._wake()

    async def next(self, timeout: float) -> tuple[set[str], bool] | None:
        """(changed keys, any of them expired) since the last call; None on timeout or
        once closed (the node is stopping: answer now)."""
        if self.closed:
            return None
        if not self.changed:
            self._future = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(timeout):
                    await self._future
            except TimeoutError:
                return None
            finally:
                self._future = None
            if self.closed:
                return None
        changed, expired = self.changed, self.expired
        self.changed, self.expired = set(), False
        return changed, expired


class Watchers:
    def __init__(self) -> None:
        self._keys: dict[str, set[Watch]] = {}
        self._prefixes: dict[str, set[Watch]] = {}
        self.closed = False

    @contextmanager
    def watch(self, key: str, *, prefix: bool) -> Iterator[Watch]:
        table = self._prefixes if prefix else self._keys
        watch = Watch(closed=self.closed)
        table.setdefault(key, set()).add(watch)
        try:
            yield watch
        finally:
            watches = table[key]
            watches.discard(watch)
            if not watches:
                del table[key]

    def close(self) -> None:
        """End every wait, now and from now on: the node is stopping."""
        self.closed = True
        for table in (self._keys, self._prefixes):
            for watches in table.values():
                for watch in watches:
                    watch.close()

    def notify(self, versions: list[Version]) -> None:
        """Engine listener: versions committed by one mutation."""
        if self._keys or self._prefixes:  # nobody waiting: nothing to look up
            self.notify_keys({v.key for v in versions})

    def notify_keys(self, keys: Iterable[str], *, expired: bool = False) -> None:
        for key in keys:
            for watch in self._keys.get(key, ()):
                watch._add(key, expired)
            for prefix in self._covering(key):
                for watch in self._prefixes[prefix]:
                    watch._add(key, expired)

    def _covering(self, key: str) -> list[str]:
        """Registered prefixes of `key`: a walk over whichever is shorter, the prefixes or the key."""
        if len(self._prefixes) <= len(key) + 1:
            return [p for p in self._prefixes if key.startswith(p)]
        return [key[:n] for n in range(len(key) + 1) if key[:n] in self._prefixes]

    def __len__(self) -> int:
        return sum(map(len, self._keys.values())) + sum(map(len, self._prefixes.values()))
