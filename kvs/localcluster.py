"""`kvs cluster up`: N real `kvs serve` processes on loopback that join each other.

Node i listens on base_port + i, keeps its data in DIR/node-i (so a second `up`
restarts the same cluster with its data), and joins through node 0. Output of
every node is prefixed with its name. Ctrl-C (or SIGTERM) stops them all:
SIGTERM first, SIGKILL for any node still running after a grace period.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

GRACE_SECONDS = 10.0
STARTUP_SECONDS = 30.0


def _pump(name: str, stream, lock: threading.Lock) -> None:  # type: ignore[no-untyped-def]
    for line in iter(stream.readline, b""):
        with lock:
            sys.stdout.write(f"[{name}] {line.decode(errors='replace')}")
            sys.stdout.flush()


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=1) as resp:
            return resp.status == 200
    except OSError:
        return False


def start_nodes(nodes: int, base_port: int, directory: str, config_file: str | None,
                lock: threading.Lock) -> list[tuple[str, str, subprocess.Popen[bytes]]]:
    env = {**os.environ}
    env.setdefault("KVS_CAS_ENABLED", "true")
    started = []
    for i in range(nodes):
        name, port = f"node-{i}", base_port + i
        cmd = [sys.executable, "-m", "kvs", "serve", "--port", str(port), "--node-id", name,
               "--data-dir", str(Path(directory) / name)]
        if config_file:
            cmd += ["--config", config_file]
        if i:
            cmd += ["--seed", f"127.0.0.1:{base_port}"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        threading.Thread(target=_pump, args=(name, proc.stdout, lock), daemon=True).start()
        started.append((name, f"http://127.0.0.1:{port}", proc))
    return started


def stop_nodes(started: list[tuple[str, str, subprocess.Popen[bytes]]]) -> None:
    for _, _, proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + GRACE_SECONDS
    for _, _, proc in started:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_local_cluster(nodes: int, base_port: int, directory: str, config_file: str | None) -> int:
    if nodes < 1:
        print("kvs cluster up: --nodes must be at least 1", file=sys.stderr)
        return 2
    lock = threading.Lock()
    started = start_nodes(nodes, base_port, directory, config_file, lock)
    stop = threading.Event()
    # Explicit handlers: a shell starts background jobs with SIGINT ignored.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        pending = {url for _, url, _ in started}
        while pending and not stop.is_set():
            dead = [name for name, _, proc in started if proc.poll() is not None]
            if dead or time.monotonic() > deadline:
                why = f"{', '.join(dead)} exited" if dead else "timed out waiting for /health"
                print(f"kvs cluster up: start-up failed ({why}); see the log lines above",
                      file=sys.stderr)
                return 1
            pending = {url for url in pending if not _healthy(url)}
            with lock:
                print(f"starting: {nodes - len(pending)}/{nodes} nodes healthy", flush=True)
            if pending:
                time.sleep(0.3)
        with lock:
            print(f"kvs cluster of {nodes} nodes is up (Ctrl-C stops it):")
            for name, url, _ in started:
                print(f"  {name}  {url}")
            sys.stdout.flush()
        while not stop.is_set():
            if any(proc.poll() is not None for _, _, proc in started):
                gone = [n for n, _, p in started if p.poll() is not None]
                with lock:
                    print(f"warning: {', '.join(gone)} stopped", flush=True)
                for name in gone:
                    started = [s for s in started if s[0] != name]
                if not started:
                    return 1
            stop.wait(0.5)
        return 0
    finally:
        print("stopping the cluster...", flush=True)
        stop_nodes(started)
