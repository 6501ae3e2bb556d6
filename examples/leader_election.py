"""Leader election: start it in several shells; exactly one of them leads at any time.

    kvs cluster up --nodes 3                 # in another shell
    python examples/leader_election.py --name a
    python examples/leader_election.py --name b

Ctrl-C the leader: it resigns and a follower takes over at once. `kill -9` it: a follower
takes over as soon as the leader's lease (--ttl) runs out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
from typing import Any

from kvs.client import AsyncClient
from kvs.coordination import LeaderElection, LockLost

NODES = ["http://127.0.0.1:8080", "http://127.0.0.1:8081", "http://127.0.0.1:8082"]


def elected(election: LeaderElection) -> None:
    print(f"{election.identity}: I am the leader (term {election.fencing_token})", flush=True)


def lost(election: LeaderElection, reason: LockLost) -> None:
    print(f"{election.identity}: no longer the leader: {reason.message}", flush=True)


async def main(nodes: list[str], key: str, name: str, ttl: float, duration: float | None) -> int:
    async with AsyncClient(nodes) as kv:
        election = LeaderElection(kv, key, ttl=ttl, identity=name, on_elected=elected, on_lost=lost)
        campaign = asyncio.create_task(election.run())
        try:
            async with asyncio.timeout(duration):
                last: Any = object()
                while True:  # the work loop: a real leader would do its job here
                    await asyncio.sleep(0.5)
                    if not election.is_leader and election.leader != last:
                        print(f"{name}: following {election.leader or '(nobody yet)'}", flush=True)
                    last = None if election.is_leader else election.leader
        except TimeoutError:
            pass
        finally:
            await election.resign()
            with contextlib.suppress(asyncio.CancelledError):
                await campaign
            print(f"{name}: resigned", flush=True)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--node", action="append", help=f"node URL, repeatable (default {NODES})")
    parser.add_argument("--key", default="examples/leader")
    parser.add_argument("--name", default=f"pid-{os.getpid()}")
    parser.add_argument("--ttl", type=float, default=5.0, help="lease seconds")
    parser.add_argument("--duration", type=float, help="resign and exit after this many seconds")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(asyncio.run(main(args.node or NODES, args.key, args.name, args.ttl,
                                          args.duration)))
