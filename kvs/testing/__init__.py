"""Running real kvs processes from tests, the chaos run, the benchmarks and `kvs cluster up`.

One manager for all of them, so each gets the same guarantees: every process in its own
session, signalled as a group, logged with a header line per start, stopped with a grace
period and then SIGKILL, and checked for leftovers. See processes.py (any command) and
cluster.py (`kvs serve` nodes, groups of them, a cluster that joins through its first).
"""

from kvs.testing.cluster import (
    BANNER,
    REPO_ROOT,
    START_TIMEOUT,
    Cluster,
    KvsNode,
    NodeGroup,
    StartError,
    free_port,
    free_ports,
    kvs_command,
    node_env,
    port_in_use,
    run_kvs,
    wait_ready,
)
from kvs.testing.processes import (
    STOP_GRACE,
    ManagedProcess,
    pid_alive,
    processes_mentioning,
    stop_all,
)

__all__ = [
    "BANNER", "REPO_ROOT", "START_TIMEOUT", "STOP_GRACE", "Cluster", "KvsNode", "ManagedProcess",
    "NodeGroup", "StartError", "free_port", "free_ports", "kvs_command", "node_env", "pid_alive",
    "port_in_use", "processes_mentioning", "run_kvs", "stop_all", "wait_ready",
]
