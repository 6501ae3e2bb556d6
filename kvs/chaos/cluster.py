"""The nodes under test: `kvs serve` subprocesses the chaos run owns, or running nodes by URL.

    cluster = LocalCluster(out_dir / "nodes", nodes=3, env={...})
    await cluster.start()             # node n1 first, the others seed through it
    node = cluster.nodes[1]
    await node.kill()                 # SIGKILL to its process group (a crash)
    await node.start()                # same port, data dir, gid and clock offset
    node.pause(); node.resume()       # SIGSTOP / SIGCONT to the process group
    cluster.stop()                    # SIGCONT, SIGTERM, then SIGKILL; safe to call twice

Each node runs in its own session (process group), so a signal reaches everything it
spawned and nothing outlives `stop()`. When partitions are enabled every node also runs
under its own group id: iptables' owner match tells its outgoing packets apart from
another node's and from the clients', although all of them use 127.0.0.1 (see faults.py).
Logs go to `<dir>/<name>.log`, one header line per start.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp

import kvs

REPO_ROOT = Path(kvs.__file__).resolve().parent.parent
START_TIMEOUT = 30.0
STOP_GRACE = 5.0


class ClusterError(RuntimeError):
    pass


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports that nothing listens on right now."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def node_env(extra: Mapping[str, str]) -> dict[str, str]:
    """Our environment without KVS_* (the developer's settings must not leak in), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVS_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def stop_group(proc: subprocess.Popen[Any], sig: signal.Signals, grace: float) -> int | None:
    """Send `sig` to the process group of `proc` (started with start_new_session), wait up
    to `grace` seconds, then SIGKILL the group and reap; returns the exit code.

    The group is killed in any case: the leader may be gone while something it spawned
    is not. A stopped (SIGSTOPped) group is continued first, or SIGTERM would wait.
    """
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGCONT)
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(grace)
    return proc.returncode


async def get_json(session: aiohttp.ClientSession, url: str, timeout: float = 2.0,
                   method: str = "GET", headers: Mapping[str, str] | None = None) -> Any:
    async with session.request(method, url, timeout=aiohttp.ClientTimeout(total=timeout),
                               headers=headers) as resp:
        if resp.status != 200:
            raise ClusterError(f"{method} {url}: HTTP {resp.status}")
        return await resp.json(content_type=None)


class NodeProcess:
    """One node: a name, a fixed port and data dir, and the process currently running it."""

    def __init__(self, name: str, port: int, data_dir: Path, log_path: Path, *,
                 seeds: list[str], env: Mapping[str, str], gid: int | None = None,
                 skew_ms: int = 0) -> None:
        self.name = name
        self.port = port
        self.data_dir = data_dir
        self.log_path = log_path
        self.seeds = seeds
        self.env = dict(env)
        self.gid = gid
        self.skew_ms = skew_ms
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False
        self.starts = 0
        self.pids: list[int] = []  # every pid this node ever had, for leak checks

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def command(self) -> list[str]:
        serve = ["serve", "--port", str(self.port), "--node-id", self.name,
                 "--data-dir", str(self.data_dir)]
        for seed in self.seeds:
            serve += ["--seed", seed]
        if self.skew_ms:
            return [sys.executable, "-m", "kvs.chaos.skewed_node", "--offset-ms", str(self.skew_ms),
                    "--", *serve]
        return [sys.executable, "-m", "kvs", *serve]

    def spawn(self) -> None:
        if self.running:
            raise ClusterError(f"{self.name} is already running (pid {self.pid})")
        self.starts += 1
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            stamp = time.strftime("%H:%M:%S")
            log.write(f"\n===== {self.name} start #{self.starts} at {stamp}: "
                      f"{' '.join(self.command())}\n".encode())
            log.flush()
            kwargs: dict[str, Any] = {}
            if self.gid is not None:
                kwargs["group"] = self.gid
            self.proc = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=node_env(self.env), cwd=str(self.log_path.parent), start_new_session=True,
                **kwargs)
        self.pids.append(self.proc.pid)
        self.paused = False

    async def start(self, session: aiohttp.ClientSession, timeout: float = START_TIMEOUT) -> None:
        """Spawn and wait until /health answers; on failure the process is killed."""
        self.spawn()
        deadline = time.monotonic() + timeout
        try:
            while True:
                assert self.proc is not None
                code = self.proc.poll()
                if code is not None:
                    raise ClusterError(f"{self.name} exited with code {code} during start-up; "
                                       f"see {self.log_path}:\n{self.log_tail()}")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError, ClusterError, OSError):
                    await get_json(session, self.url + "/health", timeout=1.0)
                    return
                if time.monotonic() > deadline:
                    raise ClusterError(f"{self.name} not healthy after {timeout:.0f}s; "
                                       f"see {self.log_path}:\n{self.log_tail()}")
                await asyncio.sleep(0.05)
        except BaseException:
            self.kill_now()
            raise

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def _signal_group(self, sig: signal.Signals) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)

    def kill_now(self) -> None:
        """SIGKILL the process group and reap it (also works on a stopped process)."""
        if self.proc is None:
            return
        stop_group(self.proc, signal.SIGKILL, STOP_GRACE)
        self.paused = False

    async def kill(self) -> None:
        await asyncio.to_thread(self.kill_now)

    def pause(self) -> None:
        self._signal_group(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        self._signal_group(signal.SIGCONT)
        self.paused = False

    def stop(self, grace: float = STOP_GRACE) -> None:
        """Clean shutdown if it comes within `grace`, else SIGKILL; never leaves the group behind."""
        if self.proc is None:
            return
        stop_group(self.proc, signal.SIGTERM, grace)
        self.paused = False

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class LocalCluster:
    """N nodes on 127.0.0.1 owned by this run. Node names are n1..nN and double as node ids."""

    def __init__(self, directory: Path, nodes: int, *, env: Mapping[str, str],
                 base_port: int | None = None, gids: list[int] | None = None,
                 skews: Mapping[str, int] | None = None) -> None:
        self.directory = Path(directory)
        ports = [base_port + i for i in range(nodes)] if base_port else free_ports(nodes)
        seed = f"127.0.0.1:{ports[0]}"
        self.nodes = [
            NodeProcess(f"n{i + 1}", port, self.directory / f"n{i + 1}", self.directory / f"n{i + 1}.log",
                        seeds=[seed] if i else [], env=env,
                        gid=gids[i] if gids else None, skew_ms=(skews or {}).get(f"n{i + 1}", 0))
            for i, port in enumerate(ports)
        ]
        self.owned = True

    def by_name(self, name: str) -> NodeProcess:
        return next(n for n in self.nodes if n.name == name)

    async def start(self, session: aiohttp.ClientSession) -> None:
        await self.nodes[0].start(session)
        await asyncio.gather(*(n.start(session) for n in self.nodes[1:]))
        await wait_members(session, [n.url for n in self.nodes], len(self.nodes))

    def stop(self, grace: float = STOP_GRACE) -> None:
        """SIGCONT + SIGTERM to every node at once, SIGKILL whatever is left after `grace`."""
        errors = []
        for node in self.nodes:
            if node.running:
                node._signal_group(signal.SIGCONT)
                node._signal_group(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for node in self.nodes:
            try:
                if node.proc is not None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        node.proc.wait(max(0.05, deadline - time.monotonic()))
                node.kill_now()
            except Exception as exc:  # keep going: every other node must still be stopped
                errors.append(f"{node.name}: {exc!r}")
        if errors:
            raise ClusterError("could not stop: " + "; ".join(errors))

    def leftover_pids(self) -> list[int]:
        """Pids of this cluster that still exist (zombies excluded); empty after stop()."""
        alive = []
        for node in self.nodes:
            for pid in node.pids:
                try:
                    with open(f"/proc/{pid}/stat") as fh:
                        state = fh.read().rsplit(")", 1)[1].split()[0]
                except OSError:
                    continue
                if state != "Z":
                    alive.append(pid)
        return alive


class RemoteNode:
    """A node somebody else runs: the chaos run only sends it requests."""

    def __init__(self, name: str, url: str) -> None:
        self.name = name
        self.url = url.rstrip("/")
        self.paused = False
        self.skew_ms = 0

    @property
    def running(self) -> bool:
        return True


async def remote_nodes(session: aiohttp.ClientSession, urls: list[str]) -> list[RemoteNode]:
    """Name each URL by the node id its /health reports."""
    out = []
    for url in urls:
        try:
            health = await get_json(session, url.rstrip("/") + "/health", timeout=5.0)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ClusterError(f"{url}: not reachable ({exc!r}); is the node running?") from exc
        out.append(RemoteNode(str(health["node"]), url))
    if len({n.name for n in out}) != len(out):
        raise ClusterError("two URLs lead to the same node id; give each node once")
    return out


async def wait_members(session: aiohttp.ClientSession, urls: list[str], expected: int,
                       timeout: float = START_TIMEOUT) -> None:
    """Until every node lists `expected` alive members (itself included)."""
    deadline = time.monotonic() + timeout
    while True:
        counts = []
        for url in urls:
            try:
                members = await get_json(session, url + "/cluster/members")
                counts.append(sum(1 for m in members if m["state"] == "alive"))
            except (aiohttp.ClientError, TimeoutError, ClusterError, OSError):
                counts.append(0)
        if all(c >= expected for c in counts):
            return
        if time.monotonic() > deadline:
            raise ClusterError(f"members did not all see each other within {timeout:.0f}s "
                               f"(alive counts per node: {counts})")
        await asyncio.sleep(0.2)
