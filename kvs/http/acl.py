"""ACLs at the HTTP edge: the tokens and policies a node knows, who needs what, and /acl/.

    Tokens       the replicated store under _acl/ (kvs/acl.py: RESERVED), written only here
       │ engine listeners (local and remote versions, expiries)
       ▼
    Tokens.by_hash ── sha256(secret) -> Token          (a secret not seen since the last change)
       │ + the token's policies compiled into an Authorizer
       ▼
    Tokens._resolved ── secret -> (Token, Authorizer)  (emptied by any token or policy change)
       ▲
    Gate.rules / Gate.admit(request, need) ◄── the route wrapper (kvs/http/server.py), once
                                                per request

What each route needs is one table here (`need_of`), by method and path prefix; a route
the table does not name needs a valid token, so a new route is never open by mistake.
Which keys a token may touch is checked by the route groups with toolkit.require (named
keys) and Authorizer.may_read (listings, blocking queries), before the engine is called.

Tokens and policies are ordinary replicated versions, so they reach every node as any
write does (eager push, then anti-entropy), and a node's cache follows its store: a
deleted token stops working on a node as soon as the tombstone is applied there.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import hdrs, web

from kvs import acl
from kvs.clock import wall_ms
from kvs.conditions import Conditions
from kvs.config import Config
from kvs.engine import Engine, Op
from kvs.errors import ACLDisabled, BadRequest, CASConflict, Conflict, Forbidden, NotFound, Unauthorized
from kvs.http.cluster import DUMP_PATH
from kvs.http.snapshot import SNAPSHOT_PATH
from kvs.http.toolkit import check_params, json_body, json_response, parse_ttl, uint
from kvs.model import Version

log = logging.getLogger("kvs.acl")

# What a route needs (`need_of`).
PUBLIC = "public"            # nothing: anyone who reaches the port
PEER = "peer"                # the cluster secret's signature only (node-to-node routes)
TOKEN = "token"              # a valid token; the route checks each key it touches
OPERATOR_READ = "operator:read"
OPERATOR_WRITE = "operator:write"
MANAGEMENT = "management"

# (method or None for any, path prefix, need): the first match decides. "/" alone is exact.
ROUTE_NEEDS: tuple[tuple[str | None, str, str], ...] = (
    (None, "/acl/bootstrap", PUBLIC),   # refused (409) once done
    (None, "/acl/token/self", TOKEN),
    (None, "/acl/", MANAGEMENT),
    ("GET", "/cluster/", OPERATOR_READ),
    (None, "/cluster/", OPERATOR_WRITE),  # leave, members remove
    (None, SNAPSHOT_PATH, OPERATOR_WRITE),  # every key at once
    (None, DUMP_PATH, OPERATOR_WRITE),
    (None, "/internal/", PEER),
    (None, "/v1/status/", PUBLIC),      # as in Consul: leader and peers need no token
    (None, "/v1/agent/", OPERATOR_READ),
    (None, "/v1/catalog/nodes", OPERATOR_READ),
    (None, "/openapi.json", PUBLIC),
)
TOKEN_HEADERS = ("X-KVS-Token", "X-Consul-Token")
CONSUL_PREFIX = "/v1/"
MANAGEMENT_POLICY_KEY = acl.POLICY_PREFIX + acl.MANAGEMENT_POLICY
_CREATE_ONLY = Conditions(cas=0)


def need_of(method: str, path: str | None, config: Config) -> str:
    """What a route needs; `path` None: the fallback route (404/405 only)."""
    if path is None or path == "/":
        return PUBLIC
    for name in ("health", "metrics"):
        if path == f"/{name}":
            return PUBLIC if name in config.acl_anonymous_read else OPERATOR_READ
    for wanted, prefix, need in ROUTE_NEEDS:
        if (wanted is None or wanted == method) and path.startswith(prefix):
            return need
    return TOKEN


# -- the tokens and policies this node knows --------------------------------------------------

class Tokens:
    """The cache of _acl/ kept in step with the store by the engine's listeners."""

    def __init__(self, engine: Engine, now_ms: Callable[[], int] = wall_ms) -> None:
        self.engine = engine
        self.now_ms = now_ms
        self.policies: dict[str, acl.Policy] = {}
        self.tokens: dict[str, acl.Token] = {}           # id -> token
        self.by_hash: dict[str, acl.Token] = {}          # sha256(secret) -> token
        # secret -> its token and compiled rules: the hot path (see `resolve`). Only secrets
        # that matched a token enter, so it holds at most one entry per token; any change to
        # a token or policy empties it.
        self._resolved: dict[str, tuple[acl.Token, acl.Authorizer]] = {}

    def load(self) -> None:
        for version in self.engine.live(acl.RESERVED):
            self._apply(version.key, version)

    def on_applied(self, versions: list[Version]) -> None:
        """Engine listener: every committed version, local or remote (a loser too, so the
        key's current version is read back rather than taken from the list)."""
        for version in versions:
            if version.key.startswith(acl.RESERVED):
                self.refresh(version.key)

    def on_expired(self, keys: list[str]) -> None:
        for key in keys:
            if key.startswith(acl.RESERVED):
                self.refresh(key)

    def refresh(self, key: str) -> None:
        try:
            current: Version | None = self.engine.get(key)
        except NotFound:
            current = None
        self._apply(key, current)

    def _apply(self, key: str, current: Version | None) -> None:
        value = current.value if current is not None else None
        try:
            if key.startswith(acl.POLICY_PREFIX):
                self._set_policy(key.removeprefix(acl.POLICY_PREFIX), value)
            elif key.startswith(acl.TOKEN_PREFIX):
                self._set_token(key.removeprefix(acl.TOKEN_PREFIX), value)
        except (KeyError, TypeError, ValueError):  # not what this code writes: ignore it, loudly
            log.warning("event=acl_record_unreadable key=%r: ignored", key)

    def _set_policy(self, name: str, value: Any) -> None:
        if value is None:
            self.policies.pop(name, None)
        else:
            self.policies[name] = acl.policy_from_stored(value)
        self._resolved.clear()  # any token may hold it

    def _set_token(self, token_id: str, value: Any) -> None:
        old = self.tokens.pop(token_id, None)
        if old is not None:
            self.by_hash.pop(old.secret_hash, None)
        self._resolved.clear()  # keyed by secret: the old token's entry is not known by id
        if value is not None:
            token = acl.Token.from_stored(value)
            self.tokens[token_id] = self.by_hash[token.secret_hash] = token

    def resolve(self, secret: str) -> tuple[acl.Token, acl.Authorizer]:
        """The token whose secret this is, and its rules; Unauthorized if none is, or it expired.

        A secret seen before is found in `_resolved` by the secret itself: a dict probes by
        the string's keyed hash (SipHash, keyed at random per process) and compares
        characters only when that full 64-bit hash matches, so the time a wrong guess takes
        tells nothing of any stored secret. A secret not seen before goes the long way
        (`_match`), hashed with SHA-256 and compared in constant time."""
        found = self._resolved.get(secret)
        if found is None:
            found = self._match(secret)
            self._resolved[secret] = found
        token = found[0]
        if token.expires_at is not None and token.expired(self.now_ms()):
            raise Unauthorized(f"the ACL token {token.id} has expired", cause="expired")
        return found

    def _match(self, secret: str) -> tuple[acl.Token, acl.Authorizer]:
        """The token whose SHA-256 matches, and its rules compiled. The lookup is keyed by
        the hash, so its timing can only tell an attacker something about the hash of the
        guess; the match is then confirmed with a constant-time comparison of the hashes."""
        digest = acl.hash_secret(secret)
        token = self.by_hash.get(digest)
        if token is None or not hmac.compare_digest(token.secret_hash, digest):
            problem = acl.malformed_secret(secret)  # only here: a known secret is well formed
            if problem is not None:
                raise Unauthorized(f"malformed ACL token: {problem}", cause="malformed")
            raise Unauthorized("the ACL token is not known to this node (unknown, deleted, or "
                               "not replicated here yet)", cause="unknown")
        policies = [self.policies[name] for name in token.policies if name in self.policies]
        return token, acl.compile_policies(policies, token.id)


# -- the gate the route wrapper calls -----------------------------------------------------------

class Gate:
    def __init__(self, tokens: Tokens, config: Config) -> None:
        self.tokens = tokens
        self.config = config

    def need_of(self, method: str, path: str | None) -> str:
        return need_of(method, path, self.config)

    def admission(self, need: str) -> Callable[[web.Request], acl.Authorizer]:
        """The check of a route that needs `need`, chosen once per route: a KV route (a
        token, whatever its policies) calls `rules` directly, the hot path."""
        if need == TOKEN:
            return self.rules
        return lambda request: self.admit(request, need)

    def rules(self, request: web.Request) -> acl.Authorizer:
        """The rules of the request's token; Unauthorized if it carries no valid token."""
        secret = secret_of(request)
        if secret is None:
            raise Unauthorized("this request needs an ACL token: send Authorization: Bearer "
                               "<secret>, X-KVS-Token or X-Consul-Token (kvs: --token or "
                               "KVS_TOKEN)", cause="missing")
        return self.tokens.resolve(secret)[1]

    def admit(self, request: web.Request, need: str) -> acl.Authorizer:
        """The rules of the request's token, if it meets `need`; else Unauthorized (no valid
        token) or Forbidden (the token's policies do not grant it)."""
        authorizer = self.rules(request)
        if need in (OPERATOR_READ, OPERATOR_WRITE):
            if not authorizer.may_operate(need.removeprefix("operator:")):
                raise Forbidden(f"this token's policies do not grant {need} "
                                "(set \"operator\" in a policy)")
        elif need == MANAGEMENT and not authorizer.management:
            raise Forbidden("this token's policies do not grant ACL management")
        return authorizer


def carries_token(request: web.Request) -> bool:
    headers = request.headers
    return (hdrs.AUTHORIZATION in headers or any(h in headers for h in TOKEN_HEADERS)
            or (request.path.startswith(CONSUL_PREFIX) and "token" in request.query))


def secret_of(request: web.Request) -> str | None:
    """The token the request carries: Authorization: Bearer, X-KVS-Token or X-Consul-Token,
    and on Consul's /v1/ routes ?token= too; None if none. Unauthorized for an Authorization
    header of another scheme; Tokens.resolve tells a malformed token from an unknown one."""
    headers = request.headers
    raw = headers.get(hdrs.AUTHORIZATION)  # an istr: found without case-folding the name
    if raw is not None:
        if raw.startswith("Bearer "):  # what every client sends: no more parsing than this
            return raw[7:].strip()
        scheme, _, secret = raw.strip().partition(" ")
        if scheme.lower() != "bearer":
            raise Unauthorized("the Authorization header must be 'Bearer <token>'", cause="malformed")
        return secret.strip()
    secret = next((headers[h] for h in TOKEN_HEADERS if h in headers), None)
    if secret is None and request.path.startswith(CONSUL_PREFIX) and request.query_string:
        secret = request.query.get("token")
    return secret


def new_secret() -> str:
    """A token's secret: 256 random bits, URL-safe, never beginning with "-" (one in 64 did,
    and `kvs ... --token -x...` is then read as an unknown option)."""
    while (secret := secrets.token_urlsafe(32)).startswith("-"):
        pass
    return secret


# -- /acl/: administration ----------------------------------------------------------------------

TOKEN_FIELDS = frozenset({"description", "policies", "ttl", "expires_at"})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ACLApi:
    def __init__(self, config: Config, engine: Engine, tokens: Tokens) -> None:
        self.config = config
        self.engine = engine
        self.tokens = tokens

    def routes(self) -> list[web.RouteDef]:
        on = self._enabled
        return [
            web.post("/acl/bootstrap", on(self.bootstrap)),
            web.get("/acl/token/self", on(self.token_self)),
            web.get("/acl/policies", on(self.list_policies)),
            web.post("/acl/policies", on(self.create_policy)),
            web.get("/acl/policies/{name}", on(self.get_policy)),
            web.delete("/acl/policies/{name}", on(self.delete_policy)),
            web.get("/acl/tokens", on(self.list_tokens)),
            web.post("/acl/tokens", on(self.create_token)),
            web.get("/acl/tokens/{id}", on(self.get_token)),
            web.delete("/acl/tokens/{id}", on(self.delete_token)),
        ]

    def _enabled(self, handler: Handler) -> Handler:
        async def checked(request: web.Request) -> web.StreamResponse:
            if not self.config.acl_enabled:
                raise ACLDisabled()
            check_params(request.query, frozenset())
            return await handler(request)

        return checked

    # -- bootstrap --------------------------------------------------------------------------

    async def bootstrap(self, request: web.Request) -> web.Response:
        """The first management token, once. Create-only on this node's store: see docs/acl.md
        for what that does and does not guarantee across nodes."""
        token, secret = self._new_token((acl.MANAGEMENT_POLICY,), "bootstrap management token", None)
        marker = {"token_id": token.id, "at": token.created_at}
        ops = [Op("set", acl.BOOTSTRAP_KEY, marker, cond=_CREATE_ONLY),
               Op("set", MANAGEMENT_POLICY_KEY, acl.MANAGEMENT.to_json()),
               Op("set", acl.TOKEN_PREFIX + token.id, token.stored())]
        try:
            await self.engine.txn(ops, internal=True)
        except CASConflict:
            raise Conflict("ACLs were bootstrapped already; ask a holder of a management "
                           "token for a token") from None
        log.info("event=acl_bootstrap token=%s", token.id)
        return json_response({**token.to_json(), "secret": secret})

    # -- policies ---------------------------------------------------------------------------

    async def list_policies(self, request: web.Request) -> web.Response:
        policies = sorted(self.tokens.policies.values(), key=lambda p: p.name)
        return json_response({"policies": [p.to_json() for p in policies]})

    async def create_policy(self, request: web.Request) -> web.Response:
        policy = acl.parse_policy(await json_body(request))
        await self._create(acl.POLICY_PREFIX + policy.name, policy.to_json(), None,
                           f"policy {policy.name!r} exists already; delete it first to replace it")
        return json_response(policy.to_json())

    def _policy(self, request: web.Request) -> acl.Policy:
        name = acl.name(request.match_info["name"], "policy")
        policy = self.tokens.policies.get(name)
        if policy is None:
            raise NotFound(f"policy {name!r} not found")
        return policy

    async def get_policy(self, request: web.Request) -> web.Response:
        return json_response(self._policy(request).to_json())

    async def delete_policy(self, request: web.Request) -> web.Response:
        policy = self._policy(request)
        if policy.name == acl.MANAGEMENT_POLICY:
            raise BadRequest(f"policy {acl.MANAGEMENT_POLICY!r} is built in and cannot be deleted")
        await self._delete(acl.POLICY_PREFIX + policy.name, f"policy {policy.name!r} not found")
        return json_response({"deleted": policy.name})

    # -- tokens -----------------------------------------------------------------------------

    async def list_tokens(self, request: web.Request) -> web.Response:
        tokens = sorted(self.tokens.tokens.values(), key=lambda t: (t.created_at, t.id))
        return json_response({"tokens": [t.to_json() for t in tokens]})

    async def create_token(self, request: web.Request) -> web.Response:
        body = await json_body(request, dict)
        acl.known_fields(body, TOKEN_FIELDS, "token")
        policies = body.get("policies")
        if (not isinstance(policies, list) or not policies
                or not all(isinstance(p, str) for p in policies)):
            raise BadRequest("policies must be a non-empty list of policy names")
        missing = [p for p in policies if p not in self.tokens.policies]
        if missing:
            raise BadRequest(f"unknown policy {missing[0]!r}; create it first (kvs acl policy create)")
        ttl_ms = self._ttl_ms(body)
        token, secret = self._new_token(tuple(dict.fromkeys(policies)),
                                        acl.description(body.get("description", "")), ttl_ms)
        await self._create(acl.TOKEN_PREFIX + token.id, token.stored(), ttl_ms, "token id collision")
        return json_response({**token.to_json(), "secret": secret})

    def _ttl_ms(self, body: dict[str, Any]) -> int | None:
        if "ttl" in body and "expires_at" in body:
            raise BadRequest("give ttl or expires_at, not both")
        if "ttl" in body:
            return parse_ttl(body["ttl"])
        if "expires_at" in body:
            ttl_ms = uint("expires_at", body["expires_at"]) - self.engine.now_ms()
            if ttl_ms <= 0:
                raise BadRequest("expires_at (ms since the epoch) is not in the future")
            return parse_ttl(ttl_ms / 1000)
        return None

    def _token(self, request: web.Request) -> acl.Token:
        raw = request.match_info["id"]
        try:
            token_id = str(uuid.UUID(raw))
        except ValueError:
            raise BadRequest(f"token id {raw[:80]!r} is not a UUID (the id, or accessor, that "
                             "kvs acl token list shows; not the secret)") from None
        token = self.tokens.tokens.get(token_id)
        if token is None:
            raise NotFound(f"token {token_id} not found")
        return token

    async def get_token(self, request: web.Request) -> web.Response:
        return json_response(self._token(request).to_json())

    async def token_self(self, request: web.Request) -> web.Response:
        secret = secret_of(request)
        assert secret is not None  # the wrapper admitted it
        return json_response(self.tokens.resolve(secret)[0].to_json())

    async def delete_token(self, request: web.Request) -> web.Response:
        token = self._token(request)
        await self._delete(acl.TOKEN_PREFIX + token.id, f"token {token.id} not found")
        return json_response({"deleted": token.id})

    # -- writes -----------------------------------------------------------------------------

    def _new_token(self, policies: tuple[str, ...], description: str,
                   ttl_ms: int | None) -> tuple[acl.Token, str]:
        secret = new_secret()
        now = self.engine.now_ms()
        token = acl.Token(str(uuid.uuid4()), acl.hash_secret(secret), policies, description,
                          now + ttl_ms if ttl_ms is not None else None, now)
        return token, secret

    async def _create(self, key: str, value: Any, ttl_ms: int | None, exists: str) -> None:
        try:
            await self.engine.put(Op("set", key, value, ttl_ms, cond=_CREATE_ONLY), internal=True)
        except CASConflict:
            raise Conflict(exists) from None

    async def _delete(self, key: str, missing: str) -> None:
        try:
            await self.engine.delete(key)
        except NotFound:
            raise NotFound(missing) from None

