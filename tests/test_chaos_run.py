"""`kvs chaos` against a real cluster of subprocesses: a short run passes every checker and leaves
no process and no iptables rule behind, also when interrupted with Ctrl-C. Partitions are part
of the fault mix only where they can be made (root and the iptables command).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest

from kvs.chaos.faults import iptables_save, partitions_available
from kvs.chaos.history import load_history

REPO = Path(__file__).resolve().parent.parent
PARTITIONS, WHY_NOT = partitions_available()

pytestmark = pytest.mark.slow


def env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("KVS_")}
    out["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    out["PYTHONUNBUFFERED"] = "1"
    return out


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live (non-zombie) processes that mention `text`."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(f"{pid}: {cmdline}")
    return found


def chaos(*args: str) -> list[str]:
    return [sys.executable, "-m", "kvs", "chaos", *args]


def test_short_chaos_run_passes_every_checker_and_cleans_up(tmp_path: Path) -> None:
    out = tmp_path / "run"
    # Partitions are always asked for: made where root and iptables allow, else left out
    # with a note saying why, and the run goes on with the other faults.
    faults = "kill,pause,skew,partition"
    proc = subprocess.run(
        chaos("--nodes", "3", "--clients", "8", "--duration", "20", "--seed", "4242", "--faults", faults,
              "--fault-every", "0.5,1.5", "--fault-length", "1.5,3", "--out", str(out), "--progress", "5",
              "--sync-writes"),
        env=env(), capture_output=True, text=True, timeout=120, cwd=tmp_path)
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, report
    checks = orjson.loads((out / "checks.json").read_bytes())
    assert checks["passed"], report
    statuses = {r["name"]: r["status"] for r in checks["results"]}
    assert statuses == {"linearizability": "pass", "convergence": "pass", "no-silent-loss": "pass",
                        "counters": "pass", "leases": "pass", "quorum": "skipped"}, report
    history = load_history(out)
    # The run honoured --duration by its own clock. No wall-clock bound on the whole command:
    # node start-up, convergence and checking stretch on a loaded 2-core machine (86 s once),
    # and the subprocess timeout already catches a run that hangs.
    assert history.meta["options"]["duration"] == 20
    assert history.phases["stopping"] - history.phases["workload"] >= 20
    kinds = {f.kind for f in history.faults}
    assert {"kill", "pause", "skew"} <= kinds, kinds
    if PARTITIONS:
        assert "partition" in kinds
    else:
        assert "partition" not in kinds and f"note: {WHY_NOT}" in report, report
    assert sum(1 for op in history.calls if op.ok) > 1000
    assert any(op.tag == "incr" and op.ok for op in history.calls)
    assert any(op.tag == "acquire" and op.ok for op in history.calls)
    assert any(op.ok and "if_timestamp" in (op.cond or {}) for op in history.calls)
    assert history.meta["options"]["settings"]["sync_writes"] == "true"
    assert (out / "report.html").read_text().startswith("<!doctype html>")
    # Nothing left behind: no node process, no iptables rule of this run.
    assert processes_mentioning(str(out / "nodes")) == []
    run_id = history.meta["run_id"]
    assert [line for line in iptables_save() if run_id in line] == []
    # The checkers give the same verdict on the saved history.
    again = subprocess.run(chaos("check", str(out)), env=env(), capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stdout + again.stderr


def test_short_mixed_run_with_quorum_keys_and_overlapping_faults(tmp_path: Path) -> None:
    """Quorum and local keys side by side, two faults at a time, one-way cuts, clock jumps, and
    a new node that joins, makes itself a voter and leaves."""
    out = tmp_path / "run"
    faults = "kill,pause,jump,join" + (",partition,oneway" if PARTITIONS else "")
    proc = subprocess.run(
        chaos("--nodes", "3", "--clients", "8", "--duration", "20", "--seed", "99", "--consistency", "mixed",
              "--faults", faults, "--overlap", "2", "--fault-every", "0.3,1", "--fault-length", "2,4",
              "--out", str(out), "--progress", "5"),
        env=env(), capture_output=True, text=True, timeout=180, cwd=tmp_path)
    report = proc.stdout + proc.stderr
    assert proc.returncode in (0, 1), report  # 1: a violation, which quorum_status tells
    checks = orjson.loads((out / "checks.json").read_bytes())
    statuses = {r["name"]: r["status"] for r in checks["results"]}
    quorum_status = statuses.pop("quorum")
    assert set(statuses.values()) == {"pass"}, report
    history = load_history(out)
    quorum = history.quorum_keys()
    assert quorum and set(history.calls_by_key()) - quorum, "mixed: keys of both kinds"
    assert any(op.ok and op.quorum and "if_seq" in (op.cond or {}) for op in history.calls)
    assert any(op.ok and op.quorum and op.tag == "incr" for op in history.calls)
    kinds = {f.kind for f in history.faults}
    assert "jump" in kinds and ("oneway" in kinds or not PARTITIONS), kinds
    joins = [f for f in history.faults if f.kind == "join"]
    assert joins and all(f.end is not None for f in joins), joins
    assert all("in_force" in f.detail and "leaving" in f.detail for f in joins), joins
    spans = sorted((f.begin, f.end or float("inf")) for f in history.faults)
    assert any(b[0] < a[1] for a, b in itertools.pairwise(spans)), "no two faults at once"
    assert processes_mentioning(str(out / "nodes")) == []
    assert [line for line in iptables_save() if history.meta["run_id"] in line] == []
    assert quorum_status == "pass", report


def test_ctrl_c_stops_every_node_and_removes_every_rule(tmp_path: Path) -> None:
    out = tmp_path / "run"
    faults = "partition" if PARTITIONS else "pause"
    proc = subprocess.Popen(
        chaos("--nodes", "3", "--clients", "4", "--duration", "60", "--faults", faults,
              "--fault-every", "0.1,0.2", "--fault-length", "30,30", "--out", str(out), "--progress", "1"),
        env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 40
        for line in proc.stdout:
            lines.append(line)
            if ("partition(" if PARTITIONS else "pause(") in line or time.monotonic() > deadline:
                break
        meta = orjson.loads((out / "history.jsonl").read_bytes().split(b"\n", 1)[0])
        run_id = meta["run_id"]
        assert processes_mentioning(str(out / "nodes")), "".join(lines)
        if PARTITIONS:
            assert [line for line in iptables_save() if run_id in line], "".join(lines)
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
        lines.append(rest)
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = "".join(lines)
    assert proc.returncode == 130, text
    assert "interrupted" in text
    assert processes_mentioning(str(out / "nodes")) == [], text
    assert [line for line in iptables_save() if run_id in line] == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _http(method: str, url: str, body: Any = None) -> Any:
    data = orjson.dumps(body) if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return orjson.loads(resp.read())


def _wait_until_up(proc: subprocess.Popen[bytes], url: str) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            _http("GET", url + "/health")
            return
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, "node did not start"
            time.sleep(0.05)


def test_skewed_node_stamps_versions_with_its_skewed_clock(tmp_path: Path) -> None:
    """The wrapper's offset reaches the HLC: versions written there carry the skewed time."""
    port = _free_port()
    offset = 3_600_000  # an hour ahead: unmistakable
    cmd = [sys.executable, "-m", "kvs.chaos.skewed_node", "--offset-ms", str(offset), "--", "serve",
           "--port", str(port), "--data-dir", str(tmp_path / "data"), "--node-id", "skewed"]
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_until_up(proc, url)
        before = time.time_ns() // 1_000_000
        written = _http("PUT", url + "/kv/skew-probe", {"value": 1})
        after = time.time_ns() // 1_000_000
        assert before + offset <= written["timestamp"] <= after + offset + 1000
        assert _http("GET", url + "/cluster/status")["hlc"][0] >= before + offset
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_clock_jump_signals_step_the_nodes_clock_forward_and_back(tmp_path: Path) -> None:
    port = _free_port()
    jump = 3_600_000
    cmd = [sys.executable, "-m", "kvs.chaos.skewed_node", "--offset-ms", "0", "--jump-ms", str(jump), "--",
           "serve", "--port", str(port), "--data-dir", str(tmp_path / "data"), "--node-id", "jumpy"]
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_until_up(proc, url)

        def offset_ms() -> int:
            """The node's clock minus ours, read from expires_at (now + ttl): the HLC never goes back."""
            ttl_ms = 1_000_000
            return int(_http("PUT", url + "/kv/probe", {"value": 1, "ttl": ttl_ms // 1000})["expires_at"]) \
                - ttl_ms - time.time_ns() // 1_000_000

        assert abs(offset_ms()) < 60_000
        proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while abs(offset_ms() - jump) > 60_000:  # the handler runs at the node's next bytecode
            assert time.monotonic() < deadline, "the clock did not jump forward"
        proc.send_signal(signal.SIGUSR2)
        while abs(offset_ms()) > 60_000:
            assert time.monotonic() < deadline, "the clock did not jump back"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.skipif(not PARTITIONS, reason=WHY_NOT)
def test_firewall_cleanup_removes_exactly_its_own_rules() -> None:
    from kvs.chaos.faults import Firewall

    other = "KVSTEST-OTHER"
    subprocess.run(["iptables", "-w", "-N", other], check=True)
    try:
        subprocess.run(["iptables", "-w", "-A", other, "-p", "tcp", "--dport", "1", "-j", "DROP"], check=True)
        before = [line for line in iptables_save() if not line.startswith(("#", ":"))]
        fw = Firewall("t" + os.urandom(3).hex())
        fw.setup()
        fw.cut([(47990, 1), (47991, 2)])
        assert len(fw.leftovers()) >= 5
        fw.heal()
        fw.cleanup()
        fw.cleanup()  # idempotent
        assert fw.leftovers() == []
        after = [line for line in iptables_save() if not line.startswith(("#", ":"))]
        assert after == before
    finally:
        subprocess.run(["iptables", "-w", "-F", other], check=False)
        subprocess.run(["iptables", "-w", "-X", other], check=False)


async def test_request_applied_then_connection_lost_is_unknown_not_failed(tmp_path: Path) -> None:
    """A node that takes a PUT and dies before answering, and then refuses connections: the
    outcome must be unknown. (aiohttp would resend the PUT, meet the refused connection, and
    the op would look like it never reached the node -- found by a 5-minute chaos run.)"""
    import asyncio

    import aiohttp

    from kvs.chaos.client import NodeClient, no_resend, sent_trace
    from kvs.chaos.history import HistoryWriter

    received: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length")), 0)
            await reader.readexactly(length)
            received.append(head.split(b" ", 1)[0])
            if head.startswith(b"PUT"):
                server.close()  # the node "dies": no answer, and no new connections
                writer.transport.abort()
                return
            body = b'{"key":"k","value":1}'
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    history = HistoryWriter(tmp_path / "h.jsonl")
    async with aiohttp.ClientSession(trace_configs=[sent_trace()]) as session:
        no_resend(session)
        client = NodeClient(session, history, client="c1", node="n1", url=f"http://127.0.0.1:{port}",
                            workload="register", timeout=5)
        assert (await client.read("k")).kind == "ok"  # leaves a pooled keep-alive connection
        out = await client.write("k", "v", cond={"cas": 0})
    history.close()
    assert received == [b"GET", b"PUT"]
    assert out.kind == "unknown", out


def test_without_root_partitions_are_left_out_with_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    from kvs.chaos import faults
    from kvs.chaos.runner import Options, Run

    monkeypatch.setattr(faults.os, "geteuid", lambda: 1000)
    ok, why = faults.partitions_available()
    assert not ok and "need root" in why
    said: list[str] = []
    run = Run(Options(faults=["kill", "partition", "pause"]), said.append)
    run._plan_faults()
    assert run.faults == ["kill", "pause"]
    assert any("running without partition faults" in line for line in said)


def test_netns_run_puts_every_node_on_a_host_of_its_own_and_removes_the_hosts(tmp_path: Path) -> None:
    """The namespaced cluster of tests/test_netns.py: secret, mutual TLS and ACLs on; the
    clients' token reaches every node before the workload, and the run's own operator
    requests (Merkle roots, dumps) carry the management token."""
    from kvs.testing import netns

    if netns.unavailable() is not None:
        pytest.skip(str(netns.unavailable()))
    out = tmp_path / "run"
    proc = subprocess.run(
        chaos("--netns", "--nodes", "3", "--clients", "6", "--duration", "6", "--faults", "partition,kill",
              "--fault-every", "0.3,0.6", "--fault-length", "1,1.5", "--out", str(out), "--progress", "5"),
        env=env(), capture_output=True, text=True, timeout=120, cwd=tmp_path)
    report = proc.stdout + proc.stderr
    if "--netns: cannot make the hosts" in report:
        pytest.skip(report.split("--netns: ", 1)[1].splitlines()[0])
    assert proc.returncode == 0, report
    history = load_history(out)
    assert "partition" in {f.kind for f in history.faults}, report
    urls = [node["url"] for node in history.meta["nodes"].values()]
    hosts = {url.split("//")[1].split(":")[0] for url in urls}
    assert len(hosts) == 3 and all(url.startswith("https://10.") and url.endswith(":8080") for url in urls)
    for name in history.meta["nodes"]:  # what each node said it runs with
        started = next(line for line in (out / "nodes" / f"{name}.log").read_text().splitlines()
                       if "event=started" in line)
        assert "acl_enabled=True" in started and "tls=mutual" in started, started
    records = [orjson.loads(line) for line in (out / "history.jsonl").read_bytes().splitlines()]
    (acl,) = [r for r in records if r["type"] == "acl"]
    assert acl["policy"] == "chaos" and acl["client_token"] != acl["operator_token"]
    refused = [r for r in records if r.get("status") in (401, 403)]
    assert refused == [] and any(r["type"] == "ok" for r in records), refused[:3]
    assert "converged" in history.phases and set(history.dump_info) == set(history.meta["nodes"]), report
    # Nothing left behind: no node process, no namespace or link of the run's network.
    assert processes_mentioning(str(out / "nodes")) == []
    run = history.meta["network"]
    left = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
    left += subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert run and run not in left


def test_netns_run_changes_voters_over_tls_with_the_management_token(tmp_path: Path) -> None:
    """The voters fault's POST to /cluster/voters of an https node verifies it against the
    run's CA and is admitted with ACLs on (without the CA every change failed its handshake)."""
    from kvs.testing import netns

    if netns.unavailable() is not None:
        pytest.skip(str(netns.unavailable()))
    out = tmp_path / "run"
    proc = subprocess.run(
        chaos("--netns", "--nodes", "3", "--clients", "3", "--duration", "4", "--faults", "voters",
              "--consistency", "quorum", "--fault-every", "0.2,0.3", "--fault-length", "1,1.5",
              "--out", str(out), "--progress", "5"),
        env=env(), capture_output=True, text=True, timeout=120, cwd=tmp_path)
    report = proc.stdout + proc.stderr
    if "--netns: cannot make the hosts" in report:
        pytest.skip(report.split("--netns: ", 1)[1].splitlines()[0])
    assert proc.returncode == 0, report
    records = [orjson.loads(line) for line in (out / "history.jsonl").read_bytes().splitlines()]
    phases = [r["phase"] for r in records if r["type"] == "fault" and r["kind"] == "voters"]
    assert "in_force" in phases and "refused" not in phases, phases


def test_netns_mode_refuses_url_and_names_what_it_lacks(monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    from kvs.chaos.runner import Options, execute
    from kvs.testing import netns

    both = subprocess.run(chaos("--netns", "--url", "http://127.0.0.1:1"), env=env(), capture_output=True,
                          text=True, timeout=60)
    assert both.returncode == 2 and "cannot be combined with --url" in both.stderr
    monkeypatch.setattr(netns.os, "geteuid", lambda: 1000)
    said: list[str] = []
    assert execute(Options(netns=True, out=tmp_path / "run", duration=1), said.append) == 2
    assert "chaos run failed: --netns: network namespaces need root" in said
