#!/usr/bin/env bash
# End-to-end check of a real local kvs cluster (docs/api.md#command-line).
#
# Starts 3 `kvs serve` processes on free loopback ports and checks, over HTTP
# and through the `kvs` CLI: single-node CRUD, every CAS condition, concurrent
# CAS, replication, conflict convergence, TTL, history, quorum CAS and restart. Every
# process it starts is stopped on exit, success or failure; it exits non-zero
# on the first failed check. Bounded: each wait has a deadline.
set -euo pipefail

PY=${PYTHON:-python3}
WORK=$(mktemp -d -t kvs-integration-XXXXXX)
PIDS=()

cleanup() {
  local rc=$?
  for pid in "${PIDS[@]:-}"; do
    if [ -n "$pid" ]; then kill -9 "$pid" 2>/dev/null || true; fi
  done
  # kvs cluster up's children are in their own sessions: stop any left behind.
  pkill -9 -f -- "--data-dir $WORK/" 2>/dev/null || true
  if [ "$rc" = 0 ]; then rm -rf "$WORK"; else echo "logs kept in $WORK"; fi
}
trap cleanup EXIT

step() { printf '\n== %s\n' "$*"; }
fail() { echo "FAIL: $*" >&2; for f in "$WORK"/*.log; do echo "--- $f"; tail -20 "$f"; done; exit 1; }
pass() { echo "  ok: $*"; }

# free_port [N]: a port P such that P..P+N-1 are all free on loopback (N defaults to 1).
free_port() { "$PY" - "${1:-1}" <<'PYEOF'
import socket, sys
n = int(sys.argv[1])
while True:
    probe = socket.socket(); probe.bind(("127.0.0.1", 0)); base = probe.getsockname()[1]; probe.close()
    socks = []
    try:
        for port in range(base, base + n):
            s = socket.socket(); socks.append(s); s.bind(("127.0.0.1", port))
    except OSError:
        continue
    finally:
        for s in socks: s.close()
    print(base); break
PYEOF
}
# json FIELD: read JSON on stdin, print one field (dotted path; numbers index lists).
json() { "$PY" -c '
import json, sys
d = json.load(sys.stdin)
for part in sys.argv[1].split(".") if sys.argv[1] else []:
    d = d[int(part)] if isinstance(d, list) else d[part]
print(json.dumps(d) if not isinstance(d, str) else d)' "$1"; }

PORTS=("$(free_port)" "$(free_port)" "$(free_port)")
URL() { echo "http://127.0.0.1:${PORTS[$1]}"; }
kvs() { "$PY" -m kvs "$@"; }

start_node() {
  local i=$1 seed=()
  [ "$i" != 0 ] && seed=(--seed "127.0.0.1:${PORTS[0]}")
  KVS_CAS_ENABLED=true KVS_GOSSIP_INTERVAL_MS=100 KVS_PROBE_TIMEOUT_MS=200 KVS_SYNC_INTERVAL_MS=300 \
  KVS_TTL_SWEEP_INTERVAL_MS=200 KVS_INITIAL_VOTERS=node-0,node-1,node-2 \
    "$PY" -m kvs serve --port "${PORTS[$i]}" --data-dir "$WORK/node$i" --node-id "node-$i" "${seed[@]}" \
    >>"$WORK/node$i.log" 2>&1 &
  PIDS[$i]=$!
  disown "${PIDS[$i]}"
  wait_until 20 "node-$i healthy" curl -sf "$(URL "$i")/health"
}

# wait_until SECONDS WHAT COMMAND...: retry COMMAND until it succeeds or the deadline passes.
wait_until() {
  local limit=$1 what=$2; shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -ge $deadline ] && fail "timed out after ${limit}s waiting for $what"
    sleep 0.1
  done
}

status_of() { curl -s -o /dev/null -w '%{http_code}' "$@"; }
expect_status() {  # expect_status CODE WHAT CURL-ARGS...
  local want=$1 what=$2; shift 2
  local got; got=$(status_of "$@")
  [ "$got" = "$want" ] || fail "$what: expected HTTP $want, got $got"
  pass "$what -> $want"
}
value_on() { curl -sf "$(URL "$1")/kv/$2?raw=true"; }
same_value_everywhere() {
  local key=$1 want=$2
  for i in 0 1 2; do [ "$(value_on "$i" "$key")" = "$want" ] || return 1; done
}
roots_equal() {
  local r0 r1 r2
  r0=$(curl -sf "$(URL 0)/cluster/status" | json merkle_root)
  r1=$(curl -sf "$(URL 1)/cluster/status" | json merkle_root)
  r2=$(curl -sf "$(URL 2)/cluster/status" | json merkle_root)
  [ "$r0" = "$r1" ] && [ "$r1" = "$r2" ]
}
all_alive() {
  local n; n=$(curl -sf "$(URL "$1")/cluster/members" | "$PY" -c 'import json,sys; print(sum(m["state"]=="alive" for m in json.load(sys.stdin)))')
  [ "$n" = 3 ]
}

step "start a 3-node cluster on ports ${PORTS[*]}"
for i in 0 1 2; do start_node "$i"; done
for i in 0 1 2; do wait_until 20 "node-$i to see 3 alive members" all_alive "$i"; done
pass "3 nodes alive"

N0=$(URL 0)
step "single-node CRUD"
kvs put --node "$N0" greeting '"hello"' >/dev/null
[ "$(kvs get --node "$N0" --raw greeting)" = hello ] || fail "get after put"
pass "put/get"
kvs put --node "$N0" cfg/a '{"x": 1}' >/dev/null
kvs put --node "$N0" cfg/b 2 >/dev/null
[ "$(kvs ls --node "$N0" cfg/)" = "$(printf 'cfg/a\ncfg/b')" ] || fail "ls cfg/"
pass "ls"
kvs delete --node "$N0" cfg/b >/dev/null
set +e; kvs get --node "$N0" cfg/b >/dev/null 2>&1; rc=$?; set -e
[ $rc = 3 ] || fail "get of a deleted key should exit 3, got $rc"
pass "delete, then get exits 3"
expect_status 400 "bad JSON" -X PUT -d '{nope' "$N0/kv/x"
expect_status 404 "absent key" "$N0/kv/never-written"

step "CAS: every condition"
idx=$(curl -sf -X PUT -d '{"value": 1, "cas": 0}' "$N0/kv/cas/k" | json modify_index)
pass "cas=0 create-only"
expect_status 409 "cas=0 on an existing key" -X PUT -d '{"value": 9, "cas": 0}' "$N0/kv/cas/k"
ver=$(curl -sf -X PUT -d "{\"value\": 2, \"cas\": $idx}" "$N0/kv/cas/k" | json version)
pass "cas=modify_index"
expect_status 409 "stale cas index" -X PUT -d "{\"value\": 9, \"cas\": $idx}" "$N0/kv/cas/k"
ts=$(curl -sf -X PUT -d "{\"value\": 3, \"if_version\": \"$ver\"}" "$N0/kv/cas/k" | json timestamp)
pass "if_version"
curl -sf -X PUT -d "{\"value\": 4, \"if_timestamp\": $ts}" "$N0/kv/cas/k" >/dev/null || fail "if_timestamp"
pass "if_timestamp"
curl -sf -X PUT -d '{"value": 5, "if_value": 4}' "$N0/kv/cas/k" >/dev/null || fail "if_value"
pass "if_value"
expect_status 409 "if_value mismatch" -X PUT -d '{"value": 6, "if_value": 4}' "$N0/kv/cas/k"
expect_status 404 "condition on an absent key" -X PUT -d '{"value": 1, "cas": 3}' "$N0/kv/cas/none"
set +e; kvs cas --node "$N0" cas/k 7 --if-value 4 >/dev/null 2>&1; rc=$?; set -e
[ $rc = 4 ] || fail "CLI CAS conflict should exit 4, got $rc"
pass "CLI cas conflict exits 4"
expect_status 409 "txn with a failing check writes nothing" -X POST \
  -d '{"ops": [{"op": "set", "key": "cas/t", "value": 1}, {"op": "check", "key": "cas/k", "if_value": 0}]}' "$N0/txn"
expect_status 404 "...so cas/t does not exist" "$N0/kv/cas/t"

step "concurrent CAS: 16 clients increment one counter on one node"
curl -sf -X PUT -d '{"value": 0}' "$N0/kv/counter" >/dev/null
"$PY" - "$N0" <<'PYEOF' || fail "concurrent CAS counter"
import json, sys, threading, time, urllib.request, urllib.error
url = sys.argv[1] + "/kv/counter"
ok = []
def worker():
    deadline = time.time() + 3
    while time.time() < deadline:
        cur = json.load(urllib.request.urlopen(url))
        body = json.dumps({"value": cur["value"] + 1, "cas": cur["modify_index"]}).encode()
        req = urllib.request.Request(url, data=body, method="PUT")
        try:
            urllib.request.urlopen(req)
            ok.append(cur["modify_index"])
        except urllib.error.HTTPError as e:
            assert e.code == 409, e.code
threads = [threading.Thread(target=worker) for _ in range(16)]
[t.start() for t in threads]; [t.join() for t in threads]
final = json.load(urllib.request.urlopen(url))["value"]
assert final == len(ok), (final, len(ok))
assert len(set(ok)) == len(ok), "two successes shared an expected index"
print(f"  ok: {len(ok)} successful CAS increments, final value {final}")
PYEOF

step "replication"
kvs put --node "$N0" repl/x '"everywhere"' >/dev/null
wait_until 5 "repl/x on all nodes" same_value_everywhere repl/x everywhere
pass "a write on node-0 is readable on node-1 and node-2"
wait_until 15 "identical Merkle roots" roots_equal
pass "Merkle roots equal"

step "TTL"
curl -sf -X PUT -d '{"value": "lease", "ttl": 1}' "$N0/kv/ttl/k" >/dev/null
wait_until 5 "ttl/k on all nodes" same_value_everywhere ttl/k lease
gone_everywhere() { for i in 0 1 2; do [ "$(status_of "$(URL "$i")/kv/ttl/k")" = 404 ] || return 1; done; }
wait_until 5 "ttl/k to expire on all nodes" gone_everywhere
pass "expired on every node"

step "history"
for v in 1 2 3; do curl -sf -X PUT -d "{\"value\": $v}" "$N0/kv/hist" >/dev/null; done
n=$(curl -sf "$N0/kv/hist?history=true" | "$PY" -c 'import json,sys; print(len(json.load(sys.stdin)["revisions"]))')
[ "$n" = 3 ] || fail "history should hold 3 revisions, has $n"
pass "3 revisions, newest first"

step "quorum CAS (consistency=quorum): one sequence across the nodes"
s1=$(kvs put --node "$N0" --consistency quorum q/leader '"a"' | json seq)
[ "$s1" = 1 ] || fail "the first quorum write should be seq 1, got $s1"
[ "$(kvs get --node "$(URL 1)" --consistency quorum q/leader | json seq)" = 1 ] || fail "quorum read on node-1"
kvs cas --node "$(URL 2)" --consistency quorum --if-seq 1 q/leader '"b"' >/dev/null || fail "if_seq 1 on node-2"
set +e; kvs cas --node "$N0" --consistency quorum --if-seq 1 q/leader '"c"' >/dev/null 2>&1; rc=$?; set -e
[ "$rc" = 4 ] || fail "a stale if_seq on node-0 should be a CAS conflict (exit 4), got $rc"
[ "$(kvs get --node "$N0" --consistency quorum --raw q/leader)" = b ] || fail "quorum read after the refused CAS"
pass "seq 1 -> 2 through three nodes; a stale if_seq refused on another"
expect_status 409 "a local write to a quorum key" -X PUT -d '{"value": "x"}' "$N0/kv/q/leader"
expect_status 400 "cas=N with consistency=quorum" -X PUT -d '{"value": "x", "cas": 3, "consistency": "quorum"}' "$N0/kv/q/leader"

step "conflict convergence: concurrent writes on two isolated nodes"
# Isolate by stopping nodes: node-1 down while node-0 writes, then node-0 down while node-1 writes.
curl -sf -X PUT -d '{"value": "base"}' "$N0/kv/conflict" >/dev/null
wait_until 5 "base everywhere" same_value_everywhere conflict base
base=$(curl -sf "$N0/kv/conflict" | json version)
kill -9 "${PIDS[1]}"; kill -9 "${PIDS[2]}"
va=$(curl -sf -X PUT -d "{\"value\": \"A\", \"if_version\": \"$base\"}" "$N0/kv/conflict" | json version)
kill -9 "${PIDS[0]}"
start_node 1
vb=$(curl -sf -X PUT -d "{\"value\": \"B\", \"if_version\": \"$base\"}" "$(URL 1)/kv/conflict" | json version)
pass "both CAS writes on if_version=$base succeeded (vA=$va, vB=$vb)"
step "restart: the killed nodes come back with their data and converge"
start_node 0; start_node 2
for i in 0 1 2; do wait_until 20 "node-$i to see 3 alive members" all_alive "$i"; done
wait_until 20 "identical Merkle roots after restart" roots_equal
winner=$(curl -sf "$N0/kv/conflict" | json version)
for i in 1 2; do [ "$(curl -sf "$(URL "$i")/kv/conflict" | json version)" = "$winner" ] || fail "node-$i has another winner"; done
[ "$winner" = "$vb" ] || fail "the later write (vB) should win the conflict order, got $winner"
loser_superseded=$(curl -sf "$(URL 2)/kv/conflict?history=true" | "$PY" -c "
import json,sys
r = json.load(sys.stdin)['revisions']
print([x['superseded'] for x in r if x['version'] == '$va'])")
[ "$loser_superseded" = "[True]" ] || fail "the losing version should be in history, superseded: $loser_superseded"
pass "winner $winner everywhere; loser kept in history with superseded=true"
[ "$(value_on 0 greeting)" = hello ] || fail "data written before the restart is gone"
pass "data survives restart"

step "kvs cluster up"
CU_PORT=$(free_port 2)
"$PY" -m kvs cluster up --nodes 2 --base-port "$CU_PORT" --dir "$WORK/cluster-up" >"$WORK/cluster-up.log" 2>&1 &
CU_PID=$!; PIDS+=("$CU_PID"); disown "$CU_PID"
wait_until 30 "kvs cluster up to report the cluster" grep -q "cluster of 2 nodes is up" "$WORK/cluster-up.log"
curl -sf -X PUT -d '{"value": 1}' "http://127.0.0.1:$CU_PORT/kv/up" >/dev/null || fail "write to cluster-up node"
kill -INT "$CU_PID"
wait_until 15 "kvs cluster up to stop its nodes" bash -c "! kill -0 $CU_PID 2>/dev/null"
pass "started, served, stopped on Ctrl-C"

echo
echo "integration: all checks passed"
