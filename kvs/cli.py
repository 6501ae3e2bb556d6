"""The `kvs` command: run a node, run a local cluster, or talk to a node over HTTP.

Exit codes (for scripts): 0 ok, 1 error, 2 usage, 3 not found, 4 CAS conflict,
5 CAS disabled on the node, 6 no node reachable.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from kvs import config as configuration
from kvs.client import Client, Unavailable
from kvs.errors import CASConflict, CASDisabled, ConfigError, KVSError, NotFound

EXIT_ERROR, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_CONFLICT, EXIT_DISABLED, EXIT_UNAVAILABLE = 1, 2, 3, 4, 5, 6
_EXIT_FOR: list[tuple[type[KVSError], int]] = [
    (NotFound, EXIT_NOT_FOUND), (CASConflict, EXIT_CONFLICT), (CASDisabled, EXIT_DISABLED),
    (Unavailable, EXIT_UNAVAILABLE),
]


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), stream=sys.stderr,
        format="ts=%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
    )
    logging.getLogger("aiohttp").setLevel(logging.WARNING)


# -- serve ----------------------------------------------------------------------------------

def cmd_serve(args: argparse.Namespace) -> int:
    overrides = {"port": args.port, "data_dir": args.data_dir, "bind_address": args.bind,
                 "node_id": args.node_id, "seed_nodes": args.seed or None}
    config = configuration.load(args.config, overrides={k: v for k, v in overrides.items()
                                                        if v is not None})
    setup_logging(config.log_level)
    try:
        import uvloop
        uvloop.install()
    except ImportError:  # uvloop is optional (not on every platform)
        pass
    asyncio.run(_serve(config))
    return 0


async def _serve(config: configuration.Config) -> None:
    from kvs.node import Node

    node = Node(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await node.start()
    print(f"kvs node {node.engine.node_id} listening on {node.url}", flush=True)  # type: ignore[union-attr]
    try:
        # Ctrl-C / SIGTERM, or a graceful leave through the API, ends the process.
        waits = [asyncio.create_task(stop.wait()), asyncio.create_task(node.left.wait())]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in waits:
            task.cancel()
    finally:
        await node.stop()


def cmd_cluster_up(args: argparse.Namespace) -> int:
    from kvs.localcluster import run_local_cluster

    return run_local_cluster(nodes=args.nodes, base_port=args.base_port, directory=args.dir,
                             config_file=args.config)


# -- client commands ------------------------------------------------------------------------

def _value(text: str, as_string: bool) -> Any:
    if as_string:
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def _conditions(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if args.cas is not None:
        out["cas"] = args.cas
    if args.if_version is not None:
        out["if_version"] = args.if_version
    if args.if_timestamp is not None:
        out["if_timestamp"] = args.if_timestamp
    if args.if_value is not None:
        out["if_value"] = _value(args.if_value, False)
    return out


def _put_options(args: argparse.Namespace) -> dict[str, Any]:
    options = _conditions(args)
    if args.ttl is not None:
        options["ttl"] = args.ttl
    if args.flags is not None:
        options["flags"] = args.flags
    return options


def cmd_get(c: Client, args: argparse.Namespace) -> Any:
    if args.raw:
        print(c.get(args.key, raw=True))
        return None
    return c.get(args.key)


def cmd_put(c: Client, args: argparse.Namespace) -> Any:
    return c.put(args.key, _value(args.value, args.string), **_put_options(args))


def cmd_cas(c: Client, args: argparse.Namespace) -> Any:
    if not _conditions(args):
        print("kvs cas: give at least one of --cas, --if-version, --if-timestamp, --if-value",
              file=sys.stderr)
        raise SystemExit(EXIT_USAGE)
    return cmd_put(c, args)


def cmd_delete(c: Client, args: argparse.Namespace) -> Any:
    return c.delete(args.key, recurse=args.recurse, **_conditions(args))


def cmd_history(c: Client, args: argparse.Namespace) -> Any:
    return c.history(args.key)


def cmd_ls(c: Client, args: argparse.Namespace) -> Any:
    result = c.list(args.prefix, keys=True, separator=args.separator)
    if args.json:
        return result
    for key in result["keys"]:
        print(key)
    return None


def cmd_members(c: Client, args: argparse.Namespace) -> Any:
    members = c.members()
    if args.json:
        return members
    for m in members:
        print(f"{m['id']:<14} {m['address']:<22} {m['state']:<8} incarnation={m['incarnation']}")
    return None


def cmd_status(c: Client, args: argparse.Namespace) -> Any:
    return c.status()


def _run_client(handler: Callable[[Client, argparse.Namespace], Any], args: argparse.Namespace) -> int:
    client = Client(args.node)
    try:
        result = handler(client, args)
    except KVSError as exc:
        print(f"kvs: {exc.message}", file=sys.stderr)
        current = exc.extra.get("current")
        if current is not None:
            print(json.dumps({"current": current}, indent=2), file=sys.stderr)
        return next((code for cls, code in _EXIT_FOR if isinstance(exc, cls)), EXIT_ERROR)
    if result is not None:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


# -- argument parsing -----------------------------------------------------------------------

def _add_conditions(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cas", type=int, help="modify_index the key must have (0: must be absent)")
    p.add_argument("--if-version", help="UUID the current version must have")
    p.add_argument("--if-timestamp", type=int, help="timestamp the current version must have")
    p.add_argument("--if-value", help="JSON the current value must equal")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kvs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run one node")
    serve.add_argument("--config", help="YAML config file (see config.example.yaml)")
    serve.add_argument("--port", type=int)
    serve.add_argument("--bind", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--data-dir")
    serve.add_argument("--node-id")
    serve.add_argument("--seed", action="append", metavar="HOST:PORT", help="repeatable")
    serve.set_defaults(run=cmd_serve)

    cluster = sub.add_parser("cluster", help="local multi-node cluster")
    cluster_sub = cluster.add_subparsers(dest="cluster_command", required=True)
    up = cluster_sub.add_parser("up", help="start N nodes on loopback; Ctrl-C stops them")
    up.add_argument("--nodes", type=int, default=3)
    up.add_argument("--base-port", type=int, default=8080)
    up.add_argument("--dir", default="./kvs-cluster", help="parent of the nodes' data dirs")
    up.add_argument("--config", help="YAML config shared by all nodes")
    up.set_defaults(run=cmd_cluster_up)

    def client_command(name: str, handler: Callable[[Client, argparse.Namespace], Any],
                       help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--node", action="append", default=None, metavar="URL",
                       help="node URL (repeat for failover); default http://127.0.0.1:8080")
        p.set_defaults(run=lambda args: _run_client(handler, args))
        return p

    p = client_command("get", cmd_get, "read a key")
    p.add_argument("key")
    p.add_argument("--raw", action="store_true", help="print the bare value")
    for name, handler, text in (("put", cmd_put, "write a key"),
                                ("cas", cmd_cas, "conditional write")):
        p = client_command(name, handler, text)
        p.add_argument("key")
        p.add_argument("value", help="JSON, or a plain string")
        p.add_argument("--string", action="store_true", help="store VALUE as a string even if it is JSON")
        p.add_argument("--ttl", type=float, help="seconds until the key expires")
        p.add_argument("--flags", type=int)
        _add_conditions(p)
    p = client_command("delete", cmd_delete, "delete a key (writes a tombstone)")
    p.add_argument("key")
    p.add_argument("--recurse", action="store_true", help="delete every key under KEY as a prefix")
    _add_conditions(p)
    p = client_command("history", cmd_history, "versions of a key, newest first")
    p.add_argument("key")
    p = client_command("ls", cmd_ls, "list keys under a prefix")
    p.add_argument("prefix", nargs="?", default="")
    p.add_argument("--separator", help="group keys at this separator, like Consul")
    p.add_argument("--json", action="store_true")
    p = client_command("members", cmd_members, "cluster members")
    p.add_argument("--json", action="store_true")
    client_command("status", cmd_status, "node and anti-entropy status")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "node", "unset") is None:
        args.node = ["http://127.0.0.1:8080"]
    try:
        return int(args.run(args))
    except ConfigError as exc:
        print(f"kvs: configuration error: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"kvs: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
