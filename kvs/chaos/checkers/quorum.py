"""Quorum keys (`consistency=quorum`): one linearizable register per key across the whole
cluster, its counters and its leases.

What is checked. A quorum key promises more than a local one: every quorum call on it,
through any node, is one step of a single register, in an order that respects real
time. So there is one history per key, not one per (node, key): the quorum reads and
the quorum writes clients sent to every node. Local reads of a quorum key may be stale
by contract and are left out.

The sequential register. The state is (seq, the write that made it, absent?):

  * a write (PUT or DELETE) whose conditions hold makes seq + 1; its answer's `seq` must
    be exactly that. Conditions as the node checks them: on an absent key (never
    written, deleted, or its ttl ran out) a condition that presumes the key (`if_value`,
    `if_version`, `if_timestamp`) and a DELETE answer 404; otherwise `cas: 0` holds iff
    the key is absent, `if_seq: N` iff seq is N, the others against the live value;
    a condition that fails is a 409 whose `current`/`seq` must be the state's;
  * a quorum read returns the state: its value and seq, or a 404 with the seq;
  * a write with a ttl may expire: an optional step, no earlier than its invoke plus the
    ttl less every clock offset of the run (the proposer stamps expires_at with its
    clock, another proposer judges it with its own) and a small slack, that leaves seq
    as it is and makes the key absent.

Outcomes. An acknowledged call is a required step inside its real-time interval. A call
that timed out or answered 503 `quorum_indeterminate` may or may not have happened: an
optional step with no deadline. A 503 `quorum_unavailable` says nothing was written, so
it is no step at all: if its value shows up later, no order explains it.

The search is the Wing-Gong/Lowe search of the per-node checker (linearizability.py),
with this model; on failure the history is shrunk the same way.

Besides the register, three direct checks (they do not need the search, and they name
the property the issue promises):

  counters   the final quorum read of every quorum counter lies between the acknowledged
             increments and those plus the increments of unknown outcome: 0 lost.
  leases     two clients never hold a quorum lease at once. A client holds from its
             acquire's answer until the earliest of: its release's invoke, the answer of a
             renew that failed, and T after the invoke of its last acknowledged acquire
             or renew less every clock offset of the run (expiry is judged on some
             node's clock).
  minority   a quorum call through a node cut off from a majority of the voters (invoked
             after the partition began, answered before it healed) never succeeds.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kvs.chaos.checkers import leases, linearizability
from kvs.chaos.checkers.base import CheckResult, Violation, verdict
from kvs.chaos.checkers.linearizability import INF, Step, clock_offsets, search, shrink
from kvs.chaos.history import Call, History
from kvs.conditions import json_equal

NAME = "quorum"
EXPIRY_SLACK = 0.05
CUT_MARGIN = 1.0  # seconds after a partition's begin record its rules surely hold (older histories)
PRESUMING = ("if_value", "if_version", "if_timestamp")

QState = tuple[int, int | None, bool]  # (seq, id of the call that wrote it, absent)
START: QState = (0, None, True)


@dataclass(eq=False)
class QStep(Step):
    """A step of the cluster-wide register: what the answer said, beyond the per-node Step."""

    answer_seq: int | None = None
    absent: bool = False  # read / fail: the node answered 404
    value: Any = None  # read: the value it returned

    def label(self) -> str:
        if self.kind == "expire" and self.op is not None:
            return f"the value of #{self.op.id} expires (not before {self.call:.3f})"
        return super().label()


class QuorumModel:
    """The sequential specification of one quorum key, over the calls that may write it."""

    start: QState = START

    def __init__(self, writers: dict[int, Call], versions: dict[int, str]) -> None:
        self.writers = writers
        self.versions = versions  # call id -> version id it wrote, when some answer told

    def outcomes(self, state: QState, cond: dict[str, Any] | None, delete: bool) -> set[str]:
        """What the node may answer: holds / cas_conflict / not_found (as kvs/cluster/quorum.py)."""
        seq, writer, absent = state
        cond = cond or {}
        if absent and (delete or any(k in cond for k in PRESUMING)):
            return {"not_found"}
        out = {"holds"}
        for name, expected in cond.items():
            if name == "if_seq":
                ok: set[bool] = {seq == expected}
            elif name == "cas":
                ok = {absent} if expected == 0 else {False}
            elif name == "if_value":
                ok = {writer is not None and json_equal(self.writers[writer].value, expected)}
            elif name == "if_version":
                known = self.versions.get(writer) if writer is not None else None
                ok = {known == expected} if known else {True, False}
            else:
                ok = {True, False}  # if_timestamp: no workload sends it on quorum keys
            if False in ok:
                out = out | {"cas_conflict"} if True in ok else {"cas_conflict"}
        return out

    def step(self, state: QState, s: Step) -> list[QState]:
        assert isinstance(s, QStep)
        seq, writer, absent = state
        if s.kind == "expire":
            assert s.op is not None
            return [(seq, writer, True)] if writer == s.op.id and not absent else []
        if s.kind == "read":
            if s.answer_seq not in (None, seq) or s.absent != absent:
                return []
            if absent or writer is None:
                return [state]
            return [state] if json_equal(self.writers[writer].value, s.value) else []
        options = self.outcomes(state, s.cond, s.delete)
        if s.kind == "fail":
            return [state] if s.error in options and s.answer_seq in (None, seq) else []
        if "holds" not in options or s.answer_seq not in (None, seq + 1):
            return []
        assert s.op is not None
        return [(seq + 1, s.op.id, s.delete)]


def _step(op: Call) -> QStep | None:
    """The register step of one quorum call, or None when it tells nothing (and wrote nothing)."""
    ret = op.comp if op.comp is not None else INF
    if op.f == "read":
        if op.ok and op.result is not None:
            return QStep("read", op.inv, ret, True, op, answer_seq=op.answer_seq,
                         value=op.result.get("value"))
        if op.outcome == "fail" and op.error == "not_found":
            return QStep("read", op.inv, ret, True, op, answer_seq=op.answer_seq, absent=True)
        return None
    if op.ok:
        return QStep("write", op.inv, ret, True, op, cond=op.cond, delete=op.f == "delete",
                     answer_seq=op.answer_seq, version=f"#{op.id}")
    if op.unknown:
        return QStep("write", op.inv, INF, False, op, cond=op.cond, delete=op.f == "delete",
                     version=f"#{op.id}")
    if op.error in ("cas_conflict", "not_found"):
        return QStep("fail", op.inv, ret, True, op, cond=op.cond, delete=op.f == "delete", error=op.error,
                     answer_seq=op.answer_seq, absent=op.error == "not_found")
    return None  # refused, quorum_unavailable, 4xx: nothing was written


def problem(ops: Sequence[Call], clock_offsets: float = 0.0) -> tuple[list[QStep], QuorumModel]:
    """The steps and the model of one quorum key's history (`ops`: every call on it)."""
    steps = [s for s in map(_step, (op for op in ops if op.quorum)) if s is not None]
    for s in list(steps):
        if s.kind == "write" and not s.delete and s.op is not None and s.op.ttl is not None:
            steps.append(QStep("expire", s.op.inv + s.op.ttl - clock_offsets - EXPIRY_SLACK, INF, False, s.op,
                               needs=frozenset({f"#{s.op.id}"})))
    writers = {s.op.id: s.op for s in steps if s.kind == "write" and s.op is not None}
    versions = {op.id: op.version for op in writers.values() if op.ok and op.version}
    by_value = {repr(op.value): op.id for op in writers.values()
                if op.f == "write" and op.workload != "lease"}  # lease renewals repeat the token
    for op in ops:  # a read that saw an unknown write's (unique) value tells its version id
        if op.quorum and op.f == "read" and op.ok and op.result and op.version:
            writer = by_value.get(repr(op.result.get("value")))
            if writer is not None:
                versions.setdefault(writer, op.version)
    return steps, QuorumModel(writers, versions)


def check_key(key: str, ops: Sequence[Call], clock_offsets: float = 0.0, *,
              shrink_seconds: float = linearizability.SHRINK_SECONDS) -> tuple[bool | None, Violation | None]:
    steps, model = problem(ops, clock_offsets)
    result = search(steps, model)
    if result.ok is not False:
        return result.ok, None
    minimal, exact = shrink(list(steps), model, shrink_seconds)
    minimal.sort(key=lambda s: s.call)
    kind = "minimal" if exact else "reduced"
    lines = [f"{kind} violating sub-history, {len(minimal)} of {len(steps)} steps (all nodes):"]
    lines += ["  " + s.label() for s in minimal]
    ops_in = sorted({s.op.id for s in minimal if s.op is not None})
    stuck_at = min((s.ret for s in minimal if s.ret < INF), default=None)
    return False, Violation(NAME, "no linearization of this quorum key's register across the cluster",
                            None, key, ops_in, lines, stuck_at)


# -- the direct checks -------------------------------------------------------------------------

def lost_increments(key: str, ops: Sequence[Call]) -> Violation | None:
    """A quorum counter's final value must count every acknowledged increment (and no more
    than those plus the unknown ones)."""
    incr = [op for op in ops if op.tag == "incr" and op.quorum]
    acked = sum(op.ok for op in incr)
    unknown = sum(op.unknown for op in incr)
    finals = [op for op in ops if op.tag == "final" and op.quorum and op.outcome in ("ok", "fail")]
    if not finals:
        return None
    final = max(finals, key=lambda op: op.inv)
    value = (final.result or {}).get("value", {}).get("n", 0) if final.ok else 0
    if acked <= value <= acked + unknown:
        return None
    what = (f"{acked - value} acknowledged increments lost" if value < acked
            else f"{value - acked - unknown} increments nobody made")
    return Violation(NAME, f"quorum counter: {what}", final.node, key, [final.id],
                     [f"final quorum read {final.describe()}",
                      f"{acked} acknowledged increments, {unknown} of unknown outcome"], final.comp)


def two_holders(history: History, quorum_keys: set[str], clock_offsets: float) -> list[Violation]:
    """Two clients holding one quorum lease at the same time (see the module docstring)."""
    by_key: dict[str, list[leases.Hold]] = {}
    for h in leases.holds(history):
        if h.key in quorum_keys:
            h.end -= clock_offsets
            by_key.setdefault(h.key, []).append(h)
    out = []
    for key, hs in sorted(by_key.items()):
        hs.sort(key=lambda h: h.start)
        for i, p in enumerate(hs):
            for q in hs[i + 1:]:
                if q.start >= p.end - leases.TOLERANCE:
                    break
                if q.client != p.client:
                    out.append(Violation(
                        NAME, "two clients held the quorum lease at once for "
                        f"{min(p.end, q.end) - q.start:.3f}s",
                        None, key, [op.id for op in (*p.calls, *q.calls)],
                        [f"{h.client} via {h.node}: held [{h.start:.3f}, {h.end:.3f}]" for h in (p, q)]
                        + ["  " + op.describe() for op in (*p.calls, *q.calls)], q.start))
    return out


def minority_successes(history: History) -> tuple[int, list[Violation]]:
    """(quorum calls through a minority side during a partition, those that succeeded)."""
    voters = len(history.nodes)
    cut: list[tuple[float, float, set[str]]] = []
    for f in history.faults:
        if f.kind != "partition" or f.end is None:
            continue
        start = f.detail.get("in_force", f.begin + CUT_MARGIN)
        for side in f.detail.get("sides", []):
            if len(side) * 2 <= voters:
                cut.append((start, f.end, set(side)))
    seen, bad = 0, []
    for op in history.calls:
        if not op.quorum or op.tag == "final":
            continue
        for start, end, side in cut:
            if op.node in side and op.inv > start and (op.end or INF) < end:
                seen += 1
                if op.ok:
                    bad.append(Violation(NAME, f"{op.node} answered a quorum call with success while cut off "
                                         "from a majority of the voters", op.node, op.key, [op.id],
                                         [op.describe(), f"partition {start:.3f}-{end:.3f}: {sorted(side)} "
                                          f"of {voters} voters"], op.comp))
                break
    return seen, bad


def run(history: History, *, shrink_seconds: float = linearizability.SHRINK_SECONDS,
        max_reported: int = 20) -> CheckResult:
    quorum = history.quorum_keys()
    by_key = {k: ops for k, ops in history.calls_by_key().items() if k in quorum}
    if not by_key:
        return CheckResult(NAME, "skipped", "no quorum keys in this run")
    offsets = clock_offsets(history)
    violations: list[Violation] = []
    inconclusive = steps_total = 0
    started = time.monotonic()
    for key in sorted(by_key):
        ops = by_key[key]
        budget = shrink_seconds if len(violations) < max_reported else 0.0
        ok, violation = check_key(key, ops, offsets, shrink_seconds=budget)
        steps_total += sum(op.quorum for op in ops)
        inconclusive += ok is None
        violations += [v for v in (violation, lost_increments(key, ops)) if v is not None]
    violations += two_holders(history, set(by_key), offsets)
    minority, bad = minority_successes(history)
    violations += bad
    counters = sum(1 for ops in by_key.values() if any(op.tag == "incr" for op in ops))
    acked = sum(op.ok and op.tag == "incr" for ops in by_key.values() for op in ops)
    summary = (f"{len(by_key)} quorum keys, {steps_total} quorum calls in one history per key; "
               f"{counters} counters with {acked} acknowledged increments; "
               f"{minority} calls through a minority side; {len(violations)} violations")
    if inconclusive:
        summary += f"; {inconclusive} keys too large to decide within the search budget"
    return CheckResult(NAME, verdict(violations, inconclusive > 0), summary, violations,
                       stats={"keys": len(by_key), "calls": steps_total, "acked_increments": acked,
                              "minority_calls": minority, "inconclusive": inconclusive,
                              "seconds": round(time.monotonic() - started, 2)})
