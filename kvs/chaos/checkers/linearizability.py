"""Per-node linearizability of each key's CAS register (Wing-Gong search, Lowe's memoization).

What is checked. kvs promises CAS atomicity per key *on the node that serves it*, not
across nodes. So the history is cut into one sub-history per (node X, key k): the
reads, writes, CAS and deletes that clients sent to X for k. Those must be explainable
by one register on X, in an order that respects real time, where:

  * a local write (put, successful CAS, delete) makes its version current: the HLC
    stamps it after everything X has seen, so it always wins on X;
  * a read returns the current version (404 when it is a tombstone or absent);
  * a CAS succeeds iff its conditions hold on the current version (`cas: N` compares
    with the current version's modify index *on X*), fails with 409 and `current`
    when they do not, and with 404 when the key is absent and the condition presumes it;
  * versions written on other nodes arrive by replication at times nobody observes:
    each is an extra writer's "apply v" step, after which the current version is the
    winner of (current, v) by the conflict order: a replicated version only becomes
    current on X if it beats what X has. This is what makes it legal for a read on X to
    return a version written on Y, and illegal for X to go back to an older version.

Two ways to know the extra writer:

  with X's final dump (the normal case): X's revision set of k holds every version X
    ever applied, and their modify indexes on X give the exact order in which X applied
    them (the index is bumped under the same lock as the write). Every version becomes
    a required step with that position: local ones are tied to the client op that wrote
    them (an op with an unknown outcome is tied by its unique value, so it is known
    whether and where it took effect), foreign ones are "apply" steps. The search then
    only places reads and failed CAS between them, and it also catches a local write
    whose position contradicts real time.

  from the history alone (no dump): every write to k through another node (acknowledged
    or unknown) is an optional "apply" step that may happen at any time after its
    invoke, or never. Weaker (a remote tombstone can explain a 404), still sound.

Unknown outcomes: an op that timed out is optional, with no deadline (it may take
effect long after the client gave up) -- unless the dump settles it.

TTLs (lease keys): a version written with a ttl stays current but reads as absent once
the node's clock passes its expires_at. Each such version gets an optional "expire"
step, after which the register reads as absent (a 404, `cas: 0` holds, `if_value`
answers 404) until a newer version arrives. The step may come no earlier than the
expiry time seen through the node's clock, less every clock offset of the run and a
small slack (expires_at is stamped by the version's origin with its own clock), and
has no deadline: a paused node expires late. So a lease that reads as absent too early,
or an acquire (`cas: 0`) that succeeds while the holder's version cannot have expired,
is caught; a lease that lives too long is left to the lease checker.

The search is WGL as in Lowe's "Testing for linearizability" / porcupine: a linked list
of call and return events; take the first call whose op can be linearized now, lift
it, restart; at a return whose op is not yet linearized, backtrack. Configurations
(set of linearized ops, register state) already explored are cached. The model can
be non-deterministic (a replicated version whose order is unknown may or may not win);
each alternative is tried.

On failure the sub-history is shrunk to a minimal violating one: ops are removed (with
every op that observes a version only they produce) as long as the rest still cannot
be linearized; the result is 1-minimal (removing any single op makes it pass), or
reported as reduced if the time budget ran out first.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from kvs.chaos.checkers.base import CheckResult, Violation, verdict
from kvs.chaos.checkers.versions import MISSING, VersionTable, synthetic_id
from kvs.chaos.history import Call, History
from kvs.conditions import json_equal

NAME = "linearizability"
INF = math.inf
CHECKED_WORKLOADS = ("register", "counter", "putdel", "lease")
EXPIRY_SLACK = 0.05  # seconds: ms rounding of expires_at and of the node's clock reads
EXPIRED = "x:"  # state prefix: the version after it is current on the node but has expired
SEARCH_BUDGET = 2_000_000
SHRINK_SECONDS = 20.0

State = str | None  # id of the node's current version (tombstones included; EXPIRED + id once its
#                     ttl ran out), None: never written


@dataclass(eq=False)
class Step:
    """One thing the search places in the register's sequential order."""

    kind: str  # read | write | fail | apply | expire
    call: float
    ret: float  # INF: no deadline
    required: bool
    op: Call | None = None
    version: str | None = None  # write / apply: the version it installs
    observed: str | None = None  # read / fail: the current version the node reported (None: absent)
    error: str | None = None  # fail: cas_conflict | not_found
    cond: dict[str, Any] | None = None
    seq: int | None = None  # position in the node's apply order, when known (always required)
    delete: bool = False  # a DELETE: on an absent key it answers 404 whatever its conditions
    needs: frozenset[str] = frozenset()  # version ids this step refers to

    def label(self) -> str:
        if self.op is not None and self.kind != "apply":
            return self.op.describe()
        origin = f" written by {self.op.describe()}" if self.op is not None else " (no known writer)"
        if self.kind == "expire":
            return f"{(self.version or '?')[:8]} expires (not before {self.call:.3f});{origin}"
        where = f" at position {self.seq}" if self.seq is not None else ""
        return f"replication applies {(self.version or '?')[:8]}{where};{origin}"


class Model(Protocol):
    """A sequential specification the search can check steps against (the per-node register
    here, the cluster-wide quorum register in quorum.py). States must be hashable."""

    start: Any  # the state before any step

    def step(self, state: Any, s: Step) -> list[Any]:
        """The states `s` may lead to from `state`; none if `s` cannot happen there."""
        ...


class RegisterModel:
    """The sequential specification of one key's register on one node."""

    start: State = None

    def __init__(self, node: str, table: VersionTable) -> None:
        self.node = node
        self.table = table

    def live(self, state: State) -> str | None:
        if state is None or state.startswith(EXPIRED) or self.table.deleted(state):
            return None
        return state

    def outcomes(self, cond: dict[str, Any] | None, current: str | None, delete: bool = False
                 ) -> set[str]:
        """Possible answers to a write with `cond` against `current`: holds / cas_conflict / not_found."""
        if current is None:
            presumes = bool(cond) and (any(k != "cas" for k in cond) or cond.get("cas", 0) != 0)
            return {"not_found"} if presumes or delete else {"holds"}
        if not cond:
            return {"holds"}
        unknown = False
        for name, expected in cond.items():
            if name == "cas":
                if expected == 0:
                    return {"cas_conflict"}
                actual: Any = self.table.index(current, self.node)
            elif name == "if_version":
                actual = current
            elif name == "if_timestamp":
                actual = self.table.get(current).ts
            elif name == "if_value":
                actual = self.table.value(current)
                if actual is not MISSING:
                    if not json_equal(actual, expected):
                        return {"cas_conflict"}
                    continue
                actual = None
            else:
                raise ValueError(f"unknown condition {name!r}")
            if actual is None:
                unknown = True
            elif actual != expected:
                return {"cas_conflict"}
        return {"holds", "cas_conflict"} if unknown else {"holds"}

    def step(self, state: State, s: Step) -> list[State]:
        if s.kind == "read":
            return [state] if self.live(state) == s.observed else []
        if s.kind == "fail":
            current = self.live(state)
            if s.error not in self.outcomes(s.cond, current, s.delete):
                return []
            if s.error == "cas_conflict" and s.observed is not None and s.observed != current:
                return []
            return [state]
        if s.kind == "write":
            return [s.version] if "holds" in self.outcomes(s.cond, self.live(state), s.delete) else []
        if s.kind == "expire":
            return [EXPIRED + state] if state == s.version else []
        assert s.kind == "apply" and s.version is not None
        if state is None or state == s.version:
            return [s.version]
        order = self.table.compare(s.version, state.removeprefix(EXPIRED))
        if order > 0:
            return [s.version]
        if order < 0:
            return [state]
        return [state, s.version]


# -- the search -------------------------------------------------------------------------------

class _Entry:
    __slots__ = ("index", "is_call", "match", "next", "prev")

    def __init__(self, index: int, is_call: bool) -> None:
        self.index = index
        self.is_call = is_call
        self.match: _Entry | None = None
        self.prev: _Entry | None = None
        self.next: _Entry | None = None


def _lift(e: _Entry) -> None:
    for x in (e, e.match):
        if x is not None:
            assert x.prev is not None
            x.prev.next = x.next
            if x.next is not None:
                x.next.prev = x.prev


def _unlift(e: _Entry) -> None:
    for x in (e.match, e):
        if x is not None:
            assert x.prev is not None
            x.prev.next = x
            if x.next is not None:
                x.next.prev = x


@dataclass
class SearchResult:
    ok: bool | None  # None: budget exhausted
    explored: int
    stuck: int | None = None  # index of the step whose return could not be passed (deepest)
    order: list[int] = field(default_factory=list)  # a linearization, when ok


def search(steps: Sequence[Step], model: Model, budget: int = SEARCH_BUDGET) -> SearchResult:
    """Is there a sequential order of `steps` that the model accepts and real time allows?"""
    events = []
    for i, s in enumerate(steps):
        events.append((s.call, 0, i))  # calls before returns at equal times: overlap, not order
        if s.required:
            events.append((s.ret, 1, i))
    events.sort(key=lambda e: (e[0], e[1], e[2]))
    head = _Entry(-1, False)
    calls: dict[int, _Entry] = {}
    prev = head
    for _, kind, i in events:
        e = _Entry(i, kind == 0)
        if kind == 0:
            calls[i] = e
        else:
            calls[i].match = e
        e.prev, prev.next = prev, e
        prev = e
    ranked = sorted((s.seq, i) for i, s in enumerate(steps) if s.seq is not None)
    rank = {i: r for r, (_, i) in enumerate(ranked)}
    returns_left = sum(1 for s in steps if s.required)
    next_rank = 0
    state: Any = model.start
    bits = 0
    stack: list[tuple[_Entry, Any, list[Any]]] = []
    cache: set[tuple[int, Any]] = set()
    explored = 0
    deepest, stuck = -1, None
    entry = head.next

    def take(e: _Entry, alternatives: list[Any]) -> None:
        nonlocal state, bits, returns_left, next_rank, entry
        i = e.index
        new_state = alternatives.pop(0)
        cache.add((bits | (1 << i), new_state))
        stack.append((e, state, alternatives))
        _lift(e)
        if steps[i].required:
            returns_left -= 1
        if i in rank:
            next_rank += 1
        state, bits = new_state, bits | (1 << i)
        entry = head.next

    while returns_left:
        explored += 1
        if explored > budget:
            return SearchResult(None, explored)
        if entry is not None and entry.is_call:
            i = entry.index
            if i not in rank or rank[i] == next_rank:
                new_bits = bits | (1 << i)
                options = [x for x in dict.fromkeys(model.step(state, steps[i]))
                           if (new_bits, x) not in cache]
                if options:
                    take(entry, options)
                    continue
            entry = entry.next
            continue
        # A return (or the end) reached with its op not linearized: backtrack.
        if len(stack) > deepest:
            deepest, stuck = len(stack), (entry.index if entry is not None else None)
        while True:
            if not stack:
                return SearchResult(False, explored, stuck)
            e, previous, alternatives = stack.pop()
            i = e.index
            _unlift(e)
            bits &= ~(1 << i)
            state = previous
            if steps[i].required:
                returns_left += 1
            if i in rank:
                next_rank -= 1
            alternatives = [x for x in alternatives if (bits | (1 << i), x) not in cache]
            if alternatives:
                take(e, alternatives)
            else:
                entry = e.next
            break
    return SearchResult(True, explored, order=[e.index for e, _, _ in stack])


def brute_force(steps: Sequence[Step], model: Model) -> bool:
    """Every subset of the optional steps, every order: the reference for small histories."""
    required = [i for i, s in enumerate(steps) if s.required]
    optional = [i for i, s in enumerate(steps) if not s.required]
    for size in range(len(optional) + 1):
        for subset in itertools.combinations(optional, size):
            for order in itertools.permutations(required + list(subset)):
                if _legal_order(steps, order) and _accepts(steps, order, model):
                    return True
    return False


def _legal_order(steps: Sequence[Step], order: Sequence[int]) -> bool:
    for a in range(len(order)):
        for b in range(a + 1, len(order)):
            first, later = steps[order[a]], steps[order[b]]
            if later.ret < first.call:
                return False  # `later` returned before `first` was even called
            if first.seq is not None and later.seq is not None and later.seq < first.seq:
                return False
    return True


def _accepts(steps: Sequence[Step], order: Sequence[int], model: Model) -> bool:
    states: set[Any] = {model.start}
    for i in order:
        states = {n for s in states for n in model.step(s, steps[i])}
        if not states:
            return False
    return True


# -- building a (node, key) problem ------------------------------------------------------------

@dataclass
class Problem:
    node: str
    key: str
    steps: list[Step]
    issues: list[Violation]  # found while building: lost or invented writes, index mismatches
    with_dump: bool


def _needs(op: Call, observed: str | None, table: VersionTable, node: str) -> frozenset[str]:
    out = set()
    if observed:
        out.add(observed)
    if op.cond:
        if op.cond.get("if_version"):
            out.add(op.cond["if_version"])
        cas = op.cond.get("cas")
        if cas:
            vid = table.at_index(node, cas)
            if vid is not None:
                out.add(vid)
    return frozenset(out)


def _client_steps(ops: Iterable[Call], node: str, table: VersionTable) -> list[Step]:
    """Reads and failed writes on `node`: they observe the register, they change nothing."""
    steps = []
    for op in ops:
        if op.outcome == "unknown" or (op.outcome == "fail" and op.error not in ("not_found",
                                                                                  "cas_conflict")):
            continue  # no answer, or never reached the node: tells nothing
        if op.f == "read":
            observed = op.version if op.ok else None
            steps.append(Step("read", op.inv, op.comp or INF, True, op, observed=observed,
                              needs=_needs(op, observed, table, node)))
        elif op.outcome == "fail":
            observed = (op.current or {}).get("version")
            steps.append(Step("fail", op.inv, op.comp or INF, True, op, observed=observed,
                              error=op.error, cond=op.cond, delete=op.f == "delete",
                              needs=_needs(op, observed, table, node)))
    return steps


def build_problem(node: str, key: str, ops: Sequence[Call], table: VersionTable,
                  dump: list[dict[str, Any]] | None, clock_offsets: float = 0.0) -> Problem:
    """`ops`: every op on `key` through any node; `dump`: node's final revision set of key, if any;
    `clock_offsets`: the sum of every node's clock offset in seconds (bounds early expiry)."""
    problem = _build_problem(node, key, ops, table, dump)
    problem.steps += _expiries(problem.steps, table, clock_offsets)
    return problem


def _expiries(steps: Sequence[Step], table: VersionTable, clock_offsets: float) -> list[Step]:
    """An optional expire step for each version installed with a ttl (see the module docstring)."""
    out = []
    for s in steps:
        if s.kind not in ("write", "apply") or s.version is None:
            continue
        expires_at = table.get(s.version).expires_at
        if isinstance(expires_at, int | float):
            earliest = expires_at / 1000
        elif s.op is not None and s.op.ttl is not None:
            earliest = s.op.inv + s.op.ttl
        else:
            continue
        out.append(Step("expire", earliest - clock_offsets - EXPIRY_SLACK, INF, False, s.op,
                        version=s.version, needs=frozenset({s.version})))
    return out


def _build_problem(node: str, key: str, ops: Sequence[Call], table: VersionTable,
                   dump: list[dict[str, Any]] | None) -> Problem:
    local = [op for op in ops if op.node == node]
    steps = _client_steps(local, node, table)
    issues: list[Violation] = []
    producers = {op.version: op for op in ops if op.is_write and op.ok and op.version}
    if dump is None:
        for op in ops:
            if not op.is_write or op.outcome == "fail":
                continue
            version = op.version if op.ok else _find_unknown(op, table) or synthetic_id(op)
            if op.node == node:
                steps.append(Step("write", op.inv, op.comp if op.ok else INF, op.ok, op, version=version,
                                  cond=op.cond, delete=op.f == "delete",
                                  needs=_needs(op, None, table, node)))
            else:
                steps.append(Step("apply", op.inv, INF, False, op, version=version))
        return Problem(node, key, steps, issues, with_dump=False)

    applied = sorted(dump, key=lambda v: v["modify_index"])
    in_dump = {v["version"]: v for v in applied}
    linked: dict[str, Call] = {}
    for op in local:
        if op.is_write and op.ok and op.version:
            if op.version not in in_dump:
                issues.append(Violation(NAME, "acknowledged write missing from its own node", node, key,
                                        [op.id], [op.describe()], op.comp))
                continue
            linked[op.version] = op
            idx = (op.result or {}).get("modify_index")
            if idx is not None and idx != in_dump[op.version]["modify_index"]:
                issues.append(Violation(NAME, f"write answered modify_index {idx}, but the node "
                                        f"holds it at {in_dump[op.version]['modify_index']}", node, key,
                                        [op.id], [op.describe()], op.comp))
    unknown = [op for op in local if op.is_write and op.unknown]
    unknown_puts = {_value_key(op.value): op for op in ops if op.f == "write" and op.unknown}
    for v in applied:
        if v["origin"] != node or v["version"] in linked:
            continue
        match = _link_unknown(v, unknown, linked)
        if match is None:
            issues.append(Violation(NAME, "the node holds a version of its own that no client wrote",
                                    node, key, [], [_brief(v)]))
        else:
            linked[v["version"]] = match
    highest: dict[str, Any] | None = None
    for position, v in enumerate(applied):
        vid = v["version"]
        op = linked.get(vid)
        if op is not None and op.node == node:
            steps.append(Step("write", op.inv, op.comp if op.ok else INF, True, op, version=vid,
                              cond=op.cond, seq=position, delete=op.f == "delete",
                              needs=_needs(op, None, table, node)))
            if highest is not None and _order(v) < _order(highest):
                issues.append(Violation(NAME, "a local write was stamped below a version the node "
                                        "already had (HLC went backwards)", node, key, [op.id],
                                        [op.describe(), "already had " + _brief(highest)], op.comp))
        else:
            producer = producers.get(vid) or op or unknown_puts.get(_value_key(v.get("value")))
            steps.append(Step("apply", producer.inv if producer else -INF, INF, True, producer,
                              version=vid, seq=position))
        if highest is None or _order(v) > _order(highest):
            highest = v
    return Problem(node, key, steps, issues, with_dump=True)


def _value_key(value: Any) -> str:
    return repr(value)


def _order(v: dict[str, Any]) -> tuple[int, int, int, str]:
    return (v["timestamp"], v["logical"], -v["origin_joined_at"], v["version"])


def _brief(v: dict[str, Any]) -> str:
    kind = "tombstone" if v.get("deleted") else f"value={v.get('value')!r}"
    return (f"version {v['version'][:8]} origin={v['origin']} {kind} ts={v['timestamp']}/{v['logical']} "
            f"modify_index={v.get('modify_index')}")


def _find_unknown(op: Call, table: VersionTable) -> str | None:
    """The real id of an unknown put, if some read or dump saw its (unique) value."""
    if op.f != "write":
        return None
    for vid, info in table.info.items():
        if (not vid.startswith("?") and info.origin == op.node and info.value is not MISSING
                and info.deleted is False and info.producer is None and json_equal(info.value, op.value)
                and isinstance(op.value, str | dict)):
            return vid
    return None


def _link_unknown(v: dict[str, Any], unknown: list[Call], linked: dict[str, Call]) -> Call | None:
    """Which unknown-outcome op of this node wrote v? By value for puts; for a tombstone the
    earliest compatible unknown delete (the weakest real-time constraint, so never a false alarm)."""
    taken = {op.id for op in linked.values()}
    candidates = [op for op in unknown if op.id not in taken]
    if not v.get("deleted"):
        for op in candidates:
            if op.f == "write" and json_equal(op.value, v.get("value")):
                return op
        return None
    for op in sorted(candidates, key=lambda o: o.inv):
        if op.f == "delete" and (not op.cond or op.cond.get("if_version") in (None, v.get("parent"))):
            return op
    return None


# -- shrinking ---------------------------------------------------------------------------------

def _closed(steps: Sequence[Step]) -> list[Step]:
    """Drop steps that refer to a version no remaining step installs (repeat until stable)."""
    current = list(steps)
    while True:
        made = {s.version for s in current if s.version}
        kept = [s for s in current if s.needs <= made]
        if len(kept) == len(current):
            return kept
        current = kept


def shrink(steps: list[Step], model: Model, seconds: float = SHRINK_SECONDS
           ) -> tuple[list[Step], bool]:
    """A violating sub-history as small as the budget allows; (steps, True if 1-minimal)."""
    deadline = time.monotonic() + seconds

    def fails(candidate: list[Step]) -> bool:
        result = search(candidate, model, budget=SEARCH_BUDGET // 4)
        return result.ok is False

    current = list(steps)
    # Everything that was called after the deepest stuck return cannot be needed to get stuck.
    result = search(current, model)
    if result.stuck is not None:
        limit = current[result.stuck].ret
        cut = _closed([s for s in current if s.call <= limit])
        if cut and fails(cut):
            current = cut
    chunks = 2
    while len(current) > 1 and time.monotonic() < deadline:
        size = max(1, len(current) // chunks)
        removed = False
        for start in range(0, len(current), size):
            if time.monotonic() > deadline:
                return current, False
            candidate = _closed(current[:start] + current[start + size:])
            if candidate and len(candidate) < len(current) and fails(candidate):
                current = candidate
                chunks = max(2, chunks - 1)
                removed = True
                break
        if not removed:
            if size == 1:
                return current, True
            chunks = min(len(current), chunks * 2)
    return current, len(current) <= 1


# -- the checker -------------------------------------------------------------------------------

def check_problem(problem: Problem, table: VersionTable, *, shrink_seconds: float = SHRINK_SECONDS
                  ) -> tuple[bool | None, Violation | None]:
    model = RegisterModel(problem.node, table)
    result = search(problem.steps, model)
    if result.ok is not False:
        return result.ok, None
    if shrink_seconds <= 0:  # enough violations reported in full: name the op the search got stuck at
        stuck = problem.steps[result.stuck] if result.stuck is not None else None
        return False, Violation(NAME, "no linearization of this node's register (not shrunk)", problem.node,
                                problem.key, [stuck.op.id] if stuck and stuck.op else [],
                                ["the search got stuck at: " + (stuck.label() if stuck else "?")],
                                stuck.ret if stuck and stuck.ret < INF else None)
    minimal, exact = shrink(problem.steps, model, shrink_seconds)
    minimal.sort(key=lambda s: (s.call, s.seq if s.seq is not None else -1))
    kind = "minimal" if exact else "reduced (shrinking ran out of time)"
    lines = [f"{kind} violating sub-history, {len(minimal)} of {len(problem.steps)} steps "
             f"({'order of application from the node dump' if problem.with_dump else 'history only'}):"]
    lines += ["  " + s.label() for s in minimal]
    ops = sorted({s.op.id for s in minimal if s.op is not None})
    stuck_at = min((s.ret for s in minimal if s.ret < INF), default=None)
    return False, Violation(NAME, "no linearization of this node's register", problem.node, problem.key,
                            ops, lines, stuck_at)


def clock_offsets(history: History) -> float:
    """Seconds: the sum of every node's largest clock offset, fixed skew plus jumps (bounds how
    early a ttl can run out)."""
    jumps: dict[str, int] = {}
    for f in history.faults:
        if f.kind == "jump":
            jumps[f.nodes[0]] = max(jumps.get(f.nodes[0], 0), abs(f.detail.get("offset_ms", 0)))
    skews = sum(abs(info.get("skew_ms") or 0) for info in history.meta.get("nodes", {}).values())
    return (skews + sum(jumps.values())) / 1000


def run(history: History, table: VersionTable, *, shrink_seconds: float = SHRINK_SECONDS,
        max_reported: int = 20) -> CheckResult:
    violations: list[Violation] = []
    checked = steps_total = inconclusive = with_dump = shrunk = 0
    by_key = history.calls_by_key()
    offsets = clock_offsets(history)
    quorum = history.quorum_keys()  # one register across the cluster: the quorum checker's
    for key in sorted(by_key):
        ops = by_key[key]
        workloads = {op.workload for op in ops}
        if key in quorum or not workloads <= set(CHECKED_WORKLOADS):
            continue
        for node in sorted({op.node for op in ops}):
            dump = history.dumps[node].get(key, []) if history.has_dump(node) else None
            problem = build_problem(node, key, ops, table, dump, offsets)
            violations += problem.issues
            checked += 1
            steps_total += len(problem.steps)
            with_dump += problem.with_dump
            budget = shrink_seconds if shrunk < max_reported else 0.0
            ok, violation = check_problem(problem, table, shrink_seconds=budget)
            if ok is None:
                inconclusive += 1
            if violation is not None:
                violations.append(violation)
                shrunk += 1
    summary = (f"{checked} (node, key) registers, {steps_total} steps, "
               f"{with_dump} ordered by node dumps; {len(violations)} violations")
    if inconclusive:
        summary += f"; {inconclusive} too large to decide within the search budget"
    return CheckResult(NAME, verdict(violations, inconclusive > 0), summary, violations,
                       stats={"registers": checked, "steps": steps_total, "inconclusive": inconclusive})
