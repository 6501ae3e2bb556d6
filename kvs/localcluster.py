"""`kvs cluster up`: N real `kvs serve` processes on loopback that join each other.

Node i listens on base_port + i, keeps its data in DIR/node-i (so a second `up`
restarts the same cluster with its data), and joins through node 0. Output of every
node is prefixed with its name. The nodes are kvs.testing's managed processes: each in
its own session, so a Ctrl-C in the terminal reaches this command only, which then
stops them all: SIGTERM first, SIGKILL for any node still running after a grace period.

No node outlives this command:
  * SIGINT, SIGTERM and SIGHUP (the terminal closed) are handled from before the first
    node is spawned; a signal during start-up stops the nodes started so far and exits
    128 + the signal number (130, 143, 129), without claiming the cluster is up. After
    "is up", the same signals are the normal way to stop it: exit 0. A SIGHUP that is
    ignored when we start (`nohup kvs cluster up &`) stays ignored.
  * Killed with SIGKILL, it cannot stop anything itself: the nodes are started with a
    parent-death signal (Linux), so the kernel SIGKILLs them when this process dies.

Secure by default: the nodes share a random cluster secret, generated once and kept in
DIR/cluster_secret (mode 0600, reused when the same cluster starts again), so nothing
but a holder of that file can call their /internal/ endpoints. KVS_CLUSTER_SECRET in
the environment takes its place.

With --tls, a throwaway CA is made once in DIR/tls (ca.pem is what clients trust, reused
when the cluster starts again) and every node gets a new certificate for 127.0.0.1 and
localhost at every start (kvs/testing/certs.py): each node then speaks only TLS, and the
nodes verify each other's certificates (mutual TLS) besides signing with the secret.

With `acl` (`kvs cluster up --acl`) the nodes start with acl_enabled: every client
request then needs a token; it prints how to bootstrap the first one.

Start-up checks the ports first (a port already taken fails at once, naming
--base-port), and counts a node as up only when its own output has its banner and
GET /health answers with the id it was given: another cluster on the same ports cannot
answer for it. "Up" also means every node lists all of them alive.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TextIO

from kvs import _early_stop
from kvs.testing import Cluster, KvsNode, StartError, port_in_use

GRACE_SECONDS = 10.0
STARTUP_SECONDS = 30.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
EXIT_FAILED, EXIT_USAGE = 1, 2
SECRET_FILE = "cluster_secret"
TLS_DIR = "tls"
LOOPBACK_NAMES = ("127.0.0.1", "localhost")


class _StopRequest:
    """Set by the first stop signal; installed before any node exists.

    The handler never touches `event` itself: a Python signal handler runs in the main
    thread between two bytecodes, possibly while that thread is inside `event.wait()`
    holding the event's (non-reentrant) lock, and `event.set()` would then wait for it
    forever. (Seen: a SIGTERM right after "is up" left `kvs cluster up` and its nodes
    running.) The handler writes to a pipe instead, which takes no lock, and a thread
    sets the event.
    """

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signum: int | None = None
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_write, False)
        threading.Thread(target=self._relay, name="stop-signal", daemon=True).start()
        for sig in STOP_SIGNALS:
            # A shell starts background jobs with SIGINT ignored: take it anyway, so that
            # `kill -INT` stops us. An ignored SIGHUP, though, is a request (nohup).
            if sig == signal.SIGHUP and signal.getsignal(sig) == signal.SIG_IGN:
                continue
            signal.signal(sig, self._handle)
        if _early_stop.pending:  # came while `python -m kvs` was still importing
            self._handle(_early_stop.pending[0], None)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
        with contextlib.suppress(BlockingIOError):  # full: a wake-up is already pending
            os.write(self._wake_write, b"\0")

    def _relay(self) -> None:
        os.read(self._wake_read, 1)
        self.event.set()


class _Terminal:
    """Whole lines, one writer at a time, and never an exception: after a hang-up the
    terminal refuses writes, and the nodes must be stopped all the same."""

    def __init__(self) -> None:
        self.lock = threading.Lock()

    def say(self, text: str, stream: TextIO | None = None) -> None:
        out = stream or sys.stdout
        with self.lock, contextlib.suppress(OSError, ValueError):
            out.write(text + "\n")
            out.flush()

    def error(self, text: str) -> None:
        self.say(f"kvs cluster up: {text}", sys.stderr)

    def prefixed(self, name: str) -> Callable[[str], None]:
        return lambda line: self.say(f"[{name}] {line}")


def _secret(path: Path) -> str:
    """The cluster's secret: read from `path`, or made and written there (owner-only)."""
    with contextlib.suppress(FileNotFoundError):
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secret + "\n")
    return secret


def _ports_problem(base_port: int, nodes: int) -> str | None:
    last = base_port + nodes - 1
    if base_port < 1 or last > 65535:
        return f"ports {base_port}..{last} are not all valid (1..65535); choose another --base-port"
    taken = [p for p in range(base_port, last + 1) if port_in_use(p)]
    if not taken:
        return None
    which = f"port {taken[0]} is" if len(taken) == 1 else f"ports {', '.join(map(str, taken))} are"
    return (f"{which} already in use (another kvs cluster?); this cluster needs ports "
            f"{base_port}..{last}: choose a free range with --base-port")


def _tls_settings(directory: Path, names: list[str]) -> tuple[Path, dict[str, dict[str, str | None]]]:
    """The CA file, and each node's certificate settings (KVS_ variables) by name."""
    from kvs.testing.certs import LocalCA

    ca = LocalCA(directory)
    envs: dict[str, dict[str, str | None]] = {}
    for name in names:
        cert, key = ca.issue(name, LOOPBACK_NAMES)
        envs[name] = {"KVS_TLS_CERT_FILE": str(cert), "KVS_TLS_KEY_FILE": str(key),
                      "KVS_TLS_CA_FILE": str(ca.cert_file)}
    return ca.cert_file, envs


def run_local_cluster(nodes: int, base_port: int, directory: str, config_file: str | None,
                      tls: bool = False, acl: bool = False) -> int:
    stop = _StopRequest()  # first: from here on a signal stops whatever has been started
    term = _Terminal()
    if nodes < 1:
        term.error("--nodes must be at least 1")
        return EXIT_USAGE
    problem = _ports_problem(base_port, nodes)
    if problem:
        term.error(problem)
        return EXIT_FAILED
    args = ["--config", str(Path(config_file).absolute())] if config_file else []
    cas = os.environ.get("KVS_CAS_ENABLED", "true")  # on, unless the user's environment says otherwise
    secret_file = Path(directory) / SECRET_FILE
    secret = os.environ.get("KVS_CLUSTER_SECRET") or _secret(secret_file)
    names = [f"node-{i}" for i in range(nodes)]
    ca, envs = _tls_settings(Path(directory).absolute() / TLS_DIR, names) if tls else (None, {})
    # Every node starts with the same epoch-1 voters: all of them.
    env = {"KVS_CAS_ENABLED": cas, "KVS_CLUSTER_SECRET": secret, "KVS_INITIAL_VOTERS": ",".join(names)}
    if acl:
        env["KVS_ACL_ENABLED"] = "true"
    cluster = Cluster(Path(directory), names,
                      ports=range(base_port, base_port + nodes), output=term.prefixed,
                      env=env, envs=envs, keep_kvs_env=True, args=args, die_with_parent=True, ca=ca)
    try:
        if not _start(cluster, stop, term):
            return 128 + stop.signum if stop.signum is not None else EXIT_FAILED
        term.say(f"kvs cluster of {nodes} nodes is up (Ctrl-C stops it):")
        for node in cluster.nodes:
            term.say(f"  {node.name}  {node.url}")
        if "KVS_CLUSTER_SECRET" not in os.environ:
            term.say(f"cluster secret in {secret_file} (for operations such as `kvs snapshot save`: "
                     f"export KVS_CLUSTER_SECRET=$(cat {secret_file}))")
        if ca is not None:
            url = cluster.nodes[0].url
            term.say(f"TLS only; clients verify the nodes with {ca}:\n"
                     f"  kvs get KEY --node {url} --ca {ca}    (or export KVS_CA={ca})\n"
                     f"  curl --cacert {ca} {url}/health")
        if acl:
            term.say(f"ACLs are on: every request needs a token. Create the first (management) "
                     f"token once with `kvs acl bootstrap --node {cluster.nodes[0].url}`, then "
                     "export KVS_TOKEN=<its secret>")
        return _watch(cluster, stop.event, term)
    finally:
        term.say("stopping the cluster...")
        cluster.stop(GRACE_SECONDS)


def _start(cluster: Cluster, stop: _StopRequest, term: _Terminal) -> bool:
    """True once every node is up, unless a stop signal came first (then it says so)."""
    ready: list[KvsNode] = []

    def progress(node: KvsNode) -> None:
        ready.append(node)
        term.say(f"starting: {len(ready)}/{len(cluster.nodes)} nodes healthy")

    term.say(f"starting: 0/{len(cluster.nodes)} nodes healthy")
    try:
        cluster.start_all(STARTUP_SECONDS, stop=stop.event, on_ready=progress)
    except StartError as exc:
        if stop.signum is None:
            term.error(f"start-up failed: {exc}")
            return False
    if stop.signum is not None:
        term.error(f"start-up interrupted by {signal.Signals(stop.signum).name}")
        return False
    return True


def _watch(cluster: Cluster, stop: threading.Event, term: _Terminal) -> int:
    """Until a stop signal (exit 0), or until every node has stopped by itself (exit 1)."""
    gone: set[str] = set()
    while not stop.wait(0.5):
        for node in cluster.nodes:
            if node.name not in gone and not node.running:
                gone.add(node.name)
                term.say(f"warning: {node.name} stopped")
        if len(gone) == len(cluster.nodes):
            return EXIT_FAILED
    return 0
