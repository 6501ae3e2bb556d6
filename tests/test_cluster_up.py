"""`kvs cluster up` as a user runs it: a real command, real nodes, real signals.

No node outlives the command, whatever stops it and whenever: SIGINT (Ctrl-C), SIGTERM
and SIGHUP (the terminal closed) at random moments over start-up and running, and
SIGKILL. Start-up interrupted by a signal exits 128 + signal and never says "is up".
A second cluster on ports that are taken fails at once instead of counting the other
cluster's nodes as its own.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import re
import select
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from kvs.localcluster import STOP_SIGNALS
from kvs.testing import REPO_ROOT, free_port, kvs_command, node_env, port_in_use, processes_mentioning

pytestmark = pytest.mark.slow

NODES = 2
TRIES = 8  # per signal: half of them during start-up, half once it is up (see below)
UP_LINE = b"nodes is up"


def free_port_block(count: int) -> int:
    """A port P such that P..P+count-1 are all free on loopback right now."""
    while True:
        base = free_port()
        if base + count <= 65536 and not any(port_in_use(base + i) for i in range(1, count)):
            return base


def _as_in_a_terminal() -> None:
    """The stop signals at their defaults, as for a command typed in a terminal. A test run
    started in the background inherits SIGINT ignored (a shell's `&`) or SIGHUP ignored
    (`nohup`), which the command rightly keeps or only takes once its handlers exist."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)


class ClusterUp:
    """One `kvs cluster up` in its own process group, its output read without blocking."""

    def __init__(self, directory: Path, nodes: int = NODES, base_port: int | None = None,
                 args: Sequence[str] = ()) -> None:
        self.directory = directory
        self.base_port = base_port or free_port_block(nodes)
        self.proc = subprocess.Popen(
            kvs_command("cluster", "up", "--nodes", str(nodes), "--base-port", str(self.base_port),
                        "--dir", str(directory), *args),
            env=node_env({"PYTHONFAULTHANDLER": "1"}),  # SIGABRT prints every thread's stack
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_as_in_a_terminal)
        assert self.proc.stdout is not None
        self.fd = self.proc.stdout.fileno()
        self.output = b""
        self.started = time.monotonic()

    def read(self, until: float, stop_at: bytes | None = None) -> bool:
        """Collect output until monotonic time `until`, end of output, or `stop_at` seen;
        False at end of output."""
        while (left := until - time.monotonic()) > 0 and not (stop_at and stop_at in self.output):
            if select.select([self.fd], [], [], left)[0]:
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    return False
                self.output += chunk
        return True

    def drain(self) -> None:
        """Everything written so far (it is in the pipe once the writer's write returned)."""
        while select.select([self.fd], [], [], 0)[0]:
            chunk = os.read(self.fd, 65536)
            if not chunk:
                return
            self.output += chunk

    def signal(self, sig: signal.Signals) -> None:
        os.killpg(self.proc.pid, sig)  # what a terminal does: the whole foreground group

    def finish(self, timeout: float) -> int | None:
        """Exit code once it has exited within `timeout` (its output read to the end), else
        None, after a SIGABRT has added where each of its threads was stuck to the output."""
        deadline = time.monotonic() + timeout
        self.read(deadline)
        try:
            return self.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGABRT)
            self.read(time.monotonic() + 5)
            return None

    @property
    def text(self) -> str:
        return self.output.decode(errors="replace")

    def node_pids(self) -> list[int]:
        return processes_mentioning(str(self.directory / "node-"))

    def nodes_gone(self, timeout: float) -> list[int]:
        """Poll (bounded) until no node of this cluster runs; the pids still there after `timeout`."""
        deadline = time.monotonic() + timeout
        while (left := self.node_pids()) and time.monotonic() < deadline:
            time.sleep(0.02)
        return left

    def cleanup(self) -> None:
        """Kill the command and every node it left behind (the old code leaves them)."""
        for pid in [self.proc.pid, *self.node_pids()]:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        self.proc.wait()
        self.proc.stdout.close()  # type: ignore[union-attr]


StartClusterUp = Callable[..., ClusterUp]


@pytest.fixture
def cluster_up(tmp_path: Path) -> Iterator[StartClusterUp]:
    """ClusterUp, with every command it ran and its nodes killed at teardown, pass or fail."""
    started: list[ClusterUp] = []

    def start(directory: Path, nodes: int = NODES, base_port: int | None = None,
              args: Sequence[str] = ()) -> ClusterUp:
        started.append(ClusterUp(directory, nodes, base_port, args))
        return started[-1]

    try:
        yield start
    finally:
        for up in started:
            up.cleanup()


def time_to_up(cluster_up: StartClusterUp, directory: Path) -> float:
    """Seconds from exec to "is up" on this machine now, to spread signal moments over."""
    up = cluster_up(directory)
    up.read(time.monotonic() + 30, stop_at=UP_LINE)
    assert UP_LINE in up.output, up.text
    took = time.monotonic() - up.started
    up.signal(signal.SIGTERM)
    assert up.finish(20) == 0, up.text
    return took


def _interrupted_interpreter_start(sig: signal.Signals, code: int | None, text: str) -> bool:
    """A SIGINT that lands while CPython is still initialising ends the process with exit
    code 1 and "Fatal Python error: init_<step>" (seen in CI: init_import_site while it
    imports `site`, init_sys_streams while it opens stdin/stdout), before any kvs code has
    run, so before any node could start."""
    return (sig == signal.SIGINT and code == 1 and "KeyboardInterrupt" in text
            and re.search(r"Fatal Python error: init_\w+", text) is not None)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_no_node_outlives_cluster_up_whenever_the_signal_comes(
        cluster_up: StartClusterUp, tmp_path: Path, sig: signal.Signals) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    took = time_to_up(cluster_up, tmp_path / "calibrate")
    phases: Counter[str] = Counter()
    for attempt in range(TRIES):
        up = cluster_up(tmp_path / f"try{attempt}")
        if attempt % 2:  # once it is up: a moment in the half start-up time after "is up"
            up.read(up.started + 60, stop_at=UP_LINE)
            assert UP_LINE in up.output, up.text
            took = time.monotonic() - up.started  # start-up time drifts with the machine's load
            up.read(time.monotonic() + took * rng.random() / 2)
        else:  # during start-up: one moment in each of TRIES/2 equal slices of the latest time to up
            up.read(up.started + took * (attempt // 2 + rng.random()) / (TRIES // 2))
        up.drain()
        was_up = UP_LINE in up.output
        up.signal(sig)
        code = up.finish(20)
        where = f"seed {seed}, try {attempt}, {'running' if was_up else 'start-up'}:\n{up.text}"
        assert up.nodes_gone(5.0) == [], f"nodes outlived cluster up ({where})"
        python_only = _interrupted_interpreter_start(sig, code, up.text)
        if was_up:
            assert code == 0, where
        elif not python_only:  # then CPython itself was still starting: no kvs code yet
            assert code in (128 + sig, -sig), where  # -sig: before its handlers (no node yet)
            assert UP_LINE not in up.output, where
        if code != -signal.SIGINT and not python_only:  # Python's own Ctrl-C traceback
            assert "Traceback" not in up.text, where
        phases["running" if was_up else "start-up"] += 1
        shutil.rmtree(up.directory, ignore_errors=True)
    assert phases["running"] >= 2 and phases["start-up"] >= 2, (seed, phases)


STOP_WHILE_WAITING = """
import os, signal, sys
from kvs.localcluster import _StopRequest
stop = _StopRequest()
with stop.event._cond:  # as inside stop.event.wait(): the event's own lock is held
    os.kill(os.getpid(), signal.SIGTERM)  # its handler runs here, before the lock is let go
sys.exit(0 if stop.event.wait(10) and stop.signum == signal.SIGTERM else 1)
"""


def test_a_stop_signal_that_lands_inside_the_wait_for_it_still_stops() -> None:
    """The moment that once left `kvs cluster up` running after a SIGTERM: the handler ran
    while the main thread held the stop event's lock, and setting the event from there
    waited for that lock forever."""
    done = subprocess.run([sys.executable, "-c", STOP_WHILE_WAITING], capture_output=True,
                          text=True, timeout=15, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr


def test_nodes_die_with_cluster_up_on_sigkill(cluster_up: StartClusterUp, tmp_path: Path) -> None:
    up = cluster_up(tmp_path / "cluster")
    up.read(time.monotonic() + 30, stop_at=UP_LINE)
    assert UP_LINE in up.output, up.text
    assert len(up.node_pids()) == NODES
    up.signal(signal.SIGKILL)
    assert up.nodes_gone(5.0) == []


def test_taken_ports_fail_fast_and_name_base_port(cluster_up: StartClusterUp, tmp_path: Path) -> None:
    first = cluster_up(tmp_path / "first", nodes=3)
    first.read(time.monotonic() + 30, stop_at=UP_LINE)
    assert UP_LINE in first.output, first.text
    second = cluster_up(tmp_path / "other", nodes=3, base_port=first.base_port)
    code = second.finish(10)
    assert code == 1, second.text
    assert "healthy" not in second.text and UP_LINE not in second.output, second.text
    assert "already in use" in second.text and "--base-port" in second.text, second.text
    assert "--port " not in second.text, second.text
    assert second.node_pids() == []
    first.signal(signal.SIGINT)  # the first cluster was not disturbed
    assert first.finish(20) == 0, first.text
    assert UP_LINE in first.output


def test_nodes_share_a_generated_secret_kept_in_the_cluster_dir(
        cluster_up: StartClusterUp, tmp_path: Path) -> None:
    """Secure by default: an unsigned /internal/ request is refused; a restart of the same
    cluster reuses the secret its nodes were started with."""
    directory = tmp_path / "cluster"
    for attempt in range(2):
        up = cluster_up(directory)
        up.read(time.monotonic() + 30, stop_at=UP_LINE)
        assert UP_LINE in up.output, up.text
        secret_file = directory / "cluster_secret"
        if attempt == 0:
            first_secret = secret_file.read_text()
            assert len(first_secret.strip()) >= 32 and secret_file.stat().st_mode & 0o077 == 0
        assert secret_file.read_text() == first_secret
        request = urllib.request.Request(f"http://127.0.0.1:{up.base_port}/internal/push",
                                         data=b"[]", method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=5)
        assert refused.value.code == 401
        up.signal(signal.SIGINT)
        assert up.finish(20) == 0, up.text


def test_cluster_up_nodes_are_the_voters_of_quorum_keys(cluster_up: StartClusterUp,
                                                        tmp_path: Path) -> None:
    up = cluster_up(tmp_path / "cluster")
    up.read(time.monotonic() + 30, stop_at=UP_LINE)
    assert UP_LINE in up.output, up.text
    names = [f"node-{i}" for i in range(NODES)]
    for i in range(NODES):
        with urllib.request.urlopen(f"http://127.0.0.1:{up.base_port + i}/cluster/status",
                                    timeout=5) as answer:
            assert json.load(answer)["voters"] == {"epoch": 1, "ids": names}
    put = urllib.request.Request(f"http://127.0.0.1:{up.base_port}/kv/q", method="PUT",
                                 data=b'{"value": 1, "consistency": "quorum"}')
    with urllib.request.urlopen(put, timeout=10) as answer:
        assert json.load(answer)["seq"] == 1
    up.signal(signal.SIGINT)
    assert up.finish(20) == 0, up.text


def test_cluster_up_tls_speaks_only_tls_and_the_cli_connects_with_its_ca(
        cluster_up: StartClusterUp, tmp_path: Path) -> None:
    """`--tls`: a throwaway CA in DIR/tls, the nodes join each other over mutual TLS, the
    printed `kvs ... --ca` works (and KVS_CA), a client without the CA is refused, plaintext
    is closed without a traceback, `kvs snapshot save --ca` works."""
    directory = tmp_path / "cluster"
    up = cluster_up(directory, args=["--tls"])
    up.read(time.monotonic() + 30, stop_at=b"curl --cacert")  # printed after "is up"
    assert UP_LINE in up.output, up.text
    ca, url = directory / "tls" / "ca.pem", f"https://127.0.0.1:{up.base_port}"
    assert f"--node {url} --ca {ca}" in up.text and f"curl --cacert {ca} {url}/health" in up.text

    def kvs(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(kvs_command(*args), env=node_env(env), capture_output=True, text=True,
                              timeout=60)

    assert kvs("put", "k", "v", "--node", url, "--ca", str(ca)).returncode == 0
    second = f"https://127.0.0.1:{up.base_port + 1}"  # replicated, and KVS_CA is read
    got = kvs("get", "k", "--raw", "--node", second, KVS_CA=str(ca))
    assert (got.returncode, got.stdout) == (0, "v\n"), got.stderr
    refused = kvs("get", "k", "--node", url)
    assert refused.returncode == 6 and "certificate verify failed" in refused.stderr
    with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):
        urllib.request.urlopen(f"http://127.0.0.1:{up.base_port}/health", timeout=5)
    saved = kvs("snapshot", "save", str(tmp_path / "snap"), "--node", url, "--ca", str(ca),
                "--secret", (directory / "cluster_secret").read_text().strip())
    assert saved.returncode == 0, saved.stdout + saved.stderr
    up.signal(signal.SIGINT)
    assert up.finish(20) == 0, up.text
    assert "Traceback" not in up.text and "level=ERROR" not in up.text, up.text


def test_default_cluster_dir_is_ignored_by_git() -> None:
    if shutil.which("git") is None or not (REPO_ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    check = subprocess.run(["git", "-C", str(REPO_ROOT), "check-ignore", "-q", "kvs-cluster/node-0/x"])
    assert check.returncode == 0, "./kvs-cluster/ (the default --dir of `kvs cluster up`) is not ignored"
