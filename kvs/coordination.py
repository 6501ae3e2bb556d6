"""Locks and leader election on TTL leases, built on compare-and-swap (asyncio).

A lease is a key written with a ttl whose value is unique to its holder
(`{"holder": ..., "token": <random>}`). Three conditional writes do all the work:

    acquire  PUT    /kv/K  {"value": V, "ttl": T, "cas": 0}        create-only: 409 while held
    renew    PUT    /kv/K  {"value": V, "ttl": T, "if_value": V}   same value, expiry moved to now+T
    release  DELETE /kv/K?if_value=V                               only if it is still ours

    holder A  acquire ─ renew ─ renew ─ renew ─ ✗ killed
    key K     [A, exp t0+T] [A, exp t1+T] [A, exp t2+T] ─────────── expires at t3+T
    holder B  409 ─ blocking query on K (woken by any write, or at expires_at) ─ cas:0 → holds

How a holder learns at once that it lost the lease
---------------------------------------------------
Between two renewals (every T/3) the renewal task does not sleep: it holds a blocking query
on K from the index of its own last write. Any write to K by anyone else (a delete, an
overwrite, an expiry's successor) wakes it within a round trip; if K no longer holds V the
lock is lost. A renewal answered 409 or 404 is lost at once too. A renewal that reaches no
node is retried every T/10; the holder gives the lease up when it can no longer be sure of
it: at `sent + T`, where `sent` is when it *sent* its last successful acquire or renewal (the
node counts T from when it *received* it, so the holder's view always ends first).

Loss is surfaced three ways, all at the same moment: `lock.lost` (an asyncio.Event) is set,
the `on_lost(lock, reason)` callback runs, and, inside `async with lock:`, the task running
the body is cancelled (see `Lock.__aexit__`).

What this does not protect against
----------------------------------
* CAS is atomic per node. Give every contender the same node (or the same node list, so
  they all use its first reachable node). If contenders write to different nodes during a
  partition, both can acquire; the cluster then converges to one value and the other
  holder's next renewal fails its if_value, so it learns within T/3 (see SPEC section 4).
* A holder that stops running (GC pause, SIGSTOP, a blocked event loop) for longer than its
  remaining lease may act after losing it, as with any lease. Pass `lock.fencing_token`
  (the lease's create_index, larger for every acquisition on that node) to the resource you
  protect and let it refuse smaller tokens.
* Clocks: expiry is judged by the node's clock and renewals by the holder's monotonic clock;
  only their rates must agree (over T). Followers wake at `expires_at` by their wall clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from kvs.client import (
    AsyncClient,
    CASConflict,
    NotFound,
    ServerError,
    Unavailable,
    Version,
    WriteResult,
)
from kvs.errors import KVSError

log = logging.getLogger("kvs.coordination")

SERVER_WAIT_MARGIN = 0.05  # ask the node to answer a blocking query this long before we need it


class LockLost(KVSError):
    """The lease is gone: taken, deleted, or not renewed in time. `.key` names the lock."""

    code = "lock_lost"

    def __init__(self, message: str, key: str) -> None:
        super().__init__(message, key=key)
        self.key = key


def default_holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


LostCallback = Callable[["Lock", LockLost], Any]


class Lock:
    """A mutual-exclusion lease on `key`, renewed in the background while held.

        lock = Lock(client, "locks/report", ttl=10)
        async with lock:                # waits for the lock; raises LockLost if it is lost
            await make_report()

        if await lock.acquire(timeout=0):   # or by hand: one attempt, no waiting
            try: ...
            finally: await lock.release()

    `ttl` is the lease in seconds: how long others wait after the holder dies. The lease is
    renewed every `renew_interval` (default ttl/3). `holder` is any JSON value stored beside
    the token so that others can see who holds the lock (default "host:pid"). With
    `watch=False` the holder does not hold a blocking query between renewals (one connection
    fewer) and learns of a loss at the next renewal, within `renew_interval`.
    """

    def __init__(self, client: AsyncClient, key: str, *, ttl: float = 15.0, holder: Any = None,
                 on_lost: LostCallback | None = None, renew_interval: float | None = None,
                 watch: bool = True) -> None:
        if ttl <= 0:
            raise ValueError("ttl must be > 0")
        self.client = client
        self.key = key
        self.ttl = float(ttl)
        self.renew_interval = float(renew_interval) if renew_interval else self.ttl / 3
        if not 0 < self.renew_interval < self.ttl:
            raise ValueError("renew_interval must be > 0 and < ttl")
        self.holder = default_holder() if holder is None else holder
        self.on_lost = on_lost
        self.watch = watch
        self.value: dict[str, Any] = {}
        self.lost = asyncio.Event()
        self.reason: LockLost | None = None
        self.result: WriteResult | None = None    # the last successful acquire or renewal
        self.fencing_token: int | None = None     # create_index of this acquisition
        self._held = False
        self._deadline = 0.0                       # loop.time() until which the lease is sure
        self._renewer: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._body: asyncio.Task[Any] | None = None
        self._cancelled_body = False
        self._observer: Callable[[Version | None], None] | None = None

    def __repr__(self) -> str:
        state = "held" if self.held else "lost" if self.lost.is_set() else "free"
        return f"<Lock {self.key!r} {state} ttl={self.ttl:g}>"

    @property
    def held(self) -> bool:
        """True while the lease is certainly ours (acquired, not lost, not released, in time)."""
        return self._held and asyncio.get_running_loop().time() < self._deadline

    @property
    def expires_in(self) -> float:
        """Seconds the lease is certain for, by our clock (0 when not held)."""
        if not self._held:
            return 0.0
        return max(0.0, self._deadline - asyncio.get_running_loop().time())

    # -- acquire -------------------------------------------------------------------------------

    async def acquire(self, *, timeout: float | None = None) -> bool:
        """Wait until the lock is ours (True) or `timeout` seconds have passed (False).

        timeout=0 makes one attempt. While another holder has it, a blocking query on the
        key wakes this at once when the holder releases it, and at its `expires_at` when the
        holder died. Raises Unavailable if no node can be reached, and CASDisabled,
        BadRequest... as the client does.
        """
        if self._held:
            raise RuntimeError(f"lock {self.key!r} is already held by this Lock")
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        self.value = {"holder": self.holder, "token": uuid.uuid4().hex}
        self.lost.clear()
        self.reason = None
        while True:
            sent = loop.time()
            try:
                result = await self.client.put(self.key, self.value, cas=0, ttl=self.ttl)
            except CASConflict:
                pass
            else:
                self._won(result, sent)
                return True
            if deadline is not None and loop.time() >= deadline:
                return False
            try:
                async with asyncio.timeout_at(deadline):
                    if await self._wait_until_free():
                        return True
            except TimeoutError:
                return False

    async def _wait_until_free(self) -> bool:
        """Watch the key until it is absent (False: go and try) or turns out to be ours (True)."""
        async with contextlib.aclosing(self.client.watch(self.key)) as states:
            async for event in states:
                if self._observer is not None:
                    self._observer(event.version)
                if event.version is None:
                    return False
                if event.value == self.value:
                    # Our own earlier attempt was applied though its answer got lost
                    # (a timeout, then failover). Renew it to learn how long it is ours.
                    sent = asyncio.get_running_loop().time()
                    try:
                        result = await self.client.put(self.key, self.value, if_value=self.value,
                                                       ttl=self.ttl)
                    except (CASConflict, NotFound):
                        continue
                    self._won(result, sent)
                    return True
        return False

    def _won(self, result: WriteResult, sent: float) -> None:
        self._held = True
        self.result = result
        self.fencing_token = result.create_index
        self._deadline = sent + self.ttl
        self._renewer = asyncio.create_task(self._keep_safely(sent), name=f"lock-renewal:{self.key}")
        log.debug("event=lock_acquired key=%s token=%s fencing=%s", self.key, self.value["token"],
                  self.fencing_token)

    # -- keep ----------------------------------------------------------------------------------

    async def _keep_safely(self, sent: float) -> None:
        try:
            await self._keep(sent)
        except Exception as exc:  # a bug must not leave a holder that believes it holds
            log.exception("event=lock_renewal_crashed key=%s", self.key)
            self._lose(f"the renewal task failed: {exc!r}", exc, release=True)

    async def _keep(self, sent: float) -> None:
        loop = asyncio.get_running_loop()
        next_renewal = sent + self.renew_interval
        assert self.result is not None
        index = self.result.modify_index
        failure: BaseException | None = None
        while True:
            now = loop.time()
            if now >= self._deadline:
                self._lose(f"the lease ran out: no renewal reached a node within ttl={self.ttl:g}s"
                           f" ({failure})", failure, release=True)
                return
            if now < next_renewal:
                index = await self._watch_between_renewals(index, next_renewal)
                if index is None:
                    return
                continue
            sent = loop.time()
            try:
                async with asyncio.timeout_at(self._deadline):
                    result = await self.client.put(self.key, self.value, if_value=self.value,
                                                   ttl=self.ttl)
            except (CASConflict, NotFound) as exc:
                self._lose("renewal failed: the lock key no longer holds our token", exc)
                return
            except (Unavailable, ServerError, TimeoutError) as exc:
                failure = exc
                log.warning("event=lock_renewal_failed key=%s error=%r", self.key, exc)
                next_renewal = min(loop.time() + self.ttl / 10, self._deadline)
                continue
            except KVSError as exc:
                self._lose(f"renewal refused: {exc.message}", exc)
                return
            failure = None
            self.result = result
            self._deadline = sent + self.ttl
            index = result.modify_index
            next_renewal = sent + self.renew_interval

    async def _watch_between_renewals(self, index: int, until: float) -> int | None:
        """Hold a blocking query on the key until `until`; the next index, or None if lost."""
        loop = asyncio.get_running_loop()
        left = until - loop.time()
        if not self.watch or left <= 2 * SERVER_WAIT_MARGIN:
            await asyncio.sleep(max(0.0, left))
            return index
        try:
            async with asyncio.timeout_at(until):
                event = await self.client.watch_once(self.key, index=index,
                                                     wait=left - SERVER_WAIT_MARGIN)
        except TimeoutError:
            return index
        except (Unavailable, ServerError):
            await asyncio.sleep(max(0.0, until - loop.time()))  # the renewal will tell
            return index
        if event.value != self.value:
            how = "deleted or expired" if event.version is None else "overwritten by another writer"
            self._lose(f"the lock key was {how}", None)
            return None
        return event.index

    def _lose(self, why: str, cause: BaseException | None, *, release: bool = False) -> None:
        if not self._held:
            return
        self._held = False
        reason = LockLost(f"lock {self.key!r} lost: {why}", self.key)
        reason.__cause__ = cause
        self.reason = reason
        self.lost.set()
        log.warning("event=lock_lost key=%s reason=%r", self.key, why)
        if self._body is not None and not self._body.done():
            self._cancelled_body = True
            self._body.cancel(msg=reason.message)
        if self.on_lost is not None:
            try:
                outcome = self.on_lost(self, reason)
                if inspect.isawaitable(outcome):
                    self._spawn(outcome)
            except Exception:
                log.exception("event=lock_on_lost_failed key=%s", self.key)
        if release:  # a renewal may have landed after all: don't make others wait for it
            self._spawn(self._delete_if_ours())

    def _spawn(self, awaitable: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(awaitable)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- release -------------------------------------------------------------------------------

    async def release(self) -> bool:
        """Stop renewing and delete the key if it still holds our token. True if it did.

        A node that cannot be reached is logged, not raised: the lease then ends by itself
        within ttl.
        """
        renewer, self._renewer = self._renewer, None
        if renewer is not None and renewer is not asyncio.current_task():
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
        if not self._held:
            return False
        self._held = False
        return await self._delete_if_ours()

    async def _delete_if_ours(self) -> bool:
        try:
            await self.client.delete(self.key, if_value=self.value)
            return True
        except (CASConflict, NotFound):
            return False
        except (Unavailable, ServerError) as exc:
            log.warning("event=lock_release_failed key=%s error=%r (the lease expires by itself)",
                        self.key, exc)
            return False

    # -- context manager -----------------------------------------------------------------------

    async def __aenter__(self) -> Lock:
        await self.acquire()
        self._body = asyncio.current_task()
        self._cancelled_body = False
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: object) -> bool:
        """Release the lock; raise LockLost if it was lost while the body ran.

        When the lock is lost, the task running the body is cancelled at once (like
        asyncio.timeout): the CancelledError arrives at the body's current await, so no
        later await of the body completes, but code between two awaits runs to its end.
        Here that cancellation becomes LockLost (the body's exception, if any, is its
        context). If the task was also cancelled from elsewhere, CancelledError wins.
        """
        body, self._body = self._body, None
        lost_during_body = self.reason is not None and self.lost.is_set()
        cancelled_from_outside = False
        if self._cancelled_body and body is not None:
            self._cancelled_body = False
            cancelled_from_outside = body.uncancel() > 0  # undo our own cancel first
        await self.release()
        if not lost_during_body or (cancelled_from_outside and exc_type is asyncio.CancelledError):
            return False
        assert self.reason is not None
        raise self.reason


Callback = Callable[..., Any]


class LeaderElection:
    """Campaign to be the one leader for `key`, with the lease mechanics of `Lock`.

        election = LeaderElection(client, "leaders/scheduler", ttl=10, identity="10.0.0.5:9000",
                                  on_elected=start_work, on_lost=stop_work)
        task = asyncio.create_task(election.run())     # campaigns until resign() or cancel
        ...
        await election.resign()

    A follower holds a blocking query on the key, so it takes over as soon as the leader
    resigns, and just after `expires_at` when the leader died (an expiry bumps no index, so
    the follower's query is timed to end then). The leader learns that it lost the lease at
    once (see the module docstring): `is_leader` turns False, `elected` is cleared and
    `on_lost(election, reason)` runs before anything else happens; it then campaigns again.
    Callbacks may be plain functions or coroutine functions (then run as tasks).
    `leader` is the identity of the current leader as last seen (None: vacant or unknown).
    """

    def __init__(self, client: AsyncClient, key: str, *, ttl: float = 15.0, identity: Any = None,
                 on_elected: Callback | None = None, on_lost: Callback | None = None,
                 retry_interval: float = 1.0) -> None:
        self.client = client
        self.key = key
        self.ttl = ttl
        self.identity = default_holder() if identity is None else identity
        self.on_elected = on_elected
        self.on_lost = on_lost
        self.retry_interval = retry_interval
        self.elected = asyncio.Event()
        self.leader: Any = None
        self.terms = 0                 # how many times this candidate was elected
        self._lock: Lock | None = None
        self._resigned = asyncio.Event()
        self._background: set[asyncio.Task[Any]] = set()

    @property
    def is_leader(self) -> bool:
        return self._lock is not None and self._lock.held

    @property
    def lock(self) -> Lock | None:
        """The Lock of the current campaign or term (its `held`, `expires_in`, `result`)."""
        return self._lock

    @property
    def fencing_token(self) -> int | None:
        """The current term's fencing token (see Lock.fencing_token); None when not leader."""
        return self._lock.fencing_token if self.is_leader and self._lock else None

    async def run(self) -> None:
        """Campaign until resign() (or until cancelled, which also resigns).

        An unreachable node does not end the campaign (it retries every retry_interval);
        errors that retrying cannot fix (CASDisabled, BadRequest) are raised.
        """
        self._resigned.clear()
        try:
            while not self._resigned.is_set():
                lock = Lock(self.client, self.key, ttl=self.ttl, holder=self.identity,
                            on_lost=self._lost)
                lock._observer = self._observe
                self._lock = lock
                try:
                    if not await self._until_resigned(lock.acquire()):
                        return
                except (Unavailable, ServerError) as exc:
                    log.warning("event=campaign_failed key=%s error=%r", self.key, exc)
                    await self._until_resigned(asyncio.sleep(self.retry_interval))
                    continue
                self.leader = self.identity
                self.terms += 1
                self.elected.set()
                self._call(self.on_elected, self)
                await self._until_resigned(lock.lost.wait())
        finally:
            self.elected.clear()
            if self._lock is not None:
                lock, self._lock = self._lock, None
                await lock.release()

    async def _until_resigned(self, awaitable: Awaitable[Any]) -> bool:
        """Await `awaitable` unless resign() comes first (then cancel it and return False)."""
        work = asyncio.ensure_future(awaitable)
        resigned = asyncio.ensure_future(self._resigned.wait())
        try:
            await asyncio.wait([work, resigned], return_when=asyncio.FIRST_COMPLETED)
        finally:
            resigned.cancel()
            if not work.done():
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await work
        if work.cancelled():
            return False
        work.result()  # raises what it raised
        return True

    async def resign(self) -> None:
        """Step down (releasing the key, so a follower takes over at once) and stop campaigning."""
        self._resigned.set()
        lock = self._lock
        if lock is not None:
            self.elected.clear()
            await lock.release()

    async def wait_until_elected(self, timeout: float | None = None) -> bool:
        try:
            async with asyncio.timeout(timeout):
                await self.elected.wait()
            return True
        except TimeoutError:
            return False

    def _lost(self, lock: Lock, reason: LockLost) -> None:
        self.elected.clear()
        if self.leader == self.identity:
            self.leader = None
        self._call(self.on_lost, self, reason)

    def _observe(self, version: Version | None) -> None:
        value = version.value if version is not None else None
        self.leader = value.get("holder") if isinstance(value, dict) else None

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._resigned.wait()

    def _call(self, callback: Callback | None, *args: Any) -> None:
        if callback is None:
            return
        try:
            outcome = callback(*args)
        except Exception:
            log.exception("event=election_callback_failed key=%s", self.key)
            return
        if inspect.isawaitable(outcome):
            task = asyncio.ensure_future(outcome)
            self._background.add(task)
            task.add_done_callback(self._background.discard)
