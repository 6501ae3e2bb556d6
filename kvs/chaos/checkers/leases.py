"""Leases: on one node, never two holders at once; across nodes, overlaps are reported and
attributed (partition, pause, crash, skewed clock, or plain replication delay).

When does a client hold a lease? From the moment its acquire (`cas: 0` + ttl T) is
acknowledged until the earliest of: T after the invoke of its last acknowledged acquire
or renew (the node stamps the version at or after that invoke, so the node cannot let
it expire sooner), the invoke of its release, or the answer of a renew that failed or
timed out (it stops acting as the holder).

Per node. If clients P and Q both held a lease key through node X at overlapping times,
look at the order in which X applied the key's versions (modify indexes in X's dump):
between P's last acknowledged version and Q's acquire, X either applied a version
written on another node (replication: P's lease was overwritten by a conflict winner,
and later that winner was released or expired -- allowed), or it did not. If it did
not, X let Q acquire while P's lease was live on X, or expired it before T: a
violation. Without a dump of X, any write to the key through another node invoked
before Q's acquire completed counts as a possible explanation (weaker, still sound).

Across nodes. P through X and Q through Y can overlap legitimately: X and Y accept
`cas: 0` independently until replication tells them about each other, a partition or a
paused node stretches that, and a node whose clock runs behind expires a lease stamped
elsewhere earlier than its holder expects. Each overlap is reported with the faults
active during it, not as an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kvs.chaos.checkers.base import CheckResult, Violation, verdict
from kvs.chaos.history import Call, Fault, History

NAME = "leases"
TOLERANCE = 0.01  # seconds: ms rounding of stamps


@dataclass
class Hold:
    client: str
    node: str
    key: str
    start: float  # acquire acknowledged
    end: float
    calls: list[Call] = field(default_factory=list)  # acknowledged acquire/renew calls

    def versions(self) -> list[str]:
        return [op.version for op in self.calls if op.version]


def holds(history: History) -> list[Hold]:
    out = []
    per_client: dict[tuple[str, str], list[Call]] = {}
    for op in history.calls:
        if op.workload == "lease" and op.tag in ("acquire", "renew", "release"):
            per_client.setdefault((op.client, op.key), []).append(op)
    for (client, key), ops in per_client.items():
        ops.sort(key=lambda o: o.inv)
        current: Hold | None = None
        for op in ops:
            if op.tag == "acquire":
                if current is not None:
                    out.append(current)
                    current = None
                if op.ok and op.comp is not None:
                    ttl = op.ttl or 0
                    current = Hold(client, op.node, key, op.comp, op.inv + ttl, [op])
            elif current is None:
                continue
            elif op.tag == "renew" and op.ok:
                current.calls.append(op)
                current.end = max(current.end, op.inv + (op.ttl or 0))
            elif op.tag == "renew":
                current.end = min(current.end, op.end if op.end is not None else current.end)
                out.append(current)
                current = None
            else:  # release
                current.end = min(current.end, op.inv)
                out.append(current)
                current = None
        if current is not None:
            out.append(current)
    return [h for h in out if h.end > h.start]


def run(history: History) -> CheckResult:
    quorum = history.quorum_keys()  # never two holders at all: the quorum checker's
    all_holds = [h for h in holds(history) if h.key not in quorum]
    by_key: dict[str, list[Hold]] = {}
    for h in all_holds:
        by_key.setdefault(h.key, []).append(h)
    writes_by_key: dict[str, list[Call]] = {}
    for op in history.calls:
        if op.workload == "lease" and op.is_write and op.outcome != "fail":
            writes_by_key.setdefault(op.key, []).append(op)
    violations: list[Violation] = []
    notes: list[str] = []
    same_node_explained = 0
    cross = 0
    causes: dict[str, int] = {}
    for key, hs in sorted(by_key.items()):
        hs.sort(key=lambda h: h.start)
        for i, p in enumerate(hs):
            for q in hs[i + 1:]:
                if q.start >= p.end - TOLERANCE:
                    break
                if q.client == p.client:
                    continue
                overlap = (q.start, min(p.end, q.end))
                if p.node == q.node:
                    why = _explain_same_node(history, p, q, writes_by_key.get(key, []))
                    if why is None:
                        violations.append(Violation(
                            NAME, f"two clients held the lease through {p.node} at once "
                            f"for {overlap[1] - overlap[0]:.3f}s", node=p.node, key=key,
                            ops=[op.id for op in (*p.calls, *q.calls)],
                            lines=[f"{p.client}: held [{p.start:.3f}, {p.end:.3f}]",
                                   *("  " + op.describe() for op in p.calls),
                                   f"{q.client}: held [{q.start:.3f}, {q.end:.3f}]",
                                   *("  " + op.describe() for op in q.calls)],
                            t=overlap[0]))
                    else:
                        same_node_explained += 1
                else:
                    cross += 1
                    cause = _cause(history.faults, p, q, overlap)
                    causes[cause] = causes.get(cause, 0) + 1
    if cross:
        notes.append(f"{cross} overlaps of holders on different nodes (expected with eventual "
                     "consistency): " + ", ".join(f"{n} {c}" for c, n in sorted(causes.items())))
    if same_node_explained:
        notes.append(f"{same_node_explained} overlaps on one node explained by a version replicated "
                     "from another node between the two holds (allowed)")
    summary = (f"{len(all_holds)} holds on {len(by_key)} lease keys; {len(violations)} same-node "
               f"overlaps unexplained; {cross} cross-node overlaps (expected)")
    return CheckResult(NAME, verdict(violations), summary, violations, notes,
                       stats={"holds": len(all_holds), "cross_node_overlaps": cross,
                              "same_node_explained": same_node_explained, "causes": causes})


def _explain_same_node(history: History, p: Hold, q: Hold, writes: list[Call]) -> str | None:
    """Why P and Q could both hold through one node, or None if nothing explains it."""
    node = p.node
    acquire = q.calls[0]
    if any(f.kind == "jump" and node in f.nodes and f.detail.get("offset_ms", 0) > 0
           and f.begin <= (acquire.comp or 0) and (f.end is None or f.end >= p.start)
           for f in history.faults):
        return "the node's clock jumped forward while P held the lease (it expired early there)"
    if history.has_dump(node):
        applied = sorted(history.dumps[node].get(p.key, []), key=lambda v: v["modify_index"])
        position = {v["version"]: i for i, v in enumerate(applied)}
        q_at = position.get(acquire.version or "")
        p_at = [position[v] for v in p.versions() if v in position and
                (q_at is None or position[v] < q_at)]
        if q_at is None or not p_at:
            return None  # the versions are not there: the no-loss checker reports that
        between = applied[max(p_at) + 1:q_at]
        foreign = [v for v in between if v["origin"] != node]
        return f"{len(foreign)} versions from other nodes applied in between" if foreign else None
    others = [op for op in writes if op.node != node and op.inv <= (acquire.comp or 0)]
    return "writes through other nodes may have replicated in between" if others else None


def _cause(faults: list[Fault], p: Hold, q: Hold, overlap: tuple[float, float]) -> str:
    """The most likely reason, by priority: partition, pause or crash, skewed clock, plain delay."""
    start, end = overlap
    found = []
    for f in faults:
        f_end = f.end if f.end is not None else float("inf")
        if f.begin > end + 5 or f_end < start - 5:  # a fault shortly before still delays replication
            continue
        if f.kind in ("partition", "oneway"):
            sides = f.detail.get("sides", [])
            if any(p.node in side and q.node not in side for side in sides):
                found.append((0, "during a partition between their nodes"))
        elif f.kind in ("pause", "kill") and (p.node in f.nodes or q.node in f.nodes):
            found.append((1, f"with a {f.kind}ed node" if f.kind == "kill" else "with a paused node"))
        elif f.kind in ("skew", "jump") and (p.node in f.nodes or q.node in f.nodes):
            found.append((2, "with a clock-skewed node" if f.kind == "skew" else "with a clock that jumped"))
    return min(found)[1] if found else "by concurrent acquires before replication"
