"""What every checker returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PASS, FAIL, SKIPPED, INCONCLUSIVE = "pass", "fail", "skipped", "inconclusive"


@dataclass
class Violation:
    checker: str
    message: str
    node: str | None = None
    key: str | None = None
    ops: list[int] = field(default_factory=list)  # op ids involved (the minimal sub-history)
    lines: list[str] = field(default_factory=list)  # human-readable detail, one per line
    t: float | None = None  # when it happened, for the timeline

    def to_json(self) -> dict[str, Any]:
        return {"checker": self.checker, "message": self.message, "node": self.node, "key": self.key,
                "ops": self.ops, "lines": self.lines, "t": self.t}

    def render(self) -> str:
        where = " ".join(x for x in (f"node={self.node}" if self.node else "",
                                     f"key={self.key}" if self.key else "") if x)
        head = f"[{self.checker}] {self.message}" + (f" ({where})" if where else "")
        return "\n".join([head, *("    " + line for line in self.lines)])


@dataclass
class CheckResult:
    name: str
    status: str
    summary: str
    violations: list[Violation] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # expected anomalies, explained
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.status in (PASS, SKIPPED)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "summary": self.summary,
                "violations": [v.to_json() for v in self.violations], "notes": self.notes,
                "stats": self.stats}


def verdict(violations: list[Violation], inconclusive: bool = False) -> str:
    if violations:
        return FAIL
    return INCONCLUSIVE if inconclusive else PASS
