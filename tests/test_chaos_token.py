"""`kvs chaos --url` against a real `kvs serve` subprocess with ACLs on: the run's requests
carry --token (or $KVS_TOKEN), and without one the run says so instead of failing thousands
of calls or printing a traceback."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from kvs.chaos.history import load_history
from kvs.chaos.runner import masked_argv
from kvs.testing import KvsNode, NodeGroup, run_kvs


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KvsNode]:
    with NodeGroup(tmp_path_factory.mktemp("chaos-token")) as group:
        # What the nodes a run starts have: CAS, and enough history for the checkers' lookups.
        yield group.start("n1", env={"KVS_ACL_ENABLED": "true", "KVS_CAS_ENABLED": "true",
                                     "KVS_REVISION_HISTORY_LIMIT": "1000"})


@pytest.fixture(scope="module")
def token(node: KvsNode) -> str:
    booted = run_kvs("acl", "bootstrap", "--json", "--node", node.url or "")
    assert booted.returncode == 0, booted.stderr
    return str(json.loads(booted.stdout)["secret"])


def chaos(node: KvsNode, out: Path, *extra: str, env: dict[str, str | None] | None = None,
          ) -> subprocess.CompletedProcess[str]:
    return run_kvs("chaos", "--url", node.url or "", "--clients", "2", "--duration", "2", "--seed", "7",
                   "--workload", "register", "--converge-timeout", "10", "--out", str(out), *extra,
                   env=env, timeout=120)


@pytest.mark.parametrize("where", ["option", "environment"])
def test_a_run_with_the_token_is_never_refused(node: KvsNode, token: str, tmp_path: Path, where: str) -> None:
    out = tmp_path / "run"
    result = (chaos(node, out, "--token", token) if where == "option"
              else chaos(node, out, env={"KVS_TOKEN": token}))
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    history = load_history(out)
    assert sum(1 for op in history.calls if op.ok) > 10, report
    refused = [op for op in history.calls if op.status in (401, 403)]
    assert refused == [], refused[:3]
    assert orjson.loads((out / "checks.json").read_bytes())["passed"], report
    assert token not in (out / "history.jsonl").read_text()


def test_a_run_without_a_token_names_the_refusal(node: KvsNode, token: str, tmp_path: Path) -> None:
    result = chaos(node, tmp_path / "run", env={"KVS_TOKEN": None})
    assert result.returncode == 2, result.stdout + result.stderr
    assert "HTTP 401" in result.stdout and "no ACL token was given" in result.stdout, result.stdout
    assert "--token" in result.stdout and "Traceback" not in result.stdout + result.stderr


def test_a_refused_token_is_named_too(node: KvsNode, token: str, tmp_path: Path) -> None:
    result = chaos(node, tmp_path / "run", "--token", "not-a-token")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "the token given is refused" in result.stdout, result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_token_without_url_is_a_usage_error(tmp_path: Path) -> None:
    result = run_kvs("chaos", "--token", "x", "--out", str(tmp_path / "run"))
    assert result.returncode == 2 and "--token is for --url nodes" in result.stderr, result.stderr


def test_the_history_keeps_no_secret_of_the_command_line() -> None:
    argv = ["kvs", "chaos", "--token", "t0k", "--cluster-secret=s3c", "--url", "http://n1"]
    assert masked_argv(argv) == ["kvs", "chaos", "--token", "***", "--cluster-secret=***", "--url", "http://n1"]
