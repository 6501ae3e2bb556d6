"""User-key validation and the byte layout of every RocksDB key kvs writes.

One keyspace (the default column family), split by a one-byte prefix. Numbers are
big-endian so that byte order is numeric order and range scans come out sorted:

    m<name>                  meta: node id, joined_at, index counter, HLC, purge mark
    v<key>                   the key's revision set (model.encode_set), current first
    x<expires_at:8><key>     expiry index: live versions with a TTL, by expiry time
    g<purge_at:8><key>       purge index: tombstones and expired versions, by purge time
    s<segment:4><key>        Merkle leaf: the key's set digest (8 bytes)
    t<segment:4>             Merkle segment hash (8 bytes), so start-up needs no full scan
    q<key>                   a quorum key's Paxos acceptor state (kvs/paxos_wire.py)

User keys contain no control characters, so b"\\x00" never occurs inside one.
"""

from __future__ import annotations

import re

from kvs.errors import BadRequest

MAX_KEY_BYTES = 512

META_INDEX = b"mindex"
META_HLC = b"mhlc"
META_NODE_ID = b"mnode_id"
META_JOINED_AT = b"mjoined_at"
META_PURGED = b"mpurged"
META_LIVE = b"mlive"
META_VOTERS = b"mvoters"  # the voter configuration this node knows (newest epoch)
META_BALLOTS = b"mballots"  # the proposer's ballot counter floor (u64)

VERSIONS = b"v"
EXPIRY = b"x"
PURGE = b"g"
LEAF = b"s"
SEGMENT = b"t"
ACCEPTOR = b"q"


def validate_key(key: str, *, prefix: bool = False) -> str:
    """Reject what the spec forbids: empty, over 512 bytes, control chars, broken UTF-8.

    A prefix (recurse, keys listing) may be empty: it means the whole keyspace.
    """
    if not key and not prefix:
        raise BadRequest("key must not be empty")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise BadRequest("key is not valid UTF-8") from None
    if size > MAX_KEY_BYTES:
        raise BadRequest(f"key is {size} bytes; the limit is {MAX_KEY_BYTES}")
    control = _CONTROL.search(key)
    if control:
        raise BadRequest(f"key contains control character U+{ord(control.group()):04X}")
    return key


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")  # C0, DEL and C1


def u64(n: int) -> bytes:
    return n.to_bytes(8, "big")


def versions_key(key: str) -> bytes:
    return VERSIONS + key.encode()


def expiry_key(expires_at: int, key: str) -> bytes:
    return EXPIRY + u64(expires_at) + key.encode()


def purge_key(purge_at: int, key: str) -> bytes:
    return PURGE + u64(purge_at) + key.encode()


def leaf_key(segment: int, key: str) -> bytes:
    return LEAF + segment.to_bytes(4, "big") + key.encode()


def acceptor_key(key: str) -> bytes:
    return ACCEPTOR + key.encode()


def segment_key(segment: int) -> bytes:
    return SEGMENT + segment.to_bytes(4, "big")


def split_timed(raw: bytes) -> tuple[int, str]:
    """(time, user key) from an expiry or purge index key."""
    return int.from_bytes(raw[1:9], "big"), raw[9:].decode()


def split_leaf(raw: bytes) -> tuple[int, str]:
    return int.from_bytes(raw[1:5], "big"), raw[5:].decode()
