"""Faults: kill -9 + restart, SIGSTOP/SIGCONT, network partitions (two-way and one-way),
clock jumps, voter changes, a new node that joins as a voter and leaves, and a
clock-skewed node; up to --overlap of them at once.

Partitions on one host. Every node and every client talks to 127.0.0.1, so addresses
cannot tell a node's packets from another's. Ports can, together with the sender: each
node runs under its own group id, and iptables' owner match sees which group a
locally generated packet comes from. Cutting {n1} from {n2, n3} adds, to a chain of our
own, one DROP per direction and pair:

    -A KVSCHAOS-1a2b3c4d -p tcp -m owner --gid-owner <gid n1> --dport <port n2> -j DROP
    -A KVSCHAOS-1a2b3c4d -p tcp -m owner --gid-owner <gid n2> --dport <port n1> -j DROP
    ...
    -A OUTPUT -m comment --comment kvs-chaos:1a2b3c4d -j KVSCHAOS-1a2b3c4d   (one jump)

SYNs and data on pooled connections are dropped alike, so a partition looks like a dead
network (timeouts), not like refused connections. The clients run as root's group and
are never cut off: a client of n1 keeps talking to n1 during the partition. Healing
flushes the chain; cleanup deletes the jump rule (found by its comment) and the chain,
and nothing else, also after Ctrl-C. `kvs chaos cleanup` removes what a run that was
itself killed -9 left behind (chains named KVSCHAOS-*, jumps commented kvs-chaos:*).

Without root (or without the iptables command) partitions are left out of the fault mix
with a message saying why; kill, pause and skew need no privileges.

With `kvs chaos --netns` every node is a host of its own (a network namespace with its
own address, kvs.testing.netns), and a partition is what it would be between real hosts:
DROP rules on the veths of one side's hosts for the other side's addresses. The run's
clients, on the bridge's address, still reach every node. Both kinds make partitions
through the same two calls (`Partitioner`): split(sides) and heal().

Clock skew: one node runs for the whole run with its wall clock off by --skew-ms (via
kvs.chaos.skewed_node), across its restarts too. A skew that changed while a node runs
would make its TTLs jump, which no lease can survive; a fixed one is what real hosts
with a bad clock look like.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from kvs.chaos.history import VOTER_CHANGE_UNCHANGED, HistoryWriter
from kvs.testing import Cluster, KvsNode, NodeGroup, StartError

FAULT_KINDS = ("kill", "pause", "partition", "oneway", "jump", "voters", "join", "skew")
VOTERS_PATH = "/cluster/voters"
LEAVE_PATH = "/cluster/leave"
STATUS_PATH = "/cluster/status"
VOTER_CHANGE_SECONDS = 30.0  # a change under faults may wait for a majority
NODE_FAULTS = ("kill", "pause", "jump")  # faults of one node: one at a time per node
CUTS = ("partition", "oneway")  # one at a time: healing flushes the run's whole chain
CHAIN_PREFIX = "KVSCHAOS-"
COMMENT_PREFIX = "kvs-chaos:"


class FirewallError(RuntimeError):
    pass


class Partitioner(Protocol):
    """What makes partitions: the gid/port Firewall on loopback, or the namespaces' Network
    (kvs.testing.netns) where every node is a host of its own."""

    def split(self, sides: Sequence[Sequence[KvsNode]], *, oneway: bool = False) -> None: ...

    def heal(self) -> None: ...


def partitions_available() -> tuple[bool, str]:
    """(True, "") if this process can make iptables partitions, else (False, why not)."""
    if os.geteuid() != 0:
        return False, "network partitions need root (iptables and per-node group ids); " \
                      "running without partition faults"
    if shutil.which("iptables") is None:
        return False, "network partitions need the iptables command (apt-get install iptables); " \
                      "running without partition faults"
    probe = subprocess.run(["iptables", "-S", "OUTPUT"], capture_output=True, text=True)
    if probe.returncode != 0:
        return False, f"iptables does not work here ({probe.stderr.strip()}); " \
                      "running without partition faults"
    return True, ""


def _iptables(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["iptables", "-w", *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise FirewallError(f"iptables {' '.join(args)}: {proc.stderr.strip()}")
    return proc


class Firewall:
    """The run's own chain. Every method is safe to call again; cleanup() is idempotent."""

    def __init__(self, run_id: str) -> None:
        self.chain = f"{CHAIN_PREFIX}{run_id}"[:28]
        self.comment = f"{COMMENT_PREFIX}{run_id}"
        self.installed = False
        self.rules = 0

    def setup(self) -> None:
        _iptables("-N", self.chain)
        self.installed = True  # from here on, cleanup() has something to remove
        _iptables("-I", "OUTPUT", "-m", "comment", "--comment", self.comment, "-j", self.chain)

    def split(self, sides: Sequence[Sequence[KvsNode]], *, oneway: bool = False) -> None:
        """Cut the nodes of the first side off from those of the second: both ways, or
        one-way (the first side's packets to the second's ports only)."""
        pairs = []
        for a in sides[0]:
            for b in sides[1]:
                assert a.gid is not None and b.gid is not None, "partitions need a group id per node"
                assert a.port and b.port
                pairs += [(a.gid, b.port)] if oneway else [(a.gid, b.port), (b.gid, a.port)]
        self.cut(pairs)

    def cut(self, pairs: list[tuple[int, int]]) -> None:
        """Drop packets from processes of group `gid` to `port`, for each (gid, port)."""
        for gid, port in pairs:
            for proto in ("tcp", "udp"):
                _iptables("-A", self.chain, "-p", proto, "-m", "owner", "--gid-owner", str(gid),
                          "--dport", str(port), "-j", "DROP")
                self.rules += 1

    def heal(self) -> None:
        if self.installed:
            _iptables("-F", self.chain)
            self.rules = 0

    def cleanup(self) -> None:
        """Remove the jump rule(s) and the chain; leaves every other rule alone."""
        while _iptables("-D", "OUTPUT", "-m", "comment", "--comment", self.comment, "-j", self.chain,
                        check=False).returncode == 0:
            pass
        _iptables("-F", self.chain, check=False)
        _iptables("-X", self.chain, check=False)
        self.installed = False

    def leftovers(self) -> list[str]:
        return [line for line in iptables_save() if self.chain in line or self.comment in line]


def iptables_save() -> list[str]:
    if shutil.which("iptables-save") is None:
        return []
    proc = subprocess.run(["iptables-save"], capture_output=True, text=True)
    return proc.stdout.splitlines()


def cleanup_all() -> list[str]:
    """Remove every chain and jump that any chaos run created (for runs that were killed -9)."""
    removed = []
    for line in iptables_save():
        parts = line.split()
        if line.startswith("-A OUTPUT") and COMMENT_PREFIX in line and "-j" in parts:
            chain = parts[parts.index("-j") + 1]
            if chain.startswith(CHAIN_PREFIX):
                rule = parts[2:]  # drop "-A OUTPUT"
                rule = [p.strip('"') for p in rule]
                if _iptables("-D", "OUTPUT", *rule, check=False).returncode == 0:
                    removed.append(line)
    for line in iptables_save():
        if line.startswith(":" + CHAIN_PREFIX):
            chain = line[1:].split()[0]
            _iptables("-F", chain, check=False)
            if _iptables("-X", chain, check=False).returncode == 0:
                removed.append(f"chain {chain}")
    return removed


@dataclass
class FaultPlan:
    kinds: list[str]
    quiet: tuple[float, float] = (1.0, 3.0)  # seconds between faults
    duration: tuple[float, float] = (2.0, 5.0)  # seconds a fault lasts
    overlap: int = 1  # faults active at once (besides the skewed node)


async def _nothing() -> None:
    """The heal of a fault that did not take."""


class FaultInjector:
    """Runs up to `plan.overlap` faults at a time until told to stop; `heal_all()` ends whatever
    is active. A node takes one node fault at a time, and one cut (partition or one-way) is
    in force at a time; a fault whose turn comes when it cannot be made waits for the next."""

    def __init__(self, cluster: Cluster, history: HistoryWriter, plan: FaultPlan,
                 rng: random.Random, *, firewall: Partitioner | None, say: Callable[[str], None],
                 operator: Callable[[str, str, bytes], dict[str, str]] | None = None,
                 joiners: NodeGroup | None = None) -> None:
        """`joiners`: where the `join` fault makes its new nodes (j1, j2, ...; None: no joins)."""
        self.cluster = cluster
        self.joiners = joiners
        self._joined: dict[int, tuple[KvsNode, asyncio.Task[None]]] = {}  # join fault -> node, watch
        self.history = history
        self.plan = plan
        self.rng = rng
        self.firewall = firewall
        self.say = say
        # The credentials of a voter change (method, path, body -> headers); none: unsigned.
        self.operator = operator or (lambda method, path, body: {})
        self.active: dict[int, tuple[str, list[str], dict[str, Any]]] = {}
        self._next = 0
        self.counts: dict[str, int] = {}

    def describe_active(self) -> str:
        out = []
        for kind, nodes, detail in self.active.values():
            if kind in CUTS:
                joint = " -/-> " if kind == "oneway" else " | "
                out.append(f"{kind}(" + joint.join(",".join(side) for side in detail["sides"]) + ")")
            elif kind == "jump":
                out.append(f"jump({nodes[0]} {detail['offset_ms']:+d} ms)")
            else:
                out.append(f"{kind}({','.join(nodes)})")
        return ", ".join(out) or "-"

    def _begin(self, kind: str, nodes: list[str], **detail: Any) -> int:
        self._next += 1
        self.active[self._next] = (kind, nodes, detail)
        self.counts[kind] = self.counts.get(kind, 0) + 1
        self.history.event("fault", fault=self._next, kind=kind, phase="begin", nodes=nodes,
                           detail=detail)
        return self._next

    def _lifting(self, fault: int) -> None:
        """A cut's rules are about to be removed: from now on packets may pass again, so the
        minority check ends the cut here, not at `end` (recorded once the removal command
        has returned, milliseconds later: a call answered in between may have had its
        majority back)."""
        kind, _, _ = self.active[fault]
        self.history.event("fault", fault=fault, kind=kind, phase="lifting")

    def _end(self, fault: int) -> None:
        kind, nodes, _ = self.active.pop(fault)
        self.history.event("fault", fault=fault, kind=kind, phase="end", nodes=nodes)

    def mark_skew(self, node: KvsNode) -> int:
        """The skewed node is skewed for the whole run: one fault spanning it, for the timeline."""
        return self._begin("skew", [node.name], offset_ms=node.skew_ms)

    async def run(self, until: float) -> None:
        """Inject faults until monotonic time `until`. The last ones are left active: `heal_all()`
        ends them after the workload, so convergence is measured from real faults, not from calm."""
        kinds = [k for k in self.plan.kinds if k != "skew"]
        if not kinds:
            return
        queue: list[str] = []
        running: set[asyncio.Task[None]] = set()
        try:
            while True:
                await asyncio.sleep(self.rng.uniform(*self.plan.quiet))
                if time.monotonic() >= until:
                    break
                if not queue:  # every kind once per round, in a random order: the mix stays even
                    queue = self.rng.sample(kinds, len(kinds))
                heal = await self._inject(queue[-1])
                if heal is None:
                    continue  # its nodes are taken by other faults: its turn comes again
                queue.pop()
                length = self.rng.uniform(*self.plan.duration)
                running.add(asyncio.create_task(self._last(heal, length, until)))
                if len(running) >= self.plan.overlap:
                    done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        task.result()
            await asyncio.gather(*running)
        finally:
            for task in running:
                task.cancel()

    async def _last(self, heal: Callable[[], Awaitable[None]], length: float, until: float) -> None:
        """Keep a fault for `length` seconds, then heal it, unless the workload ends first."""
        if time.monotonic() + length + 0.5 > until:
            return  # open-ended: healed with everything else after the workload
        await asyncio.sleep(length)  # cancelled (Ctrl-C): the runner's cleanup stops everything
        await heal()

    def _busy(self) -> tuple[set[str], bool]:
        """(nodes under a node fault, whether a cut is in force)."""
        nodes = {n for kind, names, _ in self.active.values() if kind in NODE_FAULTS for n in names}
        return nodes, any(kind in CUTS for kind, _, _ in self.active.values())

    async def _inject(self, kind: str) -> Callable[[], Awaitable[None]] | None:
        """Begin a fault; returns the coroutine function that ends it (None: cannot be made now)."""
        busy, cut = self._busy()
        if kind in CUTS:
            return None if cut else await self._partition(oneway=kind == "oneway")
        if kind in ("voters", "join"):
            if any(k == kind for k, _, _ in self.active.values()):
                return None
            return await (self._voter_out() if kind == "voters" else self._join())
        free = [n for n in self.cluster.nodes if n.name not in busy and (kind != "jump" or n.jump_ms)]
        if not free:
            return None
        node = self.rng.choice(free)
        if kind == "jump":
            return self._jump(node)
        fault = self._begin(kind, [node.name])
        if kind == "kill":
            await asyncio.to_thread(node.kill)
        else:
            node.pause()

        async def heal() -> None:
            if kind == "kill":
                await self._restart(node)
            else:
                node.resume()
            self._end(fault)
        return heal

    async def _voter_out(self) -> Callable[[], Awaitable[None]]:
        """Take a voter out of the voters (POST /cluster/voters through another node) and, at the
        heal, back in: the reconfiguration runs under load and under the other faults. The
        fault records `in_force` once the removal answered 200, and `rejoining` when the add
        is sent. A removal refused outright (400, 409: nothing changed) ends the fault at
        once; one without a clear answer (503 under a partition, none) may still be
        completed by the next change, so it is `refused` with its status and the heal adds
        the node back all the same (a 400 "already a voter" then says it never left)."""
        out = self.rng.choice(self.cluster.nodes)
        fault = self._begin("voters", [out.name], removed=out.name)
        status = await self._change_voters({"remove": out.name}, avoid=out.name)
        if status != 200:
            self.history.event("fault", fault=fault, kind="voters", phase="refused", status=status)
            if status in VOTER_CHANGE_UNCHANGED:
                self._end(fault)
                return _nothing
        else:
            self.history.event("fault", fault=fault, kind="voters", phase="in_force")

        async def heal() -> None:
            await self._voter_back(fault)
        return heal

    async def _voter_back(self, fault: int) -> None:
        """Add the voter back, retrying until a majority answers (the change must complete)."""
        name = self.active[fault][1][0]
        self.history.event("fault", fault=fault, kind="voters", phase="rejoining")
        deadline = time.monotonic() + VOTER_CHANGE_SECONDS
        while await self._change_voters({"add": name}, avoid=None) not in (200, 400):
            if time.monotonic() > deadline:
                self.say(f"could not make {name} a voter again")
                break
            await asyncio.sleep(0.5)
        self._end(fault)

    async def _change_voters(self, change: dict[str, str], avoid: str | None) -> int | None:
        """POST the change to a running, unpaused node other than `avoid`; its status (None: no answer)."""
        nodes = [n for n in self.cluster.nodes if n.name != avoid and n.running and not n.paused]
        if not nodes:
            return None
        return await self._post(self.rng.choice(nodes), VOTERS_PATH, change)

    async def _post(self, node: KvsNode, path: str, payload: Any) -> int | None:
        """POST an operations request (signed), in a thread; its status (None: no answer)."""
        body = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json", **self.operator("POST", path, body)}

        def post() -> int | None:
            request = urllib.request.Request(f"{node.url}{path}", data=body, method="POST", headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=VOTER_CHANGE_SECONDS, context=node.tls) as resp:
                    return int(resp.status)
            except urllib.error.HTTPError as exc:
                return int(exc.code)
            except OSError:
                return None
        return await asyncio.to_thread(post)

    async def _join(self) -> Callable[[], Awaitable[None]] | None:
        """Start a brand-new node (fresh data dir, seeded with the running nodes) that makes
        itself a voter (auto_voter) once it has caught up: `in_force` when its /cluster/status
        lists it among the voters. The heal makes it leave gracefully (`leaving`; it is taken
        out of the voters first) and waits for its process to exit. It is not a client target
        and no other fault touches it."""
        assert self.joiners is not None
        seeds = [n for n in self.cluster.nodes if n.running and not n.paused]
        if not seeds:
            return None
        name = f"j{len(self.joiners.nodes) + 1}"
        node = self.joiners.node(name, node_id=name, seeds=seeds)
        fault = self._begin("join", [name], seeds=[n.name for n in seeds])
        try:
            await node.astart()
        except StartError as exc:
            self.say(f"{name} did not start: {exc}")
            self.history.event("fault", fault=fault, kind="join", phase="refused", status=None)
            self._end(fault)
            return _nothing
        watch = asyncio.create_task(self._until_voter(fault, node))
        self._joined[fault] = (node, watch)

        async def heal() -> None:
            await self._leave(fault)
        return heal

    async def _until_voter(self, fault: int, node: KvsNode) -> None:
        """Record `in_force` once the node lists itself among the voters (it added itself)."""
        deadline = time.monotonic() + VOTER_CHANGE_SECONDS
        while time.monotonic() < deadline:
            status = await asyncio.to_thread(_status, node)
            if node.name in ((status or {}).get("voters") or {}).get("ids", []):
                self.history.event("fault", fault=fault, kind="join", phase="in_force")
                return
            await asyncio.sleep(0.2)
        self.say(f"{node.name} did not become a voter in {VOTER_CHANGE_SECONDS:.0f}s")

    async def _leave(self, fault: int) -> None:
        """Leave gracefully once the node is a voter (or gave up becoming one), retrying while
        its removal from the voters gets no majority; killed if it never can."""
        joined = self._joined.pop(fault, None)
        if joined is None:  # its heal was cut short (the run is stopping): only end the record
            self._end(fault)
            return
        node, watch = joined
        await watch
        self.history.event("fault", fault=fault, kind="join", phase="leaving")
        deadline = time.monotonic() + VOTER_CHANGE_SECONDS
        while await self._post(node, LEAVE_PATH, {}) != 200:
            if time.monotonic() > deadline:
                self.say(f"{node.name} could not leave gracefully; killed (it may stay a voter)")
                break
            await asyncio.sleep(0.5)
        await asyncio.to_thread(node.terminate)
        self._end(fault)

    def _jump(self, node: KvsNode) -> Callable[[], Awaitable[None]]:
        """Step the node's clock forward or back by its jump_ms; the heal steps it back."""
        forward = self.rng.random() < 0.5
        fault = self._begin("jump", [node.name], offset_ms=node.jump_ms * (1 if forward else -1))
        node.jump_clock(forward)

        async def heal() -> None:
            self._jump_back(fault)
        return heal

    def _jump_back(self, fault: int) -> None:
        _, names, detail = self.active[fault]
        self.cluster.by_name(names[0]).jump_clock(detail["offset_ms"] < 0)
        self._end(fault)

    async def _restart(self, node: KvsNode) -> None:
        if not node.running:
            await node.astart()

    async def _partition(self, oneway: bool = False) -> Callable[[], Awaitable[None]]:
        """Split the nodes in two sides (the first the smaller); one-way: only the first side's
        packets to the second are dropped (the second still reaches the first, and hears its
        answers on the connections it opened)."""
        assert self.firewall is not None
        firewall = self.firewall
        names = [n.name for n in self.cluster.nodes]
        self.rng.shuffle(names)
        cut = self.rng.randint(1, len(names) // 2)
        sides = [sorted(names[:cut]), sorted(names[cut:])]
        kind = "oneway" if oneway else "partition"
        fault = self._begin(kind, sorted(names), sides=sides)
        nodes = [[self.cluster.by_name(n) for n in side] for side in sides]
        await asyncio.to_thread(firewall.split, nodes, oneway=oneway)
        self.history.event("fault", fault=fault, kind=kind, phase="in_force")

        async def heal() -> None:
            self._lifting(fault)
            await asyncio.to_thread(firewall.heal)
            self._end(fault)
        return heal

    async def heal_all(self) -> None:
        """End every fault: flush partitions, resume paused nodes, restart dead ones."""
        if self.firewall is not None:
            for fault, (kind, _, _) in self.active.items():
                if kind in CUTS:
                    self._lifting(fault)
            await asyncio.to_thread(self.firewall.heal)
        for node in self.cluster.nodes:
            if node.paused:
                node.resume()
        for node in self.cluster.nodes:
            await self._restart(node)
        for fault, (kind, _, _) in list(self.active.items()):
            if kind == "jump":
                self._jump_back(fault)
            elif kind == "voters":
                await self._voter_back(fault)
            elif kind == "join":
                await self._leave(fault)
            elif kind != "skew":  # the skewed node stays skewed until the run ends
                self._end(fault)

    def end_all(self) -> None:
        for fault in list(self.active):
            self._end(fault)


def _status(node: KvsNode) -> dict[str, Any] | None:
    """GET /cluster/status of a node (open to anyone without ACLs, as a chaos run's nodes are)."""
    try:
        with urllib.request.urlopen(f"{node.url}{STATUS_PATH}", timeout=2.0) as resp:
            body = json.loads(resp.read())
    except (OSError, ValueError):
        return None
    return body if isinstance(body, dict) else None
