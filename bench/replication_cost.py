"""Issue 17's replication path on a 3-node kvs cluster (all nodes on one CPU): where
write-to-visible goes on an idle cluster, and what a receiving node pays per version.

    python -m bench.replication_cost                  # kvs x3
    python -m bench.replication_cost --etcd           # the same probe against etcd x3
    python -m bench.replication_cost --apply          # in process: the receiver's engine only

visibility: PUT through node 1, then one GET on node 2 sent `d` ms after the PUT's
acknowledgement, for d in DELAYS: the share of writes already visible at each d, without
the polling GETs of bench.cluster_figures.write_to_visible competing with the push.
receiving: wrk PUT load on node 1 (put_one, put_random); CPU seconds of each node from
/proc per acknowledged write, and the versions node 1's eager push carried per request.
apply: one process, two engines on real RocksDB stores; CPU µs per version of what the
push handler does after HTTP (decode, check, Engine.apply_remote) for batches of BATCH.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Sequence
from pathlib import Path
from statistics import median

import orjson

from bench.cpu_profile import cpu_seconds
from bench.run import run_wrk
from bench.targets import EtcdTarget, Http, KvsTarget, Target
from kvs.clock import wall_ms
from kvs.cluster.replication import _versions
from kvs.config import load
from kvs.engine import Engine, Op
from kvs.store.storage import Storage

DELAYS = (0.0, 0.25, 0.5, 1.0, 2.0)
PROBES = 100
BATCH = 18  # versions per push seen under wrk load
APPLIED = 20_000
_METRIC = re.compile(r"^(kvs_replication_(?:pushes|versions_pushed)_total) (\S+)$", re.M)


def visibility(target: Target) -> str:
    """PUT ack p50, GET p50 and the share visible on node 2 at ack + d."""
    clients = [Http(url) for url in target.urls[:2]]
    try:
        acks: list[float] = []
        shares = []
        for delay in DELAYS:
            seen = 0
            for _ in range(PROBES):
                key = f"bench/probe/{time.time_ns()}"
                started = time.perf_counter()
                target.put(clients[0], key, "x")
                acked = time.perf_counter()
                acks.append((acked - started) * 1000)
                while time.perf_counter() < acked + delay / 1000:
                    pass  # a sleep is far coarser than the delays measured
                seen += target.visible(clients[1], key)
            shares.append(f"+{delay} ms: {100 * seen // PROBES}%")
        gets = []
        for _ in range(PROBES):
            started = time.perf_counter()
            target.visible(clients[1], key)
            gets.append((time.perf_counter() - started) * 1000)
    finally:
        for client in clients:
            client.close()
    return (f"{target.name}: PUT ack p50 {median(acks):.2f} ms, GET p50 {median(gets):.2f} ms; "
            f"visible on node 2 at ack {', '.join(shares)}")


def pushed(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as reply:
        return {name: float(value) for name, value in _METRIC.findall(reply.read().decode())}


def receiving(target: KvsTarget, op: str, duration: int, work: Path) -> str:
    """CPU µs per acknowledged write on the loaded node and on each receiving node."""
    pids = [proc.pid for proc in target.procs]
    assert None not in pids
    before, counts = [cpu_seconds(pid) for pid in pids], pushed(target.urls[0])  # type: ignore[arg-type]
    rep = run_wrk(target, op, duration, op, connections=32, cpus="1", log_path=work / "wrk.log")
    used = [cpu_seconds(pid) - b for pid, b in zip(pids, before, strict=True)]  # type: ignore[arg-type]
    after = pushed(target.urls[0])
    requests = after["kvs_replication_pushes_total"] - counts["kvs_replication_pushes_total"]
    versions = (after["kvs_replication_versions_pushed_total"]
                - counts["kvs_replication_versions_pushed_total"])
    per = [f"{1e6 * cpu / max(rep.requests, 1):.0f}" for cpu in used]
    return (f"{op}: {rep.rps:,.0f} req/s; CPU µs per write: loaded node {per[0]}, receivers "
            f"{', '.join(per[1:])}; {versions / max(requests, 1):.1f} versions per push")


async def apply_cost(work: Path, same_key: bool) -> str:
    """CPU µs per replicated version applied: written on engine a, applied on engine b."""
    config = load(environ={}, overrides={"cas_enabled": True})
    stores = [Storage(work / name, gc_ms=config.tombstone_gc_seconds * 1000, sync_writes=False)
              for name in ("a", "b")]
    try:
        for name, store in zip(("a", "b"), stores, strict=True):
            store.ensure_identity(name, wall_ms())
        origin, receiver = (Engine(config, store, wall_ms) for store in stores)
        written = [await origin.put(Op("set", "bench/one" if same_key else f"bench/{uuid.uuid4()}",
                                       "v" * 20)) for _ in range(APPLIED)]
        bodies = [orjson.dumps([v.to_wire() for v in written[i:i + BATCH]])
                  for i in range(0, APPLIED, BATCH)]
        started = time.process_time()
        for body in bodies:
            await receiver.apply_remote(_versions(orjson.loads(body), config.max_value_bytes))
        used = time.process_time() - started
    finally:
        for store in stores:
            store.close()
    return (f"apply, {'one key' if same_key else 'random keys'}: "
            f"{1e6 * used / APPLIED:.1f} µs CPU per version (batches of {BATCH})")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.replication_cost", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--etcd", action="store_true", help="probe etcd x3 instead (visibility only)")
    parser.add_argument("--apply", action="store_true", help="in process: the receiver's engine only")
    parser.add_argument("--reps", type=int, default=3, help="wrk runs per operation")
    parser.add_argument("--duration", type=int, default=6, help="seconds per wrk run")
    args = parser.parse_args(argv)
    if args.apply:
        for same_key in (True, False):
            with tempfile.TemporaryDirectory() as tmp:
                print(asyncio.run(apply_cost(Path(tmp), same_key)), flush=True)
        return 0
    kind = EtcdTarget if args.etcd else KvsTarget
    with tempfile.TemporaryDirectory() as tmp, kind(f"{kind.kind} x3", Path(tmp), "0", nodes=3) as target:
        print(visibility(target), flush=True)
        if isinstance(target, KvsTarget):
            for op in ("put_one", "put_random"):
                for _ in range(args.reps):
                    print(receiving(target, op, args.duration, Path(tmp)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
