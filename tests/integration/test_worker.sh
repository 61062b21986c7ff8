#!/usr/bin/env bash
# test_worker.sh BINDIR SRCDIR - keel-worker against the real stack minus the
# coordinator: a real etcd, certificates from keelctl, three keel-server
# processes (s2 and s3 hold the parameters; s1 and s3 hold Fashion-MNIST,
# imported in 2 shards; s2 has no data), and this script writing what the
# coordinator's leader would (assignment, job spec, state, shard lease).
#
# Two workers train softmax regression under BSP, w1 on shard 0 and w2 on
# shard 1 (30,000 images each, 600 batches of 50, one pass).  w1 is checked
# for: a fail-over of its data reads when the server it reads from is
# SIGKILLed; loss falling in its log; SIGKILL half way and a restart that
# resumes at the recorded position, the servers acknowledging the pushes they
# had applied already as duplicates (meanwhile w2 waits for it: BSP); progress
# keys advancing; the test accuracy written to etcd above 0.70 by both; a
# clean SIGTERM.  Then the servers are stopped and their stores read back:
# every range that holds rows has applied exactly 1200 pushes (its LSN) and
# records both shards at the end of pass 0: no push was applied twice or lost.
set -u
bindir=$1
srcdir=$2
. "$srcdir/tests/lib/assert.sh"
. "$srcdir/tests/lib/etcd.sh"
. "$srcdir/tests/lib/procs.sh"

keelctl=$bindir/keelctl
helper=$bindir/keel-test-train
data=/usr/share/datasets/fashion-mnist

if [ ! -r "$data/train-images-idx3-ubyte.gz" ]; then
    echo "SKIP: Fashion-MNIST is not installed in $data"
    exit 0
fi

logged() { grep -q -- "$2" "$tmp/$1.log"; }
key() { etcdctl_ get --print-value-only "/keel/t/$1"; }
registered() { [ -n "$(key "members/$1")" ]; }
# A JSON field of a value: json_field KEY FIELD
json_field() { key "$1" | python3 -c "import json,sys; print(json.load(sys.stdin)['$2'])"; }

common=(-o cluster.name=t -o etcd.lease_ttl=2s -o etcd.retry_timeout=3s -o log.level=info)

start_server() { # ID
    local id=$1
    "$bindir/keel-server" "${common[@]}" -o cluster.etcd="$ETCD_ENDPOINT" -o node.id="$id" \
        -o node.data_dir="$tmp/$id" -o tls.ca="$tmp/pki/ca.crt" \
        -o tls.cert="$tmp/pki/server-$id.crt" -o tls.key="$tmp/pki/server-$id.key" \
        -o server.snapshot_interval=1h -o server.group_commit=5ms >>"$tmp/$id.log" 2>&1 &
    pid[$id]=$!
}
start_worker() { # ID [extra options...]
    local id=$1
    shift
    "$bindir/keel-worker" "${common[@]}" -o cluster.etcd="$ETCD_ENDPOINT" -o node.id="$id" \
        -o tls.ca="$tmp/pki/ca.crt" -o tls.cert="$tmp/pki/worker-$id.crt" \
        -o tls.key="$tmp/pki/worker-$id.key" -o worker.log_every=20 "$@" >>"$tmp/$id.log" 2>&1 &
    pid[$id]=$!
}
stop() { # ID: SIGTERM, wait up to 20 s; sets stop_status
    local i
    kill -TERM "${pid[$1]}" 2>/dev/null
    for i in $(seq 1 200); do
        kill -0 "${pid[$1]}" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "${pid[$1]}" 2>/dev/null; then
        kill -KILL "${pid[$1]}"
        wait "${pid[$1]}" 2>/dev/null
        stop_status=timeout
    else
        wait "${pid[$1]}"
        stop_status=$?
    fi
    unset "pid[$1]"
}
sigkill() {
    kill -KILL "${pid[$1]}"
    wait "${pid[$1]}" 2>/dev/null
    unset "pid[$1]"
}

# --- certificates, etcd, data -------------------------------------------------------
run "$keelctl" -o cluster.name=t certs init --dir "$tmp/pki"
expect_status 0 "certs init"
for s in s1 s2 s3; do
    "$keelctl" certs issue --dir "$tmp/pki" --role server --id $s >/dev/null 2>&1 ||
        fail "certs issue $s"
done
for w in w1 w2; do
    "$keelctl" certs issue --dir "$tmp/pki" --role worker --id $w >/dev/null 2>&1 ||
        fail "certs issue $w"
done
etcd_start "$tmp/etcd" || exit 1

for s in s1 s3; do
    run "$keelctl" dataset import -q --store "$tmp/$s" --name fashion-mnist --format idx \
        --shards 2 "$data/train-images-idx3-ubyte.gz" "$data/train-labels-idx1-ubyte.gz"
    expect_status 0 "import the training set into $s"
    run "$keelctl" dataset import -q --store "$tmp/$s" --name fashion-mnist-test --format idx \
        --shards 2 --classes 10 "$data/t10k-images-idx3-ubyte.gz" "$data/t10k-labels-idx1-ubyte.gz"
    expect_status 0 "import the test set into $s"
done
mkdir -p "$tmp/s2"

cat >"$tmp/job.ini" <<EOF
[job]
name = fm
model = softmax:784-10
dataset = fashion-mnist
test_dataset = fashion-mnist-test
batch_size = 50
epochs = 1
consistency = bsp
replication = 1
shards = 2
; a push waits for its commit, which waits 5 ms for more ([server] group_commit): a pace
; slow enough for the kills below to land mid-shard
durability = disk

[optimizer]
type = sgd
lr = 0.1

[init]
method = zeros
EOF

# --- servers, and what the coordinator's leader would write ----------------------------
for s in s1 s2 s3; do start_server $s; done
for s in s1 s2 s3; do
    wait_for 20 registered server/$s || fail "server $s did not register" "$(cat "$tmp/$s.log")"
done
etcdctl_ put /keel/t/assignment "$("$helper" assign s2 s3)" >/dev/null
etcdctl_ put /keel/t/jobs/fm/spec "$("$helper" spec "$tmp/job.ini")" >/dev/null
etcdctl_ put /keel/t/jobs/fm/state "$("$helper" state running)" >/dev/null
for s in s2 s3; do
    wait_for 10 logged $s "serving job fm" || fail "server $s did not take up job fm"
done
etcdctl_ put /keel/t/jobs/fm/shards/1 "$("$helper" shard --epochs 1)" >/dev/null

# --- a worker with no lease waits ------------------------------------------------------
# First run: progress reports rate-limited to one an hour, so that after the
# first report (0, 1) nothing more is recorded before the SIGKILL below: the
# restart then resumes well behind what the servers have applied.
start_worker w1 -o worker.progress_interval=1h
wait_for 10 registered worker/w1 || fail "worker w1 did not register" "$(cat "$tmp/w1.log")"
wait_for 10 logged w1 "waiting: job fm: no shard is leased to worker w1" ||
    fail "worker w1 does not say it waits for a lease" "$(cat "$tmp/w1.log")"
inc1=$(json_field members/worker/w1 incarnation)
etcdctl_ put /keel/t/jobs/fm/shards/0 \
    "$("$helper" shard --epochs 1 --owner w1 --incarnation "$inc1")" >/dev/null
# A second worker on shard 1, in step with w1 (BSP) until the end.
start_worker w2
wait_for 10 registered worker/w2 || fail "worker w2 did not register" "$(cat "$tmp/w2.log")"
etcdctl_ put /keel/t/jobs/fm/shards/1 "$("$helper" shard --epochs 1 --owner w2 \
    --incarnation "$(json_field members/worker/w2 incarnation)")" >/dev/null

# The data server dies: reads fail over (s2 has no data, s3 has it).
if wait_for 60 logged w1 "shard 0 pass 0 batch 100/600"; then ok; else
    fail "worker w1 did not reach batch 100" "$(tail -n 30 "$tmp/w1.log")"
fi
logged w1 "reading dataset 'fashion-mnist' from server s1" && ok ||
    fail "worker w1 does not read its data from s1 first" "$(cat "$tmp/w1.log")"
sigkill s1
if wait_for 30 logged w1 "reading dataset 'fashion-mnist' from server s3"; then ok; else
    fail "worker w1 did not fail over to s3 for its data" "$(tail -n 20 "$tmp/w1.log")"
fi
wait_for 60 logged w1 "shard 0 pass 0 batch 300/600" ||
    fail "worker w1 did not reach batch 300" "$(tail -n 20 "$tmp/w1.log")"
sigkill w1
recorded=$(key jobs/fm/progress/0)
echo "progress recorded at the SIGKILL: $recorded"
pass_k=$(json_field jobs/fm/progress/0 pass)
batch_k=$(json_field jobs/fm/progress/0 batch)
[ "$pass_k" = 0 ] && [ "$batch_k" -ge 1 ] && [ "$batch_k" -lt 300 ] && ok ||
    fail "recorded progress ($pass_k, $batch_k) is not (0, 1..299)"
# The loss fell over the first 300 batches.
first_loss=$(grep -o "batch 20/600: .* loss [0-9.]*" "$tmp/w1.log" | grep -o "[0-9.]*$")
late_loss=$(grep -o "batch 300/600: .* loss [0-9.]*" "$tmp/w1.log" | grep -o "[0-9.]*$")
echo "training loss: $first_loss at batch 20, $late_loss at batch 300"
python3 -c "import sys; sys.exit(0 if float('$late_loss') < float('$first_loss') else 1)" && ok ||
    fail "training loss did not fall: $first_loss -> $late_loss"
grep -o "[0-9]* examples/s" "$tmp/w1.log" | tail -n 1 | sed 's/^/throughput: /'

# --- restart: resumes from the recorded position; the servers skip what they have -------
mv "$tmp/w1.log" "$tmp/w1-first.log"
start_worker w1 -o worker.progress_interval=200ms
# It waits for the dead incarnation's registration to expire (TTL 2 s), then registers anew.
# (The old key may expire between two reads: an empty incarnation is not a new one.)
reregistered() {
    local inc
    inc=$(json_field members/worker/w1 incarnation 2>/dev/null) && [ -n "$inc" ] && [ "$inc" != "$inc1" ]
}
wait_for 20 reregistered || fail "worker w1 did not register again" "$(cat "$tmp/w1.log")"
inc2=$(json_field members/worker/w1 incarnation)
[ "$inc2" -gt "$inc1" ] && ok || fail "incarnation did not grow: $inc1 -> $inc2"
# The leader frees the dead incarnation's lease and leases the shard again at its progress.
etcdctl_ put /keel/t/jobs/fm/shards/0 "$("$helper" shard --epochs 1 --owner w1 \
    --incarnation "$inc2" --pass "$pass_k" --batch "$batch_k")" >/dev/null
if wait_for 20 logged w1 "starting at pass 0 batch $batch_k,"; then ok; else
    fail "worker w1 did not resume at batch $batch_k" "$(cat "$tmp/w1.log")"
fi
if wait_for 60 logged w1 "had been applied before: the servers acknowledged them as duplicates"; then
    ok
    grep "had been applied before" "$tmp/w1.log" | head -n 1
else
    fail "no duplicate acknowledgements after the restart" "$(tail -n 20 "$tmp/w1.log")"
fi

# Progress keys advance while it works (past the batch, or on to the next pass).
b1=$(json_field jobs/fm/progress/0 batch)
wait_for 20 bash -c "[ \"\$(ETCDCTL_API=3 etcdctl --endpoints $ETCD_ENDPOINT get --print-value-only \
    /keel/t/jobs/fm/progress/0 | python3 -c 'import json,sys; p = json.load(sys.stdin); print(p[\"pass\"] << 32 | p[\"batch\"])')\" \
    -gt $b1 ]" && ok || fail "progress key did not advance past batch $b1"
[ "$(json_field jobs/fm/progress/0 incarnation)" = "$inc2" ] && ok ||
    fail "progress does not carry the new incarnation $inc2"

# --- end of the pass: test accuracy in etcd, progress at the end of the shard ------------
if wait_for 60 bash -c "ETCDCTL_API=3 etcdctl --endpoints $ETCD_ENDPOINT get --print-value-only \
    /keel/t/jobs/fm/eval/0/w1 | grep -q accuracy"; then ok; else
    fail "no eval/0/w1 in etcd" "$(tail -n 20 "$tmp/w1.log")"
fi
eval_json=$(key jobs/fm/eval/0/w1)
echo "eval: $eval_json"
grep "test accuracy" "$tmp/w1.log"
accuracy=$(json_field jobs/fm/eval/0/w1 accuracy)
python3 -c "import sys; sys.exit(0 if float('$accuracy') > 0.70 else 1)" && ok ||
    fail "test accuracy $accuracy is not above 0.70"
[ "$(json_field jobs/fm/eval/0/w1 examples)" = 10000 ] && ok ||
    fail "eval did not cover the 10000 test images" "$eval_json"
wait_for 10 bash -c "ETCDCTL_API=3 etcdctl --endpoints $ETCD_ENDPOINT get --print-value-only \
    /keel/t/jobs/fm/progress/0 | grep -q '\"batch\":0,.*\"pass\":1,'" && ok ||
    fail "progress is not at the end of pass 0" "$(key jobs/fm/progress/0)"

# --- SIGTERM: a clean exit that leaves the membership -----------------------------------
if wait_for 60 bash -c "ETCDCTL_API=3 etcdctl --endpoints $ETCD_ENDPOINT get --print-value-only \
    /keel/t/jobs/fm/eval/0/w2 | grep -q accuracy"; then ok; else
    fail "no eval/0/w2 in etcd" "$(tail -n 20 "$tmp/w2.log")"
fi
accuracy2=$(json_field jobs/fm/eval/0/w2 accuracy)
echo "accuracy measured by w2 at the end of its pass: $accuracy2"
python3 -c "import sys; sys.exit(0 if float('$accuracy2') > 0.70 else 1)" && ok ||
    fail "test accuracy $accuracy2 (w2) is not above 0.70"
# The leader marks the job done: the workers go back to waiting for one.
etcdctl_ put /keel/t/jobs/fm/state "$("$helper" state done)" >/dev/null
if wait_for 10 logged w2 "waiting: no job is running"; then ok; else
    fail "worker w2 does not wait once the job is done" "$(tail -n 5 "$tmp/w2.log")"
fi
stop w2
[ "$stop_status" = 0 ] && ok || fail "worker w2 exit status $stop_status after SIGTERM"
stop w1
[ "$stop_status" = 0 ] && ok || fail "worker w1 exit status $stop_status after SIGTERM"
[ -z "$(key members/worker/w1)" ] && ok || fail "worker w1 is still registered after SIGTERM"
logged w1 "worker w1 stopping: .* push(es) acknowledged as duplicates" && ok ||
    fail "no stop summary in the log" "$(tail -n 5 "$tmp/w1.log")"

# Under the sanitizers, the workers' logs carry any report they made.
for f in "$tmp"/w1-first.log "$tmp"/w1.log "$tmp"/w2.log; do
    if grep -aq "runtime error:\|Sanitizer" "$f"; then
        fail "sanitizer report in $(basename "$f")" "$(grep -a -A5 "runtime error:\|Sanitizer" "$f")"
    fi
done

# --- the servers' stores: every push applied exactly once --------------------------------
stop s2
stop s3
seq_end=$("$helper" seq 0 600)
rows=0
for s in s2 s3; do
    run "$helper" dump --store "$tmp/$s" --spec "$tmp/job.ini"
    expect_status 0 "dump the ranges of $s"
    while read -r _ range _ lsn _ nrows rest; do
        rest="$rest "
        [ "$nrows" -gt 0 ] || continue
        rows=$((rows + nrows))
        if [ "$lsn" = 1200 ]; then ok; else
            fail "$s range $range: $lsn pushes applied, expected 1200 (one per batch of each shard)"
        fi
        if printf '%s\n' "$rest" | grep -q "shard 0 seq $seq_end worker w1 incarnation $inc2 " &&
            printf '%s\n' "$rest" | grep -q "shard 1 seq $seq_end worker w2 "; then
            ok
        else
            fail "$s range $range: shards 0 and 1 are not at the end of pass 0" "$rest"
        fi
    done <<<"$run_out"
done
[ "$rows" = 10 ] && ok || fail "the servers hold $rows rows of the model, expected 10"

finish
