"""Nodes the chaos run does not own: running nodes given by URL; the HTTP helper for all,
and the credentials the run's requests carry.

The nodes a run starts itself are kvs.testing's `Cluster` (names n1..nN, one group id per
node when partitions are on, one clock-skewed node): the same process manager the tests,
the benchmarks and `kvs cluster up` use.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from kvs.cluster import auth


class ClusterError(RuntimeError):
    pass


async def get_json(session: aiohttp.ClientSession, url: str, timeout: float = 2.0,
                   method: str = "GET", headers: Mapping[str, str] | None = None,
                   json: Any = None) -> Any:
    async with session.request(method, url, timeout=aiohttp.ClientTimeout(total=timeout),
                               headers=headers, json=json) as resp:
        if resp.status != 200:
            raise ClusterError(f"{method} {url}: HTTP {resp.status}")
        return await resp.json(content_type=None)


class RemoteNode:
    """A node somebody else runs: the chaos run only sends it requests."""

    def __init__(self, name: str, url: str) -> None:
        self.name = name
        self.url = url.rstrip("/")
        self.paused = False
        self.skew_ms = 0

    @property
    def running(self) -> bool:
        return True


async def remote_nodes(session: aiohttp.ClientSession, urls: list[str]) -> list[RemoteNode]:
    """Name each URL by the node id its /health reports."""
    out = []
    for url in urls:
        try:
            health = await get_json(session, url.rstrip("/") + "/health", timeout=5.0)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ClusterError(f"{url}: not reachable ({exc!r}); is the node running?") from exc
        out.append(RemoteNode(str(health["node"]), url))
    if len({n.name for n in out}) != len(out):
        raise ClusterError("two URLs lead to the same node id; give each node once")
    return out


# -- credentials ------------------------------------------------------------------------------

def bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


@dataclass(frozen=True)
class Credentials:
    """What the run's requests carry. With ACLs on (the --netns cluster) the clients hold a
    token that may write the run's keys and nothing else, and the run's own operator
    requests (Merkle roots, dumps, voter changes) a management token; without ACLs those
    are signed with the cluster secret, when there is one."""

    secret: str | None = None
    operator_token: str | None = None
    client_token: str | None = None

    def operator(self, method: str, path: str, body: bytes = b"") -> dict[str, str]:
        if self.operator_token is not None:
            return bearer(self.operator_token)
        return auth.operator_headers(self.secret, method, path, body)

    def client(self) -> dict[str, str]:
        return bearer(self.client_token)


class HasUrl(Protocol):
    name: str
    url: str


async def with_acl(session: aiohttp.ClientSession, nodes: Sequence[HasUrl], prefix: str,
                   secret: str | None, timeout: float) -> tuple[Credentials, dict[str, str]]:
    """Bootstrap the ACLs of a fresh cluster on its first node, make the clients' token
    (write on `prefix`/ only), and wait until every node knows it, so that no client's
    first request is refused for a token not replicated yet. The credentials, and the
    token ids for the history (never the secrets)."""
    url = nodes[0].url
    admin = await get_json(session, url + "/acl/bootstrap", method="POST", timeout=timeout)
    as_admin = bearer(admin["secret"])
    policy = {"name": "chaos", "description": "the chaos run's clients: its keys only",
              "rules": [{"prefix": prefix + "/", "access": "write"}]}
    await get_json(session, url + "/acl/policies", method="POST", json=policy, headers=as_admin,
                   timeout=timeout)
    client = await get_json(session, url + "/acl/tokens", method="POST", headers=as_admin, timeout=timeout,
                            json={"policies": ["chaos"], "description": "chaos clients"})
    deadline = time.monotonic() + timeout
    for node in nodes:
        while True:
            try:
                await get_json(session, node.url + "/acl/token/self", headers=bearer(client["secret"]))
                break
            except (aiohttp.ClientError, TimeoutError, ClusterError, OSError) as exc:
                if time.monotonic() > deadline:
                    raise ClusterError(f"the clients' ACL token did not reach {node.name}: {exc}") from None
                await asyncio.sleep(0.1)
    return (Credentials(secret, admin["secret"], client["secret"]),
            {"operator_token": admin["id"], "client_token": client["id"], "policy": "chaos"})
