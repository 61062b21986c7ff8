#!/usr/bin/env bash
# test_restart.sh BINDIR SRCDIR - the whole cluster killed with SIGKILL in the
# middle of a job, and started again from its directory.
#
# A local cluster (scripts/cluster.sh: etcd, 2 coordinators, 2 servers, 2
# workers, Fashion-MNIST in 4 shards) trains softmax regression (BSP, SGD,
# batch 100, 8 epochs).  A tenth of the way in, server s1 is SIGKILLed and
# started 2 s later (the workers retry until it is back; it restores its
# ranges from its store); then the leading coordinator is SIGKILLed (the
# other takes over) and started again.  A fifth of the way in, every process
# is SIGKILLed within a few milliseconds (etcd too), and
# `cluster.sh start` brings the whole cluster back.  Checks: the job then
# finishes with every shard done and a test accuracy above 0.75; and, read
# from the stopped servers' stores (snapshot + log replay, as a server
# restores), every range that holds rows applied exactly one push per batch
# of the job (8 epochs x 4 shards x 150 batches = 4800) and records every
# shard at the end of the last pass: nothing acknowledged before the crash
# was lost, and nothing pushed again after it was applied twice.  Last, the
# checkpoint each server took when the job was done verifies with the cluster
# key, and its NumPy export scores on the test images what the workers reported;
# and the job rolled back to the checkpoints of clock 200 (keelctl job rollback;
# a checkpoint every 200 clocks, so that the 10 a server keeps still hold it)
# trains again from there and ends with every range at one push per batch.
set -u
bindir=$1
srcdir=$2
. "$srcdir/tests/lib/assert.sh"

. "$srcdir/tests/lib/cluster_job.sh"

# --- a cluster and a job ---------------------------------------------------------------
run cl up --dir "$dir" --bin "$bindir" --servers 2 --workers 2 --shards 4 --name t
require_status 0 "cluster up"
cfg=$run_out
past_a_fifth() { local n; n=$(done_batches) && [ "${n:-0}" -ge 960 ]; }

sed -e 's/^name = .*/name = r1/' -e 's/^epochs = .*/epochs = 8/' \
    -e 's/^shards = 4$/shards = 4\ncheckpoint_interval = 200/' \
    "$srcdir/examples/fashion-mnist-softmax.ini" >"$tmp/job.ini"
grep -q '^checkpoint_interval = 200$' "$tmp/job.ini" || fail "could not set the checkpoint interval"
sed -n '/^\[job\]/,$p' "$tmp/job.ini" | grep -q '^batch_size = 100$' ||
    fail "the example's batch size is no longer 100: the counts below assume it"
run kc job submit "$tmp/job.ini"
expect_status 0 "submit r1"
past_a_tenth() { local n; n=$(done_batches) && [ "${n:-0}" -ge 480 ]; }
# --- one server SIGKILLed and started again: the workers wait for it -----------------
if wait_for 120 past_a_tenth; then ok; else
    fail "r1 did not get a tenth of the way" "$(kc job show r1 2>&1 | tail -n 12)"
fi
run cl kill --dir "$dir" server s1
expect_status 0 "SIGKILL server s1"
at=$(done_batches)
sleep 2
run cl start --dir "$dir" server s1
expect_status 0 "start server s1 again"
t0=$(now_ms)
moved() { local n; n=$(done_batches) && [ "${n:-0}" -gt "$((at + 40))" ]; }
if wait_for 60 moved; then
    echo "server s1 SIGKILLed at $at of 4800 batches, down 2 s; progress again $(($(now_ms) - t0)) ms after its restart"
    ok
else
    fail "no progress after s1's restart" "$(tail -n 5 "$dir/logs/server-s1.log")"
fi
# s1's ranges that had taken pushes came back from its store, not the initializer.
# (Progress can move on lagging reports before s1 has taken its ranges up: wait for its line.)
restored() { grep -qE "opened [0-9]+ range\(s\) \([1-9][0-9]* restored from the store" "$dir/logs/server-s1.log"; }
if wait_for 60 restored; then ok; else
    fail "s1 does not say it restored its ranges from its store" "$(grep "opened" "$dir/logs/server-s1.log")"
fi

# --- the leading coordinator SIGKILLed: the other takes over, training goes on -------
leader() { bash "$cluster" etcdctl --dir "$dir" get --print-value-only /keel/t/leader 2>/dev/null |
    sed -n 's/.*"id":"\([^"]*\)".*/\1/p'; }
lead=$(leader)
case $lead in c1) other=c2 ;; c2) other=c1 ;; *) other='' && fail "no leader to kill: '$lead'" ;; esac
if [ -n "$other" ]; then
    run cl kill --dir "$dir" coordinator "$lead"
    expect_status 0 "SIGKILL the leading coordinator $lead"
    t0=$(now_ms)
    leads_other() { [ "$(leader)" = "$other" ]; }
    if wait_for 30 leads_other; then
        echo "coordinator $other leads $(($(now_ms) - t0)) ms after $lead's SIGKILL"
        ok
    else
        fail "$other did not take over from $lead" "$(tail -n 5 "$dir/logs/coordinator-$other.log")"
    fi
    run cl start --dir "$dir" coordinator "$lead"
    expect_status 0 "start coordinator $lead again"
fi

if wait_for 120 past_a_fifth; then ok; else
    fail "r1 did not get a fifth of the way" "$(kc job show r1 2>&1 | tail -n 12)"
fi
before=$(done_batches)

# --- everything SIGKILLed at once, then started again --------------------------------
pids=()
for f in "$dir"/pids/*.pid; do pids+=("$(cat "$f")"); done
kill -KILL "${pids[@]}"
echo "SIGKILLed ${#pids[@]} processes (etcd, coordinators, servers, workers) at $before of 4800 batches"
for p in "${pids[@]}"; do
    if wait_for 10 eval "! kill -0 $p 2>/dev/null || grep -q '^State:.*Z' /proc/$p/status"; then
        ok
    else
        fail "process $p outlived SIGKILL"
    fi
done
t0=$(now_ms)
run cl start --dir "$dir"
expect_status 0 "the whole cluster starts again"
state_done() { [ "$(job_field state)" = done ]; }
if wait_for 240 state_done; then
    echo "r1 done $(($(now_ms) - t0)) ms after the restart"
    ok
else
    fail "r1 did not finish after the restart" "$(kc job show r1 2>&1 | tail -n 15)"
fi
run kc job show r1 --json
expect_status 0 "job show r1"
printf '%s\n' "$run_out" >"$tmp/show.json"
run python3 -c 'import json,sys
j = json.load(open(sys.argv[1]))
assert j["shards_done"] == 4, j["shards_done"]
curve = j["accuracy_curve"]
assert curve and curve[-1]["pass"] == 7, curve
print("accuracy %.4f" % curve[-1]["accuracy"])' "$tmp/show.json"
expect_status 0 "every shard done, an accuracy for the last pass"
acc=$(sed -n 's/^accuracy //p' <<<"$run_out")
echo "test accuracy after 8 epochs through a whole-cluster SIGKILL: $acc"
if python3 -c "import sys; sys.exit(0 if float('${acc:-0}') > 0.75 else 1)"; then ok; else
    fail "test accuracy '$acc' is not above 0.75"
fi

# --- the stores: one push per batch, each shard at its end -----------------------------
run cl down --dir "$dir"
expect_status 0 "cluster down"
check_stores 4800 7
seq_end=$("$helper" seq 7 150) # the end of pass 7, for the replay below

# --- the checkpoints: taken by each server when the job was done, signed, exported ---------
# Each server checkpoints its own ranges (the job's final one labelled with its last
# clock); together the two exports are the whole model, and scoring the exported
# rows on the 10,000 test images gives the accuracy the workers reported.
key=$dir/certs/cluster.key
for s in s1 s2; do
    store=$dir/data/server-$s
    run "$bindir/keelctl" checkpoint list --store "$store" --json
    expect_status 0 "list the checkpoints of $s"
    last=$(/usr/bin/python3 -c 'import json,sys; c=json.load(sys.stdin); print(c[-1]["id"] if c and c[-1]["job"] == "r1" else "")' <<<"$run_out")
    if [ -n "$last" ]; then ok; else fail "$s took no checkpoint of r1" "$run_out"; continue; fi
    grep -q "checkpoint $last at clock [0-9]* (the job is done)" "$dir/logs/server-$s.log" && ok ||
        fail "$s does not log its checkpoint $last at the job's end" "$(grep checkpoint "$dir/logs/server-$s.log")"
    run "$bindir/keelctl" checkpoint verify "$last" --store "$store" --key "$key"
    expect_status 0 "verify checkpoint $last of $s with the cluster key"
    run "$bindir/keelctl" checkpoint export "$last" --store "$store" --key "$key" --out "$tmp/export-$s"
    expect_status 0 "export checkpoint $last of $s"
done
score() {
    /usr/bin/python3 - "$tmp/export-s1" "$tmp/export-s2" "$data" <<'PY'
import gzip, sys, numpy as np
keys = np.concatenate([np.load(d + "/table_1.keys.npy") for d in sys.argv[1:3]])
rows = np.concatenate([np.load(d + "/table_1.npy") for d in sys.argv[1:3]])
order = np.argsort(keys)
keys, rows = keys[order], rows[order]
assert list(keys) == [(1 << 48) | r for r in range(10)], keys
assert rows.shape == (10, 785), rows.shape
with gzip.open(sys.argv[3] + "/t10k-images-idx3-ubyte.gz") as f:
    x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 784).astype(np.float32) / 255
with gzip.open(sys.argv[3] + "/t10k-labels-idx1-ubyte.gz") as f:
    y = np.frombuffer(f.read(), np.uint8, offset=8)
pred = np.argmax(x @ rows[:, :784].T + rows[:, 784], axis=1)
print("%.4f" % (pred == y).mean())
PY
}
run score
expect_status 0 "score the exported model"
echo "the exported checkpoints score $run_out on the test set (the workers reported $acc)"
if /usr/bin/python3 -c "import sys; sys.exit(0 if abs(float('${run_out:-0}') - float('${acc:-0}')) < 0.02 else 1)"; then
    ok
else
    fail "the exported model scores '$run_out', the job reported '$acc'"
fi

# --- rolled back to the checkpoints of clock 200 and trained again from there ------------
# Servers and workers stopped, `keelctl job rollback` restores both stores' checkpoints of
# clock 200 and makes r1 pending at the lowest positions they hold; started again, the job
# replays the rest.  Every range must end as if nothing had happened: one push per batch.
run cl start --dir "$dir"
expect_status 0 "the cluster starts again for the rollback"
for n in "worker w1" "worker w2" "server s1" "server s2"; do
    run cl kill --dir "$dir" $n
    expect_status 0 "stop $n"
done
run "$bindir/keelctl" --config "$cfg" job rollback r1 --clock 200 --key "$key" \
    --store "$dir/data/server-s1" --store "$dir/data/server-s2"
expect_status 0 "roll r1 back to clock 200"
expect_out "job 'r1' \(was done\) is pending again, rolled back to clock 200" "r1 is pending again"
echo "$run_out" | tail -n 2
for n in "server s1" "server s2" "worker w1" "worker w2"; do
    run cl start --dir "$dir" $n
    expect_status 0 "start $n again"
done
t0=$(now_ms)
if wait_for 120 state_done; then
    echo "r1 done again $(($(now_ms) - t0)) ms after the rollback"
    ok
else
    fail "r1 did not finish after the rollback" "$(kc job show r1 2>&1 | tail -n 15)"
fi
run cl down --dir "$dir"
expect_status 0 "cluster down after the replay"
# Each store holds every range's checkpoint after the rollback; a range's rows are
# the copy of the server that led it in the replay: the one with the highest LSN.
declare -A best_lsn=() best_rest=() best_rows=()
for s in s1 s2; do
    run "$helper" dump --store "$dir/data/server-$s" --spec "$tmp/job.ini"
    expect_status 0 "dump the ranges of $s after the replay"
    while read -r _ range _ lsn _ nrows rest; do
        [ -n "${nrows:-}" ] && [ "$nrows" -gt 0 ] || continue
        if [ "$lsn" -gt "${best_lsn[$range]:-0}" ]; then
            best_lsn[$range]=$lsn best_rest[$range]=$rest best_rows[$range]=$nrows
        fi
    done <<<"$run_out"
done
rows=0
for range in "${!best_lsn[@]}"; do
    rows=$((rows + best_rows[$range]))
    if [ "${best_lsn[$range]}" = 4800 ]; then ok; else
        fail "range $range after the replay: ${best_lsn[$range]} pushes applied, expected 4800"
    fi
    for shard in 0 1 2 3; do
        if grep -q "shard $shard seq $seq_end " <<<"${best_rest[$range]} "; then ok; else
            fail "range $range after the replay: shard $shard is not at the end" "${best_rest[$range]}"
        fi
    done
done
[ "$rows" = 10 ] && ok || fail "after the replay the ranges hold $rows rows, expected 10"

finish
