"""The key-value engine: reads, conditional writes, transactions and remote versions.

Every mutation runs as `with self._mutation() as m:` — under one lock, against an
overlay of the keys it touched, ending in one staged storage batch. Nothing inside
the lock awaits, so no request can slip between a condition check and its write.
The mutation owns the index numbers and the HLC stamp it takes and hands them to
the store when it stages (as etcd's write txn owns its revision).

    put() ──► lock ─► read sets ─► check conditions ─► new versions (HLC, index)
                     └──────── stage(changes, index, hlc) ◄─────────┘
          ◄── unlock ─► listeners (watchers, replication; guarded)
          ◄── await settle(ticket): written, and fsynced with sync_writes
    put() returns: the write is acknowledged only now

Every write method is a coroutine that returns only once its write is settled, so
every path that writes (KV, txn, services, remote versions, sweeper) gets the same
guarantee. Reads are plain calls; `settle()` lets a caller wait until whatever a
read may show (another mutation's staged write) is settled too.

Outside the engine nothing touches Storage: readers use the read methods,
anti-entropy the `sync` view, operations `status()`. The engine knows nothing about
HTTP; the API maps its exceptions to statuses.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from kvs import keys as K
from kvs import paxos
from kvs import paxos_wire as W
from kvs.clock import HLC, ClockMonitor, wall_ms
from kvs.conditions import NONE, Conditions, check, failures
from kvs.config import Config
from kvs.errors import CASConflict, CASDisabled, ClockSkew, NotFound, QuorumKey, StorageFailed
from kvs.merkle import MerkleTree
from kvs.model import Version, add_newest, is_quorum_version, new_version_id, resolve, wins
from kvs.store import snapshot
from kvs.store.storage import Change, Storage

log = logging.getLogger("kvs.engine")

REFUSALS_LOGGED = 10_000  # conflicting ids and future origins remembered, to log each once
# Index entries the sweeper handles per mutation (of each kind): a mass expiry is swept in
# slices, each its own write, so the event loop serves requests between them and no slice
# holds more than this many keys' sets in memory.
SWEEP_SLICE = 2048
ACCEPTOR_STATES_KEPT = 4096  # decoded acceptor records kept in memory (Engine.acceptor_state)


@dataclass
class Stats:
    """Counters for /metrics and /cluster/status."""

    cas_success: int = 0
    cas_conflict: int = 0
    superseded: int = 0
    expired: int = 0
    purged: int = 0
    remote_applied: int = 0
    remote_refused: int = 0  # every refusal; the two below are also counted here
    remote_future: int = 0  # timestamp beyond this node's wall clock + max_clock_offset_ms
    remote_conflicting: int = 0  # a version id this node holds, with different content
    listener_errors: int = 0


class _Mutation:
    """Overlay of the keys one mutation touched, the versions it applied, and the index
    numbers it took.

    Used as `with engine._mutation() as m:` — the critical section: the engine's lock
    is held from __enter__ to __exit__, which stages everything in one storage batch
    with the mutation's index and HLC stamp. On an exception nothing is staged, and the
    index numbers it took were never anyone else's. A class, not a @contextmanager
    generator: this is on every write's path.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.now = 0
        self.sets: dict[str, list[Version]] = {}
        self.original: dict[str, list[Version]] = {}
        self.applied: list[Version] = []
        self.expired: list[tuple[int, str]] = []
        self.purged_through: int | None = None
        self.index = 0
        self.ticket = 0  # the staged batch to wait for; 0: nothing was staged
        self.records: dict[bytes, bytes] = {}  # beside the revision sets: Paxos state

    def __enter__(self) -> _Mutation:
        engine = self.engine
        engine._lock.acquire()
        self.now = engine.now_ms()
        self.index = engine.storage.index
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: object) -> None:
        try:
            if exc_type is None:
                self._stage()
        finally:
            self.engine._lock.release()
        if exc_type is None and self.applied:
            self.engine._notify(self.engine.listeners, self.applied)

    def _stage(self) -> None:
        changes = self.changes()
        if changes or self.expired or self.purged_through is not None or self.records:
            self.ticket = self.engine.storage.stage(
                changes, index=self.index, hlc=self.engine.hlc.last, now=self.now,
                purged_through=self.purged_through, expired=self.expired, records=self.records)

    def read(self, key: str) -> list[Version]:
        if key not in self.sets:
            self.original[key] = self.sets[key] = self.engine.storage.read(key)
        return self.sets[key]

    def current(self, key: str) -> Version | None:
        """The key's live current version, or None if absent, deleted or expired."""
        versions = self.read(key)
        return versions[0] if versions and versions[0].is_live(self.now) else None

    def apply(self, version: Version, *, fresh: bool = False) -> bool:
        """Add a version to its key's set; False if the set did not change (duplicate, too old).

        `fresh`: a version this node just created, so it cannot be a duplicate.
        """
        engine = self.engine
        before = self.read(version.key)
        if not fresh and any(v.version == version.version for v in before):
            return False
        previous = before[0] if before else None
        version.modify_index = self.index + 1
        version.create_index = (
            previous.create_index if previous is not None and previous.is_live(self.now)
            else version.modify_index
        )
        if previous is None or wins(version, previous):
            after = add_newest(before, version, engine.limit)
            # A plain succession of the current version supersedes nothing.
            succession = previous is None or version.parent == previous.version
        else:
            after = resolve([*before, version], engine.limit)
            if not any(v.version == version.version for v in after):
                return False  # older than everything the bounded history keeps
            succession = False
        self.index = version.modify_index
        if not succession:
            engine.stats.superseded += _newly_superseded(before, after)
        self.sets[version.key] = after
        self.applied.append(version)
        return True

    def purge(self, key: str, current: Version) -> None:
        self.read(key)
        self.sets[key] = []
        self.purged_through = max(self.purged_through or self.engine.storage.purged_through,
                                  current.timestamp)

    def changes(self) -> list[Change]:
        return [
            Change(key, self.original[key], new)
            for key, new in self.sets.items()
            if new is not self.original[key]
        ]


class _Seen:
    """The last `size` items added: "log once per version id" in bounded memory."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[str, None] = OrderedDict()

    def add(self, item: str) -> bool:
        """True if `item` is new (and now remembered)."""
        if item in self._items:
            return False
        self._items[item] = None
        if len(self._items) > self.size:
            self._items.popitem(last=False)
        return True


def _made_by_quorum(versions: list[Version]) -> bool:
    return any(is_quorum_version(v.version) for v in versions)


def _newly_superseded(before: list[Version], after: list[Version]) -> int:
    was = {v.version for v in before if v.superseded}
    return sum(1 for v in after if v.superseded and v.version not in was)


@dataclass(frozen=True, slots=True)
class Op:
    """One transaction operation, already validated by the API layer."""

    op: str  # set | delete | check | get
    key: str
    value: Any = None
    ttl_ms: int | None = None
    flags: int = 0
    cond: Conditions = NONE


class Engine:
    """One node's data: reads, conditional writes, transactions, remote versions, expiry."""

    def __init__(self, config: Config, storage: Storage,
                 now_ms: Callable[[], int] = wall_ms) -> None:
        self.config = config
        self.storage = storage
        self.now_ms = now_ms
        self.hlc = HLC(now_ms, storage.hlc)
        self.limit = config.revision_history_limit if config.revision_history_enabled else 1
        self.gc_ms = config.tombstone_gc_seconds * 1000
        self.stats = Stats()
        self.sync = SyncView(storage)
        self.max_offset_ms = config.max_clock_offset_ms
        # Fed by membership (round trips to peers); read by the write guard and /health.
        self.clocks = ClockMonitor(config.max_clock_offset_ms)
        self._refusals_logged = _Seen(REFUSALS_LOGGED)
        self._lock = threading.Lock()
        # Called with the versions of each committed mutation (replication, watchers), and
        # with the keys whose TTL the sweeper found run out (blocking queries). Wired by
        # the node; a listener that raises is logged and counted, never fails the write.
        self.listeners: list[Callable[[list[Version]], None]] = []
        self.expiry_listeners: list[Callable[[list[str]], None]] = []
        # Why this node's data may be stale (it was cut off from its peers for longer than
        # tombstone_gc_seconds), or None. Set by replication, which is what can tell; the
        # API shows it in /health and flags answers with it.
        self.stale_reason: str | None = None
        # The newest voter configuration this node knows (quorum keys), None before it
        # learns one; and the floor below which its proposer's ballot counters stay.
        raw_voters = storage.record(K.META_VOTERS)
        self.voters = W.config_from(orjson.loads(raw_voters)) if raw_voters else None
        raw_floor = storage.record(K.META_BALLOTS)
        self.ballot_floor = int.from_bytes(raw_floor, "big") if raw_floor else 0
        # The keys this node accepted a quorum value of: every local write asks, and a
        # RocksDB read of a record that mostly does not exist costs a block lookup (tens of
        # µs once the store outgrows the block cache). Only Paxos steps add to it.
        self._acceptor_states: dict[str, paxos.AcceptorState] = {}  # see acceptor_state
        self._quorum_keys = {key for key in storage.record_keys(K.ACCEPTOR)
                             if self.acceptor_state(key).accepted is not None}

    @property
    def node_id(self) -> str:
        assert self.storage.node_id is not None
        return self.storage.node_id

    @property
    def joined_at(self) -> int:
        return self.storage.joined_at

    @property
    def purge_watermark(self) -> int:
        """The newest timestamp of a dead version this node purged (see `drop_purged`)."""
        return self.storage.purged_through

    @property
    def index(self) -> int:
        """This node's index counter: the modify index of the last version it applied."""
        return self.storage.index

    # -- reads (no lock: each is one RocksDB read of one consistent record) -------------

    def get(self, key: str) -> Version:
        versions = self.storage.read(key)
        if not versions or not versions[0].is_live(self.now_ms()):
            raise NotFound(f"key {key!r} not found")
        return versions[0]

    def history(self, key: str) -> list[Version]:
        versions = self.storage.read(key)
        if not versions:
            raise NotFound(f"key {key!r} has no versions on this node")
        return versions

    def get_version(self, key: str, version: str) -> Version:
        for v in self.storage.read(key):
            if v.version == version:
                return v
        raise NotFound(f"version {version} of {key!r} not found (it may have left the history)")

    def live(self, prefix: str, after: str | None = None) -> Iterator[Version]:
        now = self.now_ms()
        if after is not None and after < prefix:
            after = None  # the scan would start before the prefix and stop at the first outsider
        for versions in self.storage.scan_sets(prefix, after):
            if versions[0].is_live(now):
                yield versions[0]

    def modify_index(self, key: str, *, prefix: bool = False,
                     visible: Callable[[str], bool] | None = None) -> int:
        """The modify index of the key's newest version (any state), or the highest under a
        prefix (of the keys `visible` accepts, if given); 0 if none. What a blocking query
        compares with."""
        if not prefix:
            versions = self.storage.read(key)
            return versions[0].modify_index if versions else 0
        return max((s[0].modify_index for s in self.storage.scan_sets(key)
                    if visible is None or visible(s[0].key)), default=0)

    @property
    def unsettled(self) -> bool:
        """True while some staged write is not yet settled (written; fsynced with sync_writes)."""
        commits = self.storage.commits
        return commits.issued != commits.settled_through

    async def settle(self) -> None:
        """Wait until everything staged so far is settled: an answer that shows another
        mutation's write (a read, a 409's `current`, an index) must not show what a crash
        could take back. Raises StorageFailed if the write or fsync failed."""
        await self.storage.settle()

    def status(self) -> dict[str, Any]:
        """What /cluster/status and /metrics show of this node's data."""
        storage = self.storage
        return {
            "node": self.node_id,
            "joined_at": storage.joined_at,
            "keys": storage.live_keys,
            "index": storage.index,
            "merkle_root": f"{storage.tree.root():016x}",
            "hlc": list(self.hlc.last),
            "clock": self.clocks.report(),
            "voters": ({"epoch": self.voters.epoch, "ids": sorted(self.voters.voters)}
                       if self.voters else None),
        }

    def snapshot(self, work: Path) -> Iterator[bytes]:
        """A snapshot of the store as of now, as file chunks (kvs/store/snapshot.py).

        The copy is a checkpoint in `work`, taken under the lock (so between two
        mutations); the chunks stream from it while the node goes on. The caller removes
        `work` when done.
        """
        with self._lock:
            self.storage.checkpoint(work)
            status = self.status()
        header = {"node": status["node"], "created_at": self.now_ms(), "index": status["index"],
                  "merkle_root": status["merkle_root"], "keys": status["keys"]}
        return snapshot.encode(header, snapshot.checkpoint_records(work))

    @property
    def storage_fault(self) -> StorageFailed | None:
        """Why writes are refused right now (a full or failing disk); None when they are not."""
        return self.storage.commits.fault

    @property
    def storage_fault_since(self) -> int | None:
        return self.storage.commits.fault_since

    def recover_storage(self) -> bool:
        """Try to end a storage fault (the node calls it periodically); True when healthy."""
        return self.storage.recover()

    def dead_pending_purge(self) -> int:
        """Tombstones and expired versions still stored (a scan: for metrics, not hot paths)."""
        return self.storage.count_pending_purge()

    # -- local writes: each returns once the write is settled -----------------------------

    async def put(self, op: Op, *, internal: bool = False) -> Version:
        """Write one validated set operation.

        `internal`: the condition is the server's own (a service lease renewal), not a
        client CAS, so it holds even with cas_enabled false.
        """
        if not internal:
            self._require_cas(op.cond)
        self._require_clock()
        with self._mutation() as m:
            version = self._set(m, op)
        await self._settled(m)
        return version

    async def delete(self, key: str, cond: Conditions = NONE) -> Version:
        self._require_cas(cond)
        self._require_clock()
        with self._mutation() as m:
            tombstone = self._delete(m, key, cond)
            if tombstone is None:
                raise NotFound(f"key {key!r} not found")
        await self._settled(m)
        return tombstone

    async def delete_prefix(self, prefix: str, *,
                            skip: str | tuple[str, ...] | None = None) -> list[Version]:
        """Tombstone every live key under `prefix`, except those under `skip` (prefixes)."""
        self._require_clock()
        with self._mutation() as m:
            keys = [v.key for v in self.live(prefix) if skip is None or not v.key.startswith(skip)]
            tombstones = [t for t in (self._delete(m, k, NONE) for k in keys) if t]
        await self._settled(m)
        return tombstones

    async def txn(self, ops: list[Op], *, internal: bool = False) -> list[Any]:
        """All-or-nothing: a failing condition raises CASConflict with `failed`, nothing written.

        Ops run in order against the transaction's own overlay, so a later op sees
        an earlier op's write (as in Consul); conditions are all checked before
        anything is committed. `internal`: the conditions are the server's own (a Consul
        lock's guard on its lock record, the ACL bootstrap's create-only guard), so they hold
        even with cas_enabled false.
        """
        conditional = any(op.cond for op in ops)
        if conditional and not internal:
            self._require_cas(*[op.cond for op in ops])
        if any(op.op in ("set", "delete") for op in ops):
            self._require_clock()
        with self._mutation() as m:
            failed = []
            results: list[Any] = []
            for index, op in enumerate(ops):
                current = m.current(op.key)
                try:
                    problems = failures(op.cond, current)
                except NotFound:
                    problems = ["the key does not exist"]
                if problems:
                    failed.append({"index": index, "key": op.key, "message": "; ".join(problems),
                                   "current": current.meta() if current else None})
                    continue
                results.append(self._txn_op(m, op))
            if failed:
                self.stats.cas_conflict += 1
                raise CASConflict(
                    f"{len(failed)} of {len(ops)} operations failed their conditions; "
                    "nothing was written", failed=failed)
            if conditional:
                self.stats.cas_success += 1  # one conditional write, like its conflict
        await self._settled(m)
        return results

    def _txn_op(self, m: _Mutation, op: Op) -> Any:
        if op.op == "set":
            return self._set(m, op, checked=True)
        if op.op == "delete":
            tombstone = self._delete(m, op.key, op.cond, checked=True)
            return tombstone or {"key": op.key, "version": None, "modify_index": None}
        current = m.current(op.key)
        if op.op == "get":
            return current.to_json() if current else None
        return {"key": op.key, "ok": True, "version": current.version if current else None}

    def _set(self, m: _Mutation, op: Op, *, checked: bool = False) -> Version:
        current = m.current(op.key)
        if not checked:
            self._check(op.cond, current)
        ts, logical = self.hlc.tick()
        expires_at = self.expiry(ts, op.ttl_ms)
        return self._new_version(m, op.key, op.value, ts, logical, op.flags, expires_at, False)

    def expiry(self, ts: int, ttl_ms: int | None) -> int | None:
        """When a version stamped `ts` with a TTL expires: `ttl_ms` after its stamp, or after
        the wall clock where the HLC runs ahead of it (an HLC that observed a peer's fast
        clock must not make a lease outlive its TTL). Read after the stamp, so the wall
        clock has reached it unless the HLC is ahead."""
        return None if ttl_ms is None else min(ts, self.now_ms()) + ttl_ms

    def _delete(self, m: _Mutation, key: str, cond: Conditions, *,
                checked: bool = False) -> Version | None:
        current = m.current(key)
        if not checked:
            self._check(cond, current)
        if current is None:
            return None
        ts, logical = self.hlc.tick()
        return self._new_version(m, key, None, ts, logical, 0, None, True)

    def _new_version(self, m: _Mutation, key: str, value: Any, ts: int, logical: int,
                     flags: int, expires_at: int | None, deleted: bool) -> Version:
        previous = m.read(key)
        self._require_local(key, previous)
        version = Version(
            key=key, value=value, version=new_version_id(), timestamp=ts, logical=logical,
            origin=self.node_id, origin_joined_at=self.storage.joined_at, flags=flags,
            expires_at=expires_at, deleted=deleted,
            parent=previous[0].version if previous else None,
        )
        applied = m.apply(version, fresh=True)
        assert applied, "a fresh local version always becomes current"
        return version

    def _require_local(self, key: str, versions: list[Version]) -> None:
        """A local write must not fork a key that is written with consistency=quorum: its
        version would sit beside the Paxos chain, invisible to quorum reads."""
        if key in self._quorum_keys or _made_by_quorum(versions):
            raise QuorumKey(f"this key is written with consistency=quorum; {key!r} takes only "
                            "quorum writes (add \"consistency\": \"quorum\" to the write, or "
                            "?consistency=quorum to a DELETE). Nothing was written.", key=key)

    def _check(self, cond: Conditions, current: Version | None) -> None:
        if not cond:
            return
        try:
            check(cond, current)
        except CASConflict:
            self.stats.cas_conflict += 1
            raise
        self.stats.cas_success += 1

    def check_writable(self, cond: Conditions, *, conditional: bool = False) -> None:
        """What a quorum write must pass before its round, as a local write does:
        conditions need cas_enabled (`conditional`: it has one besides `cond`), and this
        node's clock must be in range (its HLC stamps the version)."""
        if conditional and not self.config.cas_enabled:
            raise CASDisabled()
        self._require_cas(cond)
        self._require_clock()

    def _require_cas(self, *conds: Conditions) -> None:
        if not self.config.cas_enabled and any(conds):
            raise CASDisabled()

    def _require_clock(self) -> None:
        if self.config.refuse_writes_on_clock_skew and self.clocks.skewed:
            raise ClockSkew(self.skew_message())

    def skew_message(self) -> str:
        """What a refused write and /health say while this node's clock is off."""
        off = self.clocks.report()["offset_ms"]
        by = f"by about {off:+d} ms " if off is not None else ""
        refused = ("so it refuses writes (a version or TTL stamped with a wrong time would be "
                   "refused by its peers or outlive its TTL): send writes to another node, and "
                   if self.config.refuse_writes_on_clock_skew else "")
        return (f"this node's clock is off {by}from most of its peers' (more than "
                f"max_clock_offset_ms = {self.max_offset_ms} ms), {refused}fix this host's "
                "clock (NTP); it is back in range once its peers' clocks agree with it again")

    # -- remote versions and the sweeper -------------------------------------------------

    async def apply_remote(self, versions: list[Version], *,
                           resync: bool = False) -> list[Version]:
        """Fold replicated versions in; idempotent and order-independent. Returns those applied.

        A refused version (see `_refused`) changes nothing, not even the HLC. `resync`:
        the versions a stale node fetched from a peer that holds them (see `drop_purged`):
        the purge watermark does not refuse those, since what the peer holds is live in
        the cluster whatever this node purged while cut off.
        """
        with self._mutation() as m:
            for version in versions:
                if self._refused(m, version, resync):
                    self.stats.remote_refused += 1
                    continue
                self.hlc.observe((version.timestamp, version.logical))
                # A copy: apply() sets this node's indexes on it, and an in-process caller
                # may pass another node's stored (cached, shared) versions.
                if m.apply(version.copy()):
                    self.stats.remote_applied += 1
        await self._settled(m)
        return m.applied

    def _refused(self, m: _Mutation, version: Version, resync: bool) -> bool:
        """True if a remote version must not be applied, because it is

        * from the future: its timestamp is more than max_clock_offset_ms ahead of our wall
          clock. Observing it would drag our HLC (persisted) and every later version along;
          once our clock catches up, anti-entropy offers it again and it is taken;
        * conflicting: we hold a version with its id and other content. Ids are unique, so
          one of the two was forged or corrupted; keeping ours is what every node holding
          it does, instead of two nodes swapping contents forever;
        * purged: a dead version already past its purge time, or a version of a key we do
          not hold that is no newer than the newest version we purged (so purged data
          cannot come back).
        """
        if version.timestamp > m.now + self.max_offset_ms:
            self.stats.remote_future += 1
            if self._refusals_logged.add(f"future {version.origin}"):
                log.warning("event=future_version key=%r origin=%s ahead_ms=%d: refused (more than "
                            "max_clock_offset_ms ahead of this node's clock); is the origin's "
                            "clock wrong? Logged once per origin", version.key, version.origin,
                            version.timestamp - m.now)
            return True
        held = next((v for v in m.read(version.key) if v.version == version.version), None)
        if held is not None and held.to_wire() != version.to_wire():
            self.stats.remote_conflicting += 1
            if self._refusals_logged.add(version.version):
                log.warning("event=conflicting_version key=%r version=%s origin=%s: a peer sent "
                            "other content under a version id this node holds; kept ours",
                            version.key, version.version, version.origin)
            return True
        dead_at = version.dead_at()
        if dead_at is not None and dead_at + self.gc_ms <= m.now:
            return True
        return (not resync and version.timestamp <= self.storage.purged_through
                and not m.read(version.key))

    async def drop_purged(self, keys: list[str], watermark: int) -> list[str]:
        """Resynchronising with a peer that purged deletions this node never saw.

        The peer holds none of `keys` and refuses, as purged, every version of a key it
        does not hold that is no newer than its purge watermark. So a key of ours whose
        versions are all that old is one the peer deleted and purged: it is dropped here
        (as the sweeper purges), instead of being pushed back forever. A key with a newer
        version is kept (the peer accepts it). Returns the keys dropped; blocking queries
        on them wake up as on an expiry.
        """
        with self._mutation() as m:
            dropped = []
            for key in keys:
                versions = m.read(key)
                if versions and all(v.timestamp <= watermark for v in versions):
                    m.sets[key] = []
                    dropped.append(key)
        self.stats.purged += len(dropped)
        await self._settled(m)
        if dropped:
            self._notify(self.expiry_listeners, dropped)
        return dropped

    async def adopt_watermark(self, watermark: int) -> None:
        """After a complete resynchronisation with a peer: we hold every key it holds, so
        a key absent here whose versions are no newer than its watermark was purged by it,
        and we refuse such versions as it does (another stale node may still push them)."""
        with self._mutation() as m:
            if watermark > self.storage.purged_through:
                m.purged_through = watermark
        await self._settled(m)

    async def sweep(self, slice_size: int = SWEEP_SLICE) -> tuple[int, int]:
        """Process the expiries and purges due now, `slice_size` of each per mutation;
        returns (expired, purged)."""
        now = self.now_ms()
        # Where each index's next slice starts; a kind is dropped once its due entries ran out.
        cursors: dict[bytes, tuple[int, str] | None] = {b"x": None, b"g": None}
        expired = purged = 0
        while cursors:
            e, p = await self._sweep_slice(now, slice_size, cursors)
            expired, purged = expired + e, purged + p
        return expired, purged

    async def _sweep_slice(self, now: int, size: int,
                           cursors: dict[bytes, tuple[int, str] | None]) -> tuple[int, int]:
        with self._mutation() as m:
            for kind, after in list(cursors.items()):
                due = self.storage.due(kind, now, size, after)
                if len(due) < size:
                    del cursors[kind]
                else:
                    cursors[kind] = due[-1]
                for when, key in due:
                    versions = m.read(key)
                    current = versions[0] if versions else None
                    if current is None:
                        continue
                    if kind == b"x" and current.expires_at == when:
                        m.expired.append((when, key))
                    dead_at = current.dead_at()
                    if kind == b"g" and dead_at is not None and dead_at + self.gc_ms == when:
                        m.purge(key, current)
        self.stats.expired += len(m.expired)
        purged = sum(1 for c in m.changes() if not c.new)
        self.stats.purged += purged
        await self._settled(m)
        if m.expired:
            self._notify(self.expiry_listeners, [key for _, key in m.expired])
        return len(m.expired), purged

    # -- quorum keys: this node as a Paxos acceptor (kvs/paxos.py) ------------------------

    def is_quorum_key(self, key: str) -> bool:
        """The key is written in quorum mode, as far as this node can tell: it accepted a
        quorum value of it, or it holds a version a quorum round made (a node that is not a
        voter gets those by replication). A promise alone does not count: a quorum read of
        a key nobody wrote in quorum mode leaves promises, and must not turn a local key
        into a quorum one."""
        return key in self._quorum_keys or _made_by_quorum(self.storage.read(key))

    def quorum_keys(self) -> list[str]:
        """Every key this node holds acceptor state for (what a voter change rescans)."""
        return list(self.storage.record_keys(K.ACCEPTOR))

    def acceptor_state(self, key: str) -> paxos.AcceptorState:
        """The key's acceptor record. The recently used ones are kept decoded: every Paxos
        step reads one, and decoding the accepted version was a tenth of an acceptor's
        CPU. Only `_paxos_stage` changes a record, and it updates the copy; staged records
        are never dropped (a storage fault writes them again), so the copy is the record."""
        state = self._acceptor_states.get(key)
        if state is None:
            raw = self.storage.record(K.acceptor_key(key))
            state = W.state_from(orjson.loads(raw)) if raw is not None else paxos.AcceptorState()
            self._remember_acceptor(key, state)
        return state

    def _remember_acceptor(self, key: str, state: paxos.AcceptorState) -> None:
        states = self._acceptor_states
        if len(states) >= ACCEPTOR_STATES_KEPT:
            del states[next(iter(states))]  # the oldest remembered
        states[key] = state

    async def paxos_step(self, key: str, message: paxos.Prepare | paxos.Accept) -> paxos.Reply:
        """One acceptor step for one key, answered only once what it keeps is fsynced."""
        return (await self.paxos_steps([(key, message)]))[0]

    async def paxos_steps(self, messages: list[tuple[str, paxos.Prepare | paxos.Accept]]
                          ) -> list[paxos.Reply]:
        """Acceptor steps in order (a peer's batch), answered together once all they keep is
        fsynced: one wait for the lot is what makes a batch cheaper than its messages.

        The wait covers every earlier batch too: a repeated prepare changes nothing, yet
        its answer relies on a promise staged before."""
        replies = [self._paxos_stage(key, message) for key, message in messages]
        await self.storage.settle_durable()
        return replies

    def _paxos_stage(self, key: str, message: paxos.Prepare | paxos.Accept) -> paxos.Reply:
        """The state and an accepted version are staged in one batch (a crash keeps both or
        neither); the accepted version joins the revision set like a replicated one (a
        write-back's same id is a duplicate)."""
        try:
            with self._mutation() as m:
                state = self.acceptor_state(key)
                step = paxos.receive(self.node_id, self.voters, state, message)
                self._keep_voters(m, step.config)
                if step.state != state:
                    m.records[K.acceptor_key(key)] = orjson.dumps(W.state_json(step.state))
                    self._remember_acceptor(key, step.state)
                    accepted = step.state.accepted
                    if accepted is not None and accepted != state.accepted and accepted.value:
                        version: Version = accepted.value.value
                        self.hlc.observe((version.timestamp, version.logical))
                        m.apply(version.copy())
                    if step.state.accepted is not None:  # before listeners hear of the version
                        self._quorum_keys.add(key)
        except BaseException:
            self._acceptor_states.pop(key, None)  # the record may not have been staged
            raise
        return step.reply

    def bootstrap_voters(self, config: paxos.Config) -> None:
        """The first configuration of a node that has none, written before it serves."""
        assert self.voters is None, "a stored configuration is only changed by install"
        self.storage.write_record(K.META_VOTERS, orjson.dumps(W.config_json(config)))
        self.voters = config

    async def install_voters(self, config: paxos.Config) -> paxos.Installed | paxos.Stale:
        """Adopt a newer voter configuration (one a proposer was told of by an acceptor)."""
        with self._mutation() as m:
            kept, reply = paxos.install(self.node_id, self.voters, config)
            self._keep_voters(m, kept)
        await self.storage.settle_durable()
        return reply

    def _keep_voters(self, m: _Mutation, config: paxos.Config | None) -> None:
        if config is not None and config != self.voters:
            m.records[K.META_VOTERS] = orjson.dumps(W.config_json(config))
            self.voters = config

    async def reserve_ballots(self, floor: int) -> None:
        """Persist a new ballot counter floor: after a restart this node's proposer starts
        above it, so it never uses a ballot twice (with two values)."""
        with self._mutation() as m:
            if floor > self.ballot_floor:
                m.records[K.META_BALLOTS] = K.u64(floor)
                self.ballot_floor = floor
        await self.storage.settle_durable()

    # -- the critical section and what follows it ----------------------------------------

    def _mutation(self) -> _Mutation:
        return _Mutation(self)

    async def _settled(self, m: _Mutation) -> None:
        if m.ticket:
            await self.storage.settle(m.ticket)

    def _notify(self, listeners: list[Callable[[Any], None]], what: Any) -> None:
        """Tell every listener; one that raises is logged and counted, and the others still
        hear: the write it reports is staged already and must be answered as such."""
        for listener in listeners:
            try:
                listener(what)
            except Exception:
                self.stats.listener_errors += 1
                log.exception("event=listener_failed listener=%s",
                              getattr(listener, "__qualname__", listener))


class SyncView:
    """What Merkle anti-entropy reads: the tree, one segment's leaves, revision sets.

    A narrow view, so replication never reaches into Storage itself.
    """

    def __init__(self, storage: Storage) -> None:
        self._storage = storage

    @property
    def tree(self) -> MerkleTree:
        return self._storage.tree

    def leaves(self, segment: int) -> dict[str, int]:
        """Key -> revision-set digest for one Merkle segment."""
        return self._storage.leaves(segment)

    def revisions(self, keys: list[str]) -> list[Version]:
        """Every stored version (history included) of the given keys."""
        return [v for key in keys for v in self._storage.read(key)]

    def dump(self) -> Iterator[list[Version]]:
        """Every key's revision set, in key order (what convergence checks compare)."""
        return self._storage.scan_sets("")
