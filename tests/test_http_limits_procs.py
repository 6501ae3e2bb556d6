"""HTTP server bounds on real `kvs serve` processes: a slowloris flood under a lowered
file-descriptor limit, and blocking queries abandoned by their clients. Figures (fds,
connections held, RSS) are printed: run with -s to see them."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import time
from pathlib import Path

import aiohttp
import pytest

from kvs.testing import KvsNode, NodeGroup
from tests.procs import procs_fixture  # noqa: F401  (the `procs` fixture)

pytestmark = pytest.mark.skipif(shutil.which("prlimit") is None or not Path("/proc/self/fd").exists(),
                                reason="needs Linux /proc and prlimit")

FD_LIMIT = 256  # the node's own limit; max_connections (1024 by default) is fitted below it


def start_limited(procs: NodeGroup, env: dict[str, str]) -> KvsNode:
    """A node started under `prlimit --nofile=FD_LIMIT`."""
    return procs.start("limited", env=env,
                       launcher=["prlimit", f"--nofile={FD_LIMIT}:{FD_LIMIT}", "--"])


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]


async def metric(http: aiohttp.ClientSession, url: str, name: str) -> float:
    async with http.get(url + "/metrics") as resp:
        text = await resp.text()
    return float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]


async def test_a_slowloris_flood_neither_exhausts_fds_nor_holds_connections(
        procs: NodeGroup) -> None:
    node = start_limited(procs, {"KVS_HTTP_HEADER_TIMEOUT_SECONDS": "2"})
    assert node.pid is not None and node.url is not None
    port = int(node.url.rsplit(":", 1)[1])
    assert "event=max_connections_lowered max_connections=1024 fd_limit=256 using=128" \
        in node.log_tail(200)
    fds_before, rss_before = fds(node.pid), rss_mb(node.pid)
    outcomes: dict[str, int] = {"refused_503": 0, "refused_reset": 0, "held_then_closed": 0}
    held_for: list[float] = []
    refused_in: list[float] = []

    async def slow_client() -> None:
        """Sends a request head one byte per 0.3 s; records how the node ends it."""
        opened = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head = iter(b"GET /health HTTP/1.1\r\nX-Slow: " + b"x" * 1000)
        try:
            while not reader.at_eof():
                try:
                    answer = await asyncio.wait_for(reader.read(200), 0.3)
                except TimeoutError:
                    writer.write(bytes([next(head)]))
                    continue
                if answer.startswith(b"HTTP/1.1 503"):
                    outcomes["refused_503"] += 1
                    refused_in.append(time.monotonic() - opened)
                    return
            outcomes["held_then_closed"] += 1
            held_for.append(time.monotonic() - opened)
        except OSError:  # refused beyond REFUSING_MAX at once: closed before the head arrived
            outcomes["refused_reset"] += 1
            refused_in.append(time.monotonic() - opened)
        finally:
            writer.close()

    peak_fds = 0

    async def sample_fds() -> None:
        nonlocal peak_fds
        while True:
            peak_fds = max(peak_fds, fds(node.pid))  # type: ignore[arg-type]
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample_fds())
    flood = [asyncio.create_task(slow_client()) for _ in range(400)]
    try:
        # The flood's slow clients all end within the header timeout plus slack: none is held.
        await asyncio.wait_for(asyncio.gather(*flood), 30)
    finally:
        sampler.cancel()
        for task in flood:
            task.cancel()
    async with aiohttp.ClientSession() as http:  # an ordinary client is served as before
        async with http.get(node.url + "/health") as resp:
            assert resp.status == 200
        refused_metric = await metric(http, node.url, "kvs_http_connections_refused_total")
    fds_after, rss_after = fds(node.pid), rss_mb(node.pid)
    log = node.log_tail(500)
    print(f"\nslowloris x400 (fd limit {FD_LIMIT}, cap 128, header timeout 2 s): {outcomes}; "
          f"held {min(held_for, default=0):.1f}-{max(held_for, default=0):.1f} s, "
          f"refused in <= {max(refused_in, default=0):.2f} s; "
          f"node fds before {fds_before}, "
          f"peak {peak_fds}, after {fds_after}; RSS {rss_before:.0f} -> {rss_after:.0f} MB")
    assert peak_fds < FD_LIMIT
    assert outcomes["held_then_closed"] <= 128 and outcomes["refused_503"] > 0
    assert refused_metric == outcomes["refused_503"] + outcomes["refused_reset"]
    assert 0 < max(held_for, default=0) < 2 + 8  # header timeout, plus slack for a loaded 2-core machine
    assert max(refused_in, default=0) < 3  # refused at once, not after a timeout
    assert log.count("event=connection_limit_reached") == 1  # once, not once per connection
    assert "Traceback" not in log and "out of system resource" not in log
    assert rss_after < rss_before + 50


async def test_abandoned_blocking_queries_are_released_at_once(
        procs: NodeGroup) -> None:
    node = procs.start(env={"KVS_MAX_BLOCKING_QUERIES": "300"})
    assert node.pid is not None and node.url is not None
    port = int(node.url.rsplit(":", 1)[1])
    async with aiohttp.ClientSession() as http:
        async with http.put(node.url + "/kv/w", json={"value": 0}) as resp:
            index = resp.headers["X-KVS-Index"]
        request = f"GET /kv/w?index={index}&wait=10m HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        rss_before, fds_before = rss_mb(node.pid), fds(node.pid)
        figures = []
        for _ in range(3):  # open 400 blocking queries, drop their clients; three times
            clients = [await asyncio.open_connection("127.0.0.1", port) for _ in range(400)]
            for _, writer in clients:
                writer.write(request)
            reads = [asyncio.create_task(reader.read(300)) for reader, _ in clients]
            done: set[asyncio.Task[bytes]] = set()
            while len(done) < 100:  # the 100 beyond the cap are answered, the 300 wait
                more, _ = await asyncio.wait(set(reads) - done, timeout=10,
                                             return_when=asyncio.FIRST_COMPLETED)
                assert more, f"only {len(done)} queries beyond the cap were answered"
                done |= more
            answers = [task.result() for task in done]
            assert len(answers) == 100 and all(
                b" 503 " in a and b"too_many_blocking_queries" in a and b"Retry-After: 1" in a
                for a in answers), answers[0]
            while await metric(http, node.url, "kvs_blocking_queries") < 300:
                await asyncio.sleep(0.05)
            for task in reads:
                task.cancel()
            held = (await metric(http, node.url, "kvs_blocking_queries"), fds(node.pid),
                    rss_mb(node.pid))
            for _, writer in clients:
                writer.close()
            deadline = time.monotonic() + 10
            while await metric(http, node.url, "kvs_blocking_queries") > 0:
                assert time.monotonic() < deadline, "abandoned blocking queries still counted"
                await asyncio.sleep(0.05)
            figures.append(held)
        rss_after = rss_mb(node.pid)
        started = time.monotonic()
        async with http.put(node.url + "/kv/w", json={"value": 1}) as resp:
            assert resp.status == 200
        put_seconds = time.monotonic() - started
        # One live blocking query at SIGTERM: answered at once, and the node stops promptly.
        live = asyncio.create_task(http.get(node.url + "/kv/w", params={"index": str(int(index) + 5),
                                                                        "wait": "10m"}))
        while await metric(http, node.url, "kvs_blocking_queries") < 1:
            await asyncio.sleep(0.05)
        started = time.monotonic()
        os.kill(node.pid, signal.SIGTERM)
        answer = await asyncio.wait_for(live, 10)
        assert answer.status == 200
        code = await asyncio.to_thread(node.proc.wait, 10)  # type: ignore[union-attr]
        stop_seconds = time.monotonic() - started
    print(f"\nblocking queries x400, cap 300, 3 rounds: held (gauge, fds, RSS MB) {figures}; "
          f"fds before {fds_before}; RSS {rss_before:.0f} -> {rss_after:.0f} MB; "
          f"PUT to the watched key {put_seconds * 1000:.0f} ms; SIGTERM to exit {stop_seconds:.2f} s")
    assert code == 0
    assert rss_after < rss_before + 50
    assert put_seconds < 2 and stop_seconds < 5
