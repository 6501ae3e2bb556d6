"""Group commit: tickets of staged mutations, the points a writer can wait for, and the
storage fault that stops them until the disk accepts writes again."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import re
import time
from collections.abc import Callable
from itertools import chain

from kvs.clock import wall_ms
from kvs.errors import StorageFailed, StorageFull

log = logging.getLogger("kvs.storage")

# An fsync for one waiter runs on the event loop while the last fsync took less than this,
# instead of in a worker thread: the hand-off to the thread and back (two thread wake-ups,
# the executor's futures) costs as much CPU as such an fsync does, and on a busy machine
# each wake-up waits for the scheduler. A slower disk's fsyncs go to the thread, so the
# loop never stalls for long (the first one that took longer tells). So do the fsyncs
# that several waiters share: under load the loop serves the next requests meanwhile
# (on the loop, 32 clients' sync_writes PUTs lost 8-13% of their throughput).
INLINE_FSYNC_S = 0.001

# A file path in a RocksDB message ("/data/000004.log", "./data/LOCK"), not "Input/output".
_PATH = re.compile(r"(?<![\w.])\.{0,2}/[^\s:]+")


class Commits:
    """Tickets of staged mutations, and the two points a writer can wait for.

        staged ──(one db.write per event-loop round)──► written ──(one WAL fsync)──► synced

    Tickets are issued in staging order and a write covers every ticket staged before
    it. An fsync that starts after ticket t was written makes t durable, so a waiter
    needs only the first fsync that begins after its write; writers arriving during an
    fsync share the next one (group commit).

    A failed write or fsync is a *fault*: memory is then ahead of disk. The staged
    records stay staged, every waiter hears that its outcome is unknown, and every
    later write is refused before it stages anything, until `resume()` (called by the
    store on a fresh RocksDB handle) writes and fsyncs them. The fault's start, each
    change of its cause and its end are logged once each.
    """

    def __init__(self, write_staged: Callable[[], None], fsync: Callable[[], None], *,
                 sync: bool = False, data_dir: str = "",
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self._write_staged = write_staged
        self._fsync = fsync
        self._clock = clock  # times each fsync (see INLINE_FSYNC_S)
        self._sync_acks = sync
        self._data_dir = data_dir  # never shown to clients
        self.issued = 0
        self.written = 0
        self.synced = 0
        self.writes = 0  # RocksDB writes: far fewer than tickets under concurrency
        self.syncs = 0  # fsyncs: far fewer than tickets under concurrency
        self.fault_since: int | None = None  # wall-clock ms at which the current fault began
        self._cause: tuple[type[StorageFailed], str] | None = None
        self._fault_started = 0.0
        self._scheduled = False
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []  # (ticket, until settled)
        # (ticket, until fsynced) whatever sync_writes says: Paxos acceptors' answers.
        self._durable: list[tuple[int, asyncio.Future[None]]] = []
        self._sync_task: asyncio.Task[None] | None = None
        self._quick_disk = True  # the last fsync took less than INLINE_FSYNC_S

    @property
    def settled_through(self) -> int:
        """Answers may show everything through this ticket: written, or synced with sync_writes."""
        return self.synced if self._sync_acks else self.written

    @property
    def fault(self) -> StorageFailed | None:
        """What a write is refused with while the disk refuses writes; None when healthy."""
        return None if self._cause is None else self._refusal()

    @property
    def syncing(self) -> bool:
        """An fsync is running in a worker thread (on the current RocksDB handle)."""
        return self._sync_task is not None

    def check(self) -> None:
        # A new exception each time: a re-raised one grows its traceback. Not held in a local
        # either: that would make a cycle through the traceback, keeping every frame on it
        # (a scan's RocksDB iterator, and with it the handle recover() must close) alive.
        if self._cause is not None:
            raise self._refusal()

    def stage(self) -> int:
        """A new ticket; its write happens once the current event-loop round is over."""
        self.issued += 1
        if not self._scheduled:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no event loop (tools, checks): nothing to coalesce with
                self.flush()
            else:
                self._scheduled = True
                loop.call_soon(self._write_soon)
        return self.issued

    def _write_soon(self) -> None:
        self._scheduled = False
        with contextlib.suppress(StorageFailed):  # logged and handed to every waiter by _fail()
            self.flush()

    def flush(self) -> None:
        """Write every staged ticket now (a scan needs it, or there is no event loop)."""
        self.check()
        if self.written == self.issued:
            return
        try:
            self._write_staged()
        except Exception as exc:
            self._fail("writing a batch to RocksDB", exc)
            raise self._unknown_outcome() from None
        self.writes += 1
        self.written = self.issued
        if not self._sync_acks:
            self._release()
        if self._needs_sync():
            self._start_sync()

    def resume(self) -> bool:
        """End a fault: write what is still staged and fsync it; False if the disk still refuses.

        The store calls it on a fresh RocksDB handle (a handle that failed a write keeps
        failing). Writing the same pending records again is idempotent, so it does not
        matter whether part of the failed write reached the log.
        """
        if self._cause is None:
            return True
        try:
            if self.written != self.issued:
                self._write_staged()
                self.writes += 1
            self._fsync()
        except Exception as exc:
            self._fail("writing the pending batch again", exc, current=True)
            return False
        self.syncs += 1
        self.written = self.synced = self.issued
        log.warning("event=storage_recovered after_ms=%d",
                    (time.monotonic() - self._fault_started) * 1000)
        self._cause = None
        self.fault_since = None
        return True

    def _fail(self, what: str, exc: BaseException, *, current: bool = False) -> None:
        """Enter the fault, or (`current`: a retry failed) update its cause.

        An operation already in flight when the fault began (an fsync in its thread) fails
        with "Writer has previous error": a consequence, not a new cause.
        """
        cause = _cause(exc, self._data_dir)
        if self._cause is None:
            self.fault_since = wall_ms()
            self._fault_started = time.monotonic()
            log.error("event=storage_failed what=%r error=%r: writes are refused until the disk "
                      "accepts them again", what, str(exc))
            self._cause = cause
        elif current and cause != self._cause:
            log.error("event=storage_fault_changed what=%r error=%r", what, str(exc))
            self._cause = cause
        self._release()

    def _refusal(self) -> StorageFailed:
        assert self._cause is not None
        kind, cause = self._cause
        return kind(f"{cause}: this node refuses writes until its disk accepts them again "
                    "(it retries by itself); nothing was written. Reads still work.")

    def _unknown_outcome(self) -> StorageFailed:
        assert self._cause is not None
        kind, cause = self._cause
        return kind(f"{cause}: this write is not acknowledged. It stays in this node's memory "
                    "and is written as soon as the disk accepts writes again (it is lost if the "
                    "node stops first), so its outcome is unknown until then.")

    async def wait(self, ticket: int) -> None:
        """Wait until `ticket` is settled."""
        if ticket > self.settled_through:
            await self._queue(ticket, self._waiters, sync=self._sync_acks)

    async def wait_durable(self, ticket: int) -> None:
        """Wait until `ticket` is fsynced, whatever sync_writes says: a Paxos acceptor's
        promise must survive power loss before its answer leaves. It shares the group
        commit: one fsync covers every waiter whose batch was written before it began."""
        if ticket > self.synced:
            await self._queue(ticket, self._durable, sync=True)

    async def _queue(self, ticket: int, waiters: list[tuple[int, asyncio.Future[None]]], *,
                     sync: bool) -> None:
        if self._cause is not None:
            raise self._unknown_outcome()
        future = asyncio.get_running_loop().create_future()
        waiters.append((ticket, future))
        if sync and ticket <= self.written:
            self._start_sync()
        await future

    def _needs_sync(self) -> bool:
        """Someone waits for an fsync of a batch already written."""
        return self._covered(stop=1) > 0

    def _covered(self, stop: int) -> int:
        """How many wait for an fsync of a batch already written, counted up to `stop`."""
        waiters = chain(self._durable, self._waiters) if self._sync_acks else self._durable
        count = 0
        for ticket, _ in waiters:
            if ticket <= self.written:
                count += 1
                if count == stop:
                    break
        return count

    def _start_sync(self) -> None:
        """An fsync for the waiters of written batches, unless one is running (its loop
        takes them): here and now for one waiter on a quick disk, else in a worker thread."""
        if self._sync_task is not None:
            return
        if not self._quick_disk or self._covered(stop=2) > 1:
            self._sync_task = asyncio.get_running_loop().create_task(self._sync())
            return
        target = self.written
        try:
            took = self._timed_fsync()
        except Exception as exc:
            self._fail("fsync of the write-ahead log", exc)
            return
        self._synced(target, took)

    async def _sync(self) -> None:
        try:
            while self._cause is None and self._needs_sync():
                target = self.written
                try:
                    took = await asyncio.to_thread(self._timed_fsync)
                except Exception as exc:
                    self._fail("fsync of the write-ahead log", exc)
                    return
                self._synced(target, took)
        finally:
            self._sync_task = None

    def _timed_fsync(self) -> float:
        started = self._clock()
        self._fsync()
        return self._clock() - started

    def _synced(self, target: int, took: float) -> None:
        self.syncs += 1
        self.synced = target
        self._quick_disk = took < INLINE_FSYNC_S
        self._release()

    def _release(self) -> None:
        """Wake the waiters whose tickets are settled; during a fault, all the others too."""
        self._waiters = self._wake(self._waiters, self.settled_through)
        self._durable = self._wake(self._durable, self.synced)

    def _wake(self, waiters: list[tuple[int, asyncio.Future[None]]], through: int
              ) -> list[tuple[int, asyncio.Future[None]]]:
        still = []
        for ticket, future in waiters:
            if future.done():
                continue
            if ticket <= through:
                future.set_result(None)
            elif self._cause is not None:
                future.set_exception(self._unknown_outcome())
            else:
                still.append((ticket, future))
        return still


def _cause(exc: BaseException, data_dir: str) -> tuple[type[StorageFailed], str]:
    """The error class and a client-safe description of a failed write: no file paths."""
    text = str(exc)
    if getattr(exc, "errno", None) == errno.ENOSPC or "No space left on device" in text:
        return StorageFull, "the disk is full (no space left on device)"
    if data_dir:
        text = text.replace(data_dir, "")
    return StorageFailed, "the disk failed a write (" + (_PATH.sub("<file>", text) or
                                                        type(exc).__name__) + ")"
