"""Python client for the kvs HTTP API: `AsyncClient` (aiohttp) and `Client` (blocking, stdlib).

    async with AsyncClient(["http://127.0.0.1:8080", "http://127.0.0.1:8081"]) as kv:
        w = await kv.put("config/db", {"pool": 10}, cas=0)       # create-only
        v = await kv.get("config/db")                            # VersionRecord(value={"pool": 10}, ...)
        await kv.put("config/db", {"pool": 20}, if_version=v.version)
        await kv.update("stats/hits", lambda n: (n or 0) + 1)    # read-modify-write, retried
        async for event in kv.watch("config/", prefix=True):     # blocking queries
            print(event.index, [i.key for i in event.items])

    with Client("http://127.0.0.1:8080") as kv:                  # the same methods, blocking
        kv.put("config/db", {"pool": 30})

    Client("https://10.0.0.5:8080", ca="ca.pem")                 # TLS: verify the node against a CA

How it is built
---------------
Every method is written once, in `_Commands`, as a *plan*: either one `Call` (HTTP method,
target, body, and the function that turns the node's answer into a typed result or a typed
exception), or a generator that yields Calls (and Sleeps, and items for iterators) and is sent
their results. The two clients differ only in how they carry out a Call: `AsyncClient` over one
aiohttp session, `Client` over a small pool of http.client keep-alive connections (the CLI and
scripts need no event loop and import nothing heavy). Request building, response decoding,
error mapping, update() retries, pagination and watch logic therefore exist exactly once; in
`AsyncClient` each method returns an awaitable (iterators are async iterators).

Errors
------
    KVSError                        kvs.errors; `except KVSError` catches every one below
    ├── BadRequest            400   malformed request, bad key, unknown field, ttl <= 0
    ├── NotFound              404   key or service absent, deleted or expired
    ├── CASConflict           409   a condition did not hold; .current: VersionMeta | None
    │                               (what is there now), .failed: list[TxnFailure] for a txn
    ├── QuorumKey             409   a local write to a key written with consistency=quorum
    ├── Unauthorized          401   ACLs are on and the request has no valid token (missing,
    │                               unknown, expired, malformed), or ACLs are off (/acl/)
    ├── Forbidden             403   the token's policies do not allow the request
    ├── Conflict              409   an ACL bootstrap done already, a policy name taken
    ├── TooLarge              413   value or body larger than the node accepts
    ├── CASDisabled           501   a condition sent to a node with cas_enabled: false;
    │                               nothing was written
    ├── QuorumUnavailable     503   no majority of the voters answered; nothing was written;
    │                               .answered, .voters, .needed
    ├── QuorumIndeterminate   503   a quorum write may or may not have been applied: read the
    │                               key with consistency="quorum" to learn which
    ├── ServerError           any other answer: 5xx, an unknown error code, a body that is
    │                               not what kvs sends; .status
    └── Unavailable                 no node could be reached (refused, reset, timed out), or
                                    the connection broke while reading an answer; .failures

The HTTP ones are subclasses of the kvs.errors classes of the same name, so code that
catches `kvs.errors.NotFound` also catches `kvs.client.NotFound`. An error a node answered
carries `.node` (its URL) and `.extra` (the answer's fields besides error and message).

Failover
--------
Given several node URLs the client sends each request to one node; when that node cannot be
reached (connection refused or reset before an answer, connect or read timeout) it moves on to
the next and sticks to the first one that answers. It never resends a request a node answered,
whatever the status. A write whose connection broke after it was sent may have been applied
on that node (and replicated) before failing over; conditional writes make that safe to reason
about (a repeat fails its condition instead of applying twice). Modify indexes are node-local:
a watch that fails over restarts its blocking query from the new node's index.
"""

from __future__ import annotations

import asyncio
import dataclasses
import http.client
import inspect
import json
import random
import ssl
import threading
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, TypeAlias, TypeVar

from kvs import errors
from kvs.errors import KVSError
from kvs.tls import client_context

if TYPE_CHECKING:
    import aiohttp

__all__ = [
    "CONSISTENCY", "AclPolicy", "AclToken", "AsyncClient", "BadRequest", "CASConflict",
    "CASDisabled", "CheckResult", "Client", "Conflict", "DeleteResult", "Forbidden", "Health",
    "KVSError", "MemberRecord", "NotFound", "Page", "PrefixDeleteResult", "QuorumIndeterminate",
    "QuorumKey", "QuorumUnavailable", "ServerError", "Service", "ServiceDeleteResult",
    "ServiceWriteResult", "Status", "TooLarge", "TxnFailure", "TxnOp", "Unauthorized",
    "Unavailable", "Updated", "VersionMeta", "VersionRecord", "WatchEvent",
    "WriteResult", "as_json",
]

DEFAULT_NODE = "http://127.0.0.1:8080"
DEFAULT_WAIT = 60.0       # seconds a blocking query may be held by the node
MAX_WAIT = 600.0          # the node's limit (docs/api.md#blocking-queries: 10 min)
EXPIRY_MARGIN = 0.02      # wake this long after a lease's expires_at (clock granularity)
MIN_EXPIRY_WAIT = 0.05    # ...but never poll faster than this when clocks disagree
CONSISTENCY = ("local", "quorum")  # what `consistency=` takes (None: the node's default_consistency)

T = TypeVar("T")
# In `Client` a method returns T; in `AsyncClient` the same method returns an awaitable of T.
Out: TypeAlias = T | Awaitable[T]
Stream: TypeAlias = Iterator[T] | AsyncIterator[T]


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()  # "not given", where None (JSON null) is a meaningful value


# -- exceptions ------------------------------------------------------------------------------

class BadRequest(errors.BadRequest):
    pass


class NotFound(errors.NotFound):
    @property
    def seq(self) -> int | None:
        """For a quorum read: the key's seq although it is absent (deleted or expired)."""
        return self.extra.get("seq")


class CASConflict(errors.CASConflict):
    """A condition did not hold. `.current` is the key's current version now (None if absent)."""

    @property
    def current(self) -> VersionMeta | None:
        raw = self.extra.get("current")
        return None if raw is None else _build(VersionMeta, raw)

    @property
    def failed(self) -> list[TxnFailure]:
        """For a transaction: which ops failed their conditions, and what is there now."""
        return [TxnFailure(index=f["index"], key=f["key"], message=f.get("message", ""),
                           current=None if f.get("current") is None
                           else _build(VersionMeta, f["current"]))
                for f in self.extra.get("failed", [])]


class QuorumKey(errors.QuorumKey):
    """A local write to a key that has quorum state: write it with consistency="quorum"."""


class QuorumUnavailable(errors.QuorumUnavailable):
    """Fewer than a majority of the voters answered the node; nothing was written."""

    @property
    def answered(self) -> int | None:
        return self.extra.get("answered")

    @property
    def voters(self) -> int | None:
        return self.extra.get("voters")

    @property
    def needed(self) -> int | None:
        return self.extra.get("needed")

    @property
    def contended(self) -> bool:
        """Every round met a higher ballot: the voters answered, but other writers of the
        key kept getting there first. Nothing was written; retrying later is safe."""
        return bool(self.extra.get("contended"))


class QuorumIndeterminate(errors.QuorumIndeterminate):
    """The write may or may not have been applied (now or later). Sending it again could
    apply it twice; read the key with consistency="quorum" and decide from what is there."""


class TooLarge(errors.TooLarge):
    pass


class Unauthorized(errors.Unauthorized):
    pass


class Forbidden(errors.Forbidden):
    pass


class Conflict(errors.Conflict):
    pass


class CASDisabled(errors.CASDisabled):
    def __init__(self, message: str, **extra: Any) -> None:
        KVSError.__init__(self, message, **extra)


class ServerError(KVSError):
    code = "server_error"

    def __init__(self, message: str, status: int = 500, **extra: Any) -> None:
        super().__init__(message, **extra)
        self.status = status


class Unavailable(KVSError):
    code = "unavailable"

    def __init__(self, message: str, failures: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.failures = list(failures)


_BY_CODE: dict[str, type[KVSError]] = {
    "bad_request": BadRequest, "not_found": NotFound, "cas_conflict": CASConflict,
    "too_large": TooLarge, "cas_disabled": CASDisabled, "quorum_key": QuorumKey,
    "quorum_unavailable": QuorumUnavailable, "quorum_indeterminate": QuorumIndeterminate,
    "unauthorized": Unauthorized, "acl_disabled": Unauthorized, "forbidden": Forbidden,
    "conflict": Conflict,
}


def _unavailable(failures: Sequence[str]) -> Unavailable:
    return Unavailable("no node answered: " + "; ".join(failures)
                       + ". Is the node running? Start one with `kvs serve`.", failures)


# -- typed results ---------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True, slots=True)
class VersionMeta:
    """A version's identity and metadata, without its value (what a conflict reports)."""

    key: str
    version: str
    timestamp: int
    logical: int
    origin: str
    origin_joined_at: int
    flags: int
    expires_at: int | None
    deleted: bool
    parent: str | None
    superseded: bool
    modify_index: int
    create_index: int
    seq: int | None = None    # the key's cluster-wide sequence number; quorum answers only


@dataclass(frozen=True, kw_only=True, slots=True)
class VersionRecord(VersionMeta):
    """A version of a key as a node reported it: a read-only record, value included.

    Not the node's own `kvs.model.Version` (the stored, replicated object with its digest
    and encoding caches): this is what a read answers, frozen, and it needs nothing beyond
    the standard library."""

    value: Any


@dataclass(frozen=True, kw_only=True, slots=True)
class WriteResult:
    """The new version's identity: chain the next CAS on it without re-reading."""

    key: str
    version: str
    timestamp: int
    modify_index: int
    create_index: int
    expires_at: int | None
    seq: int | None = None    # quorum writes: the key's new cluster-wide sequence number


@dataclass(frozen=True, kw_only=True, slots=True)
class DeleteResult:
    key: str
    version: str | None       # the tombstone; None for a txn delete of an absent key
    modify_index: int | None
    seq: int | None = None    # quorum deletes: the key's new cluster-wide sequence number


@dataclass(frozen=True, kw_only=True, slots=True)
class PrefixDeleteResult:
    prefix: str
    deleted: list[str]
    modify_index: int


@dataclass(frozen=True, kw_only=True, slots=True)
class CheckResult:
    key: str
    ok: bool
    version: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class TxnFailure:
    index: int
    key: str
    message: str
    current: VersionMeta | None


@dataclass(frozen=True, kw_only=True, slots=True)
class Page(Generic[T]):
    """One page of a listing. Pass `next` as `after` for the following page (None: last)."""

    prefix: str
    items: list[T]
    next: str | None
    index: int                # the node's X-KVS-Index when it answered


@dataclass(frozen=True, kw_only=True, slots=True)
class WatchEvent:
    """The state of a key (or of every live key under a prefix) as one node answered it."""

    key: str                  # the key or prefix watched
    prefix: bool
    index: int                # the node's X-KVS-Index: pass it as `index` to wait for the next change
    node: str                 # the node that answered (indexes are node-local)
    items: list[VersionRecord]  # key: [current version] or [] if absent; prefix: live versions

    @property
    def version(self) -> VersionRecord | None:
        return self.items[0] if self.items and not self.prefix else None

    @property
    def value(self) -> Any:
        return self.version.value if self.version is not None else None

    def signature(self) -> tuple[tuple[str, str], ...]:
        return tuple((v.key, v.version) for v in self.items)


@dataclass(frozen=True, kw_only=True, slots=True)
class Updated:
    """What update() wrote: the value fn returned, the write's identity, and the attempts used."""

    key: str
    value: Any
    result: WriteResult
    attempts: int


@dataclass(frozen=True, kw_only=True, slots=True)
class MemberRecord:
    """A cluster member as a node's /cluster/members reported it: a read-only record."""

    id: str
    address: str
    joined_at: int
    state: str                # alive | suspect | dead | left
    incarnation: int
    last_seen: int | None


@dataclass(frozen=True, kw_only=True, slots=True)
class AntiEntropyRound:
    peer: str
    keys_repaired: int
    bytes: int
    duration_ms: float
    at: int
    error: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Status:
    node: str
    joined_at: int
    keys: int
    index: int
    merkle_root: str
    hlc: list[int] = field(default_factory=list)
    last_rounds: list[AntiEntropyRound] = field(default_factory=list)
    voters: dict[str, Any] | None = None  # {"epoch", "ids"}: the voters of quorum keys


@dataclass(frozen=True, kw_only=True, slots=True)
class Health:
    status: str
    node: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Service:
    """A service registration; the index fields are set when read with metadata=True."""

    name: str
    address: str | None = None
    port: int | None = None
    tags: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    ttl: float | None = None
    version: str | None = None
    modify_index: int | None = None
    create_index: int | None = None
    expires_at: int | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class ServiceWriteResult:
    """What a registration or renewal wrote: the registration as stored, and its version."""

    service: Service
    version: str
    modify_index: int
    create_index: int
    expires_at: int | None

    @property
    def name(self) -> str:
        return self.service.name


@dataclass(frozen=True, kw_only=True, slots=True)
class ServiceDeleteResult:
    name: str
    version: str
    modify_index: int


def _service_entry(data: Any, _: Answer) -> Service:
    """A metadata=true answer, {"service": {...}, "version", ...}, as one flat Service."""
    return _build(Service, {**data, **data["service"]})


def _service_written(data: Any, _: Answer) -> ServiceWriteResult:
    return _build(ServiceWriteResult, {**data, "service": _build(Service, data["service"])})


@dataclass(frozen=True, kw_only=True, slots=True)
class AclPolicy:
    """An ACL policy: prefix rules ({"prefix", "access": read | write | deny}) and flags."""

    name: str
    rules: list[dict[str, str]]
    operator: str | None = None
    management: bool = False
    description: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class AclToken:
    """An ACL token; `secret` only in the answer that created it (the node keeps a hash)."""

    id: str
    policies: list[str]
    description: str = ""
    expires_at: int | None = None
    created_at: int = 0
    secret: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class TxnOp:
    """One operation of a transaction; build it with TxnOp.set/delete/check/get."""

    op: str
    key: str
    body: dict[str, Any]

    @classmethod
    def set(cls, key: str, value: Any, *, ttl: float | None = None, flags: int | None = None,
            cas: int | None = None, if_version: str | None = None, if_timestamp: int | None = None,
            if_value: Any = UNSET) -> TxnOp:
        body = {"value": value, **_options(ttl=ttl, flags=flags),
                **_conditions(cas, if_version, if_timestamp, if_value)}
        return cls(op="set", key=key, body=body)

    @classmethod
    def delete(cls, key: str, *, cas: int | None = None, if_version: str | None = None,
               if_timestamp: int | None = None, if_value: Any = UNSET) -> TxnOp:
        return cls(op="delete", key=key, body=_conditions(cas, if_version, if_timestamp, if_value))

    @classmethod
    def check(cls, key: str, *, cas: int | None = None, if_version: str | None = None,
              if_timestamp: int | None = None, if_value: Any = UNSET) -> TxnOp:
        return cls(op="check", key=key, body=_conditions(cas, if_version, if_timestamp, if_value))

    @classmethod
    def get(cls, key: str) -> TxnOp:
        return cls(op="get", key=key, body={})

    def to_json(self) -> dict[str, Any]:
        return {"op": self.op, "key": self.key, **self.body}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TxnOp:
        """An op written as the HTTP API's JSON, e.g. {"op": "set", "key": "a", "value": 1}.

        Only the shape is checked here (an object with a known "op" and a string "key"), so
        a mistake fails before anything is sent; the node checks the other fields."""
        if not isinstance(data, Mapping):
            raise BadRequest(f"a txn op is a TxnOp or a JSON object, not {type(data).__name__}")
        op, key = data.get("op"), data.get("key")
        if op not in _TXN_OPS or not isinstance(key, str):
            raise BadRequest(f"a txn op needs \"op\" (one of {', '.join(_TXN_OPS)}) and a string "
                             f"\"key\": {dict(data)!r}")
        return cls(op=op, key=key, body={k: v for k, v in data.items() if k not in ("op", "key")})


_TXN_OPS = ("set", "delete", "check", "get")


TxnResult: TypeAlias = WriteResult | DeleteResult | CheckResult | VersionRecord | None

_FIELDS: dict[type, frozenset[str]] = {}


def _build(cls: type[T], data: Any) -> T:
    """A result dataclass from the node's JSON; fields this client does not know are ignored."""
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = frozenset(f.name for f in fields(cls))  # type: ignore[arg-type]
    return cls(**{k: v for k, v in data.items() if k in names})


def as_json(result: Any) -> Any:
    """A result (dataclass, or list of them) as plain JSON data, e.g. for printing."""
    if isinstance(result, list | tuple):
        return [as_json(r) for r in result]
    if isinstance(result, dict):
        return {k: as_json(v) for k, v in result.items()}
    if hasattr(result, "__dataclass_fields__"):
        return {f.name: as_json(getattr(result, f.name)) for f in fields(result)}
    return result


# -- the protocol layer: requests and answers, no I/O ------------------------------------------

@dataclass(frozen=True, slots=True)
class Answer:
    """What a node sent back, as either transport reads it."""

    node: str
    status: int
    content_type: str
    index: int | None          # X-KVS-Index header
    body: bytes


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One HTTP request and how to read its answer."""

    method: str
    target: str                              # percent-encoded path and query
    body: bytes | None
    decode: Callable[[Answer], T]
    wait: float = 0.0                        # the node may hold it this long (blocking query)
    pinned: str | None = None                # the node whose index `target` carries...
    elsewhere: Call[T] | None = None         # ...and what to send to any other node instead
    deadline: float | None = None            # time.monotonic() after which no answer is awaited

    def for_node(self, node: str) -> Call[T]:
        if self.pinned is None or self.pinned == node or self.elsewhere is None:
            return self
        return self.elsewhere

    def until(self, deadline: float) -> Call[T]:
        """This call, given up (Unavailable) at `deadline`: a lease renewal that arrives after
        the lease ran out is worth nothing, so its holder must not wait longer for it."""
        elsewhere = None if self.elsewhere is None else self.elsewhere.until(deadline)
        return dataclasses.replace(self, deadline=deadline, elsewhere=elsewhere)

    def limits(self, timeout: float, connect_timeout: float) -> tuple[float, float] | None:
        """(total, connect) seconds for one attempt now; None once the deadline has passed."""
        total = timeout + self.wait
        if self.deadline is not None:
            total = min(total, self.deadline - time.monotonic())
            if total <= 0:
                return None
        return total, min(connect_timeout, total)

    def read(self, answer: Answer) -> T:
        """The typed result; or the typed exception, naming the node that answered (`.node`)."""
        try:
            return self.decode(answer)
        except KVSError as exc:
            exc.node = answer.node  # type: ignore[attr-defined]
            raise


class Sleep(NamedTuple):
    seconds: float


class Emit(NamedTuple):
    item: Any


class _Await(NamedTuple):
    awaitable: Awaitable[Any]


Step: TypeAlias = Call[Any] | Sleep | Emit | _Await
Plan: TypeAlias = Generator[Step, Any, T]


def _target(path: str, query: Mapping[str, Any] | None = None) -> str:
    pairs = [(k, "true" if v is True else "false" if v is False else str(v))
             for k, v in (query or {}).items() if v is not None]
    if not pairs:
        return path
    return path + "?" + urllib.parse.urlencode(pairs, quote_via=urllib.parse.quote)


def _kv(key: str, query: Mapping[str, Any] | None = None) -> str:
    return _target("/kv/" + urllib.parse.quote(key, safe="/"), query)


def _service(name: str, suffix: str = "", query: Mapping[str, Any] | None = None) -> str:
    return _target("/services/" + urllib.parse.quote(name, safe="") + suffix, query)


def _encode(body: Any) -> bytes:
    try:
        return json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
    except (TypeError, ValueError) as exc:
        raise BadRequest(f"request is not JSON-serializable: {exc}") from None


def _duration(seconds: float) -> str:
    return f"{max(0, round(seconds * 1000))}ms"


def _conditions(cas: int | None, if_version: str | None, if_timestamp: int | None,
                if_value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if cas is not None:
        out["cas"] = cas
    if if_version is not None:
        out["if_version"] = if_version
    if if_timestamp is not None:
        out["if_timestamp"] = if_timestamp
    if if_value is not UNSET:
        out["if_value"] = if_value
    return out


def _options(**options: Any) -> dict[str, Any]:
    return {k: v for k, v in options.items() if v is not None}


def _consistency(consistency: str | None) -> dict[str, str]:
    """The `consistency` field of a request, checked before anything is sent."""
    if consistency is None:
        return {}
    if consistency not in CONSISTENCY:
        raise BadRequest(f"consistency must be one of {', '.join(CONSISTENCY)} (or None: the "
                         f"node's default_consistency), not {consistency!r}")
    return {"consistency": consistency}


def error_for(answer: Answer) -> KVSError:
    """The typed exception for an error answer."""
    try:
        data = json.loads(answer.body)
        code, message = data.pop("error"), data.pop("message")
    except (ValueError, KeyError, TypeError, AttributeError):
        exc: KVSError = ServerError(f"{answer.node} answered HTTP {answer.status}: "
                                    f"{answer.body[:200]!r}", answer.status)
    else:
        cls = _BY_CODE.get(code)
        if cls is None:
            exc = ServerError(f"{answer.node} answered HTTP {answer.status} {code}: {message}",
                              answer.status, **data)
        else:
            exc = cls(message, **data)
    return exc


def _reader(parse: Callable[[Any, Answer], T]) -> Callable[[Answer], T]:
    """A decoder: error answers raise their typed exception; a 2xx JSON body goes to `parse`."""

    def decode(answer: Answer) -> T:
        if answer.status >= 300:
            raise error_for(answer)
        try:
            return parse(json.loads(answer.body), answer)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ServerError(f"{answer.node} sent an answer this client cannot read "
                              f"({exc!r}): {answer.body[:200]!r}", answer.status) from None

    return decode


def _of(cls: type[T]) -> Callable[[Answer], T]:
    return _reader(lambda data, _: _build(cls, data))


def _list_of(cls: type[T]) -> Callable[[Answer], list[T]]:
    return _reader(lambda data, _: [_build(cls, d) for d in data])


def _raw_value(answer: Answer) -> Any:
    if answer.status >= 300:
        raise error_for(answer)
    if answer.content_type.startswith("text/"):
        return answer.body.decode()
    return _reader(lambda data, _: data)(answer)


def _status(data: Any, _: Answer) -> Status:
    rounds = [_build(AntiEntropyRound, r) for r in data.get("last_rounds", [])]
    return _build(Status, {**data, "last_rounds": rounds})


def _page(field_name: str, item: Callable[[Any], Any]) -> Callable[[Answer], Page[Any]]:
    return _reader(lambda data, answer: Page(
        prefix=data["prefix"], items=[item(i) for i in data[field_name]], next=data["next"],
        index=answer.index or 0))


def _txn_decoder(ops: Sequence[TxnOp]) -> Callable[[Answer], list[TxnResult]]:
    def result(op: TxnOp, data: Any) -> TxnResult:
        if data is None:
            return None
        return _build({"set": WriteResult, "delete": DeleteResult, "check": CheckResult,
                       "get": VersionRecord}[op.op], data)

    return _reader(lambda data, _: [result(op, r)
                                    for op, r in zip(ops, data["results"], strict=True)])


def _watch_decoder(key: str, prefix: bool) -> Callable[[Answer], WatchEvent]:
    def decode(answer: Answer) -> WatchEvent:
        if not prefix and answer.status == 404:
            error = error_for(answer)
            if isinstance(error, NotFound):  # the key is absent: that is a state too
                return WatchEvent(key=key, prefix=False, index=answer.index or 0,
                                  node=answer.node, items=[])
            raise error
        return _reader(lambda data, _: WatchEvent(
            key=key, prefix=prefix, index=answer.index or 0, node=answer.node,
            items=([_build(VersionRecord, d) for d in data["items"]] if prefix
                   else [_build(VersionRecord, data)]),
        ))(answer)

    return decode


def _wake_cap(wait: float, items: Sequence[VersionRecord], now: float) -> float:
    """How long to block: at most `wait`, and not past the first lease under watch to expire.

    An expiry does not bump the modify index, so no write wakes a blocking query when a
    lease ends; the client sets the wait so that it asks again just after `expires_at`.
    Clocks are assumed roughly in sync (the HLC's physical part is wall-clock ms); when the
    node's clock is behind ours this polls every MIN_EXPIRY_WAIT until the node agrees.
    """
    expiries = [v.expires_at for v in items if v.expires_at is not None]
    if not expiries:
        return wait
    return min(wait, max(MIN_EXPIRY_WAIT, min(expiries) / 1000 - now + EXPIRY_MARGIN))


# -- every command, once ---------------------------------------------------------------------

class _Commands:
    """The API. `_execute` and `_iterate` carry plans out: blocking in Client, async in AsyncClient."""

    def _execute(self, plan: Call[T] | Plan[T]) -> Any:
        raise NotImplementedError

    def _iterate(self, plan: Plan[None]) -> Any:
        raise NotImplementedError

    # -- reads -----------------------------------------------------------------------------

    def health(self) -> Out[Health]:
        return self._execute(Call("GET", "/health", None, _of(Health)))

    def get(self, key: str, *, version: str | None = None,
            consistency: str | None = None) -> Out[VersionRecord]:
        """The current version of `key` (or the given version UUID, also from history).

        consistency="quorum": a linearizable read through a majority of the voters, with the
        key's `seq`; "local" (or the node's default): this node's view, which may be stale."""
        query = {"version": version, **_consistency(consistency)}
        return self._execute(Call("GET", _kv(key, query), None, _of(VersionRecord)))

    def get_value(self, key: str, default: Any = UNSET, *,
                  consistency: str | None = None) -> Out[Any]:
        """Just the value (`?raw=true`); `default` instead of NotFound if given."""
        decode = _raw_value
        if default is not UNSET:
            def decode(answer: Answer) -> Any:
                return default if answer.status == 404 else _raw_value(answer)
        query = {"raw": True, **_consistency(consistency)}
        return self._execute(Call("GET", _kv(key, query), None, decode))

    def history(self, key: str) -> Out[list[VersionRecord]]:
        """Current and past versions, newest first, tombstones and superseded ones included."""
        return self._execute(Call("GET", _kv(key, {"history": True}), None, _reader(
            lambda data, _: [_build(VersionRecord, r) for r in data["revisions"]])))

    def list(self, prefix: str = "", *, limit: int | None = None,
             after: str | None = None) -> Out[Page[VersionRecord]]:
        """Live versions under `prefix`, in key order; one page of at most `limit`."""
        query = {"recurse": True, "limit": limit, "after": after}
        return self._execute(Call("GET", _kv(prefix, query), None,
                                  _page("items", lambda d: _build(VersionRecord, d))))

    def list_keys(self, prefix: str = "", *, separator: str | None = None, limit: int | None = None,
                  after: str | None = None) -> Out[Page[str]]:
        """Live key names under `prefix`; with `separator`, grouped like Consul (`a/`)."""
        query = {"keys": True, "separator": separator, "limit": limit, "after": after}
        return self._execute(Call("GET", _kv(prefix, query), None, _page("keys", str)))

    def scan(self, prefix: str = "", *, page_size: int = 100) -> Stream[VersionRecord]:
        """Every live version under `prefix`, fetching pages of `page_size` as it goes."""
        return self._iterate(self._pages(lambda after: _PLAN.list(prefix, limit=page_size, after=after)))

    def scan_keys(self, prefix: str = "", *, separator: str | None = None,
                  page_size: int = 1000) -> Stream[str]:
        return self._iterate(self._pages(lambda after: _PLAN.list_keys(
            prefix, separator=separator, limit=page_size, after=after)))

    @staticmethod
    def _pages(call: Callable[[str | None], Call[Page[Any]]]) -> Plan[None]:
        after = None
        while True:
            page = yield call(after)
            for item in page.items:
                yield Emit(item)
            if page.next is None:
                return
            after = page.next

    # -- writes ----------------------------------------------------------------------------

    def put(self, key: str, value: Any, *, ttl: float | None = None, flags: int | None = None,
            cas: int | None = None, if_version: str | None = None, if_timestamp: int | None = None,
            if_value: Any = UNSET, if_seq: int | None = None,
            consistency: str | None = None) -> Out[WriteResult]:
        """Write `value` (any JSON). Conditions (all must hold): `cas` 0 = create-only, N = the
        key's modify_index is N; `if_version`, `if_timestamp`, `if_value` compare with the
        current version; `if_seq` (quorum only) = the key's cluster-wide seq is N. `ttl` in
        seconds; a conditional write with ttl renews a lease. consistency="quorum": one
        linearizable CAS across the cluster (the answer carries the new `seq`)."""
        body = {"value": value, **_options(ttl=ttl, flags=flags, if_seq=if_seq),
                **_conditions(cas, if_version, if_timestamp, if_value), **_consistency(consistency)}
        return self._execute(Call("PUT", _kv(key), _encode(body), _of(WriteResult)))

    def delete(self, key: str, *, cas: int | None = None, if_version: str | None = None,
               if_timestamp: int | None = None, if_value: Any = UNSET, if_seq: int | None = None,
               consistency: str | None = None) -> Out[DeleteResult]:
        """Write a tombstone (NotFound if the key is absent), under the same conditions as put."""
        query: dict[str, Any] = {**_conditions(cas, if_version, if_timestamp, UNSET),
                                 **_options(if_seq=if_seq), **_consistency(consistency)}
        if if_value is not UNSET:
            query["if_value"] = _encode(if_value).decode()
        return self._execute(Call("DELETE", _kv(key, query), None, _of(DeleteResult)))

    def delete_prefix(self, prefix: str) -> Out[PrefixDeleteResult]:
        """Tombstone every live key under `prefix`, in one batch."""
        return self._execute(Call("DELETE", _kv(prefix, {"recurse": True}), None,
                                  _of(PrefixDeleteResult)))

    def txn(self, ops: Sequence[TxnOp | Mapping[str, Any]]) -> Out[list[TxnResult]]:
        """All-or-nothing on the node: one result per op (set: WriteResult, delete:
        DeleteResult, check: CheckResult, get: VersionRecord or None). A failed condition raises
        CASConflict with `.failed` and writes nothing. An op is a TxnOp or the HTTP API's JSON
        form ({"op": "set", "key": "a", "value": 1}); a malformed one raises BadRequest before
        anything is sent."""
        typed = [op if isinstance(op, TxnOp) else TxnOp.from_json(op) for op in ops]
        body = {"ops": [op.to_json() for op in typed]}
        return self._execute(Call("POST", "/txn", _encode(body), _txn_decoder(typed)))

    def update(self, key: str, fn: Callable[[Any], Any], *, retries: int = 16, backoff: float = 0.01,
               max_backoff: float = 1.0, ttl: float | None = None,
               consistency: str | None = None) -> Out[Updated]:
        """Optimistic read-modify-write: write `fn(current value)` only if nobody wrote meanwhile.

        Reads the key, calls `fn(value)` (`fn(None)` if the key is absent, and then creates it
        with cas=0), and writes the result with `if_version` of what was read, keeping the
        key's flags (and setting `ttl` if given). If another writer got there first (409
        CASConflict, or 404 NotFound because the key was deleted in between: both mean "lost
        the race") it sleeps a random time in [0, min(max_backoff, backoff * 2**attempt)]
        ("full jitter") and starts over, at most `retries` times, then raises that last
        CASConflict/NotFound. Every other error is raised at once; so is anything `fn` raises
        (nothing is written). `fn` runs once per attempt, so it must not have side effects; in
        AsyncClient it may be a coroutine function.

        consistency="quorum" (or a node whose default it is: the read then carries `seq`):
        the read is linearizable and the write is conditioned on `if_seq`, so increments
        through different nodes are never lost. QuorumUnavailable is raised at once (nothing
        was written), unless it says `contended` (other writers kept winning the rounds: a
        lost race, retried like a conflict). QuorumIndeterminate is never simply retried, as
        that could apply `fn` twice; see `_settle`.
        """
        _consistency(consistency)  # a bad one raises here, before any request
        return self._execute(self._update_plan(key, fn, retries, backoff, max_backoff, ttl,
                                               consistency))

    def _update_plan(self, key: str, fn: Callable[[Any], Any], retries: int, backoff: float,
                     max_backoff: float, ttl: float | None,
                     consistency: str | None) -> Plan[Updated]:
        attempt = 0
        while True:
            attempt += 1
            try:
                done = yield from _update_attempt(key, fn, ttl, consistency)
            except (CASConflict, NotFound, QuorumUnavailable) as lost:
                if attempt > retries or (isinstance(lost, QuorumUnavailable) and not lost.contended):
                    raise
            else:
                if done is not None:
                    return Updated(key=key, value=done[0], result=done[1], attempts=attempt)
                if attempt > retries:
                    raise CASConflict(f"update of {key!r}: another writer's change was chosen "
                                      f"instead of this one; gave up after {attempt} attempts")
            yield Sleep(random.uniform(0, min(max_backoff, backoff * 2 ** (attempt - 1))))

    # -- blocking queries ------------------------------------------------------------------

    def watch_once(self, key: str, *, prefix: bool = False, index: int | None = None,
                   wait: float = DEFAULT_WAIT) -> Out[WatchEvent]:
        """One blocking query: the state once the key's (prefix's) modify index on the node
        exceeds `index`, or after `wait` seconds. Without `index` it answers at once."""
        return self._execute(_watch_call(key, prefix, index, wait))

    def watch(self, key: str, *, prefix: bool = False, index: int | None = None,
              wait: float = DEFAULT_WAIT) -> Stream[WatchEvent]:
        """Each new state of `key` (or of the live keys under it, with prefix=True), forever.

        The first event is the current state (unless `index` is given: then the first change
        after it). Then one blocking query after another, each from the index of the last
        answer; an answer that is the same state (the wait ran out) is not yielded. A key under
        watch whose lease expires is noticed within EXPIRY_MARGIN of its expires_at, although
        an expiry bumps no index (see `_wake_cap`). Changes that happen between two answers
        are coalesced: you see states, not every write (use history() for those).
        """
        return self._iterate(self._watch_plan(key, prefix, index, wait))

    @staticmethod
    def _watch_plan(key: str, prefix: bool, index: int | None, wait: float,
                    until: float | None = None) -> Plan[None]:
        """The watch loop; with `until` (time.monotonic()) no query waits past it, and the
        plan ends there (a lock waiting with a timeout watches this way)."""
        last: tuple[tuple[str, str], ...] | None = None
        node: str | None = None
        items: list[VersionRecord] = []
        while True:
            cap = _wake_cap(wait, items, time.time())
            if until is not None:
                cap = min(cap, until - time.monotonic())
                if cap <= 0:
                    return
            event: WatchEvent = yield _watch_call(key, prefix, index, cap, pinned=node)
            if event.signature() != last:
                last = event.signature()
                yield Emit(event)
            index, node, items = event.index, event.node, event.items

    # -- cluster ---------------------------------------------------------------------------

    def members(self) -> Out[list[MemberRecord]]:
        return self._execute(Call("GET", "/cluster/members", None, _list_of(MemberRecord)))

    def status(self) -> Out[Status]:
        return self._execute(Call("GET", "/cluster/status", None, _reader(_status)))

    # -- ACLs (the node needs acl_enabled; all but bootstrap need a management token) ------

    def acl_bootstrap(self) -> Out[AclToken]:
        """The first management token, with its secret; Conflict once done."""
        return self._execute(Call("POST", "/acl/bootstrap", None, _of(AclToken)))

    def acl_policies(self) -> Out[list[AclPolicy]]:
        return self._execute(Call("GET", "/acl/policies", None, _reader(
            lambda data, _: [_build(AclPolicy, p) for p in data["policies"]])))

    def acl_create_policy(self, name: str, rules: Sequence[Mapping[str, str]], *,
                          operator: str | None = None, management: bool = False,
                          description: str = "") -> Out[AclPolicy]:
        body = {"name": name, "rules": [dict(r) for r in rules], "operator": operator,
                "management": management, "description": description}
        return self._execute(Call("POST", "/acl/policies", _encode(body), _of(AclPolicy)))

    def acl_delete_policy(self, name: str) -> Out[str]:
        return self._execute(Call("DELETE", "/acl/policies/" + urllib.parse.quote(name, safe=""),
                                  None, _reader(lambda data, _: data["deleted"])))

    def acl_tokens(self) -> Out[list[AclToken]]:
        return self._execute(Call("GET", "/acl/tokens", None, _reader(
            lambda data, _: [_build(AclToken, t) for t in data["tokens"]])))

    def acl_create_token(self, policies: Sequence[str], *, description: str = "",
                         ttl: float | None = None) -> Out[AclToken]:
        """A new token holding `policies`, with its secret; with `ttl` (seconds) it expires."""
        body = {"policies": list(policies), "description": description, **_options(ttl=ttl)}
        return self._execute(Call("POST", "/acl/tokens", _encode(body), _of(AclToken)))

    def acl_delete_token(self, token_id: str) -> Out[str]:
        """Revoke the token with this id (accessor), on every node within a replication round."""
        return self._execute(Call("DELETE", "/acl/tokens/" + urllib.parse.quote(token_id, safe=""),
                                  None, _reader(lambda data, _: data["deleted"])))

    # -- service registry ------------------------------------------------------------------

    def register_service(self, name: str, *, address: str | None = None, port: int | None = None,
                         tags: Sequence[str] | None = None, meta: Mapping[str, Any] | None = None,
                         ttl: float | None = None, cas: int | None = None) -> Out[ServiceWriteResult]:
        """Register (or replace) a service; with `ttl` it expires unless renewed; `cas` as for put."""
        body = _options(name=name, address=address, port=port,
                        tags=None if tags is None else list(tags),
                        meta=None if meta is None else dict(meta), ttl=ttl, cas=cas)
        return self._execute(Call("POST", "/services", _encode(body), _reader(_service_written)))

    def list_services(self) -> Out[list[Service]]:
        return self._execute(Call("GET", "/services", None, _reader(
            lambda data, _: [_build(Service, s) for s in data["services"]])))

    def get_service(self, name: str, *, metadata: bool = False) -> Out[Service]:
        if metadata:
            return self._execute(Call("GET", _service(name, query={"metadata": True}), None,
                                      _reader(_service_entry)))
        return self._execute(Call("GET", _service(name), None, _of(Service)))

    def renew_service(self, name: str, *, ttl: float | None = None) -> Out[ServiceWriteResult]:
        """Extend a registration's lease (NotFound once it has expired: register again)."""
        body = None if ttl is None else _encode({"ttl": ttl})
        return self._execute(Call("PUT", _service(name, "/renew"), body, _reader(_service_written)))

    def deregister_service(self, name: str, *, cas: int | None = None) -> Out[ServiceDeleteResult]:
        return self._execute(Call("DELETE", _service(name, query={"cas": cas}), None,
                                  _of(ServiceDeleteResult)))


def _update_attempt(key: str, fn: Callable[[Any], Any], ttl: float | None,
                    consistency: str | None) -> Plan[tuple[Any, WriteResult] | None]:
    """One read, fn, conditional write: (value, result), or None when a quorum write turned
    out to have lost to another writer's; a lost race otherwise raises (CASConflict...)."""
    try:
        current: VersionRecord | None = yield _PLAN.get(key, consistency=consistency)
        seq = current.seq if current is not None else None
    except NotFound as absent:
        current, seq = None, absent.seq
        if seq == 0:
            # No quorum state yet, but the key may hold a value written in local mode: fn
            # must see it, or the first quorum update would silently replace it.
            current = yield from _local_version(key)
    value = fn(None if current is None else current.value)
    if inspect.isawaitable(value):
        value = yield _Await(value)
    write = _update_write(key, value, current, seq, ttl)
    try:
        result = yield write
    except QuorumIndeterminate as unknown:
        assert seq is not None  # only quorum writes are indeterminate
        result = yield from _settle(key, write, value, seq, unknown, ttl)
    return None if result is None else (value, result)


def _local_version(key: str) -> Plan[VersionRecord | None]:
    try:
        return (yield _PLAN.get(key, consistency="local"))  # type: ignore[no-any-return]
    except NotFound:
        return None


def _update_write(key: str, value: Any, current: VersionRecord | None, seq: int | None,
                  ttl: float | None) -> Call[WriteResult]:
    """update()'s write: conditioned on what was read, by seq when the read was a quorum one."""
    flags = (current.flags or None) if current is not None else None
    if seq is not None:
        return _PLAN.put(key, value, ttl=ttl, flags=flags, if_seq=seq, consistency="quorum")
    if current is None:
        return _PLAN.put(key, value, ttl=ttl, cas=0)
    return _PLAN.put(key, value, ttl=ttl, flags=flags, if_version=current.version)


SETTLE_READS = 4  # quorum reads update() spends learning the fate of an indeterminate write


def _settle(key: str, write: Call[WriteResult], value: Any, seq: int, unknown: QuorumIndeterminate,
            ttl: float | None) -> Plan[WriteResult | None]:
    """The fate of an indeterminate quorum write of `value` conditioned on `if_seq=seq`:
    its result once it is known to be applied exactly once, None once it is known that it
    never will be; QuorumIndeterminate (`unknown`) when that cannot be told.

    Why not simply retry: the write may have reached some acceptors and be chosen later, by
    any node's next round on the key, so a fresh `fn` run on a re-read could add a second
    increment to a first one that lands afterwards. A quorum read tells three cases apart:

    * seq is still `seq`: nothing has been chosen since our read. Send the *same* write
      again (same value, same if_seq): if it commits, the chain has exactly one change
      after `seq`, ours, and the first attempt can no longer be chosen (a majority has
      accepted a later ballot); if it conflicts, look again.
    * seq is `seq + 1` with another value (or absent, for a write without ttl): another
      writer's change was chosen in our place, so ours never will be: the caller retries.
    * anything else (`seq + 1` holding our value, which may be ours or an equal one from
      another writer; or the key moved further on): the outcome cannot be told, and
      `unknown` is raised.
    """
    for _ in range(SETTLE_READS):
        try:
            now: VersionRecord = yield _PLAN.get(key, consistency="quorum")
            at, present, there = now.seq, True, now.value
        except NotFound as absent:
            at, present, there = absent.seq, False, None
        except (QuorumUnavailable, QuorumIndeterminate, Unavailable) as exc:
            raise unknown from exc
        if at == seq:
            try:
                return (yield write)  # type: ignore[no-any-return]
            except (CASConflict, QuorumIndeterminate):
                continue
            except (QuorumUnavailable, Unavailable) as exc:
                raise unknown from exc
        if at == seq + 1 and (there != value if present else ttl is None):
            return None
        raise unknown
    raise unknown


class _Planner(_Commands):
    """Runs no plan: its methods return the Call itself (plans use it to build requests)."""

    def _execute(self, plan: Call[T] | Plan[T]) -> Any:
        return plan


_PLAN = _Planner()


def _watch_call(key: str, prefix: bool, index: int | None, wait: float,
                pinned: str | None = None) -> Call[WatchEvent]:
    decode = _watch_decoder(key, prefix)
    listing = {"recurse": True} if prefix else {}
    if index is None:
        return Call("GET", _kv(key, listing), None, decode)
    wait = min(max(wait, 0.0), MAX_WAIT)
    call = Call("GET", _kv(key, {**listing, "index": index, "wait": _duration(wait)}), None,
                decode, wait=wait)
    if pinned is None:
        return call
    # The index is this node's; anywhere else it means nothing, so ask for the state at once.
    return Call(call.method, call.target, None, decode, wait, pinned, _watch_call(key, prefix, None, 0))


# -- nodes and failover ----------------------------------------------------------------------

def _normalize(url: str) -> str:
    url = url.strip().rstrip("/")
    return url if "://" in url else "http://" + url


class _Nodes:
    """The node URLs in failover order, starting from the one that answered last."""

    def __init__(self, nodes: str | Sequence[str]) -> None:
        urls = [nodes] if isinstance(nodes, str) else list(nodes)
        if not urls:
            raise ValueError("give at least one node URL")
        self.urls = [_normalize(u) for u in urls]
        self._first = 0

    def order(self) -> list[str]:
        first = self._first
        return self.urls[first:] + self.urls[:first]

    def answered(self, node: str) -> None:
        self._first = self.urls.index(node)


def _advance(plan: Plan[Any], reply: Any, error: BaseException | None) -> Step | _Done:
    try:
        return plan.throw(error) if error is not None else plan.send(reply)
    except StopIteration as stop:
        return _Done(stop.value)


class _Done(NamedTuple):
    value: Any


_HEADERS = {"Accept": "application/json", "User-Agent": "kvs-client"}


TOKEN_VARIABLE = "KVS_TOKEN"  # where the `kvs` commands find the ACL token by default


def bearer(token: str | None) -> dict[str, str]:
    """The header that carries an ACL token (none without one)."""
    return {"Authorization": f"Bearer {token}"} if token else {}


class _Headers:
    """The headers of every request, the ACL token's included (docs/acl.md)."""

    def __init__(self, token: str | None) -> None:
        self.plain = {**_HEADERS, **bearer(token)}
        self.json = {**self.plain, "Content-Type": "application/json"}

    def of(self, call: Call[Any]) -> dict[str, str]:
        return self.json if call.body is not None else self.plain


def _reason(exc: BaseException, timeout: float) -> str:
    if isinstance(getattr(exc, "certificate_error", exc), ssl.SSLCertVerificationError):  # aiohttp wraps it
        return (f"{exc}: the node's TLS certificate did not verify; give the CA that signed it "
                "(ca=..., kvs --ca FILE or KVS_CA)")
    if isinstance(exc, TimeoutError):
        return f"timed out after {timeout:g}s"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return str(exc) or type(exc).__name__


# -- the blocking client ---------------------------------------------------------------------

class Client(_Commands):
    """Blocking client (http.client, keep-alive, thread-safe). Methods as in `_Commands`.

    `timeout` bounds each request (connect and every read), plus the wait of a blocking
    query; `connect_timeout` bounds connecting, so a dead host fails over quickly. `ca`: a
    PEM file of the CA that signed the nodes' certificates, for https URLs (None: the
    system's CAs). `token`: the ACL token's secret, sent with every request (nodes with
    acl_enabled need one).
    """

    IDLE_SECONDS = 10.0  # drop pooled connections idle longer (the node closes them at 75 s)

    def __init__(self, nodes: str | Sequence[str] = DEFAULT_NODE, *, timeout: float = 10.0,
                 connect_timeout: float = 3.0, ca: str | None = None,
                 token: str | None = None) -> None:
        self._nodes = _Nodes(nodes)
        self._headers = _Headers(token)
        self.timeout = timeout
        self.connect_timeout = min(connect_timeout, timeout)
        self.ca = ca
        self._ssl: ssl.SSLContext | None = None  # made at the first https connection
        self._idle: dict[str, list[tuple[http.client.HTTPConnection, float]]] = {}
        self._lock = threading.Lock()

    @property
    def nodes(self) -> list[str]:
        return list(self._nodes.urls)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn, _ in conns:
                conn.close()

    def _execute(self, plan: Call[T] | Plan[T], stop: threading.Event | None = None) -> Any:
        """Carry a plan out in this thread. Setting `stop` (from another thread) ends it before
        its next step, and at once during a Sleep; it then returns None. (An AsyncClient's
        plans are stopped by cancelling the task instead.)"""
        if isinstance(plan, Call):
            return self._send(plan)
        items = self._drive(plan, stop)
        try:
            next(items)
        except StopIteration as stopped:
            return stopped.value
        raise RuntimeError("a plan run by _execute emitted an item")

    def _iterate(self, plan: Plan[None]) -> Iterator[Any]:
        return self._drive(plan)

    def _drive(self, plan: Plan[T], stop: threading.Event | None = None) -> Generator[Any, None, T | None]:
        reply: Any = None
        error: BaseException | None = None
        try:
            while True:
                # A reply is always delivered: a write that was applied must reach the plan.
                step = _advance(plan, reply, error)
                reply, error = None, None
                if isinstance(step, _Done):
                    return step.value  # type: ignore[no-any-return]
                if stop is not None and stop.is_set():
                    return None
                if isinstance(step, Emit):
                    yield step.item
                elif isinstance(step, Sleep):
                    if stop is None:
                        time.sleep(step.seconds)
                    else:
                        stop.wait(step.seconds)
                elif isinstance(step, _Await):
                    error = TypeError("update() fn returned an awaitable; use AsyncClient for async fns")
                    if inspect.iscoroutine(step.awaitable):
                        step.awaitable.close()
                else:
                    try:
                        reply = self._send(step)
                    except KVSError as exc:
                        error = exc
        finally:
            plan.close()

    def _send(self, call: Call[T]) -> T:
        failures = []
        for node in self._nodes.order():
            sent = call.for_node(node)
            try:
                answer = self._round_trip(node, sent)
            except _NoAnswer as exc:
                failures.append(f"{node}: {exc}")
                continue
            self._nodes.answered(node)
            return sent.read(answer)
        raise _unavailable(failures)

    def _round_trip(self, node: str, call: Call[Any]) -> Answer:
        base = urllib.parse.urlsplit(node).path
        for attempt in (1, 2):
            limits = call.limits(self.timeout, self.connect_timeout)
            if limits is None:
                raise _NoAnswer(_PAST_DEADLINE)
            read_timeout, connect_timeout = limits
            conn, reused = self._take(node)
            limit = connect_timeout
            try:
                if conn.sock is None:
                    conn.timeout = connect_timeout
                    conn.connect()
                limit = read_timeout
                conn.sock.settimeout(read_timeout)
                conn.request(call.method, base + call.target, body=call.body,
                             headers=self._headers.of(call))
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                # A kept-alive connection the node closed meanwhile: the request never got
                # there. Resend once on a fresh one (idempotent methods, as aiohttp does).
                stale = isinstance(exc, ConnectionResetError | BrokenPipeError | ConnectionAbortedError)
                if reused and stale and attempt == 1 and call.method in ("GET", "PUT", "DELETE"):
                    continue
                raise _NoAnswer(_reason(exc, limit)) from exc
            try:
                body = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                raise Unavailable(f"{node} answered HTTP {resp.status} but the connection broke "
                                  f"while reading: {_reason(exc, read_timeout)}", [node]) from exc
            if resp.will_close:
                conn.close()
            else:
                self._give(node, conn)
            index = resp.getheader("X-KVS-Index")
            return Answer(node, resp.status, resp.getheader("Content-Type", ""),
                          int(index) if index and index.isdigit() else None, body)
        raise AssertionError("unreachable")

    def _take(self, node: str) -> tuple[http.client.HTTPConnection, bool]:
        now = time.monotonic()
        with self._lock:
            stack = self._idle.get(node, [])
            while stack:
                conn, since = stack.pop()
                if now - since < self.IDLE_SECONDS:
                    return conn, True
                conn.close()
        return self.connection(node), False

    def connection(self, node: str) -> http.client.HTTPConnection:
        """A new, unconnected connection to `node`: https ones verify it against `ca`."""
        parts = urllib.parse.urlsplit(node)
        host = parts.hostname or "127.0.0.1"
        if parts.scheme != "https":
            return http.client.HTTPConnection(host, parts.port, timeout=self.connect_timeout)
        if self._ssl is None:
            self._ssl = client_context(self.ca)
        return http.client.HTTPSConnection(host, parts.port, timeout=self.connect_timeout,
                                           context=self._ssl)

    def _give(self, node: str, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            self._idle.setdefault(node, []).append((conn, time.monotonic()))


class _NoAnswer(Exception):
    """The node could not be reached: the request may be tried on the next node."""


_PAST_DEADLINE = "not sent: the caller's deadline had passed"


# -- the asyncio client ----------------------------------------------------------------------

class AsyncClient(_Commands):
    """asyncio client over one aiohttp session (keep-alive). Every method returns an awaitable;
    scan, scan_keys and watch return async iterators. Use `async with AsyncClient(...)` or
    `await client.close()`.

    `timeout` bounds each request from start to end (plus the wait of a blocking query);
    `connect_timeout` bounds connecting, so a dead host fails over quickly. `token`: the ACL
    token's secret, sent with every request. `max_connections`
    (None: unlimited) caps open connections; a watch holds one for its whole wait, so keep it
    above the number of concurrent watches. `ca`: as for `Client`.
    """

    def __init__(self, nodes: str | Sequence[str] = DEFAULT_NODE, *, timeout: float = 10.0,
                 connect_timeout: float = 3.0, max_connections: int | None = None,
                 ca: str | None = None, token: str | None = None) -> None:
        self._nodes = _Nodes(nodes)
        self._headers = _Headers(token)
        self.timeout = timeout
        self.connect_timeout = min(connect_timeout, timeout)
        self.max_connections = max_connections
        self.ca = ca
        self._session: aiohttp.ClientSession | None = None

    @property
    def nodes(self) -> list[str]:
        return list(self._nodes.urls)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _open(self) -> aiohttp.ClientSession:
        import aiohttp

        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self.max_connections or 0,
                                             ssl=client_context(self.ca) if self.ca else True)
            self._session = aiohttp.ClientSession(connector=connector, skip_auto_headers=("Content-Type",))
        return self._session

    async def _execute(self, plan: Call[T] | Plan[T]) -> Any:
        if isinstance(plan, Call):
            return await self._send(plan)
        done: list[Any] = []
        async for _ in self._drive(plan, done):
            raise RuntimeError("a plan run by _execute emitted an item")
        return done[0]

    def _iterate(self, plan: Plan[None]) -> AsyncIterator[Any]:
        return self._drive(plan, [])

    async def _drive(self, plan: Plan[Any], done: list[Any]) -> AsyncIterator[Any]:
        """Carry the plan out, yielding what it emits; its return value goes to `done`."""
        reply: Any = None
        error: BaseException | None = None
        try:
            while True:
                step = _advance(plan, reply, error)
                reply, error = None, None
                if isinstance(step, _Done):
                    done.append(step.value)
                    return
                if isinstance(step, Emit):
                    yield step.item
                elif isinstance(step, Sleep):
                    await asyncio.sleep(step.seconds)
                else:
                    try:
                        reply = await (step.awaitable if isinstance(step, _Await) else self._send(step))
                    except KVSError as exc:
                        error = exc
        finally:
            plan.close()

    async def _send(self, call: Call[T]) -> T:
        import aiohttp
        from yarl import URL

        session = self._open()
        failures = []
        for node in self._nodes.order():
            sent = call.for_node(node)
            limits = sent.limits(self.timeout, self.connect_timeout)
            if limits is None:
                failures.append(f"{node}: {_PAST_DEADLINE}")
                continue
            timeout = aiohttp.ClientTimeout(total=limits[0], sock_connect=limits[1])
            answered = False
            try:
                async with session.request(
                        sent.method, URL(node + sent.target, encoded=True), data=sent.body,
                        headers=self._headers.of(sent),
                        timeout=timeout) as resp:
                    answered = True
                    body = await resp.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                if answered:
                    raise Unavailable(f"{node} answered HTTP {resp.status} but the connection broke "
                                      f"while reading: {_reason(exc, timeout.total or 0)}",
                                      [node]) from exc
                failures.append(f"{node}: {_connect_reason(exc, timeout.total or 0)}")
                continue
            self._nodes.answered(node)
            index = resp.headers.get("X-KVS-Index")
            return sent.read(Answer(node, resp.status, resp.headers.get("Content-Type", ""),
                                      int(index) if index and index.isdigit() else None, body))
        raise _unavailable(failures)


def _connect_reason(exc: BaseException, timeout: float) -> str:
    cause = getattr(exc, "os_error", None)  # aiohttp.ClientConnectorError wraps the OSError
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused"
    return _reason(exc, timeout)
