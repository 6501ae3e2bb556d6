"""Issue 12, finding 2: one skewed clock must not stretch TTLs or drag the cluster's HLC.

Three real `kvs serve` processes: two with the host's clock, one run through the chaos
toolkit's skewed node (kvs.chaos.skewed_node shifts its wall clock), at +-500 ms (the
default max_clock_offset_ms: tolerated), +-1 min and +-1 day (refused), with and
without a cluster secret. Whatever the skew:

  * healthy nodes stay "ok", their HLC never runs ahead of the real clock by more than
    max_clock_offset_ms, and a TTL written through them lasts what it says;
  * beyond the maximum, the skewed node reports itself in /health, /cluster/status and
    /metrics and refuses client writes (503 clock_skew) instead of acknowledging
    versions its peers will refuse.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from kvs.testing import KvsNode, NodeGroup
from tests.procs import procs_fixture  # noqa: F401  (the `procs` fixture)

MAX_OFFSET_MS = 500  # the default
DAY_MS = 86_400_000
SLACK_MS = 50  # the test's own reads of the real clock happen a little after the node's
FAST = {"KVS_GOSSIP_INTERVAL_MS": "100", "KVS_PROBE_TIMEOUT_MS": "300",
        "KVS_SYNC_INTERVAL_MS": "500", "KVS_TTL_SWEEP_INTERVAL_MS": "100"}


def call(node: KvsNode, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{node.url}{path}", data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            raw, status = resp.read(), resp.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode()


def real_ms() -> int:
    return time.time_ns() // 1_000_000


def wait_for(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def clock(node: KvsNode) -> dict[str, Any]:
    return call(node, "GET", "/cluster/status")[1]["clock"]


def start(procs: NodeGroup, offset_ms: int, secret: str | None
          ) -> tuple[list[KvsNode], KvsNode]:
    env = {**FAST, **({"KVS_CLUSTER_SECRET": secret} if secret else {})}
    first = procs.start("h1", env=env)
    seed = ["--seed", f"127.0.0.1:{first.port}"]
    second = procs.start("h2", env=env, args=seed)
    skewed = procs.start("skewed", env=env, args=seed, skew_ms=offset_ms)  # kvs.chaos.skewed_node
    return [first, second], skewed


def assert_ttl_not_stretched(writer: KvsNode, readers: list[KvsNode], key: str,
                             tolerance_ms: int) -> None:
    """A 1 s TTL written through `writer` is gone everywhere within 1 s (+ tolerance) of
    real time, as the readers' healthy clocks judge it."""
    before = real_ms()
    status, written = call(writer, "PUT", f"/kv/{key}", {"value": 1, "ttl": 1})
    assert status == 200, written
    assert written["expires_at"] <= real_ms() + 1000 + tolerance_ms + SLACK_MS
    deadline_ms = before + 1000 + tolerance_ms + 1000  # + the sweeper and a poll's slack
    for reader in readers:
        wait_for(lambda r=reader: call(r, "GET", f"/kv/{key}")[0] == 404, f"{key} to expire")
    assert real_ms() <= deadline_ms, "a TTL outlived its time"


def assert_hlc_not_dragged(nodes: list[KvsNode]) -> None:
    for node in nodes:
        physical = call(node, "GET", "/cluster/status")[1]["hlc"][0]
        lead = physical - real_ms()
        print(f"{node.name}: HLC {lead:+d} ms from the real clock")
        assert lead <= MAX_OFFSET_MS + SLACK_MS, node.name


@pytest.mark.parametrize("offset_ms,secret", [
    (-60_000, None), (60_000, None), (DAY_MS, None), (-DAY_MS, "s3cret"), (DAY_MS, "s3cret"),
])
def test_a_node_skewed_beyond_the_maximum_reports_itself_and_refuses_writes(
        procs: NodeGroup, offset_ms: int, secret: str | None) -> None:
    healthy, skewed = start(procs, offset_ms, secret)
    # Whether the skewed node already knows (503) or not (it may take the write, which its
    # peers then refuse), no healthy node may show the key beyond its TTL, nor take its clock.
    started = real_ms()
    assert call(skewed, "PUT", "/kv/early", {"value": 1, "ttl": 1})[0] in (200, 503)
    assert_ttl_not_stretched(healthy[0], healthy, "lease", tolerance_ms=0)
    assert real_ms() > started + 1000
    for node in healthy:
        assert call(node, "GET", "/kv/early")[0] == 404, node.name
    assert_hlc_not_dragged(healthy)

    wait_for(lambda: clock(skewed)["skewed"], "the skewed node to notice its clock")
    print(f"skew {offset_ms:+d} ms, secret={bool(secret)}: clock_skew reported "
          f"{real_ms() - started} ms after the node's start (incl. the 1 s TTL check)")
    status, health = call(skewed, "GET", "/health")
    assert status == 200 and health["status"] == "clock_skew", health
    assert "max_clock_offset_ms" in health["message"]
    metrics = call(skewed, "GET", "/metrics")[1]
    assert "kvs_clock_skewed 1.0" in metrics

    status, refused = call(skewed, "PUT", "/kv/from-skewed", {"value": 1, "ttl": 3})
    assert status == 503 and refused["error"] == "clock_skew", refused
    assert "/" not in refused["message"].replace("max_clock_offset_ms", "")
    assert call(skewed, "DELETE", "/kv/anything")[0] == 503
    assert call(skewed, "GET", "/kv/from-skewed")[0] == 404  # reads still answer

    for node in healthy:
        assert call(node, "GET", "/health")[1]["status"] == "ok", node.name
    assert_hlc_not_dragged(healthy)


@pytest.mark.parametrize("offset_ms", [MAX_OFFSET_MS, -MAX_OFFSET_MS])
def test_a_node_skewed_within_the_maximum_is_tolerated(procs: NodeGroup, offset_ms: int) -> None:
    healthy, skewed = start(procs, offset_ms, None)
    wait_for(lambda: len(clock(skewed)["peers"]) == 2, "the skewed node to measure both peers")
    assert not clock(skewed)["skewed"]
    assert call(skewed, "GET", "/health")[1]["status"] == "ok"
    status, written = call(skewed, "PUT", "/kv/from-skewed", {"value": 1})
    assert status == 200, written
    for node in healthy:
        wait_for(lambda n=node: call(n, "GET", "/kv/from-skewed")[0] == 200, "replication")
    # A TTL written through the skewed node is off by at most its offset, anywhere.
    assert_ttl_not_stretched(skewed, [*healthy, skewed], "lease", tolerance_ms=MAX_OFFSET_MS)
    assert_hlc_not_dragged(healthy)
