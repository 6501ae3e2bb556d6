"""A lock holder or election candidate for the crash tests: it records what it believes.

    python tests/coordination_holder.py KIND-lock|KIND-election URL[,URL...] KEY TTL LOG [HOLD_MIN HOLD_MAX]

KIND is `async` (Lock and LeaderElection given an AsyncClient) or `blocking` (given a
blocking Client: plain threads, no event loop).

It runs until killed (the tests SIGKILL it). Every line of LOG is `<event> <time.time()>
<server ms>`, written and flushed at once, so a kill loses nothing already claimed:

    acquired T S   lock mode: the lease became ours; S = the acquire's server timestamp
    elected  T S   election mode: we became the leader; S as above
    hold     T S   we held it at T: `held` was true both before and after reading the clock;
                   S = server timestamp of the last successful acquire/renewal
    release  T -   lock mode: about to release (it claims nothing after this line)
    lost     T -   on_lost fired

Lock mode holds each acquisition for a random HOLD_MIN..HOLD_MAX seconds, releases, and
tries again; election mode leads until killed.
"""

from __future__ import annotations

import asyncio
import random
import sys
import threading
import time
from typing import Any, TextIO

from kvs.client import AsyncClient, Client
from kvs.coordination import LeaderElection, Lock

BEAT = 0.02


def record(log: TextIO, event: str, server_ms: Any = "-") -> None:
    log.write(f"{event} {time.time():.6f} {server_ms}\n")
    log.flush()


def beat(log: TextIO, lock: Lock | None) -> None:
    if lock is not None and lock.held:
        now = time.time()
        if lock.held and lock.result is not None:
            log.write(f"hold {now:.6f} {lock.result.timestamp}\n")
            log.flush()


async def hold_locks(client: AsyncClient, key: str, ttl: float, log: TextIO, low: float, high: float) -> None:
    loop = asyncio.get_running_loop()
    while True:
        lock = Lock(client, key, ttl=ttl, on_lost=lambda lock, reason: record(log, "lost"))
        await lock.acquire()
        assert lock.result is not None
        record(log, "acquired", lock.result.timestamp)
        end = loop.time() + random.uniform(low, high)
        while loop.time() < end and lock.held:
            beat(log, lock)
            await asyncio.sleep(BEAT)
        record(log, "release")
        await lock.release()
        await asyncio.sleep(random.uniform(0, 0.05))


def hold_locks_blocking(client: Client, key: str, ttl: float, log: TextIO, low: float, high: float) -> None:
    while True:
        lock = Lock(client, key, ttl=ttl, on_lost=lambda lock, reason: record(log, "lost"))
        lock.acquire()
        assert lock.result is not None
        record(log, "acquired", lock.result.timestamp)
        end = time.monotonic() + random.uniform(low, high)
        while time.monotonic() < end and lock.held:
            beat(log, lock)
            time.sleep(BEAT)
        record(log, "release")
        lock.release()
        time.sleep(random.uniform(0, 0.05))


def candidate(client: AsyncClient | Client, key: str, ttl: float, log: TextIO) -> LeaderElection:
    def elected(election: LeaderElection) -> None:
        assert election.lock is not None and election.lock.result is not None
        record(log, "elected", election.lock.result.timestamp)

    return LeaderElection(client, key, ttl=ttl, on_elected=elected,
                          on_lost=lambda election, reason: record(log, "lost"))


def lead_blocking(client: Client, key: str, ttl: float, log: TextIO) -> None:
    election = candidate(client, key, ttl, log)
    threading.Thread(target=election.run, daemon=True).start()
    while True:
        if election.is_leader:
            beat(log, election.lock)
        time.sleep(BEAT)


async def lead(client: AsyncClient, key: str, ttl: float, log: TextIO) -> None:
    election = candidate(client, key, ttl, log)
    campaign = asyncio.create_task(election.run())
    while not campaign.done():
        if election.is_leader:
            beat(log, election.lock)
        await asyncio.sleep(BEAT)
    campaign.result()


async def run_async(mode: str, url: list[str], key: str, ttl: float, log: TextIO, low: float,
                    high: float) -> None:
    async with AsyncClient(url, timeout=2.0) as client:
        if mode == "lock":
            await hold_locks(client, key, ttl, log, low, high)
        else:
            await lead(client, key, ttl, log)


def main(argv: list[str]) -> None:
    kind_mode, urls, key, ttl, path = argv[:5]
    url = urls.split(",")  # the nodes in failover order
    kind, mode = kind_mode.split("-")
    low, high = (float(x) for x in argv[5:7]) if len(argv) > 5 else (0.2, 0.6)
    with open(path, "a") as log:
        if kind == "async":
            asyncio.run(run_async(mode, url, key, float(ttl), log, low, high))
            return
        with Client(url, timeout=2.0) as client:
            if mode == "lock":
                hold_locks_blocking(client, key, float(ttl), log, low, high)
            else:
                lead_blocking(client, key, float(ttl), log)


if __name__ == "__main__":
    main(sys.argv[1:])
