"""Subprocesses that do not outlive their owner: each in its own session, signalled as a group.

    proc = ManagedProcess("etcd", ["etcd", ...], log=out_dir / "etcd.log", cwd=out_dir).spawn()
    proc.pause(); proc.resume()      # SIGSTOP / SIGCONT to the process group
    proc.kill()                      # SIGKILL to the group (a crash); returns the exit code
    proc.terminate(grace)            # SIGCONT + SIGTERM, SIGKILL after `grace` seconds
    proc.leftovers()                 # pids it ever had that still run: [] once stopped

Why a session per process: a signal to the group reaches everything the process runs
under (taskset, a wrapper), and a Ctrl-C in the owner's terminal reaches the owner only,
which then stops its children in order.

Output goes either to a log file (appended, one header line per start, written by the
child directly) or, line by line, to a callable (a pipe and a reader thread: `kvs
cluster up` prefixes every node's lines on its terminal).

Nothing is left behind: a started process stays in a registry until it is stopped, and
an atexit hook stops whatever is still there. An owner killed with SIGKILL runs no
atexit hook; for that, `die_with_parent=True` has the kernel SIGKILL the child when the
thread that spawned it ends (Linux prctl PR_SET_PDEATHSIG, set between fork and exec).
The "parent" there is a thread, so use it only from a thread that lives as long as the
owner does (the main thread), never from a worker thread (`asyncio.to_thread`).
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import ctypes
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

STOP_GRACE = 5.0
TAIL_LINES = 500  # lines of a piped process's output kept for log_tail() and banner lookups
PR_SET_PDEATHSIG = 1

LineSink = Callable[[str], None]


def stop_group(proc: subprocess.Popen[bytes], sig: signal.Signals, grace: float) -> int | None:
    """Send `sig` to the process group of `proc`, wait up to `grace` seconds, then SIGKILL
    the group and reap; returns the exit code.

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


def pid_alive(pid: int) -> bool:
    """True if `pid` exists and is not a zombie (a zombie has exited; only its parent's
    wait() is missing)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains `text`: leftover detection for processes
    this one did not start itself (e.g. the nodes of a `kvs cluster up` it ran)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as fh:
                cmdline = fh.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and pid_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn that makes the child get SIGKILL when the spawning thread ends (Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before fork, not in the child
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before the request took effect
            os.kill(os.getpid(), signal.SIGKILL)
    return preexec


class ManagedProcess:
    """One command that can be started again and again; its log and pids span every start."""

    def __init__(self, name: str, command: Sequence[str] = (), *, log: Path | LineSink,
                 env: Mapping[str, str] | None = None, cwd: Path | None = None,
                 gid: int | None = None, die_with_parent: bool = False) -> None:
        """`log`: a file to append to, or a callable that gets every line (without its newline).
        `env`: the complete environment (None: ours). `gid`: run under this group id."""
        self.name = name
        self.argv = list(command)
        self.log = Path(log).absolute() if isinstance(log, Path) else log
        self.env = dict(env) if env is not None else None
        self.cwd = Path(cwd).absolute() if cwd is not None else None
        self.gid = gid
        self.die_with_parent = die_with_parent
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False
        self.starts = 0
        self.started_at = 0.0  # time.perf_counter() of the last spawn
        self.pids: list[int] = []  # every pid it ever had, for leftover checks
        self._offset = 0  # where the current start's output begins in the log file
        self._tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)

    def command(self) -> list[str]:
        return list(self.argv)

    @property
    def log_path(self) -> Path | None:
        return self.log if isinstance(self.log, Path) else None

    def spawn(self) -> ManagedProcess:
        """Start the command (not waiting for anything); refuses while it is still running."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self.starts += 1
        command = self.command()
        if self.cwd is not None:
            self.cwd.mkdir(parents=True, exist_ok=True)
        if isinstance(self.log, Path):
            self.log.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log, "ab") as out:
                out.write(f"\n===== {self.name} start #{self.starts} at {time.strftime('%H:%M:%S')}: "
                          f"{shlex.join(command)}\n".encode())
                self._offset = out.tell()
                self.proc = self._popen(command, out)
        else:
            self._tail.clear()
            self.proc = self._popen(command, subprocess.PIPE)
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.log), daemon=True,
                             name=f"output of {self.name}").start()
        self.started_at = time.perf_counter()
        self.pids.append(self.proc.pid)
        self.paused = False
        _LIVE.add(self)
        return self

    def _popen(self, command: list[str], stdout: IO[bytes] | int) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.STDOUT, env=self.env,
            cwd=self.cwd, start_new_session=True, group=self.gid,
            preexec_fn=_die_with_parent() if self.die_with_parent else None)

    def _pump(self, stream: IO[bytes], sink: LineSink) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode(errors="replace").rstrip("\n")
            self._tail.append(line)
            with contextlib.suppress(OSError, ValueError):  # a closed terminal must not stop the node
                sink(line)
        stream.close()

    # -- signals ------------------------------------------------------------------------------

    def signal_group(self, sig: signal.Signals) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)

    def pause(self) -> None:
        self.signal_group(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        self.signal_group(signal.SIGCONT)
        self.paused = False

    def kill(self) -> int | None:
        """SIGKILL the process group (a crash) and reap it; the exit code, None if never started."""
        return self._stop(signal.SIGKILL, STOP_GRACE)

    def terminate(self, grace: float = STOP_GRACE) -> int | None:
        """Clean shutdown if it comes within `grace` seconds, else SIGKILL; never leaves the group."""
        return self._stop(signal.SIGTERM, grace)

    def _stop(self, sig: signal.Signals, grace: float) -> int | None:
        if self.proc is None:
            return None
        code = stop_group(self.proc, sig, grace)
        self.paused = False
        _LIVE.discard(self)
        return code

    def wait(self, timeout: float) -> int | None:
        """The exit code once it has exited, None if it is still running after `timeout`."""
        if self.proc is None:
            return None
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout)
        return self.proc.returncode

    # -- inspection ---------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def leftovers(self) -> list[int]:
        return [pid for pid in self.pids if pid_alive(pid)]

    def output(self) -> str:
        """What the current start has printed so far (piped: its last TAIL_LINES lines)."""
        if not isinstance(self.log, Path):
            return "\n".join(self._tail)
        try:
            with open(self.log, "rb") as fh:
                fh.seek(self._offset)
                return fh.read().decode(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        if not isinstance(self.log, Path):
            return "\n".join(list(self._tail)[-lines:])
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} pid={self.pid}>"


_LIVE: set[ManagedProcess] = set()  # spawned and not stopped yet


@atexit.register
def stop_all(grace: float = 2.0) -> None:
    """Stop every process still running (an owner's last `finally`, and atexit)."""
    for proc in list(_LIVE):
        with contextlib.suppress(Exception):
            proc.terminate(grace)
