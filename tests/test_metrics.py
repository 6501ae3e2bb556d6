"""GET /metrics: Prometheus text with the families SPEC section 3 lists, moving with the work."""

from __future__ import annotations

import re

from tests.conftest import Api


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
