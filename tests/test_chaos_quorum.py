"""The quorum checker on hand-made histories: one register per key across every node (by the
search and by the seq chain), quorum counters, quorum leases and the minority side. Each bad
history is one the issue names: a lost increment, two holders, a stale read, a success
through a node cut off from the majority."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kvs.chaos.checkers import quorum, run_all
from kvs.chaos.history import History
from tests.test_chaos_checkers import Builder, vid

KEY = "chaos-t/register/0@0"
CKEY = "chaos-t/counter/0@0"
LKEY = "chaos-t/lease/0@0"


class QBuilder(Builder):
    """Builder whose calls are quorum calls, with the seq each answer carries."""

    def __init__(self) -> None:
        super().__init__(nodes=("n1", "n2", "n3"))

    def q(self, node: str, f: str, inv: float, comp: float | None, outcome: str = "ok", *, seq: int | None,
          value: Any = None, key: str = KEY, error: str | None = None, **kw: Any) -> int:
        result = None
        if outcome == "ok":
            result = {"key": key, "version": vid(self.next + 1), "seq": seq, "modify_index": 0}
            if f == "read":
                result["value"] = value
        op = self.call(node, f, inv, comp, outcome, key=key, value=None if f == "read" else value,
                       result=result, error=error, **kw)
        self.records[-2]["consistency"] = "quorum"
        if outcome == "fail" and seq is not None:
            self.records[-1]["seq"] = seq
        return op


def check(b: Builder, tmp_path: Path) -> Any:
    return quorum.run(b.load(tmp_path))


def messages(result: Any) -> str:
    return "\n".join(v.message for v in result.violations)


def good_register() -> QBuilder:
    b = QBuilder()
    b.q("n1", "read", 0.0, 0.1, "fail", seq=0, error="not_found")
    b.q("n1", "write", 0.2, 0.3, seq=1, value="c1:1", cond={"if_seq": 0})
    b.q("n2", "write", 0.4, 0.5, seq=2, value="c2:2", cond={"if_seq": 1})
    b.q("n3", "write", 0.4, 0.6, "fail", seq=2, value="c3:3", cond={"if_seq": 1}, error="cas_conflict")
    b.q("n3", "write", 0.7, None, "unknown", seq=None, value="c3:4", cond={"if_seq": 2},
        error="http_503 quorum_indeterminate")
    b.q("n1", "read", 2.0, 2.1, seq=3, value="c3:4")  # the indeterminate write took effect
    b.q("n2", "delete", 2.2, 2.3, seq=4, cond={"if_seq": 3})
    b.q("n3", "read", 2.4, 2.5, "fail", seq=4, error="not_found")
    return b


def test_a_good_cluster_wide_history_passes(tmp_path: Path) -> None:
    result = check(good_register(), tmp_path)
    assert result.status == "pass", messages(result)
    assert result.stats["keys"] == 1


def test_stale_read_through_another_node_fails(tmp_path: Path) -> None:
    b = good_register()
    b.q("n2", "read", 3.0, 3.1, seq=2, value="c2:2")  # seq 4 was acknowledged at 2.3
    result = check(b, tmp_path)
    assert result.status == "fail"
    assert "stale" in messages(result) and "no linearization" in messages(result)


def test_two_writes_acknowledged_at_one_seq_fail(tmp_path: Path) -> None:
    b = QBuilder()
    b.q("n1", "write", 0.0, 0.1, seq=1, value="c1:1", cond={"if_seq": 0})
    b.q("n2", "write", 0.0, 0.1, seq=1, value="c2:2", cond={"if_seq": 0})
    result = check(b, tmp_path)
    assert result.status == "fail" and "two different writes at seq 1" in messages(result)


def test_write_refused_as_unavailable_that_took_effect_fails(tmp_path: Path) -> None:
    b = QBuilder()
    b.q("n1", "write", 0.0, 0.1, "fail", seq=None, value="c1:1", error="quorum_unavailable")
    b.q("n2", "read", 0.2, 0.3, seq=1, value="c1:1")
    result = check(b, tmp_path)
    assert result.status == "fail" and "quorum_unavailable" in messages(result)


def increments(b: QBuilder, acked: int) -> None:
    for i in range(acked):
        b.q("n1", "write", i, i + 0.1, seq=i + 1, key=CKEY, value={"n": i + 1, "w": i}, cond={"if_seq": i},
            tag="incr", workload="counter")


def test_lost_quorum_increment_fails(tmp_path: Path) -> None:
    b = QBuilder()
    increments(b, 3)
    b.q("n2", "read", 10.0, 10.1, seq=3, key=CKEY, value={"n": 2, "w": 1}, tag="final", workload="counter")
    result = check(b, tmp_path)
    assert result.status == "fail" and "1 acknowledged increments lost" in messages(result)
    fine = QBuilder()
    increments(fine, 3)
    fine.q("n2", "read", 10.0, 10.1, seq=3, key=CKEY, value={"n": 3, "w": 2}, tag="final", workload="counter")
    (tmp_path / "ok").mkdir()
    assert check(fine, tmp_path / "ok").status == "pass"


def lease(b: QBuilder, node: str, client: str, inv: float, seq: int, tag: str, cond: dict[str, Any]) -> None:
    b.q(node, "write", inv, inv + 0.05, seq=seq, key=LKEY, value=client, cond=cond, ttl=3.0, tag=tag,
        workload="lease", client=client)


def test_two_holders_of_a_quorum_lease_fail_even_across_nodes(tmp_path: Path) -> None:
    b = QBuilder()
    lease(b, "n1", "c1", 0.0, 1, "acquire", {"cas": 0})
    lease(b, "n2", "c2", 1.0, 2, "acquire", {"cas": 0})  # c1 holds until 3.0
    result = check(b, tmp_path)
    assert result.status == "fail" and "two clients held the quorum lease" in messages(result)


def test_quorum_lease_taken_after_expiry_passes_and_early_expiry_fails(tmp_path: Path) -> None:
    b = QBuilder()
    lease(b, "n1", "c1", 0.0, 1, "acquire", {"cas": 0})
    lease(b, "n1", "c1", 1.0, 2, "renew", {"if_seq": 1})  # holds until 4.0
    b.q("n3", "read", 4.2, 4.3, "fail", seq=2, key=LKEY, error="not_found", workload="lease")
    lease(b, "n2", "c2", 4.5, 3, "acquire", {"cas": 0})
    result = check(b, tmp_path)
    assert result.status == "pass", messages(result)
    early = QBuilder()
    lease(early, "n1", "c1", 0.0, 1, "acquire", {"cas": 0})
    early.q("n3", "read", 1.0, 1.1, "fail", seq=1, key=LKEY, error="not_found", workload="lease")
    (tmp_path / "e").mkdir()
    assert "cannot have expired" in messages(check(early, tmp_path / "e"))


def partitioned(success: bool) -> QBuilder:
    b = QBuilder()
    b.fault("partition", ["n1", "n2", "n3"], 1.0, 5.0, sides=[["n1"], ["n2", "n3"]])
    b.records.insert(-1, {"type": "fault", "fault": len(b.records) - 2, "kind": "partition",
                          "phase": "in_force", "t": 1.1})
    b.q("n2", "write", 2.0, 2.1, seq=1, value="c2:1", cond={"if_seq": 0})
    if success:
        b.q("n1", "read", 2.5, 2.6, seq=1, value="c2:1")
    else:
        b.q("n1", "read", 2.5, 4.6, "fail", seq=None, error="quorum_unavailable")
    return b


def test_success_through_the_minority_side_fails(tmp_path: Path) -> None:
    result = check(partitioned(success=True), tmp_path)
    assert result.status == "fail" and "cut off from a majority" in messages(result)
    (tmp_path / "ok").mkdir()
    result = check(partitioned(success=False), tmp_path / "ok")
    assert result.status == "pass" and result.stats["minority_calls"] == 1


def test_a_call_answered_while_the_cut_is_lifted_is_not_a_minority_success(
        tmp_path: Path) -> None:
    """The rules are flushed after `lifting`, and the fault ends once the flush command
    has returned: a call answered in between may have had its majority back (a 5-node
    run flagged one answered 7 ms before the end)."""
    b = partitioned(success=False)
    b.records.insert(-1, {"type": "fault", "fault": 1, "kind": "partition", "phase": "lifting",
                          "t": 4.9})
    b.q("n1", "read", 2.7, 4.95, seq=1, value="c2:1")
    result = check(b, tmp_path)
    assert result.status == "pass", messages(result)
    assert result.stats["minority_calls"] == 1


def test_minority_counts_the_voters_in_force(tmp_path: Path) -> None:
    """With n3 out of the voters, {n2, n3} holds one voter of two: no majority either."""
    b = QBuilder()
    b.fault("voters", ["n3"], 0.2, 9.0, removed="n3")
    for phase, t in (("in_force", 0.5), ("rejoining", 8.5)):
        b.records.insert(-1, {"type": "fault", "fault": len(b.records) - 2 - (phase == "rejoining"),
                              "kind": "voters", "phase": phase, "t": t})
    b.fault("partition", ["n1", "n2", "n3"], 1.0, 5.0, sides=[["n1"], ["n2", "n3"]])
    b.records.insert(-1, {"type": "fault", "fault": len(b.records) - 2, "kind": "partition",
                          "phase": "in_force", "t": 1.1})
    b.q("n2", "write", 2.0, 2.1, seq=1, value="c2:1", cond={"if_seq": 0})
    history = b.load(tmp_path)
    assert quorum.voters_during(history, 2.0, 2.1) == {"n1", "n2"}
    assert quorum.voters_during(history, 0.3, 0.4) is None  # the removal was under way
    result = quorum.run(history)
    assert result.status == "fail" and "cut off from a majority" in messages(result)


@pytest.mark.parametrize(("status", "certain"), [(409, True), (400, True), (503, False), (None, False)])
def test_a_removal_without_a_clear_answer_leaves_the_voters_uncertain_until_the_fault_ends(
        tmp_path: Path, status: int | None, certain: bool) -> None:
    """A removal answered 503 (or not at all) may be completed by the next change; the
    fault's heal adds the node back, after which the voters are all the nodes again. One
    refused with 400 or 409 changed nothing."""
    b = QBuilder()
    b.fault("voters", ["n3"], 0.2, 6.0, removed="n3")
    b.records.insert(-1, {"type": "fault", "fault": len(b.records) - 2, "kind": "voters",
                          "phase": "refused", "status": status, "t": 0.4})
    history = b.load(tmp_path)
    everyone = {"n1", "n2", "n3"}
    assert quorum.voters_during(history, 2.0, 2.1) == (everyone if certain else None)
    assert quorum.voters_during(history, 7.0, 7.1) == everyone


def test_while_a_node_joins_no_side_is_known_to_lack_a_majority(tmp_path: Path) -> None:
    """A joined node is a voter for part of its `join` fault and is never cut off by a
    partition, so it may give the one-node side its majority: no minority check then."""
    b = partitioned(success=True)
    b.fault("join", ["j1"], 1.5, 3.0, seeds=["n1", "n2", "n3"])
    history = b.load(tmp_path)
    assert quorum.voters_during(history, 2.0, 2.1) is None
    assert quorum.voters_during(history, 3.5, 3.6) == {"n1", "n2", "n3"}
    result = quorum.run(history)
    assert result.status == "pass" and result.stats["minority_calls"] == 0, messages(result)


def test_quorum_keys_leave_the_per_node_checkers(tmp_path: Path) -> None:
    """The per-node checkers would call a two-node-stamped quorum history a cross-node loss;
    they leave quorum keys to the quorum checker."""
    history: History = good_register().load(tmp_path)
    by_name = {r.name: r for r in run_all(history, shrink_seconds=1)}
    assert by_name["linearizability"].stats["registers"] == 0
    assert by_name["quorum"].status == "pass"
