"""`kvs acl ...` and --token / KVS_TOKEN against a real `kvs serve` subprocess with ACLs on."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvs.cli import EXIT_CONFLICT, EXIT_DENIED, EXIT_USAGE
from kvs.testing import KvsNode, NodeGroup, run_kvs


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KvsNode]:
    with NodeGroup(tmp_path_factory.mktemp("acl-cli")) as group:
        yield group.start("n1", env={"KVS_ACL_ENABLED": "true", "KVS_CAS_ENABLED": "true"})


def kvs(node: KvsNode, *args: str, token: str | None = None,
        env_token: str | None = None) -> subprocess.CompletedProcess[str]:
    extra = ["--token", token] if token else []
    return run_kvs(*args, "--node", node.url or "", *extra,
                   env={"KVS_TOKEN": env_token} if env_token else None)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return result.stdout


def test_bootstrap_policies_tokens_and_every_command_with_a_token(node: KvsNode, tmp_path: Path) -> None:
    admin = json.loads(ok(kvs(node, "acl", "bootstrap", "--json")))
    again = kvs(node, "acl", "bootstrap")
    assert again.returncode == EXIT_CONFLICT and "bootstrapped already" in again.stderr
    secret = admin["secret"]
    ok(kvs(node, "acl", "policy", "create", "app", "--rule", "app/=write", "--rule",
           "app/secret/=deny", "--operator", "read", token=secret))
    listed = ok(kvs(node, "acl", "policy", "list", token=secret))
    assert "app/=write app/secret/=deny" in listed and "global-management" in listed
    bad = kvs(node, "acl", "policy", "create", "p2", "--rule", "x=admin", token=secret)
    assert bad.returncode == 1 and "access must be one of read, write, deny" in bad.stderr
    assert kvs(node, "acl", "policy", "create", "p3", "--rule", "noequals").returncode == EXIT_USAGE
    made = json.loads(ok(kvs(node, "acl", "token", "create", "--policy", "app", "--description",
                             "ci", "--json", token=secret)))
    user = made["secret"]
    ok(kvs(node, "put", "app/db", "1", env_token=user))  # KVS_TOKEN
    assert json.loads(ok(kvs(node, "get", "app/db", token=user)))["value"] == 1
    denied = kvs(node, "put", "other", "1", token=user)
    assert denied.returncode == EXIT_DENIED and "may not write key 'other'" in denied.stderr
    missing = kvs(node, "get", "app/db")
    assert missing.returncode == EXIT_DENIED and "needs an ACL token" in missing.stderr
    ok(kvs(node, "status", token=user))  # the policy's operator read
    assert kvs(node, "acl", "token", "list", token=user).returncode == EXIT_DENIED
    assert made["id"] in ok(kvs(node, "acl", "token", "list", token=secret))
    save = run_kvs("snapshot", "save", str(tmp_path / "s.snap"), "--node", node.url or "",
                   "--token", secret)
    assert save.returncode == 0, save.stderr
    ok(kvs(node, "acl", "token", "delete", made["id"], token=secret))
    revoked = kvs(node, "get", "app/db", token=user)
    assert revoked.returncode == EXIT_DENIED and "not known" in revoked.stderr
    assert kvs(node, "acl", "token", "delete", made["id"], token=secret).returncode == 3
