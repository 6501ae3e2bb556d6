"""Prometheus `/metrics`: one registry per node, read from the counters the parts keep.

The engine, replicator and membership already count what they do (plain ints on
their hot paths); a custom collector turns them into Prometheus families at
scrape time, so nothing on the request path touches prometheus-client; the request
counter is a dict the wrapper around every route (kvs/node.py) increments.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping, Sized
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kvs.cluster.replication import Replicator
from kvs.cluster.swim.membership import Membership
from kvs.cluster.swim.state import ALIVE, DEAD, LEFT, SUSPECT
from kvs.engine import Engine
from kvs.http.connections import ConnectionLimit

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
QUORUM_OUTCOMES = ("committed", "conflict", "rejected", "unavailable", "indeterminate")


class _NodeCollector(Collector):
    def __init__(self, engine: Engine, replicator: Replicator, membership: Membership,
                 watchers: Sized | None, connections: ConnectionLimit | None,
                 requests: dict[tuple[str, int], int], quorum_rounds: Mapping[str, int],
                 paxos_sent: Mapping[str, int]) -> None:
        self.engine = engine
        self.quorum_rounds = quorum_rounds
        self.paxos_sent = paxos_sent
        self.connections = connections
        self.replicator = replicator
        self.membership = membership
        self.watchers = watchers
        self.requests = requests

    def collect(self) -> Iterator[Metric]:
        stats, repl = self.engine.stats, self.replicator.stats
        counters = [
            ("kvs_cas_success", "Conditional writes whose conditions held (a transaction with "
             "conditions counts once)", stats.cas_success),
            ("kvs_cas_conflicts", "Conditional writes rejected with 409 (a transaction counts once)",
             stats.cas_conflict),
            ("kvs_superseded_versions", "Versions that lost a conflict (kept in history)",
             stats.superseded),
            ("kvs_expired_keys", "Keys whose TTL ran out (sweeper)", stats.expired),
            ("kvs_purged_keys", "Tombstoned or expired keys purged after tombstone_gc_seconds",
             stats.purged),
            ("kvs_remote_versions_applied", "Replicated versions applied", stats.remote_applied),
            ("kvs_remote_versions_refused", "Replicated versions refused (past the purge horizon, "
             "from the future, or conflicting)", stats.remote_refused),
            ("kvs_remote_versions_from_future", "Replicated versions refused: timestamp beyond "
             "this node's clock + max_clock_offset_ms", stats.remote_future),
            ("kvs_remote_versions_conflicting", "Replicated versions refused: an id this node "
             "holds, with other content", stats.remote_conflicting),
            ("kvs_swim_updates_refused", "Membership updates dropped: incarnation from the future",
             self.membership.refused_updates),
            ("kvs_replication_pushes", "Eager push requests that reached a peer", repl.pushes),
            ("kvs_replication_push_failures", "Eager push requests that failed", repl.push_failures),
            ("kvs_replication_pushes_withheld", "Eager push batches not sent because this "
             "node's disk had not written them (a storage fault); anti-entropy sends them later",
             repl.pushes_withheld),
            ("kvs_replication_versions_pushed", "Versions sent by eager push", repl.versions_pushed),
            ("kvs_anti_entropy_rounds", "Merkle anti-entropy rounds", repl.rounds),
            ("kvs_anti_entropy_keys_repaired", "Keys repaired by anti-entropy", repl.keys_repaired),
            ("kvs_anti_entropy_bytes", "Bytes exchanged by anti-entropy", repl.bytes),
        ]
        for name, text, value in counters:
            yield CounterMetricFamily(name, text, value=value)
        requests = CounterMetricFamily("kvs_http_requests", "HTTP requests by method and status",
                                       labels=["method", "status"])
        for (method, status), count in sorted(self.requests.items()):
            requests.add_metric([method, str(status)], count)
        yield requests
        rounds = CounterMetricFamily("kvs_quorum_rounds", "Paxos rounds this node proposed for "
                                     "consistency=quorum requests, by outcome", labels=["outcome"])
        for outcome in QUORUM_OUTCOMES:
            rounds.add_metric([outcome], self.quorum_rounds.get(outcome, 0))
        yield rounds
        yield CounterMetricFamily("kvs_paxos_messages_sent", "Paxos messages this node's "
                                  "proposer sent to other voters",
                                  value=self.paxos_sent.get("messages", 0))
        yield CounterMetricFamily("kvs_paxos_calls", "Node-to-node calls that carried them "
                                  "(messages / calls = the mean batch)",
                                  value=self.paxos_sent.get("calls", 0))
        status = self.engine.status()
        yield GaugeMetricFamily("kvs_keys", "Live keys on this node", value=status["keys"])
        yield GaugeMetricFamily("kvs_index", "This node's index counter", value=status["index"])
        tombstones = GaugeMetricFamily("kvs_dead_keys_pending_purge",
                                       "Tombstones: deleted or expired keys kept until purge",
                                       value=self.engine.dead_pending_purge())
        yield tombstones
        if self.watchers is not None:
            yield GaugeMetricFamily("kvs_blocking_queries", "Blocking queries waiting on this node",
                                    value=len(self.watchers))
        yield from _clock_metrics(status["clock"])
        if self.connections is not None:
            yield GaugeMetricFamily("kvs_http_connections", "Client connections open on this node",
                                    value=self.connections.open)
            yield CounterMetricFamily("kvs_http_connections_refused",
                                      "Connections refused with 503: max_connections was reached",
                                      value=self.connections.refused)
        members = GaugeMetricFamily("kvs_members", "Cluster members by state", labels=["state"])
        rows = self.membership.members()
        for state in (ALIVE, SUSPECT, DEAD, LEFT):
            members.add_metric([state], sum(1 for m in rows if m["state"] == state))
        yield members


def _clock_metrics(clock: dict[str, Any]) -> Iterator[Metric]:
    yield GaugeMetricFamily("kvs_clock_skewed", "1 while this node's clock is off from most of "
                            "its peers' by more than max_clock_offset_ms", value=int(clock["skewed"]))
    offsets = GaugeMetricFamily("kvs_clock_offset_ms", "This node's clock minus a peer's, last "
                                "measured (peers that refused our timestamp are left out)",
                                labels=["peer"])
    for peer, measured in clock["peers"].items():
        if measured["offset_ms"] is not None:
            offsets.add_metric([peer], measured["offset_ms"])
    yield offsets


class Metrics:
    def __init__(self, engine: Engine, replicator: Replicator, membership: Membership,
                 watchers: Sized | None = None, connections: ConnectionLimit | None = None,
                 quorum_rounds: Mapping[str, int] | None = None,
                 paxos_sent: Mapping[str, int] | None = None) -> None:
        self.registry = CollectorRegistry()
        # (method, status) -> answered requests; a plain dict, as prometheus-client's Counter
        # takes a lock and builds a label key on every request.
        self.requests: Counter[tuple[str, int]] = Counter()
        self.registry.register(_NodeCollector(engine, replicator, membership, watchers,
                                              connections, self.requests,
                                              {} if quorum_rounds is None else quorum_rounds,
                                              {} if paxos_sent is None else paxos_sent))

    def count(self, method: str, status: int) -> None:
        """Count one answered request (called by the wrapper around every route)."""
        self.requests[method, status] += 1

    async def handle(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry),
                            headers={"Content-Type": CONTENT_TYPE})
