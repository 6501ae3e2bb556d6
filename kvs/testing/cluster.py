"""Real `kvs serve` processes: one node, a group of nodes, a cluster that joins through its first.

    cluster = Cluster(out / "nodes", ["n1", "n2", "n3"], env={"KVS_CAS_ENABLED": "true"})
    cluster.start_all()              # n1 first, then the others at once (seeded with n1),
                                     # until every node lists all of them alive
    node = cluster.by_name("n2")
    node.kill(); node.start()        # SIGKILL, then the same port, data dir, gid, clock skew
    cluster.stop()                   # SIGCONT + SIGTERM to all, SIGKILL after a grace period

    with NodeGroup(tmp_path) as group:           # ad-hoc nodes (what the tests use)
        node = group.start("a", env={...})       # --port 0: the port is read from the banner
        await node.astart()                      # from async code: in a thread, cancellable

When is a node up? When this start's own output has the banner "kvs node <id> listening
on <url>" (printed only after the node bound its port, so it is not another process on
that port) and GET <url>/health answers {"status": "ok", "node": <id>} with the id it
was started with. A node that exits during start-up, or is not up within the timeout,
raises StartError quoting the end of its log. A restart on a fixed port retries while
that port is still taken (an outgoing connection may have got it as its ephemeral port).

Environment: ours without KVS_* (the developer's settings must not leak into a test),
plus PYTHONPATH pointing at the source tree to run (`root`), plus the node's own KVS_*
settings. `kvs cluster up` keeps the user's KVS_* instead (keep_kvs_env=True).

Node options for fault injection: `gid` runs the node under its own group id (iptables'
owner match tells its packets apart from other nodes' on 127.0.0.1); `skew_ms` runs it
with its wall clock off by that much (kvs.chaos.skewed_node), across restarts too.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import kvs
from kvs.cluster import auth
from kvs.testing.processes import STOP_GRACE, LineSink, ManagedProcess
from kvs.tls import client_context

REPO_ROOT = Path(kvs.__file__).resolve().parent.parent
BANNER = re.compile(r"kvs node (\S+) listening on (https?://\S+)")
START_TIMEOUT = 30.0
POLL = 0.02
PORT_TAKEN = ("Address already in use", "[Errno 98]")

T = TypeVar("T")


class StartError(RuntimeError):
    """A node did not come up: it exited, timed out, or start-up was interrupted."""


# -- environment, commands, ports ----------------------------------------------------------------

def node_env(overrides: Mapping[str, str | None] | None = None, *, root: Path = REPO_ROOT,
             keep_kvs_env: bool = False) -> dict[str, str]:
    """The environment for a `kvs` subprocess: ours (without KVS_* unless keep_kvs_env), the
    source tree `root` first on PYTHONPATH, unbuffered output, then `overrides` (None removes)."""
    env = {k: v for k, v in os.environ.items() if keep_kvs_env or not k.startswith("KVS_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    for key, value in (overrides or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def kvs_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "kvs", *args]


def run_kvs(*args: str, env: Mapping[str, str | None] | None = None,
            timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run one `kvs ...` command to completion and capture its output.

    On timeout its whole process group is killed and TimeoutExpired raised (with the
    output so far), so a command that unexpectedly keeps running cannot outlive the caller.
    """
    command = kvs_command(*args)
    with subprocess.Popen(command, env=node_env(env), stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            raise subprocess.TimeoutExpired(command, timeout, stdout, stderr) from None
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports that nothing listens on right now (racy: prefer
    port 0 and the banner where the port need not be known in advance)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                 for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def free_port() -> int:
    return free_ports(1)[0]


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a listener could not bind `port` now (SO_REUSEADDR, as the node binds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
        return False


def _get_json(url: str, timeout: float = 1.0, context: ssl.SSLContext | None = None,
              headers: Mapping[str, str] | None = None) -> Any:
    """The JSON body of a 200 answer; None for anything else (refused, timeout, other status).
    `context` verifies an https node."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=dict(headers or {})),
                                    timeout=timeout, context=context) as resp:
            return json.loads(resp.read()) if resp.status == 200 else None
    except (OSError, ValueError, http.client.HTTPException):
        return None


def _pause(stop: threading.Event | None, seconds: float) -> bool:
    """Sleep `seconds`, or less if `stop` is set meanwhile; True if it is set."""
    if stop is None:
        time.sleep(seconds)
        return False
    return stop.wait(seconds)


async def _in_thread(run: Callable[[threading.Event], T]) -> T:
    """`run(stop)` in a worker thread; cancelling the caller sets `stop`, so the thread ends too."""
    stop = threading.Event()
    try:
        return await asyncio.to_thread(run, stop)
    finally:
        stop.set()


# -- one node --------------------------------------------------------------------------------------

class KvsNode(ManagedProcess):
    """One node: a name, a data dir, a port (0: any, then kept for restarts) and its settings."""

    def __init__(self, name: str, *, log: Path | LineSink, data_dir: Path | None = None,
                 port: int | None = 0, node_id: str | None = None,
                 seeds: Sequence[str | KvsNode] = (), args: Sequence[str] = (),
                 env: Mapping[str, str | None] | None = None, keep_kvs_env: bool = False,
                 gid: int | None = None, skew_ms: int = 0, jump_ms: int = 0, launcher: Sequence[str] = (),
                 root: Path = REPO_ROOT, cwd: Path | None = None, die_with_parent: bool = False,
                 ca: Path | None = None) -> None:
        """`port` None: no --port flag (the config decides). `node_id` None: whatever the node
        picks (read from the banner). `seeds`: addresses, or nodes to join through (their
        address at spawn time). `launcher`: a command prefix such as `taskset -c 1`. `root`:
        the source tree whose kvs runs. `ca`: the CA file that verifies a node serving TLS
        (its banner then says https://), for the health checks."""
        super().__init__(name, log=log, env=node_env(env, root=root, keep_kvs_env=keep_kvs_env),
                         cwd=cwd, gid=gid, die_with_parent=die_with_parent)
        self.data_dir = Path(data_dir).absolute() if data_dir is not None else None
        self.port = port
        self.node_id = node_id
        self.fixed_id = node_id is not None
        self.seeds = list(seeds)
        self.args = list(args)
        self.skew_ms = skew_ms
        self.jump_ms = jump_ms  # > 0: the clock can jump by this much (jump_clock)
        self.launcher = list(launcher)
        self.tls = client_context(str(ca)) if ca is not None else None
        self.url: str | None = f"{'https' if ca else 'http'}://127.0.0.1:{port}" if port else None
        self._banner_seen = False
        self._deadline = 0.0
        self._respawn_at: float | None = None

    def jump_clock(self, forward: bool) -> None:
        """Step the node's wall clock by jump_ms, forward or back (a node started with jump_ms)."""
        assert self.jump_ms and self.proc is not None, f"{self.name} cannot jump its clock"
        os.kill(self.proc.pid, signal.SIGUSR1 if forward else signal.SIGUSR2)

    @property
    def address(self) -> str:
        """host:port, as other nodes' --seed wants it (known once the node has started)."""
        if self.url is None:
            raise StartError(f"{self.name} has no address yet: start it first")
        return self.url.split("://", 1)[1]

    def command(self) -> list[str]:
        serve = ["serve"]
        if self.port is not None:
            serve += ["--port", str(self.port)]
        if self.fixed_id:
            serve += ["--node-id", str(self.node_id)]
        if self.data_dir is not None:
            serve += ["--data-dir", str(self.data_dir)]
        for seed in self.seeds:
            serve += ["--seed", seed.address if isinstance(seed, KvsNode) else seed]
        serve += self.args
        if self.skew_ms or self.jump_ms:
            python = [sys.executable, "-m", "kvs.chaos.skewed_node", "--offset-ms", str(self.skew_ms),
                      "--jump-ms", str(self.jump_ms), "--"]
        else:
            python = kvs_command()
        return [*self.launcher, *python, *serve]

    # -- start-up -------------------------------------------------------------------------------

    def spawn(self, timeout: float = START_TIMEOUT) -> KvsNode:
        """Start the process; poll_ready() then says when it is up (StartError after `timeout`)."""
        self._deadline = time.monotonic() + timeout
        self._respawn_at = None
        return self._spawn_again()

    def _spawn_again(self) -> KvsNode:
        self._banner_seen = False
        super().spawn()
        return self

    def poll_ready(self) -> bool:
        """One look: True once up (see the module docstring); StartError if it never will be."""
        if self._respawn_at is not None:
            if time.monotonic() < self._respawn_at:
                return False
            self._respawn_at = None
            self._spawn_again()
        self.check_running()
        if not self._banner_seen:
            match = BANNER.search(self.output())
            if match is None:
                return self._before_deadline()
            self._take_banner(match.group(1), match.group(2))
        return self.healthy() or self._before_deadline()

    def check_running(self) -> None:
        assert self.proc is not None, f"{self.name} was never spawned"
        code = self.proc.poll()
        if code is None:
            return
        if (self.starts > 1 and self.port and any(s in self.output() for s in PORT_TAKEN)
                and time.monotonic() + 0.2 < self._deadline):
            self._respawn_at = time.monotonic() + 0.2  # a restart: wait for its port to be free
            return
        raise StartError(f"{self.name} exited with code {code} during start-up{self._where()}:\n"
                         f"{self.log_tail()}")

    def _take_banner(self, node_id: str, url: str) -> None:
        if self.fixed_id and node_id != self.node_id:
            raise StartError(f"{self.name} reports node id {node_id!r}, started as {self.node_id!r}")
        self.node_id, self.url = node_id, url
        self.port = int(url.rsplit(":", 1)[1])  # a restart keeps the address
        self._banner_seen = True

    def _before_deadline(self) -> bool:
        if time.monotonic() > self._deadline:
            raise StartError(f"{self.name} not up in time{self._where()}:\n{self.log_tail()}")
        return False

    def _where(self) -> str:
        return f" (log: {self.log_path})" if self.log_path else ""

    def healthy(self, timeout: float = 1.0) -> bool:
        """GET /health answers 200 with this node's id (not some other node on that port)."""
        if self.url is None or self.node_id is None:
            return False
        body = _get_json(self.url + "/health", timeout, self.tls)
        return isinstance(body, dict) and body.get("node") == self.node_id

    def start(self, timeout: float = START_TIMEOUT, *, stop: threading.Event | None = None,
              interval: float = POLL) -> KvsNode:
        """Spawn and wait until up; on any failure (or `stop` set) the process is killed."""
        self.spawn(timeout)
        try:
            wait_ready([self], stop=stop, interval=interval)
        except BaseException:
            self.kill()
            raise
        return self

    async def astart(self, timeout: float = START_TIMEOUT) -> KvsNode:
        """`start` without blocking the event loop; cancelling it stops the waiting thread."""
        return await _in_thread(lambda stop: self.start(timeout, stop=stop))

    def restart(self, *, hard: bool = True, timeout: float = START_TIMEOUT) -> KvsNode:
        """Stop (SIGKILL if hard, else SIGTERM) and start again on the same data dir and port."""
        if hard:
            self.kill()
        else:
            self.terminate()
        return self.start(timeout)

    def alive_members(self) -> int:
        """How many members this node lists as alive (itself included); 0 if it does not answer.

        Signed with the node's cluster secret, if it has one: with ACLs on, /cluster/ needs
        an operator, which a request signed with the secret is."""
        path = "/cluster/members"
        headers = auth.operator_headers((self.env or {}).get("KVS_CLUSTER_SECRET"), "GET", path)
        members = _get_json(self.url + path, 2.0, self.tls, headers)
        if not isinstance(members, list):
            return 0
        return sum(1 for m in members if isinstance(m, dict) and m.get("state") == "alive")

    def __repr__(self) -> str:
        return f"<KvsNode {self.name} pid={self.pid} url={self.url}>"


def wait_ready(nodes: Sequence[KvsNode], *, stop: threading.Event | None = None, interval: float = POLL,
               on_ready: Callable[[KvsNode], None] | None = None) -> None:
    """Until every node (each already spawned) is up; StartError if one fails or `stop` is set."""
    pending = list(nodes)
    while pending:
        for node in [n for n in pending if n.poll_ready()]:
            pending.remove(node)
            if on_ready is not None:
                on_ready(node)
        if pending and _pause(stop, interval):
            raise StartError(f"start-up interrupted ({', '.join(n.name for n in pending)} not up yet)")


# -- groups of nodes ---------------------------------------------------------------------------------

class NodeGroup:
    """Every node one owner starts under one directory; `stop()` (or leaving the `with`:
    SIGKILL at once) stops all of them, even when one of them cannot be stopped."""

    def __init__(self, base_dir: Path, *, env: Mapping[str, str | None] | None = None) -> None:
        self.base_dir = Path(base_dir).absolute()
        self.env = dict(env or {})
        self.nodes: list[KvsNode] = []

    def node(self, name: str | None = None, *, data_dir: Path | str | None = "auto",
             port: int | None = 0, env: Mapping[str, str | None] | None = None,
             log: Path | LineSink | None = None, **options: Any) -> KvsNode:
        """Define a node without starting it. data_dir "auto" is <base>/<name>, None omits the
        flag; the log is <base>/<name>.log unless given; other options go to KvsNode."""
        name = name or f"node{len(self.nodes) + 1}"
        if any(n.name == name for n in self.nodes):
            raise ValueError(f"node name {name!r} is already used in this group")
        directory = self.base_dir / name if data_dir == "auto" else data_dir
        node = KvsNode(name, log=log or self.base_dir / f"{name}.log",
                       data_dir=Path(directory) if directory is not None else None, port=port,
                       env={**self.env, **(env or {})}, cwd=self.base_dir, **options)
        self.nodes.append(node)
        return node

    def start(self, name: str | None = None, *, timeout: float = START_TIMEOUT, **options: Any) -> KvsNode:
        return self.node(name, **options).start(timeout)

    def by_name(self, name: str) -> KvsNode:
        return next(n for n in self.nodes if n.name == name)

    def stop(self, grace: float | None = STOP_GRACE) -> None:
        """SIGCONT + SIGTERM to every node at once, SIGKILL whatever is left after `grace`
        seconds (None: SIGKILL at once)."""
        if grace is not None:
            for node in self.nodes:
                if node.running:
                    node.signal_group(signal.SIGCONT)
                    node.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + (grace or 0.0)
        errors = []
        for node in reversed(self.nodes):
            try:
                if grace is not None:
                    node.wait(max(0.05, deadline - time.monotonic()))
                node.kill()
            except Exception as exc:  # keep going: every other node must still be stopped
                errors.append(f"{node.name}: {exc!r}")
        if errors:
            raise RuntimeError("could not stop: " + "; ".join(errors))

    def leftover_pids(self) -> list[int]:
        """Pids of this group's nodes that still exist (zombies excluded): [] after stop()."""
        return [pid for node in self.nodes for pid in node.leftovers()]

    def __enter__(self) -> NodeGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop(grace=None)


class Cluster(NodeGroup):
    """Nodes named `names` (each also its node id) that join through the first one."""

    def __init__(self, directory: Path, names: Sequence[str], *, ports: Sequence[int] | None = None,
                 env: Mapping[str, str | None] | None = None, gids: Sequence[int] | None = None,
                 skews: Mapping[str, int] | None = None,
                 envs: Mapping[str, Mapping[str, str | None]] | None = None,
                 launchers: Mapping[str, Sequence[str]] | None = None,
                 output: Callable[[str], LineSink] | None = None, **options: Any) -> None:
        """`ports`: one per node (default 0: any, read from the banner). `gids`: one group id per
        node. `skews`: clock offset in ms by name. `envs`: settings of one node by name, beside
        `env` (e.g. its own certificate). `launchers`: one node's command prefix by name (e.g.
        the network namespace it runs in). `output`: a line sink per node name instead of
        <directory>/<name>.log. Other options go to every KvsNode."""
        super().__init__(directory, env=env)
        if not names:
            raise ValueError("a cluster needs at least one node")
        launcher = options.pop("launcher", ())
        for i, name in enumerate(names):
            self.node(name, port=ports[i] if ports else 0, node_id=name,
                      seeds=[self.nodes[0]] if i else [], gid=gids[i] if gids else None,
                      skew_ms=(skews or {}).get(name, 0), log=output(name) if output else None,
                      env=(envs or {}).get(name), launcher=(launchers or {}).get(name, launcher),
                      **options)

    def start_all(self, timeout: float = START_TIMEOUT, *, stop: threading.Event | None = None,
                  on_ready: Callable[[KvsNode], None] | None = None) -> None:
        """The first node, then all others at once, then until each lists every node alive.
        StartError if that fails or `stop` is set first; the nodes are left for stop()."""
        deadline = time.monotonic() + timeout
        for batch in (self.nodes[:1], self.nodes[1:]):
            for node in batch:
                if stop is not None and stop.is_set():
                    raise StartError("start-up interrupted")
                node.spawn(deadline - time.monotonic())
            wait_ready(batch, stop=stop, on_ready=on_ready)
        self.wait_members(deadline, stop=stop)

    async def astart_all(self, timeout: float = START_TIMEOUT) -> None:
        await _in_thread(lambda stop: self.start_all(timeout, stop=stop))

    def wait_members(self, deadline: float, *, stop: threading.Event | None = None) -> None:
        """Until every node lists all nodes alive (itself included); StartError at `deadline`."""
        while True:
            for node in self.nodes:
                node.check_running()
            counts = [node.alive_members() for node in self.nodes]
            if all(c >= len(self.nodes) for c in counts):
                return
            if time.monotonic() > deadline:
                raise StartError(f"members did not all see each other in time "
                                 f"(alive counts per node: {counts})")
            if _pause(stop, 0.1):
                raise StartError("start-up interrupted (members not joined yet)")
