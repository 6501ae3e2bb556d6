"""A kvs cluster across real network hosts: 3 Linux network namespaces on a bridge, each node
on its own address, with a cluster secret, TLS (certificates naming the addresses) and ACLs.

Writes, CAS, TTL and replication cross the bridge; an iptables DROP on one host's veth
partitions it, both sides take writes, and after healing every node has the same Merkle
root. Root only (namespaces, veths, iptables): skipped with the reason elsewhere. The
address plan and the partition rules are pure and tested everywhere.
"""

from __future__ import annotations

import ipaddress
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from kvs.client import CASConflict, Client, NotFound, Unauthorized
from kvs.testing import node_env, run_kvs
from kvs.testing.netns import NetnsCluster, NetnsError, Network, drop_rules, pick_subnet, unavailable

NAMES = ["n1", "n2", "n3"]
DEADLINE = 20.0
SETTINGS = {"KVS_CAS_ENABLED": "true", "KVS_SYNC_INTERVAL_MS": "500", "KVS_TTL_SWEEP_INTERVAL_MS": "200",
            "KVS_ACL_ENABLED": "true"}
_tokens: dict[int, str] = {}  # the management token bootstrapped on each cluster, by id()


def until(condition: Callable[[], Any], what: str, timeout: float = DEADLINE) -> Any:
    """Poll `condition` until it returns something truthy; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout:.0f}s: {what}")
        time.sleep(0.1)


# -- pure parts ---------------------------------------------------------------------------------

def test_pick_subnet_avoids_every_network_in_use() -> None:
    used = [ipaddress.ip_network(f"10.231.{i}.0/24") for i in range(256) if i != 77]
    assert pick_subnet(used, random.Random(1)) == ipaddress.ip_network("10.231.77.0/24")
    assert pick_subnet([], random.Random(1)).subnet_of(ipaddress.ip_network("10.231.0.0/16"))
    with pytest.raises(NetnsError, match="in use"):
        pick_subnet([ipaddress.ip_network("10.0.0.0/8")], random.Random(1))


def test_drop_rules_cut_both_directions_on_the_hosts_interface_only() -> None:
    assert drop_rules("veth0", ["10.0.0.3", "10.0.0.4"]) == [
        ["-A", "INPUT", "-i", "veth0", "-s", "10.0.0.3", "-j", "DROP"],
        ["-A", "OUTPUT", "-o", "veth0", "-d", "10.0.0.3", "-j", "DROP"],
        ["-A", "INPUT", "-i", "veth0", "-s", "10.0.0.4", "-j", "DROP"],
        ["-A", "OUTPUT", "-o", "veth0", "-d", "10.0.0.4", "-j", "DROP"],
    ]


# -- real namespaces ----------------------------------------------------------------------------

def _network(names: list[str]) -> Network:
    """A network made here, or a skip saying why it cannot be."""
    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)
    try:
        return Network(names).create()
    except NetnsError as exc:
        pytest.skip(f"cannot make network namespaces here: {exc}")


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetnsCluster]:
    network = _network(NAMES)
    cluster = NetnsCluster(tmp_path_factory.mktemp("netns"), network, env=SETTINGS)
    try:
        cluster.start_all()
        with client(cluster, NAMES[0]) as kv:
            _tokens[id(cluster)] = kv.acl_bootstrap().secret
        for name in NAMES:  # the token replicates like data: a test that cuts a host off needs it there
            until(lambda n=name: knows_the_token(cluster, n), f"the management token on {name}")
        yield cluster
    finally:
        try:
            cluster.stop()
        finally:
            network.close()
    assert cluster.leftover_pids() == [] and network.leftovers() == []


def client(cluster: NetnsCluster, name: str) -> Client:
    url = cluster.by_name(name).url
    assert url is not None
    return Client(url, ca=str(cluster.ca_file), token=_tokens.get(id(cluster)), timeout=3.0)


def knows_the_token(cluster: NetnsCluster, name: str) -> bool:
    with client(cluster, name) as kv:
        try:
            kv.acl_tokens()
        except Unauthorized:
            return False
    return True


def roots(cluster: NetnsCluster) -> dict[str, str]:
    out = {}
    for node in cluster.nodes:
        with client(cluster, node.name) as kv:
            out[node.name] = kv.status().merkle_root
    return out


def value_on(cluster: NetnsCluster, name: str, key: str) -> Any:
    with client(cluster, name) as kv:
        try:
            return kv.get(key).value
        except NotFound:
            return None


def alive_seen_by(cluster: NetnsCluster, name: str) -> int:
    return cluster.by_name(name).alive_members()


def test_each_node_is_its_own_host_with_tls(hosts: NetnsCluster) -> None:
    ips = {host.ip for host in hosts.network.hosts.values()}
    assert len(ips) == 3 and hosts.network.gateway not in ips
    for node in hosts.nodes:
        host = hosts.network.hosts[node.name]
        assert node.url == f"https://{host.ip}:8080"  # every host on the same port, TLS only
        with Client(node.url, ca=str(hosts.ca_file), timeout=3.0) as anonymous, pytest.raises(Unauthorized):
            anonymous.get("hosts/a")  # ACLs on: no token, no data


def test_writes_cas_ttl_and_replication_across_hosts(hosts: NetnsCluster) -> None:
    with client(hosts, "n1") as kv:
        kv.put("hosts/a", {"from": "n1"})
        created = kv.put("hosts/created", 1, cas=0)
        kv.put("hosts/ttl", "short", ttl=1)
    for name in ("n2", "n3"):
        until(lambda n=name: value_on(hosts, n, "hosts/a") == {"from": "n1"}, f"n1's write on {name}")
        until(lambda n=name: value_on(hosts, n, "hosts/created") == 1, f"the CAS create on {name}")
    with client(hosts, "n3") as kv, pytest.raises(CASConflict):
        kv.put("hosts/created", 2, cas=0)  # exists already: create-only fails on another host
    with client(hosts, "n2") as kv:
        kv.put("hosts/created", 3, if_version=created.version)  # the version is global
    until(lambda: value_on(hosts, "n1", "hosts/created") == 3, "n2's CAS update on n1")
    for name in NAMES:
        until(lambda n=name: value_on(hosts, n, "hosts/ttl") is None, f"the TTL expiry on {name}")


def test_partitioned_host_takes_writes_and_heals_to_identical_roots(hosts: NetnsCluster) -> None:
    network = hosts.network
    network.split([["n3"], ["n1", "n2"]])
    try:
        until(lambda: alive_seen_by(hosts, "n1") == 2, "n1 sees n3 gone")
        until(lambda: alive_seen_by(hosts, "n3") == 1, "n3 sees n1 and n2 gone")
        with client(hosts, "n1") as kv:
            kv.put("split/majority", "n1 side")
        with client(hosts, "n3") as kv:
            kv.put("split/minority", "n3 side")
        until(lambda: value_on(hosts, "n2", "split/majority") == "n1 side", "the write within n1's side")
        assert value_on(hosts, "n3", "split/majority") is None  # nothing crosses the cut
        assert value_on(hosts, "n1", "split/minority") is None
    finally:
        network.heal()
    for name in NAMES:
        until(lambda n=name: value_on(hosts, n, "split/minority") == "n3 side", f"n3's write on {name}")
        until(lambda n=name: value_on(hosts, n, "split/majority") == "n1 side", f"n1's write on {name}")
    equal = until(lambda: (r := roots(hosts)) and len(set(r.values())) == 1 and r, "equal Merkle roots")
    assert set(equal) == set(NAMES)


def test_network_is_removed_when_its_owner_fails() -> None:
    network = _network(["a", "b"])
    with pytest.raises(RuntimeError, match="owner failed"), network:
        assert len(network.leftovers()) == 5  # bridge, 2 host-side veths, 2 namespaces
        raise RuntimeError("owner failed")
    assert network.leftovers() == []


def test_a_network_that_fails_half_way_leaves_nothing_behind() -> None:
    _network(["probe"]).close()  # skips where namespaces cannot be made at all
    network = Network(["a", "bad/name"])
    with pytest.raises(NetnsError, match="bad/name"):
        network.create()
    assert network.leftovers() == []


def test_chaos_cleanup_removes_the_network_of_an_owner_killed_with_sigkill() -> None:
    _network(["probe"]).close()  # skips where namespaces cannot be made at all
    script = ("from kvs.testing.netns import Network; import time; "
              "n = Network(['a', 'b']).create(); print(n.run_id, flush=True); time.sleep(60)")
    owner = subprocess.Popen([sys.executable, "-c", script], env=node_env(), stdout=subprocess.PIPE,
                             text=True)
    try:
        assert owner.stdout is not None
        run_id = owner.stdout.readline().strip()
    finally:
        owner.kill()  # SIGKILL: no atexit hook runs, the network stays
        owner.wait()
    left = Network(["a", "b"], run_id=run_id)
    assert len(left.leftovers()) == 5
    cleanup = run_kvs("chaos", "cleanup")
    assert cleanup.returncode == 0 and f"kvs-{owner.pid}-{run_id}-a" in cleanup.stdout, cleanup.stdout
    assert left.leftovers() == []


def test_unavailable_names_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    from kvs.testing import netns

    monkeypatch.setattr(netns.os, "geteuid", lambda: 1000)
    assert netns.unavailable() == "network namespaces need root"
    monkeypatch.setattr(netns.os, "geteuid", lambda: 0)
    monkeypatch.setattr(netns.shutil, "which", lambda cmd: None if cmd == "ip" else f"/usr/sbin/{cmd}")
    assert netns.unavailable() == "network namespaces need the ip command (iproute2, iptables)"
