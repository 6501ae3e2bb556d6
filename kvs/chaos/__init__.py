"""`kvs chaos`: concurrent clients against a real cluster under crashes, pauses, partitions
and clock skew, a recorded history, and independent checkers that read only that history.

    runner.py      orchestration: start the cluster, run workloads and faults, heal, check
    cluster.py     subprocess nodes: start, kill -9, restart, SIGSTOP/SIGCONT, stop
    faults.py      iptables partitions, two-way and one-way (own chain, removed on exit),
                   clock jumps, voter changes, and the (overlapping) fault schedule
    skewed_node.py `python -m kvs.chaos.skewed_node --offset-ms N [--jump-ms J] -- serve ...`
    client.py      one HTTP operation = one invoke + one completion in the history
    workloads.py   register, counter, lease and put/delete clients, on local or quorum keys
    history.py     the JSON-lines history: writer, reader, the Call record
    checkers/      linearizability per (node, key), convergence, no silent loss,
                   counters, leases, and quorum keys as one register across the
                   cluster; each reads a saved history file
    report.py      summary table and a self-contained HTML timeline

The package is imported by `kvs chaos` only; nothing in the node imports it. See
docs/chaos.md for what each checker proves and what eventual consistency allows.
"""
