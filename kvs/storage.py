"""RocksDB adapter: the only module that imports rocksdict.

Each mutation of any number of keys is ONE WriteBatch holding, for every key:
its revision set, the expiry / purge index entries of its current version, its
Merkle leaf and segment hash; and once per batch the node's index counter, HLC
and purge watermark. A kill -9 at any moment therefore leaves all of them
consistent, and the index counter can never go backwards or repeat.

Durability: RocksDB writes the WAL with write(2) on every batch, so a process
crash loses nothing that was acknowledged. With sync_writes, acknowledgement
waits for a group commit: one fsync of the WAL (in a worker thread, so the
event loop keeps serving) covers every batch written before it started.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import rocksdict

from kvs import keys as K
from kvs.clock import Stamp, wall_ms
from kvs.merkle import MerkleTree, segment_of
from kvs.model import Version, decode_set, encode_set, set_digest

log = logging.getLogger("kvs.storage")

# Decoded revision sets kept in memory, by their encoded size: decoding a set (orjson
# plus a Version per entry) is most of a GET and a good part of a PUT on a hot key.
# Sets larger than CACHE_MAX_SET_BYTES are not cached; they would evict everything else.
CACHE_BYTES = 16 << 20
CACHE_MAX_SET_BYTES = 256 << 10

_COMPRESSION = {
    "none": rocksdict.DBCompressionType.none,
    "zstd": rocksdict.DBCompressionType.zstd,
    "lz4": rocksdict.DBCompressionType.lz4,
}


@dataclass(slots=True)
class Change:
    """One key's revision set before and after a mutation (empty `new`: purge the key)."""

    key: str
    old: list[Version]
    new: list[Version]


def _timers(current: Version | None, gc_ms: int, now: int) -> tuple[bytes | None, bytes | None]:
    """(expiry entry, purge entry) that the current version of a key needs."""
    if current is None:
        return None, None
    dead_at = current.dead_at()
    if current.deleted or (dead_at is not None and dead_at <= now):
        return None, K.purge_key(dead_at + gc_ms, current.key)  # type: ignore[operator]
    if dead_at is not None:
        return K.expiry_key(dead_at, current.key), None
    return None, None


class Storage:
    def __init__(self, path: Path, *, compression: str = "none", gc_ms: int = 86_400_000) -> None:
        path.mkdir(parents=True, exist_ok=True)
        opts = rocksdict.Options(raw_mode=True)
        opts.create_if_missing(True)
        opts.set_compression_type(_COMPRESSION[compression]())
        # One writer at a time (the engine's lock): the memtable need not pay for concurrent inserts.
        opts.set_allow_concurrent_memtable_write(False)
        try:
            self.db = rocksdict.Rdict(str(path), opts)
        except Exception as exc:
            raise OSError(
                f"cannot open RocksDB in {path}: {exc}. Is another kvs node using this data_dir?"
            ) from exc
        self.gc_ms = gc_ms
        self.node_id = self._meta_str(K.META_NODE_ID)
        self.joined_at = self._meta_int(K.META_JOINED_AT)
        self.index = self._meta_int(K.META_INDEX)
        self.purged_through = self._meta_int(K.META_PURGED)
        self.live_keys = self._meta_int(K.META_LIVE)
        raw_hlc = self.db.get(K.META_HLC)
        self.hlc: Stamp = (
            (int.from_bytes(raw_hlc[:8], "big"), int.from_bytes(raw_hlc[8:], "big"))
            if raw_hlc else (0, 0)
        )
        self.tree = MerkleTree({
            int.from_bytes(k[1:], "big"): int.from_bytes(v, "big")
            for k, v in self._scan(K.SEGMENT)
        })
        self.group = GroupCommit(lambda: self.db.flush_wal(True))
        self._cache = SetCache(CACHE_BYTES, CACHE_MAX_SET_BYTES)

    # -- identity -----------------------------------------------------------------

    def ensure_identity(self, node_id: str | None, now_ms: int) -> None:
        """Create node id and joined_at once; a configured id must match the stored one."""
        if self.node_id is not None and node_id is not None and node_id != self.node_id:
            raise OSError(
                f"data_dir belongs to node {self.node_id!r} but node_id is {node_id!r}; "
                "use the stored id or a fresh data_dir"
            )
        if self.node_id is None:
            self.node_id = node_id or uuid.uuid4().hex[:12]
            self.joined_at = now_ms
            batch = rocksdict.WriteBatch(raw_mode=True)
            batch.put(K.META_NODE_ID, self.node_id.encode())
            batch.put(K.META_JOINED_AT, K.u64(now_ms))
            self.db.write(batch)
            self.db.flush_wal(True)

    # -- reads --------------------------------------------------------------------

    def read(self, key: str) -> list[Version]:
        """The key's revision set. Callers must not modify it: it may be the cached one."""
        versions = self._cache.get(key)
        if versions is None:
            raw = self.db.get(K.versions_key(key))
            if raw is None:
                return []
            versions = decode_set(key, raw)
            self._cache.put(key, versions, len(raw))
        return versions

    def scan_sets(self, prefix: str, after: str | None = None) -> Iterator[list[Version]]:
        """Revision sets of keys under `prefix`, in key order, starting after `after`."""
        start = K.versions_key(after) + b"\x00" if after is not None else K.versions_key(prefix)
        head = K.versions_key(prefix)
        for raw_key, raw in self._scan(head, start):
            yield decode_set(raw_key[1:].decode(), raw)

    def due(self, kind: bytes, now: int) -> list[tuple[int, str]]:
        """Expiry or purge index entries whose time has come."""
        out = []
        for raw_key, _ in self._scan(kind):
            when, key = K.split_timed(raw_key)
            if when > now:
                break
            out.append((when, key))
        return out

    def count_pending_purge(self) -> int:
        """Tombstones and expired versions still stored (scans the purge index)."""
        return sum(1 for _ in self._scan(K.PURGE))

    def has(self, raw_key: bytes) -> bool:
        return self.db.get(raw_key) is not None

    def leaves(self, segment: int) -> dict[str, int]:
        """Key -> set digest for one Merkle segment."""
        return {
            K.split_leaf(k)[1]: int.from_bytes(v, "big")
            for k, v in self._scan(K.leaf_key(segment, ""))
        }

    def _scan(self, prefix: bytes, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        it = self.db.iter()
        it.seek(start if start is not None else prefix)
        while it.valid():
            k = it.key()
            if not k.startswith(prefix):
                break
            yield k, it.value()
            it.next()

    # -- the one write path -------------------------------------------------------

    def write(
        self, changes: list[Change], *, now: int, purged_through: int | None = None,
        expired: list[tuple[int, str]] = (),  # type: ignore[assignment]
    ) -> int:
        """Commit changes (and sweeper expiries) in one batch; returns a group-commit ticket."""
        batch = rocksdict.WriteBatch(raw_mode=True)
        deltas: dict[int, int] = {}
        cached: list[tuple[str, list[Version], int]] = []  # the cache's new entries, once written
        live = self.live_keys
        for change in changes:
            live += self._stage(batch, change, now, deltas, cached)
        for expires_at, key in expired:
            batch.delete(K.expiry_key(expires_at, key))
            batch.put(K.purge_key(expires_at + self.gc_ms, key), b"")
            live -= 1
        for segment, delta in deltas.items():
            batch.put(K.segment_key(segment), K.u64(self.tree.segment(segment) ^ delta))
        batch.put(K.META_INDEX, K.u64(self.index))
        batch.put(K.META_LIVE, K.u64(live))
        batch.put(K.META_HLC, K.u64(self.hlc[0]) + K.u64(self.hlc[1]))
        if purged_through is not None:
            batch.put(K.META_PURGED, K.u64(purged_through))
        self.db.write(batch)
        for key, versions, size in cached:
            self._cache.put(key, versions, size)
        self.live_keys = live
        if purged_through is not None:
            self.purged_through = purged_through
        for segment, delta in deltas.items():
            self.tree.apply(segment, delta)
        return self.group.note_write()

    def _stage(self, batch: rocksdict.WriteBatch, change: Change, now: int,
               deltas: dict[int, int], cached: list[tuple[str, list[Version], int]]) -> int:
        """Add one key's change to the batch; returns the live-key count delta."""
        key = change.key
        old = change.old[0] if change.old else None
        new = change.new[0] if change.new else None
        live_delta = self._counted(new, now, fresh=True) - self._counted(old, now, fresh=False)
        if old is not None:
            # Whatever entry the old current had (swept or not), it goes; the new one is put.
            if old.expires_at is not None:
                batch.delete(K.expiry_key(old.expires_at, key))
            dead_at = old.dead_at()
            if dead_at is not None:
                batch.delete(K.purge_key(dead_at + self.gc_ms, key))
        for entry in _timers(new, self.gc_ms, now):
            if entry is not None:
                batch.put(entry, b"")
        segment = segment_of(key)
        old_digest = set_digest(key, change.old) if change.old else 0
        if change.new:
            encoded = encode_set(change.new)
            batch.put(K.versions_key(key), encoded)
            cached.append((key, change.new, len(encoded)))
            new_digest = set_digest(key, change.new)
            batch.put(K.leaf_key(segment, key), K.u64(new_digest))
        else:
            batch.delete(K.versions_key(key))
            batch.delete(K.leaf_key(segment, key))
            cached.append((key, [], 0))  # forgotten, not cached: purged keys would pile up
            new_digest = 0
        if old_digest != new_digest:
            deltas[segment] = deltas.get(segment, 0) ^ old_digest ^ new_digest
        return live_delta

    def _counted(self, current: Version | None, now: int, *, fresh: bool) -> int:
        """1 if this current version is in the live-key count.

        A TTL version leaves the count when the sweeper processes its expiry entry,
        so for a stored version whose expiry has passed, the entry tells.
        """
        if current is None or current.deleted:
            return 0
        if current.expires_at is None or current.expires_at > now:
            return 1
        return 0 if fresh else int(self.has(K.expiry_key(current.expires_at, current.key)))

    async def durable(self, ticket: int) -> None:
        await self.group.wait(ticket)

    def close(self) -> None:
        self.db.flush_wal(True)
        self.db.close()

    # -- meta helpers --------------------------------------------------------------

    def _meta_int(self, name: bytes) -> int:
        raw = self.db.get(name)
        return int.from_bytes(raw, "big") if raw else 0

    def _meta_str(self, name: bytes) -> str | None:
        raw = self.db.get(name)
        return raw.decode() if raw else None

    def check_consistency(self) -> list[str]:
        """Recompute every derived structure from the revision sets; list disagreements.

        Used by crash tests and `kvs status --verify`: after a kill -9 these must agree.
        """
        problems: list[str] = []
        rebuilt: dict[int, int] = {}
        now = wall_ms()
        live = 0
        for versions in self.scan_sets(""):
            key = versions[0].key
            seg = segment_of(key)
            for v in versions:
                v.cached_digest = None  # recompute from the content, trust nothing stored
            digest = set_digest(key, versions)
            rebuilt[seg] = rebuilt.get(seg, 0) ^ digest
            stored = self.db.get(K.leaf_key(seg, key))
            if stored is None or int.from_bytes(stored, "big") != digest:
                problems.append(f"leaf of {key!r} does not match its revision set")
            expiry, purge = _timers(versions[0], self.gc_ms, now)
            cur = versions[0]
            if expiry is not None and not self.has(expiry):
                problems.append(f"{key!r} lacks its expiry entry")
            if purge is not None and not (self.has(purge) or (
                    cur.expires_at and self.has(K.expiry_key(cur.expires_at, key)))):
                problems.append(f"{key!r} lacks its purge entry")
            live += self._counted(cur, now, fresh=False)
            if max(v.modify_index for v in versions) > self.index:
                problems.append(f"{key!r} has a modify_index above the counter {self.index}")
        expected = MerkleTree(rebuilt)
        if expected.levels[-1] != self.tree.levels[-1]:
            problems.append("persisted Merkle segments differ from a rebuild")
        if live != self.live_keys:
            problems.append(f"live-key count {self.live_keys} but {live} live keys found")
        return problems


class GroupCommit:
    """Share one WAL fsync among every writer waiting for durability.

    Tickets are issued in write order. A sync that starts after ticket t was
    issued makes t durable, so each waiter needs only the first sync that begins
    after its write; writers arriving during a sync share the next one.
    """

    def __init__(self, flush: Callable[[], None]) -> None:
        self._flush = flush
        self._issued = 0
        self._synced = 0
        self.syncs = 0  # fsyncs run: far fewer than writes under concurrency
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None

    @property
    def issued(self) -> int:
        return self._issued

    @property
    def synced(self) -> int:
        """Every ticket up to this one is covered by a completed fsync."""
        return self._synced

    def note_write(self) -> int:
        self._issued += 1
        return self._issued

    async def wait(self, ticket: int) -> None:
        if ticket <= self._synced:
            return
        future = asyncio.get_running_loop().create_future()
        self._waiters.append((ticket, future))
        if self._task is None:
            self._task = asyncio.create_task(self._run())
        await future

    async def _run(self) -> None:
        try:
            while self._waiters:
                target = self._issued
                try:
                    await asyncio.to_thread(self._flush)
                except Exception as exc:  # disk failure: every waiter must hear it
                    self._release(target, exc)
                    continue
                self.syncs += 1
                self._synced = target
                self._release(target, None)
        finally:
            self._task = None

    def _release(self, target: int, exc: Exception | None) -> None:
        still = []
        for ticket, future in self._waiters:
            if ticket > target:
                still.append((ticket, future))
            elif not future.done():
                if exc is None:
                    future.set_result(None)
                else:
                    future.set_exception(OSError(f"fsync of the write-ahead log failed: {exc}"))
        self._waiters = still


class SetCache:
    """LRU of decoded revision sets, bounded by their encoded size.

    Never stale: `Storage.write` is the only writer of revision sets and puts every
    set it commits here, after the batch is written.
    """

    def __init__(self, max_bytes: int, max_entry_bytes: int) -> None:
        self._entries: OrderedDict[str, tuple[list[Version], int]] = OrderedDict()
        self._bytes = 0
        self._max_bytes = max_bytes
        self._max_entry_bytes = max_entry_bytes

    def get(self, key: str) -> list[Version] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, key: str, versions: list[Version], size: int) -> None:
        """Cache the key's set; an empty or oversized one only drops the old entry."""
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= old[1]
        if not versions or size > self._max_entry_bytes:
            return
        self._entries[key] = (versions, size)
        self._bytes += size
        while self._bytes > self._max_bytes:
            self._bytes -= self._entries.popitem(last=False)[1][1]
