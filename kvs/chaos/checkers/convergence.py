"""Convergence: once faults end, every node reaches the same Merkle root within a bound, and
the nodes' full dumps are identical -- every key's whole revision set, in order, with the
same winner current and the same versions marked superseded (node-local fields aside).
"""

from __future__ import annotations

from kvs.chaos.checkers.base import SKIPPED, CheckResult, Violation, verdict
from kvs.chaos.checkers.versions import replicated
from kvs.chaos.history import History

NAME = "convergence"
MAX_KEYS_SHOWN = 10


def run(history: History) -> CheckResult:
    nodes = history.nodes
    if not history.dump_info and not history.converge:
        return CheckResult(NAME, SKIPPED, "no Merkle roots or dumps recorded (run ended early?)")
    violations: list[Violation] = []
    healed = history.phases.get("healed")
    bound = history.meta.get("options", {}).get("converge_timeout")
    first_equal = next((r for r in history.converge if r.get("equal")), None)
    waited = None
    if history.converge and first_equal is None:
        last = history.converge[-1]
        lines = [f"{node}: {root}" for node, root in sorted(last.get("roots", {}).items())]
        violations.append(Violation(NAME, f"Merkle roots still differ {bound}s after the faults ended",
                                    lines=lines, t=last["t"]))
    elif first_equal is not None and healed is not None:
        waited = first_equal["t"] - healed
    missing = [n for n in nodes if not history.has_dump(n)]
    if missing:
        violations.append(Violation(NAME, f"no final dump from {', '.join(missing)}"))
    dumped = [n for n in nodes if history.has_dump(n)]
    keys = sorted({k for n in dumped for k in history.dumps[n]})
    differing = []
    for key in keys:
        sets = {n: tuple(replicated(v) for v in history.dumps[n].get(key, [])) for n in dumped}
        if len(set(sets.values())) > 1:
            differing.append(key)
            if len(differing) <= MAX_KEYS_SHOWN:
                violations.append(Violation(NAME, "nodes hold different revision sets", key=key,
                                            lines=_describe(history, key, dumped)))
    if len(differing) > MAX_KEYS_SHOWN:
        violations.append(Violation(NAME, f"... and {len(differing) - MAX_KEYS_SHOWN} more keys differ"))
    summary = (f"{len(dumped)} node dumps, {len(keys)} keys: "
               + ("identical" if not differing else f"{len(differing)} keys differ"))
    if waited is not None:
        summary = f"Merkle roots equal {waited:.1f}s after healing; " + summary
    return CheckResult(NAME, verdict(violations), summary, violations,
                       stats={"keys": len(keys), "differing": len(differing), "seconds_to_converge": waited})


def _describe(history: History, key: str, nodes: list[str]) -> list[str]:
    lines = []
    all_ids = {v["version"] for n in nodes for v in history.dumps[n].get(key, [])}
    for n in nodes:
        versions = history.dumps[n].get(key, [])
        ids = {v["version"] for v in versions}
        current = versions[0]["version"][:8] if versions else "-"
        lacks = sorted(x[:8] for x in all_ids - ids)
        superseded = sum(1 for v in versions if v.get("superseded"))
        missing = ""
        if lacks:
            missing = f", lacks {', '.join(lacks[:6])}" + (" ..." if len(lacks) > 6 else "")
        lines.append(f"{n}: {len(versions)} versions, current {current}, {superseded} superseded{missing}")
    return lines
