"""`kvs snapshot save|restore`: back up one node and build a data dir from the backup.

    kvs snapshot save FILE --node URL [--secret S | --token T] [--ca CA]   streamed, checked, renamed to FILE
    kvs snapshot restore FILE --data-dir DIR           checked whole before anything is written

A snapshot is one node's state at one instant (docs/design.md#backup-and-restore). A node started on a
restored data dir gets a new node id unless --keep-identity is given (for replacing the
very node the snapshot came from); it joins its seeds and converges like any new node.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from kvs.cli import add_token_option, token_of
from kvs.client import bearer
from kvs.cluster import auth
from kvs.store import snapshot
from kvs.tls import client_context

EXIT_ERROR, EXIT_USAGE = 1, 2
CHUNK_BYTES = 1 << 20
TIMEOUT_SECONDS = 60.0


def add_parser(sub: Any) -> None:
    from kvs.cli import add_ca_option  # kvs.cli builds its parser with this module's help

    parser = sub.add_parser("snapshot", help="back up a node, restore a data dir",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="snapshot_command", required=True)
    save = actions.add_parser("save", help="write a consistent copy of one node to FILE")
    save.add_argument("file", metavar="FILE", help="where to write the snapshot (replaced only once "
                                                   "the new one is complete and checked)")
    save.add_argument("--node", default="http://127.0.0.1:8080", metavar="URL",
                      help="the node to copy (default: %(default)s)")
    save.add_argument("--secret", default=os.environ.get("KVS_CLUSTER_SECRET"),
                      help="the cluster_secret, when the node has one (default: $KVS_CLUSTER_SECRET)")
    add_ca_option(save)
    add_token_option(save)
    save.set_defaults(run=cmd_save)
    restore = actions.add_parser("restore", help="build a new data dir from a snapshot FILE")
    restore.add_argument("file", metavar="FILE", help="a file written by `kvs snapshot save`")
    restore.add_argument("--data-dir", required=True, metavar="DIR",
                         help="the data dir to create (must not exist, or be empty)")
    restore.add_argument("--keep-identity", action="store_true",
                         help="keep the source node's id and joined_at (only to replace that node; "
                              "default: the restored node gets a new id when it starts)")
    restore.set_defaults(run=cmd_restore)


def cmd_save(args: argparse.Namespace) -> int:
    # Here, not at the top: the server's module brings aiohttp's server and the engine
    # (~0.25 s), and every `kvs` command imports this module to build its parser.
    from kvs.http.snapshot import SNAPSHOT_PATH

    target = Path(args.file)
    partial = target.with_name(target.name + ".partial")
    # An operator token, or (taking precedence on the node) the secret's signature.
    headers = {**bearer(token_of(args)), **auth.operator_headers(args.secret, "GET", SNAPSHOT_PATH)}
    request = urllib.request.Request(args.node.rstrip("/") + SNAPSHOT_PATH, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS,
                                    context=client_context(args.ca)) as response, \
                partial.open("wb") as out:
            while chunk := response.read(CHUNK_BYTES):
                out.write(chunk)
        with partial.open("rb") as written:
            header = snapshot.verify(written)
    except urllib.error.HTTPError as exc:
        return _fail(partial, f"the node answered {exc.code}: {exc.read()[:300].decode(errors='replace')}")
    except (OSError, snapshot.SnapshotError) as exc:
        return _fail(partial, f"{exc}; is the node at {args.node} running?")
    partial.replace(target)
    print(f"saved {target}: node {header['node']}, index {header['index']}, {header['keys']} keys, "
          f"merkle root {header['merkle_root']}, {target.stat().st_size} bytes")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    try:
        with open(args.file, "rb") as stream:
            header = snapshot.restore(stream, Path(args.data_dir), keep_identity=args.keep_identity)
    except FileNotFoundError:
        print(f"kvs snapshot restore: no file {args.file}")
        return EXIT_USAGE
    except snapshot.SnapshotError as exc:
        print(f"kvs snapshot restore: {exc}; nothing was written")
        return EXIT_ERROR
    print(f"restored {args.data_dir} from node {header['node']} (index {header['index']}, "
          f"{header['keys']} keys, merkle root {header['merkle_root']}); start a node on it with "
          f"`kvs serve --data-dir {args.data_dir} --seed HOST:PORT`")
    return 0


def _fail(partial: Path, message: str) -> int:
    with contextlib.suppress(FileNotFoundError):
        partial.unlink()
    print(f"kvs snapshot save: {message}; no snapshot written")
    return EXIT_ERROR
