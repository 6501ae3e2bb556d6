"""Systems under test, as subprocesses pinned to the server core(s): start, wait ready, stop.

    bare aiohttp app   BareTarget()                     python -m bench.bare_app
    naive fsync        BareTarget(fsync=True)           same, RocksDB put(sync=True) per write
    kvs                KvsTarget(nodes=1|3, sync_writes=False|True)
    etcd               EtcdTarget(nodes=1|3, no_fsync=False|True)   Debian's etcd-server

Every process is started in its own session (so a Ctrl-C in the terminal reaches only
the harness) and registered in `_LIVE`; `stop()` signals its whole process group
(SIGTERM, then SIGKILL after a grace period), and `stop_all()` -- called by the runner
in a `finally`, and by `atexit` as a last resort -- stops whatever is still running.
Logs go to one file per process under the target's directory.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from kvs.chaos.cluster import node_env, stop_group

REPO_ROOT = Path(__file__).resolve().parent.parent
KVS_BANNER = re.compile(r"kvs node (\S+) listening on (http://\S+)")
BARE_BANNER = re.compile(r"bare app listening on (http://\S+)")
START_TIMEOUT = 60.0
STOP_GRACE = 5.0

_LIVE: set[Proc] = set()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def have_taskset() -> bool:
    return shutil.which("taskset") is not None


def pinned(command: Sequence[str], cpus: str | None) -> list[str]:
    """`command` run under `taskset -c cpus` (unchanged when cpus is None)."""
    if not cpus:
        return list(command)
    return ["taskset", "-c", cpus, *command]


# -- HTTP helpers (synchronous; the harness itself never needs to be fast) ------------------

class Http:
    """One keep-alive connection to one server, for set-up writes and latency probes."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.timeout = timeout
        self.conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        for attempt in (1, 2):  # one retry on a stale keep-alive connection
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self.conn.request(method, path, body=data, headers=headers)
                resp = self.conn.getresponse()
                raw = resp.read()
            except (OSError, http.client.HTTPException):
                self.close()
                if attempt == 2:
                    raise
                continue
            try:
                return resp.status, json.loads(raw) if raw else None
            except ValueError:
                return resp.status, raw.decode(errors="replace")
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# -- processes ------------------------------------------------------------------------------

class Proc:
    """One server process: command, log file, process group."""

    def __init__(self, name: str, command: Sequence[str], log_path: Path,
                 env: Mapping[str, str] | None = None, cwd: Path | None = None) -> None:
        self.name = name
        self.command = list(command)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.popen: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    def start(self) -> Proc:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"===== {' '.join(self.command)}\n".encode())
            log.flush()
            self.started_at = time.perf_counter()
            self.popen = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT, env=self.env,
                                          cwd=str(self.cwd) if self.cwd else None,
                                          start_new_session=True)
        _LIVE.add(self)
        return self

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def rss_bytes(self) -> int | None:
        """Resident set size of the process (VmRSS), None if it is gone."""
        if self.pid is None:
            return None
        try:
            with open(f"/proc/{self.pid}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None

    def kill(self) -> None:
        """SIGKILL the whole process group at once (a crash)."""
        self._signal(signal.SIGKILL, STOP_GRACE)

    def stop(self, grace: float = STOP_GRACE) -> None:
        self._signal(signal.SIGTERM, grace)

    def _signal(self, sig: signal.Signals, grace: float) -> None:
        if self.popen is not None:
            stop_group(self.popen, sig, grace)
        _LIVE.discard(self)


def stop_all() -> None:
    """Stop every process still running (the runner's `finally`, and atexit)."""
    for proc in list(_LIVE):
        with contextlib.suppress(Exception):
            proc.stop(grace=2.0)


atexit.register(stop_all)


def wait_until(check: Any, timeout: float, what: str, procs: Sequence[Proc] = (),
               interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        for proc in procs:
            if not proc.running:
                raise RuntimeError(f"{proc.name} exited while waiting for {what}:\n{proc.log_tail()}")
        try:
            result = check()
        except (OSError, http.client.HTTPException, ValueError):
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {p.name}:\n{p.log_tail()}" for p in procs)
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}\n{tails}")
        time.sleep(interval)


# -- targets --------------------------------------------------------------------------------

class Target:
    """A system under test. `url` is where wrk sends load; `urls` are all its nodes."""

    kind = "?"  # "bare", "kvs" or "etcd": picks the wrk scripts and request shapes

    def __init__(self, name: str, base_dir: Path, cpus: str | None) -> None:
        self.name = name
        self.dir = base_dir / re.sub(r"[^\w.-]+", "_", name)
        self.cpus = cpus
        self.procs: list[Proc] = []
        self.urls: list[str] = []
        self.load_index = 0  # which node wrk drives

    @property
    def url(self) -> str:
        return self.urls[self.load_index]

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()

    def __enter__(self) -> Target:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # Request shapes, so the runner and the cluster figures need not know the API.
    def put(self, client: Http, key: str, value: str) -> None:
        status, body = client.request("PUT", f"/kv/{key}", {"value": value})
        if status != 200:
            raise RuntimeError(f"{self.name}: PUT {key} -> {status} {body}")

    def visible(self, client: Http, key: str) -> bool:
        status, _ = client.request("GET", f"/kv/{key}")
        return status == 200


class BareTarget(Target):
    kind = "bare"

    def __init__(self, name: str, base_dir: Path, cpus: str | None, *, fsync: bool = False) -> None:
        super().__init__(name, base_dir, cpus)
        self.fsync = fsync

    def start(self) -> None:
        command = [sys.executable, "-m", "bench.bare_app", "--port", "0"]
        if self.fsync:
            command += ["--fsync-dir", str(self.dir / "rocksdb")]
        proc = Proc(self.name, pinned(command, self.cpus), self.dir / "server.log",
                    env=node_env({}), cwd=REPO_ROOT).start()
        self.procs.append(proc)
        match = wait_until(lambda: BARE_BANNER.search(proc.log_text()), START_TIMEOUT,
                           f"{self.name} banner", [proc])
        self.urls = [match.group(1)]


class KvsTarget(Target):
    kind = "kvs"

    def __init__(self, name: str, base_dir: Path, cpus: str | None, *, nodes: int = 1,
                 sync_writes: bool = False, env: Mapping[str, str] | None = None,
                 root: Path = REPO_ROOT) -> None:
        """`root`: the source tree whose kvs the nodes run (bench.ab: another git revision)."""
        super().__init__(name, base_dir, cpus)
        self.nodes = nodes
        self.root = root
        self.env = {"KVS_CAS_ENABLED": "true", "KVS_SYNC_WRITES": "true" if sync_writes else "false",
                    **(env or {})}
        self.node_ids: list[str] = []

    def start_node(self, index: int, seed: str | None = None, data_dir: Path | None = None) -> Proc:
        data = data_dir or self.dir / f"node{index}"
        command = [sys.executable, "-m", "kvs", "serve", "--port", "0", "--data-dir", str(data)]
        if seed:
            command += ["--seed", seed]
        proc = Proc(f"{self.name}/node{index}", pinned(command, self.cpus),
                    self.dir / f"node{index}.log", env=node_env({"PYTHONPATH": str(self.root), **self.env}),
                    cwd=self.root).start()
        self.procs.append(proc)
        match = wait_until(lambda: KVS_BANNER.search(proc.log_text()), START_TIMEOUT,
                           f"{proc.name} banner", [proc])
        node_id, url = match.group(1), match.group(2)
        client = Http(url)
        wait_until(lambda: client.request("GET", "/health")[0] == 200, START_TIMEOUT,
                   f"{proc.name} /health", [proc])
        client.close()
        self.node_ids.append(node_id)
        self.urls.append(url)
        return proc

    def start(self) -> None:
        self.start_node(1)
        seed = urlsplit(self.urls[0]).netloc
        for index in range(2, self.nodes + 1):
            self.start_node(index, seed=seed)
        if self.nodes > 1:
            wait_until(self._all_alive, START_TIMEOUT, f"{self.name}: every node sees the others alive",
                       self.procs)

    def members(self, url: str) -> list[dict[str, Any]]:
        client = Http(url, timeout=2.0)
        try:
            status, body = client.request("GET", "/cluster/members")
        finally:
            client.close()
        return body if status == 200 and isinstance(body, list) else []

    def _all_alive(self) -> bool:
        for url in self.urls:
            alive = [m for m in self.members(url) if m.get("state") == "alive"]
            if len(alive) < self.nodes:
                return False
        return True

    def merkle_roots(self) -> set[str]:
        roots = set()
        for url in self.urls:
            client = Http(url, timeout=5.0)
            try:
                status, body = client.request("GET", "/cluster/status")
            finally:
                client.close()
            roots.add(str(body.get("merkle_root") if status == 200 and isinstance(body, dict) else None))
        return roots


class EtcdTarget(Target):
    kind = "etcd"

    def __init__(self, name: str, base_dir: Path, cpus: str | None, *, nodes: int = 1,
                 no_fsync: bool = False) -> None:
        super().__init__(name, base_dir, cpus)
        self.nodes = nodes
        self.no_fsync = no_fsync

    @staticmethod
    def available() -> bool:
        return shutil.which("etcd") is not None

    def start(self) -> None:
        if not self.available():
            raise RuntimeError("etcd is not installed (apt-get install -y etcd-server)")
        names = [f"n{i}" for i in range(1, self.nodes + 1)]
        client_ports = [free_port() for _ in names]
        peer_ports = [free_port() for _ in names]
        cluster = ",".join(f"{n}=http://127.0.0.1:{p}" for n, p in zip(names, peer_ports, strict=True))
        token = f"bench-{os.getpid()}-{time.time_ns()}"
        for name, cport, pport in zip(names, client_ports, peer_ports, strict=True):
            command = [
                "etcd", "--name", name, "--data-dir", str(self.dir / name),
                "--listen-client-urls", f"http://127.0.0.1:{cport}",
                "--advertise-client-urls", f"http://127.0.0.1:{cport}",
                "--listen-peer-urls", f"http://127.0.0.1:{pport}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{pport}",
                "--initial-cluster", cluster, "--initial-cluster-state", "new",
                "--initial-cluster-token", token, "--logger", "zap", "--log-level", "warn",
            ]
            if self.no_fsync:
                command.append("--unsafe-no-fsync")
            self.procs.append(Proc(f"{self.name}/{name}", pinned(command, self.cpus),
                                   self.dir / f"{name}.log").start())
            self.urls.append(f"http://127.0.0.1:{cport}")
        for url in self.urls:
            client = Http(url, timeout=2.0)
            wait_until(lambda c=client: c.request("GET", "/health")[1] == {"health": "true"},
                       START_TIMEOUT, f"{self.name} {url}/health", self.procs)
            client.close()
        # Drive the leader: the best case for etcd (a follower forwards every write to it).
        self.load_index = wait_until(self._leader_index, START_TIMEOUT, f"{self.name} leader",
                                     self.procs) - 1

    def _leader_index(self) -> int | None:
        for i, url in enumerate(self.urls):
            client = Http(url, timeout=2.0)
            try:
                status, body = client.request("POST", "/v3/maintenance/status", {})
            finally:
                client.close()
            if status == 200 and body.get("leader") and body["leader"] == body["header"]["member_id"]:
                return i + 1  # 1-based so that 0 is never a "found" value
        return None

    def put(self, client: Http, key: str, value: str) -> None:
        status, body = client.request("POST", "/v3/kv/put",
                                      {"key": b64(key), "value": b64(json.dumps(value))})
        if status != 200:
            raise RuntimeError(f"{self.name}: put {key} -> {status} {body}")

    def visible(self, client: Http, key: str) -> bool:
        # Serializable: the member's own applied state, not a linearizable read that would
        # wait for the leader -- what "visible on another node" means.
        status, body = client.request("POST", "/v3/kv/range", {"key": b64(key), "serializable": True})
        return status == 200 and bool(body.get("kvs"))
