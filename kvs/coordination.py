"""Locks and leader election on TTL leases, built on compare-and-swap.

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
Between two renewals (every T/3) the renewal does not sleep: it holds a blocking query on K
from the index of its own last write. Any write to K by anyone else (a delete, an overwrite,
an expiry's successor) wakes it within a round trip; if K no longer holds V the lock is lost.
A renewal answered 409 or 404 is lost at once too. A renewal that reaches no node is retried
every T/10; the holder gives the lease up when it can no longer be sure of it: at `sent + T`,
where `sent` is when it *sent* its last successful acquire or renewal (the node counts T from
when it *received* it, so the holder's view always ends first).

Loss is surfaced at the same moment in every way the caller can be told: `lock.lost` is set,
the `on_lost(lock, reason)` callback runs, and, inside `async with lock:`, the task running
the body is cancelled (see `_AsyncLock.__aexit__`).

Both clients, one lease
-----------------------
`Lock(client, ...)` and `LeaderElection(client, ...)` take either client, like the client
methods themselves: given an `AsyncClient` their methods are coroutines (`async with lock:`),
given a blocking `Client` they block (`with lock:`) and the renewal runs in a daemon thread.
What a lease does is written once, as plans in the sense of kvs.client (generators that
yield `Call`s and `Sleep`s and are sent the answers): `_acquire_plan`, `_keep_plan` and
`_delete_plan`, and the campaign of an election as `_campaign`. Each client carries the
plans out as it carries out its own methods. Only what cannot be shared differs by kind:

                        AsyncClient                     blocking Client
    renewal runs in     an asyncio task                 a daemon thread
    stopped by          cancelling it                   a threading.Event (Client._execute)
    `lost`, `elected`   asyncio.Event                   threading.Event
    a loss during       cancels the task running        cannot interrupt a thread: the body
      the body          the body; LockLost at exit      checks `lock.held`; LockLost at exit

A wrong pairing raises TypeError before anything is written: `async with` a Lock given a
blocking Client, `with` one given an AsyncClient, and any blocking Lock or election called
from a running event loop (it would block the loop: that is `await lock.acquire()` too).

What this does not protect against
----------------------------------
* In local mode CAS is atomic per node. Give every contender the same node (or the same
  node list, so they all use its first reachable node). If contenders write to different
  nodes during a partition, both can acquire; the cluster then converges to one value and
  the other holder's next renewal fails its if_value, so it learns within T/3. Quorum mode
  (the default when the cluster has more than one voter) closes that gap: the three
  writes above carry consistency=quorum, the renewal is conditioned on `if_seq` (the seq
  of our last write), and each is one linearizable CAS whichever node receives it.
* A holder that stops running (GC pause, SIGSTOP, a blocked event loop) for longer than its
  remaining lease may act after losing it, as with any lease. Pass `lock.fencing_token` to
  the resource you protect and let it refuse smaller tokens: in quorum mode the key's seq at
  the acquisition (larger for every acquisition, through any node), in local mode its
  create_index (larger for every acquisition on that node).
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
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Generator
from typing import Any, NamedTuple

from kvs.client import (
    _PLAN,
    DEFAULT_WAIT,
    AsyncClient,
    Call,
    CASConflict,
    Client,
    Emit,
    NotFound,
    Plan,
    QuorumIndeterminate,
    QuorumUnavailable,
    ServerError,
    Sleep,
    Status,
    Unavailable,
    VersionRecord,
    WatchEvent,
    WriteResult,
    _consistency,
)
from kvs.errors import KVSError

log = logging.getLogger("kvs.coordination")

SERVER_WAIT_MARGIN = 0.05  # ask the node to answer a blocking query this long before we need it
# Failures after which nothing is known to be lost: the holder tries again (a renewal until
# its lease runs out, a campaign every retry_interval).
UNREACHED = (Unavailable, ServerError, QuorumUnavailable)

_NEEDS_AWAIT = ("this {what} was given an AsyncClient: use `async with` and `await` (or give it a "
                "blocking kvs.client.Client for `with` and plain calls)")
_NEEDS_THREAD = ("this {what} was given a blocking kvs.client.Client: use `with` and plain calls, "
                 "from a thread rather than a coroutine, where it would block the event loop (or "
                 "give it a kvs.client.AsyncClient for `async with` and `await`)")


class LockLost(KVSError):
    """The lease is gone: taken, deleted, or not renewed in time. `.key` names the lock."""

    code = "lock_lost"

    def __init__(self, message: str, key: str) -> None:
        super().__init__(message, key=key)
        self.key = key


def default_holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


LostCallback = Callable[["Lock", LockLost], Any]
Callback = Callable[..., Any]


# -- what differs by the kind of client ------------------------------------------------------

def _is_blocking(client: object, what: str) -> bool:
    if isinstance(client, Client):
        return True
    if isinstance(client, AsyncClient):
        return False
    raise TypeError(f"{what} needs a kvs.client.Client or AsyncClient, not {type(client).__name__}")


def _require_event_loop(what: str) -> None:
    """An async method called outside a coroutine: its result would be a coroutine object,
    which is truthy (`if lock.acquire(timeout=0):` would pass without the lock)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        raise TypeError(_NEEDS_AWAIT.format(what=what)) from None


def _refuse_event_loop(what: str) -> None:
    """A blocking call made from a coroutine: the caller meant the async API (`await`)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise TypeError(_NEEDS_THREAD.format(what=what))


_background: set[asyncio.Future[Any]] = set()  # asyncio keeps only weak references to tasks


class _AsyncKind:
    """Events and callbacks for the asyncio kind: a callback's coroutine runs as a task."""

    _Event: Callable[[], Any] = asyncio.Event

    @staticmethod
    def _spawn(awaitable: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(awaitable)
        _background.add(task)
        task.add_done_callback(_background.discard)


class _BlockingKind:
    """Events and callbacks for the blocking kind: there is no event loop to run a coroutine."""

    _Event: Callable[[], Any] = threading.Event

    @staticmethod
    def _spawn(awaitable: Awaitable[Any]) -> None:
        if inspect.iscoroutine(awaitable):
            awaitable.close()
        log.error("event=callback_returned_awaitable: with a blocking Client, callbacks are plain "
                  "functions (nothing awaited it)")


def _call_back(callback: Callback | None, args: tuple[Any, ...], spawn: Callable[[Awaitable[Any]], None],
               key: str) -> None:
    """Run a user callback: its failure is logged, never raised into the lease's machinery."""
    if callback is None:
        return
    try:
        outcome = callback(*args)
    except Exception:
        log.exception("event=callback_failed key=%s", key)
        return
    if inspect.isawaitable(outcome):
        spawn(outcome)


class _EitherClient:
    """A public class whose instances take their kind from the client they are given, as
    the client's methods do: `Lock(client)` is an `_AsyncLock` or a `_BlockingLock`."""

    _kinds: tuple[type, type]  # (given an AsyncClient, given a blocking Client); public class only
    _Event: Callable[[], Any]
    _spawn: Callable[[Awaitable[Any]], None]

    def __new__(cls, client: AsyncClient | Client, *args: Any, **kwargs: Any) -> Any:
        if "_kinds" in cls.__dict__:
            cls = cls._kinds[_is_blocking(client, cls.__name__)]
        return super().__new__(cls)


# -- Lock --------------------------------------------------------------------------------------

class _Loss(NamedTuple):
    reason: LockLost
    release: bool  # delete the key if it still holds our token: a renewal may have landed after all


_RENEW_NOW = object()  # what a quorum lock's watch returns when the key looks changed


class Lock(_EitherClient):
    """A mutual-exclusion lease on `key`, renewed in the background while held.

        lock = Lock(client, "locks/report", ttl=10)     # client: AsyncClient
        async with lock:                # waits for the lock; raises LockLost if it is lost
            await make_report()

        lock = Lock(client, "locks/report", ttl=10)     # client: blocking Client
        with lock:                      # the same, blocking; the renewal runs in a thread
            make_report()               # not interrupted by a loss: check lock.held

        if lock.acquire(timeout=0):     # or by hand (await it with an AsyncClient)
            try: ...
            finally: lock.release()

    `ttl` is the lease in seconds: how long others wait after the holder dies. The lease is
    renewed every `renew_interval` (default ttl/3). `holder` is any JSON value stored beside
    the token so that others can see who holds the lock (default "host:pid"). With
    `watch=False` the holder does not hold a blocking query between renewals (one connection
    fewer) and learns of a loss at the next renewal, within `renew_interval`.

    `consistency`: "quorum" (the lease is a quorum key: exclusive across the whole cluster,
    renewed by if_seq, fenced by its cluster-wide seq), "local" (CAS on the node that
    answers), or None: the first acquire asks the node for the voters and takes quorum
    when there are more than one, else local.
    """

    def __init__(self, client: AsyncClient | Client, key: str, *, ttl: float = 15.0,
                 holder: Any = None, on_lost: LostCallback | None = None,
                 renew_interval: float | None = None, watch: bool = True,
                 consistency: str | None = None) -> None:
        if ttl <= 0:
            raise ValueError("ttl must be > 0")
        _consistency(consistency)  # a bad one raises BadRequest here
        self.consistency = consistency  # None until the first acquire decides
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
        self.lost = self._Event()
        self.reason: LockLost | None = None
        self.result: WriteResult | None = None    # the last successful acquire or renewal
        self.fencing_token: int | None = None     # seq (quorum) or create_index of this acquisition
        self._seq: int | None = None               # quorum: the key's seq after our last write
        self._held = False
        self._mutex = threading.Lock()             # a loss and a release race from two threads
        self._deadline = 0.0                       # time.monotonic() until which the lease is sure
        self._observer: Callable[[VersionRecord | None], None] | None = None

    def __repr__(self) -> str:
        state = "held" if self.held else "lost" if self.lost.is_set() else "free"
        return f"<Lock {self.key!r} {state} ttl={self.ttl:g}>"

    @property
    def held(self) -> bool:
        """True while the lease is certainly ours (acquired, not lost, not released, in time)."""
        return self._held and time.monotonic() < self._deadline

    @property
    def expires_in(self) -> float:
        """Seconds the lease is certain for, by our clock (0 when not held)."""
        if not self._held:
            return 0.0
        return max(0.0, self._deadline - time.monotonic())

    # -- acquire (plans: no I/O here) ----------------------------------------------------------

    def _acquire_plan(self, timeout: float | None, poll: float = DEFAULT_WAIT) -> Plan[bool]:
        """True once the lock is ours, False after `timeout` seconds (0: one attempt).

        While another holder has it, a blocking query on the key (each at most `poll`
        seconds) wakes this at once when the holder releases it, and at its `expires_at`
        when the holder died.
        """
        if self._held:
            raise RuntimeError(f"lock {self.key!r} is already held by this Lock")
        deadline = None if timeout is None else time.monotonic() + timeout
        if self.consistency is None:
            self.consistency = yield from self._choose_consistency()
        self.value = {"holder": self.holder, "token": uuid.uuid4().hex}
        self.lost.clear()
        self.reason = None
        while True:
            sent = time.monotonic()
            try:
                result = yield _PLAN.put(self.key, self.value, cas=0, ttl=self.ttl, **self._mode())
            except (CASConflict, QuorumIndeterminate):
                pass  # an indeterminate one that was applied shows up as ours in the watch
            else:
                self._won(result, sent)
                return True
            if (yield from self._wait_until_free(deadline, poll)):
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False

    def _choose_consistency(self) -> Plan[str]:
        """Quorum when the cluster has more than one voter: then CAS on one node would not
        exclude a contender writing through another."""
        status: Status = yield _PLAN.status()
        voters = (status.voters or {}).get("ids") or []
        return "quorum" if len(voters) > 1 else "local"

    @property
    def quorum(self) -> bool:
        return self.consistency == "quorum"

    def _mode(self) -> dict[str, Any]:
        """The lease's requests name the consistency only in quorum mode: in local mode they
        are exactly what they were before quorum keys existed."""
        return {"consistency": "quorum"} if self.quorum else {}

    def _wait_until_free(self, deadline: float | None, poll: float) -> Plan[bool]:
        """Watch the key until it is absent (False: go and try), turns out to be ours (True),
        or `deadline` passes (False). The watch is the client's own watch plan."""
        states = _PLAN._watch_plan(self.key, False, None, poll, until=deadline)
        reply: Any = None
        try:
            while True:
                try:
                    step = states.send(reply)
                except StopIteration:
                    return False
                if not isinstance(step, Emit):
                    reply = yield step
                    continue
                reply = None
                event: WatchEvent = step.item
                if self._observer is not None:
                    self._observer(event.version)
                if event.version is None:
                    return False
                if event.value == self.value:
                    # Our own earlier attempt was applied though its answer got lost
                    # (a timeout, then failover). Renew it to learn how long it is ours.
                    sent = time.monotonic()
                    try:
                        result = yield _PLAN.put(self.key, self.value, if_value=self.value,
                                                 ttl=self.ttl, **self._mode())
                    except (CASConflict, NotFound, QuorumIndeterminate):
                        continue
                    self._won(result, sent)
                    return True
        finally:
            states.close()

    def _won(self, result: WriteResult, sent: float) -> None:
        self._held = True
        self.result = result
        self._seq = result.seq
        self.fencing_token = result.seq if self.quorum else result.create_index
        self._deadline = sent + self.ttl
        log.debug("event=lock_acquired key=%s token=%s fencing=%s", self.key, self.value["token"],
                  self.fencing_token)

    # -- keep ----------------------------------------------------------------------------------

    def _keep_plan(self) -> Plan[_Loss | None]:
        """Renew and watch until the lease is lost (the loss) or released (None)."""
        assert self.result is not None
        next_renewal = self._deadline - self.ttl + self.renew_interval
        index = self.result.modify_index
        failure: BaseException | None = None
        while True:
            now = time.monotonic()
            if now >= self._deadline:
                return self._lose(f"the lease ran out: no renewal reached a node within ttl={self.ttl:g}s"
                                  f" ({failure})", failure, release=True)
            if now < next_renewal:
                watched = yield from self._watch_between_renewals(index, next_renewal)
                if watched is _RENEW_NOW:
                    next_renewal = time.monotonic()
                    continue
                if not isinstance(watched, int):
                    return watched
                index = watched
                continue
            sent = time.monotonic()
            try:
                result = yield self._renewal().until(self._deadline)
            except (CASConflict, NotFound) as exc:
                return self._lose("renewal failed: the lock key no longer holds our token", exc)
            except (*UNREACHED, QuorumIndeterminate) as exc:
                failure = exc
                log.warning("event=lock_renewal_failed key=%s error=%r", self.key, exc)
                if isinstance(exc, QuorumIndeterminate):
                    self._seq = None  # it may have moved the seq on: condition the next on our token
                next_renewal = min(time.monotonic() + self.ttl / 10, self._deadline)
                continue
            except KVSError as exc:
                return self._lose(f"renewal refused: {exc.message}", exc)
            failure = None
            self.result = result
            self._seq = result.seq
            self._deadline = sent + self.ttl
            index = result.modify_index
            next_renewal = sent + self.renew_interval

    def _renewal(self) -> Call[WriteResult]:
        """The same value again with a fresh ttl, if the key is still ours: in quorum mode if
        its seq is still that of our last write (or, when an indeterminate renewal may have
        moved it on, if it still holds our token, which no other holder writes)."""
        if self.quorum and self._seq is not None:
            return _PLAN.put(self.key, self.value, if_seq=self._seq, ttl=self.ttl, consistency="quorum")
        return _PLAN.put(self.key, self.value, if_value=self.value, ttl=self.ttl, **self._mode())

    def _watch_between_renewals(self, index: int, until: float) -> Plan[int | _Loss | object | None]:
        """Hold a blocking query on the key until `until`: the next index, or the loss."""
        left = until - time.monotonic()
        # A quorum answer's modify_index is 0 when the node did not hold the version yet:
        # a blocking query from 0 would answer at once, every time.
        if not self.watch or left <= 2 * SERVER_WAIT_MARGIN or (self.quorum and index == 0):
            yield Sleep(max(0.0, left))
            return index
        try:
            event = yield _PLAN.watch_once(self.key, index=index,
                                           wait=left - SERVER_WAIT_MARGIN).until(until)
        except (Unavailable, ServerError):
            yield Sleep(max(0.0, until - time.monotonic()))  # the renewal will tell
            return index
        if event.value != self.value:
            if self.quorum:
                # One node's view of a quorum key can lag, or show a rival's value accepted
                # by a minority and never chosen: only a quorum renewal can tell, so send it now.
                return _RENEW_NOW
            how = "deleted or expired" if event.version is None else "overwritten by another writer"
            return self._lose(f"the lock key was {how}", None)
        return event.index

    def _crashed(self, exc: Exception) -> _Loss | None:
        """A bug in the renewal must not leave a holder that believes it holds."""
        log.exception("event=lock_renewal_crashed key=%s", self.key)
        return self._lose(f"the renewal failed: {exc!r}", exc, release=True)

    def _drop(self) -> bool:
        """Mark the lease not held; True for the one caller (loss or release) that did it."""
        with self._mutex:
            held, self._held = self._held, False
        return held

    def _lose(self, why: str, cause: BaseException | None, *, release: bool = False) -> _Loss | None:
        if not self._drop():
            return None  # released meanwhile: nothing to report
        reason = LockLost(f"lock {self.key!r} lost: {why}", self.key)
        reason.__cause__ = cause
        self.reason = reason
        return _Loss(reason, release)

    def _announce(self, loss: _Loss) -> None:
        """Tell everyone at the same moment, then free the key if it may still be ours."""
        self.lost.set()
        log.warning("event=lock_lost key=%s reason=%r", self.key, loss.reason.message)
        self._interrupt_body(loss.reason)
        _call_back(self.on_lost, (self, loss.reason), self._spawn, self.key)
        if loss.release:
            self._delete_in_background()

    def _interrupt_body(self, reason: LockLost) -> None:
        """Stop the code running under `with lock:` (only a task can be stopped)."""

    def _delete_in_background(self) -> None:
        raise NotImplementedError

    # -- release -------------------------------------------------------------------------------

    def _delete_plan(self) -> Plan[bool]:
        """Delete the key if it still holds our token. A node that cannot be reached is
        logged, not raised: the lease then ends by itself within ttl."""
        try:
            yield _PLAN.delete(self.key, if_value=self.value, **self._mode())
        except (CASConflict, NotFound):
            return False
        except (*UNREACHED, QuorumIndeterminate) as exc:
            log.warning("event=lock_release_failed key=%s error=%r (the lease expires by itself)",
                        self.key, exc)
            return False
        return True

    def _lost_in_body(self) -> bool:
        return self.reason is not None and self.lost.is_set()


class _AsyncLock(_AsyncKind, Lock):
    """A Lock given an AsyncClient: methods are coroutines, the renewal is a task."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.client: AsyncClient
        self._renewer: asyncio.Task[None] | None = None
        self._body: asyncio.Task[Any] | None = None
        self._cancelled_body = False

    def acquire(self, *, timeout: float | None = None) -> Awaitable[bool]:
        """Wait until the lock is ours (True) or `timeout` seconds have passed (False).

        timeout=0 makes one attempt. Raises Unavailable if no node can be reached, and
        CASDisabled, BadRequest... as the client does.
        """
        _require_event_loop("Lock")
        return self._acquire(timeout)

    async def _acquire(self, timeout: float | None) -> bool:
        if not await self.client._execute(self._acquire_plan(timeout)):
            return False
        self._renewer = asyncio.create_task(self._keep(), name=f"lock-renewal:{self.key}")
        return True

    async def _keep(self) -> None:
        try:
            loss = await self.client._execute(self._keep_plan())
        except Exception as exc:
            loss = self._crashed(exc)
        if loss is not None:
            self._announce(loss)

    def _interrupt_body(self, reason: LockLost) -> None:
        if self._body is not None and not self._body.done():
            self._cancelled_body = True
            self._body.cancel(msg=reason.message)

    def _delete_in_background(self) -> None:
        self._spawn(self.client._execute(self._delete_plan()))

    def release(self) -> Awaitable[bool]:
        """Stop renewing and delete the key if it still holds our token. True if it did."""
        _require_event_loop("Lock")
        return self._release()

    async def _release(self) -> bool:
        renewer, self._renewer = self._renewer, None
        if renewer is not None and renewer is not asyncio.current_task():
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
        if not self._drop():
            return False
        return bool(await self.client._execute(self._delete_plan()))

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
        lost_during_body = self._lost_in_body()
        cancelled_from_outside = False
        if self._cancelled_body and body is not None:
            self._cancelled_body = False
            cancelled_from_outside = body.uncancel() > 0  # undo our own cancel first
        await self.release()
        if not lost_during_body or (cancelled_from_outside and exc_type is asyncio.CancelledError):
            return False
        assert self.reason is not None
        raise self.reason

    def __enter__(self) -> Lock:
        raise TypeError(_NEEDS_AWAIT.format(what="Lock"))

    def __exit__(self, *exc: object) -> None:
        """Never reached (__enter__ refuses); `with` needs it to get that far."""


class _BlockingLock(_BlockingKind, Lock):
    """A Lock given a blocking Client: methods block, the renewal is a daemon thread."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.client: Client
        self._renewer: threading.Thread | None = None
        self._stop = threading.Event()
        # Guards the hand-over of (_stop, _renewer) between acquire() and a release() from
        # another thread (an election's resign): release must see a started renewer or none.
        self._handoff = threading.Lock()

    def acquire(self, *, timeout: float | None = None) -> bool:
        """Wait until the lock is ours (True) or `timeout` seconds have passed (False).

        timeout=0 makes one attempt. Raises Unavailable if no node can be reached, and
        CASDisabled, BadRequest... as the client does.
        """
        return self._acquire(timeout, None, DEFAULT_WAIT)

    def _acquire(self, timeout: float | None, stop: threading.Event | None, poll: float) -> bool:
        """acquire(), given up when `stop` is set (within `poll` seconds): for elections."""
        _refuse_event_loop("Lock")
        if not self.client._execute(self._acquire_plan(timeout, poll), stop):
            return False
        stop = threading.Event()
        renewer = threading.Thread(target=self._keep, args=(stop,),
                                   name=f"lock-renewal:{self.key}", daemon=True)
        with self._handoff:
            self._stop, self._renewer = stop, renewer
            renewer.start()
        return True

    def _keep(self, stop: threading.Event) -> None:
        try:
            loss = self.client._execute(self._keep_plan(), stop)
        except Exception as exc:
            loss = self._crashed(exc)
        if loss is not None:
            self._announce(loss)

    def _delete_in_background(self) -> None:
        self.client._execute(self._delete_plan())  # already in the renewal thread

    def release(self) -> bool:
        """Stop renewing and delete the key if it still holds our token. True if it did."""
        with self._handoff:
            renewer, self._renewer = self._renewer, None
            self._stop.set()
        released = self._drop() and bool(self.client._execute(self._delete_plan()))
        if renewer is not None and renewer is not threading.current_thread():
            renewer.join()  # our delete ends its blocking query; every step it takes is bounded
        return released

    def __enter__(self) -> Lock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: object) -> bool:
        """Release the lock; raise LockLost if it was lost while the body ran.

        A thread cannot be interrupted safely, so the body runs to its end: check
        `lock.held` (or `lock.lost`) between steps, or act in `on_lost`.
        """
        lost_during_body = self._lost_in_body()
        self.release()
        if not lost_during_body:
            return False
        assert self.reason is not None
        raise self.reason

    async def __aenter__(self) -> Lock:
        raise TypeError(_NEEDS_THREAD.format(what="Lock"))

    async def __aexit__(self, *exc: object) -> None:
        """Never reached (__aenter__ refuses); `async with` needs it to get that far."""


# -- LeaderElection ----------------------------------------------------------------------------

class _Acquire(NamedTuple):
    lock: Lock


class _Hold(NamedTuple):
    lock: Lock


CampaignStep = _Acquire | _Hold | Sleep
Campaign = Generator[CampaignStep, None, None]


def _resume(campaign: Campaign, error: BaseException | None) -> CampaignStep | None:
    try:
        return campaign.throw(error) if error is not None else next(campaign)
    except StopIteration:
        return None


class LeaderElection(_EitherClient):
    """Campaign to be the one leader for `key`, with the lease mechanics of `Lock`.

        election = LeaderElection(client, "leaders/scheduler", ttl=10, identity="10.0.0.5:9000",
                                  on_elected=start_work, on_lost=stop_work)
        task = asyncio.create_task(election.run())     # AsyncClient: campaigns until resign()
        ...
        await election.resign()

        election = LeaderElection(client, ...)         # blocking Client: run() blocks, so
        threading.Thread(target=election.run).start()  # give it a thread
        ...
        election.resign()

    A follower holds a blocking query on the key, so it takes over as soon as the leader
    resigns, and just after `expires_at` when the leader died (an expiry bumps no index, so
    the follower's query is timed to end then). The leader learns that it lost the lease at
    once (see the module docstring): `is_leader` turns False, `elected` is cleared and
    `on_lost(election, reason)` runs before anything else happens; it then campaigns again.
    With an AsyncClient, callbacks may be coroutine functions (then run as tasks); with a
    blocking Client they run in the campaign's or the renewal's thread. `leader` is the
    identity of the current leader as last seen (None: vacant or unknown).
    """

    def __init__(self, client: AsyncClient | Client, key: str, *, ttl: float = 15.0,
                 identity: Any = None, on_elected: Callback | None = None,
                 on_lost: Callback | None = None, retry_interval: float = 1.0,
                 consistency: str | None = None) -> None:
        _consistency(consistency)
        self.consistency = consistency  # as for Lock: None until the first campaign decides
        self.client = client
        self.key = key
        self.ttl = ttl
        self.identity = default_holder() if identity is None else identity
        self.on_elected = on_elected
        self.on_lost = on_lost
        self.retry_interval = retry_interval
        self.elected = self._Event()
        self.leader: Any = None
        self.terms = 0                 # how many times this candidate was elected
        self._lock: Lock | None = None
        self._resigned = self._Event()

    @property
    def is_leader(self) -> bool:
        """True from the moment `elected` is set until the term ends (the lease is lost or
        released): never ahead of `elected`, which is set once the lock is acquired."""
        return self.elected.is_set() and self._lock is not None and self._lock.held

    @property
    def lock(self) -> Lock | None:
        """The Lock of the current campaign or term (its `held`, `expires_in`, `result`)."""
        return self._lock

    @property
    def fencing_token(self) -> int | None:
        """The current term's fencing token (see Lock.fencing_token); None when not leader."""
        return self._lock.fencing_token if self.is_leader and self._lock else None

    def _campaign(self) -> Campaign:
        """The campaign, without I/O: it yields what to wait for, and run() waits for it
        unless resign() comes first. An unreachable node does not end it (it retries every
        retry_interval); errors that retrying cannot fix (CASDisabled, BadRequest) do."""
        while True:
            lock = Lock(self.client, self.key, ttl=self.ttl, holder=self.identity, on_lost=self._lost,
                        consistency=self.consistency)
            lock._observer = self._observe
            self._lock = lock
            try:
                yield _Acquire(lock)
            except UNREACHED as exc:
                log.warning("event=campaign_failed key=%s error=%r", self.key, exc)
                yield Sleep(self.retry_interval)
                continue
            finally:
                self.consistency = lock.consistency  # decided once, kept for every term
            self.leader = self.identity
            self.terms += 1
            self.elected.set()
            _call_back(self.on_elected, (self,), self._spawn, self.key)
            yield _Hold(lock)

    def _end(self, campaign: Campaign) -> Lock | None:
        """run() on its way out: no further step, no term; returns the lock to release."""
        campaign.close()
        self.elected.clear()
        lock, self._lock = self._lock, None
        return lock

    def _lost(self, lock: Lock, reason: LockLost) -> None:
        self.elected.clear()
        if self.leader == self.identity:
            self.leader = None
        _call_back(self.on_lost, (self, reason), self._spawn, self.key)

    def _observe(self, version: VersionRecord | None) -> None:
        value = version.value if version is not None else None
        self.leader = value.get("holder") if isinstance(value, dict) else None


class _AsyncElection(_AsyncKind, LeaderElection):
    """A LeaderElection given an AsyncClient: run(), resign() and the waits are coroutines."""

    async def run(self) -> None:
        """Campaign until resign() (or until cancelled, which also resigns)."""
        self._resigned.clear()
        campaign = self._campaign()
        error: BaseException | None = None
        try:
            while (step := _resume(campaign, error)) is not None:
                error = None
                try:
                    if not await self._until_resigned(self._wait_for(step)):
                        return
                except UNREACHED as exc:
                    error = exc
        finally:
            lock = self._end(campaign)
            if lock is not None:
                await lock.release()  # type: ignore[attr-defined]

    @staticmethod
    def _wait_for(step: CampaignStep) -> Awaitable[Any]:
        if isinstance(step, _Acquire):
            return step.lock.acquire()  # type: ignore[attr-defined,no-any-return]
        if isinstance(step, _Hold):
            return step.lock.lost.wait()  # type: ignore[no-any-return]
        return asyncio.sleep(step.seconds)

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
            await lock.release()  # type: ignore[attr-defined]

    def wait_until_elected(self, timeout: float | None = None) -> Awaitable[bool]:
        _require_event_loop("LeaderElection")
        return self._wait_until_elected(timeout)

    async def _wait_until_elected(self, timeout: float | None) -> bool:
        try:
            async with asyncio.timeout(timeout):
                await self.elected.wait()
            return True
        except TimeoutError:
            return False


class _BlockingElection(_BlockingKind, LeaderElection):
    """A LeaderElection given a blocking Client: run() blocks (give it a thread), and so do
    resign() and wait_until_elected(); resign() may come from any thread.

    A follower's blocking query lasts at most `retry_interval`, so that run() notices a
    resign() from another thread within that (a thread cannot be interrupted mid-request).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._wake = threading.Event()  # set by a loss or resign(): ends a term's wait

    def run(self) -> None:
        """Campaign until resign()."""
        _refuse_event_loop("LeaderElection")
        self._resigned.clear()
        campaign = self._campaign()
        error: BaseException | None = None
        try:
            while not self._resigned.is_set() and (step := _resume(campaign, error)) is not None:
                error = None
                try:
                    self._wait_for(step)
                except UNREACHED as exc:
                    error = exc
        finally:
            lock = self._end(campaign)
            if lock is not None:
                lock.release()  # type: ignore[attr-defined]

    def _wait_for(self, step: CampaignStep) -> None:
        if isinstance(step, _Acquire):
            self._wake.clear()
            step.lock._acquire(None, self._resigned, self.retry_interval)  # type: ignore[attr-defined]
        elif isinstance(step, _Hold):
            self._wake.wait()
        else:
            self._resigned.wait(step.seconds)

    def _lost(self, lock: Lock, reason: LockLost) -> None:
        super()._lost(lock, reason)
        self._wake.set()

    def resign(self) -> None:
        """Step down (releasing the key, so a follower takes over at once) and stop campaigning."""
        self._resigned.set()
        self._wake.set()
        lock = self._lock
        if lock is not None:
            self.elected.clear()
            lock.release()  # type: ignore[attr-defined]

    def wait_until_elected(self, timeout: float | None = None) -> bool:
        return bool(self.elected.wait(timeout))


Lock._kinds = (_AsyncLock, _BlockingLock)
LeaderElection._kinds = (_AsyncElection, _BlockingElection)
