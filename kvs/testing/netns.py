"""Hosts on a real network, on one machine: Linux network namespaces joined by a bridge.

    with Network(["n1", "n2", "n3"]) as net:            # root only; NetnsError if it cannot be made
        cluster = NetnsCluster(tmp / "nodes", net, env={"KVS_CAS_ENABLED": "true"})
        cluster.start_all()                             # n1 on 10.231.Y.2:8080, n2 on .3, ...
        net.split([[n3], [n1, n2]])                     # iptables DROP on n3's veth, both ways
        net.heal()
        cluster.stop()
                                                        # leaving the `with`: every namespace,
                                                        # veth, the bridge and the rules are gone

    host namespace                  namespace kvs-<pid>-<run>-n1        ... -n2, -n3
    ──────────────                  ────────────────────────────
    bridge kvsb<run> 10.231.Y.1/24 ─ veth kvsh<run>0 ═ kvsn<run>0 10.231.Y.2/24, lo
                                   ─ veth kvsh<run>1 ═ ...        10.231.Y.3/24

Why namespaces: on loopback every node shares one address, so a partition must tell
nodes apart by group id and port (kvs/chaos/faults.py). Here each node is a host with
its own address, listening on the same port as the others, dialled at that address, with
a certificate naming it: what a multi-host deployment looks like, and a partition is a
firewall rule on one host's interface, as it would be there.

The process that owns the network (the tests, `kvs chaos --netns`) stays in the host
namespace and reaches every node through the bridge's address; it is never cut off.
Partition rules live in the isolated host's own namespace (INPUT from / OUTPUT to the
peers on the other side), so they vanish with it and cannot touch anybody else's rules.

Names carry a random run id, so parallel runs never collide, and the owner's pid, so a
network whose owner was killed -9 can be found and removed (`cleanup_stale`, run by
`kvs chaos cleanup`). The /24 is chosen under a lock among those no interface or route
uses. Teardown (`close`, also from atexit) kills whatever still runs in the namespaces,
then deletes namespaces, veths and bridge, each step independent of the others.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import ipaddress
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvs.testing.certs import LocalCA
from kvs.testing.cluster import Cluster, KvsNode
from kvs.testing.processes import pid_alive

DEFAULT_PORT = 8080
SUPERNET = ipaddress.ip_network("10.231.0.0/16")  # one /24 per network
LOCK_FILE = Path("/run/lock/kvs-netns.lock")
NS_PREFIX = "kvs-"
LINK_PREFIX = "kvs"  # kvsb<run> bridge, kvsh<run><i> host end, kvsn<run><i> namespace end
NS_NAME = re.compile(r"^kvs-(\d+)-([0-9a-f]{6})-")


class NetnsError(RuntimeError):
    """The network could not be made or changed (no root, no `ip`, a command refused)."""


def unavailable() -> str | None:
    """Why namespaces cannot be used here, or None if they can (whether the kernel lets us
    make one shows only when we try: Network then raises NetnsError)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    missing = [cmd for cmd in ("ip", "iptables") if shutil.which(cmd) is None]
    if missing:
        return f"network namespaces need the {' and '.join(missing)} command (iproute2, iptables)"
    return None


def _run(*command: str) -> str:
    proc = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise NetnsError(f"{' '.join(command)}: {proc.stderr.strip() or f'exit code {proc.returncode}'}")
    return proc.stdout


def _try(*command: str) -> bool:
    return subprocess.run(command, capture_output=True, stdin=subprocess.DEVNULL).returncode == 0


# -- pure parts: the address plan and the partition rules --------------------------------------

def pick_subnet(used: Iterable[ipaddress.IPv4Network], rng: random.Random) -> ipaddress.IPv4Network:
    """A /24 of SUPERNET that overlaps none of `used`; NetnsError when all are taken."""
    taken = list(used)
    free = [net for net in SUPERNET.subnets(new_prefix=24) if not any(net.overlaps(u) for u in taken)]
    if not free:
        raise NetnsError(f"every /24 of {SUPERNET} is in use: remove stale networks (kvs chaos cleanup)")
    return rng.choice(free)


def drop_rules(device: str, peers: Sequence[str], *, port: int | None = None) -> list[list[str]]:
    """iptables arguments that cut a host off from `peers` on its interface `device`, both
    ways: their packets dropped on the way in, ours to them on the way out. With `port`,
    one-way: only our packets to the peers' server `port` are dropped (they still reach us,
    and hear our answers on the connections they open)."""
    rules = []
    for peer in peers:
        if port is None:
            rules.append(["-A", "INPUT", "-i", device, "-s", peer, "-j", "DROP"])
            rules.append(["-A", "OUTPUT", "-o", device, "-d", peer, "-j", "DROP"])
        else:
            rules.append(["-A", "OUTPUT", "-o", device, "-d", peer, "-p", "tcp", "--dport", str(port),
                          "-j", "DROP"])
    return rules


@dataclass(frozen=True)
class Host:
    """One node's host: its namespace, address, and the two ends of its veth pair."""

    name: str
    netns: str
    ip: str
    host_link: str  # in the host namespace, a port of the bridge
    link: str  # inside the namespace, with `ip`

    def exec(self) -> list[str]:
        """The command prefix that runs a command on this host."""
        return ["ip", "netns", "exec", self.netns]


# -- the network ----------------------------------------------------------------------------------

class Network:
    """A bridge and one namespace per name; made by `create()` (or `with`), removed by `close()`."""

    def __init__(self, names: Sequence[str], *, run_id: str | None = None) -> None:
        if not names or len(set(names)) != len(names):
            raise ValueError(f"a network needs distinct host names, got {list(names)}")
        if len(names) > 250:
            raise ValueError("a network has at most 250 hosts (one /24)")
        self.run_id = run_id or secrets.token_hex(3)
        self.names = list(names)
        self.bridge = f"{LINK_PREFIX}b{self.run_id}"
        self.subnet: ipaddress.IPv4Network | None = None
        self.hosts: dict[str, Host] = {}
        self._made: list[tuple[str, str]] = []  # ("netns" | "link", name), in creation order

    @property
    def gateway(self) -> str:
        """The bridge's address: where the owner's packets to the hosts come from."""
        assert self.subnet is not None, "create() the network first"
        return str(self.subnet[1])

    def create(self) -> Network:
        """Make everything; on any failure, remove what was made and raise NetnsError."""
        atexit.register(self.close)
        try:
            with _lock():
                self.subnet = pick_subnet(_used_subnets(), random.Random())
                self._link("add", self.bridge, "type", "bridge")
                _run("ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            _run("ip", "link", "set", self.bridge, "up")
            for i, name in enumerate(self.names):
                self._add_host(i, name)
        except BaseException:
            self.close()
            raise
        return self

    def _link(self, *args: str) -> None:
        _run("ip", "link", *args)
        self._made.append(("link", args[1]))

    def _add_host(self, i: int, name: str) -> None:
        assert self.subnet is not None
        host = Host(name, f"{NS_PREFIX}{os.getpid()}-{self.run_id}-{name}", str(self.subnet[i + 2]),
                    f"{LINK_PREFIX}h{self.run_id}{i}", f"{LINK_PREFIX}n{self.run_id}{i}")
        _run("ip", "netns", "add", host.netns)
        self._made.append(("netns", host.netns))
        self._link("add", host.host_link, "type", "veth", "peer", "name", host.link)
        _run("ip", "link", "set", host.host_link, "master", self.bridge, "up")
        _run("ip", "link", "set", host.link, "netns", host.netns)
        inside = host.exec()
        _run(*inside, "ip", "addr", "add", f"{host.ip}/24", "dev", host.link)
        _run(*inside, "ip", "link", "set", host.link, "up")
        _run(*inside, "ip", "link", "set", "lo", "up")
        self.hosts[name] = host

    # -- partitions ---------------------------------------------------------------------------

    def split(self, sides: Sequence[Sequence[KvsNode | str]], *, oneway: bool = False) -> None:
        """Cut the hosts of the first side off from those of the others (both ways, or
        one-way: see drop_rules; the others must then be nodes, for their port); the owner
        still reaches all of them. Adds to any cut already made."""
        first, *others = [[self._host(h) for h in side] for side in sides]
        peers = [host.ip for side in others for host in side]
        port = None
        if oneway:
            (port,) = {node.port for side in sides[1:] for node in side if isinstance(node, KvsNode)}
        for host in first:
            for rule in drop_rules(host.link, peers, port=port):
                _run(*host.exec(), "iptables", "-w", *rule)

    def heal(self) -> None:
        """Remove every partition rule (the namespaces hold no other rules)."""
        for host in self.hosts.values():
            for chain in ("INPUT", "OUTPUT"):
                _run(*host.exec(), "iptables", "-w", "-F", chain)

    def _host(self, node: KvsNode | str) -> Host:
        return self.hosts[node if isinstance(node, str) else node.name]

    # -- teardown -----------------------------------------------------------------------------

    def close(self) -> None:
        """Kill what still runs inside, delete namespaces, veths and bridge. Idempotent; every
        step is tried even when an earlier one fails."""
        for kind, name in reversed(self._made):
            if kind == "netns":
                _kill_inside(name)
                _try("ip", "netns", "delete", name)
            else:
                _try("ip", "link", "delete", name)  # a veth's other end goes with it
        self._made.clear()
        atexit.unregister(self.close)

    def leftovers(self) -> list[str]:
        """Namespaces and links of this run that still exist: [] after close()."""
        return [name for name in [*_namespaces(), *_links()] if self.run_id in name]

    def __enter__(self) -> Network:
        return self if self._made else self.create()

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def _lock() -> Iterator[None]:
    """An exclusive lock across processes: two networks never pick the same /24."""
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK_FILE, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file is closed
        yield


def _used_subnets() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network an address or route of the host namespace covers."""
    found = []
    for line in (_run("ip", "-4", "-o", "addr", "show") + _run("ip", "-4", "route", "show")).splitlines():
        for word in line.split():
            with contextlib.suppress(ValueError):
                if "/" in word:
                    found.append(ipaddress.ip_network(word, strict=False))
    return found


def _namespaces() -> list[str]:
    return [line.split()[0] for line in _run("ip", "netns", "list").splitlines() if line.strip()]


def _links() -> list[str]:
    return [line.split()[0].split("@")[0] for line in _run("ip", "-br", "link").splitlines() if line.strip()]


def _kill_inside(netns: str) -> None:
    """SIGKILL every process still in our namespace `netns` (a node a crashed owner left)."""
    proc = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True)
    for pid in proc.stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def cleanup_stale() -> list[str]:
    """Remove the networks of owners that no longer run (killed -9): their namespaces, and
    the links named with their run ids. What was removed, one line each."""
    if unavailable() is not None:
        return []
    stale = {}
    for netns in _namespaces():
        match = NS_NAME.match(netns)
        if match and not pid_alive(int(match.group(1))):
            stale[netns] = match.group(2)
    removed = []
    for netns in stale:
        _kill_inside(netns)
        if _try("ip", "netns", "delete", netns):
            removed.append(f"network namespace {netns}")
    runs = set(stale.values())
    for link in _links():
        if link.startswith(LINK_PREFIX) and link[len(LINK_PREFIX) + 1:][:6] in runs \
                and _try("ip", "link", "delete", link):
            removed.append(f"link {link}")
    return removed


# -- a kvs cluster on the network ----------------------------------------------------------------

class NetnsCluster(Cluster):
    """A node on every host of `network`, named after it: each bound to its host's address on
    the same `port`, speaking only TLS with a certificate for that address (a throwaway CA
    in <directory>/tls), and sharing a cluster secret (`secret`, random unless given)."""

    def __init__(self, directory: Path, network: Network, *, port: int = DEFAULT_PORT,
                 secret: str | None = None, env: Mapping[str, str | None] | None = None,
                 **options: Any) -> None:
        directory = Path(directory).absolute()
        self.network = network
        self.secret = secret or secrets.token_hex(32)
        ca = LocalCA(directory / "tls")
        self.ca_file = ca.cert_file
        envs: dict[str, Mapping[str, str | None]] = {}
        for name, host in network.hosts.items():
            cert, key = ca.issue(name, [host.ip])
            envs[name] = {"KVS_BIND_ADDRESS": host.ip, "KVS_TLS_CERT_FILE": str(cert),
                          "KVS_TLS_KEY_FILE": str(key), "KVS_TLS_CA_FILE": str(ca.cert_file)}
        super().__init__(directory, list(network.hosts), ports=[port] * len(network.hosts),
                         env={**(env or {}), "KVS_CLUSTER_SECRET": self.secret}, envs=envs,
                         launchers={name: host.exec() for name, host in network.hosts.items()},
                         ca=ca.cert_file, **options)
        for node in self.nodes:  # the address it will have, for whoever records it before start
            node.url = f"https://{network.hosts[node.name].ip}:{port}"
