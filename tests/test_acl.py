"""The ACL core (kvs/acl.py): rule resolution against a naive model, and policy validation."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvs import acl
from kvs.acl import DENY, READ, WRITE, Policy, Rule
from kvs.errors import BadRequest

RANK = {READ: 1, WRITE: 2, DENY: 3}


def naive(policies: list[Policy], action: str, key: str) -> bool:
    """The rule as written: the longest matching prefix over all rules of all policies;
    at equal length the strongest of deny > write > read; no match: denied."""
    if key.startswith(acl.RESERVED):
        return False
    matching = [r for p in policies for r in p.rules if key.startswith(r.prefix)]
    if not matching:
        return False
    longest = max(len(r.prefix) for r in matching)
    level = max((r.access for r in matching if len(r.prefix) == longest), key=RANK.__getitem__)
    return level == WRITE if action == WRITE else level in (READ, WRITE)


def naive_prefix(policies: list[Policy], action: str, prefix: str, keys: list[str]) -> bool:
    """may_prefix holds only if every key under the prefix is allowed (checked on samples)."""
    return all(naive(policies, action, k) for k in keys if k.startswith(prefix))


ALPHABET = "ab/"
prefixes = st.text(ALPHABET, max_size=4)
rules = st.lists(st.builds(Rule, prefixes, st.sampled_from(acl.ACCESS_LEVELS)), max_size=6,
                 unique_by=lambda r: r.prefix)
policies = st.lists(st.builds(Policy, st.just("p"), rules.map(tuple)), max_size=3)


@settings(max_examples=500)
@given(policies, st.text(ALPHABET, max_size=6), st.sampled_from([READ, WRITE]))
def test_resolution_matches_the_naive_model(ps: list[Policy], key: str, action: str) -> None:
    assert acl.authorize(ps, action, key) == naive(ps, action, key)


@settings(max_examples=300)
@given(policies, prefixes, st.sampled_from([READ, WRITE]))
def test_prefix_permission_implies_every_key_under_it(ps: list[Policy], prefix: str,
                                                      action: str) -> None:
    authorizer = acl.compile_policies(ps)
    under = [prefix + tail for tail in ["", "a", "b", "/", "aa", "a/", "b/a", "ab/b", "/a"]]
    if authorizer.may_prefix(action, prefix):
        assert naive_prefix(ps, action, prefix, under)


def test_longest_prefix_wins_and_deny_beats_allow_at_equal_length() -> None:
    app = Policy("app", (Rule("", READ), Rule("app/", WRITE), Rule("app/secret/", DENY)))
    assert acl.authorize([app], READ, "x") and not acl.authorize([app], WRITE, "x")
    assert acl.authorize([app], WRITE, "app/db")
    assert not acl.authorize([app], READ, "app/secret/k")
    other = Policy("other", (Rule("app/", DENY),))
    assert not acl.authorize([app, other], READ, "app/db")  # same prefix: deny wins
    assert acl.authorize([app, other], READ, "app")  # "app" is not under "app/"


def test_reserved_keys_are_out_of_reach_even_for_management() -> None:
    assert not acl.authorize([acl.MANAGEMENT], READ, "_acl/tokens/x")
    assert not acl.OPEN.may_write("_acl/policies/p")
    assert acl.OPEN.may_write("_aclx")


def test_flags() -> None:
    ops = Policy("ops", operator=READ)
    assert acl.authorize([ops], "operator:read") and not acl.authorize([ops], "operator:write")
    assert acl.authorize([ops, Policy("w", operator=WRITE)], "operator:write")
    assert not acl.authorize([ops], "management")
    assert acl.authorize([acl.MANAGEMENT], "management")


@pytest.mark.parametrize(("body", "problem"), [
    ({"name": "p", "rules": [{"prefix": "a", "access": "admin"}]},
     "rules[0].access must be one of read, write, deny, got 'admin'"),
    ({"name": "p", "rules": [{"prefix": "a\x00", "access": "read"}]},
     "rules[0].prefix 'a\\x00' is not a valid key prefix: key contains control character U+0000"),
    ({"name": "p", "rules": [{"prefix": "x" * 600, "access": "read"}]}, "the limit is 512"),
    ({"name": "p", "rules": [{"prefix": 3, "access": "read"}]}, "rules[0].prefix must be a string"),
    ({"name": "p", "rules": [{"prefix": "_acl/t", "access": "read"}]}, "is under '_acl/'"),
    ({"name": "p", "rules": [{"prefix": "a/", "access": "read"}, {"prefix": "b", "access": "read"},
                             {"prefix": "a/", "access": "deny"}]},
     "rules[0] and rules[2] overlap: both have prefix 'a/'"),
    ({"name": "p", "rules": [{"prefix": "a", "access": "read", "extra": 1}]},
     "unknown rule field 'extra'"),
    ({"name": "p", "rules": "a=read"}, "rules must be a list"),
    ({"name": "bad name"}, "policy name must be 1 to 128 characters"),
    ({"rules": []}, "missing field 'name'"),
    ({"name": "p", "operator": "admin"}, "operator must be null"),
    ({"name": "p", "management": "yes"}, "management must be true or false"),
    ({"name": "p", "colour": "red"}, "unknown policy field 'colour'"),
    ([], "a policy is a JSON object"),
])
def test_invalid_policies_are_refused_naming_the_problem(body: Any, problem: str) -> None:
    with pytest.raises(BadRequest) as caught:
        acl.parse_policy(body)
    assert problem in caught.value.message


def test_a_valid_policy_round_trips() -> None:
    body = {"name": "app", "description": "d", "rules": [{"prefix": "", "access": "read"}],
            "operator": "write", "management": False}
    policy = acl.parse_policy(body)
    assert policy.to_json() == body
    assert acl.policy_from_stored(policy.to_json()) == policy


@pytest.mark.parametrize(("secret", "problem"), [
    ("", "empty"), ("x" * 257, "longer than 256"), ("a b", "without spaces"), ("é", "ASCII")])
def test_malformed_secrets(secret: str, problem: str) -> None:
    assert problem in (acl.malformed_secret(secret) or "")
