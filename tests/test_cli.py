"""The `kvs` command against real `kvs serve` subprocesses: output, exit codes, config errors.

Exit codes scripts rely on: 0 ok, 2 usage / configuration, 3 not found, 4 CAS conflict,
5 CAS disabled on the node, 6 no node reachable.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kvs.cli import EXIT_CONFLICT as CONFLICT
from kvs.cli import EXIT_DISABLED as DISABLED
from kvs.cli import EXIT_NOT_FOUND as NOT_FOUND
from kvs.cli import EXIT_UNAVAILABLE as UNAVAILABLE
from kvs.cli import EXIT_USAGE as USAGE
from tests.procs import KvsProcess, ProcessGroup, free_port, process_group, run_cli

OK = 0


@pytest.fixture(scope="module")
def group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessGroup]:
    with process_group(tmp_path_factory.mktemp("cli")) as procs:
        yield procs


@pytest.fixture(scope="module")
def cas_node(group: ProcessGroup) -> KvsProcess:
    return group.start("cas", env={"KVS_CAS_ENABLED": "true"})


@pytest.fixture(scope="module")
def plain_node(group: ProcessGroup) -> KvsProcess:
    return group.start("plain")  # cas_enabled is false unless configured


def kvs(node: KvsProcess | str, *args: str) -> subprocess.CompletedProcess[str]:
    url = node if isinstance(node, str) else node.url
    assert url is not None
    return run_cli(*args, "--node", url)


def ok_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == OK, (result.returncode, result.stderr)
    return json.loads(result.stdout)


def fails(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert result.stderr.startswith("kvs"), result.stderr
    return result.stderr


def test_put_get_raw_history_delete(cas_node: KvsProcess) -> None:
    put = ok_json(kvs(cas_node, "put", "cli/doc", '{"a": [1, 2]}', "--flags", "7"))
    assert put["key"] == "cli/doc" and put["modify_index"] > 0 and put["expires_at"] is None
    got = ok_json(kvs(cas_node, "get", "cli/doc"))
    assert got["value"] == {"a": [1, 2]} and got["flags"] == 7 and got["version"] == put["version"]
    raw = kvs(cas_node, "get", "cli/doc", "--raw")
    assert raw.returncode == OK and json.loads(raw.stdout) == {"a": [1, 2]}

    ok_json(kvs(cas_node, "put", "cli/text", "hello world"))  # not JSON: stored as a string
    assert kvs(cas_node, "get", "cli/text", "--raw").stdout == "hello world\n"
    ok_json(kvs(cas_node, "put", "cli/text", "42", "--string"))
    assert ok_json(kvs(cas_node, "get", "cli/text"))["value"] == "42"
    ok_json(kvs(cas_node, "put", "cli/text", "42"))
    assert ok_json(kvs(cas_node, "get", "cli/text"))["value"] == 42

    leased = ok_json(kvs(cas_node, "put", "cli/lease", "x", "--ttl", "60"))
    assert leased["expires_at"] is not None and leased["expires_at"] > leased["timestamp"]

    deleted = ok_json(kvs(cas_node, "delete", "cli/doc"))
    assert deleted["key"] == "cli/doc" and deleted["modify_index"] > put["modify_index"]
    assert "not found" in fails(kvs(cas_node, "get", "cli/doc"), NOT_FOUND)
    fails(kvs(cas_node, "get", "cli/doc", "--raw"), NOT_FOUND)
    fails(kvs(cas_node, "delete", "cli/doc"), NOT_FOUND)
    fails(kvs(cas_node, "get", "cli/never-written"), NOT_FOUND)

    history = ok_json(kvs(cas_node, "history", "cli/doc"))
    assert history["key"] == "cli/doc"
    assert [r["deleted"] for r in history["revisions"]] == [True, False]  # newest first
    assert history["revisions"][1]["version"] == put["version"]
    fails(kvs(cas_node, "history", "cli/never-written"), NOT_FOUND)


def test_cas_conditions_and_exit_codes(cas_node: KvsProcess) -> None:
    created = ok_json(kvs(cas_node, "cas", "cli/cas", "1", "--cas", "0"))
    stderr = fails(kvs(cas_node, "cas", "cli/cas", "1", "--cas", "0"), CONFLICT)
    current = json.loads(stderr[stderr.index("{"):])["current"]  # the 409 shows what is there
    assert current["modify_index"] == created["modify_index"]
    assert current["version"] == created["version"]

    second = ok_json(kvs(cas_node, "cas", "cli/cas", "2", "--cas", str(created["modify_index"])))
    stale = fails(kvs(cas_node, "cas", "cli/cas", "3", "--cas", str(created["modify_index"])), CONFLICT)
    assert str(created["modify_index"]) in stale and str(second["modify_index"]) in stale

    third = ok_json(kvs(cas_node, "cas", "cli/cas", "3", "--if-version", second["version"]))
    fails(kvs(cas_node, "cas", "cli/cas", "4", "--if-version", second["version"]), CONFLICT)
    ok_json(kvs(cas_node, "cas", "cli/cas", "4", "--if-value", "3"))
    fails(kvs(cas_node, "cas", "cli/cas", "5", "--if-value", "3"), CONFLICT)
    ok_json(kvs(cas_node, "cas", "cli/cas", "5", "--if-value", "4", "--if-timestamp",
                str(ok_json(kvs(cas_node, "get", "cli/cas"))["timestamp"])))
    assert ok_json(kvs(cas_node, "get", "cli/cas"))["value"] == 5
    assert third["modify_index"] > second["modify_index"] > created["modify_index"]

    # Conditions on an absent key (other than cas=0) are "not found", not a conflict.
    fails(kvs(cas_node, "cas", "cli/absent", "1", "--if-value", "0"), NOT_FOUND)
    fails(kvs(cas_node, "cas", "cli/absent", "1", "--cas", "5"), NOT_FOUND)
    fails(kvs(cas_node, "get", "cli/absent"), NOT_FOUND)

    # Conditional delete.
    fails(kvs(cas_node, "delete", "cli/cas", "--cas", str(created["modify_index"])), CONFLICT)
    fails(kvs(cas_node, "delete", "cli/cas", "--if-value", "4"), CONFLICT)
    ok_json(kvs(cas_node, "delete", "cli/cas", "--if-value", "5"))
    fails(kvs(cas_node, "delete", "cli/cas", "--if-value", "5"), NOT_FOUND)

    # `cas` without any condition is a usage error, and nothing is written.
    usage = run_cli("cas", "cli/cas", "9", "--node", cas_node.url or "")
    assert usage.returncode == USAGE and "--cas" in usage.stderr
    fails(kvs(cas_node, "get", "cli/cas"), NOT_FOUND)


def test_ls(cas_node: KvsProcess) -> None:
    for key in ("ls/a/1", "ls/a/2", "ls/b", "ls/c/x/y"):
        ok_json(kvs(cas_node, "put", key, "1"))
    listing = kvs(cas_node, "ls", "ls/")
    assert listing.returncode == OK
    assert listing.stdout.split() == ["ls/a/1", "ls/a/2", "ls/b", "ls/c/x/y"]
    grouped = kvs(cas_node, "ls", "ls/", "--separator", "/")
    assert grouped.stdout.split() == ["ls/a/", "ls/b", "ls/c/"]
    as_json = ok_json(kvs(cas_node, "ls", "ls/a", "--json"))
    assert as_json["keys"] == ["ls/a/1", "ls/a/2"] and as_json["next"] is None
    empty = kvs(cas_node, "ls", "ls/none/")
    assert empty.returncode == OK and empty.stdout == ""
    assert "ls/b" in kvs(cas_node, "ls").stdout.split()  # no prefix: everything


def test_cas_disabled_exits_5_and_writes_nothing(plain_node: KvsProcess) -> None:
    message = fails(kvs(plain_node, "cas", "off/k", "1", "--cas", "0"), DISABLED)
    assert "cas_enabled" in message
    fails(kvs(plain_node, "get", "off/k"), NOT_FOUND)  # not silently downgraded to a plain put
    put = ok_json(kvs(plain_node, "put", "off/k", "1"))
    fails(kvs(plain_node, "cas", "off/k", "2", "--if-version", put["version"]), DISABLED)
    fails(kvs(plain_node, "delete", "off/k", "--if-value", "1"), DISABLED)
    assert ok_json(kvs(plain_node, "get", "off/k"))["version"] == put["version"]


def test_unreachable_node_exits_6(cas_node: KvsProcess) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    for args in (("get", "k"), ("put", "k", "1"), ("ls",), ("history", "k"), ("delete", "k")):
        message = fails(kvs(closed, *args), UNAVAILABLE)
        assert closed in message and "kvs serve" in message
    # With several --node URLs the client fails over past the dead one.
    failover = run_cli("put", "cli/failover", "1", "--node", closed, "--node", cas_node.url or "")
    assert failover.returncode == OK, failover.stderr


BAD_CONFIGS = [
    pytest.param({"yaml": "port: 0\nbogus_key: 1\n"}, "bogus_key", id="unknown-yaml-key"),
    pytest.param({"yaml": "port: 0\ncas_enabled: maybe\n"},
                 "kvs.yaml, key 'cas_enabled': expected true or false", id="bad-yaml-value"),
    pytest.param({"yaml": "port: 0\nrevision_history_limit: 0\n"}, "revision_history_limit",
                 id="non-positive"),
    pytest.param({"yaml": "port: 0\nseed_nodes: [\n"}, "line 3", id="broken-yaml"),
    pytest.param({"env": {"KVS_PORT": "abc"}}, "environment variable KVS_PORT: expected an integer",
                 id="env-port-abc"),
    pytest.param({"env": {"KVS_PORT": "0", "KVS_COMPRESSION": "gzip"}}, "KVS_COMPRESSION",
                 id="env-compression"),
    pytest.param({"env": {"KVS_PORT": "0", "KVS_NO_SUCH_SETTING": "1"}}, "KVS_NO_SUCH_SETTING",
                 id="unknown-env-key"),
    pytest.param({"env": {"KVS_PORT": "0", "KVS_CAS_ENABLE": "true"}}, "did you mean KVS_CAS_ENABLED?",
                 id="misspelt-env-key"),
    pytest.param({"yaml": "port: 0\ncas_enable: true\n"}, "key 'cas_enable': unknown setting (did you "
                 "mean 'cas_enabled'?)", id="misspelt-yaml-key"),
]


@pytest.mark.parametrize(("setup", "names"), BAD_CONFIGS)
def test_serve_config_error_is_one_line_naming_the_key(tmp_path: Path, setup: dict[str, Any],
                                                       names: str) -> None:
    data_dir = tmp_path / "data"
    args = ["serve", "--data-dir", str(data_dir)]  # no --port: a flag would override KVS_PORT
    if "yaml" in setup:
        config = tmp_path / "kvs.yaml"
        config.write_text(setup["yaml"])
        args += ["--config", str(config)]
    started = time.monotonic()
    result = run_cli(*args, env=setup.get("env"), timeout=20)  # a hang fails via TimeoutExpired
    assert time.monotonic() - started < 10
    assert result.returncode == USAGE, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert names in lines[0] and lines[0].startswith("kvs: configuration error:"), lines[0]
    assert result.stdout == ""
    assert not data_dir.exists(), "a node with a bad config must not touch its data dir"


def test_serve_with_config_file(group: ProcessGroup, tmp_path: Path) -> None:
    data_dir = tmp_path / "from-config"
    config = tmp_path / "node.yaml"
    config.write_text(
        "# a node configured only by its file\n"
        "port: 0\n"
        f"data_dir: {data_dir}\n"
        "cas_enabled: true\n"
        "revision_history_limit: 3\n"
        "log_level: warning\n"
    )
    # The environment overrides the file (precedence: defaults < file < env < flags).
    node = group.start("configured", port=None, data_dir=None, args=["--config", str(config)],
                       env={"KVS_MAX_VALUE_BYTES": "64"})
    assert data_dir.is_dir()
    ok_json(kvs(node, "cas", "cfg/k", "0", "--cas", "0"))  # cas_enabled came from the file
    for value in range(1, 6):
        ok_json(kvs(node, "put", "cfg/k", str(value)))
    history = ok_json(kvs(node, "history", "cfg/k"))
    assert [r["value"] for r in history["revisions"]] == [5, 4, 3]  # revision_history_limit: 3
    too_large = kvs(node, "put", "cfg/big", json.dumps("x" * 100))
    assert too_large.returncode == 1 and "max_value_bytes" in too_large.stderr
    # A restart reads the same file and keeps the node's identity and data.
    node_id = node.node_id
    node.restart(hard=False)
    assert node.node_id == node_id
    assert ok_json(kvs(node, "get", "cfg/k"))["value"] == 5
    assert node.terminate() == 0

