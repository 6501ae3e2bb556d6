"""POST /txn: all-or-nothing transactions on this node.

The ops are validated here (each like a PUT body or a DELETE's conditions), and each
op's key checked against the token's rules (set and delete need write, get and check
read), all before the engine runs any of them under one lock into one storage batch.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from kvs.config import Config
from kvs.engine import Engine, Op
from kvs.errors import BadRequest
from kvs.http.kv import OP_FIELDS, delete_result, parse_op, read_key, write_key, write_result
from kvs.http.toolkit import check_params, json_body, json_response, own_write
from kvs.keys import validate_key
from kvs.model import Version

TXN_FIELDS = OP_FIELDS | {"op", "key"}


class TxnApi:
    def __init__(self, config: Config, engine: Engine) -> None:
        self.config = config
        self.engine = engine

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/txn", self.txn)]

    async def txn(self, request: web.Request) -> web.Response:
        check_params(request.query, frozenset())
        body = await json_body(request)
        if _asks_quorum(body):
            raise BadRequest("transactions are local (they run on this node, under its lock); "
                             "consistency=quorum is for single-key PUT, GET and DELETE")
        if not isinstance(body, dict) or set(body) != {"ops"} or not isinstance(body["ops"], list):
            raise BadRequest("body must be {\"ops\": [...]}")
        raw_ops = body["ops"]
        if not raw_ops:
            raise BadRequest("ops must not be empty")
        if len(raw_ops) > self.config.max_txn_ops:
            raise BadRequest(f"{len(raw_ops)} ops; max_txn_ops is {self.config.max_txn_ops}")
        ops = [self._txn_op(request, i, raw) for i, raw in enumerate(raw_ops)]
        results = await self.engine.txn(ops)
        body = {"results": [
            write_result(r) if isinstance(r, Version) and not r.deleted
            else delete_result(r) if isinstance(r, Version) else r
            for r in results
        ]}
        written = [r for r in results if isinstance(r, Version)]
        if written and len(written) == len(results):  # no get or check: nothing else shown
            return own_write(body, written)
        return json_response(body)

    def _txn_op(self, request: web.Request, index: int, raw: Any) -> Op:
        if not isinstance(raw, dict):
            raise BadRequest(f"ops[{index}] must be an object")
        kind = raw.get("op")
        if kind not in ("set", "delete", "check", "get"):
            raise BadRequest(f"ops[{index}].op must be set, delete, check or get, got {kind!r}")
        key = raw.get("key")
        if not isinstance(key, str):
            raise BadRequest(f"ops[{index}].key must be a string")
        try:
            (write_key if kind in ("set", "delete") else read_key)(request, key)
            allowed = TXN_FIELDS if kind == "set" else TXN_FIELDS - {"value", "ttl", "flags"}
            return parse_op(raw, kind, validate_key(key), allowed, self.config)
        except BadRequest as exc:
            raise BadRequest(f"ops[{index}]: {exc.message}") from None


def _asks_quorum(body: Any) -> bool:
    if not isinstance(body, dict):
        return False
    ops = body.get("ops")
    return body.get("consistency") == "quorum" or (isinstance(ops, list) and any(
        isinstance(op, dict) and op.get("consistency") == "quorum" for op in ops))
