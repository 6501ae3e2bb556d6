"""The `procs` fixture: real `kvs serve` subprocesses through kvs.testing, killed at teardown.

    async def test_x(procs: NodeGroup) -> None:
        node = procs.start("a", env={"KVS_CAS_ENABLED": "true"})   # --port 0, URL from the banner
        node.kill(); await node.astart()                            # same data dir and port

Import `procs_fixture` into a test module (`from tests.procs import procs_fixture  #
noqa: F401`) or into the root conftest, then ask for `procs`. Everything else lives in
kvs.testing; the other names here are what test modules imported from this module before
it moved there (new code imports kvs.testing).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kvs.testing import KvsNode as KvsProcess
from kvs.testing import NodeGroup as ProcessGroup
from kvs.testing import NodeGroup as process_group
from kvs.testing import free_port, kvs_command
from kvs.testing import node_env as kvs_env
from kvs.testing import run_kvs as run_cli

__all__ = ["KvsProcess", "ProcessGroup", "free_port", "kvs_command", "kvs_env", "process_group",
           "procs_fixture", "run_cli"]


@pytest.fixture(name="procs")
def procs_fixture(tmp_path: Path) -> Iterator[ProcessGroup]:
    """A NodeGroup under tmp_path/procs; every node is killed at teardown, pass or fail."""
    with ProcessGroup(tmp_path / "procs") as group:
        yield group
