"""Versions, the conflict order, and how a key's set of versions is resolved.

Every write creates a `Version`. A key is stored as its *revision set*: the
versions this node knows of, newest first by the conflict order, at most
`limit` long. The first entry is the current version. The set is a pure
function of the versions a node has received, whatever order they arrived in:

    received: vB, v1, vA, vB (duplicate)       conflict order: vB > vA > v1
    set:      [vB, vA(superseded), v1]

Conflict order (docs/api.md#conflict-order), greatest wins:
  1. (timestamp, logical)      - HLC, so causally later writes win
  2. smaller origin_joined_at  - the oldest node wins a tie
  3. greater version UUID       - final tie-breaker; UUIDs are unique

`superseded` is derived, not replicated: a version is superseded when it is
not on the parent chain of the current version, i.e. it lost to a version that
did not descend from it. A plain succession v1 <- v2 <- v3 marks nothing.
"""

from __future__ import annotations

import dataclasses
import os
import random
import re
from dataclasses import dataclass, field
from typing import Any

import orjson
import xxhash

Wire = list[Any]


MAX_U64 = 2**64 - 1  # flags, indexes and timestamps are unsigned 64-bit on the wire
# Millisecond times on a replicated version (timestamp, expires_at, origin_joined_at):
# exact in a JSON double, and far below what 64-bit arithmetic on them can overflow
# (expires_at + tombstone_gc in an index key). Year 287,396: no real clock gets there.
MAX_TIME_MS = 2**53 - 1
# The HLC's logical counter; the clock carries into the next millisecond before it
# (kvs/clock.py), so a version a node makes never exceeds it.
MAX_LOGICAL = 2**32 - 1
MAX_TTL_MS = 10 * 365 * 86_400 * 1000  # ten years, the longest TTL a client may ask for
MAX_ORIGIN_LEN = 256
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

@dataclass(slots=True)
class Version:
    key: str
    value: Any
    version: str
    timestamp: int
    logical: int
    origin: str
    origin_joined_at: int
    flags: int = 0
    expires_at: int | None = None
    deleted: bool = False
    parent: str | None = None
    # Node-local fields: never hashed, never replicated.
    modify_index: int = 0
    create_index: int = 0
    superseded: bool = False
    # Cache of digest(): stored beside the version on disk, so a write rehashes only
    # the new version, not every version of the key's history.
    cached_digest: int | None = field(default=None, compare=False, repr=False)
    # Cache of row(): a version's fields do not change once it is in a revision set
    # (a new `superseded` is a new Version), so a write encodes only the new version.
    # Not init fields: dataclasses.replace() must not copy them.
    cached_row: bytes | None = field(default=None, init=False, compare=False, repr=False)
    # Cache of json_bytes(), for the same reason: a GET of a hot key re-encodes nothing.
    cached_json: bytes | None = field(default=None, init=False, compare=False, repr=False)

    def copy(self) -> Version:
        """What dataclasses.replace(self) gives (every init field, no encode caches), at a
        fraction of its cost: it runs once per replicated version a node applies, where
        the generic replace cost as much as staging the version."""
        return Version(self.key, self.value, self.version, self.timestamp, self.logical,
                       self.origin, self.origin_joined_at, self.flags, self.expires_at,
                       self.deleted, self.parent, self.modify_index, self.create_index,
                       self.superseded, self.cached_digest)

    def order_key(self) -> tuple[int, int, int, str]:
        return (self.timestamp, self.logical, -self.origin_joined_at, self.version)

    def dead_at(self) -> int | None:
        """When this version stopped being a live value (ms), if it ever does."""
        return self.timestamp if self.deleted else self.expires_at

    def is_live(self, now_ms: int) -> bool:
        return not self.deleted and (self.expires_at is None or self.expires_at > now_ms)

    def to_wire(self) -> Wire:
        """Replicated form: everything but the node-local fields."""
        return [
            self.key, self.version, self.timestamp, self.logical, self.origin,
            self.origin_joined_at, self.flags, self.expires_at, self.deleted, self.parent,
            self.value,
        ]

    def canonical(self) -> bytes:
        """Encoding hashed into the Merkle tree: independent of compression and local state."""
        return orjson.dumps(self.to_wire(), option=orjson.OPT_SORT_KEYS)

    def digest(self) -> int:
        if self.cached_digest is None:
            self.cached_digest = xxhash.xxh3_64_intdigest(self.canonical())
        return self.cached_digest

    def row(self) -> bytes:
        """This version's entry in the on-disk encoding of its revision set (encode_set)."""
        if self.cached_row is None:
            self.cached_row = _kept(orjson.dumps([*self.to_wire()[1:], self.modify_index,
                                                  self.create_index, self.superseded,
                                                  self.digest()]))
        return self.cached_row

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key, "value": self.value, "version": self.version,
            "timestamp": self.timestamp, "logical": self.logical, "origin": self.origin,
            "origin_joined_at": self.origin_joined_at, "flags": self.flags,
            "expires_at": self.expires_at, "deleted": self.deleted, "parent": self.parent,
            "superseded": self.superseded, "modify_index": self.modify_index,
            "create_index": self.create_index,
        }

    def json_bytes(self) -> bytes:
        """to_json() encoded: the body of a GET of this version."""
        if self.cached_json is None:
            self.cached_json = _kept(orjson.dumps(self.to_json()))
        return self.cached_json

    def meta(self) -> dict[str, Any]:
        """The version's identity without its value: what a 409 reports as `current`."""
        out = self.to_json()
        del out["value"]
        return out


def _kept(encoded: bytes) -> bytes:
    """A right-sized copy of orjson output that is kept for long (cached on a Version).

    orjson (3.12 and later) hands back its working buffer as the bytes object: at
    least 4 KiB, however short the JSON. A cached 200-byte row would pin 4 KiB, and
    a cache bounded by encoded size would hold twenty times its bound.
    """
    return bytes(memoryview(encoded))


_WIRE_TYPES = (str, str, int, int, str, int, int, (int, type(None)), bool, (str, type(None)))


def from_wire(item: Any) -> Version:
    """Decode a replicated version; raise ValueError on anything malformed.

    As strict as a client's write: a peer (or whoever can reach /internal/) must not be
    able to store what no client write could produce, such as a timestamp that overflows
    the index keys or a tombstone carrying a value. What depends on this node's settings
    or clock (key rules, value size, timestamps from the future) is checked by the caller.
    """
    if not isinstance(item, list) or len(item) != 11:
        raise ValueError("a version is a list of 11 fields")
    for field_value, types in zip(item, _WIRE_TYPES, strict=False):
        if not isinstance(field_value, types) or (types is int and isinstance(field_value, bool)):
            raise ValueError(f"bad version field {field_value!r}"[:200])
    key, ver, ts, logical, origin, joined, flags, expires_at, deleted, parent, value = item
    _check_wire(ver, ts, logical, origin, joined, flags, expires_at, deleted, parent, value)
    return Version(key, value, ver, ts, logical, origin, joined, flags, expires_at, deleted, parent)


def _check_wire(ver: str, ts: int, logical: int, origin: str, joined: int, flags: int,
                expires_at: int | None, deleted: bool, parent: str | None, value: Any) -> None:
    if not _UUID.fullmatch(ver) or (parent is not None and not _UUID.fullmatch(parent)):
        raise ValueError("version and parent ids must be lowercase UUIDs")
    for name, number, top in (("timestamp", ts, MAX_TIME_MS), ("logical", logical, MAX_LOGICAL),
                              ("origin_joined_at", joined, MAX_TIME_MS), ("flags", flags, MAX_U64)):
        if not 0 <= number <= top:
            raise ValueError(f"{name} must be an integer from 0 to {top}")
    # expires_at comes from the writer's wall clock, its timestamp from its HLC, which may
    # run up to max_clock_offset_ms ahead: only the upper bound is certain.
    if expires_at is not None and not 0 <= expires_at <= min(ts + MAX_TTL_MS, MAX_TIME_MS):
        raise ValueError("expires_at must be at most ten years after the timestamp")
    if not 0 < len(origin) <= MAX_ORIGIN_LEN or not origin.isprintable():
        raise ValueError("origin must be a node id")
    if deleted and (value is not None or expires_at is not None or flags):
        raise ValueError("a tombstone carries no value, expiry or flags")


_VERSION_BITS = 0xF000 << 64 | 0xC000 << 48  # a UUID's version digit and variant
_RANDOM = ~_VERSION_BITS & (2**128 - 1)
_V4_BITS = 0x4000 << 64 | 0x8000 << 48
_V7_BITS = 0x7000 << 64 | 0x8000 << 48
# A private generator seeded from os.urandom, re-seeded in a forked child: the global
# `random` is anyone's to seed (Hypothesis seeds it for every example, a test or a chaos
# run may call random.seed()), and two writes with the same id would be taken for one
# version, on this node and on every peer.
_ids = random.Random()
os.register_at_fork(after_in_child=_ids.seed)


def new_version_id() -> str:
    """A random (version 4) UUID string, without uuid.uuid4()'s syscall and object: this is
    on every write's path. Uniqueness is what matters here, not unpredictability."""
    return _uuid_string(_ids.getrandbits(128) & _RANDOM | _V4_BITS)


def new_quorum_version_id(ms: int) -> str:
    """The id of a version a quorum round writes: a version 7 UUID (its first 48 bits the
    version's timestamp, ms). Local writes only ever make version 4 ids, so any node that
    holds the version, a voter or not, can tell the key is written in quorum mode
    (is_quorum_version) and refuse local writes to it."""
    return _uuid_string((ms & (2**48 - 1)) << 80 | _ids.getrandbits(80) & _RANDOM | _V7_BITS)


def is_quorum_version(version_id: str) -> bool:
    """Whether a quorum round made this version: its id is a version 7 UUID."""
    return version_id[14] == "7"


def _uuid_string(bits: int) -> str:
    h = f"{bits:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def wins(a: Version, b: Version) -> bool:
    """True if `a` beats `b` in the conflict order."""
    return a.order_key() > b.order_key()


def resolve(versions: list[Version], limit: int) -> list[Version]:
    """The revision set for these versions: deduplicated, newest first, trimmed, flags derived."""
    unique = {v.version: v for v in versions}
    return _flagged(sorted(unique.values(), key=Version.order_key, reverse=True)[:limit])


def add_newest(resolved: list[Version], version: Version, limit: int) -> list[Version]:
    """resolve([*resolved, version], limit) for a version that is not in the resolved set
    and beats its current version: nothing to deduplicate or sort (every local write).

    When it descends from the current version (a plain succession, the common case),
    no flag changes either: the current's chain only gains the new version, and the
    one trimmed off the end is the oldest, which no kept version's chain runs through
    (a parent is always older than its child: the child's HLC stamp exceeds it).
    """
    ordered = [version, *resolved[:limit - 1]]
    if resolved and version.parent == resolved[0].version and not version.superseded:
        return ordered
    return _flagged(ordered)


def _flagged(ordered: list[Version]) -> list[Version]:
    """Versions in conflict order with `superseded` derived from the current's parent chain."""
    by_id = {v.version: v for v in ordered}
    chain: set[str] = set()
    cursor: Version | None = ordered[0] if ordered else None
    while cursor is not None and cursor.version not in chain:
        chain.add(cursor.version)
        cursor = by_id.get(cursor.parent) if cursor.parent else None
    return [
        v if v.superseded == (v.version not in chain)
        else dataclasses.replace(v, superseded=v.version not in chain)
        for v in ordered
    ]


def set_digest(key: str, versions: list[Version]) -> int:
    """Merkle leaf for a key: covers every version in its set, so history converges too."""
    h = xxhash.xxh3_64(key.encode())
    for v in versions:
        h.update(v.digest().to_bytes(8, "big"))
    return h.intdigest()


# On-disk form of one version: wire fields + the node-local ones + the cached digest.
def encode_set(versions: list[Version]) -> bytes:
    return b"[" + b",".join([v.row() for v in versions]) + b"]"


def decode_set(key: str, raw: bytes) -> list[Version]:
    return [Version(key, r[9], *r[:9], *r[10:]) for r in orjson.loads(raw)]
