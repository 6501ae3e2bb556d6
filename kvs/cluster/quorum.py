"""Quorum CAS: this node as the CASPaxos proposer of the requests it receives, and the
internal routes through which the other voters' proposers reach it as an acceptor.

The decisions are kvs/paxos.py's (pure); this module does the I/O around one `Round`:

    change(key, f) ─► per-key queue ─► Round.start() ─► Prepare/Accept to every voter
        (this node: Engine.paxos_step; peers: POST /internal/paxos/{prepare,accept})
        ◄─ replies fed to Round.receive() until an outcome, or Round.expire() at timeout
        Rejected ─► again (bounded, with jitter); Indeterminate ─► an identity round tells
        whether the value was chosen; the answer maps the outcome to a result or an error

A key's value is `Register(seq, Version)`. Before a promise's version is looked at by the
change, the proposer's HLC observes its stamp, so the version it stamps next wins the
conflict order over every version it was promised: ballot order and conflict order agree.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any, NamedTuple

import orjson
from aiohttp import web

from kvs import paxos
from kvs import paxos_wire as W
from kvs.cluster.outbox import Outbox
from kvs.cluster.swim.membership import Membership
from kvs.cluster.transport import HttpTransport, TransportError
from kvs.conditions import Conditions, failures
from kvs.config import Config
from kvs.engine import Engine
from kvs.errors import (
    BadRequest,
    CASConflict,
    KVSError,
    NotFound,
    QuorumIndeterminate,
    QuorumUnavailable,
    TooLarge,
)
from kvs.http.toolkit import encoded_size, json_body, json_response
from kvs.keys import validate_key
from kvs.model import Version, is_quorum_version, new_quorum_version_id
from kvs.paxos import Register

PREPARE_PATH = "/internal/paxos/prepare"
ACCEPT_PATH = "/internal/paxos/accept"
BATCH_PATH = "/internal/paxos/batch"
BATCH_MESSAGES = 64  # messages in one batch, at most
# Encoded messages in one batch of several, at most: under the 1 MiB every node's body
# limit adds to its values' limit. A single message goes alone, whatever its size.
BATCH_BYTES = 512 * 1024
WAITING_MESSAGES = 4096  # waiting for one voter, at most; more: that voter does not answer
ROUND_TIMEOUT = 2.0  # seconds one round waits for its replies; then Round.expire()
CHAIN_WAIT_S = 1.0  # how long an indeterminate write's check waits for the chain's versions
CHAIN_POLL_S = 0.005
ATTEMPTS = 8  # rounds one change may take when they meet higher ballots (contention)
BACKOFF_S = 0.002  # first retry's jitter bound; doubles with each attempt
BALLOT_BLOCK = 1 << 20  # ballot counters reserved (persisted) at a time
CAS_IN_QUORUM = ("cas compares a node-local index; with consistency=quorum use if_seq (the "
                 "key's cluster-wide sequence number, in every quorum answer as `seq`)")

Change = Callable[[Register | None], Register | None]
_EXPIRED = object()  # what a round's timer puts among its replies


class _FloorReached(Exception):
    """The next ballot would pass the persisted floor: reserve more, then start again."""


class _Proposer(paxos.Proposer):
    """A Proposer that never hands out a ballot above `floor`, the counter this node has
    durably reserved: after a restart it starts above every ballot it used before."""

    floor = 0

    def next_ballot(self) -> paxos.Ballot:
        if self.counter + 1 > self.floor:
            raise _FloorReached
        return super().next_ballot()


class _Refused(KVSError):
    """Every change of a `_Combined` that was run refused (or read): the round then ends
    like a refused change, and each change's answer is in `results`."""

    status = 409


class _Combined:
    """The changes of one key that waited for a round, as one change: in order, each on
    the register the ones before it left. The first that writes gives the round's value;
    the refusals and reads after it are applied to that value, up to a second change
    that would write, which waits for the next round with every change after it. One
    round writes one register, so every write stays one version with its own `seq`. The
    refusals and reads are answered with the register they saw: all of them take effect
    at the round's commit, in this order (docs/consistency.md, "Changes that wait share
    a round").

    Called again for every try of the round; `results` (one per change run: a register,
    or the KVSError that refused it) and `last` (the register written, or None) are
    those of the last call, the one whose value the round sent."""

    def __init__(self, changes: list[Change]) -> None:
        self.changes = changes
        self.results: list[Register | KVSError | None] = []
        self.last: Register | None = None

    def __call__(self, current: Register | None) -> Register | None:
        self.results, self.last = [], None
        for change in self.changes:
            seen = current if self.last is None else self.last
            try:
                new = change(seen)
            except KVSError as refusal:
                self.results.append(refusal)
                continue
            if new != seen:
                if self.last is not None:
                    break  # a second write: the next round's
                self.last = new
            self.results.append(new)
        if self.last is not None:
            return self.last
        if any(isinstance(result, KVSError) for result in self.results):
            raise _Refused("refused")
        return current


class _Waiting(NamedTuple):
    change: Change
    answer: asyncio.Future[Register | None]


def _settle(answer: asyncio.Future[Register | None],
            result: Register | BaseException | None) -> None:
    if answer.done():
        return
    if isinstance(result, BaseException):
        answer.set_exception(result)
    else:
        answer.set_result(result)


Message = tuple[str, paxos.Prepare | paxos.Accept]  # (key, message)


class Quorum:
    def __init__(self, engine: Engine, transport: HttpTransport, membership: Membership,
                 *, timeout: float = ROUND_TIMEOUT) -> None:
        self.engine = engine
        self.transport = transport
        self.membership = membership
        self.timeout = timeout
        self._proposer: _Proposer | None = None
        self._keys: dict[str, tuple[asyncio.Lock, list[int]]] = {}
        self._waiting: dict[str, list[_Waiting]] = {}  # changes waiting for a round, by key
        # This node's own acceptor steps still running when their round ended: see _run.
        self._stragglers: set[asyncio.Task[None]] = set()
        self._outboxes: dict[str, Outbox[tuple[Message, bytes]]] = {}  # by voter address
        # Rounds this node proposed, by outcome (committed, conflict, rejected,
        # unavailable, indeterminate): /metrics.
        self.rounds: Counter[str] = Counter()
        # Paxos messages sent to other voters, and the calls that carried them: /metrics.
        self.sent: Counter[str] = Counter()

    def routes(self) -> list[web.RouteDef]:
        return [web.post(PREPARE_PATH, self._handle_prepare),
                web.post(ACCEPT_PATH, self._handle_accept),
                web.post(BATCH_PATH, self._handle_batch)]

    # -- the changes kvs makes ------------------------------------------------------------

    async def read(self, key: str) -> Register | None:
        """The key's register as of a point inside this call (linearizable)."""
        return await self.change(key, paxos.identity)

    def write(self, key: str, cond: Conditions, if_seq: int | None,
              make: Callable[[Version | None, Register | None], Version]) -> Change:
        """A change: the conditions and `if_seq` against the current register, then the
        next register with the version `make(live current, register)` builds."""

        def change(current: Register | None) -> Register:
            seq = current.seq if current else 0
            live = self.base(key, current)
            try:
                problems = failures(cond, live)
            except NotFound as absent:
                raise NotFound(absent.message, seq=seq) from None
            if if_seq is not None and if_seq != seq:
                problems.append(f"if_seq expected {if_seq}, actual {seq}")
            if problems:
                shown = None if live is None else self.local_copy(live)
                raise CASConflict("; ".join(problems), current=quorum_json(shown, seq, meta=True),
                                  seq=seq)
            return Register(seq + 1, make(live, current))
        return change

    def local_copy(self, version: Version) -> Version:
        """This node's copy of a version a round showed, with its node-local indexes
        (the register's own copy has none), if the node holds it yet."""
        try:
            return self.engine.get_version(version.key, version.version)
        except NotFound:
            return version

    def base(self, key: str, current: Register | None) -> Version | None:
        """The live version a change of `key` starts from: the register's; for a key no
        quorum round has written yet, this node's own copy (a key written locally before,
        e.g. a lease taken while there was one voter, keeps its value for the conditions
        of its first quorum write, so `cas: 0` does not take it over). A quorum round's
        version there (anti-entropy spreads what a minority accepted) was never chosen,
        since the register is empty: it does not count."""
        if current is not None:
            return current.value if current.value.is_live(self.engine.now_ms()) else None
        try:
            local = self.engine.get(key)
        except NotFound:
            return None
        return None if is_quorum_version(local.version) else local

    def new_version(self, key: str, value: Any, *, flags: int = 0, ttl_ms: int | None = None,
                    deleted: bool = False) -> Callable[[Version | None, Register | None], Version]:
        """What `write` stores: a version stamped by this node's HLC when the round runs."""
        engine = self.engine

        def make(live: Version | None, current: Register | None) -> Version:
            if deleted and live is None:
                raise NotFound(f"key {key!r} not found", seq=current.seq if current else 0)
            ts, logical = engine.hlc.tick()
            expires_at = engine.expiry(ts, ttl_ms)
            return Version(key=key, value=value, version=new_quorum_version_id(ts), timestamp=ts,
                           logical=logical, origin=engine.node_id,
                           origin_joined_at=engine.joined_at, flags=flags,
                           expires_at=expires_at, deleted=deleted,
                           parent=current.value.version if current else None)
        return make

    async def put(self, key: str, cond: Conditions, if_seq: int | None, *, value: Any = None,
                  flags: int = 0, ttl_ms: int | None = None, deleted: bool = False) -> Register:
        """A quorum write (a delete with `deleted`): the conditions and `if_seq` checked
        against the chosen register, then the next register committed."""
        if cond.cas not in (None, 0):
            raise BadRequest(CAS_IN_QUORUM)
        self.engine.check_writable(cond, conditional=if_seq is not None)
        make = self.new_version(key, value, flags=flags, ttl_ms=ttl_ms, deleted=deleted)
        register = await self.change(key, self.write(key, cond, if_seq, make))
        assert register is not None, "a write's change always makes a register"
        return register

    def local_seq(self, version: Version) -> int | None:
        """The `seq` of this node's copy of a quorum key's version, without a round: the
        register this node accepted last, plus the versions above it on the version's
        parent chain (every quorum version's parent is the register before it). None if
        the chain does not lead there (history trimmed). Like any local read it may be
        stale, or show a value a minority accepted that is never chosen."""
        accepted = self.engine.acceptor_state(version.key).accepted
        if accepted is None or accepted.value is None:
            return None
        register: Register = accepted.value
        parents = {v.version: v.parent for v in self.engine.history(version.key)}
        walk: str | None = version.version
        for steps in range(len(parents) + 1):
            if walk == register.value.version:
                return register.seq + steps
            walk = parents.get(walk) if walk is not None else None
        return None

    async def change(self, key: str, change: Change) -> Register | None:
        """Run `change` on the key until it commits; raise what the outcome says otherwise.

        At most one round per key at a time on this node (the one-round-trip cache
        belongs to one round). The changes of the key that come meanwhile wait, and the
        next round runs them together (see `_Combined`): under contention, a refused CAS
        and the writes around it share rounds instead of taking one each.
        """
        waiting = _Waiting(change, asyncio.get_running_loop().create_future())
        self._waiting.setdefault(key, []).append(waiting)
        try:
            async with self._one_round(key):
                while not waiting.answer.done():  # ours may wait behind another's write
                    await self._run_waiting(key)
        except asyncio.CancelledError:
            self._forget(key, waiting)
            raise
        return waiting.answer.result()

    def _forget(self, key: str, waiting: _Waiting) -> None:
        """A caller that stopped waiting: its change is not run, or its answer not read."""
        queue = self._waiting.get(key, [])
        if waiting in queue:
            queue.remove(waiting)
            if not queue:
                del self._waiting[key]
        if waiting.answer.done() and not waiting.answer.cancelled():
            waiting.answer.exception()  # read here, so asyncio does not report it unread
        waiting.answer.cancel()

    async def _run_waiting(self, key: str) -> None:
        """One combined change of the key's waiting changes. Those after its write wait for
        the next round; the others get their answers (also an error that ended it)."""
        taken = [waiting for waiting in self._waiting.pop(key, []) if not waiting.answer.done()]
        combined = _Combined([waiting.change for waiting in taken])
        try:
            await self._change_until_known(key, combined)
        except _Refused:
            pass  # every answer is in combined.results
        except Exception as exc:
            for waiting in taken:
                _settle(waiting.answer, exc)
            return
        except BaseException:  # cancelled: the round's outcome is unknown to the others
            for waiting in taken:
                _settle(waiting.answer, QuorumIndeterminate(
                    "the change may or may not be applied: the node stopped its round; read "
                    "with consistency=quorum"))
            raise
        for waiting, result in zip(taken, combined.results, strict=False):
            _settle(waiting.answer, result)
        later = taken[len(combined.results):]
        if later:
            self._waiting[key] = later + self._waiting.get(key, [])

    async def _change_until_known(self, key: str, change: _Combined) -> None:
        """Rounds of `change` until one commits (the answers are in `change.results`) or
        is refused; raises what any other outcome says. An indeterminate write that an
        identity round shows was not chosen (and never will be) is run again: its
        conditions are checked anew, after the random pause of a rejected round: the
        proposers that left each other's rounds indeterminate would otherwise meet again
        at once (so would reads, whose indeterminate rounds are simply run again)."""
        for attempt in range(ATTEMPTS):
            outcome = await self._attempts(key, change)
            if not isinstance(outcome, paxos.Indeterminate):
                _result(outcome)
                return
            if change.last is not None and await self._chosen(key, change.last,
                                                        await self._resolve(key)):
                return
            await _backoff(attempt)
        # Every round ended without a quorum, and none of them was chosen (or it was a read).
        raise QuorumUnavailable(
            f"{ATTEMPTS} rounds in a row ended without a quorum of acceptors (other nodes "
            "changing the key at the same time, or voters failing); nothing was written, "
            "retry", contended=True)

    async def _resolve(self, key: str) -> Register | None:
        """The chosen register after an indeterminate write: whatever stops this read
        leaves the write's outcome unknown, and the answer must say so. The read writes
        its value back at a ballot above the write's: without that, a value a minority
        accepted could still be chosen by a later round after `_chosen` said it never
        will be, and the change would run twice.

        An identity round that is itself indeterminate (its write-back met the same
        contention) is run again, as `read` does: writing back what a quorum holds changes
        nothing, so only the last round's outcome counts. Giving up on the first one made
        concurrent quorum updates answer 503 while every voter was up; so did running it
        again at once (the nodes resolving the same key kept meeting each other's ballots,
        8 rounds in a row, in 2-4 of 20 runs of test_client_quorum's concurrent updates;
        0 of 30 after a random pause). The same for a read whose rounds all met higher
        ballots (Rejected, ATTEMPTS times in a row): that is contention, not an answer, and
        the write's outcome is worth more rounds (24 concurrent updates through 3 nodes
        answered 503 in 5 of 40 runs without this, 0 of 40 with it)."""
        outcome: paxos.Outcome = paxos.Rejected(None, None)
        for attempt in range(ATTEMPTS):
            outcome = await self._attempts(key, paxos.identity, write_back=True)
            if not isinstance(outcome, paxos.Indeterminate | paxos.Rejected):
                break
            await _backoff(attempt)
        try:
            return _result(outcome)
        except (QuorumUnavailable, QuorumIndeterminate):
            raise QuorumIndeterminate(
                "the change may or may not be applied: its round ended without a quorum of "
                "acceptors, and reading the key to learn the outcome failed too; read with "
                "consistency=quorum") from None

    async def _chosen(self, key: str, ours: Register | None, chosen: Register | None) -> bool:
        """True if `ours` is on the chain that ends at `chosen`; False if it is not, and so
        never will be (a later round chose without it; the change may run again);
        QuorumIndeterminate if this node cannot tell: the versions between them have left
        its history, or have not reached it within CHAIN_WAIT_S. They were chosen, so a
        majority holds them, and a voter one round behind gets them from its own Accepts
        a moment later (without the wait, 1 of 40 runs of 24 concurrent updates answered
        503 so)."""
        if ours is None or chosen is None or chosen.seq < ours.seq:
            return False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CHAIN_WAIT_S
        while (walk := self._above(key, chosen, ours.seq)) is None:
            if loop.time() >= deadline:
                raise QuorumIndeterminate(
                    "the change may or may not be applied: later changes of the key followed "
                    "and this node's history does not show whether they descend from it; "
                    "read with consistency=quorum", seq=chosen.seq)
            await asyncio.sleep(CHAIN_POLL_S)
        return (walk.version if chosen.seq == ours.seq else walk.parent) == ours.value.version

    def _above(self, key: str, chosen: Register, seq: int) -> Version | None:
        """The version of the chain ending at `chosen` right above `seq` (`chosen`'s own if
        the same), by this node's history; None where the history lacks a link."""
        try:
            versions = {v.version: v for v in self.engine.history(key)}
        except NotFound:
            versions = {}
        walk: Version | None = chosen.value
        for _ in range(chosen.seq - seq - 1):
            walk = versions.get(walk.parent) if walk is not None and walk.parent else None
        return walk

    # -- rounds ----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _one_round(self, key: str) -> AsyncIterator[None]:
        lock, users = self._keys.setdefault(key, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._keys[key]

    async def _attempts(self, key: str, change: Change, *, write_back: bool = False
                        ) -> paxos.Outcome:
        """Rounds until one is not Rejected (a higher ballot or a newer epoch was met)."""
        outcome: paxos.Outcome = paxos.Rejected(None, None)
        for attempt in range(ATTEMPTS):
            proposer = await self._ready_proposer()
            try:
                outcome = await self._run(proposer.begin(key, change, write_back=write_back))
            except _FloorReached:
                proposer.forget(key)
                continue
            finally:
                await self._share_config(proposer)
            self.rounds[type(outcome).__name__.lower()] += 1
            if not isinstance(outcome, paxos.Rejected):
                return outcome
            await _backoff(attempt)
        return outcome

    async def _ready_proposer(self) -> _Proposer:
        engine = self.engine
        if engine.voters is None:
            raise QuorumUnavailable(
                "this node knows no voters for quorum keys yet (set initial_voters, or send "
                "the request to a voter)", answered=0, voters=0, needed=1)
        proposer = self._proposer
        if proposer is None:
            # Above the persisted floor and the persisted HLC: both survive restarts.
            counter = max(engine.ballot_floor, engine.hlc.last[0])
            proposer = self._proposer = _Proposer(engine.node_id, engine.voters, counter=counter)
        if engine.voters.epoch > proposer.config.epoch:
            proposer.config = engine.voters
        if proposer.counter + 2 > engine.ballot_floor:  # a round takes at most two ballots
            await engine.reserve_ballots(proposer.counter + BALLOT_BLOCK)
        proposer.floor = engine.ballot_floor
        return proposer

    async def _share_config(self, proposer: _Proposer) -> None:
        """A newer configuration the proposer was told of is this node's too."""
        known = self.engine.voters
        if known is not None and proposer.config.epoch > known.epoch:
            await self.engine.install_voters(proposer.config)

    async def _run(self, round_: paxos.Round) -> paxos.Outcome:
        loop = asyncio.get_running_loop()
        replies: asyncio.Queue[Any] = asyncio.Queue()  # replies, None (no answer), _EXPIRED
        tasks: list[asyncio.Task[None]] = []
        key = round_.key

        def send(sends: list[paxos.Send]) -> int:
            encoded: dict[int, bytes] = {}  # a message goes to every voter: encoded once
            # The peers' messages first: tasks run in the order they were made, so the
            # requests are on the wire before this node's own step takes the loop, and the
            # peers' steps overlap with it (a majority needs a peer's answer anyway).
            for to, message in sorted(sends, key=lambda send: send.to == self.engine.node_id):
                if to == self.engine.node_id:
                    tasks.append(asyncio.create_task(self._step_here(key, message, replies)))
                    continue
                data = encoded.get(id(message))
                if data is None:
                    data = encoded[id(message)] = orjson.dumps(W.message_json(key, message))
                self._post(key, to, message, data, replies.put_nowait)
            return len(sends)

        # One timer for the round, not one per reply awaited.
        timer = loop.call_at(loop.time() + self.timeout, replies.put_nowait, _EXPIRED)
        try:
            waiting = send(round_.start())
            while round_.outcome is None and waiting:
                reply = await replies.get()
                if reply is _EXPIRED:
                    break
                waiting -= 1
                if reply is not None:
                    self._observe(reply)
                    waiting += send(round_.receive(reply))
        finally:
            timer.cancel()
            self._let_finish(tasks)
        return round_.outcome or round_.expire()

    def _let_finish(self, tasks: list[asyncio.Task[None]]) -> None:
        """Local steps the round no longer waits for (a majority answered first) finish on
        their own; a peer's message is never cancelled either: cancelling one half-way
        closed its pooled connection, and the next round paid a new TCP (and TLS)
        connection to that voter, one every round (seen in a profile of sequential
        quorum CAS)."""
        for task in tasks:
            if not task.done():
                self._stragglers.add(task)
                task.add_done_callback(self._stragglers.discard)

    async def close(self) -> None:
        """Stop the steps and messages still in flight (node shutdown)."""
        for task in list(self._stragglers):
            task.cancel()
        await asyncio.gather(*self._stragglers, return_exceptions=True)
        for outbox in self._outboxes.values():
            await outbox.close()

    def _observe(self, reply: paxos.Reply) -> None:
        """Our HLC passes every version we were promised, before the change stamps one."""
        if isinstance(reply, paxos.Promise) and reply.accepted and reply.accepted.value:
            version: Version = reply.accepted.value.value
            self.engine.hlc.observe((version.timestamp, version.logical))

    async def _step_here(self, key: str, message: paxos.Prepare | paxos.Accept,
                         replies: asyncio.Queue[Any]) -> None:
        """This node's own acceptor step; None for a storage fault (no answer)."""
        reply: paxos.Reply | None = None
        with contextlib.suppress(KVSError):
            reply = await self.engine.paxos_step(key, message)
        replies.put_nowait(reply)

    def _post(self, key: str, to: str, message: paxos.Prepare | paxos.Accept, data: bytes,
              answer: Callable[[paxos.Reply | None], None]) -> None:
        """A message to a peer voter, through its outbox; `answer` gets the reply, or None
        for no usable answer (an unknown member, a failed call, another node there)."""
        member = self.membership.member(to)
        if member is None:
            answer(None)
            return
        outbox = self._outboxes.get(member.address)
        if outbox is None:
            outbox = self._outboxes[member.address] = Outbox(
                partial(self._send, member.address), max_items=BATCH_MESSAGES,
                max_bytes=BATCH_BYTES, max_waiting=WAITING_MESSAGES, max_age=self.timeout)

        def done(future: asyncio.Future[paxos.Reply | None]) -> None:
            reply = None if future.cancelled() or future.exception() else future.result()
            answer(reply if reply is not None and reply.voter == to else None)

        outbox.submit(((key, message), data), len(data)).add_done_callback(done)

    async def _send(self, address: str, batch: list[tuple[Message, bytes]]
                    ) -> list[paxos.Reply | None]:
        """One call with the batch's messages: a lone one to its own route, several to the
        batch route. Replies in the batch's order; all None if the call failed."""
        self.sent.update(messages=len(batch), calls=1)
        try:
            if len(batch) == 1:
                (_, message), encoded = batch[0]
                path = ACCEPT_PATH if isinstance(message, paxos.Accept) else PREPARE_PATH
                raw = await self.transport.call(address, path, orjson.Fragment(encoded),
                                                self.timeout)
                return [W.reply_from(raw)]
            entries = [[_kind(message), orjson.Fragment(encoded)] for (_, message), encoded in batch]
            raw = await self.transport.call(address, BATCH_PATH, {"messages": entries},
                                            self.timeout)
            return list(W.replies_from(raw, len(batch)))
        except (TransportError, ValueError):
            return [None] * len(batch)

    # -- this node as an acceptor ------------------------------------------------------------

    async def _handle_prepare(self, request: web.Request) -> web.Response:
        return await self._handle(request, accept=False)

    async def _handle_accept(self, request: web.Request) -> web.Response:
        return await self._handle(request, accept=True)

    async def _handle(self, request: web.Request, *, accept: bool) -> web.Response:
        try:
            key, message = W.message_from(await json_body(request, dict), accept=accept)
        except ValueError as exc:
            raise BadRequest(f"malformed paxos message: {exc}") from None
        self._check_message(key, message)
        reply = await self.engine.paxos_step(key, message)
        return json_response(W.reply_json(reply))

    async def _handle_batch(self, request: web.Request) -> web.Response:
        """A proposer's messages that came while its previous call to us was in flight:
        every one is checked before any is taken (a bad one refuses the batch, and changes
        nothing), then they are taken in order and answered after one fsync."""
        try:
            messages = W.batch_from(await json_body(request, dict), BATCH_MESSAGES)
        except ValueError as exc:
            raise BadRequest(f"malformed paxos batch: {exc}") from None
        for key, message in messages:
            self._check_message(key, message)
        replies = await self.engine.paxos_steps(messages)
        return json_response({"replies": [W.reply_json(reply) for reply in replies]})

    def _check_message(self, key: str, message: paxos.Prepare | paxos.Accept) -> None:
        validate_key(key)
        if isinstance(message, paxos.Accept) and message.value is not None:
            self._check_version(message.value.value)

    def _check_version(self, version: Version) -> None:
        """What a replicated version must pass, and no stamp from beyond our clock's reach
        (it would drag this node's HLC, persisted, into the future)."""
        engine = self.engine
        size = encoded_size("value", version.value)
        if size > engine.config.max_value_bytes:
            raise TooLarge(f"value is {size} bytes encoded; max_value_bytes is "
                           f"{engine.config.max_value_bytes}")
        if version.timestamp > engine.now_ms() + engine.max_offset_ms:
            raise BadRequest("the version's timestamp is more than max_clock_offset_ms ahead "
                             "of this node's clock")


async def _backoff(attempt: int) -> None:
    """A random pause before the next round of a contended key: proposers that met each
    other's ballots would otherwise meet again at once, round after round."""
    await asyncio.sleep(random.uniform(0, BACKOFF_S * 2 ** attempt))


def _kind(message: paxos.Prepare | paxos.Accept) -> str:
    return "accept" if isinstance(message, paxos.Accept) else "prepare"


def quorum_json(version: Version | None, seq: int, *, meta: bool = False) -> dict[str, Any] | None:
    """A version as quorum answers show it: with the key's `seq`."""
    if version is None:
        return None
    return {**(version.meta() if meta else version.to_json()), "seq": seq}


def _result(outcome: paxos.Outcome) -> Register | None:
    if isinstance(outcome, paxos.Committed):
        return outcome.value  # type: ignore[no-any-return]
    if isinstance(outcome, paxos.Conflict):
        raise outcome.error
    if isinstance(outcome, paxos.Unavailable):
        raise QuorumUnavailable(
            f"{outcome.answered} of {outcome.voters} voters answered; {outcome.needed} needed. "
            "Nothing was written.", answered=outcome.answered, voters=outcome.voters,
            needed=outcome.needed)
    if isinstance(outcome, paxos.Rejected):
        raise QuorumUnavailable(
            f"{ATTEMPTS} rounds in a row met a higher ballot (other nodes changing the key at "
            "the same time); nothing was written, retry", contended=True)
    raise QuorumIndeterminate(
        "the change may or may not be applied: its round ended without a quorum of "
        "acceptors; read with consistency=quorum")


def bootstrap_voters(engine: Engine, config: Config) -> None:
    """The epoch-1 configuration of a node that has none: `initial_voters`, or itself
    alone when it starts a new cluster (no seeds)."""
    if engine.voters is not None:
        return
    ids = config.initial_voters or (() if config.seed_nodes else (engine.node_id,))
    if ids:
        engine.bootstrap_voters(paxos.Config.majority(1, ids))
