"""Changing the voters of quorum keys, one voter at a time (kvs/paxos.py's Reconfiguration).

    POST /cluster/voters {"add": id} | {"remove": id}     (an operations request: signed
                                                            when the cluster has a secret)
      1. serialise: a quorum CAS of the register `_kvs/voters` from {from, to} of the last
         change to {from: current, to: next}; two changes at once: one gets 409
      2. install: `next` to every voter of both configurations, until `fenced`
      3. rescan: an identity round, under `next`, of every key any voter holds state for
      4. done: the next change may start (it first completes this one again if step 2 or 3
         was cut short: the register says which change was last begun)

Failure detection never calls this: only an operator (or a tool) does.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from kvs import paxos
from kvs import paxos_wire as W
from kvs.cluster.quorum import Quorum
from kvs.cluster.swim.membership import Membership
from kvs.cluster.transport import HttpTransport, TransportError
from kvs.conditions import NONE
from kvs.errors import BadRequest, QuorumUnavailable
from kvs.http.toolkit import json_body, json_response
from kvs.paxos import Config, Installed, Register, Stale

VOTERS_KEY = "_kvs/voters"  # the register that serialises voter changes cluster-wide
VOTERS_PATH = "/cluster/voters"
INSTALL_PATH = "/internal/paxos/install"
KEYS_PATH = "/internal/paxos/keys"
TIMEOUT = 5.0


class VoterChanges:
    def __init__(self, quorum: Quorum, transport: HttpTransport, membership: Membership) -> None:
        self.quorum = quorum
        self.engine = quorum.engine
        self.transport = transport
        self.membership = membership
        self._one = asyncio.Lock()

    def routes(self) -> list[web.RouteDef]:
        return [web.post(VOTERS_PATH, self._handle_change),
                web.post(INSTALL_PATH, self._handle_install),
                web.post(KEYS_PATH, self._handle_keys)]

    async def change(self, *, add: str | None = None, remove: str | None = None) -> Config:
        """One voter more or less; returns the new configuration once it is complete."""
        async with self._one:
            register = await self.quorum.read(VOTERS_KEY)
            base = self.engine.voters
            if register is not None:
                begun_from, base = _configs(register)
                await self._complete(begun_from, base)  # a change cut short is finished first
            if base is None:
                raise QuorumUnavailable("this node knows no voters", answered=0, voters=0, needed=1)
            try:
                target = paxos.add_voter(base, add) if add else paxos.remove_voter(base, remove or "")
            except ValueError as exc:
                raise BadRequest(str(exc)) from None
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

    async def _call(self, to: str, path: str, payload: Any) -> Any:
        member = self.membership.member(to)
        if member is None:
            return None
        try:
            return await self.transport.call(member.address, path, payload, TIMEOUT)
        except TransportError:
            return None

    # -- routes ----------------------------------------------------------------------------

    async def _handle_change(self, request: web.Request) -> web.Response:
        body = await json_body(request, dict)
        if len(body) != 1 or not set(body) <= {"add", "remove"} or not isinstance(
                next(iter(body.values())), str):
            raise BadRequest('body must be {"add": "<node id>"} or {"remove": "<node id>"}')
        config = await self.change(add=body.get("add"), remove=body.get("remove"))
        return json_response({"epoch": config.epoch, "ids": sorted(config.voters)})

    async def _handle_install(self, request: web.Request) -> web.Response:
        try:
            config = W.config_from(await json_body(request, dict))
        except ValueError as exc:
            raise BadRequest(f"malformed configuration: {exc}") from None
        return json_response(W.installed_json(await self.engine.install_voters(config)))

    async def _handle_keys(self, request: web.Request) -> web.Response:
        await json_body(request, dict)
        return json_response(self.engine.quorum_keys())


def _configs(register: Register) -> tuple[Config, Config]:
    """(from, to) of the voter change the register records."""
    value = register.value.value
    return W.config_from(value["from"]), W.config_from(value["to"])
