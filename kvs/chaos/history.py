"""The operation history: one JSON object per line, appended while the run goes on.

    {"type": "meta", "run_id": ..., "nodes": {...}, "options": {...}, "t0": ...}
    {"type": "invoke", "id": 7, "t": 1712.51, "client": "c3", "node": "n1", "workload": "register",
     "f": "write", "key": "chaos-1a2b/register/0@0", "value": "c3:7", "cond": {"if_version": ...}}
    {"type": "ok", "id": 7, "t": 1712.53, "status": 200, "result": {"version": ..., "modify_index": 41}}
    {"type": "fail", "id": 8, "t": ..., "status": 409, "error": "cas_conflict", "current": {...}}
    {"type": "unknown", "id": 9, "t": ..., "error": "timeout after 2.0s"}
    {"type": "fail", "id": 10, ..., "status": 404, "error": "not_found", "seq": 4}   quorum: the key's seq
    {"type": "fault", "fault": 3, "kind": "partition", "phase": "begin", "nodes": [...], "t": ...}
    {"type": "fault", "fault": 3, "kind": "partition", "phase": "in_force", "t": ...}  rules in place
    {"type": "fault", "fault": 3, "kind": "partition", "phase": "lifting", "t": ...}   rules going
    {"type": "fault", "fault": 4, "kind": "voters", "phase": "refused", "status": 503, "t": ...}
                          (400, 409: nothing changed; 503, none: the removal may complete later)
    {"type": "phase", "phase": "healed", "t": ...}
    {"type": "converge", "t": ..., "roots": {"n1": "ab12..."}, "equal": true}
    {"type": "dump", "node": "n1", "key": ..., "versions": [...]}     one per key and node
    {"type": "dump_done", "node": "n1", "keys": 312, "merkle_root": ...}

Times are wall-clock seconds (time.time()) of the process that ran the clients, so
they compare with the expiry times the nodes stamp (ms since the epoch, same host).

Outcomes: `ok` (2xx), `fail` (the node answered and changed nothing: 4xx, or the
connection was refused, so the request never reached it) and `unknown` (timeout,
dropped connection, 5xx: it may or may not have taken effect, now or later). An
invoke without a completion (the runner died) loads as unknown.

Each invoke and its completion load as one `Call` (a client call; the engine's write
operation is `kvs.engine.Op`, a different thing). The record format above does not
depend on that name, so histories saved by any earlier version keep loading.
"""

from __future__ import annotations

import contextlib
import gzip
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

VOTER_CHANGE_UNCHANGED = (400, 409)  # a voter change refused before anything was written

HISTORY_FILE = "history.jsonl"
# Fault phases whose times the checkers read from Fault.detail.
DETAIL_PHASES = ("in_force", "lifting", "rejoining", "leaving")
OUTCOMES = ("ok", "fail", "unknown")


@dataclass
class Call:
    """One client call recorded in the history: its invoke and its completion (comp is None
    when unknown). Not the engine's write operation (kvs's own `Op`)."""

    id: int
    client: str
    node: str
    workload: str
    f: str  # read | write | delete
    key: str
    inv: float
    value: Any = None
    cond: dict[str, Any] | None = None
    ttl: float | None = None
    tag: str | None = None  # incr | acquire | renew | release | final
    comp: float | None = None  # completion time; None when the outcome is unknown
    end: float | None = None  # when the client stopped waiting (any outcome), for timelines
    outcome: str = "unknown"
    status: int | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    current: dict[str, Any] | None = None
    consistency: str | None = None  # quorum | local when the call named one (local by default)
    fail_seq: int | None = None  # a failed quorum call: the key's seq the node answered with

    @property
    def quorum(self) -> bool:
        return self.consistency == "quorum"

    @property
    def answer_seq(self) -> int | None:
        """The key's cluster-wide seq a quorum answer carried (after an ok write: the new one)."""
        if self.outcome == "ok" and self.result:
            return self.result.get("seq")
        return self.fail_seq if self.outcome == "fail" else None

    @property
    def is_write(self) -> bool:
        return self.f in ("write", "delete")

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    @property
    def unknown(self) -> bool:
        return self.outcome == "unknown"

    @property
    def version(self) -> str | None:
        """Version id this call wrote (ok writes) or read (ok reads)."""
        if self.outcome != "ok" or not self.result:
            return None
        return self.result.get("version")

    def describe(self) -> str:
        """One line for reports: `#17 c3@n1 write reg/0 if_version=1a2b.. -> ok v=3c4d.. [12.301, 12.340]`."""
        parts = [f"#{self.id}", f"{self.client}@{self.node}", self.tag or self.f, self.key]
        if self.cond:
            parts.append(" ".join(f"{k}={_short(v)}" for k, v in sorted(self.cond.items())))
        if self.f == "write":
            parts.append(f"value={_short(self.value)}")
        if self.outcome == "ok":
            res = self.result or {}
            if self.f == "read":
                parts.append(f"-> ok {_short(res.get('version'))} value={_short(res.get('value'))} "
                             f"idx={res.get('modify_index')}")
            else:
                parts.append(f"-> ok {_short(res.get('version'))} idx={res.get('modify_index')}")
            if res.get("seq") is not None:
                parts.append(f"seq={res['seq']}")
        elif self.outcome == "fail":
            cur = self.current or {}
            extra = f" current={_short(cur.get('version'))} idx={cur.get('modify_index')}" if cur else ""
            seq = f" seq={self.fail_seq}" if self.fail_seq is not None else ""
            parts.append(f"-> fail {self.error}{extra}{seq}")
        else:
            parts.append(f"-> unknown ({self.error})")
        comp = "?" if self.comp is None else f"{self.comp:.3f}"
        parts.append(f"[{self.inv:.3f}, {comp}]")
        return " ".join(parts)


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    if len(text) == 36 and text.count("-") == 4:  # a UUID: its first group is enough to tell apart
        return text[:8]
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass
class Fault:
    id: int
    kind: str  # kill | pause | partition | oneway | jump | voters | join | skew
    nodes: list[str]
    begin: float
    end: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        if self.kind in ("partition", "oneway") and self.detail.get("sides"):
            joint = " -/-> " if self.kind == "oneway" else " | "
            return f"{self.kind}(" + joint.join(",".join(side) for side in self.detail["sides"]) + ")"
        if self.kind in ("skew", "jump"):
            return f"skew({','.join(self.nodes)} {self.detail.get('offset_ms', 0):+d} ms)"
        return f"{self.kind}({','.join(self.nodes)})"


@dataclass
class History:
    meta: dict[str, Any]
    calls: list[Call]
    faults: list[Fault]
    phases: dict[str, float]
    converge: list[dict[str, Any]]
    dumps: dict[str, dict[str, list[dict[str, Any]]]]  # node -> key -> revision set (dump order)
    dump_info: dict[str, dict[str, Any]]  # node -> {"keys", "merkle_root"}

    @property
    def nodes(self) -> list[str]:
        return list(self.meta.get("nodes", {})) or sorted({call.node for call in self.calls})

    def calls_by_key(self) -> dict[str, list[Call]]:
        out: dict[str, list[Call]] = {}
        for call in self.calls:
            out.setdefault(call.key, []).append(call)
        return out

    def quorum_keys(self) -> set[str]:
        """Keys written or read with consistency=quorum: the quorum checker's, not the per-node ones'."""
        return {call.key for call in self.calls if call.quorum}

    def has_dump(self, node: str) -> bool:
        return node in self.dump_info


class HistoryWriter:
    """Appends records; flush() is cheap enough to call every few hundred ms."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[bytes] = open(self.path, "ab")  # noqa: SIM115 - closed by close()
        self._next = 0
        self.counts = {"invoke": 0, "ok": 0, "fail": 0, "unknown": 0}

    def next_id(self) -> int:
        self._next += 1
        return self._next

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(orjson.dumps(record) + b"\n")

    def invoke(self, op_id: int, **fields: Any) -> float:
        t = time.time()
        self.write({"type": "invoke", "id": op_id, "t": t, **fields})
        self.counts["invoke"] += 1
        return t

    def complete(self, op_id: int, outcome: str, **fields: Any) -> float:
        assert outcome in OUTCOMES
        t = time.time()
        self.write({"type": outcome, "id": op_id, "t": t, **fields})
        self.counts[outcome] += 1
        return t

    def event(self, record_type: str, **fields: Any) -> None:
        self.write({"type": record_type, "t": time.time(), **fields})

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._file.flush()
            self._file.close()


def history_path(path: Path | str) -> Path:
    """Accept a run directory or the history file itself."""
    path = Path(path)
    if path.is_dir():
        for name in (HISTORY_FILE, HISTORY_FILE + ".gz"):
            if (path / name).exists():
                return path / name
        raise FileNotFoundError(f"{path} holds no {HISTORY_FILE}: is it a `kvs chaos` output dir?")
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    return path


def _records(path: Path) -> Iterator[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield orjson.loads(line)
            except orjson.JSONDecodeError:
                # A run killed mid-write leaves a torn last line; anything else is corruption.
                rest = fh.read()
                if rest.strip():
                    raise ValueError(f"{path}:{number}: not JSON") from None
                return


def load_history(path: Path | str) -> History:
    path = history_path(path)
    meta: dict[str, Any] = {}
    calls: dict[int, Call] = {}
    faults: dict[int, Fault] = {}
    phases: dict[str, float] = {}
    converge: list[dict[str, Any]] = []
    dumps: dict[str, dict[str, list[dict[str, Any]]]] = {}
    dump_info: dict[str, dict[str, Any]] = {}
    for rec in _records(path):
        kind = rec.get("type")
        if kind == "invoke":
            calls[rec["id"]] = Call(
                id=rec["id"], client=rec["client"], node=rec["node"], workload=rec["workload"],
                f=rec["f"], key=rec["key"], inv=rec["t"], value=rec.get("value"),
                cond=rec.get("cond"), ttl=rec.get("ttl"), tag=rec.get("tag"),
                consistency=rec.get("consistency"))
        elif kind in OUTCOMES:
            call = calls.get(rec["id"])
            if call is None:
                raise ValueError(f"{path}: completion of call {rec['id']} that was never invoked")
            call.outcome = kind
            call.comp = rec["t"] if kind != "unknown" else None
            call.end = rec["t"]
            call.status = rec.get("status")
            call.result = rec.get("result")
            call.error = rec.get("error")
            call.current = rec.get("current")
            call.fail_seq = rec.get("seq")
        elif kind == "fault":
            if rec["phase"] == "begin":
                faults[rec["fault"]] = Fault(rec["fault"], rec["kind"], list(rec.get("nodes", [])),
                                             rec["t"], detail=rec.get("detail") or {})
            elif rec["fault"] in faults and rec["phase"] in DETAIL_PHASES:
                faults[rec["fault"]].detail[rec["phase"]] = rec["t"]
            elif rec["fault"] in faults and rec["phase"] == "refused":
                faults[rec["fault"]].detail["refused"] = rec.get("status")
            elif rec["fault"] in faults:
                faults[rec["fault"]].end = rec["t"]
        elif kind == "phase":
            phases[rec["phase"]] = rec["t"]
        elif kind == "converge":
            converge.append(rec)
        elif kind == "dump":
            dumps.setdefault(rec["node"], {})[rec["key"]] = rec["versions"]
        elif kind == "dump_done":
            dump_info[rec["node"]] = rec
            dumps.setdefault(rec["node"], {})
        elif kind == "meta":
            meta = rec
    return History(meta, sorted(calls.values(), key=lambda c: c.id), sorted(faults.values(),
                   key=lambda f: f.id), phases, converge, dumps, dump_info)
