"""Changing the voters of quorum keys, one voter at a time (kvs/paxos.py's Reconfiguration).

    POST /cluster/voters {"add": id} | {"remove": id}     (an operations request: signed
                                                            when the cluster has a secret)
      1. serialise: a quorum CAS of the register `_kvs/voters` from {from, to} of the last
         change to {from: current, to: next}; two changes at once: one gets 409
      2. install: `next` to every voter of both configurations, until `fenced`
      3. rescan: an identity round, under `next`, of every key any voter holds state for
      4. done: the next change may start (it first completes this one again if step 2 or 3
         was cut short: the register says which change was last begun)

    POST /internal/voters/join {"id": id}                  (a peer's request: the cluster
                                                            signature alone, no ACL token)
      the same change, adding `id` unless it is a voter already, for a member this node
      sees alive; answers the whole configuration

Joining as a voter (`auto_voter`, on by default): a node that is not a voter once it has
caught up (the first complete anti-entropy round of this process) asks its alive peers,
one after another with a growing pause, until one answers with a configuration that holds
it, or until it leaves. A node whose stored configuration names it reads the voters
register first: it may have been removed while it was down. Only that, graceful leave
and `kvs members remove` change the voters: failure detection never calls any of this.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import Any

from aiohttp import web

from kvs import paxos
from kvs import paxos_wire as W
from kvs.cluster.quorum import Quorum
from kvs.cluster.swim.membership import Membership
from kvs.cluster.transport import HttpTransport, TransportError
from kvs.conditions import NONE
from kvs.errors import BadRequest, Conflict, KVSError, QuorumUnavailable
from kvs.http.toolkit import json_body, json_response
from kvs.paxos import Config, Installed, Register, Stale

VOTERS_KEY = "_kvs/voters"  # the register that serialises voter changes cluster-wide
VOTERS_PATH = "/cluster/voters"
INSTALL_PATH = "/internal/paxos/install"
KEYS_PATH = "/internal/paxos/keys"
JOIN_PATH = "/internal/voters/join"
TIMEOUT = 5.0
JOIN_TIMEOUT = 60.0  # one join request: a change may wait on rounds, install and rescan
JOIN_RETRY_S = (0.2, 5.0)  # pause after the first refused join request, and its bound

log = logging.getLogger("kvs.voters")


class VoterChanges:
    def __init__(self, quorum: Quorum, transport: HttpTransport, membership: Membership,
                 rng: random.Random | None = None) -> None:
        self.quorum = quorum
        self.engine = quorum.engine
        self.transport = transport
        self.membership = membership
        self.rng = rng or random.Random()
        self._one = asyncio.Lock()
        self._joining: asyncio.Task[None] | None = None
        self._asking: asyncio.Task[bool] | None = None  # the join request under way, if any

    def routes(self) -> list[web.RouteDef]:
        return [web.post(VOTERS_PATH, self._handle_change),
                web.post(INSTALL_PATH, self._handle_install),
                web.post(KEYS_PATH, self._handle_keys),
                web.post(JOIN_PATH, self._handle_join)]

    async def change(self, *, add: str | None = None, remove: str | None = None) -> Config:
        """One voter more or less; returns the new configuration once it is complete."""
        if add:
            return await self._change(lambda base: paxos.add_voter(base, add))
        return await self._change(lambda base: paxos.remove_voter(base, remove or ""))

    async def join(self, node_id: str) -> Config:
        """Add `node_id` unless it is a voter already: a joining node that lost an answer
        asks again, and gets the same one."""
        return await self._change(
            lambda base: base if node_id in base.voters else paxos.add_voter(base, node_id))

    async def _change(self, next_of: Callable[[Config], Config]) -> Config:
        """Run the change from the current configuration to `next_of(current)`, unless that
        is the current one; returns the configuration in force once it is complete."""
        async with self._one:
            register = await self.quorum.read(VOTERS_KEY)
            base = self.engine.voters
            if register is not None:
                begun_from, base = _configs(register)
                await self._complete(begun_from, base)  # a change cut short is finished first
            if base is None:
                raise QuorumUnavailable("this node knows no voters", answered=0, voters=0, needed=1)
            try:
                target = next_of(base)
            except ValueError as exc:
                raise BadRequest(str(exc)) from None
            if target == base:
                return base
            value = {"from": W.config_json(base), "to": W.config_json(target)}
            quorum = self.quorum
            await quorum.change(VOTERS_KEY, quorum.write(
                VOTERS_KEY, NONE, register.seq if register else 0,
                quorum.new_version(VOTERS_KEY, value)))
            await self._complete(base, target)
            return target

    async def _complete(self, old: Config, new: Config) -> None:
        """Install `new` until fenced, adopt it here, then rescan every quorum key."""
        step = paxos.Reconfiguration(old, new)
        replies = await asyncio.gather(*(self._install(to, new) for to, _ in step.install()))
        for reply in replies:
            if reply is not None:
                step.receive(reply)
        if not step.fenced:
            raise QuorumUnavailable(
                f"{len(step.knowing)} voters took the configuration of epoch {new.epoch}; "
                "too few to fence the old one. Nothing else changed; retry the change",
                answered=len(step.knowing), voters=len(old.voters), needed=0)
        await self.engine.install_voters(new)
        for key in sorted(await self._keys(old, new)):
            await self.quorum.read(key)

    async def _install(self, to: str, config: Config) -> Installed | Stale | None:
        if to == self.engine.node_id:
            return await self.engine.install_voters(config)
        raw = await self._call(to, INSTALL_PATH, W.config_json(config))
        try:
            return W.installed_from(raw) if raw is not None else None
        except ValueError:
            return None

    async def _keys(self, old: Config, new: Config) -> set[str]:
        """The keys every reachable voter holds state for; they must meet every accept
        quorum of `old`, so no key with a committed value is missed."""
        found: set[str] = set()
        answered = set()
        for voter in sorted(old.voters | new.voters):
            keys = (self.engine.quorum_keys() if voter == self.engine.node_id
                    else await self._call(voter, KEYS_PATH, {}))
            if isinstance(keys, list) and all(isinstance(k, str) for k in keys):
                found.update(keys)
                answered.add(voter)
        if len(old.voters - answered) >= old.accept_quorum:
            raise QuorumUnavailable(
                "too few voters listed their quorum keys for the rescan; retry the change",
                answered=len(answered), voters=len(old.voters), needed=old.accept_quorum)
        return found

    async def _call(self, to: str, path: str, payload: Any, timeout: float = TIMEOUT) -> Any:
        member = self.membership.member(to)
        if member is None:
            return None
        try:
            return await self.transport.call(member.address, path, payload, timeout)
        except TransportError:
            return None

    # -- joining as a voter ----------------------------------------------------------------

    def start_joining(self, caught_up: asyncio.Event) -> None:
        """Ask to become a voter once `caught_up` is set, unless this node is one by then."""
        self._joining = asyncio.create_task(self._join_when(caught_up), name="join-voters")

    async def stop_joining(self, *, settle: bool = False) -> None:
        """No more join requests from here on. `settle` (a node that leaves): first wait
        for the request under way, if any, since the peer goes on with the change whatever
        we do; its answer installs the configuration, so the leave that follows knows to
        take this node out again. Otherwise (the node stops) it is cancelled."""
        task, self._joining = self._joining, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        asking, self._asking = self._asking, None
        if asking is not None:
            if not settle:
                asking.cancel()
            await asyncio.gather(asking, return_exceptions=True)

    def _is_voter(self) -> bool:
        voters = self.engine.voters
        return voters is not None and self.engine.node_id in voters.voters

    async def _join_when(self, caught_up: asyncio.Event) -> None:
        await caught_up.wait()
        if self._is_voter():
            await self._refresh()
        pause, attempt = JOIN_RETRY_S[0], 0
        while not self._is_voter():
            peers = self._join_candidates()
            if peers:
                self._asking = asyncio.create_task(self._ask_to_join(peers[attempt % len(peers)]))
                if await asyncio.shield(self._asking):  # stop_joining decides its fate
                    break
            attempt += 1
            await asyncio.sleep(pause * self.rng.uniform(0.5, 1.0))
            pause = min(pause * 2, JOIN_RETRY_S[1])
        voters = self.engine.voters
        assert voters is not None
        log.info("event=voter_joined node=%s epoch=%d voters=%s", self.engine.node_id,
                 voters.epoch, ",".join(sorted(voters.voters)))

    async def _refresh(self) -> None:
        """Learn the configuration in force: a node removed while it was down still has one
        that names it, and would never ask to be added back. One read round of the
        voters register does it (an acceptor with a newer epoch answers Stale, and the
        proposer adopts its configuration); if it fails, the stored one stands."""
        try:
            await self.quorum.read(VOTERS_KEY)
        except KVSError as exc:
            log.info("event=voters_unconfirmed reason=%r", exc.message)

    def _join_candidates(self) -> list[str]:
        """Alive peers to ask, the voters this node knows of first (a peer that knows no
        voters can only answer 503)."""
        known = self.engine.voters.voters if self.engine.voters else frozenset()
        return sorted((m.id for m in self.membership.alive_peers()),
                      key=lambda peer: (peer not in known, peer))

    async def _ask_to_join(self, peer: str) -> bool:
        """One join request; True if it answered with a configuration that holds this node
        (installed here at once: the install of the change itself may have missed us)."""
        raw = await self._call(peer, JOIN_PATH, {"id": self.engine.node_id}, JOIN_TIMEOUT)
        try:
            config = W.config_from(raw) if isinstance(raw, dict) else None
        except ValueError:
            config = None
        if config is None or self.engine.node_id not in config.voters:
            log.debug("event=join_refused peer=%s", peer)
            return False
        try:
            await self.engine.install_voters(config)
        except KVSError:
            return False  # a storage fault (logged by the store): asked again later
        return self._is_voter()

    # -- routes ----------------------------------------------------------------------------

    async def _handle_change(self, request: web.Request) -> web.Response:
        body = await json_body(request, dict)
        if len(body) != 1 or not set(body) <= {"add", "remove"} or not isinstance(
                next(iter(body.values())), str):
            raise BadRequest('body must be {"add": "<node id>"} or {"remove": "<node id>"}')
        added = body.get("add")
        if added is not None and added != self.engine.node_id and self.membership.member(added) is None:
            raise Conflict(f"{added} is not a member this node knows (a typo? see `kvs members`); "
                           "a new node joins with seed_nodes and adds itself to the voters once "
                           "caught up (auto_voter). Nothing changed")
        config = await self.change(add=added, remove=body.get("remove"))
        return json_response({"epoch": config.epoch, "ids": sorted(config.voters)})

    async def _handle_install(self, request: web.Request) -> web.Response:
        try:
            config = W.config_from(await json_body(request, dict))
        except ValueError as exc:
            raise BadRequest(f"malformed configuration: {exc}") from None
        return json_response(W.installed_json(await self.engine.install_voters(config)))

    async def _handle_join(self, request: web.Request) -> web.Response:
        body = await json_body(request, dict)
        node_id = body.get("id")
        if set(body) != {"id"} or not isinstance(node_id, str) or not node_id:
            raise BadRequest('body must be {"id": "<node id>"}')
        member = self.membership.member(node_id)
        if member is None or member.state != "alive":
            raise Conflict(f"{node_id} is not an alive member as this node sees it (yet); "
                           "nothing changed, retry")
        return json_response(W.config_json(await self.join(node_id)))

    async def _handle_keys(self, request: web.Request) -> web.Response:
        await json_body(request, dict)
        return json_response(self.engine.quorum_keys())


def _configs(register: Register) -> tuple[Config, Config]:
    """(from, to) of the voter change the register records."""
    value = register.value.value
    return W.config_from(value["from"]), W.config_from(value["to"])
