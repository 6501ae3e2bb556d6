"""OpenAPI 3.1 description of the public HTTP API, served at GET /openapi.json.

Built as a plain dict, so it is data the tests can compare with the routes the app
registers (tests/test_openapi.py: every public route documented and vice versa) and
hand to schemathesis, which fuzzes a live node against it. `/internal/` (node to
node) is not part of the public API and is not described here; neither is `/v1/`,
the Consul-compatible API, which Consul's own HTTP API reference describes (what kvs
supports of it: docs/consul.md).

Operations that end or disturb the node rather than read or write data carry
`x-kvs-destructive: true` (POST /cluster/leave, DELETE /cluster/members/{id}); fuzzers
must skip them.
"""

from __future__ import annotations

import copy
from typing import Any

from aiohttp import web

from kvs import __version__
from kvs.http.index import LINKS
from kvs.http.toolkit import MAX_TTL_SECONDS, MAX_WAIT_SECONDS, json_response

Schema = dict[str, Any]

U64 = {"type": "integer", "minimum": 0, "maximum": 2**64 - 1}
INT = {"type": "integer"}
STR = {"type": "string"}
BOOL = {"type": "boolean"}
ANY: Schema = {"description": "any JSON value"}
TTL = {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_TTL_SECONDS,
       "description": "seconds (fractions allowed)"}
UUID = {"type": "string", "format": "uuid"}
SERVICE_NAME = {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,128}$"}


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _null(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def _obj(required: dict[str, Schema], optional: dict[str, Schema] | None = None, *,
         closed: bool = True, description: str | None = None) -> Schema:
    out: Schema = {"type": "object", "properties": {**required, **(optional or {})},
                   "required": list(required)}
    if closed:
        out["additionalProperties"] = False
    if description:
        out["description"] = description
    return out


CONDITION_FIELDS: dict[str, Schema] = {
    "cas": {**U64, "description": "0: create-only (key absent); N: current modify_index is N"},
    "if_version": {**UUID, "description": "the current version's UUID equals it"},
    "if_timestamp": {**U64, "description": "the current version's timestamp equals it"},
    "if_value": {**ANY, "description": "the current value equals it (JSON equality)"},
}

CONSISTENCY = {"type": "string", "enum": ["local", "quorum"],
               "description": "local: this node alone (always available); quorum: linearizable "
                              "across the cluster, needs a majority of voters (default: the "
                              "node's default_consistency)"}
IF_SEQ = {**U64, "description": "consistency=quorum only: the key's cluster-wide seq is N "
                                "(0: no quorum state)"}
SEQ = {"seq": {**U64, "description": "consistency=quorum answers: the key's cluster-wide "
                                     "sequence number (its fencing token)"}}

VERSION_META_FIELDS: dict[str, Schema] = {
    "key": STR, "version": UUID, "timestamp": INT, "logical": INT, "origin": STR,
    "origin_joined_at": INT, "flags": U64, "expires_at": _null(INT), "deleted": BOOL,
    "parent": _null(UUID), "superseded": BOOL, "modify_index": INT, "create_index": INT,
}

SCHEMAS: dict[str, Schema] = {
    "Error": _obj(
        {"error": {"type": "string", "enum": [
            "bad_request", "unauthorized", "forbidden", "not_found", "method_not_allowed",
            "cas_conflict", "conflict", "too_large", "cas_disabled", "acl_disabled",
            "storage_failed", "storage_full", "not_removable", "http_error", "quorum_key",
            "quorum_unavailable", "quorum_indeterminate"]},
         "message": STR},
        {"current": _null(_ref("VersionMeta")),
         "failed": {"type": "array", "items": _ref("TxnFailure")}, **SEQ,
         "answered": INT, "voters": INT, "needed": INT},
        closed=False, description="Every error: a code and a human message. A 409 from a "
        "single write carries `current`, from a transaction `failed`."),
    "Version": _obj({**VERSION_META_FIELDS, "value": ANY}, SEQ,
                    description="One version of a key (docs/api.md#versions)."),
    "VersionMeta": _obj(VERSION_META_FIELDS, SEQ, description="A version without its value."),
    "History": _obj({"key": STR, "revisions": {"type": "array", "items": _ref("Version")}},
                    description="history=true: current and past versions, newest first."),
    "Listing": _obj({"prefix": STR, "items": {"type": "array", "items": _ref("Version")},
                     "next": _null(STR)}, description="recurse=true: live versions in key order."),
    "KeyListing": _obj({"prefix": STR, "keys": {"type": "array", "items": STR}, "next": _null(STR)},
                       description="keys=true: key names (or separator groups) in key order."),
    "PutBody": _obj({"value": ANY}, {"ttl": TTL, "flags": U64, **CONDITION_FIELDS,
                                     "consistency": CONSISTENCY, "if_seq": IF_SEQ}),
    "WriteResult": _obj({"key": STR, "version": UUID, "timestamp": INT, "modify_index": INT,
                         "create_index": INT, "expires_at": _null(INT)}, SEQ),
    "DeleteResult": _obj({"key": STR, "version": UUID, "modify_index": INT}, SEQ),
    "PrefixDeleteResult": _obj({"prefix": STR, "deleted": {"type": "array", "items": STR},
                                "modify_index": INT}),
    "TxnOp": _obj({"op": {"type": "string", "enum": ["set", "delete", "check", "get"]}, "key": STR},
                  {"value": ANY, "ttl": TTL, "flags": U64, **CONDITION_FIELDS},
                  description="value, ttl and flags go with op=set only."),
    "TxnBody": _obj({"ops": {"type": "array", "minItems": 1, "items": _ref("TxnOp")}}),
    "TxnResult": _obj({"results": {"type": "array", "items": {"anyOf": [
        _ref("WriteResult"), _ref("DeleteResult"), _ref("Version"),
        _obj({"key": STR, "version": {"type": "null"}, "modify_index": {"type": "null"}},
             description="delete of an absent key: a no-op"),
        _obj({"key": STR, "ok": {"const": True}, "version": _null(UUID)}, description="check"),
        {"type": "null", "description": "get of an absent key"},
    ]}}}, description="One result per op, in order."),
    "TxnFailure": _obj({"index": INT, "key": STR, "message": STR, "current": _null(_ref("VersionMeta"))}),
    "ClockReport": _obj({
        "skewed": {"type": "boolean"}, "max_offset_ms": INT, "offset_ms": _null(INT),
        "peers": {"type": "object", "additionalProperties": _obj({
            "offset_ms": _null(INT), "uncertainty_ms": INT, "age_ms": INT,
            "beyond_max": {"type": "boolean"}})},
    }, description="This node's clock against its peers' (ms, ours minus theirs; null: the "
                   "peer refused our signed timestamp outright)."),
    "Health": _obj({"status": {"type": "string", "enum": ["ok", "degraded", "clock_skew", "stale"]},
                    "node": STR},
                   {"message": STR, "clock": _ref("ClockReport"), "stale": STR,
                    "problems": {"type": "array", "items": _obj(
                        {"error": STR, "message": STR, "since": _null(INT)},
                        description="storage_full / storage_failed: writes are refused since "
                                    "`since` (ms); reads are served")}},
                   description="degraded: a full or failing disk, writes refused (`problems`). "
                   "clock_skew: this node's clock is off from its peers' by more than "
                   "max_clock_offset_ms, and it refuses client writes. stale: the node was cut "
                   "off from its peers for longer than tombstone_gc_seconds and has not "
                   "resynchronised yet; `stale` says why. KV answers then carry "
                   "X-KVS-Stale: true."),
    "Index": _obj({"name": {"const": "kvs"}, "version": STR, "node": STR,
                   "links": _obj({name: {"const": path} for name, path in LINKS.items()})},
                  description="GET /: this node and where its API lives. `kv` is the root of "
                  "the key space (`/kv/?keys=true` lists every key)."),
    "Member": _obj({"id": STR, "address": STR, "joined_at": INT,
                    "state": {"type": "string", "enum": ["alive", "suspect", "dead", "left"]},
                    "incarnation": INT, "last_seen": _null(INT)}),
    "AntiEntropyRound": _obj({"peer": STR, "keys_repaired": INT, "bytes": INT,
                              "duration_ms": {"type": "number"}, "at": INT, "error": _null(STR)}),
    "ClusterStatus": _obj({
        "node": STR, "joined_at": INT, "keys": INT, "index": INT,
        "merkle_root": {"type": "string", "pattern": "^[0-9a-f]{16}$"},
        "hlc": {"type": "array", "items": INT, "minItems": 2, "maxItems": 2},
        "last_rounds": {"type": "array", "items": _ref("AntiEntropyRound")},
        "clock": _ref("ClockReport"),
        "incompatible_peers": {"type": "array", "items": _ref("IncompatiblePeer")},
        "stale": _null(STR), "last_contact": INT,
        "voters": _null(_obj({"epoch": INT, "ids": {"type": "array", "items": STR}},
                             description="The voters of quorum keys and their configuration's "
                             "epoch; null while this node knows none.")),
    }),
    "IncompatiblePeer": _obj({"address": STR, "node": STR, "message": STR, "at": INT},
                             description="A peer refused (or refusing us) because settings "
                             "that must be equal on every node differ; `message` names them."),
    "Removed": _obj({"removed": STR, "address": STR, "incarnation": INT}),
    "Left": _obj({"status": {"const": "left"}, "node": STR}),
    "Registration": _obj({
        "name": SERVICE_NAME, "address": _null(STR),
        "port": _null({"type": "integer", "minimum": 1, "maximum": 65535}),
        "tags": {"type": "array", "items": STR},
        "meta": {"type": "object", "additionalProperties": STR},
        "ttl": _null(TTL),
    }, description="A service registration as stored (absent fields are null, [] or {})."),
    "RegisterBody": _obj({"name": SERVICE_NAME}, {
        "address": _null(STR), "port": _null({"type": "integer", "minimum": 1, "maximum": 65535}),
        "tags": {"type": "array", "items": STR}, "meta": {"type": "object", "additionalProperties": STR},
        "ttl": _null(TTL), "cas": CONDITION_FIELDS["cas"],
    }),
    "RenewBody": _obj({}, {"ttl": _null(TTL)}),
    "ServiceDeleteResult": _obj({"message": {"const": "service deregistered"}, "name": SERVICE_NAME,
                                 "version": UUID, "modify_index": INT}),
    "ServiceList": _obj({"services": {"type": "array", "items": _ref("Registration")}}),
}
# Konsul's entry: the registration under "service", beside its version's identity.
ENTRY_FIELDS: dict[str, Schema] = {"service": _ref("Registration"), "version": UUID,
                                   "modify_index": INT, "create_index": INT,
                                   "expires_at": _null(INT)}
SCHEMAS["ServiceEntry"] = _obj(ENTRY_FIELDS, description="metadata=true: the registration and "
                               "its version's identity.")
SCHEMAS["ServiceWriteResult"] = _obj(
    {"message": {"type": "string", "enum": ["service registered", "service renewed"]},
     **ENTRY_FIELDS}, description="The registration as written and its new version's identity.")

# The /acl/ routes (docs/acl.md): every answer is a JSON object; these are their errors.
ACL_ERRORS = {
    "400": "bad_request: malformed body, unknown field, invalid policy or token id",
    "401": "unauthorized: no valid ACL token; acl_disabled: acl_enabled is false on this node",
    "403": "forbidden: the token's policies do not grant ACL management",
    "404": "not_found: no such policy or token",
    "409": "conflict: bootstrapped already, or the name exists",
}
ACL_BODY = {"type": "object"}

ERROR_TEXT = {
    400: "bad_request: malformed body or query, unknown field or parameter, wrong type, bad key",
    401: "unauthorized: the node has a cluster_secret and the request was not signed with it, "
         "or was replayed; or ACLs are on and the request has no valid token",
    404: "not_found: absent, deleted or expired (or a condition other than cas=0 on an absent key)",
    409: "cas_conflict: a condition did not hold; nothing was written. quorum_key: a local "
         "write to a key written with consistency=quorum; nothing was written",
    413: "too_large: value over max_value_bytes, or body over the node's limit",
    501: "cas_disabled: a condition was sent while cas_enabled is false; nothing was written",
    503: "storage_failed: the disk failed a write; the node refuses writes (reads go on) until "
         "it heals by itself. `nothing was written`, or, for the writes of the batch that "
         "failed, `outcome is unknown`: kept in memory and written once the disk heals. "
         "clock_skew: this node's clock is off from its peers' by more than "
         "max_clock_offset_ms; nothing was written, use another node. quorum_unavailable: "
         "fewer than a majority of voters answered (`answered`, `voters`, `needed`); nothing "
         "was written. quorum_indeterminate: the quorum write may or may not be applied; read "
         "with consistency=quorum",
    507: "storage_full: as storage_failed, because the disk is full; writes are accepted again "
         "once space is freed",
}
INDEX_HEADER = {"X-KVS-Index": {
    "description": "This node's index counter; pass it as ?index= to a blocking query.",
    "schema": {"type": "string", "pattern": "^[0-9]+$"}}}


def _json(schema: Schema, description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description,
                           "content": {"application/json": {"schema": schema}}}
    if headers:
        out["headers"] = headers
    return out


def _responses(ok: Schema, ok_text: str, errors: tuple[int, ...], *, kv: bool = False,
               extra_ok: dict[str, Any] | None = None) -> dict[str, Any]:
    headers = INDEX_HEADER if kv else None
    out = {"200": _json(ok, ok_text, headers)}
    if extra_ok:
        out["200"]["content"].update(extra_ok)
    for status in errors:
        out[str(status)] = _json(_ref("Error"), ERROR_TEXT[status], headers)
    return out


def _query(name: str, schema: Schema, description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}


FLAG = {"type": "boolean"}
KEY_PARAM = {
    "name": "key", "in": "path", "required": True,
    "schema": {"type": "string", "minLength": 1, "maxLength": 512,
               "pattern": "^[^\u0000-\u001f\u007f-\u009f]+$"},
    "description": "UTF-8 key, 1..512 bytes, '/' allowed (percent-encode it or not), no control "
                   "characters. A prefix for recurse/keys. Keys under `_services/` are the "
                   "service registry's: readable here, written only through /services.",
}
NAME_PARAM = {"name": "name", "in": "path", "required": True, "schema": SERVICE_NAME,
              "description": "service name"}
WAIT = {"type": "string", "pattern": r"^\d+(\.\d+)?(ms|s|m)?$"}

KV_GET_PARAMS = [
    KEY_PARAM,
    _query("raw", FLAG, "answer the bare value: a string as text/plain, other JSON as JSON"),
    _query("version", STR, "that version (UUID) of the key, from history if it is not current; "
                           "an unknown version is a 404"),
    _query("history", FLAG, "current and past versions, newest first"),
    _query("recurse", FLAG, "versions of all live keys under the prefix, key order"),
    _query("keys", FLAG, "key names only, under the prefix"),
    _query("separator", {"type": "string", "minLength": 1}, "with keys=true: group names like Consul"),
    _query("limit", {"type": "integer", "minimum": 1}, "with recurse/keys: page size"),
    _query("after", STR, "with recurse/keys: start after this key (the previous page's `next`)"),
    _query("index", U64, "blocking query: wait until the key's (prefix's) modify_index exceeds it"),
    _query("wait", WAIT, f"blocking query: longest wait (30s, 500ms, 5m; default 300s, max "
                         f"{MAX_WAIT_SECONDS // 60}m)"),
    _query("consistency", CONSISTENCY, "quorum: a linearizable read of the current value "
                                       "(with raw only; the answer carries seq)"),
]
KV_DELETE_PARAMS = [
    KEY_PARAM,
    _query("recurse", FLAG, "tombstone every live key under the prefix (no conditions)"),
    _query("cas", U64, "0: only if absent; N: only if modify_index is N"),
    _query("if_version", UUID, "only if the current version is this one"),
    _query("if_timestamp", U64, "only if the current timestamp is this one"),
    _query("if_value", STR, "only if the current value equals this JSON text (quote strings)"),
    _query("consistency", CONSISTENCY, "quorum: a linearizable delete of one key"),
    _query("if_seq", IF_SEQ, "only if the key's seq is this one (consistency=quorum)"),
]


def _op(summary: str, responses: dict[str, Any], *, tag: str, params: list[Any] | None = None,
        body: Schema | None = None, body_required: bool = True, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": responses, **extra}
    if params:
        out["parameters"] = params
    if body is not None:
        out["requestBody"] = {"required": body_required,
                              "content": {"application/json": {"schema": body}}}
    return out


def build() -> dict[str, Any]:
    """The whole document (a fresh dict each call)."""
    kv_read = {"anyOf": [_ref("Version"), _ref("History"), _ref("Listing"), _ref("KeyListing"),
                         {**ANY, "description": "raw=true: the bare value"}]}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "kvs",
            "version": __version__,
            "description": "Leaderless, gossip-replicated key-value store with compare-and-swap. "
                           "JSON in, JSON out; every error is {\"error\", \"message\"}.",
        },
        "paths": {
            "/kv/{key}": {
                "get": _op("Read a key, a version, its history, or list a prefix; blocking with "
                           "index and wait", _responses(kv_read, "the version (or listing, "
                                                        "history, raw value)", (400, 404), kv=True,
                                                        extra_ok={"text/plain": {"schema": STR}}),
                           tag="kv", params=KV_GET_PARAMS),
                "put": _op("Write a key, optionally conditional (CAS)",
                           _responses(_ref("WriteResult"), "the new version's identity",
                                      (400, 404, 409, 413, 501, 503, 507), kv=True),
                           tag="kv", params=[KEY_PARAM], body=_ref("PutBody")),
                "delete": _op("Delete a key (tombstone), optionally conditional; or a subtree",
                              _responses({"anyOf": [_ref("DeleteResult"), _ref("PrefixDeleteResult")]},
                                         "the tombstone (or the keys a recursive delete removed)",
                                         (400, 404, 409, 501, 503, 507), kv=True),
                              tag="kv", params=KV_DELETE_PARAMS),
            },
            "/txn": {"post": _op(
                "All-or-nothing transaction of set/delete/check/get ops on this node",
                _responses(_ref("TxnResult"), "every op's result", (400, 409, 413, 501, 503, 507), kv=True),
                tag="kv", body=_ref("TxnBody"))},
            "/services": {
                "get": _op("List live service registrations, by name",
                           _responses(_ref("ServiceList"), "live registrations", (400,)),
                           tag="services"),
                "post": _op("Register (or update) a service; `cas` as for /kv, `ttl` makes it expire "
                            "unless renewed",
                            _responses(_ref("ServiceWriteResult"), "the registration's version",
                                       (400, 404, 409, 413, 501, 503, 507)),
                            tag="services", body=_ref("RegisterBody")),
            },
            "/services/{name}": {
                "get": _op("One registration; metadata=true wraps it with its version and indexes",
                           _responses({"anyOf": [_ref("Registration"), _ref("ServiceEntry")]},
                                      "the registration (metadata=true: its entry)", (400, 404)),
                           tag="services", params=[
                               NAME_PARAM, _query("metadata", FLAG, "answer {service, version, "
                                                  "modify_index, create_index, expires_at}")]),
                "delete": _op("Deregister (tombstone); cas=N only if modify_index is N",
                              _responses(_ref("ServiceDeleteResult"), "the tombstone",
                                         (400, 404, 409, 501, 503, 507)),
                              tag="services", params=[NAME_PARAM, _query("cas", U64, "only if "
                                                                         "modify_index is N")]),
            },
            "/services/{name}/renew": {"put": _op(
                "Renew a registration's TTL (a lease renewal conditioned on its current version, "
                "so it never resurrects an expired or deregistered one; works with cas_enabled "
                "false)",
                _responses(_ref("ServiceWriteResult"), "the renewed registration's version",
                           (400, 404, 409, 413, 503, 507)),
                tag="services", params=[NAME_PARAM], body=_ref("RenewBody"), body_required=False)},
            "/": {"get": _op(
                "Index: name, version, node id and links to the API (an HTML page when Accept "
                "ranks text/html above JSON, as a browser does)",
                _responses(_ref("Index"), "the index", (),
                           extra_ok={"text/html": {"schema": STR}}), tag="operations")},
            "/health": {"get": _op("Liveness", _responses(_ref("Health"), "the node is up", ()),
                                   tag="operations")},
            "/cluster/members": {"get": _op(
                "Members as this node's gossip sees them",
                _responses({"type": "array", "items": _ref("Member")}, "all known members", ()),
                tag="operations")},
            "/cluster/members/{id}": {"delete": _op(
                "Remove a dead or left member from the member table now (it may rejoin by "
                "restarting); with a cluster_secret the request must be signed with it",
                {**_responses(_ref("Removed"), "removed here, and gossiped to the others",
                              (404,)),
                 "401": _json(_ref("Error"), "unauthorized: a cluster_secret is set and the "
                              "request is not signed with it"),
                 "409": _json(_ref("Error"), "not_removable: the member is alive or suspect, "
                              "or is this node")},
                tag="operations", params=[{"name": "id", "in": "path", "required": True,
                                           "schema": STR, "description": "the member's node id"}],
                **{"x-kvs-destructive": True})},
            "/cluster/status": {"get": _op(
                "This node: id, key count, index, Merkle root, last anti-entropy rounds",
                _responses(_ref("ClusterStatus"), "node status", ()), tag="operations")},
            "/cluster/voters": {"post": _op(
                "Add or remove one voter of quorum keys (a new configuration epoch), then "
                "rescan every quorum key; with a cluster_secret the request must be signed",
                {**_responses(_obj({"epoch": INT, "ids": {"type": "array", "items": STR}}),
                              "the new voters, in force everywhere", (400, 401, 409, 503))},
                tag="operations", body=_obj({}, {"add": STR, "remove": STR},
                                            description="exactly one of add, remove"),
                **{"x-kvs-destructive": True})},
            "/cluster/leave": {"post": _op(
                "Leave the cluster gracefully; the node then shuts down",
                _responses(_ref("Left"), "peers were told; the node stops", (401,)),
                tag="operations", **{"x-kvs-destructive": True})},
            "/metrics": {"get": _op(
                "Prometheus metrics", {"200": {"description": "Prometheus text exposition format",
                                               "content": {"text/plain": {"schema": STR}}}},
                tag="operations")},
            **_acl_paths(),
            "/openapi.json": {"get": _op(
                "This document", _responses({"type": "object"}, "OpenAPI 3.1 document", ()),
                tag="operations")},
        },
        "components": {"schemas": copy.deepcopy(SCHEMAS)},
    }


def _acl_op(summary: str, *, params: list[Any] | None = None, body: bool = False) -> dict[str, Any]:
    responses = {"200": _json(ACL_BODY, "done; a created token's secret is shown only here"),
                 **{status: _json(_ref("Error"), text) for status, text in ACL_ERRORS.items()}}
    return _op(summary, responses, tag="acl", params=params, body=ACL_BODY if body else None)


def _acl_paths() -> dict[str, Any]:
    name = [{"name": "name", "in": "path", "required": True, "schema": STR,
             "description": "policy name"}]
    token = [{"name": "id", "in": "path", "required": True, "schema": STR,
              "description": "token id (accessor), not its secret"}]
    return {
        "/acl/bootstrap": {"post": _op(
            "Create the first management token, once (no token needed)",
            {"200": _json(ACL_BODY, "the token, with its secret (shown only here)"),
             **{s: _json(_ref("Error"), ACL_ERRORS[s]) for s in ("400", "401", "409")}},
            tag="acl")},
        "/acl/token/self": {"get": _acl_op("The token this request carries")},
        "/acl/policies": {"get": _acl_op("List policies"),
                          "post": _acl_op("Create a policy", body=True)},
        "/acl/policies/{name}": {"get": _acl_op("One policy", params=name),
                                 "delete": _acl_op("Delete a policy", params=name)},
        "/acl/tokens": {"get": _acl_op("List tokens (never their secrets)"),
                        "post": _acl_op("Create a token for policies", body=True)},
        "/acl/tokens/{id}": {"get": _acl_op("One token", params=token),
                             "delete": _acl_op("Delete (revoke) a token", params=token)},
    }


async def handle(request: web.Request) -> web.Response:
    return json_response(build())
