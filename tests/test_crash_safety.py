"""Crash safety (docs/api.md#durability): kill -9 a node under concurrent write load, again and again.

Each round: a `kvs serve` subprocess takes puts (some with a TTL), deletes, CAS and
if_version increments of a few counters, and transactions (check + set) from several
aiohttp clients; at a random moment it is SIGKILLed. While it is down the data dir is
opened with `Storage` directly; then the node restarts on the same data dir. Checked
after every round, cumulatively over all rounds:

  * `check_consistency()` is [] (Merkle leaves and segments, expiry / purge index and
    the live-key count agree with the revision sets) right after the crash;
  * the index counter never goes backwards: the X-KVS-Index after restart is at least
    every index any response ever showed and every acknowledged modify_index;
  * no index is handed out twice: acknowledged modify_indexes are all distinct, every
    version stored on disk has its own, and a round's acks lie above the index the node
    restarted with;
  * every acknowledged write is still there: its version, with its modify_index, is in
    `?history=true` of its key (the history limit is high enough to keep them all);
  * every counter's history is an unbroken chain n, n-1, ..., 1 (no lost update) and
    its value is at least the highest acknowledged one.

Both in `sync_writes: true` mode and in the default mode (the WAL is written on every
batch, so a process crash must not lose acknowledged writes there either), and in a
"purge" mode (default durability, tombstone_gc_seconds: 1) where crashes also hit the
purges of tombstones and expired keys; there, purged keys legitimately lose their
versions, so presence is checked for the counters only. Run with -s
to read the per-round numbers. KVS_CRASH_SEED=<n> replays a run's random choices.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from kvs.store.storage import Storage
from kvs.testing import KvsNode, NodeGroup
from tests.procs import procs_fixture  # noqa: F401  (the `procs` fixture)

pytestmark = pytest.mark.slow

ROUNDS = 10
WORKERS = 8
HISTORY_LIMIT = 1000
PLAIN_KEYS = 120
COUNTERS = 6
TXN_KEYS = 40
KILL_AFTER = (0.05, 1.0)  # seconds of load before the SIGKILL
GC_SECONDS = 1  # tombstone_gc_seconds in the "purge" mode
MODES = {
    "sync": {"KVS_SYNC_WRITES": "true"},
    "default": {},
    # Tombstones and expired keys are purged a second after they die, so crashes also hit
    # purges. A purged key legitimately loses its acknowledged versions, so in this mode
    # only the counters (never deleted, no TTL) are checked for presence.
    "purge": {"KVS_TOMBSTONE_GC_SECONDS": str(GC_SECONDS)},
}


@dataclass(frozen=True, slots=True)
class Ack:
    """A write the node acknowledged with 200."""

    key: str
    version: str
    modify_index: int
    kind: str
    round: int


@dataclass
class Ledger:
    acks: list[Ack] = field(default_factory=list)
    by_index: dict[int, Ack] = field(default_factory=dict)
    counter_max: dict[str, int] = field(default_factory=dict)  # highest acknowledged value
    max_index_seen: int = 0
    unexpected: list[str] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)

    def ack(self, key: str, result: dict[str, Any], kind: str, rnd: int) -> None:
        ack = Ack(key, result["version"], result["modify_index"], kind, rnd)
        clash = self.by_index.get(ack.modify_index)
        if clash is not None:
            self.unexpected.append(f"modify_index {ack.modify_index} handed out twice: {clash} and {ack}")
        self.by_index[ack.modify_index] = ack
        self.acks.append(ack)
        self.max_index_seen = max(self.max_index_seen, ack.modify_index)
        self.outcomes[kind] += 1


class Crashed(Exception):
    """The node went away under a request (the SIGKILL): the worker stops."""


class Worker:
    def __init__(self, session: aiohttp.ClientSession, url: str, ledger: Ledger,
                 rng: random.Random, rnd: int, wid: int) -> None:
        self.session, self.url, self.ledger, self.rng, self.rnd, self.wid = (
            session, url, ledger, rng, rnd, wid)
        self.seq = 0

    async def call(self, method: str, path: str, body: Any = None,
                   params: dict[str, str] | None = None) -> tuple[int, Any]:
        data = orjson.dumps(body) if body is not None else None
        try:
            async with self.session.request(method, self.url + path, data=data, params=params) as resp:
                raw = await resp.read()
                status = resp.status
                index = int(resp.headers.get("X-KVS-Index", "0"))
        except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
            raise Crashed() from exc
        self.ledger.max_index_seen = max(self.ledger.max_index_seen, index)
        payload = orjson.loads(raw) if raw else None
        if status >= 500:
            self.ledger.unexpected.append(f"{method} {path} -> {status} {payload}")
        return status, payload

    async def run(self) -> None:
        ops = (self.put, self.put, self.put_ttl, self.delete, self.cas_increment,
               self.version_increment, self.txn, self.txn)
        try:
            while True:
                await self.rng.choice(ops)()
        except Crashed:
            return

    def value(self) -> dict[str, Any]:
        self.seq += 1
        return {"round": self.rnd, "worker": self.wid, "seq": self.seq}

    async def _write(self, method: str, key: str, kind: str, body: Any = None,
                     params: dict[str, str] | None = None) -> dict[str, Any] | None:
        status, payload = await self.call(method, f"/kv/{key}", body, params)
        if status == 200:
            self.ledger.ack(key, payload, kind, self.rnd)
            return payload
        self.ledger.outcomes[f"{kind}:{status}"] += 1
        if status not in (404, 409):
            self.ledger.unexpected.append(f"{method} {key} -> {status} {payload}")
        return None

    async def put(self) -> None:
        await self._write("PUT", f"p/{self.rng.randrange(PLAIN_KEYS)}", "put", {"value": self.value()})

    async def put_ttl(self) -> None:
        ttl = round(self.rng.uniform(0.1, 3.0), 3)  # many expire (and get swept) during the run
        await self._write("PUT", f"p/{self.rng.randrange(PLAIN_KEYS)}", "put_ttl",
                          {"value": self.value(), "ttl": ttl})

    async def delete(self) -> None:
        await self._write("DELETE", f"p/{self.rng.randrange(PLAIN_KEYS)}", "delete")

    async def _counter(self) -> tuple[str, dict[str, Any] | None]:
        key = f"c/{self.rng.randrange(COUNTERS)}"
        status, payload = await self.call("GET", f"/kv/{key}")
        return key, payload if status == 200 else None

    def _counted(self, key: str, value: int) -> None:
        self.ledger.counter_max[key] = max(self.ledger.counter_max.get(key, 0), value)

    async def cas_increment(self) -> None:
        key, current = await self._counter()
        value = current["value"] + 1 if current else 1
        cas = current["modify_index"] if current else 0
        if await self._write("PUT", key, "cas", {"value": value, "cas": cas}):
            self._counted(key, value)

    async def version_increment(self) -> None:
        key, current = await self._counter()
        if current is None:
            body: dict[str, Any] = {"value": 1, "cas": 0}
        else:
            body = {"value": current["value"] + 1, "if_version": current["version"]}
        if await self._write("PUT", key, "if_version", body):
            self._counted(key, body["value"])

    async def txn(self) -> None:
        key, current = await self._counter()
        value = current["value"] + 1 if current else 1
        other = f"t/{self.rng.randrange(TXN_KEYS)}"
        ops: list[dict[str, Any]] = [
            {"op": "check", "key": key, "cas": current["modify_index"] if current else 0},
            {"op": "set", "key": key, "value": value},
        ]
        if self.rng.random() < 0.25:
            ops.append({"op": "delete", "key": other})
        else:
            ops.append({"op": "set", "key": other, "value": self.value(),
                        **({"ttl": 2.0} if self.rng.random() < 0.3 else {})})
        status, payload = await self.call("POST", "/txn", {"ops": ops})
        if status != 200:
            self.ledger.outcomes[f"txn:{status}"] += 1
            if status != 409:
                self.ledger.unexpected.append(f"txn -> {status} {payload}")
            return
        for op, result in zip(ops, payload["results"], strict=True):
            if op["op"] in ("set", "delete") and result.get("version") is not None:
                self.ledger.ack(op["key"], result, "txn", self.rnd)
        self._counted(key, value)


@dataclass(frozen=True, slots=True)
class DiskState:
    index: int
    keys: int
    versions: int
    live_keys: int
    expiry_entries: int
    purge_entries: int

    def __str__(self) -> str:
        return (f"disk: keys {self.keys}, versions {self.versions}, live keys {self.live_keys}, "
                f"expiry/purge entries {self.expiry_entries}/{self.purge_entries}")


def inspect_on_disk(data_dir: Path, gc_ms: int) -> DiskState:
    """With the node down: derived structures agree, no modify_index is stored twice."""
    storage = Storage(data_dir, gc_ms=gc_ms)
    try:
        problems = storage.check_consistency()
        assert problems == [], f"inconsistent after kill -9: {problems}"
        seen: dict[int, tuple[str, str]] = {}
        keys = 0
        for versions in storage.scan_sets(""):
            keys += 1
            for v in versions:
                assert v.modify_index not in seen, (
                    f"modify_index {v.modify_index} stored twice: {seen[v.modify_index]} "
                    f"and {(v.key, v.version)}")
                seen[v.modify_index] = (v.key, v.version)
        assert max(seen, default=0) <= storage.index, "a stored modify_index above the counter"
        forever = 1 << 63
        return DiskState(storage.index, keys, len(seen), storage.live_keys,
                         len(storage.due(b"x", forever)), len(storage.due(b"g", forever)))
    finally:
        storage.close()


async def verify_acks(session: aiohttp.ClientSession, url: str, ledger: Ledger,
                      only_counters: bool) -> list[str]:
    """Every acknowledged write is in its key's history; counters are unbroken chains."""
    by_key: dict[str, list[Ack]] = {}
    for ack in ledger.acks:
        if ack.key.startswith("c/") or not only_counters:
            by_key.setdefault(ack.key, []).append(ack)
    losses: list[str] = []
    gate = asyncio.Semaphore(16)

    async def check(key: str, acks: list[Ack]) -> None:
        async with gate, session.get(f"{url}/kv/{key}", params={"history": "true"}) as resp:
            body = orjson.loads(await resp.read())
        revisions = body["revisions"] if resp.status == 200 else []
        stored = {r["version"]: r["modify_index"] for r in revisions}
        oldest = min(stored.values(), default=0)
        for ack in acks:
            if stored.get(ack.version) == ack.modify_index:
                continue
            if len(revisions) >= HISTORY_LIMIT and ack.modify_index < oldest:
                continue  # legitimately pushed out of the bounded history
            losses.append(f"lost acknowledged {ack} (key has {len(revisions)} revisions)")
        if key.startswith("c/") and revisions:
            values = [r["value"] for r in revisions]
            top = values[0]
            assert values == list(range(top, top - len(values), -1)), f"{key} chain broken: {values}"
            assert all(a["parent"] == b["version"] for a, b in itertools.pairwise(revisions)), key
            if len(revisions) < HISTORY_LIMIT:
                assert values[-1] == 1 and revisions[-1]["parent"] is None, key
            assert top >= ledger.counter_max.get(key, 0), f"{key}: {top} < acked {ledger.counter_max[key]}"

    await asyncio.gather(*(check(k, acks) for k, acks in by_key.items()))
    return losses


async def current_index(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(f"{url}/kv/crash-test-probe") as resp:
        await resp.read()
        return int(resp.headers["X-KVS-Index"])


async def run_crash_rounds(node: KvsNode, mode: str, seed: int, gc_ms: int) -> None:
    assert node.data_dir is not None
    rng = random.Random(seed)
    ledger = Ledger()
    restarted_at = 0
    timeout = aiohttp.ClientTimeout(total=20)
    print(f"\n[{mode}] seed={seed} rounds={ROUNDS} workers={WORKERS}")
    for rnd in range(1, ROUNDS + 1):
        before = len(ledger.acks)
        kinds_before = Counter(ledger.outcomes)
        kill_after = rng.uniform(*KILL_AFTER)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            workers = [Worker(session, node.url or "", ledger, random.Random(rng.random()), rnd, w)
                       for w in range(WORKERS)]
            tasks = [asyncio.create_task(w.run()) for w in workers]
            await asyncio.sleep(kill_after)
            node.kill()
            await asyncio.wait_for(asyncio.gather(*tasks), 30)
        assert not ledger.unexpected, ledger.unexpected[:5]
        round_acks = ledger.acks[before:]
        assert all(a.modify_index > restarted_at for a in round_acks), (
            f"round {rnd} handed out an index at or below {restarted_at}, the index it restarted with")

        disk = inspect_on_disk(node.data_dir, gc_ms)
        t0 = time.monotonic()
        await node.astart()
        restart_s = time.monotonic() - t0
        async with aiohttp.ClientSession(timeout=timeout) as session:
            index = await current_index(session, node.url or "")
            assert index >= ledger.max_index_seen, (
                f"index went backwards: {index} after restart, {ledger.max_index_seen} seen before")
            assert index >= restarted_at and index == disk.index, (index, restarted_at, disk.index)
            losses = await verify_acks(session, node.url or "", ledger, only_counters=mode == "purge")
        kinds = {k: v - kinds_before.get(k, 0) for k, v in ledger.outcomes.items()
                 if v - kinds_before.get(k, 0)}
        print(f"[{mode}] round {rnd:2d}: killed after {kill_after:.2f}s, acked {len(round_acks):5d} "
              f"(total {len(ledger.acks):6d}), max index seen {ledger.max_index_seen:6d}, "
              f"index after restart {index:6d}, restart {restart_s:.2f}s, losses {len(losses)}\n"
              f"           {disk}; {dict(sorted(kinds.items()))}")
        assert not losses, f"[{mode}] {len(losses)} acknowledged writes lost: {losses[:10]}"
        restarted_at = index

    assert node.terminate() == 0, node.log_tail()
    inspect_on_disk(node.data_dir, gc_ms)
    indexes = [a.modify_index for a in ledger.acks]
    assert len(indexes) == len(set(indexes))
    assert len(ledger.acks) > ROUNDS * 50, "too little load to mean anything"
    checked = "counters checked" if mode == "purge" else "none lost"
    print(f"[{mode}] done: {ROUNDS} rounds, {len(ledger.acks)} acknowledged writes, {checked}, "
          f"final index {restarted_at}, counters {dict(sorted(ledger.counter_max.items()))}")


@pytest.mark.parametrize("mode", list(MODES))
async def test_kill_9_under_load_loses_nothing(procs: NodeGroup, mode: str) -> None:
    seed = int(os.environ.get("KVS_CRASH_SEED") or random.randrange(1 << 30))
    node = procs.start(mode, env={
        "KVS_CAS_ENABLED": "true",
        "KVS_REVISION_HISTORY_LIMIT": str(HISTORY_LIMIT),
        "KVS_TTL_SWEEP_INTERVAL_MS": "50",
        "KVS_LOG_LEVEL": "warning",
        **MODES[mode],
    })
    gc_seconds = int(MODES[mode].get("KVS_TOMBSTONE_GC_SECONDS", 86_400))
    await run_crash_rounds(node, mode, seed, gc_seconds * 1000)
