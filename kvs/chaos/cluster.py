"""Nodes the chaos run does not own: running nodes given by URL, and the HTTP helper for all.

The nodes a run starts itself are kvs.testing's `Cluster` (names n1..nN, one group id per
node when partitions are on, one clock-skewed node): the same process manager the tests,
the benchmarks and `kvs cluster up` use.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aiohttp


class ClusterError(RuntimeError):
    pass


async def get_json(session: aiohttp.ClientSession, url: str, timeout: float = 2.0,
                   method: str = "GET", headers: Mapping[str, str] | None = None) -> Any:
    async with session.request(method, url, timeout=aiohttp.ClientTimeout(total=timeout),
                               headers=headers) as resp:
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
