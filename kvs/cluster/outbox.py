"""Calls to one peer, one at a time; what comes meanwhile goes in the next call, together.

    submit(item) ─► queue ─► (no call in flight?) send([item])        at once, alone
    submit(item) ─► queue      ...call in flight...  ─► send([items]) when it returns

An idle peer sees every item at once, as a call of its own; under load one call carries
many. Quorum rounds use one outbox per voter for their Paxos messages
(kvs/cluster/quorum.py): one HTTP request, one acceptor pass and one fsync then serve
many rounds, and the calls to a voter never outnumber one.

An item is worth sending only while its sender still waits for the answer: one that
waited longer than `max_age` (a stalled peer holds the call in flight until it times
out) is answered None without being sent, and so is a new item while `max_waiting`
wait (the peer is not keeping up), so a stopped voter never builds a backlog.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Generic, NamedTuple, TypeVar

T = TypeVar("T")


class _Waiting(NamedTuple):
    item: Any
    size: int
    answer: asyncio.Future[Any]
    deadline: float


class Outbox(Generic[T]):
    """`send(items)` makes one call with the items and returns one answer per item, in
    order (None for no usable answer); it must not raise for a failed call."""

    def __init__(self, send: Callable[[list[T]], Awaitable[list[Any]]], *, max_items: int,
                 max_bytes: int, max_waiting: int, max_age: float) -> None:
        self._send = send
        self.max_items, self.max_bytes = max_items, max_bytes
        self.max_waiting, self.max_age = max_waiting, max_age
        self._queue: list[_Waiting] = []
        self._task: asyncio.Task[None] | None = None

    def submit(self, item: T, size: int) -> asyncio.Future[Any]:
        """The answer to `item` (a future). `size`: its encoded bytes, for `max_bytes`."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Any] = loop.create_future()
        if len(self._queue) >= self.max_waiting:
            answer.set_result(None)
            return answer
        self._queue.append(_Waiting(item, size, answer, loop.time() + self.max_age))
        if self._task is None:
            self._task = asyncio.create_task(self._drain())
        return answer

    async def _drain(self) -> None:
        batch: list[_Waiting] = []
        try:
            while batch := self._take():
                answers = await self._send([waiting.item for waiting in batch])
                for waiting, answer in zip(batch, answers, strict=True):
                    _settle(waiting.answer, answer)
        except Exception as exc:  # a bug in send: its callers see it
            for waiting in batch + self._queue:
                if not waiting.answer.done():
                    waiting.answer.set_exception(exc)
            raise
        finally:
            self._task = None
            for waiting in batch + self._queue:  # cancelled (shutdown): nobody answers
                waiting.answer.cancel()
            self._queue.clear()

    def _take(self) -> list[_Waiting]:
        """The next call's items: the oldest ones still awaited, within the limits."""
        now = asyncio.get_running_loop().time()
        for waiting in self._queue:
            if waiting.deadline < now:
                _settle(waiting.answer, None)
        queue = [waiting for waiting in self._queue if not waiting.answer.done()]
        size, count = 0, 0
        for waiting in queue[:self.max_items]:
            if count and size + waiting.size > self.max_bytes:
                break
            size, count = size + waiting.size, count + 1
        batch, self._queue = queue[:count], queue[count:]
        return batch

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


def _settle(answer: asyncio.Future[Any], value: Any) -> None:
    if not answer.done():
        answer.set_result(value)
