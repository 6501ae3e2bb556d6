"""The four workloads. Each client is an asyncio task with its own seeded random stream.

    register  read / put / CAS with if_version / if_timestamp / the modify index (cas: N,
              or cas: 0 when the key is absent) over a small hot key set
    counter   read-modify-CAS increments {"n": n + 1, "w": <op id>} with retry on 409;
              an increment whose CAS outcome is unknown is never retried (it may count)
    lease     acquire (cas: 0 + ttl), renew (if_value: token + ttl), release (delete if_value)
    putdel    plain puts and deletes, and reads

Clients have a home node and send most logical operations there (two clients share
each home, so one node serves concurrent CAS); one in five goes to another node, so
every key is written through several nodes and replication races with local CAS. A
read and the CAS that depends on it always go to the same node: a modify index means
nothing elsewhere. A lease holder renews and releases through the node it acquired on.

Every written value is unique in the run (it carries the op id), so a checker can tell
which operation wrote a version even when the operation's answer was lost.

Consistency (--consistency): with `local` every key is a local key, exactly as above;
with `quorum` every key is a quorum key; with `mixed` the even slots of every workload
are quorum keys and the odd ones local (two lease slots at least, so both kinds have
one). A key keeps its kind for its whole life (a local write to a quorum key is a 409).
On a quorum key every call says `consistency: quorum`, and the conditions are those of
a cluster-wide register: register CAS by `if_seq` (the seq the client last saw), by
`if_version`, or `cas: 0` when it saw the key absent; counter increments by `if_seq`; a
lease acquires with `cas: 0` + ttl, renews with `if_seq` (the seq of its last write: the
fencing token) + ttl, and releases with `DELETE ?if_seq=`.

Key rotation: a key's whole revision set is kept (the chaos cluster runs with a high
revision_history_limit), and the no-loss checker needs every version to stay. Each key
takes at most `budget` write attempts; then its slot moves on to a fresh key
(`.../register/0@1`), so history never overflows and a set stays small.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kvs.chaos.client import NodeClient, Outcome

WORKLOADS = ("register", "counter", "lease", "putdel")
CONSISTENCIES = ("local", "quorum", "mixed")
OTHER_NODE_SHARE = 0.2
AVOID_SECONDS = 2.0
_UNKNOWN = object()


class KeySpace:
    """Hot keys per workload, renamed to a new generation when their write budget is spent."""

    def __init__(self, prefix: str, slots: int, budget: int, consistency: str = "local") -> None:
        self.prefix = prefix
        # Leader election wants contention: a third as many lease keys as other keys.
        self.slots = {w: max(2 if consistency == "mixed" else 1, slots // 3) if w == "lease" else slots
                      for w in WORKLOADS}
        self.budget = budget
        self.mode = consistency
        self._gen: dict[tuple[str, int], int] = {}
        self._writes: dict[str, int] = {}
        self.touched: dict[str, str] = {}  # every key used -> its workload

    def key(self, workload: str, slot: int) -> str:
        name = f"{self.prefix}/{workload}/{slot}@{self._gen.get((workload, slot), 0)}"
        self.touched.setdefault(name, workload)
        return name

    def consistency(self, key: str) -> str | None:
        """"quorum" for a quorum key, None for a local one (the request then names none)."""
        if self.mode == "local":
            return None
        slot = int(key[len(self.prefix) + 1:].split("/", 1)[1].split("@", 1)[0])
        return "quorum" if self.mode == "quorum" or slot % 2 == 0 else None

    def pick(self, workload: str, rng: random.Random) -> str:
        return self.key(workload, rng.randrange(self.slots[workload]))

    def note_write(self, key: str) -> None:
        """Count a write attempt; the slot's next pick gets a fresh key once the budget is spent."""
        count = self._writes[key] = self._writes.get(key, 0) + 1
        if count == self.budget:
            workload, rest = key[len(self.prefix) + 1:].split("/", 1)
            slot = int(rest.split("@", 1)[0])
            self._gen[(workload, slot)] = self._gen.get((workload, slot), 0) + 1

    def current(self, key: str) -> bool:
        return self._writes.get(key, 0) < self.budget


@dataclass
class ClientContext:
    name: str
    home: int
    nodes: Sequence[NodeClient]  # one per node, same order as the cluster
    rng: random.Random
    keys: KeySpace
    stop: asyncio.Event
    next_id: Callable[[], int]
    think: float = 0.005
    lease_ttl: float = 3.0
    avoid: dict[int, float] = field(default_factory=dict)  # node index -> monotonic time

    def node(self) -> NodeClient:
        """Home node mostly, another node sometimes; nodes that just failed us are avoided a while,
        as a client with several endpoints would (it still goes home if every node failed)."""
        now = time.monotonic()
        usable = [i for i in range(len(self.nodes)) if self.avoid.get(i, 0) <= now]
        others = [i for i in usable if i != self.home]
        if others and (self.home not in usable or self.rng.random() < OTHER_NODE_SHARE):
            return self.nodes[self.rng.choice(others)]
        return self.nodes[self.home]

    def noted(self, client: NodeClient, out: Outcome) -> Outcome:
        """Remember a node that timed out or refused, so the next picks avoid it for a while."""
        if out.kind == "unknown" or (out.kind == "fail" and out.error and out.error.startswith("unavail")):
            self.avoid[self.nodes.index(client)] = time.monotonic() + AVOID_SECONDS
        return out

    async def pause(self, seconds: float | None = None) -> None:
        """Think time; returns early when the run stops."""
        delay = self.rng.uniform(0, self.think) if seconds is None else seconds
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), timeout=delay)


async def register_client(ctx: ClientContext) -> None:
    known: dict[tuple[str, str], Any] = {}  # (node, key) -> (version, index, timestamp), None: absent
    seqs: dict[str, int] = {}  # quorum key -> the seq last answered
    rng = ctx.rng
    while not ctx.stop.is_set():
        client = ctx.node()
        key = ctx.keys.pick("register", rng)
        consistency = ctx.keys.consistency(key)
        state = known.get((client.node, key), _UNKNOWN)
        roll = rng.random()
        if state is _UNKNOWN or roll < 0.3 or (consistency and key not in seqs):
            out = ctx.noted(client, await client.read(key, consistency=consistency))
        else:
            op_id = ctx.next_id()
            value = f"{ctx.name}:{op_id}"
            cond = (_quorum_condition(state, seqs[key], roll) if consistency
                    else _local_condition(state, roll))
            ctx.keys.note_write(key)
            out = ctx.noted(client, await client.write(key, value, cond=cond, op_id=op_id,
                                                       consistency=consistency))
        known[(client.node, key)] = _learn(out, state)
        _learn_seq(seqs, key, out)
        await ctx.pause()


def _local_condition(state: Any, roll: float) -> dict[str, Any] | None:
    if roll < 0.45:
        return None
    if state is None:
        return {"cas": 0}
    if roll < 0.62:
        return {"if_version": state[0]}
    if roll < 0.72:
        return {"if_timestamp": state[2]}
    return {"cas": state[1]}


def _quorum_condition(state: Any, seq: int, roll: float) -> dict[str, Any] | None:
    """Mostly `if_seq`; `if_version` (or `cas: 0` on an absent key) sometimes, a blind put rarely."""
    if roll < 0.4:
        return None
    if roll < 0.55:
        return {"cas": 0} if state is None else {"if_version": state[0]}
    return {"if_seq": seq}


def _learn_seq(seqs: dict[str, int], key: str, out: Outcome) -> None:
    """The cluster-wide seq a quorum answer carried (any node's answer: seq is per key)."""
    body = out.body if out.kind in ("ok", "fail") and isinstance(out.body, dict) else {}
    if isinstance(body.get("seq"), int):
        seqs[key] = body["seq"]
    elif out.kind == "unknown":
        seqs.pop(key, None)  # it may have moved on: read again first


def _learn(out: Outcome, before: Any) -> Any:
    """What a client believes about the key's current version after an answer."""
    if out.ok and isinstance(out.body, dict):
        return _key_state(out.body)
    if out.kind == "fail" and out.error == "not_found":
        return None
    if out.kind == "fail" and out.current is not None:
        return _key_state(out.current)
    if out.kind == "fail" and out.error == "unavailable":
        return before
    return _UNKNOWN


def _key_state(version: dict[str, Any]) -> tuple[str, int, int]:
    return version["version"], version["modify_index"], version["timestamp"]


async def counter_client(ctx: ClientContext, max_attempts: int = 5) -> None:
    rng = ctx.rng
    while not ctx.stop.is_set():
        client = ctx.node()
        key = ctx.keys.pick("counter", rng)
        consistency = ctx.keys.consistency(key)
        for _ in range(max_attempts):
            if ctx.stop.is_set():
                break
            read = ctx.noted(client, await client.read(key, tag="incr-read", consistency=consistency))
            if read.ok:
                n = read.body["value"]["n"]
                cond = ({"if_seq": read.body["seq"]} if consistency
                        else {"if_version": read.body["version"]} if rng.random() < 0.5
                        else {"cas": read.body["modify_index"]})
            elif read.kind == "fail" and read.error == "not_found":
                n, cond = 0, ({"if_seq": read.body.get("seq", 0)} if consistency else {"cas": 0})
            else:
                break  # node unreachable: try again later, nothing was written
            op_id = ctx.next_id()
            ctx.keys.note_write(key)
            out = ctx.noted(client, await client.write(key, {"n": n + 1, "w": op_id}, cond=cond, tag="incr",
                                                       op_id=op_id, consistency=consistency))
            if out.kind != "fail" or out.error == "unavailable":
                break  # ok, or unknown: a retry could count the same increment twice
        await ctx.pause()


async def lease_client(ctx: ClientContext) -> None:
    rng, ttl = ctx.rng, ctx.lease_ttl
    while not ctx.stop.is_set():
        client = ctx.node()
        key = ctx.keys.pick("lease", rng)
        consistency = ctx.keys.consistency(key)
        op_id = ctx.next_id()
        token = f"{ctx.name}:{op_id}"
        ctx.keys.note_write(key)
        out = ctx.noted(client, await client.write(key, token, cond={"cas": 0}, ttl=ttl, tag="acquire",
                                                   op_id=op_id, consistency=consistency))
        if not out.ok:
            await ctx.pause(rng.uniform(0.05, ttl / 3))
            continue
        await _hold(ctx, client, key, token, out)


def _lease_condition(token: str, answer: Outcome) -> dict[str, Any]:
    """Renew or release on the holder's own version: by its seq (the fencing token) on a quorum
    key, by the token on a local one."""
    seq = answer.body.get("seq") if isinstance(answer.body, dict) else None
    return {"if_seq": seq} if isinstance(seq, int) else {"if_value": token}


async def _hold(ctx: ClientContext, client: NodeClient, key: str, token: str, acquired: Outcome) -> None:
    """Renew every ttl/3 through the same node, then release; stop at the first failed renew."""
    rng, ttl = ctx.rng, ctx.lease_ttl
    consistency = ctx.keys.consistency(key)
    renewals = rng.randint(1, 5)
    valid_until = acquired.inv + ttl  # the lease may be ours until then, counted from the invoke
    last = acquired
    while True:
        await ctx.pause(ttl / 3 * rng.uniform(0.7, 1.0))
        if time.time() > valid_until - 0.2:
            return  # too late to renew safely: consider it lost (it expires by itself)
        if ctx.stop.is_set() or renewals == 0 or not ctx.keys.current(key):
            ctx.keys.note_write(key)
            ctx.noted(client, await client.delete(key, cond=_lease_condition(token, last), tag="release",
                                                  consistency=consistency))
            return
        renewals -= 1
        ctx.keys.note_write(key)
        out = ctx.noted(client, await client.write(key, token, cond=_lease_condition(token, last), ttl=ttl,
                                                   tag="renew", consistency=consistency))
        if not out.ok:
            return
        valid_until, last = out.inv + ttl, out


async def putdel_client(ctx: ClientContext) -> None:
    rng = ctx.rng
    while not ctx.stop.is_set():
        client = ctx.node()
        key = ctx.keys.pick("putdel", rng)
        consistency = ctx.keys.consistency(key)
        roll = rng.random()
        if roll < 0.55:
            op_id = ctx.next_id()
            ctx.keys.note_write(key)
            ctx.noted(client, await client.write(key, f"{ctx.name}:{op_id}", op_id=op_id,
                                                 consistency=consistency))
        elif roll < 0.8:
            ctx.keys.note_write(key)
            ctx.noted(client, await client.delete(key, consistency=consistency))
        else:
            ctx.noted(client, await client.read(key, consistency=consistency))
        await ctx.pause()


CLIENTS = {
    "register": register_client,
    "counter": counter_client,
    "lease": lease_client,
    "putdel": putdel_client,
}


def assign(clients: int, nodes: int, workloads: Sequence[str]) -> list[tuple[str, int]]:
    """(workload, home node index) per client: workloads round-robin, two clients per home."""
    out = []
    seen: dict[str, int] = {}
    for i in range(clients):
        workload = workloads[i % len(workloads)]
        j = seen[workload] = seen.get(workload, -1) + 1
        out.append((workload, (j // 2 + WORKLOADS.index(workload)) % nodes))
    return out
