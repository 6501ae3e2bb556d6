"""Run a kvs node whose wall clock is off by a fixed offset: `python -m kvs.chaos.skewed_node
--offset-ms N -- serve --port ...`.

Why a wrapper and not a setting: the node's configuration rejects unknown `KVS_*` keys,
and clock skew is not a product setting. The wrapper shifts `time.time` and
`time.time_ns` for the whole process *before* kvs is imported. That reaches the HLC:
`Node(config)` defaults `now_ms` to `kvs.clock.wall_ms`, which calls `time.time_ns()`
through the module attribute at every call, and the engine and its HLC get that same
`now_ms`. Everything else that reads the wall clock (SWIM incarnations, expiry, log
timestamps, HMAC timestamps) sees the skew too, as it would on a host whose clock is
wrong. Monotonic clocks (asyncio timers, timeouts) are untouched, as on a real host.
`GET /cluster/status` shows the effect in `hlc`.

Clock jumps (`--jump-ms J`): SIGUSR1 moves the clock J ms forward, SIGUSR2 J ms back,
at once, as a host's clock does when NTP steps it. The chaos run's "jump" fault sends
one to jump and the other to come back. kvs itself handles neither signal.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any


def install_skew(offset_ms: int, jump_ms: int = 0) -> None:
    """Shift this process's wall clock by offset_ms (positive: the node runs ahead); with
    jump_ms, SIGUSR1 and SIGUSR2 move it that much forward and back."""
    real_time_ns = time.time_ns
    offset_ns = [int(offset_ms) * 1_000_000]  # a cell: the signal handlers change it

    def skewed_time_ns() -> int:
        return real_time_ns() + offset_ns[0]

    def skewed_time() -> float:
        return skewed_time_ns() / 1e9

    def jump(by_ms: int) -> Any:
        def handler(signum: int, frame: Any) -> None:
            offset_ns[0] += by_ms * 1_000_000
        return handler

    time.time_ns = skewed_time_ns
    time.time = skewed_time
    if jump_ms:
        signal.signal(signal.SIGUSR1, jump(jump_ms))
        signal.signal(signal.SIGUSR2, jump(-jump_ms))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kvs.chaos.skewed_node",
                                     description="run `kvs ARGS...` with a skewed wall clock")
    parser.add_argument("--offset-ms", type=int, required=True)
    parser.add_argument("--jump-ms", type=int, default=0, help="SIGUSR1/SIGUSR2 jump the clock this much")
    parser.add_argument("kvs_args", nargs=argparse.REMAINDER, help="-- serve --port ...")
    args = parser.parse_args(argv)
    rest = list(args.kvs_args)
    if rest and rest[0] == "--":
        rest = rest[1:]
    install_skew(args.offset_ms, args.jump_ms)
    from kvs.cli import main as kvs_main  # imported after the patch, on purpose

    return kvs_main(rest)


if __name__ == "__main__":
    sys.exit(main())
