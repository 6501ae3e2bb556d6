"""Hybrid logical clock (Kulkarni et al.): wall-clock milliseconds plus a logical counter.

Why: versions are ordered by (timestamp, logical). A plain wall clock would let a
node whose clock runs behind write a version that loses to one it has already
seen. The HLC never goes below anything observed, so a write accepted after a
node has seen version v is always ordered after v, whatever the wall clocks say:

    wall:   100   100   100   (peer sends 250/0)   101
    HLC:  100/0 100/1 100/2        250/1          250/2

The physical part follows the largest wall time seen, the logical part breaks
ties. `now_ms` is injectable so tests can skew or freeze the clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable

Stamp = tuple[int, int]


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


class HLC:
    __slots__ = ("_logical", "_physical", "now_ms")

    def __init__(self, now_ms: Callable[[], int] = wall_ms, last: Stamp = (0, 0)) -> None:
        self.now_ms = now_ms
        self._physical, self._logical = last

    @property
    def last(self) -> Stamp:
        return self._physical, self._logical

    def tick(self) -> Stamp:
        """Stamp for a local event; strictly greater than every stamp issued or observed."""
        wall = self.now_ms()
        if wall > self._physical:
            self._physical, self._logical = wall, 0
        else:
            self._logical += 1
        return self._physical, self._logical

    def observe(self, stamp: Stamp) -> None:
        """Fold in a stamp seen on a remote version, so later local stamps exceed it."""
        if stamp > (self._physical, self._logical):
            self._physical, self._logical = stamp
