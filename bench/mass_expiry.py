"""RSS of one `kvs serve` through mass expiries: write N keys with ttl=1, watch RSS after.

    python -m bench.mass_expiry                         # 200k keys, one cycle
    python -m bench.mass_expiry --keys 100000 --cycles 6 --watch 10
    python -m bench.mass_expiry --root /path/to/other/checkout   # the same on other code

Each cycle PUTs N new keys (64 concurrent clients, a ~60-byte value, ttl 1 s), then
samples the node's RSS every 5 s for `--watch` seconds while they expire. A bounded
node levels off across cycles; a leak grows by about the same amount every cycle.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import aiohttp

from bench.targets import REPO_ROOT, KvsTarget, Proc

CLIENTS = 64


def _mb(proc: Proc) -> int:
    return (proc.rss_bytes() or 0) >> 20


async def _cycle(session: aiohttp.ClientSession, url: str, proc: Proc, cycle: int, keys: int,
                 watch: float) -> None:
    todo = iter(range(keys))
    started = time.perf_counter()

    async def client() -> None:
        for i in todo:
            body = {"value": {"n": i, "pad": "x" * 40}, "ttl": 1}
            async with session.put(f"{url}/kv/expiry{cycle}/{i:07d}", json=body) as reply:
                if reply.status != 200:
                    raise RuntimeError(f"PUT answered {reply.status}: {await reply.text()}")

    await asyncio.gather(*(client() for _ in range(CLIENTS)))
    print(f"cycle {cycle}: wrote {keys:,} keys in {time.perf_counter() - started:.1f} s, "
          f"RSS {_mb(proc)} MB", flush=True)
    waited = 0.0
    while waited < watch:
        await asyncio.sleep(5)
        waited += 5
        async with session.get(f"{url}/cluster/status") as reply:
            live = (await reply.json())["keys"]
        print(f"  +{waited:3.0f} s: RSS {_mb(proc)} MB, live keys {live}", flush=True)


async def _run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="kvs-expiry-") as work, \
            KvsTarget("kvs", Path(work), None, root=args.root) as target:
        proc = target.procs[0]
        print(f"start: RSS {_mb(proc)} MB", flush=True)
        async with aiohttp.ClientSession() as session:
            for cycle in range(args.cycles):
                await _cycle(session, target.url, proc, cycle, args.keys, args.watch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=200_000)
    parser.add_argument("--cycles", type=int, default=1)
    parser.add_argument("--watch", type=float, default=30.0, help="seconds of RSS samples per cycle")
    parser.add_argument("--root", type=Path, default=REPO_ROOT, help="the kvs source tree to run")
    asyncio.run(_run(parser.parse_args()))


if __name__ == "__main__":
    main()
