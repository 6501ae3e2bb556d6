"""The asyncio side of SWIM: the probe loop, joining, leaving, and the /internal/swim/ routes.

All decisions live in `state.MemberTable`; this module moves its updates over HTTP.
Wire messages (JSON POST; `U` is `Update.to_wire()`, "from" is the sender's own record,
and every message, request or reply, also carries "settings": `compat.cluster_settings`):

    /internal/swim/ping      {"from": U, "target": id, "updates": [U]}
                           → {"ack": bool, "from": U, "updates": [U], "now_ms": T}
    /internal/swim/ping-req  {"from": U, "target": {"id", "address"}, "updates": [U]}
                           → {"ack": bool, "from": U, "updates": [U], "now_ms": T}
                                                           (ack: target answered)
    /internal/swim/join      {"from": U, "members": [U]}      join and periodic push-pull
                           → {"from": U, "members": [U], "updates": [U], "now_ms": T}

`now_ms` is the sender's wall clock: every exchange also measures the peer's clock
offset (engine.clocks, a ClockMonitor). An update whose incarnation is beyond our wall
clock + max_clock_offset_ms is dropped, whoever sends it: incarnations start at the
wall clock in ms, so no honest node has one, and a forged one (2^53-1, `left`) would
otherwise evict a member for good, since no restart could ever outbid it.

A message whose settings differ from ours is refused before anything in it is
applied: the handler answers 409 incompatible_settings (with our settings), the
caller drops a reply the same way, both log an error naming each setting and both
values, and the peer is listed in `status()` (GET /cluster/status) until one of its
messages agrees again. A refused peer never becomes alive here, so no data is
exchanged with it; a refused joiner keeps retrying its seeds, like Consul's
retry_join, and so gets in as soon as it is restarted with the right settings.

Every gossip_interval one tick runs:
  1. suspects whose timer ran out are declared dead;
  2. a probe of the next round-robin peer starts (unless one to it is still running):
     ping with probe_timeout; on failure ping-req through INDIRECT_CHECKS alive peers
     with 2 * probe_timeout (they ping it themselves); if nobody got an ack, suspect;
  3. every RECONNECT_TICKS, one dead peer is pinged with the news of its death: if it
     is back (a healed partition), it refutes in its reply and is alive again;
  4. every PUSH_PULL_TICKS, the whole table is exchanged with one alive peer, which
     repairs anything gossip dropped (memberlist's push-pull).
Probes do not wait for each other, so the tick keeps its pace even when
probe_timeout is longer than the interval.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import orjson
from aiohttp import web

from kvs.clock import ClockMonitor, wall_ms
from kvs.cluster import auth
from kvs.cluster.compat import Settings, cluster_settings, differences, parse_settings
from kvs.cluster.swim.state import (
    ALIVE,
    DEAD,
    LEFT,
    MAX_WIRE_INT,
    REMOVED,
    SUSPECT,
    Member,
    MemberTable,
    Timing,
    Update,
    check_address,
    check_text,
    initial_incarnation,
)
from kvs.cluster.transport import HttpTransport, TransportError
from kvs.config import Config
from kvs.errors import BadRequest, KVSError, NotFound
from kvs.http.toolkit import json_body, json_response

log = logging.getLogger("kvs.swim")

PING_PATH = "/internal/swim/ping"
PING_REQ_PATH = "/internal/swim/ping-req"
JOIN_PATH = "/internal/swim/join"

INDIRECT_CHECKS = 3  # memberlist's IndirectChecks
MAX_PIGGYBACK = 32  # updates per message; HTTP has no MTU, but keep messages small
RECONNECT_TICKS = 5  # one ping to a dead peer per 5 intervals (1 s at the default 200 ms)
PUSH_PULL_TICKS = 50  # full-table exchange every 50 intervals (10 s at the default)
LEAVE_ROUNDS = 2  # a leaving node tells LEAVE_FANOUT peers directly, twice
LEAVE_FANOUT = 8
MAX_UPDATES = 1024  # per message; more is not a peer talking, it is garbage
MAX_MEMBERS = 65_536
JOIN_RETRY_MAX_S = 5.0
MAX_REFUSALS = 256  # incompatible peers listed at once; the oldest goes first
REFUSAL_LOG_INTERVAL_S = 60.0  # the same refusal is logged again at most this often

Listener = Callable[[Member], None]


class Incompatible(KVSError):
    """A peer's cluster-wide settings differ from ours: nothing it sent is applied."""

    status = 409
    code = "incompatible_settings"


class NotRemovable(KVSError):
    """`DELETE /cluster/members/{id}` of a member that may still be running."""

    status = 409
    code = "not_removable"


@dataclass
class Refusal:
    """A peer we refused, or that refused us, for incompatible settings."""

    address: str
    node: str
    message: str
    at_ms: int
    logged_at: float  # monotonic; when this refusal was last logged

    def to_json(self) -> dict[str, Any]:
        return {"address": self.address, "node": self.node, "message": self.message,
                "at": self.at_ms}


class Membership:
    """One node's SWIM membership: owns the MemberTable, probes peers, serves the routes."""

    def __init__(
        self,
        *,
        node_id: str,
        address: str,
        joined_at: int,
        seeds: Sequence[str],
        config: Config,
        transport: HttpTransport,
        now: Callable[[], float] = time.monotonic,
        incarnation: int | None = None,
        rng: random.Random | None = None,
        clocks: ClockMonitor | None = None,
        wall: Callable[[], int] = wall_ms,
    ) -> None:
        self.node_id = node_id
        self.address = address
        self.timing = Timing(
            interval=config.gossip_interval_ms / 1000,
            probe_timeout=config.probe_timeout_ms / 1000,
            suspicion_multiplier=config.suspicion_multiplier,
        )
        self.settings = cluster_settings(config)
        self._reap_after = (float(config.reap_after_seconds), float(config.reap_left_after_seconds))
        self._refusals: dict[str, Refusal] = {}
        self._seeds = [s for s in seeds if s != address]
        self._transport = transport
        self._clocks = clocks
        self._wall = wall
        self._max_offset_ms = config.max_clock_offset_ms
        self.refused_updates = 0  # updates dropped for an incarnation from the future
        self._refusals_logged: set[str] = set()
        self._now = now
        self._rng = rng or random.Random()
        self._table = MemberTable(
            self_id=node_id,
            address=address,
            joined_at=joined_at,
            incarnation=initial_incarnation(wall() / 1000) if incarnation is None else incarnation,
            timing=self.timing,
            now=now(),
            rng=self._rng,
        )
        self._listeners: list[Listener] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._probing: set[str] = set()
        self._ticks = 0
        self._running = False

    # -- public API ------------------------------------------------------------------

    @property
    def incarnation(self) -> int:
        return self._table.me.incarnation

    def member(self, member_id: str) -> Member | None:
        return self._table.members.get(member_id)

    def members(self) -> list[dict[str, Any]]:
        """All known members, ourselves included, as `GET /cluster/members` shows them.

        last_seen is ms since epoch of the last proof of life, or null if never heard from.
        """
        now, wall = self._now(), self._wall()
        rows = []
        for m in sorted(self._table.members.values(), key=lambda m: m.id):
            if m.state == REMOVED:
                continue
            if m.id == self.node_id:
                last_seen: int | None = wall
            else:
                last_seen = None if m.last_seen is None else int(wall - (now - m.last_seen) * 1000)
            rows.append({
                "id": m.id, "address": m.address, "joined_at": m.joined_at, "state": m.state,
                "incarnation": m.incarnation, "last_seen": last_seen,
            })
        return rows

    def alive_peers(self) -> list[Member]:
        """Alive peers to exchange data with; never one refused for incompatible settings."""
        return [m for m in self._table.members.values() if m.state == ALIVE
                and m.id != self.node_id and m.address not in self._refusals]

    def status(self) -> dict[str, Any]:
        """What GET /cluster/status shows of membership: the peers refused, and why."""
        return {"incompatible_peers": [r.to_json() for r in self._refusals.values()]}

    def check_removable(self, member_id: str) -> None:
        """Raise the NotRemovable that `remove` would (this node, alive or suspect), changing
        nothing: a caller does its part first (a voter change) only for a removable member."""
        if member_id == self.node_id:
            raise NotRemovable("this is the node you are talking to; to take it out of the "
                               "cluster, POST /cluster/leave on it")
        member = self._table.members.get(member_id)
        if member is not None and member.state in (ALIVE, SUSPECT):
            raise NotRemovable(f"member {member_id!r} is {member.state}: only dead or left "
                               "members can be removed; stop it, or make it leave (POST "
                               "/cluster/leave on it), first")

    def remove(self, member_id: str) -> Member:
        """Remove a dead or left member from the table at once, and tell the cluster.

        NotFound if unknown here; NotRemovable if it is this node, alive or suspect.
        It can rejoin later: a restart, or its refutation, outbids the removal.
        """
        self.check_removable(member_id)
        previous = self._table.members.get(member_id)
        try:
            record = self._table.remove(member_id, self._now())
        except LookupError as exc:
            raise NotFound(str(exc)) from None
        except ValueError as exc:
            raise NotRemovable(str(exc)) from None
        assert previous is not None
        self._report(previous, record)
        return record

    def add_listener(self, callback: Listener) -> None:
        """Call `callback(member)` after every accepted change to another member's record.

        That is: a new member, a state change, an address change, or a higher incarnation
        (a refutation or a restart, after which the member may have missed writes).
        Callbacks run inline and must not block; schedule a task for real work.
        """
        self._listeners.append(callback)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post(PING_PATH, self._handle_ping),
            web.post(PING_REQ_PATH, self._handle_ping_req),
            web.post(JOIN_PATH, self._handle_join),
        ]

    async def start(self) -> None:
        """Join through the seeds (retried in the background if none answers) and start probing."""
        if self._running:
            return
        self._running = True
        log.info("event=start node=%s address=%s incarnation=%d seeds=%s",
                 self.node_id, self.address, self.incarnation, ",".join(self._seeds) or "-")
        if self._seeds and not await self._join_once():
            log.warning("event=join_failed node=%s seeds=%s retry=background",
                        self.node_id, ",".join(self._seeds))
            self._spawn(self._join_until_answered())
        self._spawn(self._probe_loop())

    async def stop(self) -> None:
        """Stop probing and gossiping at once, without telling anyone (a crash, to peers)."""
        self._running = False
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def leave(self) -> None:
        """Tell the cluster we are leaving for good, then stop.

        Probing stops first (a leaving node must not accuse anyone), then `left` is sent
        directly to up to LEAVE_FANOUT peers, twice, one interval apart; the peers that
        hear it gossip it on.
        """
        if self._table.me.state == LEFT:
            return
        await self.stop()
        self._table.leave(self._now())
        log.info("event=leave node=%s incarnation=%d", self.node_id, self.incarnation)
        for round_no in range(LEAVE_ROUNDS):
            peers = [m for m in self._table.members.values()
                     if m.id != self.node_id and m.state in (ALIVE, SUSPECT)]
            targets = self._rng.sample(peers, min(LEAVE_FANOUT, len(peers)))
            await asyncio.gather(*(self._ping(p.id, p.address) for p in targets))
            if round_no + 1 < LEAVE_ROUNDS:
                await asyncio.sleep(self.timing.interval)

    # -- applying facts ------------------------------------------------------------------

    def _apply(self, update: Update, *, broadcast: bool = True) -> None:
        if (update.id == self.node_id and update.state == ALIVE
                and update.address != self.address and update.incarnation > self.incarnation):
            log.warning("event=id_conflict node=%s other_address=%s incarnation=%d: another "
                        "process uses this node id, or our previous run had a later clock",
                        self.node_id, update.address, update.incarnation)
        previous = self._table.members.get(update.id)
        record = self._table.apply(update, self._now(), broadcast=broadcast)
        if record is not None:
            self._report(previous, record)

    def _report(self, previous: Member | None, record: Member) -> None:
        if record.id == self.node_id:
            log.info("event=refute node=%s incarnation=%d", self.node_id, record.incarnation)
            return
        if previous is None or previous.state != record.state or previous.address != record.address:
            log.info("event=member node=%s id=%s address=%s state=%s previous=%s incarnation=%d",
                     self.node_id, record.id, record.address, record.state,
                     previous.state if previous else "-", record.incarnation)
        else:
            log.debug("event=member node=%s id=%s state=%s incarnation=%d",
                      self.node_id, record.id, record.state, record.incarnation)
        for callback in self._listeners:
            try:
                callback(record)
            except Exception:
                log.exception("event=listener_failed node=%s id=%s", self.node_id, record.id)

    def _absorb(self, message: Any, *, members_key: str | None = None,
                address: str | None = None) -> tuple[Update, bool]:
        """Validate a whole message, then apply it; ValueError (malformed) or Incompatible
        (settings differ) before anything is applied. `address`: whom we called, for a reply."""
        sender, updates, members, settings = _parse(message, members_key)
        self._check_settings(address or sender.address, sender.id, settings)
        bound = self._wall() + self._max_offset_ms
        if self._admitted(sender, bound):
            self._apply(sender)
            self._table.seen(sender.id, self._now())
        for update in updates:
            if self._admitted(update, bound):
                self._apply(update)
        for update in members:
            if self._admitted(update, bound):
                self._apply(update, broadcast=False)
        return sender, message.get("ack") is True

    def _admitted(self, update: Update, bound: int) -> bool:
        """False for an incarnation beyond `bound` (see the module docstring): dropped,
        counted, and logged once per member id."""
        if update.incarnation <= bound:
            return True
        self.refused_updates += 1
        if update.id not in self._refusals_logged and len(self._refusals_logged) < MAX_MEMBERS:
            self._refusals_logged.add(update.id)
            log.warning("event=incarnation_from_future node=%s id=%s state=%s from=%s ahead_ms=%d: "
                        "dropped; is that node's clock wrong, or the message forged? Logged once "
                        "per id", self.node_id, update.id, update.state, update.source,
                        update.incarnation - bound + self._max_offset_ms)
        return False

    # -- compatibility -------------------------------------------------------------------

    def _check_settings(self, address: str, peer_id: str, settings: Settings) -> None:
        diffs = differences(self.settings, settings, f"{peer_id} ({address})")
        if diffs:
            self._refuse(address, peer_id, diffs)
            raise Incompatible(f"node {self.node_id} refuses {peer_id} ({address}): settings "
                               "that must be equal on every node differ: " + "; ".join(diffs),
                               node=self.node_id, settings=self.settings)
        if self._refusals.pop(address, None) is not None:
            log.info("event=compatible node=%s peer=%s address=%s: its settings agree now",
                     self.node_id, peer_id, address)

    def _refused_by(self, address: str, body: bytes) -> None:
        """A peer answered 409 incompatible_settings: list it with our own reading of why."""
        try:
            answer = orjson.loads(body)
            diffs = differences(self.settings, parse_settings(answer.get("settings")),
                                f"{answer.get('node')} ({address})")
            peer_id = str(answer.get("node"))
        except (ValueError, AttributeError):
            return  # not kvs's answer: an ordinary failed call
        self._refuse(address, peer_id, diffs or ["it refused our settings"])

    def _refuse(self, address: str, peer_id: str, diffs: list[str]) -> None:
        """Note an incompatible peer; log an error when new, changed, or once per interval."""
        message = "settings that must be equal on every node differ: " + "; ".join(diffs)
        now = self._now()
        known = self._refusals.pop(address, None)
        if len(self._refusals) >= MAX_REFUSALS:
            del self._refusals[next(iter(self._refusals))]
        logged = known.logged_at if known is not None and known.message == message else None
        if logged is None or now - logged >= REFUSAL_LOG_INTERVAL_S:
            log.error("event=incompatible node=%s peer=%s address=%s: %s; it is not admitted "
                      "to the cluster until the settings agree", self.node_id, peer_id, address,
                      message)
            logged = now
        self._refusals[address] = Refusal(address, peer_id, message, int(time.time() * 1000),
                                          logged)

    def _message(self, peer_id: str, **fields: Any) -> dict[str, Any]:
        """A message to `peer_id`: our record, our settings, news for it, our wall clock
        (so it can measure our offset), and `fields`."""
        return {"from": self._me(), "settings": self.settings,
                "updates": self._outgoing(peer_id), "now_ms": self._wall(), **fields}

    def _outgoing(self, peer_id: str) -> list[dict[str, Any]]:
        news = self._table.bad_news_for(peer_id)
        updates = [news] if news else []
        updates += self._table.piggyback(MAX_PIGGYBACK - len(updates))
        return [u.to_wire() for u in updates]

    def _me(self) -> dict[str, Any]:
        return self._table.me.update(self.node_id).to_wire()

    # -- the loops -------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("event=task_failed node=%s", self.node_id, exc_info=task.exception())

    async def _probe_loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            self._tick()
            next_at += self.timing.interval
            delay = next_at - loop.time()
            if delay < 0:  # fell behind (a stalled loop): resume the pace, do not burst
                next_at, delay = loop.time(), 0.0
            await asyncio.sleep(delay)

    def _tick(self) -> None:
        now = self._now()
        for record in self._table.expire(now):
            self._report(replace(record, state=SUSPECT), record)
        for gone in self._table.reap(now, *self._reap_after):
            self._report(gone, self._table.members[gone.id])
        self._ticks += 1
        target = self._table.next_probe_target()
        if target is not None and target.id not in self._probing:
            self._probing.add(target.id)
            self._spawn(self._probe(target))
        if self._ticks % RECONNECT_TICKS == 0:
            dead = self._table.random_peer((DEAD,))
            if dead is not None and dead.id not in self._probing:
                self._probing.add(dead.id)
                self._spawn(self._reconnect(dead))
        if self._ticks % PUSH_PULL_TICKS == 0:
            peer = self._table.random_peer((ALIVE,))
            if peer is not None:
                self._spawn(self._push_pull(peer.address))

    async def _probe(self, target: Member) -> None:
        try:
            if await self._ping(target.id, target.address):
                return
            helpers = self._table.helpers(target.id, INDIRECT_CHECKS)
            acks = await asyncio.gather(*(self._ping_req(h, target) for h in helpers))
            if any(acks):
                self._table.seen(target.id, self._now())
                return
            log.debug("event=probe_failed node=%s id=%s helpers=%d",
                      self.node_id, target.id, len(helpers))
            previous = self._table.members.get(target.id)
            record = self._table.suspect(target.id, target.incarnation, self._now())
            if record is not None:
                self._report(previous, record)
        finally:
            self._probing.discard(target.id)

    async def _reconnect(self, dead: Member) -> None:
        # _outgoing adds the dead record itself: a live receiver refutes in its reply.
        try:
            await self._ping(dead.id, dead.address)
        finally:
            self._probing.discard(dead.id)

    async def _call(self, address: str, path: str, payload: dict[str, Any], timeout: float,
                    members_key: str | None = None) -> tuple[Update, bool] | None:
        """One call and its absorbed reply: (sender, ack), or None if it failed or was refused."""
        try:
            reply = await self._timed_call(address, path, payload, timeout)
            return self._absorb(reply, members_key=members_key, address=address)
        except Incompatible:
            return None  # logged and listed by _check_settings
        except (TransportError, ValueError) as exc:
            if isinstance(exc, TransportError) and exc.status == Incompatible.status:
                self._refused_by(address, exc.body)
            log.debug("event=call_failed node=%s path=%s address=%s error=%r",
                      self.node_id, path, address, exc)
            return None

    async def _timed_call(self, address: str, path: str, payload: Any, timeout: float) -> Any:
        """One request to a peer; its round trip also measures the peer's clock."""
        sent = self._wall()
        try:
            reply = await self._transport.call(address, path, payload, timeout)
        except TransportError as exc:
            if exc.cause == auth.CAUSE_WINDOW and self._clocks is not None:
                self._clocks.refused(address)
            raise
        remote = reply.get("now_ms") if isinstance(reply, dict) else None
        if (self._clocks is not None and isinstance(remote, int) and not isinstance(remote, bool)
                and 0 < remote <= MAX_WIRE_INT):
            self._clocks.round_trip(address, sent, remote, self._wall())
        return reply

    async def _ping(self, target_id: str, address: str) -> bool:
        answer = await self._call(address, PING_PATH, self._message(target_id, target=target_id),
                                      self.timing.probe_timeout)
        return answer is not None and answer[1] and answer[0].id == target_id

    async def _ping_req(self, helper: Member, target: Member) -> bool:
        payload = self._message(helper.id, target={"id": target.id, "address": target.address})
        answer = await self._call(helper.address, PING_REQ_PATH, payload,
                                      2 * self.timing.probe_timeout)
        return answer is not None and answer[1]

    async def _push_pull(self, address: str) -> str | None:
        """Push-pull: swap full tables with the node at `address`; its id, or None on failure."""
        payload = {"from": self._me(), "settings": self.settings,
                   "members": [u.to_wire() for u in self._table.snapshot()], "now_ms": self._wall()}
        answer = await self._call(address, JOIN_PATH, payload,
                                      max(1.0, 4 * self.timing.probe_timeout), "members")
        return None if answer is None else answer[0].id

    async def _join_once(self) -> bool:
        for seed in self._rng.sample(self._seeds, len(self._seeds)):
            sender_id = await self._push_pull(seed)
            # Joined once the seed's own record was taken: a seed whose incarnation we
            # drop (our clock is far behind) is retried, which keeps measuring our offset.
            if sender_id is not None and sender_id != self.node_id and self.member(sender_id):
                log.info("event=joined node=%s seed=%s via=%s members=%d",
                         self.node_id, seed, sender_id, len(self._table.members))
                return True
        return False

    async def _join_until_answered(self) -> None:
        delay = self.timing.interval
        while not await self._join_once():
            await asyncio.sleep(delay)
            delay = min(2 * delay, JOIN_RETRY_MAX_S)

    # -- HTTP handlers -------------------------------------------------------------------

    async def _handle_ping(self, request: web.Request) -> web.Response:
        message = await json_body(request, dict)
        with _refused_as_bad_request():
            target = message.get("target")
            if not isinstance(target, str):
                raise ValueError("target must be a node id")
            sender, _ = self._absorb(message)
        # A ping meant for another id reached a node that now owns its address: not an ack.
        return json_response(self._message(sender.id, ack=target == self.node_id))

    async def _handle_ping_req(self, request: web.Request) -> web.Response:
        message = await json_body(request, dict)
        with _refused_as_bad_request():
            target = message.get("target")
            if not isinstance(target, dict):
                raise ValueError("target must be {id, address}")
            target_id = check_text(target.get("id"), "target id")
            target_address = check_address(target.get("address"))
            sender, _ = self._absorb(message)
        ack = await self._ping(target_id, target_address)
        return json_response(self._message(sender.id, ack=ack))

    async def _handle_join(self, request: web.Request) -> web.Response:
        message = await json_body(request, dict)
        with _refused_as_bad_request():
            sender, _ = self._absorb(message, members_key="members")
        return json_response(self._message(
            sender.id, members=[u.to_wire() for u in self._table.snapshot()]))


@contextmanager
def _refused_as_bad_request() -> Iterator[None]:
    """The pure membership code says ValueError; a peer that sent it hears 400."""
    try:
        yield
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


def _parse(
    message: Any, members_key: str | None
) -> tuple[Update, list[Update], list[Update], Settings]:
    if not isinstance(message, dict):
        raise ValueError("message must be a JSON object")
    sender = Update.from_wire(message.get("from"))
    updates = _updates(message.get("updates", []), "updates", MAX_UPDATES)
    members = _updates(message.get(members_key, []), members_key, MAX_MEMBERS) if members_key else []
    return sender, updates, members, parse_settings(message.get("settings"))


def _updates(raw: Any, name: str, limit: int) -> list[Update]:
    if not isinstance(raw, list) or len(raw) > limit:
        raise ValueError(f"{name} must be a list of at most {limit} member updates")
    return [Update.from_wire(item) for item in raw]
