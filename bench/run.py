"""The benchmark harness: one command, every system side by side, one table.

    python -m bench.run                 # short mode (< 3 min): the default
    python -m bench.run --full          # longer runs, 1M-key figures
    python -m bench.run --check         # exit 1 if a target ratio of issue 17 is missed
    python -m bench.run --out DIR       # where results.json, results.md and logs go

What it does (docs/benchmarks.md explains every figure):

1. Pins itself and wrk to the load core(s) and every server to the server core(s) with
   taskset (2 cores: load on CPU 1, servers on CPU 0).
2. For each target -- the bare dict app on aiohttp and on kvs's fast path (the ceiling),
   the naive fsync-per-write app, kvs (default and sync_writes), etcd (fsync and
   --unsafe-no-fsync), kvs and etcd 3-node clusters -- starts it, runs each operation's
   wrk script (fixed connection count, one connection per wrk thread), a warm-up and
   several timed repetitions, then stops it.
3. Measures the cluster figures (write-to-visible, failure detection, anti-entropy cost,
   partition convergence, start-up time and RSS).
4. Prints the table of medians, the ratios kvs/ceiling and kvs/etcd, and the target checks.

Every process it starts is stopped when it ends, on error and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import median
from typing import Any

from bench import cluster_figures as figures
from bench.targets import (
    BareTarget,
    EtcdTarget,
    Http,
    KvsTarget,
    Target,
    cpu_seconds,
    have_taskset,
    pinned,
    wait_until,
)
from kvs.testing import stop_all

LUA_DIR = Path(__file__).resolve().parent / "lua"
VALUE_BYTES = 64
RANDOM_KEYS = 10_000
HOT_KEYS = 8

# -- operations -----------------------------------------------------------------------------


@dataclass(frozen=True)
class OpSpec:
    label: str
    scripts: Mapping[str, str]  # target kind -> wrk script
    args: tuple[str, ...] = ()
    cas: bool = False  # counts ok / conflict from responses; throughput is successful CAS/s
    fresh_prefix: bool = False  # a new key prefix for every wrk run


OPS: dict[str, OpSpec] = {
    "get": OpSpec("GET", {"bare": "kvs_get.lua", "kvs": "kvs_get.lua", "etcd": "etcd_get.lua"},
                  ("key=bench/get",)),
    "put_one": OpSpec("PUT one key", {"bare": "kvs_put_one.lua", "kvs": "kvs_put_one.lua",
                                      "etcd": "etcd_put_one.lua"},
                      ("key=bench/one", f"value_bytes={VALUE_BYTES}")),
    "put_random": OpSpec(f"PUT random of {RANDOM_KEYS // 1000}k",
                         {"bare": "kvs_put_random.lua", "kvs": "kvs_put_random.lua",
                          "etcd": "etcd_put_random.lua"},
                         ("prefix=bench/r", f"keys={RANDOM_KEYS}", f"value_bytes={VALUE_BYTES}")),
    "cas_index": OpSpec("CAS by index", {"kvs": "kvs_cas.lua", "etcd": "etcd_cas.lua"},
                        ("mode=index", f"value_bytes={VALUE_BYTES}"), cas=True, fresh_prefix=True),
    "cas_version": OpSpec("CAS by version", {"kvs": "kvs_cas.lua", "etcd": "etcd_cas.lua"},
                          ("mode=version", f"value_bytes={VALUE_BYTES}"), cas=True, fresh_prefix=True),
    "cas_hot": OpSpec(f"CAS contended ({HOT_KEYS} keys)", {"kvs": "kvs_cas.lua", "etcd": "etcd_cas.lua"},
                      ("mode=index", f"hot={HOT_KEYS}", f"value_bytes={VALUE_BYTES}"), cas=True,
                      fresh_prefix=True),
    "qcas": OpSpec("quorum CAS by seq", {"kvs": "kvs_cas.lua"},
                   ("mode=seq", f"value_bytes={VALUE_BYTES}"), cas=True, fresh_prefix=True),
    "qcas_hot": OpSpec(f"quorum CAS contended ({HOT_KEYS} keys)", {"kvs": "kvs_cas.lua"},
                       ("mode=seq", f"hot={HOT_KEYS}", f"value_bytes={VALUE_BYTES}"), cas=True,
                       fresh_prefix=True),
    "txn4": OpSpec("txn of 4 ops", {"bare": "kvs_txn4.lua", "kvs": "kvs_txn4.lua", "etcd": "etcd_txn4.lua"},
                   ("prefix=bench/t", f"keys={RANDOM_KEYS}", f"value_bytes={VALUE_BYTES}")),
}

# -- targets --------------------------------------------------------------------------------

BARE = "aiohttp"
BARE_FAST = "fast path"
BARE_FSYNC = "aiohttp+fsync"
KVS = "kvs"
KVS_SYNC = "kvs sync_writes"
ETCD = "etcd"
ETCD_NOFSYNC = "etcd no-fsync"
KVS3 = "kvs x3"
ETCD3_NOFSYNC = "etcd x3 no-fsync"
ETCD3 = "etcd x3"

ALL_KVS_OPS = ("get", "put_one", "put_random", "cas_index", "cas_version", "cas_hot", "txn4")


@dataclass(frozen=True)
class TargetSpec:
    name: str
    make: Callable[[Path, str | None], Target]
    ops: tuple[str, ...]
    needs_etcd: bool = False
    cluster: bool = False
    what: str = ""


def plan(full: bool) -> list[TargetSpec]:
    """Targets and operations, in run order (matched comparisons close together in time)."""
    extra: Callable[[tuple[str, ...]], tuple[str, ...]] = (lambda ops: ops) if full else (lambda ops: ())
    specs = [
        TargetSpec(BARE, lambda d, c: BareTarget(BARE, d, c),
                   ("get", "put_one", "put_random", *extra(("txn4",))),
                   what="bare aiohttp + orjson + uvloop, dict handlers"),
        TargetSpec(BARE_FAST, lambda d, c: BareTarget(BARE_FAST, d, c, fast=True),
                   ("get", "put_one", "put_random", *extra(("txn4",))),
                   what="the same dict handlers behind kvs's HTTP server (its fast path and "
                        "route wrapper): the ceiling"),
        TargetSpec(KVS, lambda d, c: KvsTarget(KVS, d, c), ALL_KVS_OPS,
                   what="kvs single node, defaults (+ cas_enabled): WAL write, no fsync"),
        TargetSpec(ETCD_NOFSYNC, lambda d, c: EtcdTarget(ETCD_NOFSYNC, d, c, no_fsync=True), ALL_KVS_OPS,
                   needs_etcd=True, what="etcd single node --unsafe-no-fsync (matches kvs default)"),
        TargetSpec(BARE_FSYNC, lambda d, c: BareTarget(BARE_FSYNC, d, c, fsync=True),
                   ("put_one", *extra(("put_random",))),
                   what="naive durable server: bare app + RocksDB put(sync=True) per request"),
        TargetSpec(KVS_SYNC, lambda d, c: KvsTarget(KVS_SYNC, d, c, sync_writes=True),
                   ("put_one", "put_random", *extra(("cas_index", "txn4"))),
                   what="kvs single node, sync_writes: true (group commit)"),
        TargetSpec(ETCD, lambda d, c: EtcdTarget(ETCD, d, c), ("put_one", "put_random",
                                                               *extra(("cas_index", "txn4"))),
                   needs_etcd=True, what="etcd single node, defaults (fsync; matches kvs sync_writes)"),
        TargetSpec(KVS3, lambda d, c: KvsTarget(KVS3, d, c, nodes=3),
                   ("get", "put_one", "put_random", "cas_index", "qcas", "qcas_hot"), cluster=True,
                   what="kvs 3 nodes on loopback (load on node 1), defaults; quorum CAS: the "
                        "3 nodes are the voters"),
        TargetSpec(ETCD3_NOFSYNC, lambda d, c: EtcdTarget(ETCD3_NOFSYNC, d, c, nodes=3, no_fsync=True),
                   ("get", "put_one", "put_random"), needs_etcd=True, cluster=True,
                   what="etcd 3 members --unsafe-no-fsync (load on the leader)"),
        # Quorum CAS fsyncs on every voter whatever sync_writes says, so its etcd counterpart
        # is txn CAS on 3 fsyncing members (issue 14); in short mode only those cells.
        TargetSpec(ETCD3, lambda d, c: EtcdTarget(ETCD3, d, c, nodes=3),
                   (*extra(("get", "put_one", "put_random")), "cas_index", "cas_hot"), needs_etcd=True,
                   cluster=True, what="etcd 3 members, defaults (fsync; load on the leader); txn CAS "
                                      "next to kvs x3's quorum CAS"),
    ]
    return specs


# -- measurements ---------------------------------------------------------------------------


@dataclass
class Rep:
    requests: int
    duration_us: int
    p50_us: int
    p99_us: int
    ok: int = 0
    conflict: int = 0
    other: int = 0
    errors_connect: int = 0
    errors_read: int = 0
    errors_write: int = 0
    errors_status: int = 0
    errors_timeout: int = 0
    p90_us: int = 0
    max_us: int = 0
    mean_us: float = 0.0
    bytes: int = 0
    round: int = 0  # which repetition round (1..reps) it belongs to: ratios pair rounds
    # CPU seconds (user + system) the target's server processes used over the run, from
    # /proc/<pid>/stat: steadier than req/s on a shared machine, and says where time goes.
    cpu_s: float | None = None

    @classmethod
    def parse(cls, output: str) -> Rep:
        for line in output.splitlines():
            if line.startswith("BENCH_JSON "):
                raw = json.loads(line[len("BENCH_JSON "):])
                return cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})
        raise ValueError(f"no BENCH_JSON line in wrk output:\n{output[-2000:]}")

    @property
    def seconds(self) -> float:
        return self.duration_us / 1e6 if self.duration_us else float("nan")

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def ok_rps(self) -> float:
        return self.ok / self.seconds

    @property
    def cpu_us_per_req(self) -> float | None:
        """Server CPU µs per answered request (a CAS conflict is a request too)."""
        return self.cpu_s * 1e6 / self.requests if self.cpu_s is not None and self.requests else None

    def problems(self, cas: bool) -> list[str]:
        found = []
        socket_errors = self.errors_connect + self.errors_read + self.errors_write + self.errors_timeout
        if socket_errors:
            found.append(f"{socket_errors} socket errors/timeouts")
        if cas and self.other:
            found.append(f"{self.other} answers neither 200 nor 409")
        if not cas and self.errors_status:
            found.append(f"{self.errors_status} non-2xx answers")
        if self.requests == 0:
            found.append("no request completed")
        return found


@dataclass
class Cell:
    target: str
    op: str
    cas: bool = False
    reps: list[Rep] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return OPS[self.op].label if self.op in OPS else self.op

    @property
    def rps(self) -> float:
        return median(r.rps for r in self.reps)

    @property
    def ok_rps(self) -> float:
        return median(r.ok_rps for r in self.reps)

    @property
    def value(self) -> float:
        """The throughput compared in ratios: successful CAS/s for CAS, else requests/s."""
        return self.ok_rps if self.cas else self.rps

    def by_round(self) -> dict[int, float]:
        """That throughput per repetition round."""
        return {r.round: (r.ok_rps if self.cas else r.rps) for r in self.reps}

    @property
    def cpu_us(self) -> float | None:
        """Median over repetitions of the server CPU µs per request (None: not measured)."""
        values = [v for v in (r.cpu_us_per_req for r in self.reps) if v is not None]
        return median(values) if values else None

    def cpu_by_round(self) -> dict[int, float]:
        return {r.round: v for r in self.reps if (v := r.cpu_us_per_req) is not None}

    @property
    def conflict_pct(self) -> float | None:
        if not self.cas:
            return None
        done = sum(r.ok + r.conflict for r in self.reps)
        return 100 * sum(r.conflict for r in self.reps) / done if done else None

    @property
    def p50_ms(self) -> float:
        return median(r.p50_us for r in self.reps) / 1000

    @property
    def p99_ms(self) -> float:
        return median(r.p99_us for r in self.reps) / 1000

    @property
    def spread_pct(self) -> float:
        """(max - min) / median of the repetitions' throughput, in percent: the noise."""
        values = [r.ok_rps if self.cas else r.rps for r in self.reps]
        mid = median(values)
        return 100 * (max(values) - min(values)) / mid if mid else float("nan")


# -- checks ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ratio:
    name: str
    num: tuple[str, str]  # (target, op)
    den: tuple[str, str]
    minimum: float | None  # None: reported, not a target


def _r(name: str, num: tuple[str, str], den: tuple[str, str], minimum: float | None = None) -> Ratio:
    return Ratio(name, num, den, minimum)


MATCHED = 1.5  # kvs over etcd at matched durability, every operation (issue 17)

RATIOS: list[Ratio] = [
    # Targets of issue 17: ahead of etcd at matched durability (kvs default vs etcd
    # --unsafe-no-fsync; kvs sync_writes vs etcd default).
    _r("kvs GET / etcd no-fsync range", (KVS, "get"), (ETCD_NOFSYNC, "get"), 3.0),
    _r("kvs PUT one / etcd no-fsync PUT one", (KVS, "put_one"), (ETCD_NOFSYNC, "put_one"), MATCHED),
    _r("kvs PUT random / etcd no-fsync PUT random", (KVS, "put_random"), (ETCD_NOFSYNC, "put_random"),
       MATCHED),
    _r("kvs CAS by index / etcd no-fsync CAS by index", (KVS, "cas_index"), (ETCD_NOFSYNC, "cas_index"),
       MATCHED),
    _r("kvs txn / etcd no-fsync txn", (KVS, "txn4"), (ETCD_NOFSYNC, "txn4"), MATCHED),
    _r("kvs sync_writes PUT one / etcd PUT one", (KVS_SYNC, "put_one"), (ETCD, "put_one"), MATCHED),
    _r("kvs sync_writes PUT random / etcd PUT random", (KVS_SYNC, "put_random"), (ETCD, "put_random"),
       MATCHED),
    _r("kvs sync_writes CAS / etcd CAS", (KVS_SYNC, "cas_index"), (ETCD, "cas_index"), MATCHED),
    _r("kvs sync_writes txn / etcd txn", (KVS_SYNC, "txn4"), (ETCD, "txn4"), MATCHED),
    _r("kvs x3 PUT one / etcd x3 no-fsync PUT one", (KVS3, "put_one"), (ETCD3_NOFSYNC, "put_one"), MATCHED),
    _r("kvs x3 PUT random / etcd x3 no-fsync PUT random", (KVS3, "put_random"),
       (ETCD3_NOFSYNC, "put_random"), MATCHED),
    # Goals of issue 14: quorum CAS (fsynced by every voter) against etcd's txn CAS on 3
    # fsyncing members, uncontended and contended (32 clients on 8 keys).
    _r("kvs x3 quorum CAS / etcd x3 txn CAS (issue 14)", (KVS3, "qcas"), (ETCD3, "cas_index"), 1.0),
    _r("kvs x3 quorum CAS contended / etcd x3 txn CAS contended (issue 14)", (KVS3, "qcas_hot"),
       (ETCD3, "cas_hot"), 1.0),
    _r("kvs PUT random / kvs PUT one (the cold-key cost)", (KVS, "put_random"), (KVS, "put_one"), 0.85),
    # The ceiling: the same HTTP server design answering from a dict. kvs serves its plain
    # requests on its fast path, so that is the design; bare aiohttp is reported beside it.
    _r("kvs GET / fast path GET", (KVS, "get"), (BARE_FAST, "get"), 0.85),
    _r("kvs PUT one key / fast path PUT one key", (KVS, "put_one"), (BARE_FAST, "put_one"), 0.70),
    _r("kvs CAS by index ok/s / fast path PUT", (KVS, "cas_index"), (BARE_FAST, "put_one"), 0.65),
    # Reported only.
    _r("kvs GET / aiohttp GET", (KVS, "get"), (BARE, "get")),
    _r("kvs PUT one key / aiohttp PUT one key", (KVS, "put_one"), (BARE, "put_one")),
    _r("kvs CAS by index ok/s / aiohttp PUT", (KVS, "cas_index"), (BARE, "put_one")),
    _r("fast path GET / aiohttp GET (dict handlers)", (BARE_FAST, "get"), (BARE, "get")),
    _r("fast path PUT one / aiohttp PUT one (dict handlers)", (BARE_FAST, "put_one"), (BARE, "put_one")),
    _r("kvs PUT random / fast path PUT random", (KVS, "put_random"), (BARE_FAST, "put_random")),
    _r("kvs CAS by version ok/s / fast path PUT", (KVS, "cas_version"), (BARE_FAST, "put_one")),
    _r("kvs CAS by version / etcd no-fsync CAS by version", (KVS, "cas_version"),
       (ETCD_NOFSYNC, "cas_version")),
    _r("kvs CAS contended / etcd no-fsync CAS contended", (KVS, "cas_hot"), (ETCD_NOFSYNC, "cas_hot")),
    _r("kvs txn / fast path txn", (KVS, "txn4"), (BARE_FAST, "txn4")),
    _r("kvs sync_writes PUT one / naive fsync PUT one", (KVS_SYNC, "put_one"), (BARE_FSYNC, "put_one")),
    _r("kvs sync_writes PUT random / naive fsync PUT random", (KVS_SYNC, "put_random"),
       (BARE_FSYNC, "put_random")),
    _r("kvs x3 GET / etcd x3 no-fsync GET", (KVS3, "get"), (ETCD3_NOFSYNC, "get")),
    _r("kvs x3 quorum CAS / kvs x3 local CAS", (KVS3, "qcas"), (KVS3, "cas_index")),
    _r("kvs x3 local CAS / etcd x3 txn CAS", (KVS3, "cas_index"), (ETCD3, "cas_index")),
    _r("kvs x3 PUT one / etcd x3 (fsync) PUT one", (KVS3, "put_one"), (ETCD3, "put_one")),
    _r("kvs x3 PUT random / etcd x3 (fsync) PUT random", (KVS3, "put_random"), (ETCD3, "put_random")),
]


@dataclass
class Check:
    name: str
    value: str
    target: str
    status: str  # "pass", "FAIL", "n/a" (not measured), "info" (no target)
    cpu: str = ""  # the denominator's CPU µs per request over the numerator's (> 1: kvs spends less)


def paired_ratio(num: Mapping[int, float], den: Mapping[int, float]) -> float | None:
    """Median over repetition rounds of num[r] / den[r]: both cells of a round ran within
    seconds of each other, so slow drifts of the machine's load cancel out. Falls back to
    the ratio of medians when the two cells share no round."""
    pairs = [num[r] / den[r] for r in num if r in den and den[r] > 0]
    if pairs:
        return median(pairs)
    if num and den and median(den.values()) > 0:
        return median(num.values()) / median(den.values())
    return None


def ratio_checks(series: Mapping[tuple[str, str], Mapping[int, float]], ratios: Sequence[Ratio] = RATIOS,
                 invalid: Iterable[tuple[str, str]] = (),
                 cpu: Mapping[tuple[str, str], Mapping[int, float]] | None = None) -> list[Check]:
    """Ratios of measured throughputs ((target, op) -> {round: value}) against their minimums.

    A cell in `invalid` (measured, but with errors or unexpected answers) is not compared.
    `cpu` ((target, op) -> {round: CPU µs per request}) adds the inverse ratio of CPU costs,
    in the same sense as the throughput ratio: the steadier figure on a shared machine."""
    cpu = cpu or {}
    checks = []
    invalid = set(invalid)
    for ratio in ratios:
        wanted = f">= {ratio.minimum:g}x" if ratio.minimum is not None else ""
        if ratio.num in invalid or ratio.den in invalid:
            checks.append(Check(ratio.name, "invalid (see problems)", wanted, "n/a"))
            continue
        got = None
        if ratio.num in series and ratio.den in series:
            got = paired_ratio(series[ratio.num], series[ratio.den])
        if got is None:
            checks.append(Check(ratio.name, "not measured", wanted, "n/a"))
            continue
        status = "info" if ratio.minimum is None else ("pass" if got >= ratio.minimum else "FAIL")
        cost = (paired_ratio(cpu[ratio.den], cpu[ratio.num])
                if cpu.get(ratio.num) and cpu.get(ratio.den) else None)
        checks.append(Check(ratio.name, f"{got:.2f}x", wanted, status, f"{cost:.2f}x" if cost else ""))
    return checks


QUORUM_P50 = "quorum CAS p50 over local CAS (issue 14)"


def quorum_readings(q: Mapping[str, Any]) -> list[tuple[int, float | None, float | None, bool]]:
    """(clients, local CAS p50 ms, quorum CAS p50 ms, gated?) with one client, then with the
    table's concurrency."""
    return [(1, q.get("local_p50_1c_ms"), q.get("quorum_p50_1c_ms"), True),
            (q.get("clients", 32), q.get("local_p50_ms"), q.get("quorum_p50_ms"), False)]


def quorum_latency_checks(q: Mapping[str, Any] | None) -> list[Check]:
    """Issue 14's p50 goal: quorum CAS adds at most 2 loopback round trips + 1 fsync to local
    CAS. Gated with one client, where p50 is the protocol's own latency; with the table's
    32 clients on one server core, p50 is mostly queueing (concurrency / throughput), so
    that reading is reported as info."""
    if not q:
        return [Check(QUORUM_P50, "not measured", "<= 2 x rtt + fsync", "n/a")]
    wanted = f"<= {q['budget_ms']:.2f} ms"
    checks = []
    for clients, local, quorum, gated in quorum_readings(q):
        name = f"{QUORUM_P50}, {clients} client{'s' if clients != 1 else ''}"
        if local is None or quorum is None:
            checks.append(Check(name, "not measured", wanted, "n/a"))
            continue
        added = quorum - local
        status = ("pass" if added <= q["budget_ms"] else "FAIL") if gated else "info"
        checks.append(Check(name, f"{quorum:.2f} - {local:.2f} = {added:.2f} ms", wanted, status))
    return checks


AE_TIME_FACTOR = 3.0  # ms at the largest n <= this x ms at the smallest n (+ slack) for each d
AE_TIME_SLACK_MS = 10.0


def figure_checks(fig: Mapping[str, Any], full: bool) -> list[Check]:
    """Targets on the cluster figures: write-to-visible (issue 17), quorum CAS latency (issue 14),
    anti-entropy and the 1M-key start-up and RSS (issue 6; issue 17's 10M-key figures are not
    measured by this harness)."""
    checks: list[Check] = quorum_latency_checks(fig.get("quorum_latency"))
    kvs_w2v = fig.get("write_to_visible", {}).get(KVS3)
    etcd_w2v = fig.get("write_to_visible", {}).get(ETCD3_NOFSYNC)
    if kvs_w2v and etcd_w2v and kvs_w2v.get("p50_ms") is not None and etcd_w2v.get("p50_ms") is not None:
        ok = kvs_w2v["p50_ms"] <= etcd_w2v["p50_ms"]
        checks.append(Check("write-to-visible p50: kvs x3 <= etcd x3 no-fsync",
                            f"{kvs_w2v['p50_ms']:.1f} vs {etcd_w2v['p50_ms']:.1f} ms", "kvs <= etcd",
                            "pass" if ok else "FAIL"))
    else:
        checks.append(Check("write-to-visible p50: kvs x3 <= etcd x3 no-fsync", "not measured",
                            "kvs <= etcd", "n/a"))
    if kvs_w2v and kvs_w2v.get("p99_ms") is not None:
        checks.append(Check("write-to-visible p99: kvs x3", f"{kvs_w2v['p99_ms']:.1f} ms", "<= 50 ms",
                            "pass" if kvs_w2v["p99_ms"] <= 50 and not kvs_w2v.get("timeouts") else "FAIL"))
    else:
        checks.append(Check("write-to-visible p99: kvs x3", "not measured", "<= 50 ms", "n/a"))
    rows = fig.get("anti_entropy") or []
    ten = [r for r in rows if r["d"] == 10 and r["n"] == 100_000]
    if ten:
        pct = ten[0]["pct_of_dump"]
        checks.append(Check("anti-entropy bytes, d=10 of n=100k", f"{pct:.3f}% of dump", "<= 1%",
                            "pass" if pct <= 1.0 else "FAIL"))
    else:
        checks.append(Check("anti-entropy bytes, d=10 of n=100k", "not measured", "<= 1%", "n/a"))
    ns = sorted({r["n"] for r in rows})
    if len(ns) >= 2:
        small, large = ns[0], ns[-1]
        for d in sorted({r["d"] for r in rows}):
            a = next((r for r in rows if r["n"] == small and r["d"] == d), None)
            b = next((r for r in rows if r["n"] == large and r["d"] == d), None)
            if a is None or b is None:
                continue
            limit = AE_TIME_FACTOR * a["ms"] + AE_TIME_SLACK_MS
            checks.append(Check(f"anti-entropy ms, d={d}: n={large:,} vs n={small:,}",
                                f"{b['ms']:.1f} vs {a['ms']:.1f} ms",
                                f"<= {AE_TIME_FACTOR:g}x + {AE_TIME_SLACK_MS:g} ms",
                                "pass" if b["ms"] <= limit else "FAIL"))
    start = fig.get("startup")
    for name, key, limit, unit in (("start-up time", "startup_s", 10.0, "s"), ("RSS", "rss_mb", 500.0, "MB")):
        label = f"{name} with 1M keys"
        if not start:
            checks.append(Check(label, "not measured", f"<= {limit:g} {unit}", "n/a"))
        elif start["keys"] < 1_000_000 or not full:
            checks.append(Check(label, f"{start[key]:.1f} {unit} with {start['keys']:,} keys",
                                f"<= {limit:g} {unit} (needs --full)", "info"))
        else:
            checks.append(Check(label, f"{start[key]:.1f} {unit}", f"<= {limit:g} {unit}",
                                "pass" if start[key] <= limit else "FAIL"))
    return checks


# -- formatting -----------------------------------------------------------------------------


def _fmt_rate(value: float | None) -> str:
    return "" if value is None else f"{value:,.0f}"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]], align: str = "") -> str:
    """A GitHub table; `align` has one letter per column, l or r (default l)."""
    rows = [list(r) for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    align = align.ljust(len(header), "l")

    def line(cells: Sequence[str]) -> str:
        parts = [str(c).rjust(w) if a == "r" else str(c).ljust(w)
                 for c, w, a in zip(cells, widths, align, strict=True)]
        return "| " + " | ".join(parts) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if a == "r" else ("-" * (w + 2))
                          for w, a in zip(widths, align, strict=True)) + "|"
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def throughput_table(cells: Sequence[Cell]) -> str:
    rows = []
    for c in cells:
        if not c.reps:
            rows.append([c.target, c.label, "failed", "", "", "", "", "", "", "; ".join(c.problems)])
            continue
        conflict = c.conflict_pct
        rows.append([
            c.target, c.label, _fmt_rate(c.rps), _fmt_rate(c.ok_rps) if c.cas else "",
            f"{conflict:.1f}%" if conflict is not None else "", f"{c.p50_ms:.2f}", f"{c.p99_ms:.2f}",
            f"{c.spread_pct:.0f}%", _fmt_cpu(c.cpu_us), "; ".join(c.problems),
        ])
    return markdown_table(["target", "operation", "req/s", "ok/s", "conflicts", "p50 ms", "p99 ms",
                           "spread", "CPU µs/req", "problems"], rows, "llrrrrrrrl")


def _fmt_cpu(value: float | None) -> str:
    return "" if value is None else f"{value:.0f}"


def checks_table(checks: Sequence[Check]) -> str:
    return markdown_table(["check", "measured", "target", "status", "CPU µs/req ratio"],
                          [[c.name, c.value, c.target, c.status, c.cpu] for c in checks], "lrllr")


def figures_tables(fig: Mapping[str, Any]) -> str:
    out: list[str] = []
    w2v = fig.get("write_to_visible") or {}
    if w2v:
        out.append("Write-to-visible (PUT on node i, poll node i+1 until it reads back):\n")
        out.append(markdown_table(
            ["cluster", "trials", "p50 ms", "p99 ms", "max ms", "PUT ack p50 ms", "timeouts"],
            [[name, str(r["trials"]), _fmt_ms(r["p50_ms"]), _fmt_ms(r["p99_ms"]), _fmt_ms(r["max_ms"]),
              _fmt_ms(r["ack_p50_ms"]), str(r["timeouts"])] for name, r in w2v.items()], "lrrrrrr"))
    q = fig.get("quorum_latency")
    if q:
        out.append(f"\nQuorum CAS p50 over local CAS on kvs x3 (budget: 2 x round trip {q['rtt_ms']:.2f} ms "
                   f"+ fsync {q['fsync_ms']:.2f} ms = {q['budget_ms']:.2f} ms, idle-cluster p50s):\n")
        out.append(markdown_table(
            ["clients", "local CAS p50 ms", "quorum CAS p50 ms", "added ms", "budget ms"],
            [[str(clients), _fmt_ms(local), _fmt_ms(quorum),
              _fmt_ms(None if local is None or quorum is None else quorum - local), f"{q['budget_ms']:.2f}"]
             for clients, local, quorum, _ in quorum_readings(q)], "rrrrr"))
    fd = fig.get("failure_detection")
    if fd:
        out.append("\nFailure detection (SIGKILL one of 3 kvs nodes, default gossip settings):\n")
        out.append(markdown_table(
            ["all observers: suspect", "all observers: dead", "first observer: dead"],
            [[_fmt_s(fd["suspect_s"]), _fmt_s(fd["dead_s"]), _fmt_s(fd["dead_first_s"])]], "rrr"))
    ae = fig.get("anti_entropy") or []
    if ae:
        out.append("\nAnti-entropy, one sync round (median of 3), d differing keys out of n:\n")
        out.append(markdown_table(
            ["n", "d", "bytes", "% of full dump", "ms", "keys repaired"],
            [[f"{r['n']:,}", f"{r['d']:,}", f"{r['bytes']:,}", f"{r['pct_of_dump']:.3f}%", f"{r['ms']:.1f}",
              str(r["keys_repaired"])] for r in ae], "rrrrrr"))
    part = fig.get("partition")
    if part:
        out.append(f"\nPartition {{A}} | {{B, C}}, {part['keys']:,} divergent keys (half written on each "
                   f"side), default intervals (sync {part['sync_interval_ms']} ms, gossip "
                   f"{part['gossip_interval_ms']} ms):\n")
        out.append(markdown_table(["split detected after", "converged after heal", "AE rounds", "AE bytes"],
                                  [[_fmt_s(part["split_detected_s"]), _fmt_s(part["converge_s"]),
                                    str(part["rounds"]), f"{part['bytes']:,}"]], "rrrr"))
    start = fig.get("startup")
    if start:
        out.append("\nStart-up (spawn to /health 200) and RSS of one node:\n")
        out.append(markdown_table(["keys", "start-up", "RSS at start", "RSS after 1 s"],
                                  [[f"{start['keys']:,}", _fmt_s(start["startup_s"]),
                                    f"{start['rss_mb']:.0f} MB", f"{start['rss_idle_mb']:.0f} MB"]], "rrrr"))
    errors = fig.get("errors") or {}
    for name, message in errors.items():
        out.append(f"\n{name}: FAILED: {message}")
    return "\n".join(out)


def _fmt_ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _fmt_s(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} s"


# -- one wrk run ----------------------------------------------------------------------------


def run_wrk(target: Target, op: str, duration: int, tag: str, *, connections: int,
            cpus: str | None, log_path: Path, args: Sequence[str] = ()) -> Rep:
    """Load `target` with operation `op` for `duration` seconds; wrk's output goes to log_path.
    `args`: script options that override the operation's (e.g. `keys=10000000`)."""
    spec = OPS[op]
    args = [*spec.args, *args]
    if spec.fresh_prefix:
        args.append(f"prefix=bench/{op}/{tag}-{time.time_ns()}")
    c = str(connections)
    command = pinned(["wrk", "-t", c, "-c", c, "-d", f"{duration}s", "--timeout", "5s",
                      "-s", str(LUA_DIR / spec.scripts[target.kind]), target.url, "--", *args], cpus)
    env = {**os.environ, "BENCH_LUA_DIR": str(LUA_DIR), "BENCH_TOKEN": target.token or ""}
    cpu0 = cpu_seconds(target.procs)
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True, text=True)
    try:
        output, _ = proc.communicate(timeout=duration + 60)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    with open(log_path, "a") as log:
        log.write(f"===== {target.name} {op} {tag}: {shlex.join(command)}\n{output}\n")
    cpu1 = cpu_seconds(target.procs)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exited {proc.returncode}: {output[-1000:]}")
    result = Rep.parse(output)
    if cpu0 is not None and cpu1 is not None:
        result.cpu_s = cpu1 - cpu0
    return result


def prepare(target: Target) -> None:
    """The key the GET cells read."""
    client = Http(target.url, ca=target.ca, token=target.token)
    try:
        target.put(client, "bench/get", "v" * VALUE_BYTES)
    finally:
        client.close()


# -- the run --------------------------------------------------------------------------------


@dataclass
class Settings:
    full: bool
    connections: int
    duration: int
    reps: int
    warmup: int
    warmup_every_op: bool
    w2v_trials: int
    ae_ns: tuple[int, ...]
    ae_ds: tuple[int, ...]
    partition_keys: int
    server_cpus: str | None
    load_cpus: str | None
    sequential: bool = False


def settings_for(args: argparse.Namespace) -> Settings:
    full = bool(args.full)
    cpus = os.cpu_count() or 1
    pin = have_taskset() and cpus >= 2 and not args.no_pin
    return Settings(
        full=full,
        connections=args.connections,
        duration=args.duration or (5 if full else 1),
        reps=args.reps or (5 if full else 3),
        warmup=args.warmup if args.warmup is not None else (2 if full else 1),
        warmup_every_op=full,
        w2v_trials=args.trials or (1000 if full else 200),
        ae_ns=(10_000, 100_000, 1_000_000) if full else (10_000, 100_000),
        ae_ds=(1, 10, 100, 1000),
        partition_keys=10_000,
        server_cpus=args.server_cpus if pin else None,
        load_cpus=args.load_cpus if pin else None,
        sequential=bool(args.sequential),
    )


class Runner:
    def __init__(self, settings: Settings, out: Path, work: Path) -> None:
        self.s = settings
        self.out = out
        self.work = work
        self.t0 = time.perf_counter()
        self.cells: list[Cell] = []
        self.fig: dict[str, Any] = {"write_to_visible": {}, "errors": {}}
        self.wrk_log = out / "wrk.log"

    def say(self, message: str) -> None:
        print(f"[{time.perf_counter() - self.t0:6.1f}s] {message}", flush=True)

    # wrk ------------------------------------------------------------------------------------

    def wrk(self, target: Target, op: str, duration: int, tag: str) -> Rep:
        return run_wrk(target, op, duration, tag, connections=self.s.connections,
                       cpus=self.s.load_cpus, log_path=self.wrk_log)

    def run_rep(self, target: Target, cell: Cell, rep: int | None) -> None:
        """One wrk run of one cell: a warm-up (rep None, discarded) or timed repetition `rep`."""
        spec = OPS[cell.op]
        try:
            if rep is None:
                self.wrk(target, cell.op, self.s.warmup, "warmup")
                return
            result = self.wrk(target, cell.op, self.s.duration, f"rep{rep}")
            result.round = rep
        except (RuntimeError, ValueError, OSError) as exc:
            problem = f"error: {exc}".splitlines()[0][:200]
            if problem not in cell.problems:
                cell.problems.append(problem)
            self.say(f"{target.name}: {spec.label}: {problem}")
            return
        cell.reps.append(result)
        new = [p for p in result.problems(spec.cas) if p not in cell.problems]
        cell.problems += new
        extra = f", ok {result.ok_rps:,.0f}/s, conflicts {result.conflict:,}" if spec.cas else ""
        self.say(f"{target.name:<17} {spec.label:<22} rep {rep}/{self.s.reps}: "
                 f"{result.rps:>8,.0f} req/s{extra}, p50 {result.p50_us / 1000:.2f} ms, "
                 f"p99 {result.p99_us / 1000:.2f} ms" + (f"  PROBLEM: {'; '.join(new)}" if new else ""))

    # targets --------------------------------------------------------------------------------

    def run_group(self, specs: Sequence[TargetSpec]) -> None:
        """Start every target of `specs`, then measure their cells in interleaved rounds.

        All targets of the group run at once (idle ones cost next to nothing); round r runs
        repetition r of every cell, operation by operation (GET of every target, then PUT of
        every target, ...), so the cells a ratio compares run seconds apart, and a burst of
        noise from other processes hits one repetition of several cells rather than every
        repetition of one. Ratios are medians of per-round ratios (`paired_ratio`).
        Cluster figures follow, then every target is stopped.
        """
        started: list[tuple[TargetSpec, Target]] = []
        work: list[tuple[Target, Cell]] = []
        try:
            for spec in specs:
                self.say(f"starting {spec.name}: {spec.what}")
                target = spec.make(self.work, self.s.server_cpus)
                t0 = time.perf_counter()
                try:
                    target.start()
                    prepare(target)
                except (RuntimeError, OSError) as exc:
                    target.stop()
                    self.say(f"{spec.name}: FAILED to start: {exc}")
                    self.cells += [Cell(spec.name, op, OPS[op].cas, [], [f"target failed: {exc}"[:200]])
                                   for op in spec.ops]
                    continue
                started.append((spec, target))
                self.say(f"{spec.name} ready in {time.perf_counter() - t0:.1f} s at {', '.join(target.urls)}"
                         + (f" (load on {target.url})" if len(target.urls) > 1 else ""))
            for spec, target in started:
                for op in spec.ops:
                    cell = Cell(spec.name, op, cas=OPS[op].cas)
                    self.cells.append(cell)  # the table lists cells by target
                    work.append((target, cell))
            # ...but they run by operation: the cells a ratio compares run back to back.
            order = list(OPS)
            work.sort(key=lambda tc: order.index(tc[1].op))
            if self.s.warmup:
                self.say(f"warm-up: {self.s.warmup} s per " + ("cell" if self.s.warmup_every_op
                                                                else "target (its first cell)"))
                warmed: set[str] = set()
                for target, cell in work:
                    if self.s.warmup_every_op or target.name not in warmed:
                        warmed.add(target.name)
                        self.run_rep(target, cell, None)
            for rep in range(1, self.s.reps + 1):
                for target, cell in work:
                    self.run_rep(target, cell, rep)
            for spec, target in started:
                if spec.cluster:
                    self.write_to_visible(spec, target)
                if isinstance(target, KvsTarget) and "qcas" in spec.ops:
                    self.quorum_latency(spec, target)
            for spec, target in started:
                if spec.cluster and isinstance(target, KvsTarget):
                    try:
                        self.fig["failure_detection"] = figures.failure_detection(target, self.say)
                    except (RuntimeError, OSError) as exc:
                        self.fig["errors"]["failure detection"] = str(exc)[:300]
        finally:
            for spec, target in reversed(started):
                target.stop()
                self.say(f"stopped {spec.name}")
        for cell in self.cells:
            if cell.problems and any(cell is c for _, c in work):
                self.say(f"{cell.target}: {cell.label}: PROBLEMS: {'; '.join(cell.problems)}")

    def write_to_visible(self, spec: TargetSpec, target: Target) -> None:
        try:
            if isinstance(target, KvsTarget):
                # Let the eager-push backlog of the load drain first: measure an idle cluster.
                t0 = time.perf_counter()
                wait_until(lambda: len(target.merkle_roots()) == 1, 120,
                           f"{spec.name} to converge after the load", target.procs, interval=0.2)
                self.say(f"{spec.name}: Merkle roots equal {time.perf_counter() - t0:.1f} s after the load")
            self.fig["write_to_visible"][spec.name] = figures.write_to_visible(
                target, self.s.w2v_trials, self.say)
        except (RuntimeError, OSError, ValueError) as exc:
            self.fig["errors"][f"write-to-visible {spec.name}"] = str(exc)[:300]

    def quorum_latency(self, spec: TargetSpec, target: KvsTarget) -> None:
        """Issue 14's p50 budget, and local and quorum CAS p50 at the table's concurrency (from
        the cells) and with one client (one more wrk run each), on the idle cluster."""
        try:
            q = figures.quorum_budget(target, self.s.w2v_trials, self.say)
            q["clients"] = self.s.connections
            for op, name in (("cas_index", "local"), ("qcas", "quorum")):
                cell = next((c for c in self.cells if (c.target, c.op) == (spec.name, op)), None)
                if cell is not None and cell.reps and not cell.problems:
                    q[f"{name}_p50_ms"] = cell.p50_ms
                rep = run_wrk(target, op, self.s.duration, "1client", connections=1,
                              cpus=self.s.load_cpus, log_path=self.wrk_log)
                if rep.problems(cas=True):
                    raise RuntimeError(f"{op} with one client: {'; '.join(rep.problems(cas=True))}")
                q[f"{name}_p50_1c_ms"] = rep.p50_us / 1000
            self.say(f"{spec.name}: one client: local CAS p50 {q['local_p50_1c_ms']:.2f} ms, "
                     f"quorum CAS p50 {q['quorum_p50_1c_ms']:.2f} ms")
            self.fig["quorum_latency"] = q
        except (RuntimeError, OSError, ValueError) as exc:
            self.fig["errors"]["quorum latency"] = str(exc)[:300]

    def in_process_figures(self) -> None:
        try:
            rows, largest = figures.run_in_process(
                figures.anti_entropy_curve(self.work, self.s.ae_ns, self.s.ae_ds, self.say))
            self.fig["anti_entropy"] = rows
        except (RuntimeError, OSError) as exc:
            self.fig["errors"]["anti-entropy"] = str(exc)[:300]
            largest = None
        if largest is not None:
            try:
                self.fig["startup"] = figures.startup_rss(largest, max(self.s.ae_ns), self.out / "logs",
                                                          self.s.server_cpus, self.say,
                                                          probe_key="user/0000001")
            except (RuntimeError, OSError) as exc:
                self.fig["errors"]["start-up"] = str(exc)[:300]
            shutil.rmtree(largest, ignore_errors=True)
        try:
            self.fig["partition"] = figures.run_in_process(
                figures.partition_convergence(self.work, self.s.partition_keys, self.say))
        except (RuntimeError, OSError) as exc:
            self.fig["errors"]["partition"] = str(exc)[:300]


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def _cpu_seconds() -> tuple[float, float, float]:
    """(busy, total) CPU seconds of the whole machine, and CPU seconds used by this harness and
    the children it has reaped (servers, wrk): the difference is what other processes used."""
    ticks = os.sysconf("SC_CLK_TCK")
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:8]]
    except OSError:
        return (0.0, 0.0, 0.0)
    idle = fields[3] + fields[4]
    ours = os.times()
    return ((sum(fields) - idle) / ticks, sum(fields) / ticks,
            ours.user + ours.system + ours.children_user + ours.children_system)


def report(runner: Runner, settings: Settings, command: str, elapsed: float, meta: dict[str, Any]) -> tuple[
        str, list[Check]]:
    series = {(c.target, c.op): c.by_round() for c in runner.cells if c.reps and not c.problems}
    invalid = {(c.target, c.op) for c in runner.cells if c.reps and c.problems}
    cpu = {(c.target, c.op): c.cpu_by_round() for c in runner.cells if c.reps and not c.problems}
    checks = ratio_checks(series, invalid=invalid, cpu=cpu) + figure_checks(runner.fig, settings.full)
    spreads = [c.spread_pct for c in runner.cells if len(c.reps) > 1]
    mode = "full" if settings.full else "short"
    lines = [
        f"Command: `{command}` ({mode} mode, {elapsed:.0f} s)",
        f"Machine: {meta['cpus']} CPUs, servers on CPU {settings.server_cpus or 'any'}, wrk and harness on "
        f"CPU {settings.load_cpus or 'any'}; wrk -t{settings.connections} -c{settings.connections} "
        f"(one connection per thread), {settings.reps} x {settings.duration} s per cell after a "
        f"{settings.warmup} s warm-up; medians over repetitions; "
        + ("one target at a time." if settings.sequential else
           "all targets up at once, repetitions interleaved (round r = rep r of every cell, operation "
           "by operation); ratios = median over rounds of the per-round ratio."),
        f"Noise: load average {meta['load_before']} before, {meta['load_after']} after; the machine's CPUs "
        f"were {meta['cpu_busy_pct']:.0f}% busy over the run, {meta['cpu_others_pct']:.0f}% of their "
        f"capacity used by processes other than the benchmark's; median spread of "
        f"repetitions {median(spreads) if spreads else float('nan'):.0f}% (max "
        f"{max(spreads) if spreads else float('nan'):.0f}%).",
        "",
        "Throughput and latency (req/s = all answers; ok/s = successful CAS):",
        "",
        throughput_table(runner.cells),
        "",
        "Ratios and targets (issue 17):",
        "",
        checks_table(checks),
        "",
        figures_tables(runner.fig),
    ]
    return "\n".join(lines) + "\n", checks


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--short", action="store_true", help="short mode, < 3 minutes (default)")
    mode.add_argument("--full", action="store_true", help="full mode: longer runs, 1M-key figures")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target of issue 17 is missed")
    parser.add_argument("--out", type=Path, default=None, help="results directory (default: a new /tmp dir)")
    parser.add_argument("--only", default=None,
                        help="comma-separated target names to run (e.g. 'aiohttp,kvs'); 'none' for none")
    parser.add_argument("--sequential", action="store_true",
                        help="run one target at a time (default: all at once, repetitions interleaved)")
    parser.add_argument("--no-figures", action="store_true", help="skip the in-process cluster figures")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (= threads), default 32")
    parser.add_argument("--duration", type=int, default=None, help="seconds per repetition")
    parser.add_argument("--reps", type=int, default=None, help="repetitions per cell")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up seconds (0: none)")
    parser.add_argument("--trials", type=int, default=None, help="write-to-visible trials (>= 200)")
    parser.add_argument("--server-cpus", default="0", help="taskset CPU list for servers (default 0)")
    parser.add_argument("--load-cpus", default="1",
                        help="taskset CPU list for wrk and the harness (default 1)")
    parser.add_argument("--no-pin", action="store_true", help="do not use taskset")
    parser.add_argument("--keep", action="store_true", help="keep the servers' data dirs")
    args = parser.parse_args(argv)
    settings = settings_for(args)
    command = "python -m bench.run " + shlex.join(list(argv if argv is not None else sys.argv[1:]))

    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install -y wrk", file=sys.stderr)
        return 2
    have_etcd = EtcdTarget.available()
    out = args.out or Path(tempfile.mkdtemp(prefix="kvs-bench-results-"))
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="kvs-bench-data-"))
    runner = Runner(settings, out, work)
    if settings.load_cpus:
        os.sched_setaffinity(0, {int(x) for x in _cpu_list(settings.load_cpus)})
    else:
        runner.say("not pinning (no taskset or fewer than 2 CPUs): numbers mix load and server")
    if not have_etcd:
        runner.say("etcd is not installed (apt-get install -y etcd-server): etcd targets are skipped")

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with SIGINT ignored
    only = None if args.only is None else {x.strip() for x in args.only.split(",") if x.strip()}
    meta: dict[str, Any] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                            "load_before": _loadavg(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    cpu0 = _cpu_seconds()
    runner.say(f"{'full' if settings.full else 'short'} mode; results in {out}; data in {work}")
    code = 0
    try:
        specs = []
        for spec in plan(settings.full):
            if only is not None and spec.name not in only:
                continue
            if spec.needs_etcd and not have_etcd:
                runner.cells += [Cell(spec.name, op, OPS[op].cas, [], ["etcd not installed"])
                                 for op in spec.ops]
                continue
            specs.append(spec)
        for group in ([[s] for s in specs] if settings.sequential else [specs]):
            if group:
                runner.run_group(group)
        if not args.no_figures:
            runner.in_process_figures()
    except KeyboardInterrupt:
        runner.say("interrupted: stopping every process")
        code = 130
    finally:
        stop_all()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    cpu1 = _cpu_seconds()
    total = cpu1[1] - cpu0[1]
    others = (cpu1[0] - cpu0[0]) - (cpu1[2] - cpu0[2])
    meta.update(load_after=_loadavg(), cpu_busy_pct=100 * (cpu1[0] - cpu0[0]) / total if total else 0.0,
                cpu_others_pct=max(0.0, 100 * others / total) if total else 0.0)
    elapsed = time.perf_counter() - runner.t0
    text, checks = report(runner, settings, command, elapsed, meta)
    print("\n" + text, flush=True)
    (out / "results.md").write_text(text)
    (out / "results.json").write_text(json.dumps({
        "meta": {**meta, "command": command, "settings": asdict(settings), "elapsed_s": elapsed},
        "cells": [{"target": c.target, "op": c.op, "label": c.label, "cas": c.cas, "problems": c.problems,
                   "reps": [asdict(r) for r in c.reps],
                   **({"rps": c.rps, "ok_rps": c.ok_rps, "p50_ms": c.p50_ms, "p99_ms": c.p99_ms,
                       "conflict_pct": c.conflict_pct, "spread_pct": c.spread_pct} if c.reps else {})}
                  for c in runner.cells],
        "figures": runner.fig, "checks": [asdict(c) for c in checks],
    }, indent=1))
    print(f"results: {out}/results.md, {out}/results.json; wrk output: {runner.wrk_log}")
    failed = [c for c in checks if c.status == "FAIL"]
    if args.check:
        if failed:
            print(f"--check: {len(failed)} target(s) missed:", file=sys.stderr)
            for c in failed:
                print(f"  FAIL {c.name}: {c.value} (target {c.target})", file=sys.stderr)
            code = code or 1
        else:
            skipped = [c for c in checks if c.status == "n/a"]
            print(f"--check: every measured target met ({len(skipped)} not measured)")
    return code


def _cpu_list(spec: str) -> list[int]:
    cpus: list[int] = []
    for part in spec.split(","):
        if "-" in part:
            lo, hi = part.split("-")
            cpus.extend(range(int(lo), int(hi) + 1))
        elif part:
            cpus.append(int(part))
    return cpus


if __name__ == "__main__":
    sys.exit(main())
