"""Hybrid logical clock (Kulkarni et al.): wall-clock milliseconds plus a logical counter.

Why: versions are ordered by (timestamp, logical). A plain wall clock would let a
node whose clock runs behind write a version that loses to one it has already
seen. The HLC never goes below anything observed, so a write accepted after a
node has seen version v is always ordered after v, whatever the wall clocks say:

    wall:   100   100   100   (peer sends 250/0)   101
    HLC:  100/0 100/1 100/2        250/1          250/2

The physical part follows the largest wall time seen, the logical part breaks
ties. `now_ms` is injectable so tests can skew or freeze the clock.

What the HLC may observe is bounded by its caller: a remote stamp more than
`max_clock_offset_ms` ahead of the local wall clock is refused, never observed
(Engine.apply_remote), so one peer with a wrong clock cannot drag every node's
HLC, and every timestamp it issues afterwards, into the future. `ClockMonitor`
tells a node whether its own clock is the wrong one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kvs.model import MAX_LOGICAL

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
        elif self._logical < MAX_LOGICAL:
            self._logical += 1
        else:  # carry, so no version this node makes exceeds what peers accept
            self._physical, self._logical = self._physical + 1, 0
        return self._physical, self._logical

    def observe(self, stamp: Stamp) -> None:
        """Fold in a stamp seen on a remote version, so later local stamps exceed it."""
        if stamp > (self._physical, self._logical):
            self._physical, self._logical = stamp


@dataclass(frozen=True, slots=True)
class Offset:
    """One measurement of how far this node's clock is from one peer's.

    `offset_ms` is ours minus theirs (positive: we are ahead), None when the peer
    refused our signed timestamp outright (outside its authentication window, so off
    by more than that window). `uncertainty_ms` is half the round trip: the true
    offset lies within offset_ms +- uncertainty_ms.
    """

    offset_ms: int | None
    uncertainty_ms: int
    at: float  # monotonic seconds

    def beyond(self, max_offset_ms: int) -> bool:
        """Off by more than the maximum even in the most favourable case."""
        return self.offset_ms is None or abs(self.offset_ms) - self.uncertainty_ms > max_offset_ms


class ClockMonitor:
    """Is this node's wall clock off from its peers' by more than max_clock_offset_ms?

    Fed with round trips (SWIM pings, joins): we send at `sent_ms`, the peer answers with
    its clock, we receive at `received_ms`; as NTP and CockroachDB do, the peer read its
    clock halfway, within half the round trip. A node is *skewed* when more than half of
    the peers measured in the last `keep_s` seconds are off by more than the maximum:

        offsets to peers: [+1 day, +1 day]   -> skewed (we are the odd one out)
        offsets to peers: [0 ms, -1 day]     -> in range (one peer is off, not us)
        one peer only:    [+1 min]           -> skewed: with two nodes nobody can tell
                                                which clock is wrong, so both say so
    """

    def __init__(self, max_offset_ms: int, *, keep_s: float = 60.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.max_offset_ms = max_offset_ms
        self.keep_s = keep_s
        self._monotonic = monotonic
        self._offsets: dict[str, Offset] = {}
        self._verdict: tuple[bool, float] = (False, 0.0)  # (skewed, valid until)

    def round_trip(self, peer: str, sent_ms: int, remote_ms: int, received_ms: int) -> None:
        half = max(0, received_ms - sent_ms) // 2
        # Uncertainty + 1: the clocks are read in whole milliseconds.
        self._record(peer, Offset(sent_ms + half - remote_ms, half + 1, self._monotonic()))

    def refused(self, peer: str) -> None:
        """The peer refused our signed timestamp as outside its window."""
        self._record(peer, Offset(None, 0, self._monotonic()))

    def _record(self, peer: str, offset: Offset) -> None:
        self._offsets[peer] = offset
        self._verdict = (False, 0.0)

    def _fresh(self, now: float) -> dict[str, Offset]:
        cutoff = now - self.keep_s
        return {peer: o for peer, o in self._offsets.items() if o.at > cutoff}

    @property
    def skewed(self) -> bool:
        """On every client write: recomputed only after a measurement or when one ages out."""
        now = self._monotonic()
        verdict, until = self._verdict
        if now < until:
            return verdict
        fresh = self._fresh(now)
        self._offsets = fresh
        beyond = sum(1 for o in fresh.values() if o.beyond(self.max_offset_ms))
        verdict = 2 * beyond > len(fresh)
        oldest = min((o.at for o in fresh.values()), default=now)
        self._verdict = (verdict, oldest + self.keep_s)
        return verdict

    def report(self) -> dict[str, Any]:
        """What /health, /cluster/status and /metrics say about this node's clock."""
        now = self._monotonic()
        fresh = self._fresh(now)
        known = [o.offset_ms for o in fresh.values() if o.offset_ms is not None]
        return {
            "skewed": self.skewed,
            "max_offset_ms": self.max_offset_ms,
            # Ours minus the peers', median: what to correct this node's clock by (negated).
            "offset_ms": sorted(known)[len(known) // 2] if known else None,
            "peers": {peer: {"offset_ms": o.offset_ms, "uncertainty_ms": o.uncertainty_ms,
                             "age_ms": int((now - o.at) * 1000),
                             "beyond_max": o.beyond(self.max_offset_ms)}
                      for peer, o in sorted(fresh.items())},
        }
