"""The checkers. Each reads only a `History` (loaded from the JSON-lines file), so every one
of them runs the same on a live run and on a saved history: `kvs chaos check DIR`.

    linearizability  per (node, key) CAS register, WGL search, minimal violating sub-history
    convergence      equal Merkle roots within a bound after healing; identical dumps
    no-silent-loss   every acknowledged write on every node; nothing no client wrote
    counters         the converged value against the acknowledged increments, exactly
    leases           no two holders through one node; cross-node overlaps attributed
    quorum           quorum keys: one linearizable register per key across every node; quorum
                     counters lose no acknowledged increment; never two holders of a quorum
                     lease; no success through a node cut off from a majority of the voters
"""

from __future__ import annotations

from kvs.chaos.checkers import convergence, counters, leases, linearizability, loss, quorum
from kvs.chaos.checkers.base import FAIL, INCONCLUSIVE, PASS, SKIPPED, CheckResult, Violation
from kvs.chaos.checkers.versions import build_table
from kvs.chaos.history import History

__all__ = ["FAIL", "INCONCLUSIVE", "PASS", "SKIPPED", "CheckResult", "Violation", "run_all"]


def run_all(history: History, *, shrink_seconds: float = linearizability.SHRINK_SECONDS
            ) -> list[CheckResult]:
    table = build_table(history)
    results = [
        linearizability.run(history, table, shrink_seconds=shrink_seconds),
        convergence.run(history),
        loss.run(history),
        counters.run(history),
        leases.run(history),
        quorum.run(history),
    ]
    if table.conflicts:
        results.append(CheckResult(
            "consistency-of-answers", FAIL,
            f"{len(table.conflicts)} versions described differently by different answers",
            [Violation("consistency-of-answers", c) for c in table.conflicts[:50]]))
    return results
