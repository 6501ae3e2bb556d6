"""Real `kvs serve` subprocesses for tests: start, wait until healthy, kill, restart, clean up.

    group = ProcessGroup(tmp_path)             # or the `procs` fixture (see below)
    node = group.start(env={"KVS_CAS_ENABLED": "true"})
    node.url                                   # http://127.0.0.1:<port parsed from the banner>
    node.kill()                                # SIGKILL to the whole process group
    node.restart()                             # same data dir, same port, same env and args
    node.terminate()                           # SIGTERM, wait, SIGKILL after a grace period
    group.stop_all()                           # what teardown does, even when a test failed

Each node runs as `sys.executable -m kvs serve` with PYTHONPATH pointing at the repo
root, so nothing needs to be installed. It starts with `--port 0` and the real URL is
read from the "kvs node <id> listening on <url>" banner; a restart reuses that port, so
peers that know the node by address still reach it. stdout and stderr of every run go
to one log file per node (`<base>/<name>.log`, runs separated by a header line), which
`ProcessStartError` and `KvsProcess.log_tail()` quote when something goes wrong.

Every process is started with `start_new_session=True` and stopped by signalling its
process group, so nothing it spawned outlives the test. Inherited `KVS_*` variables are
dropped, so the developer's environment cannot change what a test runs.

The `procs` fixture: import `procs_fixture` into a test module (`from tests.procs import
procs_fixture  # noqa: F401`) or into the root conftest, then ask for `procs`.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from kvs.chaos.cluster import node_env, stop_group

REPO_ROOT = Path(__file__).resolve().parent.parent
BANNER = re.compile(r"kvs node (\S+) listening on (http://\S+)")
START_TIMEOUT = 20.0
STOP_GRACE = 5.0
_PORT_TAKEN = ("Address already in use", "[Errno 98]")

_LIVE: set[KvsProcess] = set()  # safety net for interpreter exit without teardown


def free_port() -> int:
    """A loopback port nothing listens on right now (racy; prefer --port 0 and the banner)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def kvs_env(env: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """The environment for a `kvs` subprocess: ours without KVS_*, plus `env` (None removes)."""
    out = node_env({})
    for key, value in (env or {}).items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def kvs_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "kvs", *args]


def run_cli(*args: str, env: Mapping[str, str | None] | None = None,
            timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run one `kvs ...` command to completion and capture its output.

    On timeout its whole process group is killed and TimeoutExpired raised (with the
    output so far), so a command that unexpectedly keeps running cannot outlive the test.
    """
    command = kvs_command(*args)
    with subprocess.Popen(command, env=kvs_env(env), stdin=subprocess.DEVNULL,
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


class ProcessStartError(RuntimeError):
    pass


class KvsProcess:
    """One node: a data dir and a log file that outlive its processes (restart reuses them)."""

    def __init__(self, name: str, data_dir: Path | None, log_path: Path, *,
                 port: int | None = 0, env: Mapping[str, str | None] | None = None,
                 args: Sequence[str] = ()) -> None:
        self.name = name
        self.data_dir = data_dir
        self.log_path = log_path
        self.port = port
        self.env = dict(env or {})
        self.args = list(args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.url: str | None = None
        self.node_id: str | None = None
        self.starts = 0

    # -- lifecycle --------------------------------------------------------------------------

    def command(self) -> list[str]:
        args = ["serve"]
        if self.port is not None:
            args += ["--port", str(self.port)]
        if self.data_dir is not None:
            args += ["--data-dir", str(self.data_dir)]
        return kvs_command(*args, *self.args)

    def start(self, timeout: float = START_TIMEOUT) -> KvsProcess:
        """Spawn the node and return once its banner is printed and /health answers 200.

        A restart reuses the node's port. If something else grabbed that port while the
        node was down (an outgoing connection can get it as its ephemeral port), start-up
        is retried until the port is free again or `timeout` has passed.
        """
        if self.running:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        deadline = time.monotonic() + timeout
        while True:
            offset = self._spawn()
            try:
                self._wait_ready(offset, deadline)
                return self
            except ProcessStartError:
                self.kill()
                port_taken = any(s in self._log_since(offset) for s in _PORT_TAKEN)
                if not (port_taken and self.port and time.monotonic() + 0.2 < deadline):
                    raise
                time.sleep(0.2)
            except BaseException:
                self.kill()
                raise

    def _spawn(self) -> int:
        """Start the process, logging to the node's file; returns where its output begins."""
        self.starts += 1
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== {self.name} start #{self.starts}: {' '.join(self.command())}\n".encode())
            offset = log.tell()
            self.proc = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=kvs_env(self.env), cwd=str(self.log_path.parent),
                start_new_session=True)
        _LIVE.add(self)
        return offset

    async def astart(self, timeout: float = START_TIMEOUT) -> KvsProcess:
        """`start` without blocking the event loop (for tests that keep load running)."""
        return await asyncio.to_thread(self.start, timeout)

    def _wait_ready(self, offset: int, deadline: float) -> None:
        self.url = None
        while True:
            assert self.proc is not None
            code = self.proc.poll()
            if code is not None:
                raise ProcessStartError(
                    f"{self.name} exited with code {code} during start-up:\n{self.log_tail()}")
            if self.url is None:
                match = BANNER.search(self._log_since(offset))
                if match:
                    self.node_id, self.url = match.group(1), match.group(2)
                    self.port = int(self.url.rsplit(":", 1)[1])  # a restart keeps the address
            if self.url is not None and self.healthy():
                return
            if time.monotonic() > deadline:
                raise ProcessStartError(f"{self.name} not healthy in time:\n{self.log_tail()}")
            time.sleep(0.02)

    def healthy(self, timeout: float = 1.0) -> bool:
        if self.url is None:
            return False
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=timeout) as resp:
                return bool(resp.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def kill(self) -> int | None:
        """SIGKILL the process group (a crash); returns the exit code (None if not running)."""
        return self._signal(signal.SIGKILL, STOP_GRACE)

    def terminate(self, grace: float = STOP_GRACE) -> int | None:
        """SIGTERM (clean shutdown); SIGKILL if still alive after `grace` seconds."""
        return self._signal(signal.SIGTERM, grace)

    def restart(self, *, hard: bool = True, timeout: float = START_TIMEOUT) -> KvsProcess:
        """Stop (SIGKILL if hard, else SIGTERM) and start again on the same data dir and port."""
        if hard:
            self.kill()
        else:
            self.terminate()
        return self.start(timeout)

    def _signal(self, sig: signal.Signals, grace: float) -> int | None:
        if self.proc is None:
            return None
        code = stop_group(self.proc, sig, grace)
        _LIVE.discard(self)
        return code

    # -- inspection ---------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _log_since(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(offset)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self._log_since(0).splitlines()[-lines:])

    def __repr__(self) -> str:
        return f"<KvsProcess {self.name} pid={self.pid} url={self.url}>"


class ProcessGroup:
    """Every node a test starts; `stop_all()` (or leaving the `with`) kills all of them."""

    def __init__(self, base_dir: Path, *, env: Mapping[str, str | None] | None = None) -> None:
        self.base_dir = Path(base_dir)
        self.env = dict(env or {})
        self.nodes: list[KvsProcess] = []

    def node(self, name: str | None = None, *, data_dir: Path | str | None = "auto",
             port: int | None = 0, env: Mapping[str, str | None] | None = None,
             args: Sequence[str] = ()) -> KvsProcess:
        """Define a node without starting it. data_dir "auto" is <base>/<name>; None omits the flag."""
        name = name or f"node{len(self.nodes) + 1}"
        if any(n.name == name for n in self.nodes):
            raise ValueError(f"node name {name!r} is already used in this group")
        directory = self.base_dir / name if data_dir == "auto" else data_dir
        node = KvsProcess(name, Path(directory) if directory is not None else None,
                          self.base_dir / f"{name}.log", port=port,
                          env={**self.env, **(env or {})}, args=args)
        self.nodes.append(node)
        return node

    def start(self, name: str | None = None, *, data_dir: Path | str | None = "auto",
              port: int | None = 0, env: Mapping[str, str | None] | None = None,
              args: Sequence[str] = (), timeout: float = START_TIMEOUT) -> KvsProcess:
        return self.node(name, data_dir=data_dir, port=port, env=env, args=args).start(timeout)

    def stop_all(self, *, graceful: bool = False) -> None:
        errors = []
        for node in reversed(self.nodes):
            try:
                node.terminate() if graceful else node.kill()
            except Exception as exc:  # keep going: every other node must still be stopped
                errors.append(f"{node.name}: {exc!r}")
        if errors:
            raise RuntimeError("could not stop: " + "; ".join(errors))

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


@contextlib.contextmanager
def process_group(base_dir: Path, **kwargs: object) -> Iterator[ProcessGroup]:
    group = ProcessGroup(base_dir, **kwargs)  # type: ignore[arg-type]
    try:
        yield group
    finally:
        group.stop_all()


@pytest.fixture(name="procs")
def procs_fixture(tmp_path: Path) -> Iterator[ProcessGroup]:
    """A ProcessGroup under tmp_path/procs; every node is killed at teardown, pass or fail."""
    with process_group(tmp_path / "procs") as group:
        yield group


@atexit.register
def _kill_leftovers() -> None:
    for node in list(_LIVE):
        with contextlib.suppress(Exception):
            node.kill()
