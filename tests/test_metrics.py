"""GET /metrics: Prometheus text with the families docs/api.md lists, moving with the work."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from tests.conftest import Api, eventually


def _value(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.MULTILINE)
    assert match, f"{name} missing from /metrics"
    return float(match.group(1))


async def test_metrics_count_requests_cas_keys_and_members(api: Api) -> None:
    await api.put("m", {"value": 1})
    await api.put("m", {"value": 2, "cas": 1})
    await api.put("m", {"value": 3, "cas": 1})  # conflict
    await api.put("gone", {"value": 1})
    await api.delete("gone")
    reply = await api.request("GET", "/metrics")
    assert reply.status == 200
    text = reply.body
    assert _value(text, "kvs_cas_success_total") == 1
    assert _value(text, "kvs_cas_conflicts_total") == 1
    assert _value(text, "kvs_keys") == 1
    assert _value(text, "kvs_dead_keys_pending_purge") == 1
    assert _value(text, 'kvs_members{state="alive"}') == 1
    assert _value(text, 'kvs_http_requests_total{method="PUT",status="409"}') == 1
    for family in ("kvs_replication_pushes_total", "kvs_anti_entropy_rounds_total",
                   "kvs_anti_entropy_keys_repaired_total", "kvs_anti_entropy_bytes_total",
                   "kvs_expired_keys_total", "kvs_superseded_versions_total"):
        assert _value(text, family) >= 0


async def test_txn_conditions_count_as_cas_and_blocking_queries_are_a_gauge(node: Any, api: Api) -> None:
    assert (await api.put("t", {"value": 1})).status == 200
    ok = await api.txn([{"op": "check", "key": "t", "if_value": 1},
                        {"op": "set", "key": "t", "value": 2, "cas": 1},
                        {"op": "set", "key": "u", "value": 1}])
    assert ok.status == 200
    conflict = await api.txn([{"op": "set", "key": "t", "value": 3, "if_value": 1},
                              {"op": "set", "key": "u", "value": 2, "cas": 0}])
    assert conflict.status == 409
    assert (await api.txn([{"op": "set", "key": "v", "value": 1}])).status == 200  # no condition
    waiting = asyncio.create_task(api.get("t", index=str(ok.index), wait="30s"))
    await eventually(lambda: len(node.watchers) == 1, what="the blocking query")
    text = (await api.request("GET", "/metrics")).body
    assert _value(text, "kvs_cas_success_total") == 1  # the whole txn is one conditional write
    assert _value(text, "kvs_cas_conflicts_total") == 1
    assert _value(text, "kvs_blocking_queries") == 1
    assert (await api.put("t", {"value": 9})).status == 200
    assert (await waiting).status == 200
    assert _value((await api.request("GET", "/metrics")).body, "kvs_blocking_queries") == 0
