"""Smoke test of the benchmark harness (bench/): it imports, and its table and ratio logic is
right on made-up numbers. Nothing is timed or run against a server here; the benchmark itself
is `python -m bench.run` (docs/benchmarks.md)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from bench import ab, bare_app, cluster_figures, engine_cost, front_options, quorum_cost, run, targets
from bench.run import KVS, Cell, Ratio, Rep


def _rep(requests: int, ok: int = 0, conflict: int = 0, p50_us: int = 2000, p99_us: int = 9000) -> Rep:
    return Rep(requests=requests, duration_us=1_000_000, p50_us=p50_us, p99_us=p99_us, ok=ok,
               conflict=conflict)


def test_harness_modules_import() -> None:
    assert bare_app.BareApp and targets.KvsTarget and targets.EtcdTarget and cluster_figures.startup_rss


def test_rep_parses_the_line_the_lua_done_prints() -> None:
    output = ("Running 1s test @ http://127.0.0.1:1\n"
              'BENCH_JSON {"requests":1200,"duration_us":2000000,"bytes":1,"errors_connect":0,'
              '"errors_read":0,"errors_write":0,"errors_status":3,"errors_timeout":0,"p50_us":1500,'
              '"p90_us":2000,"p99_us":4000,"max_us":9000,"mean_us":1700.5,"ok":0,"conflict":0,"other":0}\n')
    rep = Rep.parse(output)
    assert rep.rps == 600
    assert rep.problems(cas=False) == ["3 non-2xx answers"]
    assert rep.problems(cas=True) == []  # for CAS, a 409 is an outcome, not a problem


def test_cell_takes_medians_and_counts_conflicts() -> None:
    cell = Cell(KVS, "cas_hot", cas=True, reps=[_rep(1000, 100, 900), _rep(3000, 300, 2700, p99_us=20_000),
                                                _rep(2000, 200, 1800)])
    assert cell.rps == 2000
    assert cell.value == cell.ok_rps == 200  # CAS is compared by successful CAS/s
    assert cell.conflict_pct == 90
    assert cell.p99_ms == 9.0
    assert cell.spread_pct == 100  # (3000 - 1000) / 2000


def test_ratio_checks_pass_fail_info_and_missing() -> None:
    ratios = [Ratio("get", ("kvs", "get"), ("aiohttp", "get"), 0.85),
              Ratio("put", ("kvs", "put"), ("aiohttp", "put"), 0.70),
              Ratio("info", ("kvs", "get"), ("etcd", "get"), None),
              Ratio("missing", ("kvs", "cas"), ("aiohttp", "put"), 0.65),
              Ratio("bad", ("kvs", "txn"), ("aiohttp", "put"), 0.65)]
    values = {("kvs", "get"): 900.0, ("aiohttp", "get"): 1000.0, ("kvs", "put"): 600.0,
              ("aiohttp", "put"): 1000.0, ("etcd", "get"): 300.0, ("kvs", "txn"): 1.0}
    series = {cell: {1: value} for cell, value in values.items()}
    checks = run.ratio_checks(series, ratios, invalid=[("kvs", "txn")])
    assert [(c.name, c.value, c.status) for c in checks] == [
        ("get", "0.90x", "pass"), ("put", "0.60x", "FAIL"), ("info", "3.00x", "info"),
        ("missing", "not measured", "n/a"), ("bad", "invalid (see problems)", "n/a")]


def test_ratios_pair_repetitions_of_the_same_round() -> None:
    # Round 2 was slow for both (noise); pairing by round keeps the ratio at 0.5.
    kvs, bare = {1: 500.0, 2: 100.0, 3: 520.0}, {1: 1000.0, 2: 200.0, 3: 1040.0}
    assert run.paired_ratio(kvs, bare) == 0.5
    assert run.paired_ratio({1: 300.0}, {2: 600.0}) == 0.5  # no common round: ratio of medians
    assert run.paired_ratio({}, bare) is None
    cell = Cell(KVS, "get", reps=[_rep(10), _rep(30)])
    cell.reps[0].round, cell.reps[1].round = 1, 2
    assert cell.by_round() == {1: 10.0, 2: 30.0}


def test_figure_checks_on_fake_figures() -> None:
    fig = {
        "write_to_visible": {run.KVS3: {"p50_ms": 2.0, "p99_ms": 60.0, "timeouts": 0},
                             run.ETCD3_NOFSYNC: {"p50_ms": 3.0, "p99_ms": 9.0, "timeouts": 0}},
        "anti_entropy": [{"n": 10_000, "d": 10, "ms": 4.0, "pct_of_dump": 1.2},
                         {"n": 100_000, "d": 10, "ms": 30.0, "pct_of_dump": 0.14}],
        "startup": {"keys": 1_000_000, "startup_s": 4.0, "rss_mb": 700.0},
    }
    status = {c.name: c.status for c in run.figure_checks(fig, full=True)}
    assert status["write-to-visible p50: kvs x3 <= etcd x3 no-fsync"] == "pass"
    assert status["write-to-visible p99: kvs x3"] == "FAIL"
    assert status["anti-entropy bytes, d=10 of n=100k"] == "pass"
    assert status["anti-entropy ms, d=10: n=100,000 vs n=10,000"] == "FAIL"  # 30 > 3 * 4 + 10
    assert status["start-up time with 1M keys"] == "pass"
    assert status["RSS with 1M keys"] == "FAIL"
    short = {c.name: c.status for c in run.figure_checks(fig, full=False)}
    assert short["RSS with 1M keys"] == "info"  # 1M-key targets are only gated in --full


def test_tables_are_aligned_markdown() -> None:
    cells = [Cell("aiohttp", "get", reps=[_rep(12_000)]), Cell(KVS, "cas_index", cas=True,
                                                               reps=[_rep(3000, 3000)]),
             Cell("etcd", "get", problems=["etcd not installed"])]
    cells[0].reps[0].cpu_s = 0.6  # 50 µs per request
    table = run.throughput_table(cells).splitlines()
    assert "CPU µs/req" in table[0] and " 50 |" in table[2]
    assert table[0].startswith("| target ") and set(table[1]) <= {"|", "-", ":"}
    assert len({len(line) for line in table}) == 1  # every row padded to the same width
    assert "| 12,000 |" in table[2] and " 0.0% |" in table[3] and "etcd not installed" in table[4]
    assert run.markdown_table(["a", "b"], [["1", "22"]], "lr") == "| a |  b |\n|---|---:|\n| 1 | 22 |"


def test_percentile_is_nearest_rank() -> None:
    values = list(range(1, 201))
    assert cluster_figures.percentile(values, 50) == 100
    assert cluster_figures.percentile(values, 99) == 198
    assert cluster_figures.percentile([5.0], 99) == 5.0


def test_every_planned_operation_has_a_script_for_its_target(tmp_path: Path) -> None:
    for full in (False, True):
        for spec in run.plan(full):
            target = spec.make(tmp_path, None)  # constructed, not started
            for op in spec.ops:
                assert (run.LUA_DIR / run.OPS[op].scripts[target.kind]).is_file(), (spec.name, op)


def test_ab_targets_name_a_revision_and_settings(tmp_path: Path) -> None:
    here = ab._target(".+KVS_REVISION_HISTORY_LIMIT=1,KVS_SYNC_WRITES=true", tmp_path, None)
    assert isinstance(here, targets.KvsTarget) and here.root == targets.REPO_ROOT
    assert here.env["KVS_REVISION_HISTORY_LIMIT"] == "1" and here.env["KVS_SYNC_WRITES"] == "true"
    head = ab._target("HEAD", tmp_path, None)
    assert head.root != targets.REPO_ROOT and (head.root / "kvs" / "engine.py").is_file()
    assert ab._target("HEAD+KVS_SYNC_WRITES=true", tmp_path, None).root == head.root


def test_ab_compares_cas_with_the_bare_put() -> None:
    cells = {(run.BARE, op): Cell(run.BARE, op, reps=[_rep(100)]) for op in ("get", "put_one")}
    assert ab._denominator(cells, "get") is cells[run.BARE, "get"]
    assert ab._denominator(cells, "cas_index") is cells[run.BARE, "put_one"]


def test_cpu_ticks_are_read_after_the_command_name() -> None:
    # The command name may hold spaces and parentheses: fields count from the last ')'.
    stat = "4242 (kvs (node) 1) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 31 7 9 20 0 3 0"
    assert targets.stat_cpu_ticks(stat) == 281
    mine = targets.stat_cpu_ticks(Path("/proc/self/stat").read_text()) / os.sysconf("SC_CLK_TCK")
    used = os.times()
    assert abs(mine - (used.user + used.system)) < 0.05


def test_cells_report_cpu_per_request_by_round() -> None:
    cell = Cell(KVS, "put_one", reps=[_rep(1000), _rep(2000), _rep(4000)])
    for rnd, (rep, cpu) in enumerate(zip(cell.reps, (0.1, 0.1, None), strict=True), start=1):
        rep.round, rep.cpu_s = rnd, cpu
    assert cell.reps[0].cpu_us_per_req == 100 and cell.reps[2].cpu_us_per_req is None
    assert cell.cpu_by_round() == {1: 100.0, 2: 50.0}
    assert cell.cpu_us == 75  # median of the measured repetitions only
    assert Cell(KVS, "get", reps=[_rep(10)]).cpu_us is None


def test_ratio_checks_add_the_inverse_cpu_ratio() -> None:
    ratios = [Ratio("put", ("kvs", "put"), ("etcd", "put"), 1.5),
              Ratio("get", ("kvs", "get"), ("etcd", "get"), 3)]
    series = {("kvs", "put"): {1: 300.0}, ("etcd", "put"): {1: 100.0}, ("kvs", "get"): {1: 2.0},
              ("etcd", "get"): {1: 1.0}}
    cpu = {("kvs", "put"): {1: 40.0}, ("etcd", "put"): {1: 100.0}}
    checks = run.ratio_checks(series, ratios, cpu=cpu)
    assert [(c.value, c.status, c.cpu) for c in checks] == [("3.00x", "pass", "2.50x"), ("2.00x", "FAIL", "")]
    assert "CPU µs/req ratio" in run.checks_table(checks).splitlines()[0]


def test_the_targets_are_those_of_issue_17() -> None:
    minimum = {(r.num, r.den): r.minimum for r in run.RATIOS}
    for op in ("put_one", "put_random", "cas_index", "txn4"):
        assert minimum[(KVS, op), (run.ETCD_NOFSYNC, op)] == 1.5
    for op in ("put_one", "put_random", "cas_index", "txn4"):
        assert minimum[(run.KVS_SYNC, op), (run.ETCD, op)] == 1.5
    for op in ("put_one", "put_random"):
        assert minimum[(run.KVS3, op), (run.ETCD3_NOFSYNC, op)] == 1.5
    assert minimum[(KVS, "get"), (run.ETCD_NOFSYNC, "get")] == 3.0
    assert minimum[(KVS, "put_random"), (KVS, "put_one")] == 0.85
    # The ceiling is the HTTP server kvs runs (its fast path) answering from a dict.
    assert minimum[(KVS, "get"), (run.BARE_FAST, "get")] == 0.85
    assert minimum[(KVS, "put_one"), (run.BARE_FAST, "put_one")] == 0.70
    assert minimum[(KVS, "cas_index"), (run.BARE_FAST, "put_one")] == 0.65


def test_ab_table_has_cpu_per_request_and_its_ratio() -> None:
    cells = {}
    for name, requests, cpu in ((run.BARE, 2000, 0.1), ("kvs@A", 1000, 0.1), ("kvs@B", 1500, 0.075)):
        cell = Cell(name, "put_one", reps=[_rep(requests)])
        cell.reps[0].round, cell.reps[0].cpu_s = 1, cpu
        cells[name, "put_one"] = cell
    lines = ab.table(cells, [run.BARE, "kvs@A", "kvs@B"], ["put_one"]).splitlines()
    assert "CPU µs/req" in lines[0] and "CPU / kvs@A" in lines[0]
    assert lines[-1] == "| PUT one key | kvs@B | 1,500 | 50 | 0.75 | 1.50 | 0.50 |"


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
@pytest.mark.parametrize("fast", [False, True], ids=["aiohttp", "fast-path"])
def test_a_wrk_run_measures_the_servers_cpu(tmp_path: Path, fast: bool) -> None:
    with targets.BareTarget(run.BARE, tmp_path, None, fast=fast) as bare:
        run.prepare(bare)
        for op in ("put_one", "get"):
            rep = run.run_wrk(bare, op, 1, "t", connections=2, cpus=None,
                              log_path=tmp_path / "wrk.log")
            assert rep.requests > 0 and rep.errors_status == 0, (op, rep)
    assert rep.cpu_s is not None
    assert 0 < rep.cpu_s < 5 and rep.cpu_us_per_req is not None and rep.cpu_us_per_req > 1


def test_front_options_table_pairs_cpu_by_round_against_the_application() -> None:
    cells: dict[tuple[str, str], list[Rep]] = {}
    cpus = ((0.1, 0.2), (0.05, 0.2), (0.1, 0.1), (0.02, 0.02), (0.04, 0.06))
    for name, cpu in zip(front_options.OPTIONS, cpus, strict=True):
        cells[name, "get"] = [_rep(1000), _rep(1000)]
        for rep, seconds in zip(cells[name, "get"], cpu, strict=True):
            rep.cpu_s = seconds
    lines = front_options.table(cells, ["get"]).splitlines()
    assert lines[2] == "| GET | application | 150 | 1,000 | 1.00 |"
    assert lines[3] == "| GET | front | 125 | 1,000 | 0.75 |"      # ratios 0.5 and 1.0
    assert lines[5] == "| GET | protocol | 20 | 1,000 | 0.15 |"     # ratios 0.2 and 0.1


def test_issue_14_compares_quorum_cas_with_etcd_x3_txn_cas_in_both_modes(tmp_path: Path) -> None:
    minimum = {(r.num, r.den): r.minimum for r in run.RATIOS}
    assert minimum[(run.KVS3, "qcas"), (run.ETCD3, "cas_index")] == 1.0
    assert minimum[(run.KVS3, "qcas_hot"), (run.ETCD3, "cas_hot")] == 1.0
    for full in (False, True):
        ops = {spec.name: spec.ops for spec in run.plan(full)}
        assert {"qcas", "qcas_hot", "cas_index"} <= set(ops[run.KVS3])
        assert {"cas_index", "cas_hot"} <= set(ops[run.ETCD3])


def test_quorum_latency_is_gated_with_one_client_and_reported_at_full_load() -> None:
    q = {"rtt_ms": 0.5, "fsync_ms": 2.0, "budget_ms": 3.0, "clients": 32, "local_p50_1c_ms": 1.0,
         "quorum_p50_1c_ms": 3.5, "local_p50_ms": 12.0, "quorum_p50_ms": 50.0}
    checks = run.quorum_latency_checks(q)
    assert [(c.value, c.target, c.status) for c in checks] == [
        ("3.50 - 1.00 = 2.50 ms", "<= 3.00 ms", "pass"), ("50.00 - 12.00 = 38.00 ms", "<= 3.00 ms", "info")]
    assert run.quorum_latency_checks({**q, "quorum_p50_1c_ms": 4.5})[0].status == "FAIL"
    assert run.quorum_latency_checks({**q, "quorum_p50_ms": None})[1].status == "n/a"
    assert [c.status for c in run.quorum_latency_checks(None)] == ["n/a"]
    table = run.figures_tables({"quorum_latency": q})
    assert "|       1 |" in table and "2.50" in table and "38.00" in table


def test_fsync_probe_measures_and_cleans_up(tmp_path: Path) -> None:
    assert cluster_figures.fsync_ms(tmp_path, 3) > 0
    assert list(tmp_path.iterdir()) == []


async def test_engine_cost_measures_each_store_by_round() -> None:
    results = await engine_cost.run(["put_one"], [1, 4], reps=2, requests=64)
    assert set(results) == {("put_one", 1), ("put_one", 4)}
    for rounds in results.values():
        assert len(rounds) == 2
        assert all(cpu > 0 and misses == 0 for cpu, misses in rounds)  # one hot key: always cached


def test_quorum_ab_table_pairs_added_latency_and_cpu_by_round() -> None:
    # per revision: quorum p50, local p50, added, CPU µs per quorum CAS; by round
    series = {"A": [{1: 2.0, 2: 3.0}, {1: 1.0, 2: 1.0}, {1: 1.0, 2: 2.0}, {1: 1000.0, 2: 2000.0}],
              "B": [{1: 1.5, 2: 2.0}, {1: 1.0, 2: 1.0}, {1: 0.5, 2: 1.0}, {1: 800.0, 2: 1000.0}]}
    table = quorum_cost.ab_table(["A", "B"], series)
    assert table.splitlines()[2] == "| A | 2.500 | 1.000 | 1.500 | 1,500 | 1.00 | 1.00 |"
    assert table.splitlines()[3] == "| B | 1.750 | 1.000 | 0.750 | 900 | 0.50 | 0.65 |"
