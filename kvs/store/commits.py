"""Group commit: tickets of staged mutations, and the points a writer can wait for."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from kvs.errors import StorageFailed, without_paths

log = logging.getLogger("kvs.storage")


class Commits:
    """Tickets of staged mutations, and the two points a writer can wait for.

        staged ──(one db.write per event-loop round)──► written ──(one WAL fsync)──► synced

    Tickets are issued in staging order and a write covers every ticket staged before
    it. An fsync that starts after ticket t was written makes t durable, so a waiter
    needs only the first fsync that begins after its write; writers arriving during an
    fsync share the next one (group commit).

    A failed write or fsync leaves memory ahead of disk: every waiter hears it, and so
    does every later write, until the node is restarted.
    """

    def __init__(self, write_staged: Callable[[], None], fsync: Callable[[], None], *,
                 sync: bool = False) -> None:
        self._write_staged = write_staged
        self._fsync = fsync
        self._sync_acks = sync
        self.issued = 0
        self.written = 0
        self.synced = 0
        self.writes = 0  # RocksDB writes: far fewer than tickets under concurrency
        self.syncs = 0  # fsyncs: far fewer than tickets under concurrency
        self.failure: StorageFailed | None = None
        self._scheduled = False
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []  # (ticket, until settled)
        self._sync_task: asyncio.Task[None] | None = None

    @property
    def settled_through(self) -> int:
        """Answers may show everything through this ticket: written, or synced with sync_writes."""
        return self.synced if self._sync_acks else self.written

    def check(self) -> None:
        if self.failure is not None:
            raise self.failure

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
            raise self._fail("writing a batch to RocksDB", exc) from exc
        self.writes += 1
        self.written = self.issued
        if not self._sync_acks:
            self._release()
        elif self._waiters and self._sync_task is None:
            self._sync_task = asyncio.get_running_loop().create_task(self._sync())

    def _fail(self, what: str, exc: BaseException) -> StorageFailed:
        self.failure = StorageFailed(
            f"{what} failed ({without_paths(str(exc))}); this node's memory is now ahead of its disk, so it "
            "refuses writes: check the disk and restart the node (unacknowledged writes are lost)")
        log.error("event=storage_failed what=%r error=%r", what, str(exc))
        self._release()
        return self.failure

    async def wait(self, ticket: int) -> None:
        """Wait until `ticket` is settled."""
        self.check()
        if ticket <= self.settled_through:
            return
        future = asyncio.get_running_loop().create_future()
        self._waiters.append((ticket, future))
        if self._sync_acks and ticket <= self.written and self._sync_task is None:
            self._sync_task = asyncio.get_running_loop().create_task(self._sync())
        await future

    async def _sync(self) -> None:
        try:
            while self.failure is None and any(ticket <= self.written for ticket, _ in self._waiters):
                target = self.written
                try:
                    await asyncio.to_thread(self._fsync)
                except Exception as exc:
                    self._fail("fsync of the write-ahead log", exc)
                    return
                self.syncs += 1
                self.synced = target
                self._release()
        finally:
            self._sync_task = None

    def _release(self) -> None:
        """Wake the waiters whose tickets are settled; after a failure, all of them."""
        still = []
        for ticket, future in self._waiters:
            if ticket > self.settled_through and self.failure is None:
                still.append((ticket, future))
            elif not future.done():
                if self.failure is None:
                    future.set_result(None)
                else:
                    future.set_exception(self.failure)
        self._waiters = still
