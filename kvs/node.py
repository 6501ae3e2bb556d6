"""Wiring and lifecycle of one node: storage, engine, routes, background loops.

Everything that starts is pushed onto one exit stack right after it started, so
`stop()` tears down in exactly the reverse order, and so does a start-up that
fails half-way: no RocksDB lock, listening socket or task is left behind.

    storage ─► engine ─► socket ─► transport ─► membership, replicator, quorum, voters
            ─► listeners wired ─► HTTP server ─► membership started ─► joining as a voter
            (auto_voter) ─► loops

Listeners (who hears about committed writes) are wired here and only here.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable
from functools import partial

from aiohttp import web

from kvs.clock import wall_ms
from kvs.cluster.quorum import Quorum, bootstrap_voters
from kvs.cluster.replication import Replicator
from kvs.cluster.swim.membership import Membership
from kvs.cluster.transport import HttpTransport
from kvs.cluster.voters import VoterChanges
from kvs.config import Config
from kvs.engine import Engine
from kvs.errors import ConfigError, StorageFailed
from kvs.http import connections, consul, index, openapi, ui
from kvs.http.acl import ACLApi, Gate, Tokens
from kvs.http.cluster import ClusterApi
from kvs.http.fastpath import fast_routes
from kvs.http.kv import KVApi
from kvs.http.metrics import Metrics
from kvs.http.server import front, make_app
from kvs.http.services import ServiceApi
from kvs.http.snapshot import SnapshotApi
from kvs.http.txn import TxnApi
from kvs.store.storage import Storage
from kvs.tls import NodeTls, node_tls
from kvs.watch import Watchers

log = logging.getLogger("kvs.node")

ENVELOPE_BYTES = 1 << 20


def client_max_size(config: Config) -> int:
    """The largest request body a node reads: four values (a txn) and their envelope."""
    return config.max_value_bytes * 4 + ENVELOPE_BYTES


class Node:
    def __init__(self, config: Config, now_ms: Callable[[], int] = wall_ms) -> None:
        self.config = config
        self.now_ms = now_ms  # injectable wall clock: clock-skew tests run a node in the future
        self.storage: Storage | None = None
        self.engine: Engine | None = None
        self.watchers = Watchers()
        self.connections = connections.ConnectionLimit(connections.fitted_limit(config.max_connections))
        self.transport: HttpTransport | None = None
        self.membership: Membership | None = None
        self.replicator: Replicator | None = None
        self.quorum: Quorum | None = None
        self.voters: VoterChanges | None = None
        self.locks: consul.Locks | None = None
        self.port: int | None = None
        self.app: web.Application | None = None
        self.site: connections.Site | None = None
        self.tokens: Tokens | None = None  # ACL tokens and policies, kept in step with the store
        self.left = asyncio.Event()  # set after POST /cluster/leave: the process should exit
        self.tls: NodeTls | None = None
        self._stack = contextlib.AsyncExitStack()

    @property
    def url(self) -> str:
        scheme = "https" if self.config.tls_cert_file else "http"
        return f"{scheme}://{self.config.bind_address}:{self.port}"

    @property
    def address(self) -> str:
        return f"{self.config.bind_address}:{self.port}"

    async def start(self) -> None:
        try:
            await self._start(self._stack)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Tear down whatever started, in reverse order; safe to call twice."""
        await self._stack.aclose()

    async def _start(self, stack: contextlib.AsyncExitStack) -> None:
        config, now_ms = self.config, self.now_ms
        _check_exposure(config)
        self.tls = node_tls(config)  # before anything opens: a bad file stops the node here
        self.storage = storage = Storage(
            config.data_path, compression=config.compression,
            gc_ms=config.tombstone_gc_seconds * 1000, sync_writes=config.sync_writes)
        stack.callback(self._close_storage)
        storage.ensure_identity(config.node_id, now_ms())
        self.engine = engine = Engine(config, storage, now_ms)
        bootstrap_voters(engine, config)
        self.tokens = Tokens(engine, now_ms)
        self.tokens.load()
        # Bind first, so the address peers must use is known before membership starts.
        sock = _bind(config.bind_address, config.port)
        stack.callback(sock.close)  # a no-op once the server has taken and closed it
        self.port = sock.getsockname()[1]
        self.transport = HttpTransport(config.cluster_secret, self.tls.peer if self.tls else None)
        stack.push_async_callback(self.transport.close)
        self.membership = Membership(
            node_id=engine.node_id, address=self.address, joined_at=engine.joined_at,
            seeds=config.seed_nodes, config=config, transport=self.transport,
            clocks=engine.clocks, wall=now_ms)
        self.replicator = Replicator(engine, self.transport, self.membership,
                                     sync_interval_ms=config.sync_interval_ms,
                                     eager_push=config.eager_push, data_dir=config.data_path)
        stack.push_async_callback(self.replicator.stop)
        self.quorum = Quorum(engine, self.transport, self.membership)
        stack.push_async_callback(self.quorum.close)
        self.voters = VoterChanges(self.quorum, self.transport, self.membership)
        self.locks = consul.Locks(engine, self.quorum, consul.Writes(config, engine, self.quorum))
        self._wire(engine, self.membership, self.replicator)
        self.app = self._app()
        runner = connections.runner(self.app, front(self.app))
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        stack.callback(self.watchers.close)  # before cleanup: blocking queries answer now
        self.site = await connections.serve(runner, sock, self.connections,
                                            header_timeout=config.http_header_timeout_seconds,
                                            keepalive_timeout=config.http_keepalive_seconds,
                                            ssl_context=self.tls.server if self.tls else None,
                                            fast=fast_routes(self.app),
                                            client_max_size=client_max_size(config))
        await self.membership.start()
        stack.push_async_callback(self.membership.stop)
        if config.auto_voter:
            self.voters.start_joining(self.replicator.caught_up)
            stack.push_async_callback(self.voters.stop_joining)
        self._spawn(stack, self.replicator.run(), "anti-entropy")
        self._spawn(stack, self._every(config.ttl_sweep_interval_ms, self._sweep), "sweeper")
        self._spawn(stack, self._every(config.ttl_sweep_interval_ms, self._sweep_locks),
                    "consul-lock-sweeper")
        self._spawn(stack, self._every(config.storage_retry_interval_ms, self._heal_storage),
                    "storage-recovery")
        log.info("event=started node=%s url=%s data_dir=%s cas_enabled=%s acl_enabled=%s "
                 "seeds=%s tls=%s", engine.node_id, self.url, config.data_dir,
                 config.cas_enabled, config.acl_enabled, ",".join(config.seed_nodes) or "-",
                 _tls_mode(self.tls))

    def _wire(self, engine: Engine, membership: Membership, replicator: Replicator) -> None:
        """Who hears what: committed versions go to the ACL cache, blocking queries and eager
        push, TTL expiries to the ACL cache and blocking queries, membership changes to
        replication."""
        assert self.tokens is not None
        engine.listeners.append(self.tokens.on_applied)  # first: a revocation applies at once
        engine.listeners.append(self.watchers.notify)
        engine.listeners.append(replicator.on_applied)
        engine.expiry_listeners.append(self.tokens.on_expired)
        engine.expiry_listeners.append(partial(self.watchers.notify_keys, expired=True))
        membership.add_listener(replicator.on_member)

    def _app(self) -> web.Application:
        assert (self.engine and self.membership and self.replicator and self.quorum
                and self.voters and self.transport and self.locks and self.tokens)
        config, engine = self.config, self.engine
        metrics = Metrics(engine, self.replicator, self.membership, self.watchers, self.connections,
                          self.quorum.rounds, self.quorum.sent)
        kv = KVApi(config, engine, self.watchers, self.quorum)
        routes = [
            *kv.routes(),
            *TxnApi(config, engine).routes(),
            *ClusterApi(engine, self.membership, self.replicator, self.left.set, self.voters).routes(),
            *self.membership.routes(),
            *self.replicator.routes(),
            *self.quorum.routes(),
            *self.voters.routes(),
            web.get("/metrics", metrics.handle),
            *ServiceApi(config, engine).routes(),
            *SnapshotApi(config, engine).routes(),
            web.get("/openapi.json", openapi.handle),
            *index.routes(engine.node_id),
            *consul.routes(config, engine, self.membership, kv.block, self.locks),
            *ui.routes(),
            *ACLApi(config, engine, self.tokens).routes(),
        ]
        return make_app(routes, engine=engine, count=metrics.count, secret=config.cluster_secret,
                        client_max_size=client_max_size(config),
                        body_timeout=config.http_body_timeout_seconds,
                        dialects={consul.PREFIX: consul.DIALECT},
                        peer_certificates=self.tls is not None and self.tls.verify_peer,
                        gate=Gate(self.tokens, config) if config.acl_enabled else None)

    def _spawn(self, stack: contextlib.AsyncExitStack, coro: Awaitable[None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)  # type: ignore[arg-type]
        stack.push_async_callback(_cancel, task)

    async def _every(self, interval_ms: int, step: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(interval_ms / 1000)
            try:
                await step()
            except StorageFailed:
                pass  # the store logs a fault once, when it begins
            except Exception:
                log.exception("event=background_step_failed step=%s", step.__name__)

    async def _sweep(self) -> None:
        assert self.engine is not None
        if self.engine.storage_fault is not None:
            return  # it would only be refused; the storage-recovery loop is at work
        expired, purged = await self.engine.sweep()
        if expired or purged:
            log.debug("event=sweep expired=%d purged=%d", expired, purged)

    async def _sweep_locks(self) -> None:
        """Free the Consul locks of sessions that are gone (kvs/http/consul/locks.py)."""
        assert self.engine is not None and self.locks is not None
        if self.engine.storage_fault is None:
            freed = await self.locks.sweep()
            if freed:
                log.info("event=consul_locks_freed count=%d", freed)

    async def _heal_storage(self) -> None:
        assert self.engine is not None
        if self.engine.storage_fault is not None:
            self.engine.recover_storage()

    def _close_storage(self) -> None:
        if self.storage is not None:
            self.storage.close()
            self.storage = None


def _check_exposure(config: Config) -> None:
    """Refuse to listen beyond loopback without a cluster secret, unless told to (insecure).

    Without a secret anyone who reaches the port can push any version and evict any
    member; on loopback that is only this host's users, beyond it the whole network.
    """
    if config.cluster_secret is not None or not _exposed(config.bind_address):
        return
    risk = (f"bind_address {config.bind_address} is not a loopback address and no "
            "cluster_secret is set: anyone who reaches this port can write any data into "
            "the cluster and evict its members")
    if not config.insecure:
        raise ConfigError(f"{risk}. Set cluster_secret (the same on every node, e.g. from "
                          "`openssl rand -hex 32`), or set insecure: true to run this way anyway")
    log.warning("event=insecure INSECURE: %s (insecure: true). Set cluster_secret for any "
                "network you do not fully trust", risk)


def _tls_mode(tls: NodeTls | None) -> str:
    if tls is None:
        return "off"
    return "mutual" if tls.verify_peer else "on"


def _exposed(host: str) -> bool:
    """False only if every address `host` names is a loopback one."""
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return True  # cannot tell: treat it as exposed
    return not infos or any(
        not ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in infos)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror}; "
                      "is another process using that port? Pick another with --port") from exc
    sock.listen(1024)
    sock.setblocking(False)
    return sock
