"""The `kvs` command against real `kvs serve` subprocesses: output, exit codes, config errors.

Exit codes scripts rely on: 0 ok, 2 usage / configuration, 3 not found, 4 CAS conflict,
5 CAS disabled on the node, 6 no node reachable.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import re
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
from kvs.cli import build_parser, main
from kvs.testing import KvsNode, NodeGroup, free_port, run_kvs

OK = 0


@pytest.fixture(scope="module")
def group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeGroup]:
    with NodeGroup(tmp_path_factory.mktemp("cli")) as procs:
        yield procs


@pytest.fixture(scope="module")
def cas_node(group: NodeGroup) -> KvsNode:
    return group.start("cas", env={"KVS_CAS_ENABLED": "true"})


@pytest.fixture(scope="module")
def plain_node(group: NodeGroup) -> KvsNode:
    return group.start("plain")  # cas_enabled is false unless configured


def kvs(node: KvsNode | str, *args: str) -> subprocess.CompletedProcess[str]:
    url = node if isinstance(node, str) else node.url
    assert url is not None
    return run_kvs(*args, "--node", url)


def ok_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == OK, (result.returncode, result.stderr)
    return json.loads(result.stdout)


def fails(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert result.stderr.startswith("kvs"), result.stderr
    return result.stderr


def test_put_get_raw_history_delete(cas_node: KvsNode) -> None:
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


def test_cas_conditions_and_exit_codes(cas_node: KvsNode) -> None:
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
    usage = run_kvs("cas", "cli/cas", "9", "--node", cas_node.url or "")
    assert usage.returncode == USAGE and "--cas" in usage.stderr
    fails(kvs(cas_node, "get", "cli/cas"), NOT_FOUND)


def test_ls(cas_node: KvsNode) -> None:
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


def test_cas_disabled_exits_5_and_writes_nothing(plain_node: KvsNode) -> None:
    message = fails(kvs(plain_node, "cas", "off/k", "1", "--cas", "0"), DISABLED)
    assert "cas_enabled" in message
    fails(kvs(plain_node, "get", "off/k"), NOT_FOUND)  # not silently downgraded to a plain put
    put = ok_json(kvs(plain_node, "put", "off/k", "1"))
    fails(kvs(plain_node, "cas", "off/k", "2", "--if-version", put["version"]), DISABLED)
    fails(kvs(plain_node, "delete", "off/k", "--if-value", "1"), DISABLED)
    assert ok_json(kvs(plain_node, "get", "off/k"))["version"] == put["version"]


def test_unreachable_node_exits_6(cas_node: KvsNode) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    for args in (("get", "k"), ("put", "k", "1"), ("ls",), ("history", "k"), ("delete", "k")):
        message = fails(kvs(closed, *args), UNAVAILABLE)
        assert closed in message and "kvs serve" in message
    # With several --node URLs the client fails over past the dead one.
    failover = run_kvs("put", "cli/failover", "1", "--node", closed, "--node", cas_node.url or "")
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
    pytest.param({"args": ["--port", "70000"]}, "flag --port: expected 0..65535", id="flag-port-range"),
]


@pytest.mark.parametrize(("setup", "names"), BAD_CONFIGS)
def test_serve_config_error_is_one_line_naming_the_key(tmp_path: Path, setup: dict[str, Any],
                                                       names: str) -> None:
    data_dir = tmp_path / "data"
    # No --port unless the case gives one: the flag would override KVS_PORT.
    args = ["serve", "--data-dir", str(data_dir), *setup.get("args", [])]
    if "yaml" in setup:
        config = tmp_path / "kvs.yaml"
        config.write_text(setup["yaml"])
        args += ["--config", str(config)]
    started = time.monotonic()
    result = run_kvs(*args, env=setup.get("env"), timeout=20)  # a hang fails via TimeoutExpired
    assert time.monotonic() - started < 10
    assert result.returncode == USAGE, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert names in lines[0] and lines[0].startswith("kvs: configuration error:"), lines[0]
    assert result.stdout == ""
    assert not data_dir.exists(), "a node with a bad config must not touch its data dir"


def test_serve_with_config_file(group: NodeGroup, tmp_path: Path) -> None:
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



# -- VALUE and usage errors ------------------------------------------------------------------

def test_value_that_looks_like_json_must_be_json(cas_node: KvsNode) -> None:
    refused = fails(kvs(cas_node, "put", "val/cfg", '{"enabled": tru}'), USAGE)
    assert "not valid JSON" in refused and "--string" in refused
    for text in ("True", "NULL", "1.2.3", "10s", "NaN", "[1,", '"open', " {"):
        fails(kvs(cas_node, "put", "val/cfg", text), USAGE)
    fails(kvs(cas_node, "get", "val/cfg"), NOT_FOUND)  # nothing was written

    ok_json(kvs(cas_node, "put", "val/cfg", '{"enabled": tru}', "--string"))
    assert ok_json(kvs(cas_node, "get", "val/cfg"))["value"] == '{"enabled": tru}'
    for text, stored in (("hello", "hello"), ("v1.2", "v1.2"), ("none", "none"), ("true", True),
                         ("-1.5", -1.5), ("1.5e3", 1500.0), ('"42"', "42"), (" [1] ", [1])):
        ok_json(kvs(cas_node, "put", "val/rule", text))
        assert ok_json(kvs(cas_node, "get", "val/rule"))["value"] == stored, text
    # --if-value follows the same rule (it has no --string: a string is written as JSON).
    stderr = fails(kvs(cas_node, "cas", "val/rule", "2", "--if-value", "[1,"), USAGE)
    assert "--if-value" in stderr
    ok_json(kvs(cas_node, "cas", "val/rule", '"v1.2.3"', "--if-value", "[1]"))
    ok_json(kvs(cas_node, "cas", "val/rule", "3", "--if-value", '"v1.2.3"'))


USAGE_ERRORS = [
    pytest.param(("put", "", "1"), id="empty-key"),
    pytest.param(("put", "use/\x7f", "1"), id="control-char-in-key"),
    pytest.param(("get", "x" * 513), id="key-too-long"),
    pytest.param(("delete", ""), id="delete-empty-key"),
    pytest.param(("watch", "", "--count", "1"), id="watch-empty-key"),
    pytest.param(("put", "use/k", "1", "--ttl", "0"), id="ttl-zero"),
    pytest.param(("put", "use/k", "1", "--flags", "-1"), id="negative-flags"),
    pytest.param(("cas", "use/k", "1", "--cas", "-1"), id="negative-cas"),
    pytest.param(("cas", "use/k", "1", "--if-version", "not-a-uuid"), id="bad-if-version"),
    pytest.param(("services", "register", "use-svc", "--meta", "zone"), id="meta-without-equals"),
    pytest.param(("services", "register", "use-svc", "--port", "0"), id="service-port-zero"),
]


@pytest.mark.parametrize("args", USAGE_ERRORS)
def test_usage_errors_exit_2_and_write_nothing(cas_node: KvsNode, args: tuple[str, ...]) -> None:
    result = kvs(cas_node, *args)
    assert result.returncode == USAGE, (result.returncode, result.stdout, result.stderr)
    assert result.stderr.startswith(("kvs ", "usage: kvs ")) and "Traceback" not in result.stderr
    fails(kvs(cas_node, "get", "use/k"), NOT_FOUND)
    fails(kvs(cas_node, "services", "get", "use-svc"), NOT_FOUND)


# -- --version and --help --------------------------------------------------------------------

def help_text(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """`kvs ARGS --help` with lines joined, so that assertions do not depend on wrapping."""
    with pytest.raises(SystemExit) as exited:
        main([*args, "--help"])
    assert exited.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def test_version() -> None:
    result = run_kvs("--version")
    assert (result.returncode, result.stdout) == (OK, f"kvs {importlib.metadata.version('kvs')}\n")


def test_the_console_script_starts_where_python_m_kvs_does() -> None:
    """Both must reach kvs/__main__.py first: it records a Ctrl-C that arrives while
    `kvs cluster up` is still importing, which the command would otherwise miss."""
    (script,) = [e for e in importlib.metadata.entry_points(group="console_scripts") if e.name == "kvs"]
    assert script.value == "kvs.__main__:main"


def test_voters_add_help_says_what_the_node_checks(capsys: pytest.CaptureFixture[str]) -> None:
    """POST /cluster/voters checks only that the id is in the member table (any state), not
    that the member is alive: the help must not promise a check the node does not make."""
    text = help_text(capsys, "voters", "add")
    assert "sees alive" not in text
    assert "any entry of its member table, whatever its state" in text


def test_cluster_changes_by_id_share_their_options(capsys: pytest.CaptureFixture[str]) -> None:
    for args in (("members", "remove"), ("voters", "add"), ("voters", "remove")):
        text = help_text(capsys, *args)
        assert "--secret SECRET the cluster_secret (default: $KVS_CLUSTER_SECRET)" in text, args
        assert "--json print the node's answer as JSON" in text, args


def test_help_lists_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for code, meaning in ((0, "ok"), (1, "error"), (2, "usage"), (3, "not found"), (4, "CAS conflict"),
                          (5, "CAS disabled"), (6, "no node reachable"), (7, "lock was lost")):
        assert re.search(rf"^  {code}  .*{meaning}", out, re.MULTILINE), (code, out)


def _parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases map to one parser
                yield from _parsers(child)


def test_every_option_of_every_command_is_described() -> None:
    parsers = [p for p in _parsers(build_parser()) if not p.prog.startswith("kvs chaos")]  # docs/chaos.md
    undescribed = [(p.prog, a.dest) for p in parsers for a in p._actions
                   if not isinstance(a, argparse._SubParsersAction) and not (a.help or "").strip()]
    assert undescribed == []


def test_serve_and_cluster_up_help_show_the_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    serve = help_text(capsys, "serve")
    for flag, default in (("--port", "8080"), ("--bind", "127.0.0.1"), ("--data-dir", "./data"),
                          ("--node-id", "generated on first start"), ("--seed", "none: start a new cluster")):
        assert re.search(rf"{flag} \S+ .*?\(default: [^)]*else {re.escape(default)}", serve), flag
    assert "KVS_PORT" in serve and "config file" in serve
    up = help_text(capsys, "cluster", "up")
    for text in ("--nodes N how many nodes to start (default: 3)", "(default: 8080)",
                 "(default: ./kvs-cluster)", "--config FILE YAML config file for every node"):
        assert text in up, text


def test_cas_help_explains_each_condition(capsys: pytest.CaptureFixture[str]) -> None:
    cas = help_text(capsys, "cas")
    assert cas != help_text(capsys, "put")
    for text in ("--cas 0 create only: KEY must be absent", "--cas N KEY's modify_index",
                 "--if-version UUID KEY's current version id must be UUID",
                 "--if-timestamp MS KEY's current version must have timestamp MS",
                 "--if-value JSON KEY's current value must equal JSON", "all must hold",
                 "4 conflict", "3 KEY is absent", "5 CAS is disabled"):
        assert text in cas, text


def test_put_help_states_how_value_is_read(capsys: pytest.CaptureFixture[str]) -> None:
    put = help_text(capsys, "put")
    assert "How VALUE is read" in put and "exits 2" in put and "--string stores the text" in put


SERVICE_OPTIONS = {  # besides --node and --json, which every action takes
    "list": set(),
    "get": {"NAME"},
    "register": {"--address", "--port", "--tag", "--meta", "--ttl", "--cas", "NAME"},
    "renew": {"--ttl", "NAME"},
    "deregister": {"--cas", "NAME"},
}


@pytest.mark.parametrize("action", SERVICE_OPTIONS)
def test_each_services_action_has_its_own_help(capsys: pytest.CaptureFixture[str], action: str) -> None:
    text = help_text(capsys, "services", action)
    assert text.startswith(f"usage: kvs services {action} ")
    for option in SERVICE_OPTIONS[action] | {"--node URL node URL", "--json print JSON"}:
        assert option in text, option
    for option in set().union(*SERVICE_OPTIONS.values()) - SERVICE_OPTIONS[action] - {"NAME"}:
        assert option not in text, option  # only what this action takes
