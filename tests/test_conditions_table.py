"""The condition table (docs/api.md#conditions and #transactions), row by row.

Every condition (`cas: 0`, `cas: N`, `if_version`, `if_timestamp`, `if_value`) alone
and combined, through PUT (JSON body), DELETE (query parameters, `if_value` as JSON
text) and POST /txn ops, against present, never-written, deleted and expired keys,
and with CAS switched off. Every rejected request must leave the key exactly as it
was: same current version, same history, same node index.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson
import pytest

from kvs.node import Node
from tests.conftest import Api, NodeFactory, Reply, eventually

WRITE_RESULT = {"key", "version", "timestamp", "modify_index", "create_index", "expires_at"}
DELETE_RESULT = {"key", "version", "modify_index"}
METHODS = ["put", "delete", "txn_set", "txn_delete", "txn_check"]


# -- helpers ------------------------------------------------------------------------------

def meta(version: dict[str, Any]) -> dict[str, Any]:
    """A version object without its value: what a 409 reports as `current`."""
    return {k: v for k, v in version.items() if k != "value"}


def as_query(cond: dict[str, Any]) -> dict[str, str]:
    """DELETE takes the same conditions as query parameters; if_value is JSON text."""
    out = {}
    for name, value in cond.items():
        out[name] = orjson.dumps(value).decode() if name == "if_value" else str(value)
    return out


async def conditional(api: Api, method: str, key: str, cond: dict[str, Any],
                      value: Any = "new") -> Reply:
    if method == "put":
        return await api.put(key, {"value": value, **cond})
    if method == "delete":
        return await api.delete(key, **as_query(cond))
    op = {"txn_set": "set", "txn_delete": "delete", "txn_check": "check"}[method]
    body: dict[str, Any] = {"op": op, "key": key, **cond}
    if op == "set":
        body["value"] = value
    return await api.txn([body])


async def snapshot(api: Api, key: str) -> tuple[Any, ...]:
    """Everything a rejected request must not change: current, history, node index."""
    got = await api.get(key)
    history = await api.get(key, history="true")
    return got.status, got.body, history.status, history.body, got.index


async def present(api: Api, key: str, value: Any = "old") -> dict[str, Any]:
    put = await api.put(key, {"value": value})
    assert put.status == 200, put.body
    got = await api.get(key)
    assert got.status == 200
    return got.body


def assert_conflict(reply: Reply, method: str, key: str, current: dict[str, Any] | None,
                    *fragments: str) -> None:
    """409 cas_conflict naming expected vs actual, with `current` (or `failed` for a txn)."""
    assert reply.status == 409, (reply.status, reply.body)
    assert reply.body["error"] == "cas_conflict"
    assert isinstance(reply.body["message"], str) and reply.body["message"]
    if method.startswith("txn"):
        (failed,) = reply.body["failed"]
        assert failed["index"] == 0 and failed["key"] == key
        assert failed["current"] == current
        message = failed["message"]
    else:
        assert reply.body["current"] == current
        message = reply.body["message"]
    if current is not None:
        assert "value" not in current
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def assert_success(reply: Reply, method: str, key: str) -> None:
    assert reply.status == 200, (reply.status, reply.body)
    if method == "put":
        assert set(reply.body) == WRITE_RESULT
        assert reply.body["key"] == key
    elif method == "delete":
        assert set(reply.body) == DELETE_RESULT
        assert reply.body["key"] == key
    else:
        (result,) = reply.body["results"]
        assert result["key"] == key
        expected = {"txn_set": WRITE_RESULT, "txn_delete": DELETE_RESULT,
                    "txn_check": {"key", "ok", "version"}}[method]
        assert set(result) == expected


# -- present keys: each condition alone --------------------------------------------------

def _right(cur: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"cas": cur["modify_index"]},
        {"if_version": cur["version"]},
        {"if_timestamp": cur["timestamp"]},
        {"if_value": cur["value"]},
        {"cas": cur["modify_index"], "if_version": cur["version"],
         "if_timestamp": cur["timestamp"], "if_value": cur["value"]},
    ]


@pytest.mark.parametrize("method", METHODS)
async def test_holding_conditions_on_present_key_succeed(api: Api, method: str) -> None:
    for case in range(5):
        await _holding_case(api, method, f"k{case}", case)


async def _holding_case(api: Api, method: str, key: str, case: int) -> None:
    cur = await present(api, key, {"n": 1})
    reply = await conditional(api, method, key, _right(cur)[case])
    assert_success(reply, method, key)
    after = await api.get(key)
    if method in ("put", "txn_set"):
        result = reply.body if method == "put" else reply.body["results"][0]
        assert after.body["value"] == "new"
        assert after.body["version"] == result["version"]
        assert after.body["parent"] == cur["version"]
        assert result["modify_index"] == after.index > cur["modify_index"]
        assert result["create_index"] == cur["create_index"]  # an update, not a re-create
        assert result["expires_at"] is None
    elif method in ("delete", "txn_delete"):
        assert after.status == 404
        history = (await api.get(key, history="true")).body["revisions"]
        assert history[0]["deleted"] is True and history[0]["parent"] == cur["version"]
    else:  # a check writes nothing
        assert reply.body["results"][0] == {"key": key, "ok": True, "version": cur["version"]}
        assert after.body == cur and after.index == cur["modify_index"]


def _wrong(cur: dict[str, Any]) -> list[tuple[dict[str, Any], list[str]]]:
    """(conditions, fragments the message must contain: expected and actual)."""
    other = str(uuid.uuid4())
    mi, ts = cur["modify_index"], cur["timestamp"]
    return [
        ({"cas": 0}, ["cas=0", "absent", str(mi)]),
        ({"cas": mi + 7}, ["cas", str(mi + 7), str(mi)]),
        ({"if_version": other}, ["if_version", other, cur["version"]]),
        ({"if_timestamp": ts - 1}, ["if_timestamp", str(ts - 1), str(ts)]),
        ({"if_value": "other"}, ["if_value", '"other"', '{"n":1}']),
        # combined: all must hold, so one wrong among right ones fails, and only it is named
        ({"cas": mi, "if_version": cur["version"], "if_timestamp": ts, "if_value": "other"},
         ["if_value", '"other"']),
        ({"cas": mi + 1, "if_version": cur["version"], "if_value": {"n": 1}},
         ["cas", str(mi + 1)]),
        ({"cas": mi, "if_version": other, "if_timestamp": ts}, ["if_version", other]),
        ({"if_version": cur["version"], "if_timestamp": ts + 5}, ["if_timestamp", str(ts + 5)]),
        ({"cas": 0, "if_value": {"n": 1}}, ["cas=0"]),
    ]


@pytest.mark.parametrize("method", METHODS)
async def test_failing_conditions_on_present_key_conflict_and_change_nothing(
        api: Api, method: str) -> None:
    for case in range(10):
        key = f"k{case}"
        cur = await present(api, key, {"n": 1})
        before = await snapshot(api, key)
        cond, fragments = _wrong(cur)[case]
        reply = await conditional(api, method, key, cond)
        assert_conflict(reply, method, key, meta(cur), *fragments)
        assert reply.index == before[-1], cond
        assert await snapshot(api, key) == before, cond


async def test_conflict_message_names_every_failing_condition(api: Api) -> None:
    cur = await present(api, "k", 5)
    other = str(uuid.uuid4())
    reply = await api.put("k", {"value": 6, "cas": 99, "if_version": other,
                                "if_timestamp": 1, "if_value": 4})
    assert_conflict(reply, "put", "k", meta(cur), "99", other, cur["version"], "if_timestamp",
                    str(cur["timestamp"]), "if_value", "4", "5")


# -- if_value: JSON equality ---------------------------------------------------------------

EQUALITY = [
    # (stored value, if_value, holds?)
    (1, 1.0, True),
    (1.0, 1, True),
    (0, 0.0, True),
    (0, -0.0, True),
    (True, 1, False),
    (1, True, False),
    (False, 0, False),
    (0, False, False),
    ("1", 1, False),
    (1, "1", False),
    (None, False, False),
    ("", None, False),
    ([], {}, False),
    ([1, 2], [2, 1], False),
    ({"a": 1, "b": [1, 2]}, {"b": [1, 2], "a": 1}, True),
    ({"x": {"p": 1, "q": [1, {"z": 2.0, "y": True}]}},
     {"x": {"q": [1.0, {"y": True, "z": 2}], "p": 1}}, True),
    ({"x": {"p": 1, "q": [1, {"z": 2, "y": True}]}},
     {"x": {"q": [1, {"y": 1, "z": 2}], "p": 1}}, False),
    ({"a": 1}, {"a": 1, "b": None}, False),
    ({"a": None}, {}, False),
    ("naïve 🙂", "naïve 🙂", True),
    ("abc", "ABC", False),
    (12345678901234567, 12345678901234567, True),
    (12345678901234567, 12345678901234568, False),
]


@pytest.mark.parametrize("method", ["put", "delete", "txn_set"])
async def test_if_value_json_equality(api: Api, method: str) -> None:
    for n, (stored, expected, holds) in enumerate(EQUALITY):
        key = f"eq/{n}"
        # Each side goes out with its own key order: orjson keeps insertion order.
        cur = await present(api, key, stored)
        before = await snapshot(api, key)
        reply = await conditional(api, method, key, {"if_value": expected})
        if holds:
            assert reply.status == 200, (stored, expected, reply.body)
            assert_success(reply, method, key)
        else:
            assert reply.status == 409, (stored, expected, reply.body)
            assert_conflict(reply, method, key, meta(cur), "if_value")
            assert await snapshot(api, key) == before


async def test_if_value_null_matches_a_stored_null(api: Api) -> None:
    await present(api, "k", None)
    reply = await api.put("k", {"value": 1, "if_value": None})
    assert reply.status == 200
    reply = await api.delete("k", if_value="null")
    assert reply.status == 409  # now 1, not null
    reply = await api.delete("k", if_value="1")
    assert reply.status == 200


# -- absent, deleted and expired keys ------------------------------------------------------

async def _make_missing(api: Api, state: str, keys: list[str]) -> dict[str, dict[str, Any]]:
    """Put every key into `state`; return the last version each one had (for stale conditions)."""
    last: dict[str, dict[str, Any]] = {}
    if state == "absent":
        for key in keys:
            last[key] = {"modify_index": 1, "version": str(uuid.uuid4()), "timestamp": 1,
                         "value": "old"}
        return last
    for key in keys:
        body: dict[str, Any] = {"value": "old"}
        if state == "expired":
            body["ttl"] = 0.2
        assert (await api.put(key, body)).status == 200
        if state == "deleted":
            assert (await api.delete(key)).status == 200
        history = await api.get(key, history="true")
        last[key] = history.body["revisions"][0]

    async def all_gone() -> bool:
        return all([(await api.get(k)).status == 404 for k in keys])

    await eventually(all_gone, timeout=5, what="keys to expire")
    return last


def _stale_conditions(last: dict[str, Any]) -> list[dict[str, Any]]:
    """Conditions other than cas: 0, built from the version the key had before it went."""
    return [
        {"cas": last["modify_index"]},
        {"cas": 12345},
        {"if_version": last["version"]},
        {"if_timestamp": last["timestamp"]},
        {"if_value": last["value"]},
        {"if_value": None},  # a tombstone's value is null, but a deleted key has no value
        {"cas": 0, "if_value": "old"},  # cas: 0 with another condition still needs the key
        {"cas": last["modify_index"], "if_version": last["version"],
         "if_timestamp": last["timestamp"], "if_value": last["value"]},
    ]


STALE_COUNT = 8


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("state", ["absent", "deleted", "expired"])
async def test_conditions_on_missing_keys(api: Api, method: str, state: str) -> None:
    keys = [f"{state}/{i}" for i in range(STALE_COUNT + 1)]
    last = await _make_missing(api, state, keys)
    assert len(_stale_conditions(last[keys[0]])) == STALE_COUNT

    # Any condition but cas: 0 asks about a version that does not exist.
    for i, key in enumerate(keys[:-1]):
        cond = _stale_conditions(last[key])[i]
        before = await snapshot(api, key)
        reply = await conditional(api, method, key, cond)
        if method.startswith("txn"):
            # A transaction reports every failing op at once: 409 with current null.
            assert_conflict(reply, method, key, None, "not exist")
        else:
            assert reply.status == 404, (cond, reply.body)
            assert reply.body["error"] == "not_found" and reply.body["message"]
        assert await snapshot(api, key) == before, cond

    # cas: 0 holds on a missing key.
    key = keys[-1]
    before = await snapshot(api, key)
    reply = await conditional(api, method, key, {"cas": 0})
    if method == "delete":
        assert reply.status == 404 and reply.body["error"] == "not_found"  # nothing to delete
        assert await snapshot(api, key) == before
    elif method in ("put", "txn_set"):
        assert_success(reply, method, key)
        result = reply.body if method == "put" else reply.body["results"][0]
        after = await api.get(key)
        assert after.body["value"] == "new"
        assert result["create_index"] == result["modify_index"] == after.index  # re-created
        parent = None if state == "absent" else last[key]["version"]
        assert after.body["parent"] == parent
    elif method == "txn_delete":
        assert reply.body["results"] == [{"key": key, "version": None, "modify_index": None}]
        assert await snapshot(api, key) == before
    else:
        assert reply.body["results"] == [{"key": key, "ok": True, "version": None}]
        assert await snapshot(api, key) == before


# -- chaining ------------------------------------------------------------------------------

async def test_chained_cas_without_rereading(api: Api) -> None:
    first = await api.put("chain", {"value": 0, "cas": 0})
    assert first.status == 200 and set(first.body) == WRITE_RESULT
    prev = first.body
    created = prev["create_index"]
    for n in range(1, 6):
        reply = await api.put("chain", {"value": n, "cas": prev["modify_index"],
                                        "if_version": prev["version"],
                                        "if_timestamp": prev["timestamp"]})
        assert reply.status == 200, reply.body
        assert reply.body["modify_index"] > prev["modify_index"]
        assert reply.body["timestamp"] >= prev["timestamp"]
        assert reply.body["create_index"] == created
        stale = prev
        prev = reply.body
    # the previous identity is stale now
    reply = await api.put("chain", {"value": "x", "if_version": stale["version"]})
    assert reply.status == 409 and reply.body["current"]["version"] == prev["version"]
    # chaining through a transaction and a delete
    txn = await api.txn([{"op": "set", "key": "chain", "value": "t", "cas": prev["modify_index"]}])
    assert txn.status == 200
    prev = txn.body["results"][0]
    deleted = await api.delete("chain", cas=str(prev["modify_index"]), if_version=prev["version"])
    assert deleted.status == 200 and set(deleted.body) == DELETE_RESULT
    again = await api.put("chain", {"value": "back", "cas": 0})
    assert again.status == 200
    assert again.body["create_index"] == again.body["modify_index"] > created
    history = (await api.get("chain", history="true")).body["revisions"]
    assert [r["value"] for r in history[:3]] == ["back", None, "t"]


async def test_cas_zero_is_create_only(api: Api) -> None:
    assert (await api.put("once", {"value": 1, "cas": 0})).status == 200
    before = await snapshot(api, "once")
    reply = await api.put("once", {"value": 2, "cas": 0})
    assert reply.status == 409 and reply.body["error"] == "cas_conflict"
    assert await snapshot(api, "once") == before


# -- transactions --------------------------------------------------------------------------

async def test_txn_results_for_each_op(api: Api) -> None:
    cur = await present(api, "t/a", "A")
    await present(api, "t/d", "D")
    reply = await api.txn([
        {"op": "get", "key": "t/a"},
        {"op": "get", "key": "t/missing"},
        {"op": "check", "key": "t/a", "if_value": "A", "cas": cur["modify_index"]},
        {"op": "set", "key": "t/b", "value": [1, 2], "cas": 0, "flags": 7, "ttl": 60},
        {"op": "delete", "key": "t/d", "if_value": "D"},
        {"op": "delete", "key": "t/never"},
        {"op": "check", "key": "t/b", "if_value": [1, 2]},  # sees the earlier set
    ])
    assert reply.status == 200, reply.body
    got, missing, check, created, deleted, noop, check_b = reply.body["results"]
    assert got == (await api.get("t/a")).body
    assert missing is None
    assert check == {"key": "t/a", "ok": True, "version": cur["version"]}
    assert set(created) == WRITE_RESULT
    assert created["expires_at"] == created["timestamp"] + 60_000
    assert set(deleted) == DELETE_RESULT
    assert noop == {"key": "t/never", "version": None, "modify_index": None}
    assert check_b == {"key": "t/b", "ok": True, "version": created["version"]}
    b = (await api.get("t/b")).body
    assert b["value"] == [1, 2] and b["flags"] == 7 and b["version"] == created["version"]
    assert (await api.get("t/d")).status == 404
    # one transaction, one batch: consecutive indexes, header at the last one
    assert deleted["modify_index"] == created["modify_index"] + 1 == reply.index


async def test_txn_is_all_or_nothing(api: Api) -> None:
    await present(api, "t/c", "C")
    await present(api, "t/d", "D")
    keys = ["t/a", "t/b", "t/c", "t/d"]
    before = [await snapshot(api, k) for k in keys]
    reply = await api.txn([
        {"op": "set", "key": "t/a", "value": 1},
        {"op": "set", "key": "t/b", "value": 2, "cas": 0},
        {"op": "check", "key": "t/c", "if_value": "not C"},
        {"op": "delete", "key": "t/d"},
        {"op": "set", "key": "t/c", "value": "C2"},
    ])
    c = (await api.get("t/c")).body
    assert reply.status == 409 and reply.body["error"] == "cas_conflict"
    assert "nothing was written" in reply.body["message"]
    (failed,) = reply.body["failed"]
    assert failed["index"] == 2 and failed["key"] == "t/c"
    assert failed["current"] == meta(c)
    assert '"not C"' in failed["message"] and '"C"' in failed["message"]
    assert reply.index == before[0][-1]
    assert [await snapshot(api, k) for k in keys] == before


async def test_txn_reports_every_failing_op(api: Api) -> None:
    a = await present(api, "t/a", 1)
    await present(api, "t/b", 2)
    before = [await snapshot(api, k) for k in ("t/a", "t/b", "t/x")]
    reply = await api.txn([
        {"op": "set", "key": "t/a", "value": 10, "cas": a["modify_index"] + 50},
        {"op": "set", "key": "t/b", "value": 20, "if_value": 2},
        {"op": "delete", "key": "t/x", "if_version": str(uuid.uuid4())},
        {"op": "set", "key": "t/a", "value": 11, "cas": 0},
    ])
    assert reply.status == 409
    failed = reply.body["failed"]
    assert [(f["index"], f["key"]) for f in failed] == [(0, "t/a"), (2, "t/x"), (3, "t/a")]
    assert failed[0]["current"] == meta(a) and failed[1]["current"] is None
    assert failed[2]["current"] == meta(a)
    assert [await snapshot(api, k) for k in ("t/a", "t/b", "t/x")] == before


async def test_txn_later_op_sees_earlier_write(api: Api) -> None:
    reply = await api.txn([
        {"op": "set", "key": "t/a", "value": 1, "cas": 0},
        {"op": "set", "key": "t/a", "value": 2, "cas": 0},  # t/a exists by now
    ])
    assert reply.status == 409
    assert [f["index"] for f in reply.body["failed"]] == [1]
    assert (await api.get("t/a")).status == 404


async def test_txn_op_limit(make_node: NodeFactory, http: Any) -> None:
    node = await make_node(max_txn_ops=4)
    api = Api(http, node.url)
    probe = await api.put("probe", {"value": 0})
    ops = [{"op": "set", "key": f"t/{i}", "value": i} for i in range(5)]
    reply = await api.txn(ops)
    assert reply.status == 400 and reply.body["error"] == "bad_request"
    assert "max_txn_ops" in reply.body["message"]
    assert reply.index == probe.index
    assert (await api.get("t/0")).status == 404
    assert (await api.txn(ops[:4])).status == 200


async def test_txn_default_op_limit_is_128(api: Api) -> None:
    ops = [{"op": "set", "key": f"t/{i:03}", "value": i} for i in range(129)]
    before = (await api.get("t/000")).index
    reply = await api.txn(ops)
    assert reply.status == 400 and reply.index == before
    reply = await api.txn(ops[:128])
    assert reply.status == 200 and len(reply.body["results"]) == 128
    assert reply.index == before + 128


# -- cas_enabled: false --------------------------------------------------------------------

@pytest.fixture
async def nocas(make_node: NodeFactory, http: Any) -> tuple[Node, Api]:
    node = await make_node(cas_enabled=False)
    return node, Api(http, node.url)


NOCAS_CONDITIONS = [
    {"cas": 0}, {"cas": 3}, {"if_version": str(uuid.uuid4())}, {"if_timestamp": 5},
    {"if_value": "v"}, {"if_value": None}, {"if_value": False},
]


def assert_cas_disabled(reply: Reply) -> None:
    assert reply.status == 501, (reply.status, reply.body)
    assert reply.body["error"] == "cas_disabled"
    assert "cas_enabled" in reply.body["message"] and "not applied" in reply.body["message"]


@pytest.mark.parametrize("method", METHODS)
async def test_conditions_rejected_when_cas_disabled(nocas: tuple[Node, Api], method: str) -> None:
    _, api = nocas
    assert (await api.put("here", {"value": "v"})).status == 200  # unconditional works
    for cond in NOCAS_CONDITIONS:
        for key in ("here", "absent"):
            before = await snapshot(api, key)
            reply = await conditional(api, method, key, cond)
            assert reply.status == 501, (cond, key, reply.body)
            assert_cas_disabled(reply)
            assert await snapshot(api, key) == before, (cond, key)


async def test_txn_with_one_conditional_op_rejected_when_cas_disabled(
        nocas: tuple[Node, Api]) -> None:
    _, api = nocas
    await present(api, "t/b", "B")
    before = [await snapshot(api, k) for k in ("t/a", "t/b")]
    reply = await api.txn([
        {"op": "set", "key": "t/a", "value": 1},
        {"op": "delete", "key": "t/b"},
        {"op": "get", "key": "t/b", "if_value": "B"},
    ])
    assert_cas_disabled(reply)
    assert [await snapshot(api, k) for k in ("t/a", "t/b")] == before


async def test_unconditional_writes_work_when_cas_disabled(nocas: tuple[Node, Api]) -> None:
    _, api = nocas
    put = await api.put("k", {"value": 1, "ttl": 60, "flags": 3})
    assert put.status == 200 and set(put.body) == WRITE_RESULT
    assert (await api.get("k")).body["value"] == 1
    reply = await api.txn([{"op": "set", "key": "k", "value": 2}, {"op": "get", "key": "k"},
                           {"op": "check", "key": "k"}])
    assert reply.status == 200 and reply.body["results"][1]["value"] == 2
    assert (await api.delete("k")).status == 200
    assert (await api.get("k")).status == 404
