"""The `kvs` command: run a node, run a local cluster, or talk to a node over HTTP.

Exit codes (for scripts): 0 ok, 1 error, 2 usage, 3 not found, 4 CAS conflict (`kvs lock`:
the lock stayed taken until --timeout), 5 CAS disabled on the node, 6 no node reachable,
7 `kvs lock`: the lock was lost while the command ran (the command was stopped).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from kvs import config as configuration
from kvs.client import DEFAULT_NODE, Client, Unavailable, WatchEvent, as_json
from kvs.client import VersionRecord as Version
from kvs.errors import CASConflict, CASDisabled, ConfigError, KVSError, NotFound

EXIT_ERROR, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_CONFLICT, EXIT_DISABLED, EXIT_UNAVAILABLE = 1, 2, 3, 4, 5, 6
EXIT_LOCK_LOST = 7
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
        value = c.get_value(args.key)
        print(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))
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
    if args.recurse:
        if _conditions(args):
            print("kvs delete: conditions do not combine with --recurse", file=sys.stderr)
            raise SystemExit(EXIT_USAGE)
        return c.delete_prefix(args.key)
    return c.delete(args.key, **_conditions(args))


def cmd_history(c: Client, args: argparse.Namespace) -> Any:
    return {"key": args.key, "revisions": c.history(args.key)}


def cmd_ls(c: Client, args: argparse.Namespace) -> Any:
    if args.json:
        page = c.list_keys(args.prefix, separator=args.separator)
        return {"prefix": page.prefix, "keys": page.items, "next": page.next}
    for key in c.scan_keys(args.prefix, separator=args.separator):
        print(key)
    return None


# -- client commands with human output (--json for machines) ------------------------------

def _table(rows: list[tuple[Any, ...]]) -> None:
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _ms_ago(ms: int | None) -> str:
    if ms is None:
        return "never"
    return f"{max(0.0, time.time() - ms / 1000):.1f}s ago"


def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000))
    return f"{stamp}.{ms % 1000:03d}"


def _short_json(value: Any, limit: int = 120) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def cmd_members(c: Client, args: argparse.Namespace) -> Any:
    members = c.members()
    if args.json:
        return members
    _table([("ID", "ADDRESS", "STATE", "INCARNATION", "LAST SEEN")]
           + [(m.id, m.address, m.state, m.incarnation, _ms_ago(m.last_seen)) for m in members])
    return None


def cmd_status(c: Client, args: argparse.Namespace) -> Any:
    status = c.status()
    if args.json:
        return status
    _table([("node", status.node), ("joined at", _when(status.joined_at)), ("keys", status.keys),
            ("index", status.index), ("merkle root", status.merkle_root),
            ("hlc", ".".join(map(str, status.hlc)) or "-")])
    if status.last_rounds:
        print("\nlast anti-entropy rounds:")
        _table([("PEER", "KEYS REPAIRED", "BYTES", "DURATION", "AT", "ERROR")]
               + [(r.peer, r.keys_repaired, r.bytes, f"{r.duration_ms:.1f}ms", _when(r.at), r.error or "")
                  for r in status.last_rounds])
    return None


def _describe(version: Version) -> str:
    ttl = f", expires {_when(version.expires_at)}" if version.expires_at else ""
    return f"{_short_json(version.value)}  (modify_index {version.modify_index}{ttl})"


def cmd_watch(c: Client, args: argparse.Namespace) -> Any:
    """Print the current state, then each change, until Ctrl-C (or --count events)."""
    previous: dict[str, Version] = {}
    events = c.watch(args.key, prefix=args.prefix, index=args.index, wait=args.wait)
    for seen, event in enumerate(events, 1):
        if args.json:
            print(json.dumps(_watch_json(event), ensure_ascii=False), flush=True)
        else:
            _print_change(event, previous, first=seen == 1)
            previous = {v.key: v for v in event.items}
        if args.count and seen >= args.count:
            break
    return None


def _watch_json(event: WatchEvent) -> dict[str, Any]:
    out: dict[str, Any] = {"index": event.index, "node": event.node}
    if event.prefix:
        return {**out, "prefix": event.key, "items": as_json(event.items)}
    return {**out, "key": event.key, "version": as_json(event.version)}


def _print_change(event: WatchEvent, previous: dict[str, Version], *, first: bool) -> None:
    if not event.prefix:
        version = event.version
        state = f"= {_describe(version)}" if version else "absent"
        print(f"[index {event.index}] {event.key} {state}", flush=True)
        return
    current = {v.key: v for v in event.items}
    print(f"[index {event.index}] {event.key}* ({len(current)} keys)")
    for key in sorted(current.keys() | previous.keys()):
        old, new = previous.get(key), current.get(key)
        if new is None:
            print(f"  - {key}")
        elif first:
            print(f"    {key} = {_describe(new)}")
        elif old is None:
            print(f"  + {key} = {_describe(new)}")
        elif old.version != new.version:
            print(f"  ~ {key} = {_describe(new)}")
    sys.stdout.flush()


SERVICE_ACTIONS = ("list", "get", "register", "renew", "deregister")


def cmd_services(c: Client, args: argparse.Namespace) -> Any:
    if args.action != "list" and not args.name:
        print(f"kvs services {args.action}: give the service NAME", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)
    if args.action == "list":
        services = c.list_services()
        if args.json:
            return services
        if not services:
            print("no services registered")
            return None
        _table([("NAME", "ADDRESS", "PORT", "TAGS", "TTL")]
               + [(s.name, s.address or "-", s.port or "-", ",".join(s.tags) or "-",
                   f"{s.ttl:g}s" if s.ttl else "-") for s in services])
        return None
    if args.action == "get":
        service = c.get_service(args.name, metadata=True)
        if args.json:
            return service
        _table([("name", service.name), ("address", service.address or "-"),
                ("port", service.port or "-"), ("tags", ",".join(service.tags) or "-"),
                ("meta", _short_json(service.meta)), ("ttl", f"{service.ttl:g}s" if service.ttl else "-"),
                ("expires", _when(service.expires_at)), ("modify_index", service.modify_index),
                ("create_index", service.create_index)])
        return None
    if args.action == "register":
        meta = dict(item.partition("=")[::2] for item in args.meta or [])
        result: Any = c.register_service(args.name, address=args.address, port=args.port,
                                         tags=args.tag, meta=meta or None, ttl=args.ttl, cas=args.cas)
        verb = "registered"
    elif args.action == "renew":
        result, verb = c.renew_service(args.name, ttl=args.ttl), "renewed"
    else:
        result, verb = c.deregister_service(args.name, cas=args.cas), "deregistered"
    if args.json:
        return result
    expires = getattr(result, "expires_at", None)
    print(f"{verb} {args.name} (modify_index {result.modify_index}"
          + (f", expires {_when(expires)})" if expires else ")"))
    return None


def cmd_lock(args: argparse.Namespace) -> int:
    """Run a command while holding a lock; see `kvs lock --help`."""
    rest = list(args.command)
    if "--" in rest:  # options may also follow KEY: `kvs lock KEY --ttl 5 -- cmd`
        cut = rest.index("--")
        _lock_options(argparse.ArgumentParser(prog="kvs lock", argument_default=argparse.SUPPRESS)
                      ).parse_args(rest[:cut], namespace=args)
        rest = rest[cut + 1:]
    if not rest or rest[0].startswith("-"):
        print("kvs lock: give the command to run after --, e.g. kvs lock KEY --ttl 10 -- make deploy",
              file=sys.stderr)
        return EXIT_USAGE
    args.node = args.lock_node or [DEFAULT_NODE]
    return asyncio.run(_locked(args, rest))


def _lock_options(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--ttl", type=float,
                   help="lease seconds: how long others wait if this process dies (default 15)")
    p.add_argument("--timeout", type=float, help="give up waiting for the lock after S seconds")
    p.add_argument("--grace", type=float,
                   help="seconds between SIGTERM and SIGKILL when the lock is lost (default 10)")
    p.add_argument("--node", action="append", dest="lock_node", metavar="URL",
                   help=f"node URL (repeat for failover); default {DEFAULT_NODE}")
    return p


async def _locked(args: argparse.Namespace, command: list[str]) -> int:
    from kvs.client import AsyncClient
    from kvs.coordination import Lock

    setup_logging("warning")  # renewal trouble shows up on stderr as it happens
    async with AsyncClient(args.node) as client:
        lock = Lock(client, args.key, ttl=args.ttl)
        try:
            if not await lock.acquire(timeout=args.timeout):
                print(f"kvs: lock {args.key!r} is held by someone else; gave up after "
                      f"{args.timeout:g}s", file=sys.stderr)
                return EXIT_CONFLICT
        except KVSError as exc:
            return _report(exc)
        try:
            # Its own process group, so that a lost lock stops everything the command started.
            proc = await asyncio.create_subprocess_exec(*command, process_group=0)
        except OSError as exc:
            await lock.release()
            print(f"kvs lock: cannot run {command[0]}: {exc}", file=sys.stderr)
            return 127

        def signal_group(sig: int) -> None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # passed on to the command
            loop.add_signal_handler(sig, signal_group, sig)
        waiter = asyncio.ensure_future(proc.wait())
        lost = asyncio.ensure_future(lock.lost.wait())
        await asyncio.wait([waiter, lost], return_when=asyncio.FIRST_COMPLETED)
        lost.cancel()
        if not waiter.done():
            print(f"kvs: {lock.reason.message if lock.reason else 'lock lost'}; stopping the command "
                  f"(SIGTERM, SIGKILL after {args.grace:g}s)", file=sys.stderr)
            signal_group(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(waiter), args.grace)
            signal_group(signal.SIGKILL)  # whatever is left of the group after the grace period
            await waiter
            return EXIT_LOCK_LOST
        await lock.release()
        code = waiter.result()
        return 128 - code if code < 0 else code


def _report(exc: KVSError) -> int:
    print(f"kvs: {exc.message}", file=sys.stderr)
    current = exc.extra.get("current")
    if current is not None:
        print(json.dumps({"current": current}, indent=2), file=sys.stderr)
    return next((code for cls, code in _EXIT_FOR if isinstance(exc, cls)), EXIT_ERROR)


def _run_client(handler: Callable[[Client, argparse.Namespace], Any], args: argparse.Namespace) -> int:
    client = Client(args.node)
    try:
        result = handler(client, args)
    except KVSError as exc:
        return _report(exc)
    finally:
        client.close()
    if result is not None:
        print(json.dumps(as_json(result), indent=2, ensure_ascii=False))
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

    from kvs.chaos.cli import add_parser as add_chaos_parser  # `kvs chaos` (docs/chaos.md)
    add_chaos_parser(sub)

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
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p = client_command("status", cmd_status, "node and anti-entropy status")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = client_command("watch", cmd_watch, "print a key (or prefix) and then each change to it")
    p.add_argument("key")
    p.add_argument("--prefix", action="store_true", help="watch every key under KEY")
    p.add_argument("--index", type=int, help="only changes after this X-KVS-Index of the node")
    p.add_argument("--wait", type=float, default=60.0, help="seconds per blocking query (default 60)")
    p.add_argument("--count", type=int, help="exit after printing this many states")
    p.add_argument("--json", action="store_true", help="one JSON object per line")

    p = sub.add_parser(
        "lock", help="run a command while holding a lock",
        description="Acquire the lock KEY (a TTL lease, renewed every TTL/3), run the command, "
                    "release the lock. The command runs in its own process group (it should "
                    "not read the terminal); Ctrl-C, SIGTERM and SIGHUP are passed on to it. "
                    "If the lock is lost meanwhile the whole group gets SIGTERM (SIGKILL after "
                    "--grace) and kvs exits 7; otherwise it exits with the command's status. "
                    "Exit 4: --timeout passed while someone else held the lock.",
        usage="kvs lock KEY [--ttl T] [--timeout S] [--grace S] [--node URL] -- command [args...]")
    p.add_argument("key")
    _lock_options(p).set_defaults(ttl=15.0, grace=10.0, timeout=None, lock_node=None)
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command and its arguments")
    p.set_defaults(run=cmd_lock)

    p = client_command("services", cmd_services, "service registry: list, get, register, renew, "
                                                 "deregister")
    p.add_argument("action", nargs="?", default="list", choices=SERVICE_ACTIONS)
    p.add_argument("name", nargs="?")
    p.add_argument("--address")
    p.add_argument("--port", type=int)
    p.add_argument("--ttl", type=float, help="register/renew: seconds until it expires unless renewed")
    p.add_argument("--tag", action="append", help="register: a tag (repeatable)")
    p.add_argument("--meta", action="append", metavar="KEY=VALUE", help="register: metadata (repeatable)")
    p.add_argument("--cas", type=int, help="register/deregister: modify_index it must have (0: create-only)")
    p.add_argument("--json", action="store_true", help="print JSON")
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
