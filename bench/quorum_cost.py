"""What one quorum CAS costs on a 3-node kvs cluster: ok/s, p50, and the CPU of all three
nodes per request (their idle CPU taken out), with 1 and with 8 sequential writers.

    python -m bench.quorum_cost                 # nodes on any core
    python -m bench.quorum_cost --cpus 0        # the three nodes on core 0

Each writer CASes its own key through node 1 (`if_seq` from the previous answer), so
there is no contention: the figure is the protocol's own cost (Accepts to the peers,
fsyncs on every acceptor, replication). Quicker than `bench.run`'s quorum rows, and it
sums the CPU of the peers, which wrk's view of node 1 leaves out.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench.targets import Http, KvsTarget, cpu_seconds

IDLE_SECONDS = 3.0


def writer(url: str, key: str, count: int) -> list[float]:
    """`count` quorum CAS of `key`, one after another; their latencies in ms."""
    client = Http(url)
    try:
        status, body = client.request("PUT", f"/kv/{key}", {"value": 0, "consistency": "quorum"})
        if status != 200:
            raise RuntimeError(f"first quorum write: {status} {body}")
        seq, latencies = body["seq"], []
        for i in range(count):
            started = time.perf_counter()
            status, body = client.request("PUT", f"/kv/{key}",
                                          {"value": i, "consistency": "quorum", "if_seq": seq})
            latencies.append((time.perf_counter() - started) * 1000)
            if status != 200:
                raise RuntimeError(f"quorum CAS: {status} {body}")
            seq = body["seq"]
        return latencies
    finally:
        client.close()


def measure(target: KvsTarget, writers: int, count: int, idle: float) -> str:
    cpu0, started = cpu_seconds(target.procs), time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(writers) as pool:
        runs = pool.map(writer, [target.urls[0]] * writers,
                        [f"bench/qcost/{writers}-{w}" for w in range(writers)], [count] * writers)
        latencies = [ms for run in runs for ms in run]
    wall = time.perf_counter() - started
    cpu = (cpu_seconds(target.procs) or 0.0) - (cpu0 or 0.0) - idle * wall
    return (f"{writers} writer(s): {len(latencies) / wall:,.0f} ok/s, p50 "
            f"{statistics.median(latencies):.2f} ms, CPU {cpu / len(latencies) * 1e6:,.0f} µs "
            "per quorum CAS (3 nodes)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.quorum_cost", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=400, help="CAS per writer (default %(default)s)")
    parser.add_argument("--cpus", help="taskset list for the three nodes")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work, KvsTarget("kvs x3", Path(work), args.cpus,
                                                          nodes=3) as target:
        cpu0 = cpu_seconds(target.procs)
        time.sleep(IDLE_SECONDS)
        idle = ((cpu_seconds(target.procs) or 0.0) - (cpu0 or 0.0)) / IDLE_SECONDS
        print(f"idle: {idle * 1000:.0f} ms of CPU per second (3 nodes)")
        for writers in (1, 8):
            print(measure(target, writers, args.count, idle), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
