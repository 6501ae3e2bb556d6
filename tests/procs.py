"""The `procs` fixture: real `kvs serve` subprocesses through kvs.testing, killed at teardown.

    async def test_x(procs: NodeGroup) -> None:
        node = procs.start("a", env={"KVS_CAS_ENABLED": "true"})   # --port 0, URL from the banner
        node.kill(); await node.astart()                            # same data dir and port

Import `procs_fixture` into a test module (`from tests.procs import procs_fixture  #
noqa: F401`) or into the root conftest, then ask for `procs`. Everything else lives in
kvs.testing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kvs.testing import NodeGroup


@pytest.fixture(name="procs")
def procs_fixture(tmp_path: Path) -> Iterator[NodeGroup]:
    """A NodeGroup under tmp_path/procs; every node is killed at teardown, pass or fail."""
    with NodeGroup(tmp_path / "procs") as group:
        yield group
