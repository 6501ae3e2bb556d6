"""Counters: what the converged value may be, given the acknowledged increments.

An increment reads {"n": n} as version p on node X and writes {"n": n + 1, "w": <op id>}
with a CAS on p (if_version, or cas: <p's modify index on X>; cas: 0 creates n = 1).
On success the new version's `parent` is p. So the versions of a counter form a tree
in which every edge adds exactly one.

What eventual consistency with per-node CAS allows, exactly:

  1. Per-node atomicity: a version has at most one child per node. Two increments from
     the same base accepted on one node would be a double-successful CAS.
  2. Across nodes, two increments from the same base can both succeed (on different
     nodes). On convergence one branch wins by the conflict order; the other stays in
     history, superseded. Its increments are lost from the value -- that loss is the
     price of availability, and the only one allowed.
  3. Hence the converged value F equals the depth of the winning version: the number of
     increments on its parent chain. Each of them is an acknowledged increment or an
     increment whose outcome was unknown (the "w" field names the op exactly). Every
     acknowledged increment is either on that chain or on a losing branch that forked
     from it at a version with children from two different nodes.
  4. Consequently A_chain <= F <= A + U, where A are the acknowledged increments,
     A_chain those on the winning chain and U those with an unknown outcome, and
     F = A_chain + U_chain exactly.

The checker verifies 1-3 on the revision sets of the final dumps (which hold every
version: the cluster runs with a high revision_history_limit), and reports how many
acknowledged increments were lost to cross-node conflicts. Without dumps it can only
check the bound F <= A + U on the final reads.
"""

from __future__ import annotations

from typing import Any

from kvs.chaos.checkers.base import CheckResult, Violation, verdict
from kvs.chaos.checkers.versions import order_key
from kvs.chaos.history import Call, History

NAME = "counters"
KEPT = "still in history, superseded"  # why such a loss is not silent


def run(history: History) -> CheckResult:
    by_key = history.calls_by_key()
    quorum = history.quorum_keys()  # checked, more strictly, by the quorum checker
    keys = sorted(k for k, ops in by_key.items()
                  if k not in quorum and any(op.workload == "counter" for op in ops))
    violations: list[Violation] = []
    totals = {"keys": len(keys), "acknowledged": 0, "unknown": 0, "lost": 0, "final_sum": 0}
    notes = []
    for key in keys:
        ops = by_key[key]
        incr = [op for op in ops if op.tag == "incr"]
        acked = [op for op in incr if op.ok]
        unknown = [op for op in incr if op.unknown]
        totals["acknowledged"] += len(acked)
        totals["unknown"] += len(unknown)
        versions = _all_versions(history, key)
        if versions is None:
            violations += _history_only(key, ops, acked, unknown, totals)
            continue
        found, lost, final = _check_tree(key, versions, history, acked, unknown)
        violations += found
        totals["lost"] += lost
        totals["final_sum"] += final
        if lost:
            notes.append(f"{key}: {lost} of {len(acked)} acknowledged increments lost from the value "
                         f"to cross-node conflicts (allowed: {KEPT}); final value {final}")
    summary = (f"{totals['keys']} counters, {totals['acknowledged']} acknowledged increments, "
               f"{totals['unknown']} unknown; {totals['lost']} lost to cross-node conflicts "
               f"(allowed: {KEPT}); {len(violations)} violations")
    return CheckResult(NAME, verdict(violations), summary, violations, notes, stats=totals)


def _all_versions(history: History, key: str) -> dict[str, dict[str, Any]] | None:
    dumped = [n for n in history.nodes if history.has_dump(n)]
    if not dumped:
        return None
    out: dict[str, dict[str, Any]] = {}
    for n in dumped:
        for v in history.dumps[n].get(key, []):
            out.setdefault(v["version"], v)
    return out


def _n(v: dict[str, Any]) -> int | None:
    value = v.get("value")
    if isinstance(value, dict) and isinstance(value.get("n"), int):
        return int(value["n"])
    return None


def _check_tree(key: str, versions: dict[str, dict[str, Any]], history: History, acked: list[Call],
                unknown: list[Call]) -> tuple[list[Violation], int, int]:
    out: list[Violation] = []
    if not versions:
        if acked:
            out.append(Violation(NAME, "acknowledged increments but no version on any node", key=key,
                                 ops=[op.id for op in acked[:10]]))
        return out, 0, 0
    children: dict[str | None, list[dict[str, Any]]] = {}
    for v in versions.values():
        parent = v.get("parent")
        children.setdefault(parent, []).append(v)
        n = _n(v)
        if v.get("deleted") or n is None:
            out.append(Violation(NAME, "a counter version is not {n, w}", key=key,
                                 lines=[repr(v.get("value"))]))
            continue
        if parent is None:
            expected = 1
        elif parent in versions and _n(versions[parent]) is not None:
            expected = _n(versions[parent]) + 1  # type: ignore[operator]
        else:
            out.append(Violation(NAME, f"version {v['version'][:8]} descends from {str(parent)[:8]}, "
                                 "which no node holds", key=key))
            continue
        if n != expected:
            out.append(Violation(NAME, f"version {v['version'][:8]} has n={n}, its parent n={expected - 1}: "
                                 "an increment must add exactly one", key=key))
    for parent, kids in children.items():
        origins = [k["origin"] for k in kids]
        for origin in set(origins):
            same = [k for k in kids if k["origin"] == origin]
            if len(same) > 1:
                writers = [k.get("value", {}).get("w") for k in same]
                out.append(Violation(
                    NAME, f"{len(same)} increments from the same base version were accepted on {origin} "
                    "(a double-successful CAS on one node)", node=origin, key=key,
                    ops=[w for w in writers if isinstance(w, int)],
                    lines=[f"base {str(parent)[:8]} -> " + ", ".join(
                        f"{k['version'][:8]} (n={_n(k)}, op #{k.get('value', {}).get('w')})" for k in same)]))
    winner = max(versions.values(), key=order_key)
    for n in (n for n in history.nodes if history.has_dump(n)):
        current = history.dumps[n].get(key)
        if current and current[0]["version"] != winner["version"]:
            out.append(Violation(NAME, f"{n}'s current version is not the conflict-order winner", node=n,
                                 key=key, lines=[f"current {current[0]['version'][:8]}, "
                                                 f"winner {winner['version'][:8]}"]))
    chain: list[dict[str, Any]] = []
    cursor: dict[str, Any] | None = winner
    while cursor is not None and len(chain) <= len(versions):
        chain.append(cursor)
        parent = cursor.get("parent")
        cursor = versions.get(parent) if parent is not None else None
    on_chain = {v["version"] for v in chain}
    final = _n(winner) or 0
    if final != len(chain):
        out.append(Violation(NAME, f"final value {final} but {len(chain)} increments on its chain", key=key))
    writers = {op.id: op for op in [*acked, *unknown]}
    acked_ids = {op.version for op in acked}
    for v in chain:
        w = (v.get("value") or {}).get("w") if isinstance(v.get("value"), dict) else None
        if v["version"] not in acked_ids and w not in writers:
            out.append(Violation(NAME, f"increment {v['version'][:8]} (n={_n(v)}) on the winning chain was "
                                 "written by no acknowledged or unknown increment", key=key))
    lost = 0
    for op in acked:
        if op.version not in versions:
            out.append(Violation(NAME, "acknowledged increment missing from every node", key=key,
                                 ops=[op.id], lines=[op.describe()]))
        elif op.version not in on_chain:
            lost += 1
            fork_ok = _fork_has_two_origins(versions[op.version], versions, on_chain, children)
            if not fork_ok:
                out.append(Violation(NAME, "acknowledged increment lost, but not to a cross-node conflict",
                                     key=key, ops=[op.id], lines=[op.describe()]))
    return out, lost, final


def _fork_has_two_origins(v: dict[str, Any], versions: dict[str, dict[str, Any]], on_chain: set[str],
                          children: dict[str | None, list[dict[str, Any]]]) -> bool:
    """Walk up from a losing version to the winning chain; the two children there must differ in origin."""
    branch_child = v
    parent = v.get("parent")
    while parent is not None and parent not in on_chain:
        branch_child = versions[parent]
        parent = branch_child.get("parent")
    chain_children = [k for k in children.get(parent, []) if k["version"] in on_chain]
    return all(k["origin"] != branch_child["origin"] for k in chain_children)


def _history_only(key: str, ops: list[Call], acked: list[Call], unknown: list[Call],
                  totals: dict[str, int]) -> list[Violation]:
    finals = [op for op in ops if op.tag == "final" and op.ok]
    out = []
    values = {op.node: _n(op.result or {}) for op in finals}
    if len(set(values.values())) > 1:
        out.append(Violation(NAME, "nodes read different final values", key=key,
                             lines=[f"{n}: {v}" for n, v in sorted(values.items())]))
    for node, value in values.items():
        if isinstance(value, int) and value > len(acked) + len(unknown):
            out.append(Violation(NAME, f"final value {value} exceeds acknowledged + unknown increments "
                                 f"({len(acked)} + {len(unknown)})", node=node, key=key))
    totals["final_sum"] += max((v for v in values.values() if v is not None), default=0)
    return out
