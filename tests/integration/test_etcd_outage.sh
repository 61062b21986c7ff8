#!/usr/bin/env bash
# test_etcd_outage.sh BINDIR SRCDIR - etcd gone for ten lease TTLs in the
# middle of a job, then back: the job runs again within seconds, with no
# operator action, and finishes with exactly one update per batch.
#
# A local cluster (scripts/cluster.sh: etcd, 2 coordinators, 2 servers, 2
# workers, lease TTL 3 s, Fashion-MNIST in 4 shards) trains softmax
# regression (BSP, SGD, batch 100, 60 epochs, `durability = disk`: a pace at
# which the job outlasts the outage).  A tenth of the way in, etcd is
# SIGKILLed and started again 30 s later from its data directory.  Every
# node's lease is lost during the outage (it is ten TTLs long); checks:
#  - every server and worker registers again with a higher incarnation;
#  - the job's recorded progress moves again within 10 s of etcd's return;
#  - the job finishes, and read from the stopped servers' stores every range
#    applied exactly one push per batch (60 epochs x 4 shards x 150 = 36000).
set -u
bindir=$1
srcdir=$2
. "$srcdir/tests/lib/assert.sh"

. "$srcdir/tests/lib/cluster_job.sh"

outage_s=30
ttl_s=3

run cl up --dir "$dir" --bin "$bindir" --servers 2 --workers 2 --shards 4 --name t \
    --lease-ttl "${ttl_s}s"
require_status 0 "cluster up"
cfg=$run_out
# incarnation ROLE ID: the incarnation in the member key, "" when absent.
incarnation() {
    cl etcdctl --dir "$dir" get --print-value-only "/keel/t/members/$1/$2" 2>/dev/null |
        sed -n 's/.*"incarnation":\([0-9]*\).*/\1/p'
}

sed -e 's/^name = .*/name = r1/' -e 's/^epochs = .*/epochs = 60/' \
    -e 's/^replication = \(.*\)/replication = \1\ndurability = disk/' \
    "$srcdir/examples/fashion-mnist-softmax.ini" >"$tmp/job.ini"
sed -n '/^\[job\]/,$p' "$tmp/job.ini" | grep -q '^batch_size = 100$' ||
    fail "the example's batch size is no longer 100: the counts below assume it"
run kc job submit "$tmp/job.ini"
expect_status 0 "submit r1"
past_a_tenth() { local n; n=$(done_batches) && [ "${n:-0}" -ge 3600 ]; }
if wait_for 120 past_a_tenth; then ok; else
    fail "r1 did not get a tenth of the way" "$(kc job show r1 2>&1 | tail -n 12)"
fi
declare -A inc=()
for m in server/s1 server/s2 worker/w1 worker/w2; do inc[$m]=$(incarnation "${m%/*}" "${m#*/}"); done

# --- etcd SIGKILLed, down for ten TTLs ------------------------------------------------
run cl kill --dir "$dir" etcd
expect_status 0 "SIGKILL etcd"
at=$(date +%s)
sleep "$outage_s"
run cl start --dir "$dir" etcd
expect_status 0 "start etcd again after ${outage_s}s"
t0=$(now_ms)
echo "etcd down for $(($(date +%s) - at)) s (lease TTL ${ttl_s} s)"

# Every node lost its lease in the outage and registers again, as a new incarnation.
for m in "${!inc[@]}"; do
    newer() { local n; n=$(incarnation "${m%/*}" "${m#*/}") && [ -n "$n" ] && [ "$n" -gt "${inc[$m]:-0}" ]; }
    if wait_for 20 newer; then ok; else
        fail "$m did not register again after the outage (incarnation was ${inc[$m]:-none}, now '$(incarnation "${m%/*}" "${m#*/}")')" \
            "$(tail -n 8 "$dir/logs/${m%/*}-${m#*/}.log")"
    fi
done
back=$(done_batches)
moved() { local n; n=$(done_batches) && [ "${n:-0}" -gt "$((back + 20))" ]; }
if wait_for 10 moved; then
    echo "training moved again $(($(now_ms) - t0)) ms after etcd's return (at $back of 36000 batches)"
    ok
else
    fail "no progress within 10 s of etcd's return (at $back of 36000 batches)" \
        "$(kc job show r1 2>&1 | tail -n 12)"
fi
state_done() { [ "$(job_field state)" = done ]; }
if wait_for 240 state_done; then ok; else
    fail "r1 did not finish after the outage" "$(kc job show r1 2>&1 | tail -n 15)"
fi

# --- the stores: one push per batch, each shard at its end ----------------------------
run cl down --dir "$dir"
expect_status 0 "cluster down"
check_stores 36000 59

finish
