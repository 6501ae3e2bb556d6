"""Point-in-time snapshots of one node's RocksDB: the file format, taking one, restoring one.

A snapshot is taken from a RocksDB checkpoint (hard links of the live SST files plus
the WAL, made under the engine's lock right after the staged batch was written), so it
is exactly the state between two mutations, and the node keeps serving while it
streams. The file is every raw record of that checkpoint:

    b"KVSSNAP\\n"                                  magic
    u32 length, JSON header                       {"format": 1, "node", "created_at",
                                                   "index", "merkle_root", "keys"}
    (b"R", u32 klen, key, u32 vlen, value) ...    records in key order
    b"E", u64 record count, u64 xxh3_64           trailer: count and a checksum of
                                                   every byte before the checksum

`restore` reads the whole file and checks magic, format, record framing, count and
checksum before it writes anything, then builds the data dir under a temporary name
and renames it into place: a truncated or corrupted snapshot leaves nothing behind.
The node identity (id, joined_at) is not restored unless asked: a restored copy that
joins the cluster beside its source must be a new node.
"""

from __future__ import annotations

import contextlib
import shutil
import struct
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import orjson
import rocksdict
import xxhash

from kvs import keys as K

MAGIC = b"KVSSNAP\n"
FORMAT = 1
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_IDENTITY = (K.META_NODE_ID, K.META_JOINED_AT)
CHUNK_RECORDS = 2048


class SnapshotError(Exception):
    """The snapshot file is not one this version can restore (truncated, corrupted, newer)."""


def encode(header: dict[str, Any], records: Iterator[tuple[bytes, bytes]]) -> Iterator[bytes]:
    """The snapshot file as chunks: header, records (CHUNK_RECORDS per chunk), trailer."""
    digest = xxhash.xxh3_64()
    head = orjson.dumps({"format": FORMAT, **header})
    chunk = MAGIC + _U32.pack(len(head)) + head
    count = 0
    parts = [chunk]
    for key, value in records:
        parts.append(b"R" + _U32.pack(len(key)) + key + _U32.pack(len(value)) + value)
        count += 1
        if count % CHUNK_RECORDS == 0:
            chunk = b"".join(parts)
            digest.update(chunk)
            yield chunk
            parts = []
    tail = b"".join(parts) + b"E" + _U64.pack(count)
    digest.update(tail)
    yield tail + _U64.pack(digest.intdigest())


def checkpoint_records(path: Path) -> Iterator[tuple[bytes, bytes]]:
    """Every record of a checkpoint directory, in key order (the checkpoint is static)."""
    db = rocksdict.Rdict(str(path), rocksdict.Options(raw_mode=True),
                         access_type=rocksdict.AccessType.read_only())
    try:
        it = db.iter()
        it.seek_to_first()
        while it.valid():
            yield it.key(), it.value()
            it.next()
        del it
    finally:
        db.close()


def verify(stream: BinaryIO) -> dict[str, Any]:
    """Read a whole snapshot and check it; its header, or SnapshotError saying what is wrong."""
    records = _records(stream)
    header = next(records)
    for _ in records:
        pass
    return header  # type: ignore[return-value]


def _records(stream: BinaryIO) -> Iterator[Any]:
    """The header, then every (key, value), checking framing as it goes; the trailer's
    count and checksum are checked when the records are exhausted."""
    digest = xxhash.xxh3_64()

    def take(n: int, what: str) -> bytes:
        data = stream.read(n)
        if len(data) != n:
            raise SnapshotError(f"snapshot is truncated (in the {what})")
        digest.update(data)
        return data

    if take(len(MAGIC), "magic") != MAGIC:
        raise SnapshotError("not a kvs snapshot (bad magic)")
    try:
        header = orjson.loads(take(_U32.unpack(take(4, "header"))[0], "header"))
    except orjson.JSONDecodeError:
        raise SnapshotError("snapshot header is corrupted") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        found = header.get("format") if isinstance(header, dict) else "?"
        raise SnapshotError(f"snapshot format {found} is not {FORMAT}: made by another kvs version")
    yield header
    count = 0
    while (tag := take(1, "records")) == b"R":
        key = take(_U32.unpack(take(4, "records"))[0], "records")
        value = take(_U32.unpack(take(4, "records"))[0], "records")
        count += 1
        yield key, value
    if tag != b"E":
        raise SnapshotError("snapshot is corrupted (bad record tag)")
    stored_count = _U64.unpack(take(8, "trailer"))[0]
    expected = digest.intdigest()
    checksum = stream.read(8)
    if len(checksum) != 8:
        raise SnapshotError("snapshot is truncated (in the trailer)")
    if stored_count != count or _U64.unpack(checksum)[0] != expected or stream.read(1):
        raise SnapshotError("snapshot is corrupted (checksum or record count does not match)")


def restore(stream: BinaryIO, data_dir: Path, *, keep_identity: bool = False) -> dict[str, Any]:
    """Build `data_dir` (which must not exist or be empty) from a snapshot; returns its header.

    Two passes over the (seekable) file: the first verifies all of it, so nothing is
    written for a bad snapshot; the second writes, into a temporary directory renamed
    into place at the end.
    """
    if data_dir.exists() and any(data_dir.iterdir()):
        raise SnapshotError(f"{data_dir} is not empty; restore into a new data dir")
    header = verify(stream)
    stream.seek(0)
    records = _records(stream)
    next(records)
    building = data_dir.with_name(f".{data_dir.name}.restoring-{uuid.uuid4().hex[:8]}")
    try:
        db = rocksdict.Rdict(str(building), rocksdict.Options(raw_mode=True))
        try:
            batch = rocksdict.WriteBatch(raw_mode=True)
            for n, (key, value) in enumerate(records, 1):
                if keep_identity or key not in _IDENTITY:
                    batch.put(key, value)
                if n % CHUNK_RECORDS == 0:
                    db.write(batch)
                    batch = rocksdict.WriteBatch(raw_mode=True)
            db.write(batch)
            db.flush()
        finally:
            db.close()
        with contextlib.suppress(FileNotFoundError):
            data_dir.rmdir()  # empty (checked above)
        building.rename(data_dir)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return header
