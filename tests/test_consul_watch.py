"""A consul-template / Traefik style watch: a recursive blocking query on a prefix, kept
up across a node restart, sees every change in order and misses none.

The watcher does what those tools do: block on `?recurse&index=<last X-Consul-Index>`,
and on an error retry with the same index. From each answer it takes the entries whose
ModifyIndex is past the last index it saw, in ModifyIndex order: its change log. The
node is a real `kvs serve` process, killed (SIGKILL) while the watch is blocked and
started again on the same data dir and port.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import consul
import requests

from kvs.testing import KvsNode, NodeGroup
from tests.procs import procs_fixture  # noqa: F401

PREFIX = "cfg/"
DEADLINE = 30.0


class Watcher:
    """One recursive blocking watch in a thread, with its change log."""

    def __init__(self, port: int) -> None:
        self.client = consul.Consul(host="127.0.0.1", port=port)
        self.changes: list[tuple[str, bytes]] = []
        self.indexes: list[int] = []
        self.errors = 0
        self.blocked = threading.Event()  # set while a query with an index is out
        self.stop = threading.Event()
        self._seen = threading.Condition()

    def run(self) -> None:
        index = None
        while not self.stop.is_set():
            try:
                if index:
                    self.blocked.set()
                new_index, items = self.client.kv.get(PREFIX, recurse=True, index=index, wait="2s")
            except requests.RequestException:
                self.blocked.clear()
                self.errors += 1
                self.stop.wait(0.05)  # retry backoff while the node is down, as the tools do
                continue
            self.blocked.clear()
            last = int(index or 0)
            fresh = sorted((i for i in items or [] if i["ModifyIndex"] > last),
                           key=lambda i: i["ModifyIndex"])
            with self._seen:
                self.changes += [(i["Key"], i["Value"]) for i in fresh]
                self.indexes.append(int(new_index))
                self._seen.notify_all()
            index = new_index

    def wait_for(self, count: int) -> None:
        with self._seen:
            assert self._seen.wait_for(lambda: len(self.changes) >= count, DEADLINE), (
                f"the watch saw {len(self.changes)} of {count} changes: {self.changes}")


@contextmanager
def watching(port: int) -> Iterator[Watcher]:
    watcher = Watcher(port)
    thread = threading.Thread(target=watcher.run, name="consul-watch", daemon=True)
    thread.start()
    try:
        yield watcher
    finally:
        watcher.stop.set()
        thread.join(DEADLINE)
        assert not thread.is_alive(), "the watch thread did not stop"


def write(node: KvsNode, writes: list[tuple[str, bytes]]) -> None:
    client = consul.Consul(host="127.0.0.1", port=node.port)
    for key, value in writes:
        assert client.kv.put(key, value) is True


def test_recursive_watch_sees_every_change_across_a_restart(procs: NodeGroup) -> None:
    node = procs.start("watched")
    before = [(f"{PREFIX}{i:03}", f"v{i}".encode()) for i in range(10)]
    after = [(f"{PREFIX}{i:03}", f"v{i}".encode()) for i in range(10, 20)]
    # Updates of keys the watch saw before the restart. (A watch shows states: two writes
    # of one key between two answers show as the second only, in Consul too.)
    after += [(f"{PREFIX}003", b"v3-updated"), (f"{PREFIX}007", b"v7-updated")]
    write(node, [("other/x", b"not watched")])
    with watching(node.port) as watcher:
        write(node, before)
        watcher.wait_for(len(before))
        # Kill it under a blocked query, not between two.
        assert watcher.blocked.wait(DEADLINE), "the watch never blocked"
        node.kill()
        node.start()
        write(node, after)
        watcher.wait_for(len(before) + len(after))
    assert watcher.errors >= 1, "the restart went unnoticed: the test did not test it"
    assert watcher.changes == before + after  # every change, in order, none twice
    assert watcher.indexes == sorted(watcher.indexes)  # X-Consul-Index never went back
