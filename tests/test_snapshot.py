"""Backup and restore: `kvs snapshot save` from a running node, `kvs snapshot restore` into a
fresh data dir, a node on it with the same data and Merkle root, joining and converging;
bad snapshots refused with nothing written."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import aiohttp

from kvs.node import Node
from kvs.testing import run_kvs
from tests.cluster import converged, dump
from tests.conftest import Api, NodeFactory

SECRET = "snapshot-test-secret"


async def kvs(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The real `kvs` command, off the event loop (the node it talks to runs on it)."""
    return await asyncio.to_thread(run_kvs, *args, env=env or None)


async def _fill(api: Api) -> None:
    for i in range(50):
        assert (await api.put(f"data/{i:03d}", {"value": {"i": i}})).status == 200
    assert (await api.put("data/000", {"value": "second"})).status == 200  # history
    assert (await api.delete("data/001")).status == 200  # a tombstone
    assert (await api.put("lease", {"value": "x", "ttl": 3600})).status == 200


async def _status(http: aiohttp.ClientSession, node: Node) -> dict[str, Any]:
    async with http.get(node.url + "/cluster/status") as reply:
        return await reply.json()  # type: ignore[no-any-return]


async def test_restored_node_has_the_same_data_and_root_then_joins_and_converges(
        make_node: NodeFactory, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    source = await make_node(sync_interval_ms=200)
    await _fill(Api(http, source.url))
    file = tmp_path / "backup.snap"
    saved = await kvs("snapshot", "save", str(file), "--node", source.url)
    assert saved.returncode == 0, saved.stdout + saved.stderr
    restored_dir = tmp_path / "restored"
    restored = await kvs("snapshot", "restore", str(file), "--data-dir", str(restored_dir))
    assert restored.returncode == 0, restored.stdout + restored.stderr

    copy = await make_node(data_dir=str(restored_dir), sync_interval_ms=200)
    assert copy.engine and source.engine and copy.engine.node_id != source.engine.node_id
    assert (await _status(http, copy))["merkle_root"] == (await _status(http, source))["merkle_root"]
    assert dump(copy) == dump(source)
    assert (await Api(http, copy.url).get("data/000")).body["value"] == "second"

    # Written after the snapshot: the copy catches up once it joins the source's cluster.
    assert (await Api(http, source.url).put("after", {"value": 1})).status == 200
    await copy.stop()
    rejoined = await make_node(data_dir=str(restored_dir), sync_interval_ms=200,
                               seed_nodes=[source.address])
    await converged([source, rejoined])
    assert (await Api(http, rejoined.url).get("after")).status == 200

async def test_a_truncated_or_corrupted_snapshot_is_refused_and_nothing_is_written(
        make_node: NodeFactory, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    source = await make_node()
    await _fill(Api(http, source.url))
    good = tmp_path / "good.snap"
    assert (await kvs("snapshot", "save", str(good), "--node", source.url)).returncode == 0
    data = good.read_bytes()
    bad_files = {
        "truncated": data[: len(data) // 2],
        "no trailer": data[:-5],
        "one byte flipped": data[:200] + bytes([data[200] ^ 0x01]) + data[201:],
        "not a snapshot": b"hello world\n" * 10,
    }
    for name, content in bad_files.items():
        bad = tmp_path / f"{name}.snap"
        bad.write_bytes(content)
        target = tmp_path / f"restore-{name.replace(' ', '-')}"
        result = await kvs("snapshot", "restore", str(bad), "--data-dir", str(target))
        assert result.returncode == 1, (name, result.stdout)
        assert "nothing was written" in result.stdout and "Traceback" not in result.stderr, name
        assert not target.exists(), f"{name}: a data dir was created"
        assert not [p for p in tmp_path.iterdir() if ".restoring-" in p.name], name


async def test_with_a_cluster_secret_only_a_holder_of_the_secret_can_save(
        make_node: NodeFactory, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    source = await make_node(cluster_secret=SECRET)
    await _fill(Api(http, source.url))
    file = tmp_path / "s.snap"
    refused = await kvs("snapshot", "save", str(file), "--node", source.url)
    assert refused.returncode == 1 and "401" in refused.stdout
    assert not file.exists() and not file.with_name("s.snap.partial").exists()
    allowed = await kvs("snapshot", "save", str(file), "--node", source.url, KVS_CLUSTER_SECRET=SECRET)
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    assert file.stat().st_size > 0
