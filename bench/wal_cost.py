"""What a RocksDB write costs per byte, with the write-ahead log and without it.

    python -m bench.wal_cost            # ~10 s; prints one row per batch shape

Why this exists: kvs stores a key's revision set (up to `revision_history_limit`
versions) as one value, so a write to a key with history puts ~2 KB, not ~250 bytes.
On this machine the WAL costs several microseconds per KB (the RocksDB inside the
rocksdict wheel logs "Fast CRC32 supported: Not supported on x86", i.e. a software
CRC32C over every WAL record), which is what makes PUT on many keys dearer than on one
hot key (docs/benchmarks.md). The baseline, side by side, is the same batch with
`disable_wal`, and a plain append of the same bytes to a file.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import rocksdict

SHAPES = ((1, 100), (1, 2000), (32, 250), (32, 2000))  # (records per batch, bytes per record)


def _timed(action: Callable[[], None], rounds: int) -> float:
    """Median microseconds of `action` over `rounds` calls, in 5 groups (noisy machines)."""
    medians = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(rounds // 5):
            action()
        medians.append((time.perf_counter() - started) / (rounds // 5) * 1e6)
    return statistics.median(medians)


def _writer(db: rocksdict.Rdict, records: int, size: int, wal: bool) -> Callable[[], None]:
    keys = [f"key/{i}".encode() for i in range(records)]
    value = os.urandom(size)
    options = rocksdict.WriteOptions()
    options.disable_wal = not wal

    def write() -> None:
        batch = rocksdict.WriteBatch(raw_mode=True)
        for key in keys:
            batch.put(key, value)
        db.write(batch, options)

    return write


def _append(fd: int, payload: bytes) -> Callable[[], None]:
    def append() -> None:
        os.write(fd, payload)

    return append


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.wal_cost", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2000, help="batches per measurement")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="kvs-wal-cost-") as tmp:
        db = rocksdict.Rdict(str(Path(tmp) / "db"), options=rocksdict.Options(raw_mode=True))
        try:
            log = (Path(tmp) / "db" / "LOG").read_text(errors="replace")
            crc = re.search(r"Fast CRC32 supported: (.*)", log)
            print(f"RocksDB: Fast CRC32 supported: {crc.group(1) if crc else 'unknown'}")
            print("| records x bytes | WAL us/batch | no WAL us/batch | file append us | WAL / no WAL "
                  "| WAL extra us |")
            print("|---|---:|---:|---:|---:|---:|")
            fd = os.open(Path(tmp) / "append", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            try:
                for records, size in SHAPES:
                    wal = _timed(_writer(db, records, size, wal=True), args.rounds)
                    no_wal = _timed(_writer(db, records, size, wal=False), args.rounds)
                    append = _timed(_append(fd, os.urandom(records * size)), args.rounds)
                    print(f"| {records} x {size} | {wal:.1f} | {no_wal:.1f} | {append:.1f} "
                          f"| {wal / no_wal:.2f}x | {wal - no_wal:.1f} |", flush=True)
            finally:
                os.close(fd)
        finally:
            db.close()


if __name__ == "__main__":
    main()
