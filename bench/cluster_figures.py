"""Cluster figures: latency of replication, cost of anti-entropy, recovery, start-up.

Over real processes (a running `KvsTarget` / `EtcdTarget` of 3 nodes):
  write_to_visible    PUT on node i, poll node i+1 until the key is there; p50/p99 over N trials
  failure_detection   SIGKILL one kvs node; time until the others list it "suspect", then "dead"
  startup_rss         `kvs serve` on a data dir holding n keys: time to /health 200, and RSS
  quorum_budget       issue 14's latency budget for quorum CAS over local CAS: two loopback
                      HTTP round trips plus one fsync, each measured on the idle cluster

In process (real `kvs.node.Node`s on loopback, in the harness's own event loop):
  anti_entropy_curve  bytes and ms of one `Replicator.sync_with` round for d differing keys
                      out of n (the two nodes start as byte copies of one data set)
  partition_convergence  3 nodes, cut {A} | {B, C}, write keys on both sides, wait until each
                      side declares the other dead, heal: time until all Merkle roots agree
"""

from __future__ import annotations

import asyncio
import http.client
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from statistics import median
from typing import Any

from bench.targets import START_TIMEOUT, Http, KvsTarget, Target, pinned, rss_bytes
from kvs.engine import Op
from kvs.testing import KvsNode

Progress = Callable[[str], None]
VISIBLE_TIMEOUT = 5.0


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (pct in 0..100) of a non-empty sequence."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


# -- over processes -------------------------------------------------------------------------

def write_to_visible(target: Target, trials: int, progress: Progress, tag: str = "w2v") -> dict[str, Any]:
    """PUT through node i (round robin), then poll node i+1 until the key reads back."""
    if len(target.urls) < 2:
        raise ValueError("write_to_visible needs a cluster")
    clients = [Http(url) for url in target.urls]
    visible_ms: list[float] = []
    ack_ms: list[float] = []
    timeouts = 0
    run = time.time_ns() % 1_000_000_000
    try:
        for i in range(trials):
            src = i % len(clients)
            dst = (src + 1) % len(clients)
            key = f"bench/{tag}/{run}/{i}"
            started = time.perf_counter()
            target.put(clients[src], key, "x")
            acked = time.perf_counter()
            while not target.visible(clients[dst], key):
                if time.perf_counter() - started > VISIBLE_TIMEOUT:
                    timeouts += 1
                    break
            else:
                visible_ms.append((time.perf_counter() - started) * 1000)
            ack_ms.append((acked - started) * 1000)
    finally:
        for client in clients:
            client.close()
    result = {
        "trials": trials, "timeouts": timeouts,
        "p50_ms": percentile(visible_ms, 50) if visible_ms else None,
        "p99_ms": percentile(visible_ms, 99) if visible_ms else None,
        "max_ms": max(visible_ms) if visible_ms else None,
        "ack_p50_ms": percentile(ack_ms, 50),
    }
    progress(f"{target.name}: write-to-visible over {trials} trials: p50 {_ms(result['p50_ms'])}, "
             f"p99 {_ms(result['p99_ms'])} (ack p50 {_ms(result['ack_p50_ms'])}, timeouts {timeouts})")
    return result


def failure_detection(target: KvsTarget, progress: Progress, timeout: float = 60.0) -> dict[str, Any]:
    """SIGKILL the last node; poll /cluster/members on the others until it is suspect, then dead."""
    victim_proc = target.procs[-1]
    victim = target.node_ids[-1]
    observers = target.urls[:-1]
    suspect_at: dict[str, float] = {}
    dead_at: dict[str, float] = {}
    victim_proc.kill()
    killed = time.perf_counter()
    while len(dead_at) < len(observers):
        now = time.perf_counter() - killed
        if now > timeout:
            break
        for url in observers:
            if url in dead_at:
                continue
            try:
                members = target.members(url)
            except (OSError, http.client.HTTPException):
                continue  # a busy observer: ask again on the next pass
            state = next((m.get("state") for m in members if m.get("id") == victim), None)
            if state in ("suspect", "dead") and url not in suspect_at:
                suspect_at[url] = now
            if state == "dead":
                dead_at[url] = now
        time.sleep(0.01)
    result = {
        "observers": len(observers),
        "suspect_s": max(suspect_at.values()) if len(suspect_at) == len(observers) else None,
        "dead_s": max(dead_at.values()) if len(dead_at) == len(observers) else None,
        "dead_first_s": min(dead_at.values()) if dead_at else None,
    }
    progress(f"{target.name}: failure detection after SIGKILL: every observer says suspect after "
             f"{_s(result['suspect_s'])}, dead after {_s(result['dead_s'])}")
    return result


def quorum_budget(target: KvsTarget, trials: int, progress: Progress) -> dict[str, Any]:
    """The budget quorum CAS may add to local CAS's p50 (issue 14): 2 round trips + 1 fsync.

    A round trip is one HTTP request from the harness to node 2 on a keep-alive connection
    (GET /health: the same loopback hop and HTTP stack the proposer's Accept uses); the fsync
    is a small append + os.fsync in the cluster's directory (the nodes' disk), what one group
    commit of the acceptors' WAL costs. Both are p50s, measured with no other load."""
    rtt = loopback_rtt_ms(target.urls[1 % len(target.urls)], trials)
    sync = fsync_ms(target.dir, max(20, trials // 10))
    result = {"rtt_ms": rtt, "fsync_ms": sync, "budget_ms": 2 * rtt + sync}
    progress(f"{target.name}: quorum budget: round trip p50 {_ms(rtt)}, fsync p50 {_ms(sync)}: "
             f"2 x rtt + fsync = {_ms(result['budget_ms'])}")
    return result


def loopback_rtt_ms(url: str, trials: int) -> float:
    """p50 of GET /health round trips to an idle node, in ms."""
    client = Http(url)
    times: list[float] = []
    try:
        for _ in range(trials):
            started = time.perf_counter()
            status, _ = client.request("GET", "/health")
            times.append((time.perf_counter() - started) * 1000)
            if status != 200:
                raise RuntimeError(f"GET {url}/health -> {status}")
    finally:
        client.close()
    return percentile(times, 50)


def fsync_ms(directory: Path, trials: int) -> float:
    """p50 of appending 128 bytes to a file in `directory` and fsyncing it, in ms."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "fsync-probe"
    times: list[float] = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for _ in range(trials):
            started = time.perf_counter()
            os.write(fd, b"x" * 128)
            os.fsync(fd)
            times.append((time.perf_counter() - started) * 1000)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    return percentile(times, 50)


def startup_rss(data_dir: Path, keys: int, log_dir: Path, cpus: str | None, progress: Progress,
                probe_key: str | None = None) -> dict[str, Any]:
    """Start `kvs serve` on an existing data dir; time to /health 200 and resident memory."""
    node = KvsNode("startup", log=log_dir / "startup.log", data_dir=data_dir, launcher=pinned([], cpus),
                   env={"KVS_CAS_ENABLED": "true"}, cwd=log_dir)
    try:
        node.start(START_TIMEOUT * 5, interval=0.005)
        startup_s = time.perf_counter() - node.started_at
        rss_start = rss_bytes(node)
        client = Http(str(node.url))
        found = None
        if probe_key is not None:
            found = client.request("GET", f"/kv/{probe_key}")[0] == 200
        status, body = client.request("GET", "/cluster/status")
        key_count = body.get("keys") if status == 200 and isinstance(body, dict) else None
        time.sleep(1.0)
        rss_idle = rss_bytes(node)
        client.close()
    finally:
        node.terminate()
    result = {"keys": keys, "startup_s": startup_s, "rss_mb": (rss_start or 0) / 2**20,
              "rss_idle_mb": (rss_idle or 0) / 2**20, "reported_keys": key_count, "probe_found": found}
    progress(f"start-up with {keys:,} keys: {startup_s:.2f} s to /health 200, RSS {result['rss_mb']:.0f} MB "
             f"({result['rss_idle_mb']:.0f} MB after 1 s idle; node reports {key_count} keys)")
    return result


# -- in process -----------------------------------------------------------------------------

def _quiet_logs() -> None:
    logging.getLogger("kvs").setLevel(logging.WARNING)
    logging.getLogger("aiohttp").setLevel(logging.ERROR)


async def _node(data_dir: Path, **settings: Any) -> Any:
    from kvs.config import load
    from kvs.node import Node

    config = load(environ={}, overrides={"port": 0, "data_dir": str(data_dir), "cas_enabled": True,
                                         **settings})
    node = Node(config)
    await node.start()
    return node


async def load_keys(node: Any, n: int, progress: Progress, batch: int = 5000, *,
                    key: Callable[[int], str] = "user/{:07d}".format, value: Any = None) -> None:
    """n keys (user/0000000.. unless `key` names them) as replicated versions, in batches
    (the fast path of a bulk load); `value` None: a small object that differs per key."""
    from kvs.model import Version, new_version_id

    started = time.perf_counter()
    for start in range(0, n, batch):
        versions = [Version(key(i), {"n": i, "pad": "x" * 40} if value is None else value,
                            new_version_id(), 1_700_000_000_000 + i, 0, "seed", 1)
                    for i in range(start, min(n, start + batch))]
        await node.engine.apply_remote(versions)
        await asyncio.sleep(0)
        if n >= 200_000 and (start + batch) % 100_000 == 0:
            progress(f"  loaded {start + batch:,}/{n:,} keys ({time.perf_counter() - started:.0f} s)")


def _forget_identity(data_dir: Path) -> None:
    """Make a byte copy of a data dir a different node: drop its stored node id (and joined_at).

    Uses the storage layout (kvs.keys.META_NODE_ID); the next start generates a fresh identity.
    """
    from kvs import keys as K
    from kvs.store.storage import Storage

    storage = Storage(data_dir)
    try:
        storage.db.delete(K.META_NODE_ID)
        storage.db.flush_wal(True)
    finally:
        storage.close()


def _dump_bytes(node: Any) -> int:
    return sum(len(v.canonical()) for sets in node.storage.scan_sets("") for v in sets)


async def anti_entropy_curve(work: Path, ns: Sequence[int], ds: Sequence[int], progress: Progress,
                             repeats: int = 3) -> tuple[list[dict[str, Any]], Path | None]:
    """Bytes and ms of one sync round for d differing keys out of n; median of `repeats` rounds.

    Returns the rows and the data dir of node A for the largest n (reused for start-up/RSS).
    """
    _quiet_logs()
    rows: list[dict[str, Any]] = []
    largest: Path | None = None
    quiet = {"sync_interval_ms": 3_600_000, "eager_push": False}
    for n in ns:
        dir_a, dir_b = work / f"ae-{n}-a", work / f"ae-{n}-b"
        started = time.perf_counter()
        node = await _node(dir_a, **quiet)
        try:
            await load_keys(node, n, progress)
        finally:
            await node.stop()
        shutil.copytree(dir_a, dir_b)
        _forget_identity(dir_b)
        progress(f"anti-entropy: n={n:,} keys loaded and copied in {time.perf_counter() - started:.1f} s")
        a = await _node(dir_a, **quiet)
        b = await _node(dir_b, **quiet)
        try:
            if a.storage.tree.root() != b.storage.tree.root():
                raise RuntimeError("copied data sets do not have the same Merkle root")
            dump = _dump_bytes(a)
            for d in ds:
                samples: list[tuple[int, float, int]] = []
                for rep in range(repeats):
                    for i in range(d):
                        key = f"user/{(i * 7919 + d) % n:07d}"
                        await a.engine.put(Op("set", key, f"changed-{d}-{rep}"))
                    result = await b.replicator.sync_with(a.address)
                    if result is None or result.error is not None:
                        raise RuntimeError(f"sync round failed: {result}")
                    if a.storage.tree.root() != b.storage.tree.root():
                        raise RuntimeError(f"n={n} d={d}: roots differ after one round")
                    samples.append((result.bytes, result.duration_ms, result.keys_repaired))
                row = {"n": n, "d": d, "bytes": int(median(s[0] for s in samples)),
                       "ms": median(s[1] for s in samples), "keys_repaired": samples[0][2],
                       "dump_bytes": dump}
                row["pct_of_dump"] = 100 * row["bytes"] / dump
                rows.append(row)
                progress(f"anti-entropy: n={n:,} d={d:,}: {row['bytes']:,} bytes "
                         f"({row['pct_of_dump']:.3f}% of a {dump:,}-byte dump), {row['ms']:.1f} ms, "
                         f"{row['keys_repaired']} keys repaired")
        finally:
            await a.stop()
            await b.stop()
        if largest is not None:
            shutil.rmtree(largest, ignore_errors=True)
        largest = dir_a
        shutil.rmtree(dir_b, ignore_errors=True)
    return rows, largest


async def partition_convergence(work: Path, keys: int, progress: Progress,
                                timeout: float = 180.0) -> dict[str, Any]:
    """Cut {A} | {B, C}; write keys/2 on A and keys/2 on B; once each side says the other is
    dead, heal and time until all three Merkle roots are equal. Default intervals."""
    _quiet_logs()
    nodes: list[Any] = []
    try:
        a = await _node(work / "part-a")
        nodes.append(a)
        for name in ("b", "c"):
            nodes.append(await _node(work / f"part-{name}", seed_nodes=[a.address]))
        a, b, c = nodes
        await _eventually(lambda: all(len(x.membership.alive_peers()) == 2 for x in nodes), 30,
                          "3 nodes to see each other alive")
        for x, y in ((a, b), (a, c)):
            x.transport.blocked.add(y.address)
            y.transport.blocked.add(x.address)
        cut = time.perf_counter()
        half = keys // 2
        for side, node, count in (("a", a, half), ("b", b, keys - half)):
            for i in range(count):
                await node.engine.put(Op("set", f"part/{side}/{i:06d}", {"i": i}))
                if i % 500 == 499:
                    await asyncio.sleep(0)

        def split() -> bool:
            return (all(_state(a, x) == "dead" for x in (b, c))
                    and all(_state(x, a) == "dead" for x in (b, c)))

        await _eventually(split, 120, "both sides to declare the other dead")
        detected = time.perf_counter() - cut
        rounds_before = sum(x.replicator.stats.rounds for x in nodes)
        bytes_before = sum(x.replicator.stats.bytes for x in nodes)
        for x in nodes:
            x.transport.blocked.clear()
        healed = time.perf_counter()
        await _eventually(lambda: len({x.storage.tree.root() for x in nodes}) == 1, timeout,
                          "identical Merkle roots", interval=0.01)
        converge_s = time.perf_counter() - healed
        live = {x.storage.live_keys for x in nodes}
        result = {
            "keys": keys, "split_detected_s": detected, "converge_s": converge_s,
            "rounds": sum(x.replicator.stats.rounds for x in nodes) - rounds_before,
            "bytes": sum(x.replicator.stats.bytes for x in nodes) - bytes_before,
            "live_keys": sorted(live),
            "sync_interval_ms": a.config.sync_interval_ms, "gossip_interval_ms": a.config.gossip_interval_ms,
        }
    finally:
        for node in reversed(nodes):
            await node.stop()
    progress(f"partition: {keys:,} divergent keys converged {converge_s:.2f} s after heal "
             f"({result['rounds']} anti-entropy rounds, {result['bytes']:,} bytes; "
             f"split detected {detected:.1f} s after the cut)")
    return result


def _state(observer: Any, peer: Any) -> str | None:
    member = observer.membership.member(peer.engine.node_id)
    return member.state if member is not None else None


async def _eventually(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


def run_in_process(coro: Any) -> Any:
    """Run an in-process figure on uvloop (as `kvs serve` does); Ctrl-C stops its nodes."""
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} ms"


def _s(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} s"
