#!/usr/bin/env bash
# test_etcd_outage.sh BINDIR SRCDIR - etcd gone for ten lease TTLs in the
# middle of a job, then back: the job runs again within seconds, with no
# operator action, and finishes with exactly one update per batch.
#
# A local cluster (scripts/cluster.sh: etcd, 2 coordinators, 2 servers, 2
# workers, lease TTL 3 s, Fashion-MNIST in 4 shards) trains softmax
# regression (BSP, SGD, batch 100, 3 epochs).  A tenth of the way in, etcd is
# SIGKILLed and started again 30 s later from its data directory.  Every
# node's lease is lost during the outage (it is ten TTLs long); checks:
#  - every server and worker registers again with a higher incarnation;
#  - the job's recorded progress moves again within 10 s of etcd's return;
#  - the job finishes, and read from the stopped servers' stores every range
#    applied exactly one push per batch (3 epochs x 4 shards x 150 = 1800).
set -u
bindir=$1
srcdir=$2
. "$srcdir/tests/lib/assert.sh"

cluster=$srcdir/scripts/cluster.sh
helper=$bindir/keel-test-train
data=/usr/share/datasets/fashion-mnist
. "$srcdir/tests/lib/procs.sh"
dir=$tmp/c
cleanup() {
    [ -f "$dir/cluster.env" ] && bash "$cluster" down --dir "$dir" --timeout 5 >/dev/null 2>&1
    procs_cleanup
}
trap cleanup EXIT

if [ ! -r "$data/train-images-idx3-ubyte.gz" ]; then
    echo "SKIP: Fashion-MNIST is not installed in $data"
    exit 0
fi

cl() { bash "$cluster" "$@"; }
outage_s=30
ttl_s=3

run cl up --dir "$dir" --bin "$bindir" --servers 2 --workers 2 --shards 4 --name t \
    --lease-ttl "${ttl_s}s"
expect_status 0 "cluster up"
cfg=$run_out
kc() { "$bindir/keelctl" --config "$cfg" "$@"; }
job_field() {
    kc job show r1 --json 2>/dev/null |
        python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1" 2>/dev/null
}
# done_batches: batches the shards' recorded positions are past, over every pass.
done_batches() {
    kc job show r1 --json 2>/dev/null | python3 -c 'import json,sys
j = json.load(sys.stdin)
print(sum(s["pass"] * 150 + s["batch"] for s in j["shard_leases"]))' 2>/dev/null
}
# incarnation ROLE ID: the incarnation in the member key, "" when absent.
incarnation() {
    cl etcdctl --dir "$dir" get --print-value-only "/keel/t/members/$1/$2" 2>/dev/null |
        sed -n 's/.*"incarnation":\([0-9]*\).*/\1/p'
}

sed -e 's/^name = .*/name = r1/' -e 's/^epochs = .*/epochs = 3/' \
    "$srcdir/examples/fashion-mnist-softmax.ini" >"$tmp/job.ini"
sed -n '/^\[job\]/,$p' "$tmp/job.ini" | grep -q '^batch_size = 100$' ||
    fail "the example's batch size is no longer 100: the counts below assume it"
run kc job submit "$tmp/job.ini"
expect_status 0 "submit r1"
past_a_tenth() { local n; n=$(done_batches) && [ "${n:-0}" -ge 180 ]; }
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
    echo "training moved again $(($(now_ms) - t0)) ms after etcd's return (at $back of 1800 batches)"
    ok
else
    fail "no progress within 10 s of etcd's return (at $back of 1800 batches)" \
        "$(kc job show r1 2>&1 | tail -n 12)"
fi
state_done() { [ "$(job_field state)" = done ]; }
if wait_for 240 state_done; then ok; else
    fail "r1 did not finish after the outage" "$(kc job show r1 2>&1 | tail -n 15)"
fi

# --- the stores: one push per batch, each shard at its end ----------------------------
run cl down --dir "$dir"
expect_status 0 "cluster down"
seq_end=$("$helper" seq 2 150)
rows=0
for s in s1 s2; do
    run "$helper" dump --store "$dir/data/server-$s" --spec "$tmp/job.ini"
    expect_status 0 "dump the ranges of $s"
    while read -r _ range _ lsn _ nrows rest; do
        [ -n "${nrows:-}" ] && [ "$nrows" -gt 0 ] || continue
        rows=$((rows + nrows))
        if [ "$lsn" = 1800 ]; then ok; else
            fail "$s range $range: $lsn pushes applied, expected 1800 (one per batch)"
        fi
        for shard in 0 1 2 3; do
            if grep -q "shard $shard seq $seq_end " <<<"$rest "; then ok; else
                fail "$s range $range: shard $shard is not at the end of pass 2" "$rest"
            fi
        done
    done <<<"$run_out"
done
[ "$rows" = 10 ] && ok || fail "the servers hold $rows rows of the model, expected 10"

finish
