#!/usr/bin/env bash
# test_lost_disk.sh BINDIR SRCDIR - a server of a `replication = 1` job loses
# its disk: the job fails, naming the ranges whose trained state is gone,
# instead of going on with them started again from their initializer.
#
# A local cluster (scripts/cluster.sh: etcd, 2 coordinators, 2 servers, 2
# workers, lease TTL 3 s, Fashion-MNIST in 4 shards) trains softmax
# regression (replication 1, 8 epochs).  A tenth of the way in, server s1 is
# SIGKILLed, its data directory removed, the dataset imported into a new
# one, and s1 started again.  Checks: s1 says it will not start the ranges
# it leads from their initializer; the job fails within 30 s with a reason
# naming the lost ranges, each of which s1 led and holds rows of the model.
set -u
bindir=$1
srcdir=$2
. "$srcdir/tests/lib/assert.sh"

. "$srcdir/tests/lib/cluster_job.sh"

up_and_submit 2 8 1
past_a_tenth() { local n; n=$(done_batches) && [ "${n:-0}" -ge 480 ]; }
if wait_for 120 past_a_tenth; then ok; else
    fail "r1 did not get a tenth of the way" "$(kc job show r1 2>&1 | tail -n 12)"
fi

# --- s1's disk lost ----------------------------------------------------------------------
cl etcdctl --dir "$dir" get --print-value-only /keel/t/assignment >"$tmp/assignment.json"
lose_disk s1
t0=$(now_ms)
failed() { [ "$(job_field state)" = failed ]; }
if wait_for 30 failed; then
    echo "r1 failed $(($(now_ms) - t0)) ms after s1 came back without its disk"
    ok
else
    fail "r1 did not fail: it is '$(job_field state)'" "$(kc job show r1 2>&1 | tail -n 12)"
fi
reason=$(job_field reason)
echo "reason: $reason"
[[ $reason == *lost* ]] && ok || fail "the reason does not say ranges were lost" "$reason"
# Every range named led by s1, holding rows of the model (keys (1 << 48) | 0..9).
run python3 - "$tmp/assignment.json" "$reason" <<'PY'
import json, re, sys
a = json.load(open(sys.argv[1]))
named = [int(x) for x in re.search(r"ranges? ([0-9, ]+) lost", sys.argv[2]).group(1).split(",")]
M = (1 << 64) - 1
def mix(key):  # keel_range_of() of keel/range.h
    z = (key + 0x9e3779b97f4a7c15) & M
    z = ((z ^ (z >> 30)) * 0xbf58476d1ce4e5b9) & M
    z = ((z ^ (z >> 27)) * 0x94d049bb133111eb) & M
    z ^= z >> 31
    return z % 256
with_rows = {mix((1 << 48) | r) for r in range(10)}
led = {r for r, s in enumerate(a["ranges"]) if a["servers"][s[0]] == "s1"}
assert named, "no range named"
assert set(named) <= led, ("named ranges s1 did not lead", set(named) - led)
assert set(named) <= with_rows, ("named ranges without rows", set(named) - with_rows)
print("named", sorted(named), "of the ranges s1 led with rows", sorted(led & with_rows))
PY
expect_status 0 "the ranges named are s1's"
echo "$run_out"
if grep -q "holds none of its state" "$dir/logs/server-s1.log"; then ok; else
    fail "s1 does not say why it does not start its ranges" "$(tail -n 5 "$dir/logs/server-s1.log")"
fi
finish
