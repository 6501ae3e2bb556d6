"""CPU time per request of a kvs node at git revisions side by side, and where it goes.

    python -m bench.cpu_profile 4de8df8 . --ops put_one,txn4 --reps 5
    python -m bench.cpu_profile . --ops put_one --py-spy out.txt    # a py-spy profile too

req/s on a shared 2-core machine drifts with the other tenants' load; the server's own CPU
time (utime + stime of its process from /proc, over one wrk run, divided by the requests
wrk completed) barely does, so small regressions show up as µs per request. Targets are
those of bench.ab (`REV[+NAME=VALUE,...]`, `.` is the working tree); every round runs
each operation on every target back to back, and the table gives medians.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from statistics import median

from bench.ab import _target
from bench.run import OPS, prepare, run_wrk
from bench.targets import Target, have_taskset
from kvs.testing import stop_all

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process so far (/proc/PID/stat fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def measure(target: Target, op: str, duration: int, tag: str, connections: int, cpus: str | None,
            log: Path) -> tuple[float, float]:
    """(CPU µs per request, req/s) of one wrk run against the target's first node."""
    pid = target.procs[0].pid
    assert pid is not None
    before = cpu_seconds(pid)
    rep = run_wrk(target, op, duration, tag, connections=connections, cpus=cpus, log_path=log)
    used = cpu_seconds(pid) - before
    return 1e6 * used / max(rep.requests, 1), rep.rps


def py_spy(target: Target, op: str, duration: int, connections: int, cpus: str | None,
           work: Path, out: Path) -> None:
    """A py-spy profile of the node over one wrk run, as collapsed stacks (flamegraph input)."""
    pid = target.procs[0].pid
    spy = subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--duration", str(duration),
                            "--format", "raw", "--rate", "250", "-o", str(out)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        rep = run_wrk(target, op, duration, "spy", connections=connections, cpus=cpus,
                      log_path=work / "wrk.log")
    finally:
        spy.wait(timeout=duration + 60)
    print(f"{out}: {target.name} {op}, {rep.requests} requests", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cpu_profile", description=__doc__.split("\n")[0])
    parser.add_argument("targets", nargs="+", help="REV[+NAME=VALUE,...]; '.' is the working tree")
    parser.add_argument("--ops", default="get,put_one,put_random,cas_index,txn4")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--duration", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--py-spy", type=Path, help="also profile each target on each op: PATH.<op>.<n>.txt")
    args = parser.parse_args(argv)
    ops = args.ops.split(",")
    pin = have_taskset()
    server_cpus, load_cpus = ("0", "1") if pin else (None, None)
    with tempfile.TemporaryDirectory(prefix="kvs-cpu-") as tmp:
        work = Path(tmp)
        targets = [_target(spec, work, server_cpus) for spec in args.targets]
        results: dict[tuple[str, str], list[tuple[float, float]]] = {}
        try:
            for target in targets:
                target.start()
                prepare(target)
            for rnd in range(args.reps + 1):  # round 0 is the warm-up
                for op in ops:
                    for target in targets:
                        cell = measure(target, op, 1 if rnd == 0 else args.duration, f"c{rnd}",
                                       args.connections, load_cpus, work / "wrk.log")
                        if rnd:
                            results.setdefault((target.name, op), []).append(cell)
                print(f"round {rnd}/{args.reps} done", flush=True)
            if args.py_spy:
                for op in ops:
                    for n, target in enumerate(targets):
                        py_spy(target, op, args.duration * 3, args.connections, load_cpus, work,
                               Path(f"{args.py_spy}.{op}.{n}.txt"))
        finally:
            stop_all()
    first = targets[0].name
    print(f"\n| op | target | CPU µs/request | req/s | CPU ÷ {first} |\n|---|---|---:|---:|---:|")
    for (name, op), cells in results.items():  # operation by operation, as they ran
        print(cpu_row(cells, results[first, op], OPS[op].label, name, second=",.0f"))
    return 0


def cpu_row(cells: Sequence[tuple[float, float]], base: Sequence[tuple[float, float]], *names: str,
            second: str) -> str:
    """A markdown row: `names`, the medians of CPU µs per request and of the second measure
    (formatted with `second`), and the CPU ratio to `base`. Paired by round, as bench.ab
    does: drift hits both cells of a round alike."""
    ratio = median(c[0] / b[0] for c, b in zip(cells, base, strict=True))
    return (f"| {' | '.join(names)} | {median(c[0] for c in cells):.1f} "
            f"| {format(median(c[1] for c in cells), second)} | {ratio:.3f} |")


if __name__ == "__main__":
    raise SystemExit(main())
