"""Consul sessions and the locks they hold, kept in the replicated store.

    _consul/session/<id>   the session: {"ID", "Name", "Node", "LockDelay" (ns), "Behavior",
                           "TTL"}; written with an engine TTL of twice its own TTL
                           (Consul's grace), so it expires on every node by itself
    _consul/lock/<key>     the lock state of <key>: {"Session" (null when free),
                           "LockIndex", "Behavior", "LockDelay" (ms), "DelayUntil" (ms)}

Both are under a hidden prefix (kvs/http/kv.py: HIDDEN_PREFIXES): no API shows or
writes them, and they replicate as any key does, so every node sees every session.

Every change of a lock (acquire, release, invalidation) goes through one function,
Locks.change, given a rule (the lock's next state from its current one, LockState's
methods). With one voter it is a node-local CAS: the lock record's write, guarded by
the record's modify index, in one engine transaction with the key's own write (a
/v1/txn lock or unlock adds the same guarded write, `guarded`, to its transaction).
With more than one voter (or for a key that takes quorum writes, kvs/http/consul/writes.py)
the rule runs inside a quorum CAS round on the lock record (kvs/cluster/quorum.py), so a
lock acquired through one node is refused through every other, even before replication;
the key's own write follows (through Writes: locally, or a quorum round for a quorum key)
once the round committed (the two are not one atomic step then). A lock record that no
quorum round has changed yet (held while there was one voter, before a second joined) is
taken from this node's copy by the first round, so a lock held then stays held.

Invalidation is leaderless and idempotent: any node that sees a lock held by a session
that is gone (destroyed, or expired past its grace) frees it through Locks.change with
the rule "only if the lock is still held by that session"; a second node doing the
same finds it free already and writes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from kvs.cluster.quorum import Quorum
from kvs.conditions import Conditions
from kvs.engine import Engine, Op
from kvs.errors import CASConflict, NotFound, QuorumIndeterminate, QuorumUnavailable
from kvs.http.consul.writes import Writes
from kvs.model import Version
from kvs.paxos import Register

log = logging.getLogger("kvs.http.consul")

SESSION_PREFIX = "_consul/session/"
LOCK_PREFIX = "_consul/lock/"
# A lock whose session this node has never seen (not even its tombstone) is freed only
# after this long: the session may simply not have replicated here yet.
ORPHAN_GRACE_MS = 60_000


@dataclass(frozen=True, slots=True)
class LockState:
    """The lock of one key. Pure: the rules of acquire and release are its methods."""

    session: str | None = None
    lock_index: int = 0
    behavior: str = "release"
    lock_delay_ms: int = 0
    delay_until_ms: int = 0

    @classmethod
    def of(cls, value: Any) -> LockState:
        if not isinstance(value, dict):
            return cls()
        return cls(value.get("Session"), value.get("LockIndex", 0), value.get("Behavior", "release"),
                   value.get("LockDelay", 0), value.get("DelayUntil", 0))

    def to_json(self) -> dict[str, Any]:
        return {"Session": self.session, "LockIndex": self.lock_index, "Behavior": self.behavior,
                "LockDelay": self.lock_delay_ms, "DelayUntil": self.delay_until_ms}

    def acquired(self, session: dict[str, Any], now_ms: int) -> LockState | None:
        """The state after `session` acquires, or None when refused: another session
        holds it, or it is within the lock delay of an invalidated holder. The holder
        acquiring again keeps its LockIndex, as in Consul."""
        if self.session == session["ID"]:
            return self
        if self.session is not None or now_ms < self.delay_until_ms:
            return None
        return LockState(session["ID"], self.lock_index + 1, session["Behavior"],
                         session["LockDelay"] // 1_000_000)

    def released(self, session_id: str) -> LockState | None:
        """The state after the holder releases (no lock delay, as in Consul); None when
        `session_id` does not hold it."""
        if self.session is None or self.session != session_id:
            return None
        return replace(self, session=None)

    def invalidated(self, now_ms: int) -> LockState:
        """The state once the holder's session is gone: free, and not to be taken again
        before the session's lock delay has passed."""
        return replace(self, session=None, delay_until_ms=now_ms + self.lock_delay_ms)


# A lock's change: its next state from its current one, or None to refuse (nothing written).
Rule = Callable[[LockState], LockState | None]


def guarded(key: str, record: Version | None, after: LockState) -> Op:
    """The write of a lock record, conditional on the record still being `record`: what
    Locks.swap applies, and what a /v1/txn lock or unlock op adds to its transaction."""
    return Op("set", LOCK_PREFIX + key, after.to_json(),
              cond=Conditions(cas=record.modify_index if record else 0))


class Locks:
    def __init__(self, engine: Engine, quorum: Quorum, writes: Writes) -> None:
        self.engine = engine
        self.quorum = quorum
        self.writes = writes

    # -- reads ----------------------------------------------------------------------------

    def session(self, session_id: str) -> Version | None:
        """The live session's version, or None (never created, destroyed or expired)."""
        try:
            return self.engine.get(SESSION_PREFIX + session_id)
        except NotFound:
            return None

    def sessions(self) -> list[Version]:
        return list(self.engine.live(SESSION_PREFIX))

    def lock(self, key: str) -> tuple[Version | None, LockState]:
        """The lock record of `key` (None if it never had one) and its state."""
        try:
            record = self.engine.get(LOCK_PREFIX + key)
        except NotFound:
            return None, LockState()
        return record, LockState.of(record.value)

    def view(self, key: str) -> LockState:
        return self.lock(key)[1]

    def _gone(self, session_id: str, record: Version, now_ms: int) -> bool:
        """Is the session that holds `record` gone? Destroyed or expired: its key's newest
        version here is dead. Never seen here: only once the lock is old enough that
        replication would have brought the session."""
        versions = self.engine.storage.read(SESSION_PREFIX + session_id)
        if versions:
            return not versions[0].is_live(now_ms)
        return now_ms - record.timestamp > ORPHAN_GRACE_MS

    # -- writes ---------------------------------------------------------------------------

    @property
    def quorum_mode(self) -> bool:
        """More than one voter: lock records change only by quorum CAS."""
        voters = self.engine.voters
        return voters is not None and len(voters.voters) > 1

    async def change(self, key: str, rule: Rule, write: Op | None = None) -> bool:
        """The one door for every lock change (acquire, release, invalidation): the lock
        record of `key` becomes what `rule` makes of its current state, and then `write`
        (the key's own set or delete) is applied; False, with nothing written, when the
        rule refuses (None).

        One voter: `rule` sees this node's record, and the record's write (guarded by
        the record's modify index) and `write` commit in one engine transaction. More
        than one voter: `rule` runs inside a quorum CAS round on the record, against
        the value the voters chose, so two nodes cannot both hand out one lock; `write`
        follows locally once the round committed."""
        if self.quorum_mode or self.writes.quorum_for(key):
            return await self._quorum_change(key, rule, write)
        record, state = self.lock(key)
        after = rule(state)
        if after is None:
            return False
        ops = [guarded(key, record, after)]
        if write is not None:
            ops.append(write)
        try:
            await self.engine.txn(ops, internal=True)
        except CASConflict:  # not reachable from one event loop: no await since the read
            return False
        return True

    async def _quorum_change(self, key: str, rule: Rule, write: Op | None) -> bool:
        quorum, lock_key = self.quorum, LOCK_PREFIX + key

        def change(current: Register | None) -> Register:
            live = quorum.base(lock_key, current)  # before any round: this node's record
            after = rule(LockState.of(live.value if live else None))
            if after is None:
                raise CASConflict("the lock's state refuses the change")  # nothing written
            return Register((current.seq if current else 0) + 1,
                            quorum.new_version(lock_key, after.to_json())(live, current))

        try:
            await quorum.change(lock_key, change)
        except CASConflict:
            return False
        if write is not None:
            await self._apply(write)
        return True

    async def _apply(self, write: Op) -> None:
        if write.op == "set":
            await self.writes.set(write)
        else:
            await self.writes.delete(write.key)

    async def acquire(self, key: str, session: dict[str, Any], write: Op) -> bool:
        """A lock outlives a delete of its key (it is in its own record): the session
        keeps it until it releases it or ends."""
        now = self.engine.now_ms()
        return await self.change(key, lambda state: state.acquired(session, now), write)

    async def release(self, key: str, session_id: str, write: Op) -> bool:
        return await self.change(key, lambda state: state.released(session_id), write)

    async def invalidate(self, session_id: str) -> int:
        """Free every lock `session_id` holds (or delete its keys, by its Behavior)."""
        freed = 0
        for record in list(self.engine.live(LOCK_PREFIX)):
            if LockState.of(record.value).session == session_id:
                freed += await self._free(record)
        return freed

    async def sweep(self) -> int:
        """Free the locks whose session is gone: what every node does every sweep."""
        now = self.engine.now_ms()
        freed = 0
        for record in list(self.engine.live(LOCK_PREFIX)):
            holder = LockState.of(record.value).session
            if holder is not None and self._gone(holder, record, now):
                try:
                    freed += await self._free(record)
                except (QuorumUnavailable, QuorumIndeterminate) as exc:  # the next sweep retries
                    log.debug("event=consul_lock_not_freed key=%s reason=%s", record.key, exc.message)
        return freed

    async def _free(self, record: Version) -> bool:
        """Idempotent: only if the lock is still held by the session `record` shows."""
        key = record.key.removeprefix(LOCK_PREFIX)
        state, now = LockState.of(record.value), self.engine.now_ms()
        write = Op("delete", key) if state.behavior == "delete" and self._exists(key) else None

        def rule(current: LockState) -> LockState | None:
            return current.invalidated(now) if current.session == state.session else None
        return await self.change(key, rule, write)

    def _exists(self, key: str) -> bool:
        try:
            self.engine.get(key)
        except NotFound:
            return False
        return True
