"""The per-peer outbox (kvs/cluster/outbox.py): one call at a time, the rest batched,
stale items answered None without being sent."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kvs.cluster.outbox import Outbox


class Peer:
    """A `send` whose calls the test releases one by one."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.release: asyncio.Queue[None] = asyncio.Queue()

    async def send(self, items: list[str]) -> list[Any]:
        self.calls.append(items)
        await self.release.get()
        return [f"re:{item}" for item in items]


def outbox(peer: Peer, **limits: Any) -> Outbox[str]:
    settings = {"max_items": 3, "max_bytes": 100, "max_waiting": 10, "max_age": 60.0, **limits}
    return Outbox(peer.send, **settings)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_lone_item_goes_at_once_and_the_rest_wait_for_the_call_in_flight() -> None:
    peer = Peer()
    box = outbox(peer)
    first = box.submit("a", 1)
    await settle()
    assert peer.calls == [["a"]]
    later = [box.submit(item, 1) for item in "bcde"]
    await settle()
    assert peer.calls == [["a"]]  # nothing more while the first call is in flight
    peer.release.put_nowait(None)
    await settle()
    assert await first == "re:a"
    assert peer.calls == [["a"], ["b", "c", "d"]]  # max_items: 3, in order
    for _ in range(2):
        peer.release.put_nowait(None)
    assert [await answer for answer in later] == ["re:b", "re:c", "re:d", "re:e"]
    assert peer.calls[-1] == ["e"]


async def test_a_batch_keeps_under_max_bytes_but_a_big_item_still_goes_alone() -> None:
    peer = Peer()
    box = outbox(peer, max_bytes=10)
    box.submit("a", 1)
    await settle()
    answers = [box.submit("big", 50), box.submit("x", 6), box.submit("y", 6)]
    for _ in range(4):
        peer.release.put_nowait(None)
    await asyncio.gather(*answers)
    assert peer.calls == [["a"], ["big"], ["x"], ["y"]]


async def test_items_whose_sender_stopped_waiting_are_answered_none_unsent() -> None:
    """A stalled peer holds the call in flight: items older than max_age are dropped."""
    peer = Peer()
    box = outbox(peer, max_age=0.05)
    box.submit("a", 1)
    await settle()
    stale = box.submit("stale", 1)
    await asyncio.sleep(0.1)
    fresh = box.submit("fresh", 1)
    peer.release.put_nowait(None)
    peer.release.put_nowait(None)
    assert await stale is None and await fresh == "re:fresh"
    assert peer.calls == [["a"], ["fresh"]]


async def test_a_peer_that_does_not_keep_up_gets_no_backlog() -> None:
    peer = Peer()
    box = outbox(peer, max_waiting=2)
    box.submit("a", 1)
    await settle()
    waiting = [box.submit(item, 1) for item in "bc"]
    refused = box.submit("d", 1)
    assert refused.done() and refused.result() is None
    for _ in range(2):
        peer.release.put_nowait(None)
    assert [await answer for answer in waiting] == ["re:b", "re:c"]


async def test_a_bug_in_send_reaches_every_waiting_caller() -> None:
    async def broken(items: list[str]) -> list[Any]:
        raise RuntimeError("bug")

    box: Outbox[str] = Outbox(broken, max_items=3, max_bytes=100, max_waiting=10, max_age=60.0)
    answers = [box.submit(item, 1) for item in "ab"]
    for answer in answers:
        with pytest.raises(RuntimeError, match="bug"):
            await answer


async def test_close_cancels_what_is_waiting() -> None:
    peer = Peer()
    box = outbox(peer)
    in_flight, queued = box.submit("a", 1), box.submit("b", 1)
    await settle()
    await box.close()
    assert in_flight.cancelled() and queued.cancelled()
