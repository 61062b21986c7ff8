#!/usr/bin/env bash
# test_replica_loss.sh BINDIR SRCDIR - every replica of some ranges killed at
# once: those ranges wait, nothing is lost, and the job finishes once the
# servers are back.
#
# A local cluster (scripts/cluster.sh: etcd, 2 coordinators, 3 servers, 2
# workers, lease TTL 3 s, Fashion-MNIST in 4 shards) trains softmax
# regression (BSP, SGD, batch 100, 8 epochs) with `replication = 2`.  Once
# every range has an in-sync backup, two of the three servers are SIGKILLed
# together: every range they both held lost its whole replica set.  Checks:
#  - past the lease TTL, a range with a live in-sync replica is led by it,
#    and a range whose every in-sync replica is dead stays led by one of them
#    and waits (it is never handed to a server that does not hold it); the
#    job stays running;
#  - both servers are started again from their stores: the waiting ranges
#    are led again (from the store of a replica that was in sync: a backup
#    logs an update before it confirms it, so that store holds every
#    acknowledged update), and the job finishes;
#  - in the assignment at the job's end, every in-sync replica of every
#    range holding rows, read from its store, applied exactly one push per
#    batch (8 x 4 x 150 = 4800) and holds the same rows as the others;
#  - s3, never killed, ends with a store less than 16 MiB larger than before
#    the job (snapshots taken as the log grows keep it small).
# DURABILITY (default disk) and EPOCHS (default 8) in the environment change
# the job's durability and epochs (test_replica_loss_replicas.sh: under
# `replicas` the stores may lack acknowledged updates, and the servers hold
# their restored ranges until the leader has rewound the shards).
set -u
bindir=$1
srcdir=$2
. "$srcdir/tests/lib/assert.sh"

. "$srcdir/tests/lib/cluster_job.sh"

durability=${DURABILITY:-disk}
epochs=${EPOCHS:-8}
up_and_submit 3 "$epochs" 2
s3_store=$(stat -c %s "$dir/data/server-s3/data.mdb")

if wait_for 60 all_in_sync; then ok; else fail "the ranges did not all get an in-sync backup"; fi
past_a_tenth() { local n; n=$(done_batches) && [ "${n:-0}" -ge 480 ]; }
if wait_for 120 past_a_tenth; then ok; else
    fail "r1 did not get a tenth of the way" "$(kc job show r1 2>&1 | tail -n 12)"
fi

# --- two of three servers SIGKILLed together ---------------------------------------------
cl etcdctl --dir "$dir" get --print-value-only /keel/t/assignment >"$tmp/before.json"
# One kill(1) for both: with failover faster than the lease, a survivor of two kills made
# one after the other could copy its ranges to s3 in between.
p1=$(cat "$dir/pids/server-s1.pid") p2=$(cat "$dir/pids/server-s2.pid")
kill -KILL "$p1" "$p2" && ok || fail "cannot SIGKILL s1 and s2 ($p1 $p2)"
lost=$(python3 -c 'import json,sys
a = json.load(open(sys.argv[1]))
print(sum(set(a["servers"][i] for i in r) <= {"s1", "s2"} for r in a["ranges"]))' "$tmp/before.json")
echo "s1 and s2 SIGKILLed at $(done_batches) of $((600 * epochs)) batches: $lost ranges lost every replica"
[ "${lost:-0}" -gt 0 ] && ok || fail "no range had both its replicas on s1 and s2"
# Past the TTL: ranges with s3 in sync are led by s3; the others wait as they were.
failed_over() {
    cl etcdctl --dir "$dir" get --print-value-only /keel/t/assignment >"$tmp/after.json" 2>/dev/null
    python3 - "$tmp/before.json" "$tmp/after.json" >"$tmp/failover.out" 2>&1 <<'PY'
import json, sys
b = json.load(open(sys.argv[1])); a = json.load(open(sys.argv[2]))
ids = lambda t, r: [t["servers"][i] for i in t["ranges"][r]]
assert a["version"] > b["version"], "no new version"
for r in range(256):
    old, new = ids(b, r), ids(a, r)
    if "s3" in old[:b["insync"][r]]:
        assert new[0] == "s3", (r, old, b["insync"][r], new, a["insync"][r])
    else:
        # led by one of its old in-sync replicas, both dead now: it waits for them
        # (the two leases may expire a tick apart: the first death promotes the other)
        assert new[0] in old[:b["insync"][r]] and "s3" not in new[:a["insync"][r]], \
            (r, old, new, a["insync"][r])
PY
}
if wait_for 20 failed_over; then ok; else
    fail "the assignment did not fail over as the rules say" "$(tail -n 2 "$tmp/failover.out")"
fi
sleep 5
[ "$(job_field state)" = running ] && ok || fail "r1 is '$(job_field state)', not running, with ranges waiting"

# --- both started again from their stores: the waiting ranges are led again -------------
for s in s1 s2; do
    run cl start --dir "$dir" server "$s"
    expect_status 0 "start server $s again"
done
t0=$(now_ms)
at=$(done_batches)
moved() { local n; n=$(done_batches) && [ "${n:-0}" -gt "$((at + 20))" ]; }
if wait_for 60 moved; then
    echo "training moved again $(($(now_ms) - t0)) ms after s1 and s2 were started again"
    ok
else
    fail "no progress after s1 and s2 came back" "$(kc job show r1 2>&1 | tail -n 12)"
fi
restored() { grep -qE "restored from the store" "$dir/logs/server-s1.log" "$dir/logs/server-s2.log"; }
if wait_for 30 restored; then ok; else
    fail "neither s1 nor s2 says it restored ranges from its store" "$(grep -h opened "$dir"/logs/server-s[12].log)"
fi
done_then_check $((600 * epochs)) $((epochs - 1))
# s3 ran through the whole job: its store grew by a few snapshots' worth of
# its ranges, not by the gradients logged over a 30 s snapshot interval
# (snapshots are also taken once the log reaches [server]
# snapshot_log_factor x the state they hold; 1.8 MiB of growth seen).
grown=$(($(stat -c %s "$dir/data/server-s3/data.mdb") - s3_store))
echo "s3's store grew by $((grown / 1024)) KiB over the job"
[ "$grown" -lt $((16 << 20)) ] && ok || fail "s3's store grew by $((grown >> 20)) MiB over the job"
finish
