"""CASPaxos (D. Rystsov, arXiv:1802.07000): one linearizable register per key, no leader,
no log. Pure: state machines and data, no I/O; the engine persists and the transport sends.

One round of a change `f` on a key, as the proposer P sees it (voters A, B, C):

    P: ballot b = (counter + 1, P)
    P ──Prepare(b)──► A, B, C        each acceptor: b >= promised? persist promised=b, then
    P ◄──Promise(b, accepted)──        answer with its accepted (ballot, value), else Nack
    P: current = value of the highest accepted ballot among a prepare quorum of promises
       new = f(current)              (f refuses with a KVSError: a Conflict, see below)
    P ──Accept(b, new)──► A, B, C    each acceptor: b >= promised? persist accepted=(b, new),
    P ◄──Ack(b)──                      then answer Ack, else Nack
    P: an accept quorum of Acks: `new` is chosen, the change is committed

Every committed value was computed from the value committed before it, so the committed
changes form one chain (docs/consistency.md has the argument).

The contract with whoever runs an acceptor: a `Step` names the state to keep; it must be
durable (fsynced) BEFORE the reply leaves the node. An acceptor that answers and then
forgets its promise or its accepted value can let two proposers each believe they hold a
majority, and two different values get committed on one chain position.

Also here: configurations of voters with an epoch (acceptors refuse a proposer's older
epoch and tell it the newer configuration), the one-voter-at-a-time membership change,
the one-round-trip path for a proposer that just committed the key, and `Register`, the
value shape whose `seq` is the key's cluster-wide fencing number.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from kvs.errors import KVSError

# ----------------------------------------------------------------------------- data


@dataclass(frozen=True, slots=True, order=True)
class Ballot:
    """Totally ordered by counter, then node id; a proposer never uses one twice, so two
    rounds never share a ballot (the counter must survive the proposer's restarts)."""

    counter: int
    node: str


@dataclass(frozen=True, slots=True)
class Config:
    """Who votes, from which epoch on, and how many answers each phase needs.

    Any prepare quorum must meet any accept quorum (prepare_quorum + accept_quorum >
    len(voters)); that is what lets a prepare see every committed value.
    """

    epoch: int
    voters: frozenset[str]
    prepare_quorum: int
    accept_quorum: int

    def __post_init__(self) -> None:
        n = len(self.voters)
        if not (n and 1 <= self.prepare_quorum <= n and 1 <= self.accept_quorum <= n):
            raise ValueError(f"quorums must be within 1..{n} voters: {self}")
        if self.prepare_quorum + self.accept_quorum <= n:
            raise ValueError(f"a prepare quorum and an accept quorum may not meet: {self}")

    @classmethod
    def majority(cls, epoch: int, voters: Iterable[str]) -> Config:
        members = frozenset(voters)
        quorum = len(members) // 2 + 1
        return cls(epoch, members, quorum, quorum)


@dataclass(frozen=True, slots=True)
class Proposal:
    ballot: Ballot
    value: Any


@dataclass(frozen=True, slots=True)
class AcceptorState:
    """One key on one acceptor. `promised` is the highest ballot promised or accepted."""

    promised: Ballot | None = None
    accepted: Proposal | None = None


@dataclass(frozen=True, slots=True)
class Register:
    """The value shape for kvs keys: `seq` grows by one with every committed change (a
    read or a write-back keeps it), so it numbers the chain: a fencing token and a CAS
    condition that mean the same on every node."""

    seq: int
    value: Any


def successor(current: Register | None, value: Any) -> Register:
    return Register(current.seq + 1 if current else 1, value)


def identity(current: Any) -> Any:
    """The change of a linearizable read, and of the rescan after a membership change."""
    return current


# ------------------------------------------------------------------- messages, replies


@dataclass(frozen=True, slots=True)
class Prepare:
    ballot: Ballot
    config: Config


@dataclass(frozen=True, slots=True)
class Accept:
    """`next`: the one-round-trip path: the acceptor also promises `next` in the same
    durable step, so the proposer's next change of the key needs no prepare phase."""

    ballot: Ballot
    value: Any
    config: Config
    next: Ballot | None = None

    def __post_init__(self) -> None:
        if self.next is not None and not self.next > self.ballot:
            raise ValueError("the piggybacked promise must be for a later ballot")


@dataclass(frozen=True, slots=True)
class Install:
    """A membership change telling an acceptor its new configuration."""

    config: Config


@dataclass(frozen=True, slots=True)
class Promise:
    voter: str
    ballot: Ballot
    accepted: Proposal | None


@dataclass(frozen=True, slots=True)
class Ack:
    voter: str
    ballot: Ballot
    next: Ballot | None  # the ballot also promised, if the Accept asked


@dataclass(frozen=True, slots=True)
class Nack:
    """`of_accept`: it answers an Accept. A Nack of a (duplicated, late) Prepare says
    nothing about whether the acceptor accepted the round's value before; nor does the
    Nack of a duplicated Accept, unless `accepted` (the ballot it holds a value of; they
    only grow) is below the round's: then it never accepted the round's value."""

    voter: str
    ballot: Ballot
    promised: Ballot
    of_accept: bool = False
    accepted: Ballot | None = None


@dataclass(frozen=True, slots=True)
class Stale:
    """The message carried an older epoch than the acceptor's: here is the newer config."""

    voter: str
    ballot: Ballot | None
    config: Config
    of_accept: bool = False
    accepted: Ballot | None = None  # as in Nack


@dataclass(frozen=True, slots=True)
class Installed:
    voter: str
    epoch: int


Message = Prepare | Accept
Reply = Promise | Ack | Nack | Stale


class Send(NamedTuple):
    to: str
    message: Prepare | Accept | Install


# ------------------------------------------------------------------------- acceptor


class Step(NamedTuple):
    """An acceptor's answer: persist `config` and `state` (where they changed) durably,
    then send `reply`. Never the other way round."""

    config: Config | None
    state: AcceptorState
    reply: Reply


def prepare(voter: str, state: AcceptorState, ballot: Ballot) -> tuple[AcceptorState, Promise | Nack]:
    """Promise to accept nothing below `ballot`. A repeated prepare of the promised ballot
    (a duplicated message) is promised again: it changes nothing."""
    if state.promised is not None and ballot < state.promised:
        return state, Nack(voter, ballot, state.promised)
    kept = state if state.promised == ballot else dataclasses.replace(state, promised=ballot)
    return kept, Promise(voter, ballot, state.accepted)


def accept(voter: str, state: AcceptorState, ballot: Ballot, value: Any,
           next_ballot: Ballot | None = None) -> tuple[AcceptorState, Ack | Nack]:
    """Accept unless a higher ballot was promised; with `next_ballot`, promise it too."""
    if state.promised is not None and ballot < state.promised:
        return state, Nack(voter, ballot, state.promised, True, _held(state))
    promised = next_ballot if next_ballot is not None else ballot
    return AcceptorState(promised, Proposal(ballot, value)), Ack(voter, ballot, next_ballot)


def _held(state: AcceptorState) -> Ballot | None:
    return state.accepted.ballot if state.accepted else None


def _newer(known: Config | None, carried: Config) -> Config:
    return carried if known is None or carried.epoch > known.epoch else known


def receive(voter: str, known: Config | None, state: AcceptorState, message: Message) -> Step:
    """One acceptor's whole handling of a Prepare or Accept for one key. A message of an
    older epoch than the acceptor's is refused with the newer config; a newer one is
    adopted (epochs only grow)."""
    if known is not None and message.config.epoch < known.epoch:
        return Step(known, state, Stale(voter, message.ballot, known, isinstance(message, Accept),
                                        _held(state)))
    if isinstance(message, Prepare):
        kept, reply = prepare(voter, state, message.ballot)
    else:
        kept, reply = accept(voter, state, message.ballot, message.value, message.next)
    return Step(_newer(known, message.config), kept, reply)


def install(voter: str, known: Config | None, config: Config) -> tuple[Config | None, Installed | Stale]:
    """Adopt a newer configuration (persist it, then answer)."""
    if known is not None and config.epoch < known.epoch:
        return known, Stale(voter, None, known)
    kept = _newer(known, config)
    return kept, Installed(voter, kept.epoch)


# ------------------------------------------------------------------------- outcomes


@dataclass(frozen=True, slots=True)
class Committed:
    """`value` is chosen at `ballot` (for a read of an already chosen value: its ballot)."""

    value: Any
    ballot: Ballot | None


@dataclass(frozen=True, slots=True)
class Conflict:
    """The change refused `current`; `current` is chosen, so the refusal is linearizable."""

    current: Any
    error: KVSError


@dataclass(frozen=True, slots=True)
class Rejected:
    """A higher ballot or a newer epoch was met and nothing of this round was accepted:
    retry (the proposer has already moved its counter and config on)."""

    promised: Ballot | None
    config: Config | None


@dataclass(frozen=True, slots=True)
class Unavailable:
    """Fewer than `needed` of `voters` promised before the caller gave up; nothing written."""

    answered: int
    voters: int
    needed: int


@dataclass(frozen=True, slots=True)
class Indeterminate:
    """The accept phase ended without a quorum after the value may have reached some
    acceptor: a later round may still choose it. Read with an identity round to learn."""

    accepted: int
    refused: int
    voters: int
    needed: int


Outcome = Committed | Conflict | Rejected | Unavailable | Indeterminate


# ------------------------------------------------------------------------- proposer


@dataclass(frozen=True, slots=True)
class Prepared:
    """What the one-round-trip path keeps: a prepare quorum promised `ballot`, which has
    carried no value yet, and `value` is what those promises showed chosen (after a
    commit, the value they accepted in the same step)."""

    ballot: Ballot
    value: Any
    config: Config


class Proposer:
    """One per node, for every key: the ballot counter, the newest configuration it has
    been told of, and the keys it may change in one round trip.

    `counter` must start above every counter this node used before a restart (e.g. from a
    persisted floor): a ballot reused with another value breaks the protocol. At most one
    round per key at a time: the one-round-trip cache of a key belongs to one round.
    """

    def __init__(self, node: str, config: Config, *, counter: int = 0, fast: bool = True) -> None:
        self.node = node
        self.config = config
        self.counter = counter
        self.fast = fast
        self._prepared: dict[Hashable, Prepared] = {}

    def begin(self, key: Hashable, change: Callable[[Any], Any], *,
              write_back: bool = False, keep_read: bool = True) -> Round:
        """A round applying `change` to the key's current value (None if it has none).

        `change` is side-effect free and may run more than once; it refuses by raising a
        KVSError (e.g. a failed CAS condition). Any other exception is a bug and escapes.
        `write_back`, `keep_read`: see Round.
        """
        cached = self._prepared.pop(key, None)
        if cached is not None and cached.config == self.config:
            return Round(self, key, change, cached.ballot, self.config, fast_base=cached,
                         write_back=write_back, keep_read=keep_read)
        return Round(self, key, change, self.next_ballot(), self.config, write_back=write_back,
                     keep_read=keep_read)

    def next_ballot(self) -> Ballot:
        self.counter += 1
        return Ballot(self.counter, self.node)

    def observe(self, reply: Reply) -> None:
        """Learn from any reply: move the counter past ballots seen, adopt newer configs."""
        seen = reply.promised if isinstance(reply, Nack) else (
            reply.accepted.ballot if isinstance(reply, Promise) and reply.accepted else None)
        if seen is not None:
            self.counter = max(self.counter, seen.counter)
        if isinstance(reply, Stale) and reply.config.epoch > self.config.epoch:
            self.config = reply.config

    def forget(self, key: Hashable) -> None:
        self._prepared.pop(key, None)

    def remember(self, key: Hashable, prepared: Prepared) -> None:
        self._prepared[key] = prepared


_PREPARE, _ACCEPT, _DONE = "prepare", "accept", "done"


@dataclass(slots=True)
class _Tally:
    """Replies of one phase, first reply per voter wins (duplicates change nothing)."""

    config: Config
    ok: dict[str, Reply] = field(default_factory=dict)
    refused: dict[str, Reply] = field(default_factory=dict)

    def add(self, reply: Reply, ok: bool) -> bool:
        if reply.voter not in self.config.voters or reply.voter in self.ok \
                or reply.voter in self.refused:
            return False
        (self.ok if ok else self.refused)[reply.voter] = reply
        return True

    def refused_cleanly(self, ballot: Ballot) -> bool:
        """Every refusal proves its voter never accepted `ballot`'s value."""
        return all(isinstance(r, Nack | Stale) and (r.accepted is None or r.accepted < ballot)
                   for r in self.refused.values())

    def rejected(self) -> Rejected:
        promised = max((r.promised for r in self.refused.values() if isinstance(r, Nack)),
                       default=None)
        configs = [r.config for r in self.refused.values() if isinstance(r, Stale)]
        return Rejected(promised, max(configs, key=lambda c: c.epoch, default=None))


class Round:
    """One attempt at one change of one key, sans I/O: `start()` and `receive()` return
    the messages to send; the round ends with `outcome` set, or when the caller stops
    waiting and calls `expire()`. Replies for other ballots or from non-voters are ignored.

    `keep_read`: a read that found the value chosen leaves its promises for the key's
    next change (see `_keep_promises`). A test turns it off for a resolution read whose
    write-back it turned off, so that the re-run takes a full round.

    `write_back`: accept the value even when a quorum of the promises already holds it.
    A chosen value read without a write-back does not stop a value that a minority
    accepted at a higher ballot (an indeterminate round's) from being chosen by a later
    round; written back at this round's ballot, above it, it does: what this round
    reports is then the chain's last word on every lower ballot.
    """

    def __init__(self, proposer: Proposer, key: Hashable, change: Callable[[Any], Any],
                 ballot: Ballot, config: Config, fast_base: Prepared | None = None,
                 *, write_back: bool = False, keep_read: bool = True) -> None:
        self.proposer, self.key, self.change = proposer, key, change
        self.ballot, self.config, self.write_back = ballot, config, write_back
        self.keep_read = keep_read
        self.phase = _PREPARE
        self.outcome: Outcome | None = None
        self._fast_base = fast_base
        self._tally = _Tally(config)
        self._value: Any = None
        self._refusal: KVSError | None = None
        self._next: Ballot | None = None

    def start(self) -> list[Send]:
        base = self._fast_base
        if base is not None:
            new, refusal = self._apply(base.value)
            # A refusal or a no-op must not be answered from the cache (the key may have
            # moved on elsewhere): they take the full round, with the ballot already held.
            if refusal is None and new != base.value:
                return self._begin_accept(new, None)
        return [Send(v, Prepare(self.ballot, self.config)) for v in sorted(self.config.voters)]

    def receive(self, reply: Reply) -> list[Send]:
        self.proposer.observe(reply)
        if self.phase == _DONE or reply.ballot != self.ballot:
            return []
        answers_accept = isinstance(reply, Ack) or (isinstance(reply, Nack | Stale) and reply.of_accept)
        if self.phase == _PREPARE:
            return [] if answers_accept else self._on_prepare_reply(reply)
        if answers_accept:  # late answers to the Prepare say nothing of the Accept
            self._on_accept_reply(reply)
        return []

    def expire(self) -> Outcome:
        """The caller stopped waiting for replies."""
        if self.outcome is not None:
            return self.outcome
        tally, config = self._tally, self.config
        if self.phase == _PREPARE:
            answered = len(tally.ok) + len(tally.refused)
            return self._finish(tally.rejected() if tally.refused
                                else Unavailable(answered, len(config.voters), config.prepare_quorum))
        return self._finish(Indeterminate(len(tally.ok), len(tally.refused), len(config.voters),
                                          config.accept_quorum))

    def _apply(self, current: Any) -> tuple[Any, KVSError | None]:
        try:
            return self.change(current), None
        except KVSError as refusal:
            return current, refusal

    def _on_prepare_reply(self, reply: Reply) -> list[Send]:
        tally, config = self._tally, self.config
        if not tally.add(reply, isinstance(reply, Promise)):
            return []
        if len(tally.refused) > len(config.voters) - config.prepare_quorum:
            self._finish(tally.rejected())
            return []
        if len(tally.ok) < config.prepare_quorum:
            return []
        promised = [r.accepted for r in tally.ok.values()]  # type: ignore[union-attr]
        highest = max((a for a in promised if a is not None), key=lambda a: a.ballot, default=None)
        current = highest.value if highest is not None else None
        new, refusal = self._apply(current)
        # Already chosen: an accept quorum among the promises holds the highest ballot (or
        # no promise holds anything). Then a refusal or a read needs no write-back.
        chosen = highest is None or sum(
            1 for a in promised if a is not None and a.ballot == highest.ballot) >= config.accept_quorum
        if (refusal is not None or new == current) and chosen and not self.write_back:
            if refusal is None:
                self._finish(Committed(current, highest.ballot if highest else None))
                if self.keep_read:
                    self._keep_promises(current)
            else:
                self._finish(Conflict(current, refusal))
                self._keep_promises(current)
            return []
        # Otherwise write the new value, or write the current one back (the paper's identity
        # step) so that the value this round reports cannot be undone by a later round.
        return self._begin_accept(new, refusal)

    def _begin_accept(self, value: Any, refusal: KVSError | None) -> list[Send]:
        self.phase, self._value, self._refusal = _ACCEPT, value, refusal
        self._tally = _Tally(self.config)
        self._next = self.proposer.next_ballot() if self.proposer.fast else None
        message = Accept(self.ballot, value, self.config, self._next)
        return [Send(v, message) for v in sorted(self.config.voters)]

    def _on_accept_reply(self, reply: Reply) -> None:
        tally, config = self._tally, self.config
        if not tally.add(reply, isinstance(reply, Ack)):
            return
        n, clean = len(config.voters), tally.refused_cleanly(self.ballot)
        if len(tally.ok) >= config.accept_quorum:
            self._commit()
        elif len(tally.refused) == n and clean:
            self._finish(tally.rejected())
        elif len(tally.refused) > n - config.accept_quorum and (tally.ok or not clean):
            self._finish(Indeterminate(len(tally.ok), len(tally.refused), n, config.accept_quorum))

    def _commit(self) -> None:
        promised_next = sum(1 for r in self._tally.ok.values()
                            if isinstance(r, Ack) and r.next is not None and r.next == self._next)
        self._finish(Conflict(self._value, self._refusal) if self._refusal is not None
                     else Committed(self._value, self.ballot))
        if self._next is not None and promised_next >= self.config.prepare_quorum:
            self.proposer.remember(self.key, Prepared(self._next, self._value, self.config))

    def _keep_promises(self, current: Any) -> None:
        """A refused change or a read: a prepare quorum promised this round's ballot, which
        carried no value, and showed `current` chosen. That is what a prepare of the ballot
        returns, so the key's next change through this proposer may send its Accept at
        once: a refused CAS and its retry, or a read and the CAS built on it, take one
        round trip each instead of one and two (argued in docs/consistency.md)."""
        if self.proposer.fast:
            self.proposer.remember(self.key, Prepared(self.ballot, current, self.config))

    def _finish(self, outcome: Outcome) -> Outcome:
        self.phase, self.outcome = _DONE, outcome
        self.proposer.forget(self.key)
        return outcome


# ------------------------------------------------------------------ membership change


def always_meet(voters_a: frozenset[str], quorum_a: int, voters_b: frozenset[str], quorum_b: int) -> bool:
    """Whether every `quorum_a` voters of `voters_a` share one with every `quorum_b` of
    `voters_b`: each quorum first fills itself outside the other set, the rest is common."""
    inside_a = max(quorum_a - len(voters_a - voters_b), 0)
    inside_b = max(quorum_b - len(voters_b - voters_a), 0)
    return inside_a + inside_b > len(voters_a & voters_b)


def compatible(old: Config, new: Config) -> bool:
    """Proposers of `old` and of `new` may run side by side: each one's prepares meet the
    other's accepts, and their accepts meet each other (the fence of `fenced`)."""
    return (always_meet(old.voters, old.prepare_quorum, new.voters, new.accept_quorum)
            and always_meet(new.voters, new.prepare_quorum, old.voters, old.accept_quorum)
            and always_meet(old.voters, old.accept_quorum, new.voters, new.accept_quorum))


def add_voter(config: Config, node: str) -> Config:
    if node in config.voters:
        raise ValueError(f"{node} is already a voter")
    return _next_config(config, config.voters | {node})


def remove_voter(config: Config, node: str) -> Config:
    if node not in config.voters or len(config.voters) == 1:
        raise ValueError(f"{node} is not a voter that can be removed from {sorted(config.voters)}")
    return _next_config(config, config.voters - {node})


def _next_config(config: Config, voters: frozenset[str]) -> Config:
    new = Config.majority(config.epoch + 1, voters)
    if not compatible(config, new):
        raise AssertionError(f"one-voter change {config} -> {new} is unsafe")  # a bug, not input
    return new


class Reconfiguration:
    """Moving from `old` to `new` (one voter more or less), the safe way:

    1. install: send `new` to every voter of both; wait until `fenced`: the voters that
       durably know `new` meet every accept quorum of `old`, so no proposer that still
       carries `old` can get a value accepted by a quorum any more;
    2. rescan: run a committed `identity` round of every key any voter holds state for,
       with `new` (the engine's job: it knows the keys). Now each key's latest value is
       held by an accept quorum of `new` (or by none of `old` and `new`);
    3. only then may `new` be changed again: the next configuration needs to meet only
       `new`'s quorums, not `old`'s, and (1)+(2) made that enough.
    """

    def __init__(self, old: Config, new: Config) -> None:
        if new.epoch != old.epoch + 1 or not compatible(old, new):
            raise ValueError(f"{old} -> {new} is not one safe step")
        self.old, self.new = old, new
        self.knowing: set[str] = set()

    def install(self) -> list[Send]:
        return [Send(v, Install(self.new)) for v in sorted(self.old.voters | self.new.voters)]

    def receive(self, reply: Installed | Stale) -> None:
        if isinstance(reply, Installed) and reply.epoch >= self.new.epoch:
            self.knowing.add(reply.voter)

    @property
    def fenced(self) -> bool:
        return len(self.old.voters - self.knowing) < self.old.accept_quorum
