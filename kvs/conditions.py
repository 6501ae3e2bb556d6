"""CAS conditions and their check against a key's current version. Pure.

(Parsing them from a body or a query is the HTTP layer's: kvs/http/toolkit.py.)

| condition        | holds when                                         |
|------------------|----------------------------------------------------|
| cas: 0           | the key is absent (never written, deleted, expired) |
| cas: N (N > 0)   | the current modify_index is N                       |
| if_version: u    | the current version UUID is u                       |
| if_timestamp: t  | the current timestamp is t                          |
| if_value: j      | the current value equals j (JSON equality)          |

Any condition but `cas: 0` on an absent key is NotFound: the caller asked about
a version that does not exist, which is different from "someone changed it".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import orjson

from kvs.errors import CASConflict, NotFound
from kvs.model import Version

MISSING: Any = object()  # if_value absent (None would be the JSON null)


@dataclass(frozen=True, slots=True)
class Conditions:
    cas: int | None = None
    if_version: str | None = None
    if_timestamp: int | None = None
    if_value: Any = MISSING

    FIELDS: ClassVar[frozenset[str]] = frozenset({"cas", "if_version", "if_timestamp", "if_value"})

    def __bool__(self) -> bool:
        return (
            self.cas is not None or self.if_version is not None
            or self.if_timestamp is not None or self.if_value is not MISSING
        )

    def presumes_existence(self) -> bool:
        """True for any condition but cas=0: each one compares with an existing version."""
        return (
            self.cas not in (None, 0) or self.if_version is not None
            or self.if_timestamp is not None or self.if_value is not MISSING
        )


NONE = Conditions()


def json_equal(a: Any, b: Any) -> bool:
    """JSON equality: numbers compare by value, but true is not 1 and "1" is not 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def failures(cond: Conditions, current: Version | None) -> list[str]:
    """Human descriptions of each condition that does not hold (empty: all hold).

    Raises NotFound when the key is absent and a condition presumes it exists.
    """
    if current is None:
        if cond.presumes_existence():
            raise NotFound("key not found (a condition other than cas=0 needs an existing key)")
        return []
    out = []
    if cond.cas == 0:
        out.append(f"cas=0 expects the key to be absent, but it exists at index {current.modify_index}")
    elif cond.cas is not None and cond.cas != current.modify_index:
        out.append(f"cas expected modify_index {cond.cas}, actual {current.modify_index}")
    if cond.if_version is not None and cond.if_version != current.version:
        out.append(f"if_version expected {cond.if_version}, actual {current.version}")
    if cond.if_timestamp is not None and cond.if_timestamp != current.timestamp:
        out.append(f"if_timestamp expected {cond.if_timestamp}, actual {current.timestamp}")
    if cond.if_value is not MISSING and not json_equal(cond.if_value, current.value):
        out.append(
            f"if_value expected {_short(cond.if_value)}, actual {_short(current.value)}"
        )
    return out


def check(cond: Conditions, current: Version | None) -> None:
    """Raise CASConflict (with `current`) or NotFound unless every condition holds."""
    failed = failures(cond, current)
    if failed:
        raise CASConflict("; ".join(failed), current=current.meta() if current else None)


def _short(value: Any) -> str:
    text = orjson.dumps(value).decode()
    return text if len(text) <= 80 else text[:77] + "..."
