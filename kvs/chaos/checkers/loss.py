"""No silent loss, and nothing invented.

Every acknowledged write (a 200 to a put, CAS, delete, lease acquire/renew/release) must,
after convergence, be on *every* node: as the key's current version or in its history
(a lost conflict stays, marked superseded). The chaos cluster keeps up to
revision_history_limit versions per key and the workloads rotate a key long before
that, so a full revision set -- where an old version may legitimately fall out -- makes
the verdict for that key inconclusive rather than silently passing.

The converse is checked too: every version a node holds was written by some client
operation -- one that was acknowledged (same version id) or whose outcome is unknown
(same node and unique value; for tombstones and lease renewals, an unknown delete or
renew on the same node and key). On a quorum key, every round a proposer runs stores its
value as an ordinary version on the acceptors that accept it, also a round that is then
outvoted and retried (the retry stores another version of the same write) or that ends
without a quorum: such a version is explained by any quorum write of that value (or
delete) through its origin, whatever its outcome, and counted in a note.
"""

from __future__ import annotations

from kvs.chaos.checkers.base import SKIPPED, CheckResult, Violation, verdict
from kvs.chaos.history import History

NAME = "no-silent-loss"
MAX_REPORTED = 50


def run(history: History) -> CheckResult:
    dumped = [n for n in history.nodes if history.has_dump(n)]
    if not dumped:
        return CheckResult(NAME, SKIPPED, "no node dumps in the history: nothing to compare with")
    limit = history.meta.get("options", {}).get("history_limit")
    held = {n: {k: {v["version"] for v in vs} for k, vs in history.dumps[n].items()} for n in dumped}
    violations: list[Violation] = []
    full: set[str] = set()
    acknowledged = missing = 0
    for op in history.calls:
        if not (op.is_write and op.ok and op.version):
            continue
        acknowledged += 1
        lacking = []
        for n in dumped:
            if op.version in held[n].get(op.key, ()):
                continue
            if limit and len(history.dumps[n].get(op.key, [])) >= limit:
                full.add(op.key)
                continue
            lacking.append(n)
        if lacking:
            missing += 1
            if missing <= MAX_REPORTED:
                violations.append(Violation(NAME, f"acknowledged write missing on {', '.join(lacking)}",
                                            key=op.key, ops=[op.id], lines=[op.describe()], t=op.comp))
    if missing > MAX_REPORTED:
        violations.append(Violation(NAME, f"... and {missing - MAX_REPORTED} more acknowledged writes "
                                    "missing"))
    invented, attempts = _unexplained(history, dumped)
    violations += invented[:MAX_REPORTED]
    if len(invented) > MAX_REPORTED:
        violations.append(Violation(NAME, f"... and {len(invented) - MAX_REPORTED} more unexplained "
                                    "versions"))
    notes = [f"revision set of {k} is full ({limit} versions): old versions may have left history"
             for k in sorted(full)]
    if attempts:
        notes.append(f"{attempts} versions of quorum rounds that were not acknowledged as such (an "
                     "outvoted or unfinished round of a quorum write; stored by the acceptors that "
                     "accepted it, superseded unless chosen)")
    summary = (f"{acknowledged} acknowledged writes, each looked up on {len(dumped)} nodes; "
               f"{missing} missing, "
               f"{len(invented)} versions no client wrote")
    return CheckResult(NAME, verdict(violations, bool(full)), summary, violations, notes,
                       stats={"acknowledged": acknowledged, "nodes": len(dumped), "full_keys": len(full)})


def _unexplained(history: History, nodes: list[str]) -> tuple[list[Violation], int]:
    """(versions no client operation wrote, versions explained only as quorum round attempts)."""
    acked = {op.version for op in history.calls if op.is_write and op.ok and op.version}
    unknown_values: set[tuple[str, str, str]] = set()
    unknown_kinds: set[tuple[str, str, str]] = set()
    quorum_values: set[tuple[str, str, str]] = set()
    for op in history.calls:
        if op.is_write and op.unknown:
            unknown_kinds.add((op.key, op.node, op.f))
            if op.f == "write":
                unknown_values.add((op.key, op.node, repr(op.value)))
        if op.is_write and op.quorum:
            quorum_values.add((op.key, op.node, repr(op.value) if op.f == "write" else "delete"))
    out = []
    attempts = 0
    seen: set[str] = set()
    for n in nodes:
        for key, versions in history.dumps[n].items():
            for v in versions:
                vid = v["version"]
                if vid in acked or vid in seen:
                    continue
                seen.add(vid)
                kind = "delete" if v.get("deleted") else "write"
                if kind == "write" and (key, v["origin"], repr(v.get("value"))) in unknown_values:
                    continue
                if kind == "delete" and (key, v["origin"], "delete") in unknown_kinds:
                    continue
                if (key, v["origin"], repr(v.get("value")) if kind == "write" else "delete") in quorum_values:
                    attempts += 1
                    continue
                out.append(Violation(NAME, "a node holds a version that no client operation wrote",
                                     node=n, key=key,
                                     lines=[f"version {vid} origin={v['origin']} value={v.get('value')!r} "
                                            f"deleted={v.get('deleted')}"]))
    return out, attempts
