"""PUT /v1/txn: Consul's KV transactions, all-or-nothing through Engine.txn.

    [{"KV": {"Verb": "cas", "Key": "a", "Value": "<base64>", "Index": 7}},
     {"KV": {"Verb": "get-tree", "Key": "cfg/"}}]
    -> 200 {"Results": [{"KV": {...}}, ...], "Errors": null}
    -> 409 {"Results": null, "Errors": [{"OpIndex": 0, "What": "failed to set key \\"a\\", ..."}]}

Consul's verbs are planned into the engine's ops (set, delete, get, with a `cas`
condition where the verb compares a modify index):

    set           set                          get         get (the key must exist)
    cas           set  if cas=Index            get-tree    get, for each key under the prefix
    delete        delete                       check-index get  if cas=Index (must exist)
    delete-cas    delete if cas=Index (absent: nothing to do, as in Consul)
    delete-tree   delete, for each key under the prefix (the registry's keys skipped)
    check-not-exists  (the key must not exist)
    lock / unlock     set, and the lock record's guarded write (kvs/http/consul/locks.py)
    check-session     (the key must exist, its lock held by Session)

What depends on which keys exist (a get's key, the keys under a prefix) is read while
planning, with the transaction's own earlier writes laid over the store; the engine
checks the modify-index conditions itself, against its overlay, so a check-index after
a set in the same transaction compares with that set's index. Planning is
synchronous and the engine's mutation begins, under its lock, before the handler
yields to the event loop, and every write runs on the event loop: no other write can
come between the plan and the mutation, so the plan's reads are the mutation's.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from kvs import acl
from kvs.conditions import NONE, Conditions
from kvs.config import Config
from kvs.engine import Engine, Op
from kvs.errors import BadRequest, CASConflict, NotFound, TooLarge
from kvs.http.consul.common import entry, quoted, to_native
from kvs.http.consul.locks import LOCK_PREFIX, Locks, LockState, guarded
from kvs.http.kv import NOT_DELETED_BY_PREFIX, hidden, readable, writable
from kvs.http.toolkit import json_response, require, require_prefix
from kvs.keys import validate_key
from kvs.model import MAX_U64, Version

MAX_OPS = 64  # Consul's limit
SESSION_VERBS = frozenset({"lock", "unlock", "check-session"})
PREFIX_VERBS = frozenset({"get-tree", "delete-tree"})
WRITE_VERBS = frozenset({"set", "cas", "delete", "delete-tree", "delete-cas", "lock", "unlock"})


@dataclass(frozen=True, slots=True)
class KVOp:
    """One parsed Consul KV operation."""

    verb: str
    key: str
    value: bytes = b""
    flags: int = 0
    index: int = 0
    session: str = ""


@dataclass(frozen=True, slots=True)
class Step:
    """One engine op, the Consul op it came from, and what its result shows (None: nothing)."""

    op: Op
    at: int
    verb: str
    shows: str | None = None  # "entry" (with the value) | "meta" (value blanked)


class ConsulTxn:
    def __init__(self, config: Config, engine: Engine, locks: Locks) -> None:
        self.config = config
        self.engine = engine
        self.locks = locks

    def routes(self) -> list[web.RouteDef]:
        return [web.put("/v1/txn", self.txn)]

    async def txn(self, request: web.Request) -> web.Response:
        ops = self.parse(await request.read())
        for at, op in enumerate(ops):  # every op, before anything is planned or written
            authorize(request, at, op)
        steps, errors = Plan(self.engine, self.locks).run(ops)
        if errors:
            return conflict(errors)
        self._local_writes(steps)
        # The lock records' guards are the server's own; a client's conditions need cas_enabled.
        internal = not any(s.op.cond for s in steps if not s.op.key.startswith(LOCK_PREFIX))
        # No await between the plan and this call: see the module docstring.
        try:
            results = await self.engine.txn([step.op for step in steps], internal=internal)
        except CASConflict as exc:
            return conflict([failure(steps[f["index"]], f.get("current")) for f in exc.extra["failed"]])
        return json_response({"Results": [
            {"KV": entry(result.to_json() if isinstance(result, Version) else result,
                         self.locks.view(step.op.key), with_value=step.shows == "entry")}
            for step, result in zip(steps, results, strict=True) if step.shows and result
        ], "Errors": None})

    def _local_writes(self, steps: list[Step]) -> None:
        """A transaction is one node's: it cannot write a key that takes only quorum
        writes (kvs/http/consul/writes.py), one key at a time."""
        for step in steps:
            key = step.op.key
            if step.op.op in ("set", "delete") and self.locks.writes.quorum_for(key):
                raise BadRequest(
                    f"operation {step.at}: a transaction is node-local, and key {quoted(key)} "
                    "takes only quorum writes (default_consistency: quorum, or written with "
                    "consistency=quorum): use PUT or DELETE /v1/kv/{key}; nothing was written")

    # -- parsing ----------------------------------------------------------------------------

    def parse(self, raw: bytes) -> list[KVOp]:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"Failed to parse body: {exc}") from None
        if not isinstance(body, list):
            raise BadRequest("Failed to parse body: expected a JSON array of operations")
        limit = min(MAX_OPS, self.config.max_txn_ops)
        if len(body) > limit:
            raise TooLarge(f"Transaction contains too many operations ({len(body)} > {limit})")
        return [self._op(at, item) for at, item in enumerate(body)]

    def _op(self, at: int, item: Any) -> KVOp:
        fields = _fields(at, item)
        verb = fields.get("verb")
        verb = verb if isinstance(verb, str) else repr(verb)  # a list is not even hashable
        if verb not in VERBS:
            raise BadRequest(f"operation {at}: unknown KV verb {verb!r}; supported: "
                             f"{', '.join(sorted(VERBS))}")
        key = fields.get("key", "")
        if not isinstance(key, str):
            raise BadRequest(f"operation {at}: Key must be a string")
        try:
            validate_key(key, prefix=verb in PREFIX_VERBS)
            if verb in WRITE_VERBS:
                writable(key)
            readable(key)
        except BadRequest as exc:
            raise BadRequest(f"operation {at}: {exc.message}") from None
        value = _value(at, fields.get("value"))
        if len(value) > self.config.max_value_bytes:
            raise TooLarge(f"Value for key {quoted(key)} is too large ({len(value)} > "
                           f"{self.config.max_value_bytes} bytes)")
        session = fields.get("session") or ""
        if not isinstance(session, str) or (verb in SESSION_VERBS and not session):
            raise BadRequest(f"operation {at}: verb {verb!r} needs a Session (a session ID string)"
                             if verb in SESSION_VERBS else f"operation {at}: Session must be a string")
        return KVOp(verb, key, value, _uint(at, fields, "flags"), _uint(at, fields, "index"), session)


def authorize(request: web.Request, at: int, op: KVOp) -> None:
    """What the token needs for one op: the tree verbs on every key under the prefix,
    the other writes write on the key, the reads (check-not-exists too: it tells whether
    the key exists) read."""
    action = acl.WRITE if op.verb in WRITE_VERBS else acl.READ
    try:
        if op.verb in PREFIX_VERBS:
            require_prefix(request, action, op.key)
        else:
            require(request, action, op.key)
    except BadRequest as exc:
        raise BadRequest(f"operation {at}: {exc.message}") from None


def _fields(at: int, item: Any) -> dict[str, Any]:
    """The KV member of one operation, its field names folded to lower case (Go's JSON
    decoding matches them case-insensitively)."""
    if not isinstance(item, dict) or len(item) != 1:
        raise BadRequest(f"Failed to parse body: operation {at} must be an object with one "
                         "member, like {\"KV\": {...}}")
    kind, kv = next(iter(item.items()))
    if kind.lower() != "kv":
        raise BadRequest(f"operation {at}: only KV operations are supported here, got {kind!r}")
    if not isinstance(kv, dict):
        raise BadRequest(f"Failed to parse body: operation {at}: KV must be an object")
    return {name.lower(): value for name, value in kv.items()}


def _value(at: int, raw: Any) -> bytes:
    if raw is None:
        return b""
    if not isinstance(raw, str):
        raise BadRequest(f"Failed to parse body: operation {at}: Value must be base64 text")
    try:
        return base64.b64decode(raw, validate=True)
    except binascii.Error as exc:
        raise BadRequest(f"Failed to parse body: operation {at}: failed to decode value: {exc}") from None


def _uint(at: int, fields: dict[str, Any], name: str) -> int:
    raw = fields.get(name, 0)
    if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw <= MAX_U64:
        raise BadRequest(f"Failed to parse body: operation {at}: {name.capitalize()} must be an "
                         f"unsigned 64-bit integer, got {raw!r}")
    return raw


# -- planning ---------------------------------------------------------------------------------

class Plan:
    """Consul ops -> engine steps, against the store with the txn's own writes laid over it."""

    def __init__(self, engine: Engine, locks: Locks) -> None:
        self.engine = engine
        self.locks = locks
        self.locking: dict[str, LockState] = {}  # the locks this txn takes or lets go
        self.present: dict[str, bool] = {}  # keys this txn wrote: do they exist after it?
        self.steps: list[Step] = []
        self.errors: list[dict[str, Any]] = []

    def run(self, ops: list[KVOp]) -> tuple[list[Step], list[dict[str, Any]]]:
        for at, op in enumerate(ops):
            PLANNERS[op.verb](self, at, op)
        return self.steps, self.errors

    def exists(self, key: str) -> bool:
        if key in self.present:
            return self.present[key]
        try:
            self.engine.get(key)
        except NotFound:
            return False
        return True

    def under(self, prefix: str) -> list[str]:
        stored = {v.key for v in self.engine.live(prefix) if not hidden(v.key)}
        written = {k for k in self.present if k.startswith(prefix)}
        return sorted(k for k in stored | written if self.exists(k))

    def step(self, at: int, op: KVOp, kind: str, key: str, cond: Conditions = NONE,
             shows: str | None = None) -> None:
        value = to_native(op.value) if kind == "set" else None
        self.steps.append(Step(Op(kind, key, value, None, op.flags, cond), at, op.verb, shows))
        if kind != "get":
            self.present[key] = kind == "set"

    def fail(self, at: int, what: str) -> None:
        self.errors.append({"OpIndex": at, "What": what})

    def _set(self, at: int, op: KVOp) -> None:
        self.step(at, op, "set", op.key, shows="meta")

    def _cas(self, at: int, op: KVOp) -> None:
        self.step(at, op, "set", op.key, Conditions(cas=op.index), "meta")

    def _get(self, at: int, op: KVOp) -> None:
        if self.exists(op.key):
            self.step(at, op, "get", op.key, shows="entry")
        else:
            self.fail(at, f"key {quoted(op.key)} doesn't exist")

    def _get_tree(self, at: int, op: KVOp) -> None:
        for key in self.under(op.key):
            self.step(at, op, "get", key, shows="entry")

    def _check_index(self, at: int, op: KVOp) -> None:
        if self.exists(op.key):
            self.step(at, op, "get", op.key, Conditions(cas=op.index), "meta")
        else:
            self.fail(at, f"failed to check index, key {quoted(op.key)} doesn't exist")

    def _check_not_exists(self, at: int, op: KVOp) -> None:
        if self.exists(op.key):
            self.fail(at, f"key {quoted(op.key)} exists")

    def _delete(self, at: int, op: KVOp) -> None:
        if self.exists(op.key):
            self.step(at, op, "delete", op.key)

    def _delete_tree(self, at: int, op: KVOp) -> None:
        for key in self.under(op.key):
            if not key.startswith(NOT_DELETED_BY_PREFIX):
                self.step(at, op, "delete", key)

    def _delete_cas(self, at: int, op: KVOp) -> None:
        if self.exists(op.key):
            self.step(at, op, "delete", op.key, Conditions(cas=op.index))


    def _lock(self, at: int, op: KVOp) -> None:
        self._local_locks(at, op)
        session = self.locks.session(op.session)
        if session is None:
            self.fail(at, f"failed to lock key {quoted(op.key)}: invalid session {quoted(op.session)}")
            return
        record, state = self.locks.lock(op.key)
        after = state.acquired(session.value, self.engine.now_ms())
        if after is None:
            self.fail(at, f"failed to lock key {quoted(op.key)}, lock is already held")
        else:
            self._locked(at, op, record, after)

    def _unlock(self, at: int, op: KVOp) -> None:
        self._local_locks(at, op)
        record, state = self.locks.lock(op.key)
        after = state.released(op.session)
        if after is None:
            self.fail(at, f"failed to unlock key {quoted(op.key)}, lock isn't held, or is held "
                          "by another session")
        else:
            self._locked(at, op, record, after)

    def _local_locks(self, at: int, op: KVOp) -> None:
        """A transaction is one node's; with more than one voter locks change only by
        quorum CAS, one key at a time (Locks.change), which no transaction can join."""
        if self.locks.quorum_mode:
            raise BadRequest(f"operation {at}: verb {op.verb!r} in a transaction is node-local, and "
                             "this cluster has more than one voter: use PUT /v1/kv/{key}?acquire= "
                             "or ?release=; nothing was written")

    def _locked(self, at: int, op: KVOp, record: Version | None, after: LockState) -> None:
        """The key's write and its lock record's guarded write (locks.guarded), together."""
        self.step(at, op, "set", op.key, shows="meta")
        self.steps.append(Step(guarded(op.key, record, after), at, op.verb))
        self.locking[op.key] = after

    def _check_session(self, at: int, op: KVOp) -> None:
        if not self.exists(op.key):
            self.fail(at, f"failed to check session, key {quoted(op.key)} doesn't exist")
            return
        current = (self.locking.get(op.key) or self.locks.view(op.key)).session
        if current != op.session:
            self.fail(at, f"failed session check for key {quoted(op.key)}, current session "
                          f"{quoted(current or '')} != {quoted(op.session)}")


PLANNERS = {
    "set": Plan._set, "cas": Plan._cas, "get": Plan._get, "get-tree": Plan._get_tree,
    "check-index": Plan._check_index, "check-not-exists": Plan._check_not_exists,
    "delete": Plan._delete, "delete-tree": Plan._delete_tree, "delete-cas": Plan._delete_cas,
    "lock": Plan._lock, "unlock": Plan._unlock, "check-session": Plan._check_session,
}
VERBS = frozenset(PLANNERS)


def failure(step: Step, current: dict[str, Any] | None) -> dict[str, Any]:
    """An engine condition that failed, as Consul words it for the verb."""
    key = quoted(step.op.key)
    if step.verb == "check-index":
        what = (f"failed index check for key {key}, current modify index "
                f"{current['modify_index']} != {step.op.cond.cas}" if current
                else f"failed to check index, key {key} doesn't exist")
    elif step.verb == "delete-cas":
        what = f"failed to delete key {key}, index is stale"
    else:
        what = f"failed to set key {key}, index is stale"
    return {"OpIndex": step.at, "What": what}


def conflict(errors: list[dict[str, Any]]) -> web.Response:
    return json_response({"Results": None, "Errors": errors}, status=409)
