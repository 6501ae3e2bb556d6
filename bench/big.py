"""A big store: start-up time, RSS, and PUT random throughput with 10M keys vs 10k.

    python -m bench.big                          # 10,000,000 keys in /tmp/kvs-big (kept)
    python -m bench.big --keys 1000000 --reps 3 --duration 5

1. Loads the keys `bench/r/<n>` (n < --keys; the names and 64-byte values the PUT random
   wrk script writes) into a data dir through an in-process node, in batches of
   replicated versions (the bulk path; the whole revision set, Merkle tree and indexes
   are built as for any write). A data dir that already holds them is reused.
2. Starts `kvs serve` on it: seconds to /health 200, RSS at once and after 1 s idle.
3. Reads the big store's files into the OS page cache (unless --cold: then nearly every
   write's read of its key is a disk read), then runs PUT random over all the keys on
   that node and PUT random over 10k keys on a node holding only those, alternating,
   --reps rounds: req/s, p50 and server CPU µs per request; the ratio big ÷ small is
   the median of the paired rounds.

Issue 17's goals: start-up ≤ 10 s, RSS ≤ 1 GB, PUT random at 10M ÷ at 10k ≥ 0.7.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from statistics import median
from typing import Any

from bench.cluster_figures import Progress, _node, _quiet_logs, load_keys, startup_rss
from bench.run import RANDOM_KEYS, VALUE_BYTES, Rep, paired_ratio, run_wrk
from bench.targets import START_TIMEOUT, Target, pinned
from kvs.testing import KvsNode

KEY = "bench/r/{:05d}"  # bench/lua/kvs_put_random.lua's names


class DataDirTarget(Target):
    """One `kvs serve` on a data dir that was filled beforehand."""

    kind = "kvs"

    def __init__(self, name: str, base_dir: Path, cpus: str | None, data_dir: Path) -> None:
        super().__init__(name, base_dir, cpus)
        self.data_dir = data_dir

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        node = KvsNode(self.name, log=self.dir / "server.log", data_dir=self.data_dir,
                       launcher=pinned([], self.cpus), env={"KVS_CAS_ENABLED": "true"},
                       cwd=self.dir)
        self.procs = [node]
        node.start(START_TIMEOUT * 10)
        self.urls = [str(node.url)]


def filled(work: Path, keys: int, progress: Progress) -> Path:
    """A data dir holding `keys` keys (made once, then reused: loading 10M takes minutes)."""
    data_dir = work / f"store-{keys}"
    done = data_dir / ".bench-loaded"
    if done.exists():
        progress(f"reusing {data_dir} ({keys:,} keys)")
        return data_dir
    shutil.rmtree(data_dir, ignore_errors=True)
    progress(f"loading {keys:,} keys into {data_dir}")
    started = time.perf_counter()
    asyncio.run(_load(data_dir, keys, progress))
    progress(f"loaded {keys:,} keys in {time.perf_counter() - started:.0f} s")
    done.touch()
    return data_dir


async def _load(data_dir: Path, keys: int, progress: Progress) -> None:
    _quiet_logs()
    node = await _node(data_dir, sync_interval_ms=3_600_000, eager_push=False)
    try:
        await load_keys(node, keys, progress, key=KEY.format, value="v" * VALUE_BYTES)
    finally:
        await node.stop()


def warm(data_dir: Path, progress: Progress) -> None:
    """Read the data dir's files once, so the OS page cache holds them, as it would on a
    node that has served for a while with the memory to spare (uniformly random keys
    otherwise make nearly every read of the first minutes a disk read)."""
    started, size = time.perf_counter(), 0
    for path in sorted(data_dir.iterdir()):
        if path.is_file():
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    size += len(chunk)
    progress(f"read {size / 2**30:.1f} GiB of {data_dir} into the page cache in "
             f"{time.perf_counter() - started:.0f} s")


def throughput(big: Path, small: Path, keys: int, args: argparse.Namespace, log: Path,
               progress: Progress) -> dict[str, list[Rep]]:
    if not args.cold:
        warm(big, progress)
    reps: dict[str, list[Rep]] = {"big": [], "small": []}
    targets = {"big": DataDirTarget("big", args.work / "run", args.server_cpus, big),
               "small": DataDirTarget("small", args.work / "run", args.server_cpus, small)}
    with targets["big"], targets["small"]:
        for round_ in range(1, args.reps + 1):
            for name, n in (("big", keys), ("small", RANDOM_KEYS)):
                rep = run_wrk(targets[name], "put_random", args.duration, f"{name}{round_}",
                              connections=args.connections, cpus=args.client_cpus, log_path=log,
                              args=(f"keys={n}",))
                rep.round = round_
                reps[name].append(rep)
                progress(f"round {round_}: PUT random of {n:,} keys: {rep.rps:,.0f} req/s, "
                         f"p50 {rep.p50_us / 1000:.1f} ms, CPU {_cpu(rep)} µs/req")
    return reps


def _cpu(rep: Rep) -> str:
    return "n/a" if rep.cpu_us_per_req is None else f"{rep.cpu_us_per_req:.0f}"


def report(keys: int, start: dict[str, Any], reps: dict[str, list[Rep]]) -> str:
    def series(name: str, value: str) -> dict[int, float]:
        return {r.round: getattr(r, value) for r in reps[name] if getattr(r, value) is not None}
    ratio = paired_ratio(series("big", "rps"), series("small", "rps"))
    cpu = paired_ratio(series("big", "cpu_us_per_req"), series("small", "cpu_us_per_req"))
    lines = [
        f"| figure | {keys:,} keys | goal |", "|---|---|---|",
        f"| start-up to /health 200 | {start['startup_s']:.2f} s | ≤ 10 s |",
        f"| RSS at start / after 1 s idle | {start['rss_mb']:.0f} / {start['rss_idle_mb']:.0f} MB | ≤ 1 GB |",
        f"| PUT random req/s (median) | {median(series('big', 'rps').values()):,.0f} "
        f"(10k keys: {median(series('small', 'rps').values()):,.0f}) | |",
        f"| PUT random ÷ at 10k keys (paired) | {_fmt(ratio)} (CPU µs/req ratio {_fmt(cpu)}) | ≥ 0.7 |",
    ]
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.big", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=10_000_000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/kvs-big"),
                        help="where the data dirs are made and kept (default %(default)s)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--server-cpus", default="0", help="taskset list for the server")
    parser.add_argument("--client-cpus", default="1", help="taskset list for wrk")
    parser.add_argument("--cold", action="store_true",
                        help="do not read the big store into the page cache before the PUTs")
    args = parser.parse_args(argv)

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)
    args.work.mkdir(parents=True, exist_ok=True)
    big = filled(args.work, args.keys, progress)
    small = filled(args.work, RANDOM_KEYS, progress)
    log = args.work / "wrk.log"
    start = startup_rss(big, args.keys, args.work, args.server_cpus, progress,
                        probe_key=KEY.format(args.keys - 1))
    reps = throughput(big, small, args.keys, args, log, progress)
    print(report(args.keys, start, reps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
