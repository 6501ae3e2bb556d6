"""A full disk, on a real 20 MB tmpfs under a real `kvs serve`: reads and /health go on,
writes answer 507 without file paths, the log stays quiet, the node heals by itself once
space returns, and a kill -9 afterwards loses no acknowledged write."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from kvs.store.storage import Storage
from kvs.testing import NodeGroup
from tests.conftest import Api, eventually
from tests.procs import procs_fixture  # noqa: F401  (the `procs` fixture)

DISK_BYTES = 20 << 20
FILLER_BYTES = 12 << 20  # freeing it leaves room for the node's write-ahead log (~8 MB) to replay
VALUE = "v" * 2000
WRITERS = 16


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 20 MB tmpfs (needs root). Requested before `procs`, so it is unmounted after the
    node on it was killed."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


class Outcomes:
    """What each write was answered: acknowledged (key -> version), or a 507 either for an
    unknown outcome (its batch failed) or refused (nothing written)."""

    def __init__(self) -> None:
        self.acked: dict[str, str] = {}
        self.unknown: list[str] = []
        self.refused: list[str] = []
        self.messages: set[str] = set()


async def fill(api: Api, outcomes: Outcomes) -> None:
    """Write new keys from WRITERS clients until each has been answered 507."""
    counter = iter(range(10**9))

    async def writer() -> None:
        while True:
            key = f"k{next(counter):07d}"
            reply = await api.put(key, {"value": VALUE})
            if reply.status == 200:
                outcomes.acked[key] = reply.body["version"]
                continue
            assert reply.status == 507 and reply.body["error"] == "storage_full", reply
            outcomes.messages.add(reply.body["message"])
            unknown = "outcome is unknown" in reply.body["message"]
            (outcomes.unknown if unknown else outcomes.refused).append(key)
            return

    await asyncio.gather(*(writer() for _ in range(WRITERS)))


@pytest.mark.parametrize("sync_writes", ["false", "true"])
async def test_a_full_disk_stops_writes_only_and_heals_when_space_returns(
        small_disk: Path, procs: NodeGroup, http: aiohttp.ClientSession,
        sync_writes: str) -> None:
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * FILLER_BYTES)
    node = procs.start("full", data_dir=small_disk / "data",
                       env={"KVS_STORAGE_RETRY_INTERVAL_MS": "200",
                            "KVS_SYNC_WRITES": sync_writes})
    assert node.url is not None
    api = Api(http, node.url)
    outcomes = Outcomes()
    await fill(api, outcomes)
    assert outcomes.acked and outcomes.unknown, "no batch failed: the disk never filled up"

    # Full: reads and /health are served, every write is refused with 507 and no path.
    some_key, some_version = next(iter(outcomes.acked.items()))
    reply = await api.get(some_key)
    assert reply.status == 200 and reply.body["version"] == some_version
    listing = await api.get("k", recurse="true", limit="2")
    assert listing.status == 200 and len(listing.body["items"]) == 2
    health = await api.request("GET", "/health")
    assert health.status == 200 and health.body["status"] == "degraded", health
    assert health.body["problems"][0]["error"] == "storage_full"
    for reply in (await api.put("refused", {"value": 1}), await api.delete(some_key)):
        assert reply.status == 507 and "nothing was written" in reply.body["message"], reply
        outcomes.messages.add(reply.body["message"])
    assert not [m for m in outcomes.messages if "/" in m or ".log" in m], outcomes.messages

    # While it stays full, the log does not grow (no traceback per sweep or retry).
    log_size = node.log_path.stat().st_size
    await asyncio.sleep(2.0)  # ten retry intervals, two sweeper rounds
    grown = node.log_path.stat().st_size - log_size
    assert grown == 0, node.log_tail(10)

    # Space returns: the node heals without a restart.
    filler.unlink()
    freed = time.monotonic()

    async def accepts_writes() -> bool:
        reply = await api.put("after", {"value": "healed"})
        if reply.status == 200:
            outcomes.acked["after"] = reply.body["version"]
        return reply.status == 200

    await eventually(accepts_writes, timeout=30, interval=0.05, what="writes accepted again")
    healed_in = time.monotonic() - freed
    health = await api.request("GET", "/health")
    assert health.body == {"status": "ok", "node": node.node_id}
    # The batch that failed was kept and written: those writes happened after all.
    for key in outcomes.unknown:
        assert (await api.get(key)).status == 200, key
    assert (await api.get("refused")).status == 404
    print(f"{len(outcomes.acked)} acknowledged writes; healed {healed_in:.2f}s after space "
          f"returned; log grew {grown} bytes in 2 s while full")

    # A crash now loses no acknowledged write, and what is on disk is consistent.
    node.restart(hard=True)
    api = Api(http, node.url)
    for key, version in outcomes.acked.items():
        reply = await api.get(key)
        assert reply.status == 200 and reply.body["version"] == version, (key, reply)
    node.kill()
    storage = Storage(small_disk / "data")
    try:
        assert storage.check_consistency() == []
    finally:
        storage.close()
