"""A/B: kvs at other git revisions (or settings) side by side with the bare aiohttp app.

    python -m bench.ab HEAD~1 .                      # the last commit vs the working tree
    python -m bench.ab --ops put_random,cas_index . .+KVS_REVISION_HISTORY_LIMIT=1
    python -m bench.ab --reps 5 --duration 3 HEAD~2 HEAD~1 .
    python -m bench.ab --ops get,put_one . .+tls         # the cost of TLS

A target is `REV` (anything `git archive` takes; `.` is the working tree), optionally
followed by `+NAME=VALUE,...` environment settings for its node; the item `tls` among
them serves TLS with certificates of a throwaway CA (kvs.testing.certs), and wrk and the
harness then talk https (wrk keeps its connections: the steady-state cost, not handshakes).
Every round runs each operation on every target back to back, so the machine's drift
(large on a 2-core machine) hits them alike; ratios are medians of per-round ratios
(`bench.run.paired_ratio`).
A change of the optimisation passes in docs/benchmarks.md was kept only when this showed
a gain beyond the noise. Pinning, wrk settings and Lua scripts are the harness's.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench.run import BARE, OPS, Cell, paired_ratio, prepare, run_wrk
from bench.targets import BareTarget, KvsTarget, Target, have_taskset
from kvs.testing import REPO_ROOT, stop_all


def _export(rev: str, into: Path) -> Path:
    """The tree of `rev`, extracted under `into` (kvs runs from there); once per revision,
    as `REV` and `REV+SETTINGS` share it."""
    tree = into / "src" / rev.replace("/", "_")
    if tree.exists():
        return tree
    tree.mkdir(parents=True)
    archive = into / "src.tar"
    subprocess.run(["git", "-C", str(REPO_ROOT), "archive", "-o", str(archive), rev], check=True)
    subprocess.run(["tar", "-xf", str(archive), "-C", str(tree)], check=True)
    return tree


def _target(spec: str, work: Path, cpus: str | None) -> Target:
    rev, _, settings = spec.partition("+")
    items = [item for item in settings.split(",") if item]
    env = dict(item.split("=", 1) for item in items if item != "tls")
    if "tls" in items:
        env.update(_tls_env(work / "tls"))
    root = REPO_ROOT if rev == "." else _export(rev, work)
    return KvsTarget(f"kvs@{spec}", work, cpus, env=env, root=root)


def _tls_env(directory: Path) -> dict[str, str]:
    from kvs.testing.certs import LocalCA

    ca = LocalCA(directory)
    cert, key = ca.issue("bench", ["127.0.0.1", "localhost"])
    return {"KVS_TLS_CERT_FILE": str(cert), "KVS_TLS_KEY_FILE": str(key),
            "KVS_TLS_CA_FILE": str(ca.cert_file)}


def _denominator(cells: dict[tuple[str, str], Cell], op: str) -> Cell:
    """The bare app's cell a kvs cell is compared with: the same operation, or its PUT
    (CAS has no bare counterpart, as in the harness's targets)."""
    return cells.get((BARE, op)) or cells[BARE, "put_one"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.split("\n")[0])
    parser.add_argument("targets", nargs="+", help="REV[+NAME=VALUE,...]; '.' is the working tree")
    parser.add_argument("--ops", default="get,put_one,cas_index",
                        help=f"comma-separated, of {', '.join(OPS)}")
    parser.add_argument("--reps", type=int, default=5, help="rounds")
    parser.add_argument("--duration", type=int, default=3, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args(argv)
    ops = args.ops.split(",")
    unknown = [op for op in ops if op not in OPS]
    if unknown:
        parser.error(f"unknown operation {unknown[0]!r}; choose from {', '.join(OPS)}")
    pin = have_taskset()
    server_cpus, load_cpus = ("0", "1") if pin else (None, None)
    with tempfile.TemporaryDirectory(prefix="kvs-ab-") as tmp:
        work = Path(tmp)
        targets: list[Target] = [BareTarget(BARE, work, server_cpus)]
        targets += [_target(spec, work, server_cpus) for spec in args.targets]
        cells: dict[tuple[str, str], Cell] = {}
        try:
            for target in targets:
                target.start()
                prepare(target)
                print(f"{target.name} at {target.url}", flush=True)
            plan = [(t, op) for op in ops for t in targets if OPS[op].scripts.get(t.kind)]
            if "put_one" not in ops:  # the denominator of CAS ratios
                plan += [(targets[0], "put_one")]
            for rnd in range(args.reps + 1):  # round 0 is the warm-up
                for target, op in plan:
                    rep = run_wrk(target, op, 1 if rnd == 0 else args.duration, f"ab{rnd}",
                                  connections=args.connections, cpus=load_cpus, log_path=work / "wrk.log")
                    if rnd:
                        rep.round = rnd
                        cell = cells.setdefault((target.name, op), Cell(target.name, op, cas=OPS[op].cas))
                        cell.reps.append(rep)
                print(f"round {rnd}/{args.reps} done" + (" (warm-up)" if rnd == 0 else ""), flush=True)
        finally:
            stop_all()
        print("\n" + table(cells, [t.name for t in targets], ops))
    return 0


def table(cells: dict[tuple[str, str], Cell], names: Sequence[str], ops: Sequence[str]) -> str:
    """The A/B as markdown: medians of throughput and server CPU µs per request, and the
    per-round ratios to the bare app and to the first kvs target (`names[1]`)."""
    first = names[1]
    lines = [f"| op | target | req/s (CAS: ok/s) | CPU µs/req | / {BARE} | / {first} | CPU / {first} |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for op in ops:
        for name in names:
            cell = cells.get((name, op))
            if cell is None:
                continue
            base = cells[first, op]
            vs_bare = paired_ratio(cell.by_round(), _denominator(cells, op).by_round())
            vs_first = paired_ratio(cell.by_round(), base.by_round())
            cpu_first = paired_ratio(cell.cpu_by_round(), base.cpu_by_round())
            lines.append(f"| {OPS[op].label} | {name} | {cell.value:,.0f} | {_num(cell.cpu_us, '.0f')} "
                         f"| {_num(vs_bare, '.2f')} | {_num(vs_first, '.2f')} | {_num(cpu_first, '.2f')} |")
    return "\n".join(lines)


def _num(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


if __name__ == "__main__":
    raise SystemExit(main())
