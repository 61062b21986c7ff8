#!/usr/bin/env bash
# test_chaos.sh BINDIR SRCDIR - scripts/chaos.sh, seeded, against a training job.
#
# A local cluster (scripts/cluster.sh: etcd, 2 coordinators, 3 servers, 2
# workers, lease TTL 3 s, Fashion-MNIST in 4 shards) trains softmax
# regression (examples/fashion-mnist-softmax.ini: BSP, SGD, batch 100) with
# `replication = 2` for 36 epochs, which lasts past the chaos window.
# `chaos.sh --seed 7 --duration 120 --every 15` SIGKILLs random servers,
# workers and coordinators (one server at most at a time) and etcd once, and
# starts each again 1-8 s later; then it waits for the job and checks that no
# node crashed on its own, the job is done, and, read from the stores, every
# in-sync replica of every range applied each of the 36 x 4 x 150 pushes
# exactly once, identically.  The test checks chaos.sh's exit status and
# verdict line, that it injected faults of every kind and etcd exactly once,
# and that the final test accuracy is above 0.75 (no fault-free reference run:
# it would not fit the test's ~4 minutes).
set -u
bindir=$1
srcdir=$2
. "$srcdir/tests/lib/assert.sh"

. "$srcdir/tests/lib/cluster_job.sh"

up_and_submit 3 36 2
running() { [ "$(job_field state)" = running ]; }
if wait_for 30 running; then ok; else fail "r1 is not running" "$(kc job show r1 2>&1 | tail -n 12)"; fi

bash "$srcdir/scripts/chaos.sh" --dir "$dir" --job "$tmp/job.ini" --seed 7 --duration 120 \
    --every 15 --timeout 240 >"$tmp/chaos.out" 2>&1
status=$?
cat "$tmp/chaos.out"
[ "$status" = 0 ] && ok || fail "chaos.sh exited with status $status"
grep -q '^VERDICT: PASS ' "$tmp/chaos.out" && ok || fail "chaos.sh's verdict is not PASS"
if [ "$(grep -c 'SIGKILL etcd;' "$tmp/chaos.out")" = 1 ]; then ok; else fail "etcd was not killed exactly once"; fi
for kind in server worker coordinator; do
    grep -q "SIGKILL $kind " "$tmp/chaos.out" && ok || fail "chaos.sh killed no $kind"
done
grep -q '^FAIL' "$tmp/chaos.out" && fail "chaos.sh reports a failed check" || ok
acc=$(sed -n 's/.*final test accuracy \([0-9.]*\) .*/\1/p' "$tmp/chaos.out" | head -n 1)
if python3 -c 'import sys; sys.exit(not float(sys.argv[1]) > 0.75)' "${acc:-0}"; then ok; else
    fail "final test accuracy '${acc:-none}' is not above 0.75"
fi
finish
