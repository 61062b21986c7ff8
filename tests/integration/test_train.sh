#!/usr/bin/env bash
# test_train.sh BINDIR SRCDIR - the whole stack trains: etcd, 2 coordinators,
# 3 servers and 2 workers (scripts/demo.sh) run one epoch of the MLP on
# Fashion-MNIST; worker w1 is killed with SIGKILL half way and started again.
# Checks that the job finishes with every shard done (the killed worker's
# too) and that the test accuracy after the epoch is above 0.80.  That a
# restarted worker's pushes are not applied twice is test_worker.sh's.
set -u
bindir=$1
srcdir=$2
. "$srcdir/tests/lib/assert.sh"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

run "$srcdir/scripts/demo.sh" --bin "$bindir" --epochs 1 --timeout 8 --dir "$tmp/cluster"
expect_status 0 "the demo's job finishes"
expect_out "the job finished: state 'done' in etcd" "the job is done"
expect_out "killed worker w1 .* with SIGKILL" "a worker was killed"
expect_out "worker w1 killed with SIGKILL at epoch [0-9.]+, holding shard [0-9]+" "it held a shard"
expect_out "progress +4/4 shards done" "every shard, the killed worker's too, was finished"
acc=$(printf '%s\n' "$run_out" | sed -n 's/.*final test accuracy: \([0-9.]*\) after epoch.*/\1/p')
if [ -n "$acc" ] && python3 -c "import sys; sys.exit(0 if float('$acc') > 0.80 else 1)"; then
    ok
else
    fail "test accuracy '$acc' after one epoch is not above 0.80" "$(printf '%s\n' "$run_out" | tail -n 30)"
fi
# Nothing of the cluster is left running: demo.sh stopped every PID it started.
for pidfile in "$tmp"/cluster/pids/*.pid; do
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null && grep -q "$tmp" "/proc/$pid/cmdline" 2>/dev/null; then
        fail "process $pid ($(basename "$pidfile")) is still running"
    else
        ok
    fi
done
finish
