"""A node's start and stop: whatever started is torn down, also after a half-way start."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from aiohttp import web

from kvs.node import Node
from tests.conftest import node_config


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_a_start_that_fails_half_way_releases_the_port_and_the_data_dir(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    port = _free_port()
    config = node_config(port=port, data_dir=str(tmp_path / "data"))

    async def broken_setup(self: web.AppRunner) -> None:
        raise RuntimeError("injected: the HTTP server could not be set up")

    with monkeypatch.context() as patched:
        patched.setattr(web.AppRunner, "setup", broken_setup)
        with pytest.raises(RuntimeError, match="injected") as failed:
            await Node(config).start()
    # The error is still held (as a caller reporting it would): whatever its traceback
    # references must already be closed, not left to the garbage collector.
    assert failed.value.__traceback__ is not None
    with socket.socket() as again:  # the listening socket bound before the failure is closed
        again.bind(("127.0.0.1", port))
    node = Node(config)  # and RocksDB's lock on the data dir was released
    await node.start()
    try:
        assert node.port == port
    finally:
        await node.stop()
        await node.stop()  # twice is harmless
