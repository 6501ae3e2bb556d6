"""Systems under test, as subprocesses pinned to the server core(s): start, wait ready, stop.

    bare aiohttp app   BareTarget()                     python -m bench.bare_app
    naive fsync        BareTarget(fsync=True)           same, RocksDB put(sync=True) per write
    kvs                KvsTarget(nodes=1|3, sync_writes=False|True)
    etcd               EtcdTarget(nodes=1|3, no_fsync=False|True)   Debian's etcd-server

Every process is one of kvs.testing's managed processes: started in its own session (so
a Ctrl-C in the terminal reaches only the harness), stopped as a whole process group
(SIGTERM, then SIGKILL after a grace period), and stopped by `kvs.testing.stop_all()` --
called by the runner in a `finally`, and by `atexit` as a last resort -- if still running.
Logs go to one file per process under the target's directory.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from kvs.testing import REPO_ROOT, Cluster, ManagedProcess, free_port, node_env
from kvs.tls import client_context

BARE_BANNER = re.compile(r"bare app listening on (http://\S+)")
START_TIMEOUT = 60.0


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

    def __init__(self, url: str, timeout: float = 10.0, ca: str | None = None,
                 token: str | None = None) -> None:
        """`ca`: the CA file that verifies an https server; `token`: the ACL token sent."""
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.timeout = timeout
        self.tls = client_context(ca) if parts.scheme == "https" else None
        self.auth = {"Authorization": f"Bearer {token}"} if token else {}
        self.conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        headers = {**self.auth, **({"Content-Type": "application/json"} if data is not None else {})}
        for attempt in (1, 2):  # one retry on a stale keep-alive connection
            if self.conn is None:
                self.conn = (http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout,
                                                         context=self.tls) if self.tls else
                             http.client.HTTPConnection(self.host, self.port, timeout=self.timeout))
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

def rss_bytes(proc: ManagedProcess) -> int | None:
    """Resident set size of the process (VmRSS), None if it is gone."""
    if proc.pid is None:
        return None
    try:
        with open(f"/proc/{proc.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def stat_cpu_ticks(stat: str) -> int:
    """utime + stime, in clock ticks, from the text of /proc/<pid>/stat. The fields are
    counted after the last ')', as the command name between parentheses may hold spaces."""
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5), after pid and comm


def cpu_seconds(procs: Sequence[ManagedProcess]) -> float | None:
    """CPU seconds (user + system) the running processes of `procs` have used so far; None when
    one of them is gone (a difference across its restart would mean nothing)."""
    ticks = 0
    for proc in procs:
        if proc.pid is None:
            return None
        try:
            ticks += stat_cpu_ticks(Path(f"/proc/{proc.pid}/stat").read_text())
        except OSError:
            return None
    return ticks / os.sysconf("SC_CLK_TCK")


def wait_until(check: Any, timeout: float, what: str, procs: Sequence[ManagedProcess] = (),
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
        self.procs: list[ManagedProcess] = []
        self.urls: list[str] = []
        self.load_index = 0  # which node wrk drives
        self.ca: str | None = None  # the CA file of a target serving https
        self.token: str | None = None  # the ACL token every request carries (ACLs on)

    @property
    def url(self) -> str:
        return self.urls[self.load_index]

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()

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

    def __init__(self, name: str, base_dir: Path, cpus: str | None, *, fsync: bool = False,
                 fast: bool = False) -> None:
        """`fast`: served by kvs's HTTP server (its fast path) instead of aiohttp's."""
        super().__init__(name, base_dir, cpus)
        self.fsync = fsync
        self.fast = fast

    def start(self) -> None:
        command = [sys.executable, "-m", "bench.bare_app", "--port", "0"]
        if self.fsync:
            command += ["--fsync-dir", str(self.dir / "rocksdb")]
        if self.fast:
            command.append("--fast")
        proc = ManagedProcess(self.name, pinned(command, self.cpus), log=self.dir / "server.log",
                              env=node_env(), cwd=REPO_ROOT).spawn()
        self.procs = [proc]
        match = wait_until(lambda: BARE_BANNER.search(proc.output()), START_TIMEOUT,
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
        self.ca = self.env.get("KVS_TLS_CA_FILE")
        self.acl = self.env.get("KVS_ACL_ENABLED", "").lower() in ("true", "1", "yes", "on")
        if self.acl:  # the start-up member check signs with it (/cluster/ needs an operator)
            self.env.setdefault("KVS_CLUSTER_SECRET", "bench-" + os.urandom(8).hex())
        self.node_ids: list[str] = []

    def start(self) -> None:
        """Node 1 first, the others seeded with it; until every node sees all of them alive."""
        names = [f"node{i}" for i in range(1, self.nodes + 1)]
        # Every node is a voter of quorum keys (as under `kvs cluster up`).
        env = {"KVS_INITIAL_VOTERS": ",".join(names), **self.env}
        cluster = Cluster(self.dir, names, env=env,
                          launcher=pinned([], self.cpus), root=self.root,
                          ca=Path(self.ca) if self.ca else None)
        self.procs = [*cluster.nodes]
        cluster.start_all(START_TIMEOUT)
        self.node_ids = [str(node.node_id) for node in cluster.nodes]
        self.urls = [str(node.url) for node in cluster.nodes]
        if self.acl:
            self.token = acl_token(self.urls[0])

    def members(self, url: str) -> list[dict[str, Any]]:
        client = Http(url, timeout=2.0)
        try:
            status, body = client.request("GET", "/cluster/members")
        finally:
            client.close()
        return body if status == 200 and isinstance(body, list) else []

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


# The policy of the ACL rows (docs/benchmarks.md): 100 prefix rules, among which the bench
# keys' own (bench/ write) and a deny nested under it, so a lookup walks a real rule set.
ACL_RULES = ([{"prefix": "", "access": "read"}, {"prefix": "bench/", "access": "write"},
              {"prefix": "bench/private/", "access": "deny"}]
             + [{"prefix": f"svc{i:03d}/", "access": ("read", "write", "deny")[i % 3]}
                for i in range(97)])


def acl_token(url: str) -> str:
    """Bootstrap a fresh node's ACLs and return a token holding one 100-rule policy."""
    admin = _answer(url, None, "POST", "/acl/bootstrap")
    _answer(url, admin["secret"], "POST", "/acl/policies", {"name": "bench", "rules": ACL_RULES})
    return str(_answer(url, admin["secret"], "POST", "/acl/tokens", {"policies": ["bench"]})["secret"])


def _answer(url: str, token: str | None, method: str, path: str, body: Any = None) -> Any:
    """The body of a 200 answer; RuntimeError for any other."""
    client = Http(url, token=token)
    try:
        status, answer = client.request(method, path, body)
    finally:
        client.close()
    if status != 200:
        raise RuntimeError(f"{method} {url}{path} -> {status} {answer}")
    return answer


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
            self.procs.append(ManagedProcess(f"{self.name}/{name}", pinned(command, self.cpus),
                                             log=self.dir / f"{name}.log").spawn())
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
