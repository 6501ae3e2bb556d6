"""Orchestration of one chaos run, and its cleanup.

    start N nodes (or take the given URLs)  ─►  clients + fault schedule for --duration
          │                                            │ progress line every few seconds
          ▼                                            ▼
    stop clients (in-flight ops end by timeout) ─► heal: flush partitions, SIGCONT, restart
          ─► wait for equal Merkle roots (bounded) ─► final reads ─► dumps ─► stop nodes
          ─► checkers on the saved history ─► summary table, checks.json, report.html

Every phase has a time bound, so the run ends by itself. Cleanup is in `finally`: every
node process group is killed and the iptables chain removed (with --netns: the hosts'
namespaces, veths and bridge), also on Ctrl-C, SIGTERM or an exception; an atexit hook
repeats it if the interpreter exits some other way.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import random
import secrets
import signal
import ssl
import sys
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from kvs.chaos import report
from kvs.chaos.checkers import run_all
from kvs.chaos.client import NodeClient, no_resend, sent_trace
from kvs.chaos.cluster import ClusterError, Credentials, get_json, remote_nodes, with_acl
from kvs.chaos.faults import CUTS, FAULT_KINDS, FaultInjector, FaultPlan, Firewall, partitions_available
from kvs.chaos.history import HISTORY_FILE, HistoryWriter, load_history
from kvs.chaos.workloads import CLIENTS, WORKLOADS, ClientContext, KeySpace, assign
from kvs.client import TOKEN_VARIABLE
from kvs.testing import Cluster, NodeGroup, free_ports, netns
from kvs.tls import client_context

GID_BASE = 47000
DUMP_PATH = "/internal/dump"
STATUS_PATH = "/cluster/status"
SETUP_SECONDS = 60.0


@dataclass
class Options:
    nodes: int = 3
    clients: int = 8
    duration: float = 30.0
    seed: int | None = None
    workloads: list[str] = field(default_factory=lambda: list(WORKLOADS))
    consistency: str = "local"  # local | quorum | mixed (some keys of each kind)
    faults: list[str] = field(default_factory=lambda: list(FAULT_KINDS))
    out: Path = Path("chaos-out")
    urls: list[str] = field(default_factory=list)
    keys: int = 3  # hot keys per workload
    key_budget: int = 150  # write attempts per key before it rotates
    history_limit: int = 1000  # revision_history_limit of the chaos cluster
    lease_ttl: float = 3.0
    op_timeout: float = 1.0
    skew_ms: int = 2500
    jump_ms: int = 2000  # how far the "jump" fault steps a node's clock
    overlap: int = 1  # faults active at once
    converge_timeout: float = 60.0
    fault_quiet: tuple[float, float] = (1.0, 3.0)
    fault_duration: tuple[float, float] = (2.0, 5.0)
    settings: dict[str, str] = field(default_factory=dict)  # extra node config as KVS_* env
    cluster_secret: str | None = None  # given to the nodes started; signs the dump requests
    token: str | None = None  # with urls: the ACL token every request of the run carries
    netns: bool = False  # every node on a host of its own (a network namespace), TLS and ACLs
    base_port: int | None = None
    progress: float = 2.0
    think: float = 0.005
    shrink_seconds: float = 20.0

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["out"] = str(self.out)
        out["cluster_secret"] = "***" if self.cluster_secret else None
        out["token"] = "***" if self.token else None
        return out


SECRET_OPTIONS = ("--token", "--cluster-secret")


def masked_argv(argv: list[str]) -> list[str]:
    """The command line for the history, which is meant to be shared: secrets as ***."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] in SECRET_OPTIONS:
            arg = "***"
        elif arg.startswith(tuple(f"{o}=" for o in SECRET_OPTIONS)):
            arg = arg.split("=", 1)[0] + "=***"
        out.append(arg)
    return out


class Run:
    def __init__(self, options: Options, say: Callable[[str], None]) -> None:
        self.o = options
        self.say = say
        self.run_id = secrets.token_hex(4)
        self.seed = options.seed if options.seed is not None else random.SystemRandom().randrange(2**31)
        self.rng = random.Random(self.seed)
        self.out = Path(options.out)
        self.history: HistoryWriter | None = None
        self.cluster: Cluster | None = None
        self.joiners: NodeGroup | None = None  # the nodes the `join` fault starts
        self.nodes: list[Any] = []
        self.firewall: Firewall | None = None
        self.network: netns.Network | None = None
        # An external cluster's token serves the clients and the run's operator requests alike.
        self.credentials = Credentials(options.cluster_secret, options.token, options.token)
        self.injector: FaultInjector | None = None
        self.keys = KeySpace(f"chaos-{self.run_id}", options.keys, options.key_budget, options.consistency)
        self.faults = list(options.faults)
        self.t0 = time.time()

    # -- cleanup (idempotent, synchronous: also runs from atexit) --------------------------

    def cleanup(self) -> None:
        for group in (self.joiners, self.cluster):
            if group is not None:
                with contextlib.suppress(Exception):
                    group.stop()
        if self.firewall is not None:
            with contextlib.suppress(Exception):
                self.firewall.cleanup()
        if self.network is not None:
            self.network.close()
        if self.history is not None:
            self.history.close()

    # -- phases -----------------------------------------------------------------------------

    def _plan_faults(self) -> None:
        unknown = [f for f in self.faults if f not in FAULT_KINDS]
        if unknown:
            raise ValueError(f"unknown fault {unknown[0]!r}; choose from {', '.join(FAULT_KINDS)}")
        if self.o.urls:
            dropped = [f for f in self.faults if f in FAULT_KINDS]
            if dropped:
                self.say(f"note: with --url the run does not own the node processes; faults "
                         f"{', '.join(dropped)} are left out (workload and checks only)")
            self.faults = []
            return
        if "voters" in self.faults and (self.o.consistency == "local" or self.o.nodes < 3):
            self.faults.remove("voters")  # voters matter to quorum keys; and one must stay a majority
        if "join" in self.faults and (self.o.consistency == "local" or self.o.netns):
            self.faults.remove("join")  # voters matter to quorum keys; a new host is not made here
        if any(f in CUTS for f in self.faults) and not self.o.netns:  # --netns checks for itself
            ok, why = partitions_available()
            if not ok:
                self.say(f"note: {why}")
            if not ok or self.o.nodes < 2:
                self.faults = [f for f in self.faults if f not in CUTS]

    def prepare(self) -> ssl.SSLContext | bool:
        """Plan the faults and define the cluster (with --netns, make its hosts first); what
        the run's client session verifies the nodes with (aiohttp's `ssl`)."""
        self.out.mkdir(parents=True, exist_ok=True)
        self._plan_faults()
        if self.o.urls:
            return True
        env = {"KVS_CAS_ENABLED": "true", "KVS_REVISION_HISTORY_LIMIT": str(self.o.history_limit),
               **{f"KVS_{k.upper()}": v for k, v in self.o.settings.items()}}
        if self.o.cluster_secret:
            env["KVS_CLUSTER_SECRET"] = self.o.cluster_secret
        if self.o.consistency != "local":  # every node started is a voter of the quorum keys
            env["KVS_INITIAL_VOTERS"] = ",".join(f"n{i + 1}" for i in range(self.o.nodes))
        names = [f"n{i + 1}" for i in range(self.o.nodes)]
        skews = {}
        if "skew" in self.faults:
            skews[names[-1]] = self.o.skew_ms * self.rng.choice((1, -1))
        jump_ms = self.o.jump_ms if "jump" in self.faults else 0
        if self.o.netns:
            return self._prepare_hosts(names, env, skews, jump_ms)
        gids = None
        if any(f in CUTS for f in self.faults):
            base = GID_BASE + (os.getpid() % 1000) * 16
            gids = [base + i for i in range(self.o.nodes)]
        base = self.o.base_port
        ports = range(base, base + self.o.nodes) if base else free_ports(self.o.nodes)
        self.cluster = Cluster(self.out / "nodes", names, ports=ports, env=env, gids=gids, skews=skews,
                               jump_ms=jump_ms)
        self.nodes = self.cluster.nodes
        if "join" in self.faults:  # new nodes, not among the first voters: they add themselves
            self.joiners = NodeGroup(self.out / "nodes" / f"joiners-{self.run_id}",
                                     env={**env, "KVS_INITIAL_VOTERS": None})
        return True

    def _prepare_hosts(self, names: list[str], env: dict[str, str],
                       skews: dict[str, int], jump_ms: int) -> ssl.SSLContext:
        """One network namespace per node (TLS, a cluster secret, ACLs): see kvs/testing/netns.py
        and `with_acl`."""
        reason = netns.unavailable()
        if reason is not None:
            raise ClusterError(f"--netns: {reason}")
        try:
            self.network = netns.Network(names).create()
        except netns.NetnsError as exc:
            raise ClusterError(f"--netns: cannot make the hosts: {exc}") from None
        cluster = netns.NetnsCluster(self.out / "nodes", self.network, skews=skews,
                                     env={**env, "KVS_ACL_ENABLED": "true"},
                                     port=self.o.base_port or netns.DEFAULT_PORT,
                                     secret=self.o.cluster_secret, jump_ms=jump_ms)
        self.credentials = Credentials(cluster.secret)  # until ACLs are bootstrapped (start)
        self.cluster, self.nodes = cluster, cluster.nodes
        return client_context(str(cluster.ca_file))

    async def _check_access(self, session: aiohttp.ClientSession) -> None:
        """Before any history: an external cluster with ACLs on refuses every request of a run
        without a (good) token, and thousands of 401s recorded as failed calls would bury the
        one thing to say."""
        key = urllib.parse.quote(f"{self.keys.prefix}/access-check", safe="/")
        for node in self.nodes:
            async with session.get(f"{node.url}/kv/{key}", headers=self.credentials.client(),
                                   timeout=aiohttp.ClientTimeout(total=SETUP_SECONDS)) as resp:
                if resp.status in (401, 403):
                    given = "the token given is refused" if self.o.token else "no ACL token was given"
                    raise ClusterError(
                        f"{node.name} ({node.url}) answers HTTP {resp.status} to a read of the run's "
                        f"keys: {given}; give a token that may write {self.keys.prefix}/ with "
                        f"--token or ${TOKEN_VARIABLE}")

    async def start(self, session: aiohttp.ClientSession) -> None:
        if self.o.urls:
            self.nodes = await remote_nodes(session, self.o.urls)
            await self._check_access(session)
        self.history = HistoryWriter(self.out / HISTORY_FILE)
        self.history.write({
            "type": "meta", "run_id": self.run_id, "seed": self.seed, "t0": self.t0,
            "nodes": {n.name: {"url": n.url, "skew_ms": n.skew_ms,
                               "gid": getattr(n, "gid", None)} for n in self.nodes},
            "faults": self.faults, "options": self.o.to_json(), "argv": masked_argv(sys.argv),
            "prefix": self.keys.prefix, "network": self.network.run_id if self.network else None})
        if self.cluster is not None:
            hosts = ", each on a host of its own (network namespace), TLS, ACLs" if self.network else ""
            self.say(f"starting {self.o.nodes} nodes under {self.out / 'nodes'} "
                     f"(cas_enabled, revision_history_limit={self.o.history_limit}{hosts})")
            await self.cluster.astart_all()
        if self.network is not None:
            self.credentials, ids = await with_acl(session, self.nodes, self.keys.prefix,
                                                   self.credentials.secret, SETUP_SECONDS)
            self.history.event("acl", **ids)
            self.say(f"ACLs bootstrapped; the clients' token ({ids['client_token']}) may write "
                     f"{self.keys.prefix}/ only")
        if any(f in CUTS for f in self.faults) and self.network is None:
            self.firewall = Firewall(self.run_id)
            await asyncio.to_thread(self.firewall.setup)
        for node in self.nodes:
            skew = f"  clock skew {node.skew_ms:+d} ms" if node.skew_ms else ""
            self.say(f"  {node.name}  {node.url}{skew}")

    async def workload(self, session: aiohttp.ClientSession) -> None:
        assert self.history is not None
        history = self.history
        stop = asyncio.Event()
        contexts = []
        for i, (workload, home) in enumerate(assign(self.o.clients, len(self.nodes), self.o.workloads)):
            name = f"c{i + 1}"
            clients = [NodeClient(session, history, client=name, node=n.name, url=n.url, workload=workload,
                                  timeout=self.o.op_timeout, headers=self.credentials.client())
                       for n in self.nodes]
            ctx = ClientContext(name, home, clients, random.Random(f"{self.seed}:{name}"), self.keys, stop,
                                history.next_id, think=self.o.think, lease_ttl=self.o.lease_ttl)
            contexts.append((workload, ctx))
        self.say(f"running {self.o.clients} clients ({', '.join(self.o.workloads)}; "
                 f"{self.o.consistency} consistency) for "
                 f"{self.o.duration:.0f}s; faults: {', '.join(self.faults) or 'none'}; seed {self.seed}")
        history.event("phase", phase="workload")
        tasks = [asyncio.create_task(CLIENTS[w](ctx), name=ctx.name) for w, ctx in contexts]
        until = time.monotonic() + self.o.duration
        fault_task = None
        if self.cluster is not None:
            self.injector = FaultInjector(
                self.cluster, history,
                FaultPlan(self.faults, self.o.fault_quiet, self.o.fault_duration, self.o.overlap),
                random.Random(f"{self.seed}:faults"), firewall=self.firewall or self.network,
                say=self.say, operator=self.credentials.operator, joiners=self.joiners)
            for node in self.cluster.nodes:
                if node.skew_ms:
                    self.injector.mark_skew(node)
            fault_task = asyncio.create_task(self.injector.run(until), name="faults")
        progress = asyncio.create_task(self._progress(), name="progress")
        try:
            while time.monotonic() < until:
                await asyncio.sleep(min(0.5, until - time.monotonic()))
                crashed = [t for t in tasks if t.done() and t.exception() is not None]
                if crashed:
                    raise RuntimeError(f"client {crashed[0].get_name()} crashed") from crashed[0].exception()
                if fault_task is not None and fault_task.done() and fault_task.exception():
                    raise RuntimeError("fault injection failed") from fault_task.exception()
            stop.set()
            history.event("phase", phase="stopping")
            if fault_task is not None:
                await asyncio.wait_for(fault_task, timeout=SETUP_SECONDS)
            _, pending = await asyncio.wait(tasks, timeout=self.o.op_timeout * 3 + 5)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            stop.set()
            others = [progress, *tasks] + ([fault_task] if fault_task is not None else [])
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)
        history.event("phase", phase="workload_end")

    async def _progress(self) -> None:
        assert self.history is not None
        started = time.monotonic()
        while True:
            await asyncio.sleep(self.o.progress)
            self.history.flush()
            c = self.history.counts
            faults = self.injector.describe_active() if self.injector else "-"
            self.say(f"[{time.monotonic() - started:6.1f}s] ops {c['invoke']:>7}  ok {c['ok']:>7}  "
                     f"fail {c['fail']:>6}  unknown {c['unknown']:>5}  faults: {faults}")

    async def heal(self, session: aiohttp.ClientSession) -> None:
        assert self.history is not None
        if self.injector is not None:
            await self.injector.heal_all()
        self.history.event("phase", phase="healed")
        self.say("faults healed; waiting for convergence")

    async def converge(self, session: aiohttp.ClientSession) -> bool:
        assert self.history is not None
        deadline = time.monotonic() + self.o.converge_timeout
        previous = None
        while True:
            roots = {}
            for node in self.nodes:
                try:
                    status = await self._status(session, node)
                    roots[node.name] = status["merkle_root"]
                except (aiohttp.ClientError, TimeoutError, ClusterError, OSError) as exc:
                    roots[node.name] = f"unreachable: {exc!r}"
            equal = len(set(roots.values())) == 1
            self.history.event("converge", roots=roots, equal=equal)
            if equal and previous == roots:
                self.history.event("phase", phase="converged")
                return True
            previous = roots if equal else None
            if time.monotonic() > deadline:
                self.history.event("phase", phase="not_converged")
                self.say(f"Merkle roots still differ after {self.o.converge_timeout:.0f}s: {roots}")
                return False
            await asyncio.sleep(0.5)

    async def collect(self, session: aiohttp.ClientSession) -> None:
        """Final reads of every key on every node, then each node's dump."""
        assert self.history is not None
        async def read_all(node: Any) -> None:
            for key, workload in sorted(self.keys.touched.items()):
                client = NodeClient(session, history, client="final", node=node.name, url=node.url,
                                    workload=workload, timeout=10.0, headers=self.credentials.client())
                await client.read(key, tag="final", consistency=self.keys.consistency(key))

        history = self.history
        await asyncio.gather(*(read_all(node) for node in self.nodes))
        prefix = self.keys.prefix + "/"
        for node in self.nodes:
            try:
                dump = await get_json(session, node.url + DUMP_PATH, timeout=60.0, method="POST",
                                      headers=self.credentials.operator("POST", DUMP_PATH))
            except (aiohttp.ClientError, TimeoutError, ClusterError, OSError) as exc:
                self.say(f"could not dump {node.name}: {exc!r}")
                continue
            count = 0
            for versions in dump:
                if versions and versions[0]["key"].startswith(prefix):
                    self.history.write({"type": "dump", "node": node.name, "key": versions[0]["key"],
                                        "versions": versions})
                    count += 1
            status = await self._status(session, node)
            self.history.event("dump_done", node=node.name, keys=count, merkle_root=status["merkle_root"])
        self.history.flush()

    async def _status(self, session: aiohttp.ClientSession, node: Any) -> Any:
        return await get_json(session, node.url + STATUS_PATH,
                              headers=self.credentials.operator("GET", STATUS_PATH))


async def _run(run: Run) -> None:
    tls = await asyncio.wait_for(asyncio.to_thread(run.prepare), timeout=SETUP_SECONDS)
    connector = aiohttp.TCPConnector(limit=0, force_close=False, ssl=tls)
    async with aiohttp.ClientSession(connector=connector, trace_configs=[sent_trace()]) as session:
        no_resend(session)
        await asyncio.wait_for(run.start(session), timeout=SETUP_SECONDS)
        await run.workload(session)
        await asyncio.wait_for(run.heal(session), timeout=SETUP_SECONDS)
        await run.converge(session)
        await asyncio.wait_for(run.collect(session), timeout=SETUP_SECONDS * 2)
        if run.injector is not None:
            run.injector.end_all()


def execute(options: Options, say: Callable[[str], None] = print) -> int:
    """Run, check, report. Exit code: 0 all checkers pass, 1 a violation, 2 the run itself failed."""
    run = Run(options, say)
    atexit.register(run.cleanup)
    failed: BaseException | None = None
    try:
        asyncio.run(_main(run))
    except (KeyboardInterrupt, asyncio.CancelledError) as exc:
        failed = exc
        say("interrupted: stopping every node and removing every rule this run created")
    except Exception as exc:
        failed = exc
        say(f"chaos run failed: {exc}" + (f" ({exc.__cause__!r})" if exc.__cause__ else ""))
    finally:
        run.cleanup()
        atexit.unregister(run.cleanup)
        if run.cluster is not None:
            left = run.cluster.leftover_pids() + (run.joiners.leftover_pids() if run.joiners else [])
            if left:
                say(f"warning: node processes still alive: {left}")
    if run.history is None:
        return 2
    say(f"history: {run.out / HISTORY_FILE}")
    if isinstance(failed, KeyboardInterrupt | asyncio.CancelledError):
        return 130
    code = check_dir(run.out, say, shrink_seconds=options.shrink_seconds)
    return 2 if failed is not None else code


async def _main(run: Run) -> None:
    """Run under SIGINT/SIGTERM handlers that cancel it (a shell may start us with SIGINT ignored)."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    interrupted = []

    def interrupt() -> None:
        interrupted.append(True)
        task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, interrupt)
    try:
        await _run(run)
    except asyncio.CancelledError:
        if interrupted:
            raise KeyboardInterrupt from None
        raise
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def check_dir(path: Path, say: Callable[[str], None] = print, *,
              shrink_seconds: float = 20.0) -> int:
    """Load a saved history, run every checker, write checks.json and report.html, print the table."""
    path = Path(path)
    started = time.monotonic()
    history = load_history(path)
    results = run_all(history, shrink_seconds=shrink_seconds)
    out_dir = path if path.is_dir() else path.parent
    report.write(out_dir, history, results, seconds=time.monotonic() - started)
    say(report.summary_table(history, results))
    say(f"report: {out_dir / report.HTML_FILE}")
    return 0 if all(r.passed for r in results) else 1
