"""Client ACLs: policies of prefix rules, tokens that carry policies, and the decision.

Consul's model. A policy is a list of prefix rules plus two flags:

    {"name": "app-rw", "rules": [{"prefix": "app/", "access": "write"},
                                 {"prefix": "app/secret/", "access": "deny"}],
     "operator": "read",        # none | read (GET /cluster/*, /metrics) | write (+ members
                                #   remove, leave, snapshot, dump)
     "management": false}       # ACL administration (/acl/policies, /acl/tokens)

A token (its accessor `id`, its `secret` stored only as a SHA-256 hash) carries policy
names. Its rules are the union of its policies' rules, resolved per key:

* the longest rule prefix that the key starts with decides (no rule: denied);
* at equal length (two policies name the same prefix) deny beats write beats read.

    rules  ""→read  "app/"→write  "app/secret/"→deny
    key    "x"       read     (only "" matches)
           "app/db"  write    ("app/" is longer than "")
           "app/secret/k"  denied

`Authorizer` is that resolution compiled once per token: the prefixes sorted, each with
the index of its longest proper prefix in the set (its parent). The longest prefix of a
key is then the greatest prefix <= key (one bisect) or, if that one is not a prefix of
the key, one of its parents: whatever lies between a prefix P of the key and the key, in
byte order, starts with P. A lookup is one bisect and a walk up a chain as long as the
rules are nested deep (usually 1 to 3), whatever the number of rules.

Keys under RESERVED (the tokens and policies themselves, replicated like any data) are
never readable or writable through the client KV APIs, whatever the token.

Pure: no I/O; the HTTP edge (kvs/http/acl.py) keeps the tokens and policies and asks here.
"""

from __future__ import annotations

import hashlib
import re
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kvs.errors import BadRequest
from kvs.keys import validate_key

RESERVED = "_acl/"
POLICY_PREFIX = RESERVED + "policies/"
TOKEN_PREFIX = RESERVED + "tokens/"
BOOTSTRAP_KEY = RESERVED + "bootstrap"
MANAGEMENT_POLICY = "global-management"

READ, WRITE, DENY = "read", "write", "deny"
ACCESS_LEVELS = (READ, WRITE, DENY)
OPERATOR_LEVELS = (READ, WRITE)
# Merging rules of one prefix from several policies: the larger rank wins.
_RANK = {READ: 1, WRITE: 2, DENY: 3}

NAME = re.compile(r"[A-Za-z0-9._-]{1,128}")
MAX_RULES = 1000
MAX_DESCRIPTION = 256
MAX_SECRET = 256  # a longer token is malformed, never looked up
POLICY_FIELDS = frozenset({"name", "description", "rules", "operator", "management"})
RULE_FIELDS = frozenset({"prefix", "access"})


def hash_secret(secret: str) -> str:
    """The stored form of a token's secret.

    A plain SHA-256 suffices: secrets are 256 random bits made by the node, so nobody can
    guess one from its hash by trying candidates, which is the attack slow password hashes
    (bcrypt, argon2) are for; and they would cost every request milliseconds.
    """
    return hashlib.sha256(secret.encode()).hexdigest()


# -- policies ----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Rule:
    prefix: str
    access: str

    def to_json(self) -> dict[str, str]:
        return {"prefix": self.prefix, "access": self.access}


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    rules: tuple[Rule, ...] = ()
    operator: str | None = None
    management: bool = False
    description: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description,
                "rules": [r.to_json() for r in self.rules], "operator": self.operator,
                "management": self.management}


MANAGEMENT = Policy(MANAGEMENT_POLICY, (Rule("", WRITE),), WRITE, True,
                    "built in: every key, operator write, ACL administration")


def parse_policy(body: Any) -> Policy:
    """A policy from its JSON form; BadRequest names the first problem."""
    if not isinstance(body, dict):
        raise BadRequest("a policy is a JSON object like {\"name\": \"app\", \"rules\": "
                         "[{\"prefix\": \"app/\", \"access\": \"write\"}]}")
    known_fields(body, POLICY_FIELDS, "policy")
    if "name" not in body:
        raise BadRequest("missing field 'name'")
    rules = body.get("rules", [])
    if not isinstance(rules, list):
        raise BadRequest("rules must be a list of {\"prefix\", \"access\"} objects")
    if len(rules) > MAX_RULES:
        raise BadRequest(f"{len(rules)} rules; a policy holds at most {MAX_RULES}")
    parsed = tuple(_rule(i, raw) for i, raw in enumerate(rules))
    _no_overlap(parsed)
    operator = body.get("operator")
    if operator is not None and operator not in OPERATOR_LEVELS:
        raise BadRequest(f"operator must be null, \"read\" or \"write\", got {operator!r}")
    management = body.get("management", False)
    if not isinstance(management, bool):
        raise BadRequest(f"management must be true or false, got {management!r}")
    return Policy(name(body["name"], "policy"), parsed, operator, management,
                  description(body.get("description", "")))


def known_fields(body: dict[str, Any], allowed: frozenset[str], what: str) -> None:
    """BadRequest naming the first field of `body` that is not `allowed`."""
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise BadRequest(f"unknown {what} field {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}")


def name(raw: Any, what: str) -> str:
    if not isinstance(raw, str) or not NAME.fullmatch(raw):
        raise BadRequest(f"{what} name must be 1 to 128 characters of A-Z a-z 0-9 . _ -, got {raw!r}")
    return raw


def description(raw: Any) -> str:
    if not isinstance(raw, str) or len(raw) > MAX_DESCRIPTION:
        raise BadRequest(f"description must be a string of at most {MAX_DESCRIPTION} characters")
    return raw


def _rule(index: int, raw: Any) -> Rule:
    where = f"rules[{index}]"
    if not isinstance(raw, dict):
        raise BadRequest(f"{where} must be an object like {{\"prefix\": \"app/\", \"access\": \"read\"}}")
    known_fields(raw, RULE_FIELDS, "rule")
    prefix, access = raw.get("prefix"), raw.get("access")
    if not isinstance(prefix, str):
        raise BadRequest(f"{where}.prefix must be a string (\"\" for every key), got {prefix!r}")
    try:
        validate_key(prefix, prefix=True)
    except BadRequest as exc:
        raise BadRequest(f"{where}.prefix {prefix[:80]!r} is not a valid key prefix: {exc.message}") from None
    if prefix.startswith(RESERVED):
        raise BadRequest(f"{where}.prefix {prefix!r} is under {RESERVED!r}, which no token can "
                         "reach through the KV APIs; administer ACLs through /acl/")
    if access not in ACCESS_LEVELS:
        raise BadRequest(f"{where}.access must be one of {', '.join(ACCESS_LEVELS)}, got {access!r}")
    return Rule(prefix, access)


def _no_overlap(rules: Sequence[Rule]) -> None:
    """Two rules on the same prefix in one policy: which one was meant cannot be told."""
    first: dict[str, int] = {}
    for i, rule in enumerate(rules):
        if rule.prefix in first:
            raise BadRequest(f"rules[{first[rule.prefix]}] and rules[{i}] overlap: both have prefix "
                             f"{rule.prefix!r}; keep one rule per prefix")
        first[rule.prefix] = i


# -- tokens -----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Token:
    id: str                      # the accessor: names the token in listings, never authenticates
    secret_hash: str
    policies: tuple[str, ...]
    description: str = ""
    expires_at: int | None = None  # ms since the epoch
    created_at: int = 0

    def expired(self, now_ms: int) -> bool:
        return self.expires_at is not None and now_ms >= self.expires_at

    def to_json(self) -> dict[str, Any]:
        """What listings show: never the secret (nor its hash)."""
        return {"id": self.id, "description": self.description, "policies": list(self.policies),
                "expires_at": self.expires_at, "created_at": self.created_at}

    def stored(self) -> dict[str, Any]:
        return {**self.to_json(), "secret_hash": self.secret_hash}

    @classmethod
    def from_stored(cls, data: Mapping[str, Any]) -> Token:
        return cls(data["id"], data["secret_hash"], tuple(data["policies"]),
                   data.get("description", ""), data.get("expires_at"), data.get("created_at", 0))


def policy_from_stored(data: Mapping[str, Any]) -> Policy:
    return Policy(data["name"], tuple(Rule(r["prefix"], r["access"]) for r in data["rules"]),
                  data.get("operator"), bool(data.get("management")), data.get("description", ""))


def malformed_secret(secret: str) -> str | None:
    """Why `secret` cannot be a token's secret (None: it may be one)."""
    if not secret:
        return "the token is empty"
    if len(secret) > MAX_SECRET:
        return f"the token is longer than {MAX_SECRET} characters"
    if not secret.isascii() or not secret.isprintable() or " " in secret:
        return "the token must be printable ASCII without spaces"
    return None


# -- the decision -----------------------------------------------------------------------------

@dataclass(slots=True)
class Authorizer:
    """One token's rules, compiled (see the module docstring); `token_id` None: ACLs are off."""

    prefixes: list[str]
    levels: list[str]
    parents: list[int]
    operator: str | None = None
    management: bool = False
    token_id: str | None = None
    everything: bool = field(default=False)  # the single rule "" -> write: no lookup needed

    def level(self, key: str) -> str | None:
        """The access the longest matching rule grants (read, write, deny), None if none."""
        prefixes = self.prefixes
        i = bisect_right(prefixes, key) - 1
        while i >= 0 and not key.startswith(prefixes[i]):
            i = self.parents[i]
        return self.levels[i] if i >= 0 else None

    def may_read(self, key: str) -> bool:
        if key.startswith(RESERVED):
            return False
        return self.everything or self.level(key) in (READ, WRITE)

    def may_write(self, key: str) -> bool:
        if key.startswith(RESERVED):
            return False
        return self.everything or self.level(key) == WRITE

    def may(self, action: str, key: str) -> bool:
        return self.may_write(key) if action == WRITE else self.may_read(key)

    def may_prefix(self, action: str, prefix: str) -> bool:
        """`action` on every key that starts with `prefix`, whichever exist: the prefix's own
        level allows it and no longer rule under it takes it away (Consul's KeyWritePrefix).
        It does not depend on the data, so a refusal tells nothing of which keys exist."""
        if self.everything:
            return True
        allowed = (WRITE,) if action == WRITE else (READ, WRITE)
        if self.level(prefix) not in allowed:
            return False
        prefixes, levels = self.prefixes, self.levels
        for i in range(bisect_right(prefixes, prefix), len(prefixes)):  # no copy of the rules
            if not prefixes[i].startswith(prefix):
                break
            if levels[i] not in allowed:
                return False
        return True

    def may_operate(self, level: str) -> bool:
        return self.operator == WRITE or self.operator == level


def compile_policies(policies: Iterable[Policy], token_id: str | None = None) -> Authorizer:
    """The Authorizer of a token holding these policies."""
    merged: dict[str, str] = {}
    operator: str | None = None
    management = False
    for policy in policies:
        for rule in policy.rules:
            held = merged.get(rule.prefix)
            if held is None or _RANK[rule.access] > _RANK[held]:
                merged[rule.prefix] = rule.access
        if policy.operator is not None and (operator is None or policy.operator == WRITE):
            operator = policy.operator
        management = management or policy.management
    prefixes = sorted(merged)
    index = {p: i for i, p in enumerate(prefixes)}
    parents = [_parent(p, index) for p in prefixes]
    return Authorizer(prefixes, [merged[p] for p in prefixes], parents, operator, management,
                      token_id, everything=merged == {"": WRITE})


def _parent(prefix: str, index: Mapping[str, int]) -> int:
    for cut in range(len(prefix) - 1, -1, -1):
        found = index.get(prefix[:cut])
        if found is not None:
            return found
    return -1


def authorize(policies: Sequence[Policy], action: str, key: str = "") -> bool:
    """Whether a token with `policies` may do `action`: read or write on `key`, or
    operator:read, operator:write or management (key ignored). The hot path keeps the
    compiled Authorizer instead of calling this."""
    authorizer = compile_policies(policies)
    if action in (READ, WRITE):
        return authorizer.may(action, key)
    if action.startswith("operator:"):
        return authorizer.may_operate(action.removeprefix("operator:"))
    if action == "management":
        return authorizer.management
    raise ValueError(f"unknown action {action!r}")


# ACLs off: every key but the reserved ones, every operation.
OPEN = compile_policies([MANAGEMENT])
