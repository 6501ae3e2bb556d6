"""The npm `consul` client against the /v1/ API: tests/consul_client.js, run by Node.js.

The client is installed from the npm registry into this module's own temp dir; the
test is skipped, with the reason, where node or npm is missing or the install fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import NodeFactory

SCRIPT = Path(__file__).with_name("consul_client.js")
INSTALL_TIMEOUT = 300
RUN_TIMEOUT = 120


@pytest.fixture(scope="module")
def node_modules(tmp_path_factory: pytest.TempPathFactory) -> Path:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("the npm consul client needs node and npm, and this machine lacks "
                    f"{'node' if node is None else 'npm'}")
    where = tmp_path_factory.mktemp("npm-consul")
    try:
        done = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--silent", "consul@2"],
                              cwd=where, capture_output=True, text=True, timeout=INSTALL_TIMEOUT,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        pytest.skip(f"npm install consul did not finish in {INSTALL_TIMEOUT}s")
    if done.returncode != 0:
        pytest.skip(f"npm install consul failed: {(done.stderr or done.stdout)[-500:]}")
    return where / "node_modules"


async def test_npm_consul_client_kv_and_session_cases(make_node: NodeFactory, node_modules: Path) -> None:
    """put/get/delete, binary and raw values, flags, cas success and failure, recurse, keys
    with a separator, a blocking get that wakes on a write and one that times out, a
    txn that succeeds and a failing one that writes nothing; sessions (create, info,
    list, node, renew, destroy, a bad TTL), a lock through two sessions, an unknown
    session refused, and a 1s session expiring with its lock released (the node allows
    TTLs under Consul's 10s for it)."""
    node = await make_node(consul_session_min_ttl_seconds=1, ttl_sweep_interval_ms=100)
    proc = await asyncio.create_subprocess_exec(
        "node", str(SCRIPT), env={**os.environ, "KVS_PORT": str(node.port), "NODE_PATH": str(node_modules)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=True)
    try:
        output, _ = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT)
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    text = output.decode(errors="replace")
    assert proc.returncode == 0, text
    assert text.strip().endswith("ok"), text
