"""Smoke test of the benchmark harness (bench/): it imports, and its table and ratio logic is
right on made-up numbers. Nothing is timed or run against a server here; the benchmark itself
is `python -m bench.run` (docs/benchmarks.md)."""

from __future__ import annotations

from pathlib import Path

from bench import ab, bare_app, cluster_figures, run, targets
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
    table = run.throughput_table(cells).splitlines()
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
