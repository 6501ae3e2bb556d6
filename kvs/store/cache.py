"""Decoded revision sets kept in memory (an LRU bounded by encoded size)."""

from __future__ import annotations

from collections import OrderedDict

from kvs.model import Version


class SetCache:
    """LRU of decoded revision sets (and their Merkle leaf digests once known), bounded
    by their encoded size.

    Never stale: `Storage.write` is the only writer of revision sets and puts every
    set it stages here.
    """

    def __init__(self, max_bytes: int, max_entry_bytes: int) -> None:
        self._entries: OrderedDict[str, tuple[list[Version], int, int | None]] = OrderedDict()
        self._bytes = 0
        self._max_bytes = max_bytes
        self._max_entry_bytes = max_entry_bytes

    def get(self, key: str) -> list[Version] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def digest(self, key: str, versions: list[Version]) -> int | None:
        """The set digest of `versions` if they are the cached set and it is known."""
        entry = self._entries.get(key)
        return entry[2] if entry is not None and entry[0] is versions else None

    def put(self, key: str, versions: list[Version], size: int, digest: int | None) -> None:
        """Cache the key's set; an empty or oversized one only drops the old entry."""
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= old[1]
        if not versions or size > self._max_entry_bytes:
            return
        self._entries[key] = (versions, size, digest)
        self._bytes += size
        while self._bytes > self._max_bytes:
            self._bytes -= self._entries.popitem(last=False)[1][1]
