"""What the history and the dumps tell about each version id, and the conflict order.

A version is known piecewise: a write's answer gives its id, timestamp and this node's
modify index; a read or a 409's `current` gives everything but (for a 409) the value;
a dump gives everything, with each node's own modify index. The table merges all of it.
An operation whose outcome is unknown gets a stand-in id `?<op id>` so the checkers can
reason about "the version this op would have written" before (or without) finding it.

The conflict order is re-implemented here from docs/api.md#conflict-order, independently of
kvs.model: greater (timestamp, logical) wins, then the smaller origin_joined_at, then
the greater version UUID. With partial knowledge `compare` answers 0 ("cannot tell"),
and the checkers then allow both outcomes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kvs.chaos.history import Call, History


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


def synthetic_id(op: Call) -> str:
    return f"?{op.id}"


@dataclass
class VInfo:
    id: str
    value: Any = MISSING
    deleted: bool | None = None
    ts: int | None = None
    logical: int | None = None
    joined: int | None = None
    origin: str | None = None
    expires_at: Any = MISSING
    parent: Any = MISSING
    index: dict[str, int] = field(default_factory=dict)  # node -> modify_index there
    producer: int | None = None  # id of the op that wrote it, when known

    def order_key(self) -> tuple[int, int, int, str] | None:
        if None in (self.ts, self.logical, self.joined) or self.id.startswith("?"):
            return None
        return (self.ts, self.logical, -self.joined, self.id)  # type: ignore[operator]


class VersionTable:
    def __init__(self) -> None:
        self.info: dict[str, VInfo] = {}
        self.conflicts: list[str] = []  # the same version described differently in two places
        self._by_index: dict[tuple[str, int], str] | None = None

    def get(self, vid: str) -> VInfo:
        info = self.info.get(vid)
        if info is None:
            info = self.info[vid] = VInfo(vid)
        return info

    def learn_version(self, v: dict[str, Any], node: str | None, *, with_value: bool = True) -> VInfo:
        """Fold in a version object as reads, 409s and dumps show it."""
        info = self.get(v["version"])
        for attr, name in (("ts", "timestamp"), ("logical", "logical"), ("joined", "origin_joined_at"),
                           ("origin", "origin"), ("deleted", "deleted")):
            if name in v:
                self._set(info, attr, v[name])
        for attr in ("expires_at", "parent"):
            if attr in v:
                self._set(info, attr, v[attr], missing=MISSING)
        if with_value and "value" in v:
            self._set(info, "value", v["value"], missing=MISSING)
        if node is not None and v.get("modify_index") is not None:
            self._set_index(info, node, v["modify_index"])
        return info

    def _set(self, info: VInfo, attr: str, value: Any, missing: Any = None) -> None:
        old = getattr(info, attr)
        if old is missing or old is None:
            setattr(info, attr, value)
        elif old != value:
            self.conflicts.append(f"version {info.id}: {attr} seen as {old!r} and as {value!r}")

    def _set_index(self, info: VInfo, node: str, index: int) -> None:
        if index == 0:
            return  # a quorum answer from a node that does not hold the version yet: no index
        self._by_index = None
        old = info.index.get(node)
        if old is None:
            info.index[node] = index
        elif old != index:
            self.conflicts.append(f"version {info.id}: modify_index on {node} seen as {old} and {index}")

    def learn_call(self, op: Call) -> None:
        if op.f == "read":
            if op.ok and op.result:
                self.learn_version(op.result, op.node)
            return
        if op.outcome == "fail" and op.current:
            self.learn_version(op.current, op.node, with_value=False)
        if op.ok and op.result and op.result.get("version"):
            info = self.get(op.result["version"])
            info.producer = op.id
            self._set(info, "origin", op.node)
            self._set(info, "deleted", op.f == "delete")
            if op.f == "write":
                self._set(info, "value", op.value, missing=MISSING)
                if "timestamp" in op.result:
                    self._set(info, "ts", op.result["timestamp"])
            else:
                self._set(info, "value", None, missing=MISSING)
            if op.result.get("modify_index") is not None:
                self._set_index(info, op.node, op.result["modify_index"])
        elif op.unknown:
            stand_in = self.get(synthetic_id(op))
            stand_in.producer = op.id
            stand_in.origin = op.node
            stand_in.deleted = op.f == "delete"
            stand_in.value = op.value if op.f == "write" else None

    def deleted(self, vid: str) -> bool:
        return bool(self.get(vid).deleted)

    def value(self, vid: str) -> Any:
        return self.get(vid).value

    def index(self, vid: str, node: str) -> int | None:
        return self.get(vid).index.get(node)

    def at_index(self, node: str, index: int) -> str | None:
        """The version that has modify_index `index` on `node` (indexes are never reused)."""
        if self._by_index is None:
            self._by_index = {}
            for vid, info in self.info.items():
                for n, i in info.index.items():
                    self._by_index[(n, i)] = vid
        return self._by_index.get((node, index))

    def compare(self, a: str, b: str) -> int:
        """1 if a wins over b, -1 if b wins, 0 if the table cannot tell (or a == b)."""
        if a == b:
            return 0
        ia, ib = self.get(a), self.get(b)
        ka, kb = ia.order_key(), ib.order_key()
        if ka is not None and kb is not None:
            return 1 if ka > kb else -1
        if ia.ts is not None and ib.ts is not None and ia.ts != ib.ts and not (
                a.startswith("?") or b.startswith("?")):
            return 1 if ia.ts > ib.ts else -1
        return 0


def build_table(history: History) -> VersionTable:
    table = VersionTable()
    for op in history.calls:
        table.learn_call(op)
    for node, keys in history.dumps.items():
        for versions in keys.values():
            for v in versions:
                table.learn_version(v, node)
    return table


def order_key(v: dict[str, Any]) -> tuple[int, int, int, str]:
    """Conflict order of a full version object (docs/api.md#conflict-order): greater wins."""
    return (v["timestamp"], v["logical"], -v["origin_joined_at"], v["version"])


REPLICATED_FIELDS = ("key", "value", "version", "timestamp", "logical", "origin", "origin_joined_at",
                     "flags", "expires_at", "deleted", "parent", "superseded")


def replicated(v: dict[str, Any]) -> tuple[Any, ...]:
    """A version without its node-local fields (modify_index, create_index): what must agree."""
    return tuple(_freeze(v.get(f)) for f in REPLICATED_FIELDS)


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value
