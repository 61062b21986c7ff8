#!/usr/bin/env bash
# test_store_restore.sh BINDIR SRCDIR - every in-sync replica of some ranges
# is dead and stays dead: past [coordinator] restore_wait those ranges are
# restored from the older copy another server's store still holds, the job's
# shards are rewound to it, and the job finishes with every push applied
# exactly once.
#
# A local cluster (scripts/cluster.sh: etcd, 2 coordinators, 3 servers, 2
# workers, lease TTL 3 s, restore_wait 15 s, Fashion-MNIST in 4 shards)
# trains softmax regression (BSP, SGD, batch 100, 10 epochs) with
# `replication = 2`.  A tenth of the way in, s3 is SIGKILLed and left down:
# its ranges get in-sync backups on s1 and s2, while s3's store keeps the
# copies it had.  Once training has gone on past them, s1 and s2 are
# SIGKILLed together and s3 is started again.  Checks:
#  - the leader restores ranges from s3's store, only ranges s3 held when it
#    died, and not before restore_wait has passed; a rewind of the shards
#    follows and s3 says its restored ranges serve pushes again;
#  - s1 is started again (s2 stays down): the ranges only s1 and s2 held are
#    led from s1's store, and the job finishes;
#  - in the assignment at the job's end, every in-sync replica of every range
#    holding rows, read from its store, applied exactly one push per batch
#    (10 x 4 x 150 = 6000) and holds the same rows as the others.
set -u
bindir=$1
srcdir=$2
. "$srcdir/tests/lib/assert.sh"

. "$srcdir/tests/lib/cluster_job.sh"

epochs=10
up_and_submit 3 "$epochs" 2
grep -q '^restore_wait = 15s$' "$dir/conf/coordinator-c1.ini" && ok ||
    fail "the local cluster's coordinators do not wait 15 s before a restore from a store"

if wait_for 60 all_in_sync; then ok; else fail "the ranges did not all get an in-sync backup"; fi
past_a_tenth() { local n; n=$(done_batches) && [ "${n:-0}" -ge 600 ]; }
if wait_for 120 past_a_tenth; then ok; else
    fail "r1 did not get a tenth of the way" "$(kc job show r1 2>&1 | tail -n 12)"
fi

# --- s3 dies and stays down: s1 and s2 hold every range ----------------------------------
cl etcdctl --dir "$dir" get --print-value-only /keel/t/assignment >"$tmp/with-s3.json"
run cl kill --dir "$dir" server s3
expect_status 0 "SIGKILL s3"
without_s3() {
    [ "$(assignment_py '"s3" not in a["servers"] and all(len(r) == 2 and i == 2 for r, i in zip(a["ranges"], a["insync"]))')" = True ]
}
if wait_for 60 without_s3; then ok; else fail "s1 and s2 did not take every range in sync"; fi
at=$(done_batches)
moved_on() { local n; n=$(done_batches) && [ "${n:-0}" -ge "$((at + 150))" ]; }
if wait_for 60 moved_on; then ok; else
    fail "training did not move on without s3" "$(kc job show r1 2>&1 | tail -n 12)"
fi

# --- s1 and s2 die together, s3 comes back with its older copies -------------------------
p1=$(cat "$dir/pids/server-s1.pid") p2=$(cat "$dir/pids/server-s2.pid")
kill -KILL "$p1" "$p2" && ok || fail "cannot SIGKILL s1 and s2 ($p1 $p2)"
t0=$(now_ms)
echo "s1 and s2 SIGKILLed at $(done_batches) of $((600 * epochs)) batches"
run cl start --dir "$dir" server s3
expect_status 0 "start s3 again on its store"
restored() { grep -qh "restoring it from server s3's store" "$dir"/logs/coordinator-*.log; }
if wait_for 60 restored; then
    waited=$(($(now_ms) - t0))
    echo "ranges restored from s3's store $waited ms after s1 and s2 died"
    ok
else
    fail "no range was restored from s3's store" "$(tail -n 5 "$dir"/logs/coordinator-*.log)"
fi
grep -h "restoring it from server" "$dir"/logs/coordinator-*.log
[ "${waited:-0}" -ge 15000 ] && ok || fail "a range was restored ${waited:-?} ms after the deaths, before restore_wait (15 s)"
# Only ranges whose copy s3 held when it died.
for r in $(sed -n "s/.*range \([0-9]*\): no in-sync replica alive .*restoring it from server s3's store.*/\1/p" \
    "$dir"/logs/coordinator-*.log); do
    held=$(python3 -c 'import json,sys
a = json.load(open(sys.argv[1])); r = int(sys.argv[2])
print("s3" in [a["servers"][i] for i in a["ranges"][r]])' "$tmp/with-s3.json" "$r")
    [ "$held" = True ] && ok || fail "range $r was restored from s3, which never held it"
done
rewound() { grep -qh "rewound to the positions they hold" "$dir"/logs/coordinator-*.log; }
if wait_for 30 rewound; then ok; else
    fail "no coordinator rewound the shards for the restored ranges" "$(tail -n 5 "$dir"/logs/coordinator-*.log)"
fi
serving() { grep -q "serving their pushes again" "$dir/logs/server-s3.log"; }
if wait_for 30 serving; then ok; else
    fail "s3 does not serve its restored ranges again" "$(grep -h 'range' "$dir/logs/server-s3.log" | tail -n 5)"
fi
[ "$(job_field state)" = running ] && ok || fail "r1 is '$(job_field state)', not running"

# --- s1 comes back: the ranges only s1 and s2 held are led from its store ----------------
run cl start --dir "$dir" server s1
expect_status 0 "start s1 again on its store"
done_then_check $((600 * epochs)) $((epochs - 1))
finish
