"""Python client for the kvs HTTP API (synchronous, standard library only).

Errors come back as the same typed exceptions the server raises:

    KVSError
    ├── BadRequest       400
    ├── NotFound         404
    ├── CASConflict      409   .extra["current"]: the current version's metadata
    ├── TooLarge         413
    ├── CASDisabled      501
    └── Unavailable      no node in the list answered (connection refused, timeout)

Given several node URLs the client fails over to the next one when a node
cannot be reached; it never retries a request that a node answered.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any

from kvs import errors
from kvs.errors import KVSError


class Unavailable(KVSError):
    code = "unavailable"


_BY_CODE: dict[str, type[KVSError]] = {
    cls.code: cls
    for cls in (errors.BadRequest, errors.NotFound, errors.CASConflict, errors.TooLarge,
                errors.Unauthorized)
}


def _error(status: int, body: bytes) -> KVSError:
    try:
        data = json.loads(body)
        code, message = data.pop("error"), data.pop("message")
    except (ValueError, KeyError, TypeError, AttributeError):
        return KVSError(f"HTTP {status}: {body[:200]!r}")
    if code == "cas_disabled":
        exc: KVSError = errors.CASDisabled()
        exc.message = message
        return exc
    cls = _BY_CODE.get(code, KVSError)
    return cls(message, **data)


class Client:
    def __init__(self, nodes: str | Sequence[str] = "http://127.0.0.1:8080",
                 timeout: float = 10.0) -> None:
        self.nodes = [nodes] if isinstance(nodes, str) else list(nodes)
        self.timeout = timeout

    def request(self, method: str, path: str, *, query: dict[str, Any] | None = None,
                body: Any = None, raw: bool = False) -> Any:
        url_path = path + ("?" + urllib.parse.urlencode(query) if query else "")
        data = None if body is None else json.dumps(body).encode()
        failures = []
        for node in self.nodes:
            req = urllib.request.Request(node.rstrip("/") + url_path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    payload = resp.read()
            except urllib.error.HTTPError as exc:
                raise _error(exc.code, exc.read()) from None
            except (urllib.error.URLError, OSError) as exc:
                failures.append(f"{node}: {getattr(exc, 'reason', exc)}")
                continue
            return payload.decode() if raw else json.loads(payload)
        raise Unavailable("no node answered: " + "; ".join(failures)
                          + ". Is the node running? Start one with `kvs serve`.")

    @staticmethod
    def _key_path(key: str) -> str:
        return "/kv/" + urllib.parse.quote(key, safe="/")

    def get(self, key: str, *, raw: bool = False) -> Any:
        if raw:
            return self.request("GET", self._key_path(key), query={"raw": "true"}, raw=True)
        return self.request("GET", self._key_path(key))

    def history(self, key: str) -> dict[str, Any]:
        return self.request("GET", self._key_path(key), query={"history": "true"})

    def put(self, key: str, value: Any, **options: Any) -> dict[str, Any]:
        return self.request("PUT", self._key_path(key), body={"value": value, **options})

    def delete(self, key: str, *, recurse: bool = False, **conditions: Any) -> dict[str, Any]:
        query = {k: (json.dumps(v) if k == "if_value" else v) for k, v in conditions.items()}
        if recurse:
            query["recurse"] = "true"
        return self.request("DELETE", self._key_path(key), query=query or None)

    def list(self, prefix: str = "", *, keys: bool = False, separator: str | None = None,
             limit: int | None = None, after: str | None = None) -> dict[str, Any]:
        query: dict[str, Any] = {"keys" if keys else "recurse": "true"}
        query.update({k: v for k, v in (("separator", separator), ("limit", limit),
                                        ("after", after)) if v is not None})
        return self.request("GET", self._key_path(prefix), query=query)

    def txn(self, ops: list[dict[str, Any]]) -> dict[str, Any]:
        return self.request("POST", "/txn", body={"ops": ops})

    def members(self) -> Any:
        return self.request("GET", "/cluster/members")

    def status(self) -> Any:
        return self.request("GET", "/cluster/status")
