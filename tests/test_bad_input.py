"""Hostile and malformed input (docs/api.md#errors): a 4xx with {"error", "message"}, never a 500,
and nothing changes — the node's index (X-KVS-Index) and a probe key stay exactly as they were.

Paths go out byte-exact (yarl `encoded=True`), so the server sees %00, %FF, %C3%28 as sent.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from yarl import URL

from kvs.engine import Op
from kvs.node import Node
from tests.conftest import Api, NodeFactory, Reply

PROBE = {"value": {"probe": [1, "two", None]}, "flags": 9}


# -- helpers ------------------------------------------------------------------------------

async def raw(api: Api, method: str, path: str, data: bytes | None = None) -> Reply:
    """A request whose path and query are sent exactly as written (already percent-encoded)."""
    url = URL(api.url + path, encoded=True)
    async with api.session.request(method, url, data=data) as resp:
        body = await resp.read()
        try:
            parsed = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            parsed = body.decode(errors="replace")
        return Reply(resp.status, parsed, resp.headers)


async def state(api: Api) -> tuple[Any, ...]:
    probe = await api.get("probe")
    history = await api.get("probe", history="true")
    listing = await api.get("", keys="true")
    return probe.index, probe.body, history.body, listing.body


@pytest.fixture
async def before(api: Api) -> tuple[Any, ...]:
    assert (await api.put("probe", PROBE)).status == 200
    return await state(api)


def assert_error(reply: Reply, status: int, code: str | None = None, what: Any = None) -> None:
    assert reply.status == status, (what, reply.status, reply.body)
    assert isinstance(reply.body, dict), (what, reply.body)
    assert isinstance(reply.body.get("error"), str) and reply.body["error"], what
    assert isinstance(reply.body.get("message"), str) and reply.body["message"], what
    if code is not None:
        assert reply.body["error"] == code, (what, reply.body)


async def assert_rejected(api: Api, before: tuple[Any, ...], reply: Reply, status: int = 400,
                          code: str | None = "bad_request", what: Any = None) -> None:
    assert_error(reply, status, code, what)
    assert await state(api) == before, what


def batches(name: str, cases: list[Any], size: int = 12) -> pytest.MarkDecorator:
    """Parametrize over groups of cases: one node per group keeps the suite fast."""
    groups = [cases[i:i + size] for i in range(0, len(cases), size)]
    return pytest.mark.parametrize(name, groups, ids=[f"{i * size}-{i * size + len(g) - 1}"
                                                      for i, g in enumerate(groups)])


# -- PUT bodies ----------------------------------------------------------------------------

def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


BAD_BODIES: list[tuple[str, bytes]] = [
    ("malformed", b'{"value": 1'),
    ("trailing comma", b'{"value": 1,}'),
    ("single quotes", b"{'value': 1}"),
    ("empty", b""),
    ("whitespace", b"   \n"),
    ("list", b"[]"),
    ("list of object", b'[{"value": 1}]'),
    ("string", b'"value"'),
    ("number", b"42"),
    ("null", b"null"),
    ("true", b"true"),
    ("missing value", b"{}"),
    ("missing value with ttl", b'{"ttl": 5}'),
    ("unknown field", b'{"value": 1, "vaule": 2}'),
    ("unknown field only", b'{"val": 1}'),
    ("key in body", b'{"value": 1, "key": "other"}'),
    ("op in body", b'{"value": 1, "op": "set"}'),
    ("ttl string", b'{"value": 1, "ttl": "5"}'),
    ("ttl bool", b'{"value": 1, "ttl": true}'),
    ("ttl list", b'{"value": 1, "ttl": [5]}'),
    ("ttl object", b'{"value": 1, "ttl": {"s": 5}}'),
    ("ttl null", b'{"value": 1, "ttl": null}'),
    ("ttl zero", b'{"value": 1, "ttl": 0}'),
    ("ttl zero float", b'{"value": 1, "ttl": 0.0}'),
    ("ttl negative zero", b'{"value": 1, "ttl": -0.0}'),
    ("ttl negative", b'{"value": 1, "ttl": -1}'),
    ("ttl negative float", b'{"value": 1, "ttl": -0.5}'),
    ("ttl 1e30", b'{"value": 1, "ttl": 1e30}'),
    ("ttl 10**30", b'{"value": 1, "ttl": 1000000000000000000000000000000}'),
    ("value 10**30 (would lose digits as a float)", b'{"value": 1000000000000000000000000000000}'),
    ("value -10**30", b'{"value": -1000000000000000000000000000000}'),
    ("if_value 10**30", b'{"value": 1, "if_value": 1000000000000000000000000000000}'),
    ("ttl over ten years", b'{"value": 1, "ttl": 315360001}'),
    ("ttl 1e400", b'{"value": 1, "ttl": 1e400}'),
    ("ttl NaN", b'{"value": 1, "ttl": NaN}'),
    ("ttl Infinity", b'{"value": 1, "ttl": Infinity}'),
    ("ttl -Infinity", b'{"value": 1, "ttl": -Infinity}'),
    ("value NaN", b'{"value": NaN}'),
    ("value Infinity", b'{"value": [Infinity]}'),
    ("flags negative", b'{"value": 1, "flags": -1}'),
    ("flags float", b'{"value": 1, "flags": 1.5}'),
    ("flags integral float", b'{"value": 1, "flags": 1.0}'),
    ("flags bool", b'{"value": 1, "flags": true}'),
    ("flags 2**64", b'{"value": 1, "flags": 18446744073709551616}'),
    ("flags string", b'{"value": 1, "flags": "1"}'),
    ("flags null", b'{"value": 1, "flags": null}'),
    ("cas negative", b'{"value": 1, "cas": -1}'),
    ("cas bool", b'{"value": 1, "cas": false}'),
    ("cas string", b'{"value": 1, "cas": "0"}'),
    ("cas float", b'{"value": 1, "cas": 0.0}'),
    ("cas 2**64", b'{"value": 1, "cas": 18446744073709551616}'),
    ("cas null", b'{"value": 1, "cas": null}'),
    ("if_version not uuid", b'{"value": 1, "if_version": "not-a-uuid"}'),
    ("if_version empty", b'{"value": 1, "if_version": ""}'),
    ("if_version number", b'{"value": 1, "if_version": 123}'),
    ("if_version null", b'{"value": 1, "if_version": null}'),
    ("if_timestamp string", b'{"value": 1, "if_timestamp": "1700000000000"}'),
    ("if_timestamp negative", b'{"value": 1, "if_timestamp": -5}'),
    ("if_timestamp float", b'{"value": 1, "if_timestamp": 1.5}'),
    ("if_timestamp bool", b'{"value": 1, "if_timestamp": true}'),
    ("nested 10000", b'{"value": ' + _nested(10_000) + b"}"),
    ("nested 1000", b'{"value": ' + _nested(1000) + b"}"),
    ("nested 300", b'{"value": ' + _nested(300) + b"}"),
    ("nested 254", b'{"value": ' + _nested(254) + b"}"),
    ("nested 129", b'{"value": ' + _nested(129) + b"}"),
    ("nested objects 200", b'{"value": ' + b'{"a":' * 200 + b"1" + b"}" * 200 + b"}"),
    ("if_value nested 300", b'{"value": 1, "if_value": ' + _nested(300) + b"}"),
    ("bare nesting", _nested(10_000)),
    ("non-UTF-8 in string", b'{"value": "\xff\xfe"}'),
    ("non-UTF-8 body", b"\xff\xfe\x00{"),
    ("latin-1 body", '{"value": "café"}'.encode("latin-1")),
    ("lone surrogate escape", b'{"value": "\\ud800"}'),
    ("duplicate body", b'{"value": 1}{"value": 2}'),
    ("comment", b'{"value": 1 /* no */}'),
]


@batches("cases", BAD_BODIES)
async def test_bad_put_body(api: Api, before: tuple[Any, ...], cases: list[tuple[str, bytes]]) -> None:
    for name, body in cases:
        reply = await raw(api, "PUT", "/kv/target", body)
        await assert_rejected(api, before, reply, what=name)
        assert reply.index == before[0], name  # errors carry the header too
        reply = await raw(api, "PUT", "/kv/probe", body)  # nor does it touch an existing key
        await assert_rejected(api, before, reply, what=name)


async def test_bad_put_bodies_are_400_even_when_cas_disabled(make_node: NodeFactory,
                                                             http: Any) -> None:
    node = await make_node(cas_enabled=False)
    api = Api(http, node.url)
    assert (await api.put("probe", PROBE)).status == 200
    before = await state(api)
    for name, body in BAD_BODIES:
        await assert_rejected(api, before, await raw(api, "PUT", "/kv/probe", body), what=name)


async def test_accepted_edge_values(api: Api) -> None:
    """What is accepted, and how it comes back (values are JSON: numbers are i64/u64/f64)."""
    cases: list[tuple[bytes, Any]] = [
        (b'{"value": 18446744073709551615}', 2**64 - 1),
        (b'{"value": -9223372036854775808}', -(2**63)),
        (b'{"value": 1e308}', 1e308),
        (b'{"value": ' + _nested(128) + b"}", orjson.loads(_nested(128))),
        (b'{"value": "\\u0000 nul and \\n newline are fine in values"}',
         "\x00 nul and \n newline are fine in values"),
    ]
    for body, expected in cases:
        put = await raw(api, "PUT", "/kv/edge", body)
        assert put.status == 200, (body[:60], put.body)
        got = await api.get("edge")
        assert got.body["value"] == expected
        assert type(got.body["value"]) is type(expected)
        history = await api.get("edge", history="true")
        assert history.status == 200 and history.body["revisions"][0]["value"] == expected
    # a string of digits inside a value is not an integer: no 64-bit limit applies
    reply = await raw(api, "PUT", "/kv/edge", b'{"value": "1000000000000000000000000000000"}')
    assert reply.status == 200
    flags = await api.put("edge", {"value": 1, "flags": 2**64 - 1, "ttl": 1e-9})
    assert flags.status == 200
    assert flags.body["expires_at"] == flags.body["timestamp"] + 1  # ttl rounds up to 1 ms
    assert (await api.put("edge", {"value": 1, "ttl": 315360000})).status == 200


# -- keys ----------------------------------------------------------------------------------

BAD_KEYS = [
    ("empty", ""),
    ("513 ascii", "a" * 513),
    ("513 bytes of 2-byte chars", "%C3%A9" * 256 + "a"),
    ("516 bytes of emoji", "%F0%9F%98%80" * 129),
    ("NUL", "%00"),
    ("NUL inside", "a%00b"),
    ("newline", "%0A"),
    ("newline inside", "a/b%0Ac"),
    ("carriage return", "a%0D"),
    ("tab", "%09"),
    ("unit separator", "%1F"),
    ("DEL", "%7F"),
    ("C1 NEL", "%C2%85"),
    ("C1 last", "%C2%9F"),
    ("invalid byte", "%FF"),
    ("invalid byte inside", "ok/%FF/ok"),
    ("bad continuation", "%C3%28"),
    ("truncated sequence", "%E2%82"),
    ("overlong slash", "%C0%AF"),
    ("encoded surrogate", "%ED%A0%80"),
]


@pytest.mark.parametrize("method", ["PUT", "GET", "DELETE"])
async def test_bad_key(api: Api, before: tuple[Any, ...], method: str) -> None:
    body = b'{"value": 1}' if method == "PUT" else None
    for name, key in BAD_KEYS:
        reply = await raw(api, method, f"/kv/{key}", body)
        await assert_rejected(api, before, reply, what=name)


async def test_bad_key_as_prefix(api: Api, before: tuple[Any, ...]) -> None:
    for name, key in BAD_KEYS[1:]:  # an empty prefix is the whole keyspace
        for method, query in [("GET", "keys=true"), ("GET", "recurse=true"),
                              ("DELETE", "recurse=true")]:
            reply = await raw(api, method, f"/kv/{key}?{query}")
            await assert_rejected(api, before, reply, what=(name, method, query))


async def test_bad_key_in_txn(api: Api, before: tuple[Any, ...]) -> None:
    for key in ["", "a" * 513, "é" * 256 + "a", "a\x00b", "\n", "\x7f", "\x85", 5, None, ["a"]]:
        reply = await api.txn([{"op": "set", "key": "ok", "value": 1},
                               {"op": "set", "key": key, "value": 1}])
        await assert_rejected(api, before, reply)
        assert "ops[1]" in reply.body["message"]


@pytest.mark.parametrize("key", [
    "a" * 512,
    "é" * 256,  # 512 bytes, 256 characters
    "😀" * 128,  # 512 bytes
    "€" * 170 + "ab",  # 3-byte chars: 512 bytes
    "a/b/c/",
    "with space and ?#&=+;,",
    "nbsp\u00a0and\u200bzero-width",
    "dots/../and/./",
])
async def test_valid_key_edges_round_trip(api: Api, key: str) -> None:
    assert len(key.encode()) <= 512
    path = "/kv/" + "".join(f"%{b:02X}" for b in key.encode())
    put = await raw(api, "PUT", path, orjson.dumps({"value": key}))
    assert put.status == 200, put.body
    assert put.body["key"] == key
    got = await raw(api, "GET", path)
    assert got.status == 200 and got.body["key"] == key and got.body["value"] == key
    assert key in (await api.get("", keys="true")).body["keys"]
    txn = await api.txn([{"op": "get", "key": key}])
    assert txn.body["results"][0]["value"] == key
    assert (await raw(api, "DELETE", path)).status == 200
    assert (await raw(api, "GET", path)).status == 404


@pytest.mark.parametrize(("key", "value"), [
    ("emoji/😀🎉", "🦄 unicorn 🌈"),
    ("中文/键", {"值": ["一", "二"], "数": 3}),
    ("עברית/מפתח", "שלום עולם"),
    ("العربية/مفتاح", {"نص": "مرحبا"}),
    ("mixed/ltr-עברית-ltr", "\u202eRTL override\u202c"),
    ("combining/e\u0301", "e\u0301 vs \u00e9"),
])
async def test_unicode_keys_and_values_round_trip(api: Api, key: str, value: Any) -> None:
    put = await api.put(key, {"value": value})
    assert put.status == 200 and put.body["key"] == key
    got = await api.get(key)
    assert got.body["key"] == key and got.body["value"] == value
    raw_value = await api.request("GET", f"/kv/{key}", params={"raw": "true"})
    assert raw_value.body == value
    prefix = key.split("/")[0]
    listing = await api.get(prefix, recurse="true")
    assert [(i["key"], i["value"]) for i in listing.body["items"]] == [(key, value)]
    assert (await api.get("", keys="true", separator="/")).body["keys"] == [prefix + "/"]
    if key == "combining/e\u0301":  # no normalisation: the precomposed form is another key
        assert (await api.get("combining/\u00e9")).status == 404
    assert (await api.delete(key, if_value=orjson.dumps(value).decode())).status == 200


# -- size limit ----------------------------------------------------------------------------

async def test_value_size_limit(make_node: NodeFactory, http: Any) -> None:
    node = await make_node(max_value_bytes=1000)
    api = Api(http, node.url)
    assert (await api.put("probe", PROBE)).status == 200
    before = await state(api)
    ok = "x" * 998  # 1000 bytes encoded, quotes included
    assert (await api.put("fits", {"value": ok})).status == 200
    before = await state(api)
    for value in ["x" * 999, ["é" * 500], {"k": "x" * 2000}]:
        reply = await api.put("big", {"value": value})
        await assert_rejected(api, before, reply, 413, "too_large")
        assert "1000" in reply.body["message"]
        reply = await api.put("fits", {"value": value, "if_value": ok})
        await assert_rejected(api, before, reply, 413, "too_large")
        reply = await api.txn([{"op": "set", "key": "t", "value": 1},
                               {"op": "set", "key": "big", "value": value}])
        await assert_rejected(api, before, reply, 413, "too_large")
    # a body far beyond the limit is refused before it is parsed
    huge = b'{"value": "' + b"x" * (3 << 20) + b'"}'
    await assert_rejected(api, before, await raw(api, "PUT", "/kv/big", huge), 413, "too_large")
    await assert_rejected(api, before, await raw(api, "POST", "/txn", huge), 413, "too_large")
    # and the node still serves
    assert (await api.get("fits")).body["value"] == ok


# -- query parameters ----------------------------------------------------------------------

BAD_QUERIES = [
    ("GET", "/kv/probe?foo=1"),
    ("GET", "/kv/probe?Raw=true"),
    ("GET", "/kv/probe?raw=yes"),
    ("GET", "/kv/probe?history=2"),
    ("GET", "/kv/probe?recurse=maybe"),
    ("GET", "/kv/?keys=true&history=null"),  # a flag the listing ignores is still checked
    ("GET", "/kv/?recurse=true&keys=maybe"),
    ("GET", "/kv/?keys=true&raw=2"),
    ("GET", "/kv/?keys=%FF"),
    ("GET", "/kv/probe?%FF=1"),
    ("GET", "/kv/?keys=true&limit=0"),
    ("GET", "/kv/?keys=true&limit=-1"),
    ("GET", "/kv/?keys=true&limit=abc"),
    ("GET", "/kv/?keys=true&limit=1.5"),
    ("GET", "/kv/?keys=true&limit="),
    ("GET", "/kv/?keys=true&limit=%EF%BC%91"),  # fullwidth digit one
    ("GET", "/kv/?recurse=true&limit=1e3"),
    ("GET", "/kv/probe?index=abc"),
    ("GET", "/kv/probe?index=-1"),
    ("GET", "/kv/probe?index=1.5"),
    ("GET", "/kv/probe?index="),
    ("GET", "/kv/probe?index=18446744073709551616"),
    ("GET", "/kv/probe?index=123456789012345678901234567890"),
    ("GET", "/kv/probe?index=0&wait=abc"),
    ("GET", "/kv/probe?index=0&wait=-1s"),
    ("GET", "/kv/probe?index=0&wait=11m"),
    ("GET", "/kv/probe?index=0&wait=1h"),
    ("GET", "/kv/probe?index=0&wait=601s"),
    ("GET", "/kv/probe?index=0&wait="),
    ("GET", "/kv/probe?index=0&wait=5sec"),
    ("GET", "/kv/probe?wait=abc"),  # a bad wait is bad even without index
    ("GET", "/kv/?recurse=true&separator=/"),  # separator goes with keys=true
    ("GET", "/kv/?keys=true&separator="),
    ("GET", "/kv/probe?separator=/"),
    ("GET", "/kv/probe?limit=5"),
    ("GET", "/kv/probe?after=a"),
    ("PUT", "/kv/probe?foo=1"),
    ("PUT", "/kv/probe?cas=0"),  # PUT conditions go in the body
    ("PUT", "/kv/probe?ttl=5"),
    ("DELETE", "/kv/probe?foo=1"),
    ("DELETE", "/kv/probe?raw=true"),
    ("DELETE", "/kv/probe?cas=-1"),
    ("DELETE", "/kv/probe?cas=abc"),
    ("DELETE", "/kv/probe?cas="),
    ("DELETE", "/kv/probe?cas=18446744073709551616"),
    ("DELETE", "/kv/probe?if_timestamp=1.5"),
    ("DELETE", "/kv/probe?if_version=nope"),
    ("DELETE", "/kv/probe?if_value=unquoted"),
    ("DELETE", "/kv/probe?if_value="),
    ("DELETE", "/kv/probe?if_value=NaN"),
    ("DELETE", "/kv/probe?if_value=" + "%5B" * 300 + "%5D" * 300),
    ("DELETE", "/kv/probe?if_value=%FF"),
    ("DELETE", "/kv/?recurse=true&cas=0"),  # conditions do not combine with recurse
    ("DELETE", "/kv/?recurse=maybe"),
    ("POST", "/txn?foo=1"),
]


@batches("cases", BAD_QUERIES, size=14)
async def test_bad_query(api: Api, before: tuple[Any, ...], cases: list[tuple[str, str]]) -> None:
    body = {"PUT": b'{"value": 2}', "POST": b'{"ops": [{"op": "set", "key": "t", "value": 1}]}'}
    for method, path in cases:
        reply = await raw(api, method, path, body.get(method))
        await assert_rejected(api, before, reply, what=(method, path))


async def test_a_query_string_where_none_is_taken_is_named_so(api: Api) -> None:
    for method, path in [("PUT", "/kv/probe?cas=0"), ("POST", "/txn?foo=1")]:
        reply = await raw(api, method, path, b'{"value": 2}')
        assert reply.status == 400
        assert "this request takes no query string" in reply.body["message"], reply.body


async def test_odd_but_valid_queries(api: Api, before: tuple[Any, ...]) -> None:
    """Parameters that are strange but well-formed are answered, not rejected."""
    for path in ["/kv/probe?raw", "/kv/probe?raw=1", "/kv/probe?raw=false", "/kv/probe?wait=1s",
                 "/kv/?keys=true&after=%FF", "/kv/?keys=true&separator=%FF",
                 "/kv/?keys=true&limit=99999999999999999999", "/kv/probe?index=0&wait=0s"]:
        reply = await raw(api, "GET", path)
        assert reply.status == 200, (path, reply.body)
    version = await raw(api, "GET", "/kv/probe?version=not-a-version")
    assert_error(version, 404, "not_found")
    assert await state(api) == before


# -- transactions --------------------------------------------------------------------------

BAD_TXNS: list[tuple[str, bytes]] = [
    ("empty body", b""),
    ("malformed", b'{"ops": ['),
    ("list body", b'[{"op": "get", "key": "a"}]'),
    ("string body", b'"ops"'),
    ("null body", b"null"),
    ("no ops", b"{}"),
    ("ops not list", b'{"ops": {"op": "get", "key": "a"}}'),
    ("ops null", b'{"ops": null}'),
    ("ops string", b'{"ops": "get"}'),
    ("ops empty", b'{"ops": []}'),
    ("extra top-level field", b'{"ops": [{"op": "get", "key": "a"}], "atomic": true}'),
    ("op not object", b'{"ops": ["get"]}'),
    ("op null", b'{"ops": [null]}'),
    ("op list", b'{"ops": [["set", "a", 1]]}'),
    ("op missing", b'{"ops": [{"key": "a", "value": 1}]}'),
    ("op unknown", b'{"ops": [{"op": "put", "key": "a", "value": 1}]}'),
    ("op wrong case", b'{"ops": [{"op": "SET", "key": "a", "value": 1}]}'),
    ("op not string", b'{"ops": [{"op": 1, "key": "a"}]}'),
    ("key missing", b'{"ops": [{"op": "set", "value": 1}]}'),
    ("key null", b'{"ops": [{"op": "get", "key": null}]}'),
    ("key number", b'{"ops": [{"op": "get", "key": 1}]}'),
    ("key empty", b'{"ops": [{"op": "get", "key": ""}]}'),
    ("set without value", b'{"ops": [{"op": "set", "key": "a"}]}'),
    ("unknown field", b'{"ops": [{"op": "set", "key": "a", "value": 1, "verb": 1}]}'),
    ("value on delete", b'{"ops": [{"op": "delete", "key": "a", "value": 1}]}'),
    ("value on check", b'{"ops": [{"op": "check", "key": "a", "value": 1}]}'),
    ("ttl on get", b'{"ops": [{"op": "get", "key": "a", "ttl": 5}]}'),
    ("flags on delete", b'{"ops": [{"op": "delete", "key": "a", "flags": 1}]}'),
    ("ttl zero", b'{"ops": [{"op": "set", "key": "a", "value": 1, "ttl": 0}]}'),
    ("ttl string", b'{"ops": [{"op": "set", "key": "a", "value": 1, "ttl": "1"}]}'),
    ("flags negative", b'{"ops": [{"op": "set", "key": "a", "value": 1, "flags": -1}]}'),
    ("cas string", b'{"ops": [{"op": "check", "key": "a", "cas": "1"}]}'),
    ("if_version bad", b'{"ops": [{"op": "check", "key": "a", "if_version": "x"}]}'),
    ("if_timestamp float", b'{"ops": [{"op": "check", "key": "a", "if_timestamp": 1.5}]}'),
    ("value nested 300", b'{"ops": [{"op": "set", "key": "a", "value": ' + _nested(300) + b"}]}"),
    ("good then bad", b'{"ops": [{"op": "set", "key": "a", "value": 1}, {"op": "nope", "key": "b"}]}'),
]


@batches("cases", BAD_TXNS, size=18)
async def test_bad_txn(api: Api, before: tuple[Any, ...], cases: list[tuple[str, bytes]]) -> None:
    for name, body in cases:
        reply = await raw(api, "POST", "/txn", body)
        await assert_rejected(api, before, reply, what=name)
        assert (await api.get("a")).status == 404, name


# -- methods and paths ---------------------------------------------------------------------

WRONG_ROUTES = [
    ("PATCH", "/kv/probe", 405),
    ("POST", "/kv/probe", 405),
    ("PATCH", "/kv/", 405),
    ("GET", "/txn", 405),
    ("PUT", "/txn", 405),
    ("DELETE", "/txn", 405),
    ("PUT", "/health", 405),
    ("POST", "/", 405),  # GET / is the index
    ("GET", "/kv", 404),
    ("PUT", "/kv", 404),
    ("GET", "/nope", 404),
    ("GET", "/KV/probe", 404),
    ("GET", "/v2/kv/probe", 404),  # /v1/ is the Consul-compatible API (test_consul_kv.py)
    ("POST", "/txn/extra", 404),
]


async def test_wrong_method_or_path(api: Api, before: tuple[Any, ...]) -> None:
    for method, path, status in WRONG_ROUTES:
        reply = await raw(api, method, path, b'{"value": 1}')
        code = {404: "not_found", 405: "method_not_allowed"}[status]
        await assert_rejected(api, before, reply, status, code, what=(method, path))
        assert reply.headers["Content-Type"].startswith("application/json")
        if status == 405:  # RFC 9110: a 405 says which methods the resource has
            assert reply.headers["Allow"], (method, path)


async def test_a_failed_storage_write_hands_its_index_back(node: Node, api: Api) -> None:
    """Below the API's depth check: if encoding a batch fails, nothing is written and the
    index the mutation took is released, so the next write gets it (no gap, no reuse)."""
    put = await api.put("probe", PROBE)
    with pytest.raises(TypeError):  # orjson: recursion limit
        await node.engine.put(Op("set", "deep", orjson.loads(_nested(254))))
    assert node.storage.index == put.index
    assert (await api.get("deep")).status == 404
    after = await api.put("next", {"value": 1})
    assert after.body["modify_index"] == put.index + 1
    assert node.storage.check_consistency() == []
