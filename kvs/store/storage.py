"""RocksDB adapter: the only module that imports rocksdict.

Each mutation of any number of keys stages, for every key: its revision set, the
expiry / purge index entries of its current version, its Merkle leaf and segment
hash. Staged mutations are written together, in ONE WriteBatch that also holds the
node's index counter, HLC and purge watermark, at the end of the event loop's
current round (write coalescing): 32 concurrent PUTs cost one RocksDB write, and a
hot key's record is written once, not 32 times. A batch is a union of whole
mutations, so a kill -9 at any moment leaves all of them consistent, and the index
counter can never go backwards or repeat.

    mutation ─► stage (memory: visible to reads) ─► written (db.write: survives a
    process crash) ─► synced (WAL fsync: survives power loss; sync_writes only)

Durability: a request is acknowledged only once its ticket is *written* (RocksDB
writes the WAL with write(2)), or *synced* with sync_writes: one fsync of the WAL
covers every batch written before it started (group commit). On a slow disk it runs
in a worker thread so the event loop keeps serving; a quick one is fsynced on the
loop (see `Commits`).

Storage faults (a full disk, an I/O error): a batch that fails to write stays
pending, so reads (point reads and scans alike) keep showing memory; writes are
refused (see `Commits`) until `recover()`, retried by the node, gets a fresh RocksDB
handle and writes the batch.
"""

from __future__ import annotations

import contextlib
import gc
import heapq
import logging
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import rocksdict

from kvs import keys as K
from kvs.clock import Stamp, wall_ms
from kvs.errors import StorageFailed
from kvs.merkle import MerkleTree, segment_of
from kvs.model import Version, decode_set, encode_set, set_digest
from kvs.store.cache import SetCache
from kvs.store.commits import Commits

log = logging.getLogger("kvs.storage")

# Decoded revision sets kept in memory, by their encoded size: decoding a set (orjson
# plus a Version per entry) is most of a GET and a good part of a PUT on a hot key.
# Sets larger than CACHE_MAX_SET_BYTES are not cached; they would evict everything else.
# 64 MiB holds 20k-30k keys with a full ten-version history (~2.3 KB encoded each); at 16
# MiB a write to a key that had fallen out (a RocksDB get, a decode, an eviction, and the
# re-encoding of every row it keeps) cost about 35 µs more, a quarter of a txn of 4 ops'
# engine time (docs/benchmarks.md, "Issue 17: txn and PUT CPU per request"). The price is
# memory: decoded sets take ~4x their encoded size (docs/design.md, Memory).
CACHE_BYTES = 64 << 20
CACHE_MAX_SET_BYTES = 256 << 10
# RocksDB memtable size (RocksDB's default is 64 MiB, and two can be in memory). Also the
# size the write-ahead log reaches before it is flushed into a table file, so the free
# space a node needs to heal after a full disk (see recover()). 16 MiB: no throughput
# change beyond noise in bench.ab put_random/put_one, and ~60 MB less RSS under load.
WRITE_BUFFER_BYTES = 16 << 20
# Reopening RocksDB after a fault flushes the replayed write-ahead log into a table file:
# a recovery is tried once the disk has room for that, the pending batch and this margin.
RECOVERY_MARGIN_BYTES = 1 << 20
# A recovery attempt that fails anyway (not for lack of room) is retried after a delay that
# doubles up to this: each attempt reopens RocksDB, which rotates its own LOG file.
RECOVERY_BACKOFF_MAX_S = 30.0

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
    def __init__(self, path: Path, *, compression: str = "none", gc_ms: int = 86_400_000,
                 sync_writes: bool = False) -> None:
        path.mkdir(parents=True, exist_ok=True)
        opts = rocksdict.Options(raw_mode=True)
        opts.create_if_missing(True)
        opts.set_compression_type(_COMPRESSION[compression]())
        # One writer at a time (the engine's lock): the memtable need not pay for concurrent inserts.
        opts.set_allow_concurrent_memtable_write(False)
        opts.set_write_buffer_size(WRITE_BUFFER_BYTES)
        try:
            self.db = rocksdict.Rdict(str(path), opts)
        except Exception as exc:
            raise OSError(
                f"cannot open RocksDB in {path}: {exc}. Is another kvs node using this data_dir?"
            ) from exc
        self._path = path
        self._options = opts
        self._retry_at = 0.0  # monotonic time before which recover() does not try again
        self._backoff = 0.0
        self.gc_ms = gc_ms
        # Held by a WAL fsync (Commits runs it in a worker thread) and by close: RocksDB's
        # handle cannot close while another thread is inside it ("Already borrowed").
        self._handle_lock = threading.Lock()
        self.commits = Commits(self._write_pending, self.fsync_wal,
                               sync=sync_writes, data_dir=str(path))
        # Staged, not yet written: RocksDB key -> value, None for a delete. Later mutations
        # overwrite earlier ones' entries, so the batch holds each record once.
        self._pending: dict[bytes, bytes | None] = {}
        self._dirty_segments: set[int] = set()
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
            raw = self._get(K.versions_key(key))
            if raw is None:
                return []
            versions = decode_set(key, raw)
            self._cache.put(key, versions, len(raw), None)
        return versions

    def scan_sets(self, prefix: str, after: str | None = None) -> Iterator[list[Version]]:
        """Revision sets of keys under `prefix`, in key order, starting after `after`."""
        start = K.versions_key(after) + b"\x00" if after is not None else K.versions_key(prefix)
        head = K.versions_key(prefix)
        for raw_key, raw in self._scan(head, start):
            yield decode_set(raw_key[1:].decode(), raw)

    def due(self, kind: bytes, now: int, limit: int | None = None,
            after: tuple[int, str] | None = None) -> list[tuple[int, str]]:
        """Expiry or purge index entries whose time has come (up to `limit`, after `after`)."""
        start = kind + K.u64(after[0]) + after[1].encode() + b"\x00" if after else None
        out: list[tuple[int, str]] = []
        for raw_key, _ in self._scan(kind, start):
            when, key = K.split_timed(raw_key)
            if when > now or len(out) == limit:
                break
            out.append((when, key))
        return out

    def count_pending_purge(self) -> int:
        """Tombstones and expired versions still stored (scans the purge index)."""
        return sum(1 for _ in self._scan(K.PURGE))

    def has(self, raw_key: bytes) -> bool:
        return self._get(raw_key) is not None

    def _get(self, raw_key: bytes) -> bytes | None:
        """A point read that sees staged mutations (reads never force a write)."""
        if raw_key in self._pending:
            return self._pending[raw_key]
        return self.db.get(raw_key)

    def leaves(self, segment: int) -> dict[str, int]:
        """Key -> set digest for one Merkle segment."""
        return {
            K.split_leaf(k)[1]: int.from_bytes(v, "big")
            for k, v in self._scan(K.leaf_key(segment, ""))
        }

    def _scan(self, prefix: bytes, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Records under `prefix` from `start` on, in key order, staged ones included."""
        start = start if start is not None else prefix
        with contextlib.suppress(StorageFailed):  # a fault: what is staged stays pending
            self.flush()  # an iterator sees only what is written
        staged = sorted(item for item in self._pending.items()
                        if item[0] >= start and item[0].startswith(prefix))
        it = self.db.iter()
        it.seek(start)
        stored = _until_outside(it, prefix)
        yield from _overlaid(stored, staged) if staged else stored

    # -- the one write path -------------------------------------------------------

    def stage(
        self, changes: list[Change], *, index: int, hlc: Stamp, now: int,
        purged_through: int | None = None,
        expired: list[tuple[int, str]] = (),  # type: ignore[assignment]
        records: dict[bytes, bytes] | None = None,
    ) -> int:
        """Stage one mutation (changes and sweeper expiries) with the index counter and
        HLC stamp it reached; returns its ticket (see `settle`).

        Staging is all or nothing: the mutation's entries are collected first and only
        then joined to the pending batch, so a batch never holds half a mutation.
        """
        self.commits.check()
        staged: dict[bytes, bytes | None] = {}
        deltas: dict[int, int] = {}
        cached: list[tuple[str, list[Version], int, int]] = []
        live = self.live_keys
        for change in changes:
            live += self._stage(staged, change, now, deltas, cached)
        for expires_at, key in expired:
            staged[K.expiry_key(expires_at, key)] = None
            staged[K.purge_key(expires_at + self.gc_ms, key)] = b""
            cached.append((key, [], 0, 0))  # a dead set would only crowd out live ones
            live -= 1
        if records:  # records beside the revision sets (Paxos acceptor state), same batch
            staged.update(records)
        self._pending.update(staged)
        for key, versions, size, digest in cached:
            self._cache.put(key, versions, size, digest)
        for segment, delta in deltas.items():
            self.tree.apply(segment, delta)
            self._dirty_segments.add(segment)
        self.live_keys = live
        self.index = index
        self.hlc = hlc
        if purged_through is not None:
            self.purged_through = purged_through
        return self.commits.stage()

    def flush(self) -> None:
        """Write what is staged now, instead of at the end of the event-loop round."""
        self.commits.flush()

    def _write_pending(self) -> None:
        """Every staged mutation, with the node's counters, as one batch; kept staged if the
        write fails, so that recover() can write the very same batch again."""
        batch = rocksdict.WriteBatch(raw_mode=True)
        for raw_key, value in self._pending.items():
            if value is None:
                batch.delete(raw_key)
            else:
                batch.put(raw_key, value)
        for segment in self._dirty_segments:
            batch.put(K.segment_key(segment), K.u64(self.tree.segment(segment)))
        batch.put(K.META_INDEX, K.u64(self.index))
        batch.put(K.META_LIVE, K.u64(self.live_keys))
        batch.put(K.META_HLC, K.u64(self.hlc[0]) + K.u64(self.hlc[1]))
        batch.put(K.META_PURGED, K.u64(self.purged_through))
        self.db.write(batch)
        self._pending = {}
        self._dirty_segments = set()

    def _stage(self, staged: dict[bytes, bytes | None], change: Change, now: int,
               deltas: dict[int, int], cached: list[tuple[str, list[Version], int, int]]) -> int:
        """Add one key's change to `staged`; returns the live-key count delta."""
        key = change.key
        old = change.old[0] if change.old else None
        new = change.new[0] if change.new else None
        live_delta = self._counted(new, now, fresh=True) - self._counted(old, now, fresh=False)
        if old is not None:
            # Whatever entry the old current had (swept or not), it goes; the new one is put.
            if old.expires_at is not None:
                staged[K.expiry_key(old.expires_at, key)] = None
            dead_at = old.dead_at()
            if dead_at is not None:
                staged[K.purge_key(dead_at + self.gc_ms, key)] = None
        for entry in _timers(new, self.gc_ms, now):
            if entry is not None:
                staged[entry] = b""
        segment = segment_of(key)
        old_digest = 0
        if change.old:
            old_digest = self._cache.digest(key, change.old) or set_digest(key, change.old)
        if change.new:
            encoded = encode_set(change.new)
            staged[K.versions_key(key)] = encoded
            new_digest = set_digest(key, change.new)
            cached.append((key, change.new, len(encoded), new_digest))
            staged[K.leaf_key(segment, key)] = K.u64(new_digest)
        else:
            staged[K.versions_key(key)] = None
            staged[K.leaf_key(segment, key)] = None
            cached.append((key, [], 0, 0))  # forgotten, not cached: purged keys would pile up
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

    async def settle(self, ticket: int | None = None) -> None:
        """Return once `ticket` (default: everything staged so far) is written, and with
        sync_writes fsynced: then no crash can take it back. Returns at once if it is.
        """
        await self.commits.wait(self.commits.issued if ticket is None else ticket)

    async def settle_durable(self) -> None:
        """Return once everything staged so far is written and fsynced, whatever
        sync_writes says (see Commits.wait_durable)."""
        await self.commits.wait_durable(self.commits.issued)

    def write_record(self, raw_key: bytes, value: bytes) -> None:
        """Write and fsync one record at once, outside the batches: for start-up, before
        any mutation (as the node's identity is written)."""
        self.flush()
        self.db.put(raw_key, value)
        self.db.flush_wal(True)

    def record_keys(self, prefix: bytes) -> Iterator[str]:
        """The user keys of the records under a one-byte prefix (e.g. acceptor state)."""
        for raw_key, _ in self._scan(prefix):
            yield raw_key[len(prefix):].decode()

    def record(self, raw_key: bytes) -> bytes | None:
        """One record beside the revision sets (staged ones included)."""
        return self._get(raw_key)

    def checkpoint(self, path: Path) -> None:
        """A consistent copy of everything written so far in `path` (hard links where it
        can): RocksDB's checkpoint. Staged records are written first."""
        self.flush()
        rocksdict.Checkpoint(self.db).create_checkpoint(str(path))
    # -- storage faults ------------------------------------------------------------

    def recover(self) -> bool:
        """After a storage fault, try to end it: True once writes are accepted again.

        A RocksDB handle that failed a write refuses every later one, so this reopens
        the database and writes the batch that failed. It tries only when the disk has
        room for that (and, after an attempt that failed anyway, after a back-off), so a
        full disk costs one statvfs per call.
        """
        if self.commits.fault is None:
            return True
        if self.commits.syncing or time.monotonic() < self._retry_at or not self._has_room():
            return False
        try:
            self._reopen()
        except Exception as exc:
            log.debug("event=storage_reopen_failed error=%r", str(exc))
            healed = False
        else:
            healed = self.commits.resume()
        self._backoff = 0.0 if healed else min(max(1.0, 2 * self._backoff), RECOVERY_BACKOFF_MAX_S)
        self._retry_at = time.monotonic() + self._backoff
        return healed

    def _has_room(self) -> bool:
        staged = sum(len(k) + len(v or b"") for k, v in self._pending.items())
        try:
            wal = sum(f.stat().st_size for f in self._path.glob("*.log"))
            free = shutil.disk_usage(self._path).free
        except OSError:
            return False  # the data dir cannot even be looked at: not yet
        return free >= wal + staged + RECOVERY_MARGIN_BYTES

    def _reopen(self) -> None:
        """Replace the RocksDB handle; if it cannot be opened for writing, open it read-only
        (that needs no disk space), so reads go on, and raise."""
        # RocksDB closes once no iterator holds the handle: collect those a reference cycle
        # still keeps, or the new handle finds the data dir locked.
        gc.collect()
        self._close_failed_handle()
        try:
            self.db = rocksdict.Rdict(str(self._path), self._options)
        except Exception:
            self.db = rocksdict.Rdict(str(self._path), self._options,
                                      access_type=rocksdict.AccessType.read_only())
            raise

    def fsync_wal(self) -> None:
        """Make every written batch durable; safe from a worker thread while the event
        loop reads and writes (only close must wait for it)."""
        with self._handle_lock:
            self.db.flush_wal(True)

    def close(self) -> None:
        with contextlib.suppress(StorageFailed):
            self.flush()
        if self._pending:
            log.error("event=storage_closed_with_unwritten_records records=%d: the "
                      "unacknowledged writes they hold are lost", len(self._pending))
        with self._handle_lock:  # an fsync still running in its thread (a stop mid-commit)
            if self.commits.fault is not None:
                self._close_failed_handle()
                return
            self.db.flush_wal(True)
            self.db.close()

    def _close_failed_handle(self) -> None:
        """Close a handle that failed a write. Its close reports that failure again, and
        closes anyway; RocksDB's own retry of the failed work is cancelled first, or the
        close waits a second for it."""
        with contextlib.suppress(Exception):
            self.db.cancel_all_background(False)
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


def _until_outside(it: rocksdict.RdictIter, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
    while it.valid():
        k = it.key()
        if not k.startswith(prefix):
            break
        yield k, it.value()
        it.next()


def _overlaid(stored: Iterator[tuple[bytes, bytes]], staged: list[tuple[bytes, bytes | None]]
              ) -> Iterator[tuple[bytes, bytes]]:
    """Stored records with staged ones laid over them (both sorted; a staged None deletes).

    Staged records outlive the event-loop round only when their write failed.
    """
    merged = heapq.merge(((k, 0, v) for k, v in staged), ((k, 1, v) for k, v in stored))
    last = None
    for k, _, v in merged:  # on a tie the staged record comes first and hides the stored one
        if k != last and v is not None:
            yield k, v
        last = k
