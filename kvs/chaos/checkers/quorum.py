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
with this model; on failure it shows where it got stuck. The seqs of the
acknowledged writes fix their relative order up front (seq only grows), which keeps the
search small even with many writes of unknown outcome.

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
             after the cut's rules were in force, answered before their removal began)
             never succeeds.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kvs.chaos.checkers import leases
from kvs.chaos.checkers.base import CheckResult, Violation, verdict
from kvs.chaos.checkers.linearizability import INF, Step, clock_offsets, search
from kvs.chaos.history import VOTER_CHANGE_UNCHANGED, Call, History
from kvs.conditions import json_equal

NAME = "quorum"
EXPIRY_SLACK = 0.05
CONTEXT_SECONDS, CONTEXT_CALLS = 1.0, 12  # what a search failure shows
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
    if op.ok:  # its seq is its place among the acknowledged writes: the search keeps that order
        return QStep("write", op.inv, ret, True, op, cond=op.cond, delete=op.f == "delete",
                     answer_seq=op.answer_seq, seq=op.answer_seq, version=f"#{op.id}")
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


def check_key(key: str, ops: Sequence[Call], clock_offsets: float = 0.0
              ) -> tuple[bool | None, Violation | None]:
    """The search's verdict on one key. No shrinking: every step names a seq, so a sub-history
    without the writes before it fails for that alone; the report shows where the search got
    stuck and the calls around it instead (the seq chain's violations name the cause)."""
    steps, model = problem(ops, clock_offsets)
    result = search(steps, model)
    if result.ok is not False:
        return result.ok, None
    stuck = steps[result.stuck] if result.stuck is not None else None
    around = sorted((s for s in steps if stuck is not None and s.kind != "expire"
                     and stuck.call - CONTEXT_SECONDS <= s.call <= stuck.ret), key=lambda s: s.call)
    lines = ["the search got stuck at: " + (stuck.label() if stuck else "?"),
             f"calls in the {CONTEXT_SECONDS:.0f} s before it (of {len(steps)} steps):"]
    lines += ["  " + s.label() for s in around[-CONTEXT_CALLS:]]
    ids = [s.op.id for s in around[-CONTEXT_CALLS:] if s.op is not None]
    return False, Violation(NAME, "no linearization of this quorum key's register across the cluster",
                            None, key, ids, lines, stuck.ret if stuck and stuck.ret < INF else None)


# -- the seq chain -----------------------------------------------------------------------------

Pos = tuple[int, int]  # (seq, 0) for the write that made seq, (seq, 1) for a call that saw it


class Chain:
    """Which call made each seq of one quorum key, from the answers' seqs and unique values."""

    def __init__(self, key: str, ops: Sequence[Call]) -> None:
        self.key = key
        self.ops = [op for op in ops if op.quorum and op.tag != "final"]
        self.writer: dict[int, Call] = {}
        self.placed: dict[int, int] = {}  # call id -> its seq
        self.problems: list[Violation] = []
        # Values are unique per write, except a lease's renewals (they repeat the token).
        self.by_value = {repr(op.value): op for op in ops
                         if op.quorum and op.f == "write" and op.workload != "lease"}
        for op in self.ops:
            if op.is_write and op.ok and op.answer_seq is not None:
                self.claim(op.answer_seq, op, op)
        for op in self.ops:
            if op.f == "read" and op.ok and op.answer_seq is not None and op.result is not None:
                writer = self.by_value.get(repr(op.result.get("value")))
                if writer is not None:
                    self.claim(op.answer_seq, writer, op)

    def claim(self, seq: int, writer: Call, witness: Call) -> None:
        other = self.writer.setdefault(seq, writer)
        if other.id != writer.id:
            self.fail(f"two different writes at seq {seq}", [other, writer, witness])
        placed = self.placed.setdefault(writer.id, seq)
        if placed != seq:
            self.fail(f"one write at two seqs ({placed} and {seq})", [writer, witness])
        if writer.outcome == "fail":
            self.fail(f"a write answered {writer.error} (nothing written) is the key's state at seq {seq}",
                      [writer, witness])

    def fail(self, message: str, calls: Sequence[Call]) -> None:
        self.problems.append(Violation(NAME, message, None, self.key, [c.id for c in calls],
                                       [c.describe() for c in calls],
                                       min((c.comp for c in calls if c.comp is not None), default=None)))

    def pos(self, op: Call) -> Pos | None:
        if (op.is_write and op.ok) or op.id in self.placed:
            seq = self.placed.get(op.id, op.answer_seq)
            return None if seq is None else (seq, 0)
        if op.outcome in ("ok", "fail") and op.answer_seq is not None:
            return (op.answer_seq, 1)
        return None

    def real_time(self) -> None:
        """A call that completed before another began never sits later on the chain."""
        positioned = [(op, p) for op in self.ops if (p := self.pos(op)) is not None]
        done = sorted((op for op, _ in positioned if op.comp is not None), key=lambda op: op.comp or 0)
        best: tuple[Pos, Call] | None = None
        i = 0
        for op, p in sorted(positioned, key=lambda x: x[0].inv):
            while i < len(done) and (done[i].comp or 0) < op.inv:
                q = self.pos(done[i])
                if q is not None and (best is None or q > best[0]):
                    best = (q, done[i])
                i += 1
            if best is not None and best[0] > p:
                self.fail(f"stale: this call saw seq {p[0]} after a call at seq {best[0][0]} had "
                          "completed", [best[1], op])

    def steps(self, clock_offsets: float) -> None:
        """Every answer at seq S agrees with the write that made S (and S - 1)."""
        for op in self.ops:
            seq = op.answer_seq
            if seq is None or op.outcome not in ("ok", "fail"):
                continue
            at = self.writer.get(seq)
            if op.is_write and op.ok:
                self._condition_held(op, seq)
            elif op.outcome == "fail" and op.error == "cas_conflict" and (op.cond or {}).get("if_seq") == seq:
                self.fail(f"409 although if_seq {seq} was the key's seq", [op])
            elif op.f == "read" and at is not None:
                self._read_matches(op, at, seq, clock_offsets)

    def _condition_held(self, op: Call, seq: int) -> None:
        cond = op.cond or {}
        before = self.writer.get(seq - 1)
        if "if_seq" in cond and cond["if_seq"] != seq - 1:
            self.fail(f"if_seq {cond['if_seq']} held, yet the write made seq {seq}", [op])
        if before is None:
            return
        if cond.get("cas") == 0 and before.f == "write" and before.ttl is None:
            self.fail(f"cas: 0 held on a live key (seq {seq - 1})", [before, op])
        if "if_value" in cond and (before.f == "delete" or (
                before.workload != "lease" and not json_equal(before.value, cond["if_value"]))):
            self.fail(f"if_value held, but seq {seq - 1} has another value", [before, op])

    def _read_matches(self, op: Call, at: Call, seq: int, clock_offsets: float) -> None:
        if op.ok and at.f == "delete":
            self.fail(f"a read returned a value at seq {seq}, which a delete made", [at, op])
        elif op.ok and at.workload != "lease" and not json_equal(at.value, (op.result or {}).get("value")):
            self.fail(f"a read at seq {seq} returned another value than the write that made it", [at, op])
        elif op.outcome == "fail" and at.f == "write":
            expiry = at.inv + at.ttl - clock_offsets - EXPIRY_SLACK if at.ttl is not None else INF
            if (op.comp or INF) < expiry:
                self.fail(f"404 at seq {seq} while the value that made it cannot have expired", [at, op])

    def gaps(self) -> None:
        """Seqs no known write made need as many writes of unknown outcome left to make them."""
        top = max([*self.writer, *(s for op in self.ops if (s := op.answer_seq) is not None)], default=0)
        missing = [s for s in range(1, top + 1) if s not in self.writer]
        spare = sum(1 for op in self.ops if op.is_write and op.unknown and op.id not in self.placed)
        if len(missing) > spare:
            self.problems.append(Violation(NAME, f"{len(missing)} changes of the key nobody made: seqs "
                                           f"{missing[:10]} have no write of unknown outcome left to explain "
                                           f"them ({spare})", None, self.key))


def chain_violations(key: str, ops: Sequence[Call], clock_offsets: float = 0.0) -> list[Violation]:
    """The seq chain's direct checks (linear time; decisive where the search runs out of budget)."""
    chain = Chain(key, ops)
    chain.real_time()
    chain.steps(clock_offsets)
    chain.gaps()
    return chain.problems


# -- the direct checks -------------------------------------------------------------------------

def lost_increments(key: str, ops: Sequence[Call]) -> Violation | None:
    """A quorum counter's final value must count every acknowledged increment (and no more
    than those plus the unknown ones)."""
    incr = [op for op in ops if op.tag == "incr" and op.quorum]
    acked = sum(op.ok for op in incr)
    unknown = sum(op.unknown for op in incr)
    finals = [op for op in ops if op.tag == "final" and op.quorum and (op.ok or op.error == "not_found")]
    if not incr or not finals:
        return None
    final = max(finals, key=lambda op: op.inv)
    counted = (final.result or {}).get("value") if final.ok else None
    value = counted.get("n", 0) if isinstance(counted, dict) else 0
    if acked <= value <= acked + unknown:
        return None
    what = (f"{acked - value} acknowledged increments lost" if value < acked
            else f"{value - acked - unknown} increments nobody made")
    return Violation(NAME, f"quorum counter: {what}", final.node, key, [final.id],
                     [f"final quorum read {final.describe()}",
                      f"{acked} acknowledged increments, {unknown} of unknown outcome"], final.comp)


def two_holders(history: History, quorum_keys: set[str], clock_offsets: float) -> tuple[int, list[Violation]]:
    """(holds of quorum leases, two clients holding one at the same time: see the module docstring)."""
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
    return sum(map(len, by_key.values())), out


def voters_during(history: History, t0: float, t1: float) -> set[str] | None:
    """The voters in force from t0 to t1, or None if a voter change may have been under way.
    Every node starts a voter; a `voters` fault takes one out from `in_force` (its removal
    answered) until `rejoining` (its add was sent). A removal without a clear answer (503,
    none) may still be completed by the next change: nothing is certain until the fault
    ends (its heal adds the node back); one refused outright (400, 409) changed nothing.
    While a `join` fault
    lasts (a new node adds itself, later leaves) nothing is either: it is a voter for part
    of it, and partitions do not cut it off, so it may give either side its majority."""
    voters = set(history.nodes)
    for f in history.faults:
        if f.kind == "join" and t0 <= (f.end or INF) and t1 >= f.begin:
            return None
        if f.kind != "voters":
            continue
        if "in_force" not in f.detail:
            changed = f.detail.get("refused") not in VOTER_CHANGE_UNCHANGED
            if changed and t0 <= (f.end or INF) and t1 >= f.begin:
                return None
            continue
        out, end = f.detail["in_force"], f.end or INF
        back = f.detail.get("rejoining", end)
        if (t0 <= out and t1 >= f.begin) or (t0 <= end and t1 >= back):
            return None  # overlaps the removal or the add
        if out < t0 and t1 < back:
            voters -= set(f.nodes)
    return voters


def minority_successes(history: History) -> tuple[int, int, list[Violation]]:
    """(quorum calls through a side cut off from a majority of the voters, those answered 503,
    those that succeeded). A one-way cut isolates only its first side: its packets to the
    other side are dropped, not the other way round."""
    cut: list[tuple[float, float, set[str]]] = []
    for f in history.faults:
        if f.kind not in ("partition", "oneway") or f.end is None:
            continue
        start = f.detail.get("in_force", f.begin + CUT_MARGIN)
        end = f.detail.get("lifting", f.end)  # packets may pass once the first rule is gone
        sides = f.detail.get("sides", [])
        cut += [(start, end, set(side)) for side in (sides[:1] if f.kind == "oneway" else sides)]
    seen, refused, bad = 0, 0, []
    for op in history.calls:
        if not op.quorum or op.tag == "final":
            continue
        for start, end, side in cut:
            if op.node in side and op.inv > start and (op.end or INF) < end:
                voters = voters_during(history, op.inv, op.end or INF)
                if voters is None or len(side & voters) * 2 > len(voters):
                    continue  # this side may reach a majority
                seen += 1
                refused += op.status == 503
                if op.ok:
                    bad.append(Violation(NAME, f"{op.node} answered a quorum call with success while cut off "
                                         "from a majority of the voters", op.node, op.key, [op.id],
                                         [op.describe(), f"cut {start:.3f}-{end:.3f}: {sorted(side)}, "
                                          f"voters {sorted(voters)}"], op.comp))
                break
    return seen, refused, bad


def run(history: History) -> CheckResult:
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
        ok, violation = check_key(key, ops, offsets)
        steps_total += sum(op.quorum for op in ops)
        inconclusive += ok is None
        violations += [v for v in (violation, lost_increments(key, ops)) if v is not None]
        violations += chain_violations(key, ops, offsets)
    holds, overlaps = two_holders(history, set(by_key), offsets)
    minority, refused, bad = minority_successes(history)
    violations += overlaps + bad
    counters = sum(1 for ops in by_key.values() if any(op.tag == "incr" for op in ops))
    acked = sum(op.ok and op.tag == "incr" for ops in by_key.values() for op in ops)
    summary = (f"{len(by_key)} quorum keys, {steps_total} quorum calls in one history per key; "
               f"{counters} counters with {acked} acknowledged increments; {holds} lease holds; "
               f"{minority} calls through a minority side ({refused} answered 503, {len(bad)} succeeded); "
               f"{len(violations)} violations")
    if inconclusive:
        summary += (f"; {inconclusive} keys too large for the search budget (checked by their seq "
                    "chain only)")
    return CheckResult(NAME, verdict(violations), summary, violations,
                       stats={"keys": len(by_key), "calls": steps_total, "acked_increments": acked,
                              "lease_holds": holds, "minority_calls": minority, "minority_503": refused,
                              "inconclusive": inconclusive,
                              "seconds": round(time.monotonic() - started, 2)})
