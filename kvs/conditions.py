"""CAS conditions: parsing, and the check against a key's current version. Pure.

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

import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from kvs.errors import BadRequest, CASConflict, NotFound
from kvs.model import Version

_MISSING = object()
MAX_U64 = 2**64 - 1
# orjson encodes at most 254 levels of arrays/objects, and kvs wraps a value a few levels
# deeper (stored revision set, history, listing, txn results, replication batches).
MAX_VALUE_DEPTH = 128
_HEADROOM = 254 - MAX_VALUE_DEPTH


@dataclass(frozen=True, slots=True)
class Conditions:
    cas: int | None = None
    if_version: str | None = None
    if_timestamp: int | None = None
    if_value: Any = _MISSING

    def __bool__(self) -> bool:
        return (
            self.cas is not None or self.if_version is not None
            or self.if_timestamp is not None or self.if_value is not _MISSING
        )

    def presumes_existence(self) -> bool:
        """True for any condition but cas=0: each one compares with an existing version."""
        return (
            self.cas not in (None, 0) or self.if_version is not None
            or self.if_timestamp is not None or self.if_value is not _MISSING
        )


NONE = Conditions()
FIELDS = frozenset({"cas", "if_version", "if_timestamp", "if_value"})


def uint(name: str, raw: Any, maximum: int = MAX_U64) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw <= maximum:
        raise BadRequest(f"{name} must be an integer from 0 to {maximum}, got {raw!r}")
    return raw


def check_depth(name: str, value: Any) -> Any:
    """Reject JSON nesting more than MAX_VALUE_DEPTH arrays/objects deep ([] is 1 level).

    The test is the property kvs needs: the value must still encode when wrapped
    _HEADROOM levels deeper. orjson does the walk (in C; a Python walk of a 1 MiB
    value costs ~100 ms of event loop).
    """
    wrapped = value
    for _ in range(_HEADROOM):
        wrapped = [wrapped]
    try:
        orjson.dumps(wrapped)
    except orjson.JSONEncodeError:
        raise BadRequest(f"{name} nests deeper than {MAX_VALUE_DEPTH} levels of arrays/objects") from None
    return value


def encoded_size(name: str, value: Any) -> int:
    """Bytes of the value's JSON encoding, after check_depth's test: one orjson pass for both."""
    if not isinstance(value, dict | list):
        return len(orjson.dumps(value))
    wrapped = value
    for _ in range(_HEADROOM):
        wrapped = [wrapped]
    try:
        return len(orjson.dumps(wrapped)) - 2 * _HEADROOM  # each wrapper adds "[" and "]"
    except orjson.JSONEncodeError:
        raise BadRequest(f"{name} nests deeper than {MAX_VALUE_DEPTH} levels of arrays/objects") from None


def _uuid(raw: Any) -> str:
    if not isinstance(raw, str):
        raise BadRequest(f"if_version must be a UUID string, got {raw!r}")
    try:
        uuid.UUID(raw)
    except ValueError:
        raise BadRequest(f"if_version {raw!r} is not a UUID") from None
    return raw


def from_body(body: dict[str, Any]) -> Conditions:
    """Conditions from a JSON body (PUT, txn op); absent fields impose nothing."""
    if FIELDS.isdisjoint(body):
        return NONE
    return Conditions(
        cas=uint("cas", body["cas"]) if "cas" in body else None,
        if_version=_uuid(body["if_version"]) if "if_version" in body else None,
        if_timestamp=uint("if_timestamp", body["if_timestamp"]) if "if_timestamp" in body else None,
        if_value=check_depth("if_value", body["if_value"]) if "if_value" in body else _MISSING,
    )


def _query_int(name: str, raw: str) -> int:
    if not raw.isascii() or not raw.isdigit():
        raise BadRequest(f"{name} must be a non-negative integer, got {raw!r}")
    return uint(name, int(raw))


def from_query(query: dict[str, str]) -> Conditions:
    """Conditions from DELETE query parameters; if_value is JSON text."""
    if_value: Any = _MISSING
    if "if_value" in query:
        try:
            if_value = orjson.loads(query["if_value"])
        except orjson.JSONDecodeError:
            raise BadRequest("if_value must be JSON (quote strings: if_value=\"text\")") from None
        check_depth("if_value", if_value)
    return Conditions(
        cas=_query_int("cas", query["cas"]) if "cas" in query else None,
        if_version=_uuid(query["if_version"]) if "if_version" in query else None,
        if_timestamp=_query_int("if_timestamp", query["if_timestamp"])
        if "if_timestamp" in query else None,
        if_value=if_value,
    )


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
    if cond.if_value is not _MISSING and not json_equal(cond.if_value, current.value):
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
