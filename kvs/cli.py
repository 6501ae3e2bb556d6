"""The `kvs` command: run a node, run a local cluster, or talk to a node over HTTP.

Exit codes (for scripts):
  0  ok
  1  error: the node refused the request (e.g. 400, 413), or a local I/O error
  2  usage: bad arguments, an invalid KEY or VALUE, a bad configuration
  3  not found
  4  CAS conflict: a condition did not hold (`kvs lock`: the lock stayed taken
     until --timeout)
  5  CAS disabled on the node (cas_enabled: false); nothing was written
  6  no node reachable
  7  `kvs lock`: the lock was lost while the command ran (the command was stopped);
     otherwise `kvs lock` exits with the command's own status
  8  ACLs: no valid token (401; give --token or KVS_TOKEN), or its policies deny
     the request (403)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import http.client
import importlib.metadata
import json
import logging
import math
import os
import re
import signal
import sys
import textwrap
import time
import urllib.parse
import uuid
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TypeVar

from kvs import config as configuration
from kvs.client import (
    CONSISTENCY,
    DEFAULT_NODE,
    TOKEN_VARIABLE,
    AclPolicy,
    AclToken,
    Answer,
    Client,
    Unavailable,
    VersionRecord,
    WatchEvent,
    as_json,
    bearer,
    error_for,
)
from kvs.cluster import auth
from kvs.errors import (
    BadRequest,
    CASConflict,
    CASDisabled,
    ConfigError,
    Conflict,
    Forbidden,
    KVSError,
    NotFound,
    Unauthorized,
)
from kvs.keys import validate_key
from kvs.model import MAX_U64
from kvs.tls import client_context

EXIT_ERROR, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_CONFLICT, EXIT_DISABLED, EXIT_UNAVAILABLE = 1, 2, 3, 4, 5, 6
EXIT_LOCK_LOST, EXIT_DENIED = 7, 8
CA_ENV = "KVS_CA"
_EXIT_FOR: list[tuple[type[KVSError], int]] = [
    (NotFound, EXIT_NOT_FOUND), (CASConflict, EXIT_CONFLICT), (Conflict, EXIT_CONFLICT),
    (CASDisabled, EXIT_DISABLED), (Unavailable, EXIT_UNAVAILABLE), (Unauthorized, EXIT_DENIED),
    (Forbidden, EXIT_DENIED),
]
T = TypeVar("T")


class UsageError(Exception):
    """The command line asks for something that cannot be right: exit 2, nothing sent."""


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), stream=sys.stderr,
        format="ts=%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
    )
    logging.getLogger("aiohttp").setLevel(logging.WARNING)


# -- serve ----------------------------------------------------------------------------------

# setting -> (flag, what it sets, the built-in default in words where the value says little)
SERVE_FLAGS: dict[str, tuple[str, str, str | None]] = {
    "port": ("--port", "port to listen on; 0 picks a free one", None),
    "bind_address": ("--bind", "address to listen on", None),
    "data_dir": ("--data-dir", "directory for the RocksDB files and the node id", None),
    "node_id": ("--node-id", "the node's id; must match the id stored in the data dir",
                "generated on first start and kept in the data dir"),
    "seed_nodes": ("--seed", "HOST:PORT of a node to join through (repeat the flag for several)",
                   "none: start a new cluster"),
}


# Allocations between young-generation collections in a node (Python's default: 700). A
# node's requests allocate many short-lived containers (coroutines, futures, parsed bodies,
# versions), so at the default the collector ran every ~50 requests of a 4-op txn, and each
# run also walked the revision sets that had just entered the cache; measured in
# docs/benchmarks.md. Garbage in reference cycles lives a little longer; memory use does
# not change measurably.
GC_YOUNG_THRESHOLD = 10_000


def cmd_serve(args: argparse.Namespace) -> int:
    overrides = {key: getattr(args, key) for key in SERVE_FLAGS if getattr(args, key) is not None}
    config = configuration.load(args.config, overrides=overrides,
                                flag_names={key: flag for key, (flag, _, _) in SERVE_FLAGS.items()})
    setup_logging(config.log_level)
    gc.set_threshold(GC_YOUNG_THRESHOLD)
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
                             config_file=args.config, tls=args.tls, acl=args.acl)


# -- client commands ------------------------------------------------------------------------

VALUE_RULE = """\
How VALUE is read:
  A VALUE that looks like JSON is parsed as JSON. It looks like JSON when it
  starts with {, [ or ", or with a digit (or -, + or . and a digit), or when it
  is true, false, null, NaN or Infinity in any letter case. It must then be
  valid JSON (lowercase true/false/null, no NaN or Infinity); if it is not, kvs
  writes nothing and exits 2 instead of storing the text, and --string stores
  the text as a string. Any other VALUE (hello, hello world, v1.2, none) is
  stored as a JSON string.

    42            -> 42              hello             -> "hello"
    '{"a": [1]}'  -> {"a": [1]}       42 --string       -> "42"
    '"42"'        -> "42"             '{"a": tru}'       -> refused (exit 2)
    true          -> true            True, 1.2.3, 10s  -> refused (exit 2)
"""
# Anchored at the start; the bare words must be the whole (stripped) VALUE.
_LOOKS_LIKE_JSON = re.compile(r'''\s*(?:[{\["]|[-+]?\.?\d|(?i:true|false|null|[-+]?(?:nan|infinity))\s*\Z)''')


def parse_value(text: str, *, what: str, hint: str) -> Any:
    """VALUE by VALUE_RULE: a typo in JSON is refused rather than silently stored as text."""
    if not _LOOKS_LIKE_JSON.match(text):
        return text
    try:
        return json.loads(text, parse_constant=_not_json)
    except ValueError as exc:
        word = text.strip()
        reason = f"JSON writes it {word.lower()}" if word.lower() in ("true", "false", "null") else exc
        raise UsageError(f"{what} {text!r} looks like JSON but is not valid JSON ({reason}); "
                         f"{hint}") from None


def _not_json(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON value")


def _conditions(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if args.cas is not None:
        out["cas"] = args.cas
    if args.if_version is not None:
        out["if_version"] = args.if_version
    if args.if_seq is not None:
        out["if_seq"] = args.if_seq
    if args.if_timestamp is not None:
        out["if_timestamp"] = args.if_timestamp
    if args.if_value is not None:
        out["if_value"] = parse_value(args.if_value, what="--if-value",
                                      hint="""write a string that looks like JSON as a JSON string, """
                                           """e.g. --if-value '"1.2.3"'""")
    return out


def _put_options(args: argparse.Namespace) -> dict[str, Any]:
    options = {**_conditions(args), "consistency": args.consistency}
    if args.ttl is not None:
        options["ttl"] = args.ttl
    if args.flags is not None:
        options["flags"] = args.flags
    return options


def cmd_get(c: Client, args: argparse.Namespace) -> Any:
    if args.raw:
        value = c.get_value(args.key, consistency=args.consistency)
        print(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))
        return None
    return c.get(args.key, consistency=args.consistency)


def cmd_put(c: Client, args: argparse.Namespace) -> Any:
    value = args.value if args.string else parse_value(
        args.value, what="VALUE", hint="give --string to store it as a string")
    return c.put(args.key, value, **_put_options(args))


def cmd_cas(c: Client, args: argparse.Namespace) -> Any:
    if not _conditions(args):
        raise UsageError("give at least one of --cas, --if-version, --if-seq, --if-timestamp, "
                         "--if-value")
    return cmd_put(c, args)


def _require_key(key: str, prefix_flag: str) -> None:
    """KEY may be empty (the whole keyspace) only together with the flag that makes it a prefix."""
    if not key:
        raise UsageError(f"KEY must not be empty (an empty prefix with {prefix_flag} means every key)")


def cmd_delete(c: Client, args: argparse.Namespace) -> Any:
    if args.recurse:
        if _conditions(args):
            raise UsageError("conditions do not combine with --recurse")
        if args.consistency == "quorum":
            raise UsageError("--consistency quorum does not combine with --recurse (a prefix "
                             "delete is local; delete quorum keys one by one)")
        return c.delete_prefix(args.key)
    _require_key(args.key, "--recurse")
    return c.delete(args.key, consistency=args.consistency, **_conditions(args))


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
    voters = c.status().voters
    print(f"voters (epoch {voters['epoch']}): {', '.join(voters['ids'])}" if voters
          else "voters: none known to this node yet")
    return None


def cmd_members_remove(c: Client, args: argparse.Namespace) -> Any:
    """DELETE /cluster/members/ID, signed with the cluster secret if one is given."""
    secret = args.secret or os.environ.get("KVS_CLUSTER_SECRET") or None
    path = "/cluster/members/" + urllib.parse.quote(args.id, safe="")
    answer = _signed(c, "DELETE", path, secret, token_of(args))
    if answer.status != 200:
        raise error_for(answer)
    removed = json.loads(answer.body)
    if args.json:
        return removed
    print(f"removed {removed['removed']} ({removed['address']}) from the member table; "
          "it can rejoin by restarting")
    return None


def cmd_voters(c: Client, args: argparse.Namespace) -> Any:
    voters = c.status().voters
    if args.json:
        return voters
    print(f"voters (epoch {voters['epoch']}): {', '.join(voters['ids'])}" if voters
          else "voters: none known to this node yet")
    return None


def cmd_voters_change(c: Client, args: argparse.Namespace) -> Any:
    """POST /cluster/voters {"add" | "remove": ID}, signed like `members remove`."""
    secret = args.secret or os.environ.get("KVS_CLUSTER_SECRET") or None
    body = json.dumps({args.action: args.id}).encode()
    answer = _signed(c, "POST", "/cluster/voters", secret, token_of(args), body)
    if answer.status != 200:
        raise error_for(answer)
    voters = json.loads(answer.body)
    if args.json:
        return voters
    print(f"voters (epoch {voters['epoch']}): {', '.join(voters['ids'])}")
    return None


def _signed(c: Client, method: str, path: str, secret: str | None, token: str | None,
            body: bytes = b"") -> Answer:
    """One request, to the first of the client's nodes that answers; signed like a peer's
    request (kvs.cluster.auth) when a secret is given, as a node with a secret requires,
    else carrying the ACL token (an operator token takes the signature's place)."""
    failures = []
    for node in c.nodes:
        headers = {**bearer(token), **auth.operator_headers(secret, method, path, body)}
        if body:
            headers["Content-Type"] = "application/json"
        conn = c.connection(node)
        conn.timeout = c.timeout
        try:
            conn.request(method, path, body=body or None, headers=headers)
            resp = conn.getresponse()
            return Answer(node, resp.status, resp.getheader("Content-Type", ""), None, resp.read())
        except (OSError, http.client.HTTPException) as exc:
            failures.append(f"{node}: {exc}")
        finally:
            conn.close()
    raise Unavailable("no node answered: " + "; ".join(failures), failures)


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


def _describe(version: VersionRecord) -> str:
    ttl = f", expires {_when(version.expires_at)}" if version.expires_at else ""
    return f"{_short_json(version.value)}  (modify_index {version.modify_index}{ttl})"


def cmd_watch(c: Client, args: argparse.Namespace) -> Any:
    """Print the current state, then each change, until Ctrl-C (or --count events)."""
    if not args.prefix:
        _require_key(args.key, "--prefix")
    previous: dict[str, VersionRecord] = {}
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


def _print_change(event: WatchEvent, previous: dict[str, VersionRecord], *, first: bool) -> None:
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


def cmd_services_list(c: Client, args: argparse.Namespace) -> Any:
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


def cmd_services_get(c: Client, args: argparse.Namespace) -> Any:
    service = c.get_service(args.name, metadata=True)
    if args.json:
        return service
    _table([("name", service.name), ("address", service.address or "-"),
            ("port", service.port or "-"), ("tags", ",".join(service.tags) or "-"),
            ("meta", _short_json(service.meta)), ("ttl", f"{service.ttl:g}s" if service.ttl else "-"),
            ("expires", _when(service.expires_at)), ("modify_index", service.modify_index),
            ("create_index", service.create_index)])
    return None


def cmd_services_register(c: Client, args: argparse.Namespace) -> Any:
    result = c.register_service(args.name, address=args.address, port=args.port, tags=args.tag,
                                meta=dict(args.meta) if args.meta else None, ttl=args.ttl, cas=args.cas)
    return _changed("registered", args, result)


def cmd_services_renew(c: Client, args: argparse.Namespace) -> Any:
    return _changed("renewed", args, c.renew_service(args.name, ttl=args.ttl))


def cmd_services_deregister(c: Client, args: argparse.Namespace) -> Any:
    return _changed("deregistered", args, c.deregister_service(args.name, cas=args.cas))


def _changed(verb: str, args: argparse.Namespace, result: Any) -> Any:
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
        raise UsageError("give the command to run after --, e.g. kvs lock KEY --ttl 10 -- make deploy")
    args.node = args.lock_node or [DEFAULT_NODE]
    return asyncio.run(_locked(args, rest))


def _lock_options(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--ttl", type=_seconds,
                   help="lease seconds: how long others wait if this process dies (default: 15)")
    p.add_argument("--timeout", type=_seconds_or_zero,
                   help="give up waiting for the lock after S seconds (default: wait for ever)")
    p.add_argument("--grace", type=_seconds_or_zero,
                   help="seconds between SIGTERM and SIGKILL when the lock is lost (default: 10)")
    p.add_argument("--node", action="append", dest="lock_node", metavar="URL",
                   help=f"node URL (repeat for failover) (default: {DEFAULT_NODE})")
    p.add_argument("--consistency", choices=CONSISTENCY,
                   help="quorum: the lock excludes holders on every node; local: CAS on the "
                        "node that answers (default: quorum when the cluster has more than one "
                        "voter, else local)")
    add_ca_option(p, default=argparse.SUPPRESS)
    add_token_option(p)
    return p


async def _locked(args: argparse.Namespace, command: list[str]) -> int:
    from kvs.client import AsyncClient
    from kvs.coordination import Lock

    setup_logging("warning")  # renewal trouble shows up on stderr as it happens
    async with AsyncClient(args.node, ca=args.ca, token=token_of(args)) as client:
        lock = Lock(client, args.key, ttl=args.ttl, consistency=args.consistency)
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


LEAVE_PATH = "/cluster/leave"
LEAVE_DESCRIPTION = """\
Ask one node to leave the cluster gracefully: it tells its peers it is
leaving (they mark it `left`), then shuts down. Its data stays in its data dir.

A node with a cluster_secret accepts the request only if it is signed with
that secret (HMAC, as nodes sign their requests to each other): give it with
--secret or KVS_CLUSTER_SECRET. A node without one accepts it unsigned; such
a node listens on loopback only, unless it was started with insecure: true."""


def cmd_leave(args: argparse.Namespace) -> int:
    import urllib.error
    import urllib.request

    from kvs.cluster import auth

    if len(args.node) != 1:
        raise UsageError("leave asks one node: give --node once")
    secret = args.secret or os.environ.get(configuration.ENV_PREFIX + "CLUSTER_SECRET") or None
    headers = {**bearer(token_of(args)), **auth.operator_headers(secret, "POST", LEAVE_PATH)}
    request = urllib.request.Request(args.node[0].rstrip("/") + LEAVE_PATH, data=b"",
                                     method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30, context=client_context(args.ca)) as resp:
            body = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return _report(_error_answer(exc.code, exc.read()))
    print(f"node {body.get('node')} left the cluster and is shutting down")
    return 0


def _error_answer(status: int, raw: bytes) -> KVSError:
    try:
        message = json.loads(raw)["message"]
    except (ValueError, KeyError, TypeError):
        message = raw.decode(errors="replace")[:200] or f"HTTP {status}"
    return KVSError(f"HTTP {status}: {message}")


def _report(exc: KVSError) -> int:
    print(f"kvs: {exc.message}", file=sys.stderr)
    current = exc.extra.get("current")
    if current is not None:
        print(json.dumps({"current": current}, indent=2), file=sys.stderr)
    return next((code for cls, code in _EXIT_FOR if isinstance(exc, cls)), EXIT_ERROR)


def token_of(args: argparse.Namespace) -> str | None:
    """--token, else $KVS_TOKEN, else none."""
    return getattr(args, "token", None) or os.environ.get(TOKEN_VARIABLE) or None


def add_token_option(p: argparse.ArgumentParser, **kwargs: Any) -> None:
    p.add_argument("--token", metavar="SECRET", **kwargs,
                   help=f"ACL token secret, for a node with acl_enabled (default: ${TOKEN_VARIABLE})")


def _run_client(handler: Callable[[Client, argparse.Namespace], Any], args: argparse.Namespace) -> int:
    client = Client(args.node, ca=args.ca, token=token_of(args))
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

class _HelpFormatter(argparse.HelpFormatter):
    """Descriptions keep their line breaks (tables, examples) and only long lines are wrapped;
    an option's help ends with "(default: X)", unless it already says its default in words
    or there is no value to show (None, a flag that is off).
    """

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "\n".join(
            textwrap.fill(line, width, initial_indent=indent,
                          subsequent_indent=indent + " " * (len(line) - len(line.lstrip())))
            if line.strip() else "" for line in text.splitlines())

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (not action.option_strings or action.default is None or action.default is False
                or action.default == argparse.SUPPRESS or "default" in text):
            return text
        return f"{text} (default: %(default)s)"


def _command(sub: Any, name: str, help_text: str, description: str | None = None,
             **kwargs: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=help_text, description=description or help_text[:1].upper() + help_text[1:] + ".",
        formatter_class=_HelpFormatter, **kwargs)
    parser.set_defaults(prog=parser.prog)  # for messages: `kvs lock` has its own `command`
    return parser


def _argument(check: Callable[[str], T]) -> Callable[[str], T]:
    """An argparse type from a check that raises BadRequest: refused locally with exit 2."""
    def parse(text: str) -> T:
        try:
            return check(text)
        except BadRequest as exc:
            raise argparse.ArgumentTypeError(exc.message) from None
    return parse


_key = _argument(validate_key)
_key_or_prefix = _argument(functools.partial(validate_key, prefix=True))
KEY_HELP = "1 to 512 bytes of UTF-8 without control characters"


def _add_key(p: argparse.ArgumentParser, prefix_flag: str | None = None) -> None:
    """KEY as the node would check it; with `prefix_flag` it may be empty (every key)."""
    if prefix_flag is None:
        p.add_argument("key", type=_key, metavar="KEY", help=KEY_HELP)
    else:
        p.add_argument("key", type=_key_or_prefix, metavar="KEY",
                       help=f"{KEY_HELP}; empty only with {prefix_flag} (every key)")


def _int_in(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bounds = f"from {low} to {high}" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"expected an integer {bounds}, got {value}")
        return value
    return parse


def _duration(*, zero: bool) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
            raise argparse.ArgumentTypeError(f"expected seconds {'>=' if zero else '>'} 0, got {text!r}")
        return value
    return parse


_seconds, _seconds_or_zero = _duration(zero=False), _duration(zero=True)


def _uuid(text: str) -> str:
    try:
        uuid.UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a version UUID, got {text!r}") from None
    return text


def _meta_item(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _add_consistency(p: argparse.ArgumentParser, **kwargs: Any) -> None:
    p.add_argument("--consistency", choices=CONSISTENCY, **kwargs,
                   help="quorum: linearizable across the cluster, through a majority of the "
                        "voters (answers carry the key's seq); local: this node only (default: "
                        "the node's default_consistency, itself local unless configured)")


def _add_conditions(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cas", type=_int_in(0), metavar="N",
                   help="0: the key must be absent (create only); N: its modify_index must be N")
    p.add_argument("--if-version", type=_uuid, metavar="UUID", help="its current version must be UUID")
    p.add_argument("--if-seq", type=_int_in(0, MAX_U64), metavar="N",
                   help="with --consistency quorum: its cluster-wide seq (printed by quorum "
                        "put, get, cas) must be N; 0: it has no quorum state yet")
    p.add_argument("--if-timestamp", type=_int_in(0), metavar="MS",
                   help="its current version's timestamp (ms since the epoch) must be MS")
    p.add_argument("--if-value", metavar="JSON",
                   help="its current value must equal JSON (read like VALUE, without --string)")


PUT_DESCRIPTION = f"""\
Write VALUE to KEY as a new version. The conditions of `kvs cas` are accepted too.

{VALUE_RULE}"""

CAS_DESCRIPTION = f"""\
Write VALUE to KEY only if every condition given holds; otherwise nothing is written.
Give at least one condition; each is checked against KEY's current version on the
node that answers:

  --cas 0             create only: KEY must be absent (never written, deleted or expired)
  --cas N             KEY's modify_index (printed by put, get, cas) must be N
  --if-version UUID   KEY's current version id must be UUID
  --if-seq N          KEY's cluster-wide seq must be N (with --consistency quorum,
                      where --cas N > 0 is refused: modify_index is one node's own)
  --if-timestamp MS   KEY's current version must have timestamp MS
  --if-value JSON     KEY's current value must equal JSON (read like VALUE)

With several conditions all must hold. The node needs cas_enabled: true.

Exit codes: 0 written; 4 conflict: a condition did not hold (the current version is
printed on stderr); 3 KEY is absent and a condition other than --cas 0 was given;
5 CAS is disabled on the node (nothing written); 2 no condition, or bad arguments.

{VALUE_RULE}"""

SERVE_DESCRIPTION = """\
Run one node until Ctrl-C or SIGTERM (or a graceful leave through the API).

Settings come from built-in defaults < the --config file < KVS_<KEY> environment
variables (e.g. KVS_PORT=9000) < these flags, so each flag's default is the setting
from the file or the environment, else the built-in value shown. A bad or unknown
setting stops the node before it touches its data dir (exit 2)."""

CLUSTER_UP_DESCRIPTION = """\
Start N nodes on loopback and print their output; Ctrl-C stops them all.
Node i is named node-i, listens on BASE_PORT + i, keeps its data in DIR/node-i and
joins through node-0. cas_enabled is on unless KVS_CAS_ENABLED says otherwise.
With --tls the nodes speak only TLS; it prints how a client connects."""

SERVICES_DESCRIPTION = """\
The service registry: each registration is a KV version, so it replicates and expires
like a key. ACTION defaults to list; `kvs services ACTION --help` describes each one."""


def _version() -> str:
    try:
        return importlib.metadata.version("kvs")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree never installed
        from kvs import __version__
        return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kvs", description=__doc__, formatter_class=_HelpFormatter)
    parser.set_defaults(prog=parser.prog)
    parser.add_argument("--version", action="version", version=f"kvs {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve(sub)
    _add_cluster(sub)
    from kvs.chaos.cli import add_parser as add_chaos_parser  # `kvs chaos` (docs/chaos.md)
    add_chaos_parser(sub)
    _add_client_commands(sub)
    _add_lock(sub)
    _add_services(sub)
    _add_acl(sub)
    from kvs.snapshot_cli import add_parser as add_snapshot_parser  # `kvs snapshot save|restore`
    add_snapshot_parser(sub)
    return parser


def _add_serve(sub: Any) -> None:
    serve = _command(sub, "serve", "run one node", SERVE_DESCRIPTION)
    serve.add_argument("--config", metavar="FILE",
                       help="YAML config file, see config.example.yaml (default: none; built-in "
                            "defaults and KVS_* variables only)")
    built_in = configuration.Config()
    for key, (flag, text, in_words) in SERVE_FLAGS.items():
        seeds = key == "seed_nodes"
        serve.add_argument(
            flag, dest=key, type=int if key == "port" else str, action="append" if seeds else "store",
            metavar="HOST:PORT" if seeds else None,
            help=f"{text} (default: {key} from the config file or {configuration.ENV_PREFIX}"
                 f"{key.upper()}, else {in_words or getattr(built_in, key)})")
    serve.set_defaults(run=cmd_serve)


def _add_cluster(sub: Any) -> None:
    cluster = _command(sub, "cluster", "local multi-node cluster")
    cluster_sub = cluster.add_subparsers(dest="cluster_command", required=True)
    up = _command(cluster_sub, "up", "start N nodes on loopback; Ctrl-C stops them", CLUSTER_UP_DESCRIPTION)
    up.add_argument("--nodes", type=_int_in(1), default=3, metavar="N", help="how many nodes to start")
    up.add_argument("--base-port", type=_int_in(1, 65535), default=8080, help="port of node-0")
    up.add_argument("--dir", default="./kvs-cluster", help="parent directory of the nodes' data dirs")
    up.add_argument("--config", metavar="FILE",
                    help="YAML config file for every node; the flags above replace its port, node_id "
                         "and data_dir (default: none)")
    up.add_argument("--tls", action="store_true",
                    help="TLS only: make a throwaway CA in DIR/tls and a certificate per node; "
                         "clients then need --ca DIR/tls/ca.pem (the nodes verify each other's "
                         "certificates too)")
    up.add_argument("--acl", action="store_true",
                    help="start the nodes with acl_enabled (then: kvs acl bootstrap)")
    up.set_defaults(run=cmd_cluster_up)


def _add_node_option(p: argparse.ArgumentParser, **kwargs: Any) -> None:
    p.add_argument("--node", action="append", metavar="URL", **kwargs,
                   help=f"node URL (repeat for failover) (default: {DEFAULT_NODE})")
    add_token_option(p, **kwargs)


def _client_command(sub: Any, name: str, handler: Callable[[Client, argparse.Namespace], Any],
                    help_text: str, description: str | None = None, *,
                    nested: bool = False) -> argparse.ArgumentParser:
    """A command that talks to a node; `nested` for an action under a command that has --node."""
    p = _command(sub, name, help_text, description)
    _add_node_option(p, **({"default": argparse.SUPPRESS} if nested else {}))
    add_ca_option(p, **({"default": argparse.SUPPRESS} if nested else {}))
    p.set_defaults(run=functools.partial(_run_client, handler))
    return p


def add_ca_option(p: argparse.ArgumentParser, **kwargs: Any) -> None:
    """--ca, for https node URLs (default=SUPPRESS where an earlier parse may have set it)."""
    p.add_argument("--ca", metavar="FILE", **{"default": os.environ.get(CA_ENV), **kwargs},
                   help=f"PEM file of the CA that signed the nodes' TLS certificates, for https URLs "
                        f"(default: ${CA_ENV}, else the system's CAs)")


def _add_json_option(p: argparse.ArgumentParser, text: str = "print JSON instead of a table",
                     **kwargs: Any) -> None:
    p.add_argument("--json", action="store_true", help=text, **kwargs)


def _add_signed_change_options(p: argparse.ArgumentParser, id_help: str) -> None:
    """The arguments every cluster change by node id shares (`members remove`, `voters
    add|remove`), so the three stay alike: the id, the secret that signs it, --json."""
    p.add_argument("id", metavar="ID", help=id_help)
    p.add_argument("--secret", help="the cluster_secret (default: $KVS_CLUSTER_SECRET)")
    _add_json_option(p, "print the node's answer as JSON", default=argparse.SUPPRESS)


def _add_client_commands(sub: Any) -> None:
    p = _client_command(sub, "get", cmd_get, "read a key")
    _add_key(p)
    p.add_argument("--raw", action="store_true", help="print the bare value")
    _add_consistency(p)
    for name, handler, text, description in (("put", cmd_put, "write a key", PUT_DESCRIPTION),
                                             ("cas", cmd_cas, "conditional write", CAS_DESCRIPTION)):
        p = _client_command(sub, name, handler, text, description)
        _add_key(p)
        p.add_argument("value", metavar="VALUE", help="JSON or a plain string; see 'How VALUE is read' above")
        p.add_argument("--string", action="store_true",
                       help="store VALUE as the string it is, never as JSON")
        p.add_argument("--ttl", type=_seconds, help="seconds until the key expires (default: never)")
        p.add_argument("--flags", type=_int_in(0, MAX_U64),
                       help="an unsigned integer stored with the version, for the caller's use "
                            "(default: 0)")
        _add_conditions(p)
        _add_consistency(p)
    p = _client_command(sub, "delete", cmd_delete, "delete a key (writes a tombstone)")
    _add_key(p, "--recurse")
    p.add_argument("--recurse", action="store_true", help="delete every key under KEY as a prefix")
    _add_conditions(p)
    _add_consistency(p)
    p = _client_command(sub, "history", cmd_history, "versions of a key, newest first")
    _add_key(p)
    p = _client_command(sub, "ls", cmd_ls, "list keys under a prefix")
    p.add_argument("prefix", nargs="?", default="", type=_key_or_prefix, metavar="PREFIX",
                   help="list keys starting with PREFIX (default: every key)")
    p.add_argument("--separator", help="group keys at this separator, like Consul")
    _add_json_option(p, "print one JSON page instead of one key per line")
    members = _client_command(sub, "members", cmd_members, "cluster members: list, remove")
    _add_json_option(members)
    actions = members.add_subparsers(dest="action", metavar="ACTION")
    p = _client_command(actions, "list", cmd_members, "list the members (the default ACTION)",
                        nested=True)
    _add_json_option(p, default=argparse.SUPPRESS)
    p = _client_command(
        actions, "remove", cmd_members_remove, "remove a dead or left member now",
        "Remove ID from the member table of every node now, instead of after "
        "reap_after_seconds (dead) or reap_left_after_seconds (left). Only a dead or left "
        "member can be removed (exit 1 otherwise). A removed node can rejoin by restarting. "
        "With a cluster_secret the request is signed with it (--secret, or "
        "KVS_CLUSTER_SECRET); the node refuses it unsigned.", nested=True)
    _add_signed_change_options(p, "the member's node id (see `kvs members`)")
    voters = _client_command(sub, "voters", cmd_voters, "the voters of quorum keys: list, add, remove")
    _add_json_option(voters)
    actions = voters.add_subparsers(dest="action", metavar="ACTION")
    p = _client_command(actions, "list", cmd_voters, "list the voters (the default ACTION)",
                        nested=True)
    _add_json_option(p, default=argparse.SUPPRESS)
    for action, what in (("add", "make ID a voter (this node or any entry of its member table, "
                                 "whatever its state; 409 otherwise)"),
                         ("remove", "take ID out of the voters")):
        p = _client_command(
            actions, action, cmd_voters_change, what,
            f"{what[0].upper()}{what[1:]}: one voter change at a time, through a quorum of the "
            "current voters (503 without a majority: nothing changed). Joining nodes add "
            "themselves (auto_voter) and leaving ones take themselves out; this is for the "
            "rest. With a cluster_secret the request is signed with it (--secret, or "
            "KVS_CLUSTER_SECRET); with ACLs an operator-write token does instead.", nested=True)
        _add_signed_change_options(p, "the node id (see `kvs members`)")
    p = _client_command(sub, "status", cmd_status, "node and anti-entropy status")
    _add_json_option(p)
    p = _command(sub, "leave", "make a node leave the cluster and shut down", LEAVE_DESCRIPTION)
    p.add_argument("--node", action="append", metavar="URL",
                   help=f"the node that leaves (default: {DEFAULT_NODE})")
    p.add_argument("--secret", help="the nodes' cluster_secret, to sign the request (default: "
                                    f"{configuration.ENV_PREFIX}CLUSTER_SECRET; none: unsigned)")
    add_ca_option(p)
    add_token_option(p)
    p.set_defaults(run=cmd_leave)

    p = _client_command(sub, "watch", cmd_watch, "print a key (or prefix) and then each change to it")
    _add_key(p, "--prefix")
    p.add_argument("--prefix", action="store_true", help="watch every key under KEY")
    p.add_argument("--index", type=_int_in(0), help="only changes after this X-KVS-Index of the node")
    p.add_argument("--wait", type=_seconds, default=60.0, help="seconds per blocking query")
    p.add_argument("--count", type=_int_in(1), help="exit after printing this many states")
    _add_json_option(p, "one JSON object per line")


def _add_lock(sub: Any) -> None:
    p = _command(
        sub, "lock", "run a command while holding a lock",
        "Acquire the lock KEY (a TTL lease, renewed every TTL/3), run the command, "
        "release the lock. The command runs in its own process group (it should "
        "not read the terminal); Ctrl-C, SIGTERM and SIGHUP are passed on to it. "
        "If the lock is lost meanwhile the whole group gets SIGTERM (SIGKILL after "
        "--grace) and kvs exits 7; otherwise it exits with the command's status. "
        "Exit 4: --timeout passed while someone else held the lock.",
        usage="kvs lock KEY [--ttl T] [--timeout S] [--grace S] [--node URL] [--consistency quorum|local] "
              "-- command [args...]")
    _add_key(p)
    _lock_options(p).set_defaults(ttl=15.0, grace=10.0, timeout=None, lock_node=None, consistency=None,
                                  ca=os.environ.get(CA_ENV))
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command and its arguments")
    p.set_defaults(run=cmd_lock)


def _add_services(sub: Any) -> None:
    services = _client_command(sub, "services", cmd_services_list,
                               "service registry: list, get, register, renew, deregister",
                               SERVICES_DESCRIPTION)
    _add_json_option(services, "print JSON")
    actions = services.add_subparsers(dest="action", metavar="ACTION")
    # Options repeated on an action must not reset what was given before the action
    # (`kvs services --node URL register ...`), hence default=SUPPRESS there.

    def action(name: str, handler: Callable[[Client, argparse.Namespace], Any], text: str,
               description: str | None = None) -> argparse.ArgumentParser:
        p = _client_command(actions, name, handler, text, description, nested=True)
        _add_json_option(p, "print JSON", default=argparse.SUPPRESS)
        if name != "list":
            p.add_argument("name", metavar="NAME", help="the service name")
        return p

    action("list", cmd_services_list, "list the registered services (the default ACTION)")
    action("get", cmd_services_get, "show one service with its modify_index and expiry")
    p = action("register", cmd_services_register, "register a service, or replace its registration",
               "Register NAME, or replace its registration. With --ttl it expires unless renewed "
               "(kvs services renew). With --cas 0 it is only created, exit 4 if NAME is "
               "registered; --cas N replaces it only if its modify_index is N (needs "
               "cas_enabled: true on the node).")
    p.add_argument("--address", help="host or IP clients should connect to (default: none)")
    p.add_argument("--port", type=_int_in(1, 65535), help="port clients should connect to (default: none)")
    p.add_argument("--tag", action="append", help="a tag (repeat for several)")
    p.add_argument("--meta", action="append", type=_meta_item, metavar="KEY=VALUE",
                   help="a metadata entry, value stored as a string (repeat for several)")
    p.add_argument("--ttl", type=_seconds, help="seconds until it expires unless renewed (default: never)")
    p.add_argument("--cas", type=_int_in(0), metavar="N",
                   help="0: create only; N: replace only if its modify_index is N")
    p = action("renew", cmd_services_renew, "extend the lease of a service registered with a TTL",
               "Extend NAME's lease by its TTL (or by --ttl, which also becomes its new TTL). "
               "Exit 3 once it has expired or was deregistered: register it again.")
    p.add_argument("--ttl", type=_seconds, help="new TTL in seconds (default: the registered TTL)")
    p = action("deregister", cmd_services_deregister, "remove a service")
    p.add_argument("--cas", type=_int_in(0), metavar="N", help="only if its modify_index is N")


# -- ACLs ---------------------------------------------------------------------------------------

ACL_DESCRIPTION = """\
Client ACLs (the nodes need acl_enabled: true; `kvs cluster up --acl`). Start with
`kvs acl bootstrap`, which prints the first management token once; give it to the
other commands with --token or KVS_TOKEN. Then create policies (prefix rules) and
tokens that hold them. See docs/acl.md for the model."""

POLICY_CREATE_DESCRIPTION = """\
Create a policy. Each --rule PREFIX=ACCESS grants read, write or deny on every key
that starts with PREFIX (an empty PREFIX, `--rule =read`, is every key). For a key,
the longest matching prefix decides; with none the key is denied. Example:

  kvs acl policy create app --rule app/=write --rule app/secret/=deny --operator read"""


def _rule(text: str) -> dict[str, str]:
    prefix, sep, access = text.rpartition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected PREFIX=ACCESS (read, write or deny), got {text!r}")
    return {"prefix": prefix, "access": access}


def _print_token(token: AclToken, what: str) -> None:
    print(f"{what} (the secret is shown only now; keep it safe):")
    _table([("id", token.id), ("secret", token.secret or "-"),
            ("policies", ",".join(token.policies)), ("expires", _when(token.expires_at))])
    print(f"\nuse it with: export {TOKEN_VARIABLE}={token.secret}")


def cmd_acl_bootstrap(c: Client, args: argparse.Namespace) -> Any:
    token = c.acl_bootstrap()
    if args.json:
        return token
    _print_token(token, "ACLs bootstrapped: the management token")
    return None


def cmd_acl_policy_create(c: Client, args: argparse.Namespace) -> Any:
    return c.acl_create_policy(args.name, args.rule or [], operator=args.operator,
                               management=args.management, description=args.description)


def _policy_row(p: AclPolicy) -> tuple[str, ...]:
    rules = " ".join(f"{r['prefix']}={r['access']}" for r in p.rules)
    return (p.name, rules or "-", p.operator or "-", "yes" if p.management else "-", p.description)


def cmd_acl_policy_list(c: Client, args: argparse.Namespace) -> Any:
    policies = c.acl_policies()
    if args.json:
        return policies
    _table([("NAME", "RULES", "OPERATOR", "MANAGEMENT", "DESCRIPTION")]
           + [_policy_row(p) for p in policies])
    return None


def cmd_acl_policy_delete(c: Client, args: argparse.Namespace) -> Any:
    print(f"deleted policy {c.acl_delete_policy(args.name)}")
    return None


def cmd_acl_token_create(c: Client, args: argparse.Namespace) -> Any:
    token = c.acl_create_token(args.policy, description=args.description, ttl=args.ttl)
    if args.json:
        return token
    _print_token(token, "token created")
    return None


def cmd_acl_token_list(c: Client, args: argparse.Namespace) -> Any:
    tokens = c.acl_tokens()
    if args.json:
        return tokens
    _table([("ID", "POLICIES", "EXPIRES", "DESCRIPTION")]
           + [(t.id, ",".join(t.policies), _when(t.expires_at), t.description) for t in tokens])
    return None


def cmd_acl_token_delete(c: Client, args: argparse.Namespace) -> Any:
    print(f"deleted token {c.acl_delete_token(args.id)}; it stops working on every node within "
          "one replication round")
    return None


def _add_acl(sub: Any) -> None:
    acl = _command(sub, "acl", "client ACLs: bootstrap, policies, tokens", ACL_DESCRIPTION)
    groups = acl.add_subparsers(dest="acl_command", required=True)
    p = _client_command(groups, "bootstrap", cmd_acl_bootstrap, "create the first management "
                        "token (once per cluster) and print it")
    _add_json_option(p, "print JSON")
    policy = _command(groups, "policy", "ACL policies: create, list, delete")
    actions = policy.add_subparsers(dest="action", required=True)
    p = _client_command(actions, "create", cmd_acl_policy_create, "create a policy",
                        POLICY_CREATE_DESCRIPTION)
    p.add_argument("name", metavar="NAME", help="1 to 128 of A-Z a-z 0-9 . _ -")
    p.add_argument("--rule", action="append", type=_rule, metavar="PREFIX=ACCESS",
                   help="a prefix rule (repeat for several); ACCESS is read, write or deny")
    p.add_argument("--operator", choices=("read", "write"),
                   help="read: /cluster/*, /metrics; write: also members remove, leave, snapshot")
    p.add_argument("--management", action="store_true", help="ACL administration")
    p.add_argument("--description", default="", help="free text")
    p = _client_command(actions, "list", cmd_acl_policy_list, "list the policies")
    _add_json_option(p)
    p = _client_command(actions, "delete", cmd_acl_policy_delete, "delete a policy")
    p.add_argument("name", metavar="NAME",
                   help="the policy to delete (the tokens that name it lose its rules at once)")
    token = _command(groups, "token", "ACL tokens: create, list, delete")
    actions = token.add_subparsers(dest="action", required=True)
    p = _client_command(actions, "create", cmd_acl_token_create, "create a token and print "
                        "its secret (only now)")
    p.add_argument("--policy", action="append", required=True, metavar="NAME",
                   help="a policy the token holds (repeat for several)")
    p.add_argument("--description", default="", help="free text")
    p.add_argument("--ttl", type=_seconds, help="seconds until it expires (default: never)")
    _add_json_option(p, "print JSON")
    p = _client_command(actions, "list", cmd_acl_token_list, "list the tokens (never their secrets)")
    _add_json_option(p)
    p = _client_command(actions, "delete", cmd_acl_token_delete, "delete (revoke) a token")
    p.add_argument("id", metavar="ID", help="the token's id, as `kvs acl token list` shows it")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "node", "unset") is None:
        args.node = [DEFAULT_NODE]
    try:
        return int(args.run(args))
    except UsageError as exc:
        print(f"{args.prog}: {exc}", file=sys.stderr)
        return EXIT_USAGE
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
