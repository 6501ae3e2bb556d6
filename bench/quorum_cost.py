"""What one quorum CAS costs on a 3-node kvs cluster: ok/s, p50, and the CPU of all three
nodes per request (their idle CPU taken out), with 1 and with 8 sequential writers.

    python -m bench.quorum_cost                 # nodes on any core
    python -m bench.quorum_cost --cpus 0        # the three nodes on core 0
    python -m bench.quorum_cost --ab de7055f .  # one client's latency, git revisions A/B

`--ab`: one 3-node cluster per revision (`.` is the working tree), all up at once; each
round runs, on each cluster in turn, one client's quorum CAS and then its local CAS
through node 1, so the machine's drift hits them alike. It prints each one's p50, what
quorum CAS adds to local CAS (issue 14's one-client goal), the CPU of the three nodes
per request, and the medians over rounds of the per-round ratios to the first revision;
and each round, the goal's budget as `bench.run` measures it (2 round trips to node 2 +
1 fsync in the cluster's directory, p50s).

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

from bench.ab import _export
from bench.cluster_figures import fsync_ms, loopback_rtt_ms
from bench.run import paired_ratio
from bench.targets import Http, KvsTarget, cpu_seconds
from kvs.testing import REPO_ROOT

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


def one_client(target: KvsTarget, key: str, count: int, *, quorum: bool) -> tuple[float, float]:
    """(p50 ms, CPU µs of the three nodes per request) of `count` CAS of `key` in a row
    through node 1: by `if_seq` with quorum consistency, else by local `cas` index. The
    idle CPU is left in: a few ms per second, the same for every revision."""
    client = Http(target.urls[0])
    try:
        body = {"value": 0, "consistency": "quorum"} if quorum else {"value": 0}
        status, answer = client.request("PUT", f"/kv/{key}", body)
        if status != 200:
            raise RuntimeError(f"first write: {status} {answer}")
        latencies: list[float] = []
        cpu0 = cpu_seconds(target.procs) or 0.0
        for i in range(count):
            body = ({"value": i, "consistency": "quorum", "if_seq": answer["seq"]} if quorum
                    else {"value": i, "cas": answer["modify_index"]})
            started = time.perf_counter()
            status, answer = client.request("PUT", f"/kv/{key}", body)
            latencies.append((time.perf_counter() - started) * 1000)
            if status != 200:
                raise RuntimeError(f"CAS: {status} {answer}")
        cpu = (cpu_seconds(target.procs) or 0.0) - cpu0
        return statistics.median(latencies), cpu / count * 1e6
    finally:
        client.close()


def ab(revs: Sequence[str], rounds: int, count: int, cpus: str | None) -> None:
    with tempfile.TemporaryDirectory(prefix="kvs-qab-") as tmp:
        work = Path(tmp)
        targets = [KvsTarget(f"kvs x3@{rev}", work, cpus, nodes=3,
                             root=REPO_ROOT if rev == "." else _export(rev, work))
                   for rev in revs]
        # per revision: quorum p50, local p50, added, quorum CPU µs, by round
        series: dict[str, list[dict[int, float]]] = {rev: [{}, {}, {}, {}] for rev in revs}
        try:
            for target in targets:
                target.start()
            budgets: list[float] = []
            for rnd in range(rounds + 1):  # round 0 is the warm-up
                rtt, sync = loopback_rtt_ms(targets[0].urls[1], count), fsync_ms(work, count // 4)
                print(f"round {rnd} budget: 2 x {rtt:.3f} + {sync:.3f} = {2 * rtt + sync:.3f} ms")
                budgets += [2 * rtt + sync] if rnd else []
                for rev, target in zip(revs, targets, strict=True):
                    q50, qcpu = one_client(target, f"bench/qab/q{rnd}", count, quorum=True)
                    l50, _ = one_client(target, f"bench/qab/l{rnd}", count, quorum=False)
                    print(f"round {rnd} {rev}: quorum p50 {q50:.3f} ms, local p50 {l50:.3f} ms, "
                          f"added {q50 - l50:.3f} ms, CPU {qcpu:,.0f} µs per quorum CAS", flush=True)
                    if rnd:
                        for values, value in zip(series[rev], (q50, l50, q50 - l50, qcpu), strict=True):
                            values[rnd] = value
        finally:
            for target in targets:
                target.stop()
        print(ab_table(revs, series))
        print(f"budget p50 over rounds: {statistics.median(budgets):.3f} ms")


def ab_table(revs: Sequence[str], series: dict[str, list[dict[int, float]]]) -> str:
    first = series[revs[0]]
    lines = ["| revision | quorum CAS p50 ms | local CAS p50 ms | added ms | CPU µs per quorum CAS "
             "| added / first | CPU / first |", "|---|---:|---:|---:|---:|---:|---:|"]
    for rev in revs:
        q50, l50, added, cpu = series[rev]
        medians = [statistics.median(values.values()) for values in (q50, l50, added, cpu)]
        lines.append(f"| {rev} | {medians[0]:.3f} | {medians[1]:.3f} | {medians[2]:.3f} "
                     f"| {medians[3]:,.0f} | {paired_ratio(added, first[2]) or 0:.2f} "
                     f"| {paired_ratio(cpu, first[3]) or 0:.2f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.quorum_cost", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=400, help="CAS per writer (default %(default)s)")
    parser.add_argument("--cpus", help="taskset list for the three nodes")
    parser.add_argument("--ab", nargs="+", metavar="REV", help="git revisions to compare")
    parser.add_argument("--rounds", type=int, default=5, help="--ab rounds (default %(default)s)")
    args = parser.parse_args(argv)
    if args.ab:
        ab(args.ab, args.rounds, args.count, args.cpus)
        return 0
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
