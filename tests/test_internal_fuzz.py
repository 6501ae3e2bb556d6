"""Property: correctly signed but malicious /internal/ requests never get a 5xx and change
nothing (issue 12: "peer input is validated as strictly as client input"), Paxos messages
(issue 14) included.

One real node (real RocksDB, real aiohttp, a cluster secret) runs in a background
thread's event loop for the whole module; Hypothesis builds requests from valid ones
with one or two fields made hostile (ranges, types, keys, sizes, clocks, ids, forged
member records) and signs them with the right secret. After every request the node's
dump, Merkle root, HLC and member table must be what they were. Bounded: 100 examples.
"""

from __future__ import annotations

import asyncio
import http.client
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvs.cluster import auth
from kvs.cluster.compat import cluster_settings
from kvs.model import MAX_U64, Version, new_version_id
from kvs.node import Node
from tests.conftest import node_config

SECRET = "fuzz-secret"
# The settings the fuzzed node has (a SWIM message with other ones is refused before its
# contents are looked at, which would leave the forged members untested).
SETTINGS = cluster_settings(node_config(cluster_secret=SECRET))
MAX_VALUE_BYTES = 1024
YEAR_MS = 365 * 86_400_000
SEEDED = [f"seed/{i}" for i in range(3)]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Remote:
    """Signed HTTP/1.1 calls to the node from the test's thread."""

    def __init__(self, url: str) -> None:
        self.host, self.port = urlsplit(url).hostname, urlsplit(url).port

    def call(self, method: str, path: str, body: bytes = b"") -> tuple[int, Any]:
        headers = auth.sign(SECRET, method, path, body, now_ms()) if path.startswith(
            auth.INTERNAL_PREFIX) else {}
        conn = http.client.HTTPConnection(self.host or "", self.port, timeout=30)
        try:
            conn.request(method, path, body=body or None, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        finally:
            conn.close()
        return resp.status, orjson.loads(raw) if raw else None

    def state(self) -> tuple[Any, ...]:
        status = self.call("GET", "/cluster/status")[1]
        members = [(m["id"], m["state"], m["incarnation"])
                   for m in self.call("GET", "/cluster/members")[1]]
        return self.call("POST", "/internal/dump")[1], status["merkle_root"], status["hlc"], members


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Remote]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fuzzed-node", daemon=True)
    thread.start()
    node = Node(node_config(port=0, data_dir=str(tmp_path_factory.mktemp("fuzzed")),
                            cluster_secret=SECRET, max_value_bytes=MAX_VALUE_BYTES,
                            sync_interval_ms=3_600_000))
    try:
        asyncio.run_coroutine_threadsafe(node.start(), loop).result(30)
        client = Remote(node.url)
        for key in SEEDED:
            assert client.call("PUT", f"/kv/{key}", orjson.dumps({"value": key}))[0] == 200
        yield client
    finally:
        asyncio.run_coroutine_threadsafe(node.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


# -- hostile values, each wrong in some way a real node never is ------------------------------

FIELDS = ["key", "version", "timestamp", "logical", "origin", "origin_joined_at", "flags",
          "expires_at", "deleted", "parent", "value"]


def _deep(levels: int) -> Any:
    value: Any = 0
    for _ in range(levels):
        value = [value]
    return value


HOSTILE: dict[str, st.SearchStrategy[Any]] = {
    "key": st.sampled_from(["", "\x00", "a\nb", "k" * 600, 5, None, ["k"]]),
    "version": st.sampled_from(["", "x", "not-a-uuid", 7, None, str(uuid.uuid4()).upper()]),
    "timestamp": st.sampled_from([MAX_U64, 2**53, 2**53 - 1, -1, 1.5, "1", None]) | st.builds(
        lambda ahead: now_ms() + ahead, st.integers(600, 20 * YEAR_MS)),
    "logical": st.sampled_from([MAX_U64, 2**32, -1, True, "0"]),
    "origin": st.sampled_from(["", "x" * 300, "a\nb", 7, None]),
    "origin_joined_at": st.sampled_from([MAX_U64, 2**53, -1, "1"]),
    "flags": st.sampled_from([-1, True, 1.0, "3"]),
    "expires_at": st.sampled_from([MAX_U64, 2**53, -1, "1", True]) | st.builds(
        lambda ahead: now_ms() + ahead, st.integers(11 * YEAR_MS, 100 * YEAR_MS)),
    "deleted": st.sampled_from(["yes", 1, None]),
    "parent": st.sampled_from(["x", 5, ""]),
    "value": st.sampled_from(["v" * (MAX_VALUE_BYTES + 1), _deep(200)]),
}
SWIM_HOSTILE: dict[str, st.SearchStrategy[Any]] = {
    "incarnation": st.sampled_from([2**53 - 1, 2**53, MAX_U64, -1, "1"]) | st.builds(
        lambda ahead: now_ms() + ahead, st.integers(10_000, 20 * YEAR_MS)),
    "state": st.sampled_from(["gone", "", None, 3]),
    "address": st.sampled_from(["nohost", "h:0", "h:70000", "", "a b:1", None]),
    "id": st.sampled_from(["", "x" * 300, None, 5]),
}


@st.composite
def forged_version(draw: st.DrawFn) -> list[Any]:
    key = draw(st.sampled_from(SEEDED))
    base = Version(key, "forged", new_version_id(), now_ms(), 0, "mallory", 1).to_wire()
    for name in draw(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=2, unique=True)):
        base[FIELDS.index(name)] = draw(HOSTILE[name])
    return base


@st.composite
def forged_member(draw: st.DrawFn) -> dict[str, Any]:
    record: dict[str, Any] = {"id": draw(st.sampled_from(["mallory", "eve"])),
                              "address": "127.0.0.1:1", "joined_at": 1,
                              "state": draw(st.sampled_from(["alive", "suspect", "dead", "left"])),
                              "incarnation": now_ms() + 20 * YEAR_MS}
    for name in draw(st.lists(st.sampled_from(list(SWIM_HOSTILE)), max_size=2, unique=True)):
        record[name] = draw(SWIM_HOSTILE[name])
    return record


CONFIG = {"epoch": 1, "voters": ["mallory"], "prepare_quorum": 1, "accept_quorum": 1}
PAXOS_HOSTILE: dict[str, st.SearchStrategy[Any]] = {
    "key": st.sampled_from(["", "\x00", "k" * 600, 5, None, ["k"]]),
    "ballot": st.sampled_from([[-1, "m"], [1.5, "m"], ["1", "m"], [1], [1, ""], [1, 5], None,
                               "b", [True, "m"]]),
    "config": st.sampled_from([
        {**CONFIG, "epoch": 0}, {**CONFIG, "voters": []}, {**CONFIG, "prepare_quorum": 0},
        {**CONFIG, "voters": ["a", "b", "c"]}, {**CONFIG, "voters": [f"n{i}" for i in range(99)]},
        {**CONFIG, "extra": 1}, {**CONFIG, "epoch": "1"}, {**CONFIG, "voters": "mallory"},
        {**CONFIG, "accept_quorum": 2}, "x", None]),
    "value": st.sampled_from([
        {"seq": 0, "version": None}, {"seq": -1}, {"seq": 1}, {"seq": "1", "version": None},
        {"seq": 1, "version": Version("other", 1, new_version_id(), 1, 0, "m", 1).to_wire()},
        {"seq": 1, "version": Version("seed/0", "v" * (MAX_VALUE_BYTES + 1), new_version_id(),
                                      1, 0, "m", 1).to_wire()},
        {"seq": 1, "version": Version("seed/0", 1, "x", 1, 0, "m", 1).to_wire()},
        {"seq": 1, "version": Version("seed/0", 1, new_version_id(), now_ms() + 20 * YEAR_MS, 0,
                                      "m", 1).to_wire()},
        {"seq": 1, "version": [], "more": 1}, 7]),
    "next": st.sampled_from([[1, "m"], [0, "a"], [-1, "m"], "n", [1.5, "m"]]),
}


@st.composite
def forged_paxos(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """("prepare" | "accept", a message with one or two hostile fields)."""
    accept = draw(st.booleans())
    message: dict[str, Any] = {"key": "seed/0", "ballot": [1, "mallory"], "config": CONFIG}
    if accept:
        version = Version("seed/0", "v", new_version_id(), now_ms(), 0, "mallory", 1)
        message.update(value={"seq": 1, "version": version.to_wire()}, next=None)
    fields = list(PAXOS_HOSTILE) if accept else ["key", "ballot", "config"]
    for name in draw(st.lists(st.sampled_from(fields), min_size=1, max_size=2, unique=True)):
        message[name] = draw(PAXOS_HOSTILE[name])
    if draw(st.booleans()):
        message["surplus"] = 1
    return "accept" if accept else "prepare", message


def forged_batch(messages: list[tuple[str, dict[str, Any]]]) -> tuple[str, bytes]:
    """A batch whose first entries may be well-formed: the hostile one must refuse them too."""
    return "/internal/paxos/batch", _body({"messages": [list(entry) for entry in messages]})


def _body(payload: Any) -> bytes:
    return orjson.dumps(payload)


REQUESTS = st.one_of(
    st.lists(forged_version(), min_size=1, max_size=3).map(
        lambda versions: ("/internal/push", _body(versions))),
    st.builds(lambda sender, updates: ("/internal/swim/ping", _body(
        {"from": sender, "target": "whoever", "updates": updates, "settings": SETTINGS})),
        forged_member(), st.lists(forged_member(), max_size=3)),
    st.builds(lambda sender, members: ("/internal/swim/join", _body(
        {"from": sender, "members": members, "settings": SETTINGS})),
        forged_member(), st.lists(forged_member(), max_size=3)),
    st.builds(lambda level, indices: ("/internal/sync/hashes", _body(
        {"level": level, "indices": indices})),
        st.sampled_from([-1, 5, 2**64 - 1, "0", None]), st.lists(st.integers(-5, 2**40), max_size=4)),
    st.lists(st.sampled_from([-1, 2**16, 2**63, "1", None, 1.5]), min_size=1, max_size=4).map(
        lambda segments: ("/internal/sync/leaves", _body(segments))),
    st.lists(st.sampled_from(["", "\x00", "k" * 600, 5, None]), min_size=1, max_size=4).map(
        lambda keys: ("/internal/sync/fetch", _body(keys))),
    forged_paxos().map(lambda sent: (f"/internal/paxos/{sent[0]}", _body(sent[1]))),
    st.lists(forged_paxos(), min_size=1, max_size=3).map(forged_batch),
    st.sampled_from([{}, {"messages": []}, {"messages": [["commit", {}]]}, {"messages": [[]]},
                     {"messages": [["prepare", {}]] * 65}, {"messages": 1}, {"other": []}]).map(
        lambda body: ("/internal/paxos/batch", _body(body))),
    PAXOS_HOSTILE["config"].map(lambda config: ("/internal/paxos/install", _body(config))),
    st.tuples(st.sampled_from(["/internal/push", "/internal/swim/join", "/internal/sync/fetch",
                               "/internal/paxos/prepare", "/internal/paxos/accept",
                               "/internal/paxos/batch", "/internal/paxos/install",
                               "/internal/paxos/keys"]),
              st.sampled_from([b"", b"{", b"[1e999]", b"[" + b"9" * 30 + b"]", b"\xff\xfe",
                               b"[NaN]", b"null", b'"x"'])),
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=REQUESTS)
def test_signed_malicious_internal_requests_never_fail_and_change_nothing(
        remote: Remote, request: tuple[str, bytes]) -> None:
    path, body = request
    before = remote.state()
    status, reply = remote.call("POST", path, body)
    assert status < 500, (path, body[:200], reply)
    if status >= 400:
        assert set(reply) >= {"error", "message"}, reply
    assert remote.state() == before, (path, body[:200], status, reply)
