"""`kvs members|status|services|watch|lock` against a real `kvs serve` subprocess.

Human output by default, --json for machines; exit codes as for the other client commands
(3 not found, 4 CAS conflict / lock busy, 6 unreachable) plus 7: `kvs lock` lost its lock.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvs.cli import EXIT_CONFLICT as CONFLICT
from kvs.cli import EXIT_LOCK_LOST as LOCK_LOST
from kvs.cli import EXIT_NOT_FOUND as NOT_FOUND
from kvs.cli import EXIT_UNAVAILABLE as UNAVAILABLE
from kvs.cli import EXIT_USAGE as USAGE
from kvs.client import Client, NotFound
from kvs.testing import KvsNode, NodeGroup, free_port, kvs_command, node_env, run_kvs

OK = 0


@pytest.fixture(scope="module")
def group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeGroup]:
    with NodeGroup(tmp_path_factory.mktemp("cli-client")) as procs:
        yield procs


@pytest.fixture(scope="module")
def node(group: NodeGroup) -> KvsNode:
    return group.start("n1", env={"KVS_CAS_ENABLED": "true"})


@pytest.fixture
def client(node: KvsNode) -> Iterator[Client]:
    with Client(node.url or "") as c:
        yield c


def kvs(node: KvsNode | str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    url = node if isinstance(node, str) else node.url
    assert url is not None
    return run_kvs(args[0], "--node", url, *args[1:], timeout=timeout)  # before any `--`


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == OK, (result.returncode, result.stdout, result.stderr)
    return result.stdout


def spawn(node: KvsNode, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(kvs_command(args[0], "--node", node.url or "", *args[1:]), env=node_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def test_members_and_status(node: KvsNode) -> None:
    table = ok(kvs(node, "members")).splitlines()
    assert table[0].split() == ["ID", "ADDRESS", "STATE", "INCARNATION", "LAST", "SEEN"]
    assert node.node_id in table[1] and "alive" in table[1]
    assert table[-1] == f"voters (epoch 1): {node.node_id}"  # a node without seeds votes alone
    [member] = json.loads(ok(kvs(node, "members", "--json")))
    assert member["id"] == node.node_id and member["state"] == "alive"

    human = ok(kvs(node, "status"))
    assert f"node         {node.node_id}" in human and "merkle root" in human
    status = json.loads(ok(kvs(node, "status", "--json")))
    assert status["node"] == node.node_id and len(status["merkle_root"]) == 16


def test_services(node: KvsNode, client: Client) -> None:
    out = ok(kvs(node, "services", "register", "api", "--address", "10.0.0.7", "--port", "9000",
                 "--ttl", "30", "--tag", "v2", "--tag", "blue", "--meta", "zone=z1", "--cas", "0"))
    assert out.startswith("registered api (modify_index ")
    assert "api" in ok(kvs(node, "services"))  # list is the default action
    rows = ok(kvs(node, "services", "list")).splitlines()
    assert rows[0].split() == ["NAME", "ADDRESS", "PORT", "TAGS", "TTL"]
    assert any(row.split() == ["api", "10.0.0.7", "9000", "v2,blue", "30s"] for row in rows[1:])
    got = json.loads(ok(kvs(node, "services", "get", "api", "--json")))
    assert got["meta"] == {"zone": "z1"} and got["modify_index"] > 0 and got["expires_at"]
    assert "expires" in ok(kvs(node, "services", "get", "api"))
    assert ok(kvs(node, "services", "renew", "api", "--ttl", "60")).startswith("renewed api")
    assert kvs(node, "services", "register", "api", "--cas", "0").returncode == CONFLICT
    stale = kvs(node, "services", "deregister", "api", "--cas", str(got["modify_index"]))
    assert stale.returncode == CONFLICT and "current" in stale.stderr
    assert ok(kvs(node, "services", "deregister", "api")).startswith("deregistered api")
    missing = kvs(node, "services", "get", "api")
    assert missing.returncode == NOT_FOUND and missing.stderr.startswith("kvs:")
    assert kvs(node, "services", "get").returncode == USAGE
    assert json.loads(ok(kvs(node, "services", "--json"))) == []
    assert client.list_services() == []


def test_watch_prints_each_change(node: KvsNode, client: Client) -> None:
    client.put("cli-watch/k", {"v": 0})
    human = spawn(node, "watch", "cli-watch/k", "--count", "3")
    machine = spawn(node, "watch", "cli-watch/", "--prefix", "--json", "--count", "3")
    try:
        time.sleep(1.5)  # both have printed the current state and hold a blocking query
        client.put("cli-watch/k", {"v": 1})
        time.sleep(0.3)
        client.delete("cli-watch/k")
        human_out, human_err = human.communicate(timeout=10)
        machine_out, _ = machine.communicate(timeout=10)
    finally:
        human.kill()
        machine.kill()
    assert human.returncode == OK, human_err
    lines = human_out.splitlines()
    assert len(lines) == 3 and all(line.startswith("[index ") for line in lines)
    assert 'cli-watch/k = {"v": 0}' in lines[0] and 'cli-watch/k = {"v": 1}' in lines[1]
    assert lines[2].endswith("cli-watch/k absent")
    events = [json.loads(line) for line in machine_out.splitlines()]
    assert [[i["value"] for i in e["items"]] for e in events] == [[{"v": 0}], [{"v": 1}], []]
    assert events[0]["index"] < events[1]["index"] < events[2]["index"]
    assert all(e["prefix"] == "cli-watch/" for e in events)


def test_lock_runs_the_command_and_passes_its_exit_status(node: KvsNode, client: Client,
                                                          tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    result = kvs(node, "lock", "cli-lock/a", "--ttl", "5", "--", "sh", "-c", f"touch {marker}; exit 3")
    assert result.returncode == 3 and marker.exists(), result.stderr
    with pytest.raises(NotFound):
        client.get("cli-lock/a")  # released after the command
    assert kvs(node, "lock", "cli-lock/a").returncode == USAGE  # no command


def test_lock_busy_until_timeout_exits_4(node: KvsNode, client: Client) -> None:
    client.put("cli-lock/b", "held elsewhere", cas=0, ttl=30)
    started = time.monotonic()
    result = kvs(node, "lock", "cli-lock/b", "--timeout", "0.5", "--", "true")
    assert result.returncode == CONFLICT and "held by someone else" in result.stderr
    assert time.monotonic() - started < 5


def test_lock_lost_stops_the_command_and_exits_7(node: KvsNode, client: Client, tmp_path: Path) -> None:
    marker = tmp_path / "finished"
    proc = spawn(node, "lock", "cli-lock/c", "--ttl", "2", "--grace", "1", "--",
                 "sh", "-c", f"sleep 20; touch {marker}")
    try:
        deadline = time.monotonic() + 10
        while True:  # wait until the lock is held
            try:
                client.get("cli-lock/c")
                break
            except NotFound:
                assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
                time.sleep(0.05)
        client.delete("cli-lock/c")  # taken away behind the holder's back
        lost_at = time.monotonic()
        _, stderr = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == LOCK_LOST, stderr
    assert time.monotonic() - lost_at < 2.5  # seen at once, command stopped by SIGTERM
    assert "lost" in stderr and not marker.exists()


def test_new_commands_report_an_unreachable_node(tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    for args in (("members",), ("status",), ("services",), ("watch", "k", "--count", "1"),
                 ("lock", "k", "--", "true")):
        result = kvs(closed, *args)
        assert result.returncode == UNAVAILABLE, (args, result.stderr)
        assert closed in result.stderr and "kvs serve" in result.stderr


def test_examples_run_against_a_node(node: KvsNode, tmp_path: Path) -> None:
    """Each example in examples/ runs to completion (they default to `kvs cluster up`'s ports)."""
    examples = Path(__file__).resolve().parent.parent / "examples"
    runs = {
        "config_update": ["--editors", "10"],
        "lock": ["--ttl", "1", "--work", "0.2"],
        "leader_election": ["--ttl", "1", "--duration", "1.5", "--name", "solo"],
        "service_registration": ["--ttl", "1", "--duration", "1", "--name", "example-web"],
    }
    procs = {name: subprocess.Popen([sys.executable, str(examples / f"{name}.py"), "--node", node.url or "",
                                     *args], env=node_env(), stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, start_new_session=True)
             for name, args in runs.items()}
    outputs = {}
    try:
        for name, proc in procs.items():
            outputs[name] = proc.communicate(timeout=30)[0]
            assert proc.returncode == 0, (name, outputs[name])
    finally:
        for proc in procs.values():
            proc.kill()
    assert "no update lost" in outputs["config_update"]
    assert "holding examples/lock" in outputs["lock"] and "released" in outputs["lock"]
    assert "solo: I am the leader" in outputs["leader_election"]
    assert "services: example-web@127.0.0.1:8000" in outputs["service_registration"]
    assert "deregistered example-web" in outputs["service_registration"]
