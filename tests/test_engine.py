"""The engine driven directly: a real Storage (RocksDB in a temp dir) and an injected clock.

No HTTP, no event-loop tricks: what the engine promises its callers (index numbers,
settled writes, listeners that cannot break a write, TTL by the clock it is given).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from kvs.conditions import Conditions
from kvs.config import load
from kvs.engine import Engine, Op
from kvs.errors import CASConflict, NotFound
from kvs.model import Version
from kvs.store.storage import Storage

START_MS = 1_800_000_000_000


class Clock:
    """A wall clock that moves only when the test says so."""

    def __init__(self, now: int = START_MS) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def open_engine(tmp_path: Path, clock: Clock) -> AsyncIterator[Callable[..., Engine]]:
    """Open (or reopen) an engine on tmp_path/db; every storage is closed at the end."""
    opened: list[Storage] = []

    def factory(**settings: object) -> Engine:
        config = load(environ={}, overrides={"cas_enabled": True, **settings})
        storage = Storage(tmp_path / "db", gc_ms=config.tombstone_gc_seconds * 1000,
                          sync_writes=config.sync_writes)
        storage.ensure_identity("n1", clock())
        opened.append(storage)
        return Engine(config, storage, clock)

    yield factory
    for storage in opened:
        if storage.db is not None:
            storage.close()


def close(engine: Engine) -> None:
    engine.storage.close()
    engine.storage.db = None  # type: ignore[assignment]  # closed: the fixture skips it


def put(key: str, value: object, **kw: object) -> Op:
    return Op("set", key, value, **kw)  # type: ignore[arg-type]


async def test_each_version_takes_the_next_index_and_a_refused_mutation_takes_none(
        open_engine: Callable[..., Engine]) -> None:
    engine = open_engine()
    first = await engine.put(put("a", 1))
    assert first.modify_index == engine.index == 1
    results = await engine.txn([put("b", 2), put("c", 3)])
    assert [r.modify_index for r in results] == [2, 3]
    with pytest.raises(CASConflict):
        await engine.txn([put("d", 4), Op("check", "a", cond=Conditions(cas=99))])
    assert engine.index == 3, "a refused transaction must not use up index numbers"
    assert (await engine.put(put("e", 5))).modify_index == 4


async def test_a_write_returns_only_once_it_is_written_and_counters_survive_a_reopen(
        open_engine: Callable[..., Engine], clock: Clock) -> None:
    engine = open_engine()
    version = await engine.put(put("k", "v"))
    commits = engine.storage.commits
    assert not engine.unsettled and commits.written == commits.issued
    clock.now += 5
    stamp = engine.hlc.last
    close(engine)  # no flush needed: the write was settled when put() returned
    reopened = open_engine()
    assert reopened.get("k").version == version.version
    assert reopened.index == 1
    assert reopened.hlc.tick() > stamp, "the HLC handed to storage at stage time was persisted"


async def test_sync_writes_return_only_after_the_fsync(open_engine: Callable[..., Engine]) -> None:
    engine = open_engine(sync_writes=True)
    await engine.put(put("k", "v"))
    commits = engine.storage.commits
    assert commits.synced == commits.issued and commits.syncs >= 1


async def test_a_failed_transaction_tells_no_listener(open_engine: Callable[..., Engine]) -> None:
    """Its earlier ops were applied to the overlay, never staged: replication must not push
    them and blocking queries must not wake for them."""
    engine = open_engine()
    heard: list[list[Version]] = []
    engine.listeners.append(heard.append)
    with pytest.raises(CASConflict):
        await engine.txn([put("x", 1), Op("check", "missing", cond=Conditions(if_value=1))])
    assert heard == []
    await engine.put(put("y", 2))
    assert [[v.key for v in batch] for batch in heard] == [["y"]]


async def test_a_raising_listener_cannot_break_a_committed_write(
        open_engine: Callable[..., Engine]) -> None:
    engine = open_engine()
    heard: list[str] = []

    def broken(versions: list[Version]) -> None:
        raise RuntimeError("listener bug")

    engine.listeners.extend([broken, lambda versions: heard.extend(v.key for v in versions)])
    version = await engine.put(put("k", "v"))
    assert engine.get("k").version == version.version
    assert heard == ["k"], "the listener after the broken one still heard"
    assert engine.stats.listener_errors == 1


async def test_ttl_follows_the_injected_clock_and_the_sweeper_reports_expiries(
        open_engine: Callable[..., Engine], clock: Clock) -> None:
    engine = open_engine()
    expired: list[list[str]] = []
    engine.expiry_listeners.append(expired.append)
    await engine.put(put("lease", "me", ttl_ms=1000))
    clock.now += 999
    assert engine.get("lease").value == "me"
    assert await engine.sweep() == (0, 0)
    clock.now += 1
    with pytest.raises(NotFound):
        engine.get("lease")
    assert await engine.sweep() == (1, 0)
    assert expired == [["lease"]]
    assert engine.status()["keys"] == 0


async def test_remote_versions_apply_once_in_any_order(open_engine: Callable[..., Engine],
                                                       clock: Clock) -> None:
    engine = open_engine()
    older = Version("k", "old", "00000000-0000-4000-8000-000000000001", clock.now - 10, 0, "n2", 5)
    newer = Version("k", "new", "00000000-0000-4000-8000-000000000002", clock.now - 5, 0, "n2", 5,
                    parent=older.version)
    assert [v.version for v in await engine.apply_remote([newer, older])] == [newer.version,
                                                                              older.version]
    assert await engine.apply_remote([dataclasses.replace(older), dataclasses.replace(newer)]) == []
    assert engine.get("k").value == "new"
    assert [v.version for v in engine.history("k")] == [newer.version, older.version]
    assert engine.hlc.tick() > (newer.timestamp, newer.logical), "remote stamps are observed"


async def test_status_and_sync_view_describe_the_same_data(open_engine: Callable[..., Engine]) -> None:
    engine = open_engine()
    for i in range(3):
        await engine.put(put(f"k/{i}", i))
    status = engine.status()
    assert (status["node"], status["keys"], status["index"]) == ("n1", 3, 3)
    assert status["merkle_root"] == f"{engine.sync.tree.root():016x}" != f"{0:016x}"
    assert [sets[0].key for sets in engine.sync.dump()] == ["k/0", "k/1", "k/2"]
    assert [v.key for v in engine.sync.revisions(["k/1"])] == ["k/1"]
    assert engine.modify_index("k/", prefix=True) == 3 and engine.modify_index("k/0") == 1


async def test_a_ttl_counts_from_the_stamp_or_from_the_wall_clock_when_the_hlc_runs_ahead(
        open_engine: Callable[..., Engine], clock: Clock) -> None:
    engine = open_engine()
    ticking = engine.now_ms

    def one_ms_per_read() -> int:  # a loaded machine: a millisecond passes between any two reads
        clock.now += 1
        return ticking()

    engine.now_ms = engine.hlc.now_ms = one_ms_per_read  # type: ignore[method-assign]
    lease = await engine.put(put("lease", 1, ttl_ms=60_000))
    assert lease.expires_at == lease.timestamp + 60_000
    ahead = clock.now + 400  # a peer's clock 400 ms fast, within the allowed offset
    engine.hlc.observe((ahead, 0))
    fast = await engine.put(put("fast", 1, ttl_ms=1_000))
    assert fast.timestamp >= ahead and fast.expires_at is not None
    assert fast.expires_at <= clock.now + 1_000 < fast.timestamp + 1_000  # the wall clock's TTL
