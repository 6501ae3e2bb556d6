"""SWIM membership as a pure state machine: no I/O, no asyncio, `now` passed in.

Every fact about a member travels as an `Update` (id, address, joined_at, state,
incarnation, source). One rule decides all of them: an update is accepted iff its
(incarnation, rank) is greater than the record's, with
rank alive < suspect < dead < left < removed.

    incarnation i                              incarnation i+1 (only the member
    alive(i) ─► suspect(i) ─► dead(i) ─► left(i)  │  alive(i+1) ─► ...   itself bumps it:
      ▲                                           │                    refute or restart)
      └────────────── any update at i+1 beats every state at i ───────┘

  * suspect(i) and dead(i) override alive(i); alive needs i+1 to override suspect(i).
  * left(i) beats everything at i and is never overwritten by dead: a member that
    left stays left until it rejoins with a higher incarnation.
  * Updates about ourselves are checked, not stored: suspect/dead/left at >= our
    incarnation (or alive at a higher one, a stale life of ours) make us refute:
    incarnation := max(ours, theirs) + 1, and alive is broadcast.
  * A member we never heard of is created from any update, even suspect or dead,
    because gossip may deliver its death before its birth.
  * removed(i) is a tombstone: the member is gone from every listing and is never
    probed, but the record stays, so the dead(i) or left(i) that other nodes still
    gossip cannot bring it back. Only the member itself outbids it (alive(i+1): a
    restart, or a refutation when it hears of its removal). `reap` turns members that
    stayed dead or left long enough into tombstones (each node on its own clock, like
    Consul's reconnect_timeout; never gossiped), `remove` does it at once and gossips
    it (an operator's `kvs members remove`), and a tombstone is forgotten after the
    longer of the two reap periods, when no node still holds the old record.

Acceptance is "keep the maximum of a total order", so the table does not depend on
the order in which gossip delivers updates, nor on duplicates (a property test
checks it). That is what lets us drop memberlist's special cases.

Suspicion follows Lifeguard (memberlist's suspicion.go). With n the live members
(alive or suspect, ourselves included) when the suspicion starts:

    min = suspicion_multiplier * max(1, log10(n + 1)) * gossip_interval
    max = SUSPICION_MAX_MULT * min
    k   = suspicion_multiplier - 2 independent confirmations wanted (0 if n - 2 < k)
    timeout(c) = max(min, max - (max - min) * log(c + 1) / log(k + 1))   (min if k == 0)

A suspect is declared dead `timeout(c)` after its suspicion started, c being the
other nodes that reported the same suspicion so far. A truly dead node is
suspected by everyone and dies after `min`; a live node that one peer could not
reach gets up to `max` to hear about it and refute. Defaults (200 ms, x4, 5
nodes): min 0.8 s, max 4.8 s, and `Timing.detection_bound` = 8.1 s < 10 s.

Incarnation of a fresh process: wall-clock milliseconds at start. A restarted node
keeps its id and joined_at, and its new incarnation is larger than any its previous
life reached (that would take one refutation per millisecond of uptime), so its
alive beats its own old dead record. If the clock stepped back, the old record
comes back to us at join time and the ordinary refute rule lifts us above it.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, replace
from typing import Any, Literal

State = Literal["alive", "suspect", "dead", "left", "removed"]
ALIVE: State = "alive"
SUSPECT: State = "suspect"
DEAD: State = "dead"
LEFT: State = "left"
REMOVED: State = "removed"
RANK: dict[str, int] = {ALIVE: 0, SUSPECT: 1, DEAD: 2, LEFT: 3, REMOVED: 4}

# memberlist defaults. A broadcast is sent RETRANSMIT_MULT * ceil(log10(n + 1)) times.
RETRANSMIT_MULT = 4
# Longest suspicion, as a multiple of the shortest (Lifeguard).
SUSPICION_MAX_MULT = 6
# Largest number accepted for incarnations and timestamps: exact in JSON doubles, and
# far from orjson's 64-bit limit even after refutations add one.
MAX_WIRE_INT = 2**53 - 1
MAX_ID_LEN = 256


def initial_incarnation(wall_time_s: float) -> int:
    """Incarnation for a fresh process: wall-clock ms, larger than any earlier life's."""
    return int(wall_time_s * 1000)


@dataclass(frozen=True, slots=True)
class Timing:
    """The protocol's clocks, in seconds, derived from Config (see module docstring)."""

    interval: float  # gossip_interval_ms: one probe starts per interval
    probe_timeout: float  # probe_timeout_ms: a direct ping fails after this
    suspicion_multiplier: int
    retransmit_mult: int = RETRANSMIT_MULT

    def suspicion_bounds(self, n: int) -> tuple[float, float]:
        low = self.suspicion_multiplier * max(1.0, math.log10(n + 1)) * self.interval
        return low, SUSPICION_MAX_MULT * low

    def confirmations_wanted(self, n: int) -> int:
        k = self.suspicion_multiplier - 2
        return 0 if n - 2 < k else max(k, 0)

    def detection_bound(self, n: int) -> float:
        """Worst case from a crash to the first node declaring it dead, in a cluster of n.

        Round-robin reaches the target within 2(n-1) probes of one prober; the direct
        ping fails within probe_timeout, the indirect ones within 2 * probe_timeout;
        the suspicion lasts at most `max`; expiry is checked once per interval.
        """
        return (2 * (n - 1) + 1) * self.interval + 3 * self.probe_timeout + (
            self.suspicion_bounds(n)[1]
        )


@dataclass(frozen=True, slots=True)
class Member:
    """One row of the table. Times are in the caller's `now` units (monotonic seconds)."""

    id: str
    address: str
    joined_at: int
    state: State
    incarnation: int
    last_seen: float | None  # last direct or indirect proof of life; None if never heard
    state_change: float

    def update(self, source: str) -> Update:
        return Update(self.id, self.address, self.joined_at, self.state, self.incarnation, source)


@dataclass(frozen=True, slots=True)
class Update:
    """A gossip message about one member, asserted by `source`."""

    id: str
    address: str
    joined_at: int
    state: State
    incarnation: int
    source: str

    def key(self) -> tuple[int, int]:
        return (self.incarnation, RANK[self.state])

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "address": self.address,
            "joined_at": self.joined_at,
            "state": self.state,
            "incarnation": self.incarnation,
            "from": self.source,
        }

    @classmethod
    def from_wire(cls, raw: Any) -> Update:
        """Validate a decoded JSON object; ValueError names what is wrong."""
        if not isinstance(raw, dict):
            raise ValueError("member update must be an object")
        member_id = check_text(raw.get("id"), "id")
        address = check_address(raw.get("address"))
        state = raw.get("state")
        if state not in RANK:
            raise ValueError(f"member update: state must be one of {', '.join(RANK)}")
        source = raw.get("from", member_id)
        if not isinstance(source, str) or not 0 < len(source) <= MAX_ID_LEN:
            raise ValueError("member update: from must be a node id")
        return cls(member_id, address, _count(raw, "joined_at"), state,
                   _count(raw, "incarnation"), source)


def check_text(value: Any, name: str) -> str:
    """A node id or address: non-empty, printable, bounded."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID_LEN or not value.isprintable():
        raise ValueError(f"{name} must be a non-empty printable string")
    return value


def check_address(value: Any) -> str:
    address = check_text(value, "address")
    host, sep, port = address.rpartition(":")
    if not (sep and host and " " not in address and port.isascii() and port.isdigit()
            and 0 < int(port) < 65536):
        raise ValueError(f"address {address!r} is not host:port")
    return address


def _count(raw: dict[str, Any], name: str) -> int:
    value = raw.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_WIRE_INT:
        raise ValueError(f"member update: {name} must be an integer in 0..2^53-1")
    return value


@dataclass(slots=True)
class Suspicion:
    """A suspect's death timer; it shrinks as other nodes confirm the suspicion."""

    incarnation: int
    start: float
    min_timeout: float
    max_timeout: float
    k: int
    confirmers: set[str] = field(default_factory=set)

    def confirm(self, source: str) -> bool:
        """Count a new independent suspector; True if it was new (and so worth re-gossiping)."""
        if source in self.confirmers or len(self.confirmers) > self.k:
            return False
        self.confirmers.add(source)
        return True

    def deadline(self) -> float:
        if self.k < 1:
            return self.start + self.min_timeout
        confirmations = min(max(len(self.confirmers) - 1, 0), self.k)
        frac = math.log(confirmations + 1) / math.log(self.k + 1)
        spread = self.max_timeout - self.min_timeout
        return self.start + max(self.min_timeout, self.max_timeout - spread * frac)


@dataclass(slots=True)
class _Pending:
    update: Update
    transmits: int
    seq: int


class BroadcastQueue:
    """memberlist's TransmitLimitedQueue: updates waiting to ride on outgoing messages.

    A newer update about a member replaces the queued one. Each message takes the
    least-sent updates first (newest first among equals); an update is dropped after
    `retransmit_mult * ceil(log10(n + 1))` sends, enough for an epidemic to reach
    everyone with high probability while keeping messages small.
    """

    def __init__(self, retransmit_mult: int = RETRANSMIT_MULT) -> None:
        self._mult = retransmit_mult
        self._items: dict[str, _Pending] = {}
        self._seq = 0

    def __len__(self) -> int:
        return len(self._items)

    def push(self, update: Update) -> None:
        self._seq += 1
        self._items[update.id] = _Pending(update, 0, self._seq)

    def retransmit_limit(self, n: int) -> int:
        """How many messages carry one update in a cluster of n."""
        return self._mult * math.ceil(math.log10(max(n, 1) + 1))

    def take(self, limit: int, n: int) -> list[Update]:
        cap = self.retransmit_limit(n)
        chosen = sorted(self._items.values(), key=lambda p: (p.transmits, -p.seq))[:limit]
        for pending in chosen:
            pending.transmits += 1
            if pending.transmits >= cap:
                del self._items[pending.update.id]
        return [p.update for p in chosen]

    def pending(self) -> list[Update]:
        return [p.update for p in self._items.values()]


class MemberTable:
    """The membership table of one node, ourselves included, and its SWIM transitions."""

    def __init__(
        self,
        *,
        self_id: str,
        address: str,
        joined_at: int,
        incarnation: int,
        timing: Timing,
        now: float,
        rng: random.Random | None = None,
    ) -> None:
        self.self_id = self_id
        self.timing = timing
        self.queue = BroadcastQueue(timing.retransmit_mult)
        self.members: dict[str, Member] = {
            self_id: Member(self_id, address, joined_at, ALIVE, incarnation, now, now)
        }
        self._suspicions: dict[str, Suspicion] = {}
        self._rng = rng or random.Random()
        self._order: list[str] = []
        self._next = 0

    @property
    def me(self) -> Member:
        return self.members[self.self_id]

    def live_count(self) -> int:
        """n for the formulas: alive or suspect members, ourselves included."""
        return sum(1 for m in self.members.values() if m.state in (ALIVE, SUSPECT))

    # -- the one handler every fact goes through ------------------------------------

    def apply(self, update: Update, now: float, *, broadcast: bool = True) -> Member | None:
        """Apply one gossip fact; return the new record if it changed anything.

        `broadcast=False` merges without re-gossiping (a full table from push-pull:
        its sender already gossips those facts). A refutation is always gossiped.
        """
        if update.id == self.self_id:
            return self._about_self(update)
        current = self.members.get(update.id)
        if current is not None and update.key() <= (current.incarnation, RANK[current.state]):
            self._maybe_confirm(current, update, broadcast)
            return None
        changed = current is None or current.state != update.state
        record = Member(
            update.id, update.address, update.joined_at, update.state, update.incarnation,
            current.last_seen if current else None,
            now if changed else current.state_change,
        )
        self.members[update.id] = record
        self._suspicions.pop(update.id, None)
        if update.state == SUSPECT:
            n = self.live_count()
            low, high = self.timing.suspicion_bounds(n)
            self._suspicions[update.id] = Suspicion(
                update.incarnation, now, low, high, self.timing.confirmations_wanted(n),
                {update.source},
            )
        # Probe newcomers (and the returning) in this round rather than after a reshuffle.
        was_probed = current is not None and current.state in (ALIVE, SUSPECT)
        if (not was_probed and update.state in (ALIVE, SUSPECT)
                and update.id not in self._order[self._next:]):
            self._order.insert(self._rng.randint(self._next, len(self._order)), update.id)
        if broadcast:
            self.queue.push(update)
        return record

    def _maybe_confirm(self, current: Member, update: Update, broadcast: bool) -> None:
        if not (update.state == SUSPECT == current.state
                and update.incarnation == current.incarnation):
            return
        suspicion = self._suspicions.get(update.id)
        if suspicion is not None and suspicion.confirm(update.source) and broadcast:
            self.queue.push(update)

    def _about_self(self, update: Update) -> Member | None:
        me = self.me
        if me.state == LEFT:
            return None  # leaving: let the cluster believe it
        if update.state == ALIVE:
            stale = update.incarnation <= me.incarnation
        else:
            stale = update.incarnation < me.incarnation
        if stale:
            return None
        refuted = replace(me, incarnation=max(me.incarnation, update.incarnation) + 1)
        self.members[self.self_id] = refuted
        self.queue.push(refuted.update(self.self_id))
        return refuted

    # -- facts we originate --------------------------------------------------------

    def suspect(self, member_id: str, incarnation: int, now: float) -> Member | None:
        """Our probe of `member_id` (as it was at `incarnation`) failed."""
        member = self.members.get(member_id)
        if member is None or member_id == self.self_id:
            return None
        suspect = replace(member, state=SUSPECT, incarnation=incarnation)
        return self.apply(suspect.update(self.self_id), now)

    def expire(self, now: float) -> list[Member]:
        """Declare dead every suspect whose timer ran out."""
        dead = []
        for member_id, suspicion in list(self._suspicions.items()):
            if now < suspicion.deadline():
                continue
            member = self.members[member_id]
            gone = replace(member, state=DEAD, incarnation=suspicion.incarnation)
            record = self.apply(gone.update(self.self_id), now)
            self._suspicions.pop(member_id, None)
            if record is not None:
                dead.append(record)
        return dead

    def leave(self, now: float) -> Member:
        """Mark ourselves left at our current incarnation and queue it for gossip."""
        me = replace(self.me, state=LEFT, state_change=now)
        self.members[self.self_id] = me
        self.queue.push(me.update(self.self_id))
        return me

    def reap(self, now: float, dead_after: float, left_after: float) -> list[Member]:
        """Tombstone the members dead for `dead_after` or left for `left_after` seconds,
        and forget tombstones older than the longer of the two; returns the reaped members
        as they were (their tombstones are in the table).

        Local, not gossiped: every node reaps on its own clock (see the module docstring).
        """
        forget_after = max(dead_after, left_after)
        reaped = []
        for member in list(self.members.values()):
            if member.id == self.self_id:
                continue  # a leaving node keeps itself
            age = now - member.state_change
            if member.state == REMOVED and age >= forget_after:
                del self.members[member.id]
            elif ((member.state == DEAD and age >= dead_after)
                  or (member.state == LEFT and age >= left_after)):
                self._tombstone(member, now)
                reaped.append(member)
        return reaped

    def remove(self, member_id: str, now: float) -> Member:
        """An operator removes a dead or left member at once; gossiped to the others.

        LookupError if we do not know it (or it is removed already); ValueError if it
        is alive or suspect: removing a member that may still be running would only
        make it refute, so it must be stopped or leave first.
        """
        member = self.members.get(member_id)
        if member is None or member.state == REMOVED:
            raise LookupError(f"no member {member_id!r} in this node's member table")
        if member_id == self.self_id or member.state not in (DEAD, LEFT):
            raise ValueError(
                f"member {member_id!r} is {member.state}: only dead or left members can be "
                "removed; stop it, or make it leave (POST /cluster/leave on it), first")
        tombstone = self._tombstone(member, now)
        self.queue.push(tombstone.update(self.self_id))
        return tombstone

    def _tombstone(self, member: Member, now: float) -> Member:
        tombstone = replace(member, state=REMOVED, state_change=now)
        self.members[member.id] = tombstone
        self._suspicions.pop(member.id, None)
        return tombstone

    def seen(self, member_id: str, now: float) -> None:
        """Record a proof of life (a message or an ack from it); never changes state."""
        member = self.members.get(member_id)
        if member is not None and member_id != self.self_id:
            self.members[member_id] = replace(member, last_seen=now)

    # -- what to send, and to whom ------------------------------------------------------

    def piggyback(self, limit: int) -> list[Update]:
        return self.queue.take(limit, self.live_count())

    def bad_news_for(self, member_id: str) -> Update | None:
        """Our record of a peer we are talking to, if it is suspect, dead or removed.

        Sent along with every ping to it and every reply to it, so a member hears a
        false suspicion (or, after a partition heals, its death or removal) at once
        and refutes.
        """
        member = self.members.get(member_id)
        if member is None or member.state not in (SUSPECT, DEAD, REMOVED):
            return None
        return member.update(self.self_id)

    def snapshot(self) -> list[Update]:
        """The whole table as updates, for join and push-pull; tombstones stay local, or two
        nodes would hand the same tombstone back and forth and never forget it."""
        return [m.update(self.self_id) for m in self.members.values() if m.state != REMOVED]

    def next_probe_target(self) -> Member | None:
        """Round-robin over a shuffled list of alive and suspect peers, reshuffled per round."""
        for _ in range(2):
            while self._next < len(self._order):
                member = self.members.get(self._order[self._next])
                self._next += 1
                if member is not None and member.state in (ALIVE, SUSPECT):
                    return member
            self._order = [m.id for m in self._peers((ALIVE, SUSPECT))]
            self._rng.shuffle(self._order)
            self._next = 0
        return None

    def helpers(self, target_id: str, k: int) -> list[Member]:
        """Up to k alive peers other than the target, to ask for an indirect probe."""
        candidates = [m for m in self._peers((ALIVE,)) if m.id != target_id]
        return self._rng.sample(candidates, min(k, len(candidates)))

    def random_peer(self, states: tuple[str, ...]) -> Member | None:
        candidates = self._peers(states)
        return self._rng.choice(candidates) if candidates else None

    def _peers(self, states: tuple[str, ...]) -> list[Member]:
        return [m for m in self.members.values() if m.id != self.self_id and m.state in states]
