"""`kvs chaos` command line. kvs/cli.py only calls `add_parser`; everything else lives here.

    kvs chaos [--nodes 3 --clients 8 --duration 30 ...]   run, check, report
    kvs chaos check DIR|FILE                              run the checkers on a saved history
    kvs chaos --netns                                     the nodes on hosts of their own (root)
    kvs chaos cleanup                                     remove iptables and --netns leftovers of
                                                          killed runs
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from kvs.client import TOKEN_VARIABLE

FAULTS = ("kill", "pause", "partition", "oneway", "jump", "voters", "join", "skew")
WORKLOADS = ("register", "counter", "lease", "putdel")
CONSISTENCIES = ("local", "quorum", "mixed")


def _list(choices: tuple[str, ...], allow_none: bool = True) -> Any:
    def parse(text: str) -> list[str]:
        if allow_none and text == "none":
            return []
        items = list(choices) if text == "all" else [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in choices]
        if bad or (not items and not allow_none):
            raise argparse.ArgumentTypeError(f"choose from {', '.join(choices)} (comma-separated), "
                                             "or all" + (" or none" if allow_none else ""))
        return items
    return parse


def _pair(text: str) -> tuple[float, float]:
    try:
        low, _, high = text.partition(",")
        pair = (float(low), float(high or low))
    except ValueError:
        raise argparse.ArgumentTypeError("expected MIN,MAX in seconds, e.g. 2,5") from None
    if pair[0] < 0 or pair[1] < pair[0]:
        raise argparse.ArgumentTypeError("expected 0 <= MIN <= MAX")
    return pair


def _setting(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError("expected KEY=VALUE, e.g. sync_interval_ms=1000")
    return key.strip(), value.strip()


def add_parser(sub: Any) -> None:
    """Add `chaos` to kvs's subcommands."""
    p = sub.add_parser(
        "chaos", help="chaos test: concurrent CAS under crashes, pauses, partitions; then check",
        description="Start a cluster (or use --url nodes), run concurrent clients while injecting "
                    "faults, heal, and check the recorded history. See docs/chaos.md.")
    p.add_argument("--nodes", type=int, default=3, help="nodes to start (3)")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients, spread over the nodes (8)")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of workload and faults (30)")
    p.add_argument("--seed", type=int, help="random seed (default random; printed and saved)")
    p.add_argument("--workload", type=_list(WORKLOADS, allow_none=False), default=list(WORKLOADS),
                   help=f"comma-separated subset of {','.join(WORKLOADS)}, or all (all)")
    p.add_argument("--consistency", choices=CONSISTENCIES, default="local",
                   help="local keys (as always), quorum keys (consistency=quorum, CAS by if_seq, checked "
                        "as one register across the cluster), or mixed: some keys of each kind (local)")
    p.add_argument("--faults", type=_list(FAULTS), default=list(FAULTS),
                   help=f"comma-separated subset of {','.join(FAULTS)}, all, or none (all)")
    p.add_argument("--out", type=Path, help="output dir (default ./chaos-YYYYmmdd-HHMMSS)")
    p.add_argument("--url", action="append", default=[], metavar="URL",
                   help="use running nodes instead of starting some (repeat); no faults then")
    p.add_argument("--keys", type=int, default=3, help="hot keys per workload (3)")
    p.add_argument("--key-budget", type=int, default=150,
                   help="write attempts per key before it rotates (150)")
    p.add_argument("--history-limit", type=int, default=1000,
                   help="revision_history_limit of the nodes started (1000)")
    p.add_argument("--lease-ttl", type=float, default=3.0, help="lease TTL in seconds (3)")
    p.add_argument("--op-timeout", type=float,
                   help="client request timeout in seconds (1; 5 with quorum keys, longer than a "
                        "node's quorum rounds and their retries, so a minority side's 503 is seen)")
    p.add_argument("--skew-ms", type=int, default=2500,
                   help="clock offset of the skewed node, sign from the seed (2500)")
    p.add_argument("--jump-ms", type=int, default=2000,
                   help="how far the jump fault steps a node's clock, forward or back (2000)")
    p.add_argument("--overlap", type=int, default=1,
                   help="faults active at once, e.g. a partition while a node is paused (1)")
    p.add_argument("--fault-every", type=_pair, default=(1.0, 3.0), metavar="MIN,MAX",
                   help="quiet seconds between faults (1,3)")
    p.add_argument("--fault-length", type=_pair, default=(2.0, 5.0), metavar="MIN,MAX",
                   help="seconds a fault lasts (2,5)")
    p.add_argument("--converge-timeout", type=float, default=60.0,
                   help="seconds allowed for Merkle roots to agree after healing (60)")
    p.add_argument("--set", type=_setting, action="append", default=[], metavar="KEY=VALUE",
                   help="extra node setting, e.g. --set sync_interval_ms=1000 (repeat)")
    p.add_argument("--sync-writes", action="store_true",
                   help="nodes acknowledge a write only after an fsync covers it (sync_writes: true)")
    p.add_argument("--base-port", type=int, help="first node port (default: free ports)")
    p.add_argument("--cluster-secret", help="cluster_secret of the nodes (given to the nodes started; "
                   "with --url, used to sign the dump requests)")
    p.add_argument("--token", metavar="SECRET",
                   help="with --url: the ACL token every request of the run carries, for nodes with "
                        "acl_enabled; it must be allowed to write the run's keys (chaos-*) and to read "
                        f"/cluster/* and dump (a management token does) (default: ${TOKEN_VARIABLE})")
    p.add_argument("--netns", action="store_true",
                   help="run every node on a host of its own: a Linux network namespace with its own "
                        "address, TLS, a cluster secret and ACLs (the clients hold a token for the run's "
                        "keys); partitions by iptables on the hosts' veths "
                        "(root only)")
    p.add_argument("--progress", type=float, default=2.0, help="seconds between progress lines (2)")
    p.set_defaults(run=run_command)
    chaos_sub = p.add_subparsers(dest="chaos_command", metavar="{check,cleanup}")
    check = chaos_sub.add_parser("check", help="run the checkers on a saved run dir or history file")
    check.add_argument("path", type=Path)
    check.set_defaults(run=check_command)
    cleanup = chaos_sub.add_parser("cleanup", help="remove iptables chains/rules left by killed runs")
    cleanup.set_defaults(run=cleanup_command)


def run_command(args: argparse.Namespace) -> int:
    from kvs.chaos.runner import Options, execute

    if args.nodes < 1 or args.clients < 1 or args.duration <= 0 or args.keys < 1 or args.overlap < 1:
        print("kvs chaos: --nodes, --clients, --keys, --overlap must be >= 1 and --duration > 0",
              file=sys.stderr)
        return 2
    if args.netns and args.url:
        print("kvs chaos: --netns starts its own nodes; it cannot be combined with --url", file=sys.stderr)
        return 2
    if args.token and not args.url:
        print("kvs chaos: --token is for --url nodes; the nodes a run starts get their tokens from it",
              file=sys.stderr)
        return 2
    out = args.out or Path(time.strftime("chaos-%Y%m%d-%H%M%S"))
    options = Options(
        nodes=args.nodes, clients=args.clients, duration=args.duration, seed=args.seed,
        workloads=args.workload, consistency=args.consistency, faults=args.faults, out=out, urls=args.url,
        keys=args.keys,
        key_budget=args.key_budget, history_limit=args.history_limit, lease_ttl=args.lease_ttl,
        op_timeout=args.op_timeout or (1.0 if args.consistency == "local" else 5.0),
        skew_ms=args.skew_ms, jump_ms=args.jump_ms, overlap=args.overlap,
        fault_quiet=args.fault_every,
        fault_duration=args.fault_length, converge_timeout=args.converge_timeout,
        settings={**({"sync_writes": "true"} if args.sync_writes else {}), **dict(args.set)},
        base_port=args.base_port, progress=args.progress,
        cluster_secret=args.cluster_secret, netns=args.netns,
        token=(args.token or os.environ.get(TOKEN_VARIABLE) or None) if args.url else None)
    return execute(options, say=lambda line: print(line, flush=True))


def check_command(args: argparse.Namespace) -> int:
    from kvs.chaos.runner import check_dir

    try:
        return check_dir(args.path, say=lambda line: print(line, flush=True))
    except (FileNotFoundError, ValueError) as exc:
        print(f"kvs chaos check: {exc}", file=sys.stderr)
        return 2


def cleanup_command(args: argparse.Namespace) -> int:
    from kvs.chaos.faults import cleanup_all
    from kvs.testing.netns import cleanup_stale

    removed = cleanup_all()
    hosts = cleanup_stale()
    for line in removed + hosts:
        print(f"removed: {line}")
    print(f"{len(removed)} iptables rules/chains removed, {len(hosts)} network namespaces/links of "
          "--netns runs removed")
    return 0
