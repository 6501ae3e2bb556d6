"""The chaos checkers on planted histories: each must FAIL on the bad one and pass on the good one.

Histories are written as JSON-lines files and loaded back (the path `kvs chaos check`
takes), with times in seconds and versions as the nodes would report them. The
linearizability search is cross-checked against a brute-force checker on random small
histories (hypothesis).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import uuid
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvs.chaos import report
from kvs.chaos.checkers import convergence, counters, leases, linearizability, loss, run_all
from kvs.chaos.checkers.linearizability import (
    INF,
    RegisterModel,
    Step,
    brute_force,
    build_problem,
    check_problem,
    search,
)
from kvs.chaos.checkers.versions import VersionTable, build_table
from kvs.chaos.history import History, load_history

KEY = "chaos-t/register/0@0"
HTTP_STATUS = {"cas_conflict": 409, "not_found": 404}  # the answers a failed call carries


def vid(n: int) -> str:
    """A version UUID whose first group (what reports show) is n in hex."""
    return str(uuid.UUID(f"{n:08x}-0000-4000-8000-000000000000"))


def version(n: int, *, value: Any = None, ts: int = 0, logical: int = 0, origin: str = "n1",
            joined: int = 1, parent: int | None = None, deleted: bool = False, idx: int = 0,
            key: str = KEY, expires_at: int | None = None, superseded: bool = False) -> dict[str, Any]:
    return {"key": key, "value": None if deleted else (value if value is not None else f"v{n}"),
            "version": vid(n), "timestamp": ts or 1000 + n, "logical": logical, "origin": origin,
            "origin_joined_at": joined, "flags": 0, "expires_at": expires_at, "deleted": deleted,
            "parent": vid(parent) if parent else None, "superseded": superseded,
            "modify_index": idx or n, "create_index": 1}


class Builder:
    """Writes a history file record by record, the way the runner does."""

    def __init__(self, nodes: tuple[str, ...] = ("n1", "n2"), **options: Any) -> None:
        self.records: list[dict[str, Any]] = [{
            "type": "meta", "run_id": "t", "seed": 0, "t0": 0.0,
            "nodes": {n: {"url": f"http://127.0.0.1:{8000 + i}", "skew_ms": 0} for i, n in enumerate(nodes)},
            "options": {"history_limit": 1000, "converge_timeout": 30, **options}}]
        self.next = 0

    def call(self, node: str, f: str, inv: float, comp: float | None, outcome: str = "ok", *,
           key: str = KEY, client: str = "c1", workload: str = "register", value: Any = None,
           cond: dict[str, Any] | None = None, result: dict[str, Any] | None = None,
           error: str | None = None, current: dict[str, Any] | None = None, tag: str | None = None,
           ttl: float | None = None) -> int:
        self.next += 1
        invoke = {"type": "invoke", "id": self.next, "t": inv, "client": client, "node": node,
                  "workload": workload, "f": f, "key": key}
        for name, val in (("value", value), ("cond", cond), ("tag", tag), ("ttl", ttl)):
            if val is not None:
                invoke[name] = val
        self.records.append(invoke)
        done: dict[str, Any] = {"type": outcome, "id": self.next, "t": comp if comp is not None else inv + 9}
        if outcome == "ok":
            done["status"], done["result"] = 200, result
        elif error in HTTP_STATUS:
            done["status"] = HTTP_STATUS[error]
        if error is not None:
            done["error"] = error
        if current is not None:
            done["current"] = current
        self.records.append(done)
        return self.next

    # Shorthands: a read that saw version dict v (or 404), and a write that created v.
    def read(self, node: str, inv: float, comp: float, v: dict[str, Any] | None, **kw: Any) -> int:
        if v is None:
            return self.call(node, "read", inv, comp, "fail", error="not_found", **kw)
        return self.call(node, "read", inv, comp, result=v, **kw)

    def write(self, node: str, inv: float, comp: float | None, v: dict[str, Any], *,
              cond: dict[str, Any] | None = None, outcome: str = "ok", **kw: Any) -> int:
        result = {"key": v["key"], "version": v["version"], "timestamp": v["timestamp"],
                  "modify_index": v["modify_index"], "create_index": 1, "expires_at": v["expires_at"]}
        f = "delete" if v["deleted"] else "write"
        value = None if v["deleted"] else v["value"]
        return self.call(node, f, inv, comp, outcome, key=v["key"], value=value,
                         cond=cond, result=result if outcome == "ok" else None, **kw)

    def conflict(self, node: str, inv: float, comp: float, value: Any, cond: dict[str, Any],
                 current: dict[str, Any] | None, **kw: Any) -> int:
        meta = {k: v for k, v in current.items() if k != "value"} if current else None
        error = "cas_conflict" if current else "not_found"
        return self.call(node, "write", inv, comp, "fail", value=value, cond=cond, error=error, current=meta,
                       **kw)

    def fault(self, kind: str, nodes: list[str], begin: float, end: float, **detail: Any) -> None:
        self.records.append({"type": "fault", "fault": len(self.records), "kind": kind, "phase": "begin",
                             "nodes": nodes, "t": begin, "detail": detail})
        self.records.append({"type": "fault", "fault": len(self.records) - 1, "kind": kind, "phase": "end",
                             "nodes": nodes, "t": end})

    def dump(self, node: str, *versions: dict[str, Any]) -> None:
        by_key: dict[str, list[dict[str, Any]]] = {}
        for v in versions:
            by_key.setdefault(v["key"], []).append(v)
        for key, vs in by_key.items():
            vs.sort(key=lambda v: (v["timestamp"], v["logical"], -v["origin_joined_at"], v["version"]),
                    reverse=True)
            self.records.append({"type": "dump", "node": node, "key": key, "versions": vs})
        self.records.append({"type": "dump_done", "node": node, "keys": len(by_key), "merkle_root": "x"})

    def converge(self, t: float, roots: dict[str, str]) -> None:
        self.records.append({"type": "phase", "phase": "healed", "t": t})
        self.records.append({"type": "converge", "t": t + 1, "roots": roots,
                             "equal": len(set(roots.values())) == 1})

    def load(self, tmp_path: Path) -> History:
        path = tmp_path / "history.jsonl"
        path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in self.records))
        return load_history(tmp_path)


def lin(history: History) -> Any:
    return linearizability.run(history, build_table(history), shrink_seconds=5)


# -- linearizability ---------------------------------------------------------------------------

def test_stale_read_on_one_node_fails_with_minimal_subhistory(tmp_path: Path) -> None:
    b = Builder()
    v1, v2 = version(1), version(2)
    w1 = b.write("n1", 0, 1, v1)
    w2 = b.write("n1", 2, 3, v2)
    for i in range(5):  # noise that a minimal sub-history must not contain
        b.read("n1", 3.1 + i * 0.1, 3.15 + i * 0.1, v2, client="c2")
    stale = b.read("n1", 4, 5, v1)
    result = lin(b.load(tmp_path))
    assert result.status == "fail"
    [violation] = result.violations
    assert violation.node == "n1" and violation.key == KEY
    assert violation.ops == [w1, w2, stale]
    assert "minimal violating sub-history, 3 of" in violation.lines[0]


def test_fresh_read_passes(tmp_path: Path) -> None:
    b = Builder()
    v1, v2 = version(1), version(2)
    b.write("n1", 0, 1, v1)
    b.write("n1", 2, 3, v2)
    b.read("n1", 2.5, 5, v1)  # overlaps the second write: may see either
    b.read("n1", 4, 5, v2)
    assert lin(b.load(tmp_path)).status == "pass"


def test_stale_read_also_caught_with_the_node_dump(tmp_path: Path) -> None:
    b = Builder()
    v1, v2 = version(1), version(2)
    b.write("n1", 0, 1, v1)
    b.write("n1", 2, 3, v2)
    b.read("n1", 4, 5, v1)
    b.dump("n1", v1, v2)
    result = lin(b.load(tmp_path))
    assert result.status == "fail"
    assert "order of application from the node dump" in result.violations[0].lines[0]


def test_read_of_a_newer_version_from_another_node_is_allowed(tmp_path: Path) -> None:
    """A register on n1 may observe a version written on n2: replication is an extra writer."""
    b = Builder()
    v1 = version(1, ts=100)
    v3 = version(3, ts=300, origin="n2")  # written on n2, wins over v2 by the conflict order
    v2 = version(2, ts=200)
    b.write("n1", 0, 1, v1)
    b.write("n2", 0.5, 0.6, v3)
    b.write("n1", 2, 3, v2)
    b.read("n1", 4, 5, v3)
    b.read("n1", 6, 7, v3)
    assert lin(b.load(tmp_path)).status == "pass"


def test_replication_cannot_bring_back_a_version_that_loses(tmp_path: Path) -> None:
    b = Builder()
    v1 = version(1, ts=100)
    v3 = version(3, ts=150, origin="n2")  # older than v2: applying it on n1 changes nothing
    v2 = version(2, ts=200)
    b.write("n1", 0, 1, v1)
    b.write("n2", 0.5, 0.6, v3)
    b.write("n1", 2, 3, v2)
    b.read("n1", 4, 5, v3)
    assert lin(b.load(tmp_path)).status == "fail"


def test_double_successful_cas_on_one_node_fails(tmp_path: Path) -> None:
    b = Builder()
    v0, v1, v2 = version(1), version(2, parent=1), version(3, parent=1)
    b.write("n1", 0, 1, v0)
    c1 = b.write("n1", 2, 3, v1, cond={"if_version": v0["version"]})
    c2 = b.write("n1", 4, 5, v2, cond={"if_version": v0["version"]}, client="c2")
    result = lin(b.load(tmp_path))
    assert result.status == "fail"
    assert set(result.violations[0].ops) >= {c1, c2}


def test_double_successful_cas_by_modify_index_fails(tmp_path: Path) -> None:
    b = Builder()
    v0, v1, v2 = version(1, idx=5), version(2, idx=6), version(3, idx=7)
    b.write("n1", 0, 1, v0)
    b.write("n1", 2, 3, v1, cond={"cas": 5})
    b.write("n1", 4, 5, v2, cond={"cas": 5}, client="c2")
    assert lin(b.load(tmp_path)).status == "fail"


def test_same_cas_succeeding_on_two_nodes_is_allowed(tmp_path: Path) -> None:
    """CAS is linearizable per node only: the second node had not seen v1 yet."""
    b = Builder()
    v0, v1, v2 = version(1), version(2, parent=1), version(3, parent=1, origin="n2")
    b.write("n1", 0, 1, v0)
    b.read("n2", 1.5, 1.6, v0)
    b.write("n1", 2, 3, v1, cond={"if_version": v0["version"]})
    b.write("n2", 4, 5, v2, cond={"if_version": v0["version"]}, client="c2")
    assert lin(b.load(tmp_path)).status == "pass"


def test_failed_cas_must_report_the_real_current_version(tmp_path: Path) -> None:
    b = Builder()
    v0, v1 = version(1), version(2)
    b.write("n1", 0, 1, v0)
    b.write("n1", 2, 3, v1)
    good = Builder()
    good.records = list(b.records)
    good.next = b.next
    b.conflict("n1", 4, 5, "x", {"if_version": v0["version"]}, v0)  # claims v0 is still current
    good.conflict("n1", 4, 5, "x", {"if_version": v0["version"]}, v1)
    assert lin(b.load(tmp_path)).status == "fail"
    (tmp_path / "g").mkdir()
    assert lin(good.load(tmp_path / "g")).status == "pass"


def test_unknown_write_may_take_effect_late_or_never(tmp_path: Path) -> None:
    b = Builder()
    v1, v2 = version(1), version(2)
    b.write("n1", 0, 1, v1)
    b.write("n1", 2, None, v2, outcome="unknown")  # timed out
    b.read("n1", 3, 4, v1)  # not applied yet
    b.read("n1", 8, 9, v2)  # applied late (its value is unique, so this read names it)
    assert lin(b.load(tmp_path)).status == "pass"


def test_unknown_write_cannot_take_effect_twice(tmp_path: Path) -> None:
    b = Builder()
    v1, v2, v3 = version(1), version(2), version(3)
    b.write("n1", 0, 1, v1)
    b.write("n1", 2, None, v2, outcome="unknown")
    b.read("n1", 3, 4, v2)
    b.write("n1", 5, 6, v3)
    b.read("n1", 7, 8, v2)  # v2 again after v3: impossible
    assert lin(b.load(tmp_path)).status == "fail"


def test_dump_reveals_an_acknowledged_write_missing_from_its_own_node(tmp_path: Path) -> None:
    b = Builder()
    v1, v2 = version(1), version(2)
    b.write("n1", 0, 1, v1)
    lost = b.write("n1", 2, 3, v2)
    b.dump("n1", v1)
    result = lin(b.load(tmp_path))
    assert result.status == "fail"
    assert any(v.ops == [lost] and "missing" in v.message for v in result.violations)


def test_dump_reveals_a_write_nobody_made(tmp_path: Path) -> None:
    b = Builder()
    v1 = version(1)
    b.write("n1", 0, 1, v1)
    b.read("n1", 2, 3, v1)
    b.dump("n1", v1, version(9, value="phantom"))
    assert lin(b.load(tmp_path)).status == "fail"


def test_dump_order_contradicting_real_time_fails(tmp_path: Path) -> None:
    """n1 says it applied the second write before the first, though the first was acknowledged
    before the second was sent."""
    b = Builder()
    v1, v2 = version(1, idx=2, ts=2000), version(2, idx=1, ts=1000)
    b.write("n1", 0, 1, v1)
    b.write("n1", 2, 3, v2)
    b.dump("n1", v1, v2)
    assert lin(b.load(tmp_path)).status == "fail"


# -- convergence, loss -----------------------------------------------------------------------------

def test_divergent_dumps_fail_identical_pass(tmp_path: Path) -> None:
    v1, v2 = version(1), version(2, parent=1)
    bad = Builder()
    bad.write("n1", 0, 1, v1)
    bad.converge(2, {"n1": "aa", "n2": "aa"})
    bad.dump("n1", v1, v2)
    bad.dump("n2", v1)
    result = convergence.run(bad.load(tmp_path))
    assert result.status == "fail" and result.violations[0].key == KEY
    good = Builder()
    good.converge(2, {"n1": "aa", "n2": "aa"})
    good.dump("n1", v1, v2)
    good.dump("n2", dict(v1, modify_index=7), dict(v2, modify_index=8))  # node-local fields differ
    (tmp_path / "g").mkdir()
    assert convergence.run(good.load(tmp_path / "g")).status == "pass"


def test_divergent_winner_fails(tmp_path: Path) -> None:
    """Same versions, but one node marks a different one superseded: the winners differ."""
    v1, v2 = version(1), version(2, origin="n2")
    b = Builder()
    b.converge(2, {"n1": "aa", "n2": "aa"})
    b.dump("n1", v1, dict(v2, superseded=True))
    b.dump("n2", v1, v2)
    assert convergence.run(b.load(tmp_path)).status == "fail"


def test_roots_that_never_agree_fail(tmp_path: Path) -> None:
    b = Builder()
    b.converge(2, {"n1": "aa", "n2": "bb"})
    b.dump("n1")
    b.dump("n2")
    result = convergence.run(b.load(tmp_path))
    assert result.status == "fail" and "still differ" in result.violations[0].message


def test_lost_acknowledged_write_fails(tmp_path: Path) -> None:
    v1, v2 = version(1), version(2)
    b = Builder()
    b.write("n1", 0, 1, v1)
    lost = b.write("n2", 0, 1, dict(v2, origin="n2"))
    b.dump("n1", v1)
    b.dump("n2", v1)
    result = loss.run(b.load(tmp_path))
    assert result.status == "fail"
    assert result.violations[0].ops == [lost] and "n1, n2" in result.violations[0].message


def test_superseded_write_in_history_is_not_lost(tmp_path: Path) -> None:
    v1, v2 = version(1), version(2, origin="n2")
    b = Builder()
    b.write("n1", 0, 1, v1)
    b.write("n2", 0, 1, v2)
    b.write("n2", 1.5, None, version(3, origin="n2", value="late"), outcome="unknown")
    b.dump("n1", dict(v1, superseded=True), v2, version(3, origin="n2", value="late"))
    b.dump("n2", dict(v1, superseded=True), v2, version(3, origin="n2", value="late"))
    assert loss.run(b.load(tmp_path)).status == "pass"


def test_version_no_client_wrote_fails(tmp_path: Path) -> None:
    b = Builder()
    b.write("n1", 0, 1, version(1))
    b.dump("n1", version(1), version(5, value="from nowhere"))
    assert loss.run(b.load(tmp_path)).status == "fail"


# -- counters ----------------------------------------------------------------------------------

CKEY = "chaos-t/counter/0@0"


def cver(n: int, count: int, w: int, *, parent: int | None, origin: str = "n1",
         ts: int = 0) -> dict[str, Any]:
    return version(n, key=CKEY, value={"n": count, "w": w}, parent=parent, origin=origin, ts=ts or 1000 + n)


def counter_history(versions: list[dict[str, Any]], acked: list[dict[str, Any]]) -> Builder:
    b = Builder()
    for i, v in enumerate(acked):
        op = b.write(v["origin"], i, i + 0.5, v, workload="counter", tag="incr")
        assert op == v["value"]["w"]
    for node in ("n1", "n2"):
        b.dump(node, *versions)
    return b


def test_counter_chain_with_cross_node_conflict_passes(tmp_path: Path) -> None:
    a = cver(1, 1, 1, parent=None)
    b_ = cver(2, 2, 2, parent=1, origin="n1", ts=1100)
    c = cver(3, 2, 3, parent=1, origin="n2", ts=1200)  # same base, other node: wins, b_ is lost
    d = cver(4, 3, 4, parent=3, origin="n2", ts=1300)
    result = counters.run(counter_history([a, b_, c, d], [a, b_, c, d]).load(tmp_path))
    assert result.status == "pass", result.violations
    assert result.stats["lost"] == 1


def test_counter_increment_that_adds_two_fails(tmp_path: Path) -> None:
    a = cver(1, 1, 1, parent=None)
    b_ = cver(2, 3, 2, parent=1)  # n jumps from 1 to 3
    assert counters.run(counter_history([a, b_], [a, b_]).load(tmp_path)).status == "fail"


def test_counter_double_cas_on_one_node_fails(tmp_path: Path) -> None:
    a = cver(1, 1, 1, parent=None)
    b_ = cver(2, 2, 2, parent=1, origin="n1")
    c = cver(3, 2, 3, parent=1, origin="n1")  # second child of the same base on the same node
    result = counters.run(counter_history([a, b_, c], [a, b_, c]).load(tmp_path))
    assert result.status == "fail"
    assert any("same base" in v.message for v in result.violations)


def test_counter_value_with_missing_acknowledged_increment_fails(tmp_path: Path) -> None:
    a = cver(1, 1, 1, parent=None)
    b_ = cver(2, 2, 2, parent=1)
    assert counters.run(counter_history([a], [a, b_]).load(tmp_path)).status == "fail"


# -- leases -------------------------------------------------------------------------------------

LKEY = "chaos-t/lease/0@0"


def lease_write(b: Builder, node: str, client: str, n: int, inv: float, tag: str, token: str,
                origin: str | None = None) -> int:
    v = version(n, key=LKEY, value=token, origin=origin or node)
    cond = {"cas": 0} if tag == "acquire" else {"if_value": token}
    return b.write(node, inv, inv + 0.01, v, cond=cond, ttl=3.0, tag=tag, workload="lease", client=client)


def test_two_lease_holders_on_one_node_fail(tmp_path: Path) -> None:
    b = Builder()
    lease_write(b, "n1", "c1", 1, 0.0, "acquire", "c1:1")
    lease_write(b, "n1", "c2", 2, 1.0, "acquire", "c2:2")  # c1 holds until 3.0
    result = leases.run(b.load(tmp_path))
    assert result.status == "fail" and result.violations[0].node == "n1"


def test_lease_taken_after_expiry_or_release_passes(tmp_path: Path) -> None:
    b = Builder()
    lease_write(b, "n1", "c1", 1, 0.0, "acquire", "c1:1")
    lease_write(b, "n1", "c1", 2, 1.0, "renew", "c1:1")  # holds until 4.0
    lease_write(b, "n1", "c2", 3, 4.1, "acquire", "c2:3")
    b.call("n1", "delete", 5.0, 5.01, key=LKEY, cond={"if_value": "c2:3"}, tag="release", workload="lease",
         client="c2", result={"version": vid(4), "modify_index": 4})
    lease_write(b, "n1", "c1", 5, 5.2, "acquire", "c1:5")
    assert leases.run(b.load(tmp_path)).status == "pass"


def test_lease_keys_are_in_the_per_node_linearizability_check(tmp_path: Path) -> None:
    """A second `cas: 0` acquire on one node while the first version cannot have expired yet."""
    b = Builder()
    lease_write(b, "n1", "c1", 1, 0.0, "acquire", "c1:1")
    lease_write(b, "n1", "c2", 2, 1.0, "acquire", "c2:2")
    result = lin(b.load(tmp_path))
    assert result.status == "fail" and result.violations[0].key == LKEY


def test_lease_expiry_in_the_register_model(tmp_path: Path) -> None:
    """After the ttl the key reads as absent: acquire holds, the old holder's renew and release 404."""
    b = Builder()
    lease_write(b, "n1", "c1", 1, 0.0, "acquire", "c1:1")
    lease_write(b, "n1", "c2", 2, 3.1, "acquire", "c2:2")
    b.conflict("n1", 3.2, 3.21, "c1:1", {"if_value": "c1:1"}, version(2, key=LKEY, value="c2:2"), key=LKEY,
               tag="renew", ttl=3.0, workload="lease", client="c1")
    b.read("n1", 6.5, 6.51, None, key=LKEY, workload="lease")  # c2's version expired too
    b.call("n1", "delete", 6.6, 6.61, "fail", key=LKEY, cond={"if_value": "c2:2"}, error="not_found",
           tag="release", workload="lease", client="c2")
    assert lin(b.load(tmp_path)).status == "pass"
    early = Builder()
    lease_write(early, "n1", "c1", 1, 0.0, "acquire", "c1:1")
    early.read("n1", 2.0, 2.01, None, key=LKEY, workload="lease")  # gone a second early
    (tmp_path / "e").mkdir()
    assert lin(early.load(tmp_path / "e")).status == "fail"


def test_renew_succeeding_after_another_holder_took_over_fails(tmp_path: Path) -> None:
    b = Builder()
    lease_write(b, "n1", "c1", 1, 0.0, "acquire", "c1:1")
    lease_write(b, "n1", "c2", 2, 3.1, "acquire", "c2:2")
    lease_write(b, "n1", "c1", 3, 3.5, "renew", "c1:1")
    assert lin(b.load(tmp_path)).status == "fail"


def test_lease_overlap_across_nodes_is_reported_as_expected(tmp_path: Path) -> None:
    b = Builder()
    b.fault("partition", ["n1", "n2"], 0.5, 4.0, sides=[["n1"], ["n2"]])
    lease_write(b, "n1", "c1", 1, 0.0, "acquire", "c1:1")
    lease_write(b, "n2", "c2", 2, 1.0, "acquire", "c2:2")
    result = leases.run(b.load(tmp_path))
    assert result.status == "pass"
    assert result.stats["cross_node_overlaps"] == 1
    assert "partition" in result.notes[0]


def test_same_node_overlap_explained_by_a_replicated_version(tmp_path: Path) -> None:
    """c1 holds via n1; c3's lease from n2 wins on n1 and is released there; c2 then acquires on n1."""
    b = Builder()
    v1 = version(1, key=LKEY, value="c1:1", ts=1000, idx=1)
    v3 = version(3, key=LKEY, value="c3:3", ts=1001, origin="n2", idx=2)
    tomb = version(4, key=LKEY, deleted=True, ts=1002, origin="n2", idx=3, parent=3)
    v2 = version(2, key=LKEY, value="c2:2", ts=1003, idx=4)
    b.write("n1", 0.0, 0.01, v1, cond={"cas": 0}, ttl=3.0, tag="acquire", workload="lease", client="c1")
    b.write("n2", 0.0, 0.01, v3, cond={"cas": 0}, ttl=3.0, tag="acquire", workload="lease", client="c3")
    b.write("n2", 0.5, 0.51, tomb, cond={"if_value": "c3:3"}, tag="release", workload="lease", client="c3")
    b.write("n1", 1.0, 1.01, v2, cond={"cas": 0}, ttl=3.0, tag="acquire", workload="lease", client="c2")
    b.dump("n1", v1, v3, tomb, v2)
    assert leases.run(b.load(tmp_path)).status == "pass"
    unexplained = Builder()
    unexplained.records = [r for r in b.records if r.get("type") != "dump" or r.get("node") != "n1"]
    unexplained.dump("n1", v1, dict(v2, modify_index=2))  # n1 never applied anything from n2
    (tmp_path / "u").mkdir()
    assert leases.run(unexplained.load(tmp_path / "u")).status == "fail"


def test_run_all_on_a_good_history_passes(tmp_path: Path) -> None:
    b = Builder()
    v1, v2 = version(1), version(2, parent=1)
    b.write("n1", 0, 1, v1)
    b.read("n2", 1.5, 2, v1)
    b.write("n2", 2, 3, dict(v2, origin="n2"), cond={"if_version": v1["version"]})
    b.converge(4, {"n1": "aa", "n2": "aa"})
    b.dump("n1", v1, dict(v2, origin="n2"))
    b.dump("n2", v1, dict(v2, origin="n2"))
    results = run_all(b.load(tmp_path), shrink_seconds=1)
    assert all(r.passed for r in results), [r.to_json() for r in results if not r.passed]


# -- WGL search against brute force --------------------------------------------------------------

def _table(n_versions: int, ts: list[int], deleted: list[bool], known: list[bool]) -> VersionTable:
    table = VersionTable()
    for i in range(n_versions):
        v = version(i + 1, ts=ts[i], logical=i, idx=i + 1, deleted=deleted[i])
        if not known[i]:  # as if only a write's answer was seen: timestamp, no logical
            v = {k: v[k] for k in ("version", "timestamp", "deleted", "value", "modify_index")}
        table.learn_version(v, "n1")
    return table


@st.composite
def register_problems(draw: st.DrawFn) -> tuple[list[Step], VersionTable]:
    """A sequential run of the model, stretched into overlapping intervals, then maybe corrupted."""
    n_versions = draw(st.integers(1, 4))
    table = _table(n_versions, draw(st.lists(st.integers(1, 3), min_size=4, max_size=4)),
                   draw(st.lists(st.booleans(), min_size=4, max_size=4)),
                   draw(st.lists(st.booleans(), min_size=4, max_size=4)))
    model = RegisterModel("n1", table)
    ids = [vid(i + 1) for i in range(n_versions)]
    ordered = draw(st.booleans())  # with a node dump: writes/applies carry their position
    unused = list(ids)
    state: str | None = None
    steps: list[Step] = []
    t = 0.0
    for _ in range(draw(st.integers(1, 6))):
        t += draw(st.floats(0.1, 2.0))
        call = t - draw(st.floats(0.0, 1.5))
        ret = t + draw(st.floats(0.0, 1.5))
        kind = draw(st.sampled_from(["read", "write", "write", "apply", "fail"]))
        if kind in ("write", "apply") and not unused:
            kind = "read"
        live = model.live(state)
        if kind == "read":
            steps.append(Step("read", call, ret, True, observed=live))
        elif kind == "fail":
            cond = draw(st.sampled_from([{"cas": 0}, {"if_version": draw(st.sampled_from(ids))},
                                         {"cas": draw(st.integers(1, 4))}]))
            outcome = sorted(model.outcomes(cond, live) - {"holds"})
            if outcome:
                steps.append(Step("fail", call, ret, True, observed=live, error=outcome[0], cond=cond))
        else:
            v = unused.pop(draw(st.integers(0, len(unused) - 1)))
            if kind == "apply":
                nxt = model.step(state, Step("apply", 0, 0, True, version=v))
                state = draw(st.sampled_from(nxt))
                steps.append(Step("apply", -INF if draw(st.booleans()) else call, INF, ordered, version=v))
            else:
                cond = draw(st.sampled_from([None, {"if_version": live}, {"cas": 0},
                                             {"cas": table.index(live, "n1") if live else 0}]))
                if cond and None in cond.values():
                    cond = None
                if "holds" not in model.outcomes(cond, live):
                    cond = None
                state = v
                unknown = not ordered and draw(st.integers(0, 4)) == 0
                steps.append(Step("write", call, INF if unknown else ret, not unknown, version=v, cond=cond))
    if ordered:
        for position, s in enumerate(s for s in steps if s.kind in ("write", "apply")):
            s.seq = position
    if steps and draw(st.integers(0, 2)) == 0:  # corrupt one observation
        observers = [s for s in steps if s.kind in ("read", "fail")]
        if observers:
            victim = draw(st.sampled_from(observers))
            victim.observed = draw(st.sampled_from([None, *ids]))
    if draw(st.integers(0, 3)) == 0 and len(steps) > 1:  # or shuffle real time
        a, b = draw(st.permutations(range(len(steps))))[:2]
        steps[a].call, steps[b].call = steps[b].call, steps[a].call
        for s in (steps[a], steps[b]):
            if s.ret < s.call:
                s.ret = s.call + 0.5
    return steps, table


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(register_problems())
def test_wgl_search_agrees_with_brute_force(problem: tuple[list[Step], VersionTable]) -> None:
    steps, table = problem
    model = RegisterModel("n1", table)
    assert search(steps, model).ok == brute_force(steps, model)


@st.composite
def small_histories(draw: st.DrawFn) -> Builder:
    """Ops on one key through n1 (and a few through n2), answers drawn from plausible values."""
    b = Builder()
    written: list[dict[str, Any]] = []
    n = 0
    for _ in range(draw(st.integers(1, 5))):
        inv = draw(st.floats(0, 10))
        comp = inv + draw(st.floats(0.01, 3))
        node = draw(st.sampled_from(["n1", "n1", "n2"]))
        what = draw(st.sampled_from(["read", "write", "cas", "unknown"]))
        if what == "read" or (what == "cas" and not written):
            b.read(node, inv, comp, draw(st.sampled_from([None, *written])))
            continue
        n += 1
        v = version(n, ts=draw(st.integers(1, 5)), logical=n, origin=node, idx=n)
        if what == "cas":
            base = draw(st.sampled_from(written))
            b.write(node, inv, comp, v, cond={"if_version": base["version"]})
        else:
            b.write(node, inv, None if what == "unknown" else comp, v,
                    outcome="unknown" if what == "unknown" else "ok")
        written.append(v)
    return b


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(small_histories())
def test_history_checker_agrees_with_brute_force(tmp_path: Path, b: Builder) -> None:
    history = b.load(tmp_path)
    table = build_table(history)
    ops = [op for op in history.calls]
    problem = build_problem("n1", KEY, ops, table, None)
    model = RegisterModel("n1", table)
    expected = brute_force(problem.steps, model)
    ok, violation = check_problem(problem, table, shrink_seconds=2)
    assert ok == expected
    if not ok:
        assert violation is not None and violation.ops
        # The reported sub-history is itself a violation, and removing any one op makes it pass.
        kept = [s for s in problem.steps if s.op is None or s.op.id in violation.ops]
        assert search(kept, model).ok is False


def test_search_handles_hundreds_of_ops_with_a_dump(tmp_path: Path) -> None:
    b = Builder()
    versions = []
    t = 0.0
    for n in range(1, 301):
        v = version(n, ts=1000 + n, origin="n1" if n % 3 else "n2", idx=n)
        versions.append(v)
        if v["origin"] == "n1":
            b.write("n1", t, t + 0.5, v, client=f"c{n % 4}")
        else:
            b.write("n2", t, t + 0.01, v)
        b.read("n1", t + 0.2, t + 0.7, v if v["origin"] == "n1" else versions[-2], client="r")
        t += 0.3
    b.dump("n1", *versions)
    result = lin(b.load(tmp_path))
    assert result.status == "pass"
    assert result.stats["steps"] > 500



# -- report ---------------------------------------------------------------------------------------

def test_summary_and_report_explain_allowed_losses_and_failed_calls(tmp_path: Path) -> None:
    """'N lost to cross-node conflicts' must come with why that is allowed and where it went,
    and 'fail N' with what a failed call is, in the printed summary and in report.html."""
    a, b_ = cver(1, 1, 1, parent=None), cver(2, 2, 2, parent=1, origin="n1", ts=1100)
    c, d = cver(3, 2, 3, parent=1, origin="n2", ts=1200), cver(4, 3, 4, parent=3, origin="n2", ts=1300)
    builder = counter_history([a, b_, c, d], [a, b_, c, d])
    builder.conflict("n1", 5, 5.1, {"n": 2, "w": 5}, {"if_version": a["version"]}, b_,
                     key=CKEY, workload="counter", tag="incr")
    history = builder.load(tmp_path)
    results = run_all(history, shrink_seconds=1)
    summary, page = report.summary_table(history, results), report.render_html(history, results)
    for text in (" ".join(summary.split()), page):
        assert "1 lost to cross-node conflicts (allowed: still in history, superseded)" in text
        assert "CAS is atomic per node" in text and "two nodes can both accept" in text.lower()
        assert "conflict order" in text and "nothing is silently lost" in text
        assert "fail 1 (409 cas_conflict 1)" in text and "answered without changing anything" in text
        assert "docs/chaos.md" in text


class _Svg(HTMLParser):
    """Every SVG element of a page with its attributes, which <svg class> it is in, and
    whether it is inside a <title> (a tooltip, which nobody sees without hovering)."""

    def __init__(self) -> None:
        super().__init__()
        self.svgs: list[dict[str, str]] = []
        self.elements: list[tuple[str, str, dict[str, str]]] = []  # (svg class, tag, attrs)
        self.visible_text: dict[str, list[str]] = {}  # svg class -> texts outside <title>
        self.inside: list[str] = []  # classes of the open <svg> elements
        self.in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "svg":
            self.svgs.append(values)
            self.inside.append(values.get("class", ""))
        elif self.inside:
            self.elements.append((self.inside[-1], tag, values))
        self.in_title = self.in_title or tag == "title"

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self.inside.pop()
        self.in_title = self.in_title and tag != "title"

    def handle_data(self, data: str) -> None:
        if self.inside and not self.in_title:
            self.visible_text.setdefault(self.inside[-1], []).append(data)


def _rgb(colour: str) -> tuple[int, ...]:
    return tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))


def test_report_fits_1280_px_and_its_legend_paints_what_the_timeline_paints(tmp_path: Path) -> None:
    b = Builder()
    b.records[0]["nodes"]["n2"]["skew_ms"] = 2500
    b.records.append({"type": "phase", "phase": "workload", "t": 0.0})
    b.fault("skew", ["n2"], 0.0, 60.0, offset_ms=2500)
    b.fault("kill", ["n1"], 1.5, 4.0)
    b.fault("pause", ["n2"], 20.0, 23.5)
    b.fault("partition", ["n1", "n2"], 30.0, 36.0, sides=[["n1"], ["n2"]])
    v1, v2 = version(1), version(2)
    b.write("n1", 0, 1, v1)
    b.write("n1", 2, 3, v2)
    b.read("n1", 40, 41, v1)  # stale: a linearizability violation
    b.conflict("n2", 45, 46, "c1:9", {"if_version": v1["version"]}, v2)
    b.write("n2", 50, None, version(3, origin="n2"), outcome="unknown")
    b.records.append({"type": "phase", "phase": "workload_end", "t": 60.0})
    history = b.load(tmp_path)
    results = run_all(history, shrink_seconds=1)
    page = report.render_html(history, results)
    parsed = _Svg()
    parsed.feed(page)

    # Nothing wider than a 1280 px window minus the page margins and a scrollbar.
    assert parsed.svgs and all(float(svg["width"]) <= 1200 for svg in parsed.svgs), parsed.svgs
    # The legend swatch of each mark is painted exactly like every timeline element of that mark.
    paint = ("fill", "fill-opacity", "stroke", "stroke-width", "opacity")

    def marks(where: str) -> dict[str, set[tuple[str, ...]]]:
        out: dict[str, set[tuple[str, ...]]] = {}
        for svg_class, _, attrs in parsed.elements:
            if svg_class == where and attrs.get("class", "").startswith("mark-"):
                out.setdefault(attrs["class"], set()).add(tuple(attrs.get(k, "") for k in paint))
        return out

    legend, timeline = marks("legend"), marks("timeline")
    assert set(legend) == set(timeline) >= {f"mark-{m}" for m in (
        "ok", "fail", "unknown", "kill", "pause", "side-a", "side-b", "skew", "violation")}
    for name, swatch in legend.items():
        assert len(swatch) == 1 and timeline[name] == swatch, (name, swatch, timeline[name])
    # unknown and violation: clearly different colours, and a different shape as well.
    fill = {name: next(iter(s))[0] for name, s in legend.items()}
    assert math.dist(_rgb(fill["mark-unknown"]), _rgb(fill["mark-violation"])) > 150
    shapes = {(cls, tag) for where, tag, a in parsed.elements if where == "timeline"
              for cls in [a.get("class")] if cls in ("mark-unknown", "mark-violation")}
    assert shapes == {("mark-unknown", "rect"), ("mark-violation", "path")}
    # An axis title, and fault times readable without hovering: on the bands and in the table.
    text = " ".join(parsed.visible_text["timeline"])
    assert "time since the workload started (s)" in text
    for label in ("#2 kill(n1) 1.5-4.0 s", "#3 pause(n2) 20.0-23.5 s", "#4 partition(n1 | n2) 30.0-36.0 s"):
        assert label in text, text
    assert "<td>kill(n1)</td><td>1.5</td><td>4.0</td>" in page


# Records exactly as 4de8df8 wrote them (a 1-node register run, trimmed to four calls): the
# history format predates the rename of the history's record class to Call and must still load.
OLD_KEY = "chaos-853f605e/register/0@0"
OLD_V1 = {"key": OLD_KEY, "value": "c1:2", "version": "9de736c3-2adc-46aa-a5cd-56d45cb34a36",
          "timestamp": 1796372506357, "logical": 0, "origin": "n1", "origin_joined_at": 1796372506307,
          "flags": 0, "expires_at": None, "deleted": False, "parent": None, "superseded": False,
          "modify_index": 1, "create_index": 1}
OLD_V2 = {**OLD_V1, "value": "c1:3", "version": "7d75764e-182d-49c1-b032-ee68fc46949b",
          "timestamp": 1796372506360, "parent": OLD_V1["version"], "modify_index": 2}
OLD_HISTORY = [
    {"type": "meta", "run_id": "853f605e", "seed": 7, "t0": 1796372506.0393724,
     "nodes": {"n1": {"url": "http://127.0.0.1:40387", "skew_ms": 0, "gid": None}}, "faults": [],
     "options": {"nodes": 1, "clients": 1, "workloads": ["register"], "history_limit": 1000},
     "prefix": "chaos-853f605e"},
    {"type": "phase", "t": 1796372506.351333, "phase": "workload"},
    {"type": "invoke", "id": 1, "t": 1796372506.3514264, "client": "c1", "node": "n1",
     "workload": "register", "f": "read", "key": OLD_KEY},
    {"type": "fail", "id": 1, "t": 1796372506.3520346, "status": 404, "error": "not_found"},
    {"type": "invoke", "id": 2, "t": 1796372506.3572755, "client": "c1", "node": "n1",
     "workload": "register", "f": "write", "key": OLD_KEY, "value": "c1:2", "cond": {"cas": 0}},
    {"type": "ok", "id": 2, "t": 1796372506.358408, "status": 200,
     "result": {k: OLD_V1[k] for k in ("key", "version", "timestamp", "modify_index", "create_index",
                                       "expires_at")}},
    {"type": "invoke", "id": 3, "t": 1796372506.3596575, "client": "c1", "node": "n1",
     "workload": "register", "f": "write", "key": OLD_KEY, "value": "c1:3",
     "cond": {"if_version": OLD_V1["version"]}},
    {"type": "ok", "id": 3, "t": 1796372506.360952, "status": 200,
     "result": {k: OLD_V2[k] for k in ("key", "version", "timestamp", "modify_index", "create_index",
                                       "expires_at")}},
    {"type": "phase", "t": 1796372506.4019468, "phase": "stopping"},
    {"type": "phase", "t": 1796372506.4021118, "phase": "workload_end"},
    {"type": "phase", "t": 1796372506.4021704, "phase": "healed"},
    {"type": "converge", "t": 1796372506.402789, "roots": {"n1": "847bed5ced8c9f27"}, "equal": True},
    {"type": "phase", "t": 1796372506.9044836, "phase": "converged"},
    {"type": "invoke", "id": 13, "t": 1796372506.9045835, "client": "final", "node": "n1",
     "workload": "register", "f": "read", "key": OLD_KEY, "tag": "final"},
    {"type": "ok", "id": 13, "t": 1796372506.9050436, "status": 200, "result": OLD_V2},
    {"type": "dump", "node": "n1", "key": OLD_KEY, "versions": [OLD_V2, OLD_V1]},
    {"type": "dump_done", "t": 1796372506.905991, "node": "n1", "keys": 1, "merkle_root": "847bed5ced8c9f27"},
]


def test_a_history_saved_before_the_call_rename_still_loads_and_checks(tmp_path: Path) -> None:
    from kvs.chaos.history import Call

    (tmp_path / "history.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in OLD_HISTORY))
    history = load_history(tmp_path)
    assert [(c.id, c.f, c.outcome) for c in history.calls] == [
        (1, "read", "fail"), (2, "write", "ok"), (3, "write", "ok"), (13, "read", "ok")]
    assert all(isinstance(c, Call) for c in history.calls)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    checked = subprocess.run([sys.executable, "-m", "kvs", "chaos", "check", str(tmp_path)],
                             capture_output=True, text=True, timeout=60, env=env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "operations: 3 (ok 2, fail 1, unknown 0)" in checked.stdout
