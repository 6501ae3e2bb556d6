"""Lock and LeaderElection against one real node, with either client.

In-process: exclusion, renewal, release, blocking acquire woken by a release and by an
expiry, loss detected at once (blocking query) or within one renewal interval (renewals
only), the context manager cancelling its body, an unreachable node, CAS disabled.

The blocking kind (given a blocking Client), against a `kvs serve` subprocess: the same
lease behaviour from plain threads, `with lock:`, a node that hangs (SIGSTOP) mid-lease,
an election of three threads; and every wrong pairing of API and client refused with a
TypeError before anything is written.

Crash rounds: holder processes (tests/coordination_holder.py) contend for one key and log
every moment they believe they hold it; the test SIGKILLs the holder again and again and then
checks the logs: no two holders ever at once, and each takeover comes after the dead holder's
lease expired on the node (server clock) and promptly after the kill.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kvs.client import AsyncClient, CASDisabled, Client
from kvs.coordination import LeaderElection, Lock, LockLost
from kvs.node import Node
from kvs.testing import KvsNode, NodeGroup, node_env
from tests.conftest import NodeFactory, eventually
from tests.procs import procs_fixture  # noqa: F401  (the `procs` fixture)

HOLDER = Path(__file__).with_name("coordination_holder.py")
SLACK = 0.3  # scheduling and round trips, on a loaded 2-core test machine


@pytest.fixture
async def kv(node: Node) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(node.url, timeout=2.0) as client:
        yield client


@pytest.fixture
async def other(node: Node) -> AsyncIterator[AsyncClient]:
    """A second client: another process, as far as the node can tell."""
    async with AsyncClient(node.url, timeout=2.0) as client:
        yield client


# -- Lock ------------------------------------------------------------------------------------

async def test_lock_excludes_renews_and_releases(kv: AsyncClient, other: AsyncClient) -> None:
    lock = Lock(kv, "locks/a", ttl=0.6)
    assert await lock.acquire(timeout=0)
    assert lock.held and lock.fencing_token is not None
    first = await kv.get("locks/a")
    assert first.value == lock.value and first.expires_at is not None

    rival = Lock(other, "locks/a", ttl=0.6)
    assert not await rival.acquire(timeout=0)
    started = time.monotonic()
    assert not await rival.acquire(timeout=0.3)
    assert 0.3 <= time.monotonic() - started < 0.3 + SLACK

    await asyncio.sleep(1.5)  # 2.5 ttl: alive only because it was renewed (every ttl/3)
    assert lock.held and not lock.lost.is_set()
    renewed = await kv.get("locks/a")
    assert renewed.value == lock.value and renewed.expires_at > first.expires_at  # type: ignore[operator]
    assert renewed.create_index == first.create_index  # a renewal is not a new acquisition

    assert await lock.release()
    assert not lock.held and not lock.lost.is_set()
    assert await kv.get_value("locks/a", None) is None
    assert not await lock.release()  # twice is harmless

    assert await rival.acquire(timeout=0)
    assert rival.fencing_token > lock.fencing_token  # type: ignore[operator]
    assert await rival.release()


async def test_blocking_acquire_wakes_on_release_and_at_expiry(kv: AsyncClient, other: AsyncClient) -> None:
    ttl = 1.0
    holder = Lock(kv, "locks/b", ttl=ttl)
    assert await holder.acquire()
    waiter = Lock(other, "locks/b", ttl=ttl)
    acquiring = asyncio.create_task(waiter.acquire())
    await asyncio.sleep(0.3)
    assert not acquiring.done()
    released_at = time.monotonic()
    await holder.release()
    assert await acquiring
    assert time.monotonic() - released_at < SLACK  # woken by the blocking query, not by polling

    # The holder "crashes": it stops renewing and never releases. The key expires on the node,
    # which bumps no index; the next contender must still wake at expires_at.
    assert waiter._renewer is not None
    waiter._renewer.cancel()
    expires_at = (await kv.get("locks/b")).expires_at
    assert expires_at is not None
    third = Lock(kv, "locks/b", ttl=ttl)
    assert await third.acquire(timeout=ttl + 2)
    assert third.result is not None and third.result.timestamp >= expires_at  # after expiry (server clock)
    assert time.time() - expires_at / 1000 < SLACK  # and promptly after it
    await third.release()


@pytest.mark.parametrize("how", ["overwrite", "delete"])
async def test_loss_is_seen_at_once_through_the_blocking_query(kv: AsyncClient, other: AsyncClient,
                                                               how: str) -> None:
    reasons: list[LockLost] = []
    lock = Lock(kv, "locks/c", ttl=3.0, on_lost=lambda lock, reason: reasons.append(reason))
    assert await lock.acquire()
    await asyncio.sleep(0.1)
    started = time.monotonic()
    if how == "overwrite":
        await other.put("locks/c", "someone else")
    else:
        await other.delete("locks/c")
    await asyncio.wait_for(lock.lost.wait(), SLACK)  # far sooner than the renewal (1 s)
    assert time.monotonic() - started < SLACK
    assert not lock.held and len(reasons) == 1 and reasons[0] is lock.reason
    assert isinstance(lock.reason, LockLost) and "locks/c" in lock.reason.message
    assert not await lock.release()  # nothing of ours to delete...
    if how == "overwrite":
        assert (await kv.get("locks/c")).value == "someone else"  # ...and theirs is left alone


@pytest.mark.parametrize("how", ["overwrite", "delete"])
async def test_renewal_failure_is_detected_within_one_renewal_interval(
        kv: AsyncClient, other: AsyncClient, how: str) -> None:
    ttl = 1.5
    lock = Lock(kv, "locks/d", ttl=ttl, watch=False)  # renewals only: every ttl/3
    assert await lock.acquire()
    await asyncio.sleep(random.uniform(0, ttl / 3))
    started = time.monotonic()
    if how == "overwrite":
        await other.put("locks/d", lock.value | {"token": "not ours"}, ttl=30)
    else:
        await other.delete("locks/d")
    await asyncio.wait_for(lock.lost.wait(), ttl / 3 + SLACK)
    assert time.monotonic() - started <= ttl / 3 + SLACK
    assert "renewal failed" in lock.reason.message  # type: ignore[union-attr]


async def test_context_manager_cancels_the_body_and_raises_lock_lost(kv: AsyncClient,
                                                                     other: AsyncClient) -> None:
    progress: list[str] = []

    async def critical_section() -> None:
        async with Lock(kv, "locks/e", ttl=2.0) as lock:
            progress.append("entered")
            assert lock.held
            await other.delete("locks/e")  # the lock is taken away while we work
            await asyncio.sleep(10)
            progress.append("finished")  # never: the body was cancelled

    started = time.monotonic()
    with pytest.raises(LockLost) as caught:
        await critical_section()
    assert time.monotonic() - started < SLACK
    assert progress == ["entered"]
    assert isinstance(caught.value.__context__, asyncio.CancelledError)
    assert not asyncio.current_task().cancelling()  # type: ignore[union-attr]  # our cancel was undone

    # Without a loss the context manager just releases; a cancel from outside stays a cancel.
    async with Lock(kv, "locks/e", ttl=2.0):
        pass
    assert await kv.get_value("locks/e", None) is None

    async def cancelled_from_outside() -> None:
        async with Lock(kv, "locks/e", ttl=2.0):
            await asyncio.sleep(10)

    task = asyncio.create_task(cancelled_from_outside())
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await kv.get_value("locks/e", None) is None  # released on the way out


async def test_unreachable_node_makes_the_holder_give_up_before_the_lease_ends(
        make_node: NodeFactory) -> None:
    node = await make_node()
    async with AsyncClient(node.url, timeout=0.5, connect_timeout=0.2) as client:
        lock = Lock(client, "locks/f", ttl=1.0)
        assert await lock.acquire()
        await asyncio.sleep(0.5)
        # Until when the holder believes in its lease (`held` turns false then, whenever
        # the event loop gets round to announcing the loss), against when the node lets go
        # of it: the deadline counts from when the renewal was sent, so it comes first. The
        # 2 ms cover expires_at's whole milliseconds and the two clock reads.
        assert lock.result is not None and lock.result.expires_at is not None
        believed_until = time.time() + lock.expires_in
        assert believed_until <= lock.result.expires_at / 1000 + 0.002
        await node.stop()  # no renewal can get through from now on
        await asyncio.wait_for(lock.lost.wait(), 2.0)
        assert not lock.held
        assert "ran out" in lock.reason.message  # type: ignore[union-attr]


async def test_cas_disabled_node_refuses_the_lock(make_node: NodeFactory) -> None:
    node = await make_node(cas_enabled=False)
    async with AsyncClient(node.url) as client:
        with pytest.raises(CASDisabled):
            await Lock(client, "locks/g", ttl=1.0).acquire()


# -- LeaderElection ----------------------------------------------------------------------------

@dataclass
class Candidate:
    election: LeaderElection
    task: asyncio.Task[None]
    events: list[str] = field(default_factory=list)


async def test_election_resign_handover_crash_takeover_and_step_down(node: Node) -> None:
    ttl = 1.0
    clients = [AsyncClient(node.url, timeout=2.0) for _ in range(3)]
    candidates: list[Candidate] = []
    for name, client in zip("abc", clients, strict=True):
        events: list[str] = []
        election = LeaderElection(client, "leader/x", ttl=ttl, identity=name,
                                  on_elected=lambda e, ev=events: ev.append("elected"),
                                  on_lost=lambda e, r, ev=events: ev.append("lost"))
        candidates.append(Candidate(election, asyncio.create_task(election.run()), events))

    def leaders() -> list[Candidate]:
        return [c for c in candidates if c.election.is_leader]

    try:
        await eventually(lambda: len(leaders()) == 1, 3, what="a leader")
        first = leaders()[0]
        await eventually(lambda: all(c.election.leader == first.election.identity for c in candidates),
                         3, what="followers to know the leader")
        await asyncio.sleep(ttl)  # terms survive renewals; still one leader
        assert leaders() == [first]

        # Resign: a follower takes over at once (the release wakes its blocking query).
        started = time.monotonic()
        await first.election.resign()
        await first.task
        assert not first.election.is_leader and first.events == ["elected"]
        await eventually(lambda: len(leaders()) == 1, 1, what="a new leader")
        assert time.monotonic() - started < SLACK
        second = leaders()[0]
        assert second is not first

        # Crash: the leader stops renewing. The other follower takes over after the expiry.
        lease = second.election.lock
        assert lease is not None and lease._renewer is not None and lease.result is not None
        lease._renewer.cancel()
        expires_at = (await clients[0].get("leader/x")).expires_at
        assert expires_at is not None
        third = next(c for c in candidates if c not in (first, second))
        await eventually(lambda: third.election.is_leader, ttl + 2, interval=0.005, what="takeover")
        assert expires_at / 1000 <= time.time() < expires_at / 1000 + SLACK
        assert third.election.lock.result.timestamp >= expires_at  # type: ignore[union-attr]

        # The leader learns at once that its lease is gone, steps down and campaigns again.
        started = time.monotonic()
        await clients[0].put("leader/x", {"holder": "intruder", "token": "x"}, ttl=0.5)
        await eventually(lambda: third.events[-1:] == ["lost"], SLACK, interval=0.005,
                         what="step-down")
        assert time.monotonic() - started < SLACK and not third.election.is_leader
        await eventually(lambda: len(leaders()) == 1, 3, what="a leader after the intruder")
    finally:
        for c in candidates:
            await c.election.resign()
            c.task.cancel()
        await asyncio.gather(*(c.task for c in candidates), return_exceptions=True)
        for client in clients:
            await client.close()


# -- the blocking kind: a Lock or LeaderElection given a blocking Client -----------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KvsNode]:
    with NodeGroup(tmp_path_factory.mktemp("coordination")) as group:
        yield group.start("n1", env={"KVS_CAS_ENABLED": "true"})


@pytest.fixture
def blocking(server: KvsNode) -> Iterator[tuple[Client, Client]]:
    """Two blocking clients (two contenders, as far as the node can tell)."""
    with Client(server.url or "", timeout=2.0) as kv, Client(server.url or "", timeout=2.0) as other:
        yield kv, other


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    """`eventually` for plain threads: a condition with a deadline, not a sleep."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.005)


def renewal_threads(key: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"lock-renewal:{key}"]


def test_blocking_lock_excludes_renews_releases_and_fences(blocking: tuple[Client, Client]) -> None:
    kv, other = blocking
    lock = Lock(kv, "blocking/a", ttl=0.6)
    assert lock.acquire(timeout=0)
    assert lock.held and lock.fencing_token is not None and isinstance(lock.lost, threading.Event)
    first = kv.get("blocking/a")
    assert first.value == lock.value and first.expires_at is not None

    rival = Lock(other, "blocking/a", ttl=0.6)
    assert not rival.acquire(timeout=0)
    started = time.monotonic()
    assert not rival.acquire(timeout=0.3)
    assert 0.3 <= time.monotonic() - started < 0.3 + SLACK

    time.sleep(1.5)  # 2.5 ttl: alive only because the renewal thread renewed it (every ttl/3)
    assert lock.held and not lock.lost.is_set()
    renewed = kv.get("blocking/a")
    assert renewed.value == lock.value and renewed.expires_at > first.expires_at  # type: ignore[operator]
    assert renewed.create_index == first.create_index

    assert lock.release()
    assert not lock.held and not lock.lost.is_set() and not renewal_threads("blocking/a")
    assert kv.get_value("blocking/a", None) is None
    assert not lock.release()

    assert rival.acquire(timeout=0)
    assert rival.fencing_token > lock.fencing_token  # type: ignore[operator]
    assert rival.release()


def test_blocking_acquire_wakes_on_release_and_a_loss_is_seen_at_once(
        blocking: tuple[Client, Client]) -> None:
    kv, other = blocking
    holder = Lock(kv, "blocking/b", ttl=3.0)
    assert holder.acquire()
    reasons: list[LockLost] = []
    waiter = Lock(other, "blocking/b", ttl=3.0, on_lost=lambda lock, reason: reasons.append(reason))
    with ThreadPoolExecutor(1) as pool:
        acquiring = pool.submit(waiter.acquire)
        time.sleep(0.3)
        assert not acquiring.done()
        released_at = time.monotonic()
        holder.release()
        assert acquiring.result(timeout=SLACK)
    assert time.monotonic() - released_at < SLACK  # woken by the blocking query, not by polling

    started = time.monotonic()
    kv.put("blocking/b", "someone else")
    assert waiter.lost.wait(SLACK)  # far sooner than the renewal (1 s): the watch saw it
    assert time.monotonic() - started < SLACK
    # on_lost runs in the renewal thread right after `lost` is set: wait for it, not race it.
    wait_until(lambda: bool(reasons), SLACK, "on_lost")
    assert not waiter.held and reasons == [waiter.reason]
    assert "overwritten by another writer" in reasons[0].message
    assert not waiter.release()
    assert kv.get_value("blocking/b") == "someone else"  # theirs is left alone


def test_blocking_with_lock_releases_and_raises_lock_lost_after_the_body(
        blocking: tuple[Client, Client]) -> None:
    kv, other = blocking
    with Lock(kv, "blocking/c", ttl=2.0) as lock:
        assert lock.held and kv.get("blocking/c").value == lock.value
    assert kv.get_value("blocking/c", None) is None and not renewal_threads("blocking/c")

    progress: list[str] = []
    with pytest.raises(LockLost) as caught, Lock(kv, "blocking/c", ttl=2.0) as lock:
        progress.append("entered")
        other.delete("blocking/c")  # the lock is taken away while we work
        assert lock.lost.wait(SLACK) and not lock.held
        progress.append("finished")  # a thread is not interrupted: it looks at lock.held
    assert progress == ["entered", "finished"] and "deleted or expired" in caught.value.message


def test_blocking_holder_gives_up_before_the_lease_ends_when_the_node_hangs(procs: NodeGroup) -> None:
    node = procs.start(env={"KVS_CAS_ENABLED": "true"})
    assert node.pid is not None
    with Client(node.url or "", timeout=10.0) as kv:  # far longer than the lease
        lock = Lock(kv, "blocking/hang", ttl=1.0)
        assert lock.acquire()
        os.kill(node.pid, signal.SIGSTOP)  # requests now get no answer at all
        try:
            assert lock.lost.wait(1.0 + SLACK)
            lost_at = time.time()
            assert lock.result is not None and lock.result.expires_at is not None
            assert lost_at <= lock.result.expires_at / 1000 + 0.05  # before the node let go
            assert "ran out" in lock.reason.message  # type: ignore[union-attr]
        finally:
            os.kill(node.pid, signal.SIGCONT)
        assert not lock.release()


async def test_wrong_pairings_raise_type_error_before_anything_is_written(server: KvsNode) -> None:
    url = server.url or ""
    async with AsyncClient(url) as kv:
        index = (await kv.status()).index
        with Client(url, timeout=2.0) as blocking_kv:
            with pytest.raises(TypeError, match=r"given a blocking kvs\.client\.Client"):
                async with Lock(blocking_kv, "pair/a", ttl=5):
                    pass
            with pytest.raises(TypeError, match="would block the event loop"):
                await Lock(blocking_kv, "pair/a", ttl=5).acquire()  # type: ignore[misc]
            with pytest.raises(TypeError, match=r"given a blocking kvs\.client\.Client"):
                await LeaderElection(blocking_kv, "pair/a", ttl=5).run()  # type: ignore[misc]
        with pytest.raises(TypeError, match="given an AsyncClient"), Lock(kv, "pair/a", ttl=5):
            pass

        def outside_a_coroutine() -> None:
            with pytest.raises(TypeError, match="given an AsyncClient"):
                Lock(kv, "pair/a", ttl=5).acquire(timeout=0)  # a coroutine would be truthy
            with pytest.raises(TypeError, match="given an AsyncClient"):
                LeaderElection(kv, "pair/a", ttl=5).wait_until_elected(0)

        await asyncio.to_thread(outside_a_coroutine)
        with pytest.raises(TypeError, match=r"needs a kvs\.client\.Client or AsyncClient, not str"):
            Lock(url, "pair/a")  # type: ignore[arg-type]
        assert await kv.get_value("pair/a", None) is None
        assert (await kv.status()).index == index  # nothing at all was written


@dataclass
class Campaigner:
    election: LeaderElection
    thread: threading.Thread
    events: list[str] = field(default_factory=list)


def test_blocking_election_resign_handover_crash_takeover_and_step_down(server: KvsNode) -> None:
    ttl = 1.0
    clients = [Client(server.url or "", timeout=2.0) for _ in range(3)]
    candidates: list[Campaigner] = []
    for name, client in zip("abc", clients, strict=True):
        events: list[str] = []
        election = LeaderElection(client, "blocking/leader", ttl=ttl, identity=name, retry_interval=0.5,
                                  on_elected=lambda e, ev=events: ev.append("elected"),
                                  on_lost=lambda e, r, ev=events: ev.append("lost"))
        # daemon: a failed assertion must not leave a campaign keeping the test run alive
        thread = threading.Thread(target=election.run, name=f"campaign-{name}", daemon=True)
        candidates.append(Campaigner(election, thread, events))
        thread.start()

    def leaders() -> list[Campaigner]:
        return [c for c in candidates if c.election.is_leader]

    try:
        wait_until(lambda: len(leaders()) == 1, 3, "a leader")
        first = leaders()[0]
        assert isinstance(first.election.elected, threading.Event) and first.election.wait_until_elected(0)
        wait_until(lambda: all(c.election.leader == first.election.identity for c in candidates), 3,
                   "followers to know the leader")

        # Resign: a follower takes over at once (the release wakes its blocking query).
        started = time.monotonic()
        first.election.resign()
        first.thread.join(SLACK)
        assert not first.thread.is_alive() and first.events == ["elected"]
        wait_until(lambda: len(leaders()) == 1, 1, "a new leader")
        assert time.monotonic() - started < SLACK
        second = leaders()[0]

        # Crash: the leader's renewal thread stops, nothing is released; the other follower
        # takes over right after the lease expired on the node.
        lease = second.election.lock
        assert lease is not None
        lease._stop.set()  # type: ignore[attr-defined]
        expires_at = clients[0].get("blocking/leader").expires_at
        assert expires_at is not None
        third = next(c for c in candidates if c not in (first, second))
        wait_until(lambda: third.election.is_leader, ttl + 2, "takeover")
        assert expires_at / 1000 <= time.time() < expires_at / 1000 + SLACK
        assert third.election.lock.result.timestamp >= expires_at  # type: ignore[union-attr]

        # The leader learns at once that its lease is gone and steps down.
        started = time.monotonic()
        clients[0].put("blocking/leader", {"holder": "intruder", "token": "x"}, ttl=0.5)
        wait_until(lambda: third.events[-1:] == ["lost"], SLACK, "step-down")
        assert time.monotonic() - started < SLACK and not third.election.is_leader
    finally:
        for c in candidates:
            c.election.resign()
        for c in candidates:
            c.thread.join(5)
        for client in clients:
            client.close()
    assert not any(c.thread.is_alive() for c in candidates)  # resign() ends run() in every thread


# -- crash rounds with real holder processes -------------------------------------------------------

CRASH_TTL = 1.0


@dataclass
class Session:
    """One acquisition (or term) of one holder process, as its log tells it."""

    proc: str
    start: float                 # time.time() when the acquisition returned
    server_start: int            # the acquire's server timestamp (ms)
    end: float                   # the last moment it claimed to hold
    last_renewal: int            # server timestamp of its last known acquire/renewal
    released: bool = False       # it wrote "release" or "lost": claims nothing after


def read_sessions(log_dir: Path) -> list[Session]:
    sessions = []
    for path in sorted(log_dir.glob("*.log")):
        current: Session | None = None
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) != 3:
                continue  # the line a SIGKILL cut short
            event, at = parts[0], float(parts[1])
            if event in ("acquired", "elected"):
                current = Session(path.stem, at, int(parts[2]), at, int(parts[2]))
                sessions.append(current)
            elif current is not None and event == "hold":
                current.end, current.last_renewal = at, max(current.last_renewal, int(parts[2]))
            elif current is not None and event in ("release", "lost"):
                current.released = True
    return sorted(sessions, key=lambda s: s.start)


class Holders:
    """Holder processes; with several node URLs each new one starts at the next node (and
    fails over to the others), so that contenders write through different nodes."""

    def __init__(self, log_dir: Path, mode: str, urls: Sequence[str], key: str) -> None:
        self.log_dir, self.mode, self.urls, self.key = log_dir, mode, list(urls), key
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.killed: set[str] = set()
        log_dir.mkdir(parents=True, exist_ok=True)

    def spawn(self) -> None:
        name = f"{self.mode}{len(self.procs) + 1}"
        first = len(self.procs) % len(self.urls)
        urls = ",".join(self.urls[first:] + self.urls[:first])
        with open(self.log_dir / f"{name}.out", "wb") as out:
            self.procs[name] = subprocess.Popen(
                [sys.executable, str(HOLDER), self.mode, urls, self.key, str(CRASH_TTL),
                 str(self.log_dir / f"{name}.log"), "0.1", "0.3"],
                env=node_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self, name: str) -> float:
        proc = self.procs[name]
        self.killed.add(name)
        os.killpg(proc.pid, signal.SIGKILL)
        killed_at = time.time()
        proc.wait()
        return killed_at

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            assert name in self.killed or proc.poll() is None, (
                f"{name} exited by itself:\n" + (self.log_dir / f"{name}.out").read_text())


async def crash_rounds(tmp_path: Path, urls: Sequence[str], mode: str, rounds: int, *, handovers: int = 0,
                       between: Callable[[int], Awaitable[None]] | None = None) -> None:
    """`rounds` times: let `handovers` holders release normally, then SIGKILL the next one
    (and call `between(round)` after each kill: e.g. to kill or restart a node)."""
    holders = Holders(tmp_path / mode, mode, urls, f"crash/{mode}")
    kills: list[tuple[str, float]] = []
    try:
        for _ in range(3):
            holders.spawn()
        for _ in range(rounds):
            since = kills[-1][1] if kills else 0.0
            latest: list[Session] = []

            def new_holder(since: float = since, latest: list[Session] = latest) -> bool:
                fresh = [s for s in read_sessions(holders.log_dir) if s.start > since]
                latest[:] = fresh[-1:]
                return len(fresh) > handovers

            await eventually(new_holder, CRASH_TTL + 10, what="holders after the last kill")
            await asyncio.sleep(random.uniform(0.02, 0.08))
            holders.check_alive()
            kills.append((latest[0].proc, holders.kill(latest[0].proc)))
            holders.spawn()
            if between is not None:
                await between(len(kills))
        await eventually(lambda: any(s.start > kills[-1][1] for s in read_sessions(holders.log_dir)),
                         CRASH_TTL + 10, what="a holder after the last kill")
    finally:
        holders.stop_all()

    sessions = read_sessions(holders.log_dir)
    # 1. Never two holders at once: every session starts after all earlier ones ended.
    claimed_until = 0.0
    for session in sessions:
        assert session.start >= claimed_until, f"overlap: {session} began while another held"
        claimed_until = max(claimed_until, session.end)
    # 2. Each kill of a holder is followed by a takeover after its lease expired on the
    # node, and promptly after the kill.
    takeovers = 0
    for victim, killed_at in kills:
        held = [s for s in sessions if s.proc == victim and s.start < killed_at and not s.released]
        if not held:
            continue  # it had just released: the kill hit no holder
        dead = held[-1]
        successor = next(s for s in sessions if s.start > killed_at)
        assert successor.server_start >= dead.last_renewal + CRASH_TTL * 1000, (dead, successor)
        assert successor.start - killed_at < CRASH_TTL + 1.0, (killed_at, successor)
        takeovers += 1
    assert takeovers >= rounds // 2, f"only {takeovers} of {rounds} kills hit a holder"
    assert len(sessions) > rounds


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["async", "blocking"])
async def test_lock_holders_killed_in_turn_never_overlap(tmp_path: Path, node: Node, kind: str) -> None:
    await crash_rounds(tmp_path, [node.url], f"{kind}-lock", rounds=7, handovers=2)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["async", "blocking"])
async def test_leaders_killed_in_turn_never_overlap(tmp_path: Path, node: Node, kind: str) -> None:
    await crash_rounds(tmp_path, [node.url], f"{kind}-election", rounds=7)
