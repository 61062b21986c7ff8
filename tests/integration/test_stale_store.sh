#!/usr/bin/env bash
# test_stale_store.sh BINDIR SRCDIR - a server comes back with a store older
# than the updates it acknowledged (its data directory put back from a copy,
# as a disk restored from a backup would be): the ranges it leads hold their
# pushes, the leader rewinds the job's shards to the positions those ranges
# hold, the workers replay their data from there, and the job finishes with
# every push applied exactly once by every range.
#
# A local cluster (scripts/cluster.sh: etcd, 2 coordinators, 2 servers, 2
# workers, lease TTL 3 s, Fashion-MNIST in 4 shards) trains softmax
# regression (replication 1, `durability = replicas`, 40 epochs).  Past 120
# batches, server s1 is stopped (SIGSTOP) for the time it takes to copy its
# data directory, and goes on (SIGCONT).  120 batches later it is SIGKILLed,
# the copy put in
# place of its data directory, and s1 started again.  Checks: s1 says its
# restored ranges wait for a rewind; the leader rewinds shards (at least one
# back past where the job was) and s1 serves again; the job finishes; with
# the cluster down, every range holding rows applied exactly 24000 pushes and
# records every shard at the end of pass 39 (without the rewind s1's ranges
# would miss the batches between the copy and the kill, and show fewer).
set -u
bindir=$1
srcdir=$2
. "$srcdir/tests/lib/assert.sh"

. "$srcdir/tests/lib/cluster_job.sh"

durability=replicas
up_and_submit 2 40 1
past() { local n; n=$(done_batches) && [ "${n:-0}" -ge "$1" ]; }
if wait_for 120 past 120; then ok; else
    fail "r1 did not get a tenth of the way" "$(kc job show r1 2>&1 | tail -n 12)"
fi

# --- a copy of s1's store, taken with s1 stopped: what a backup of the disk holds ------
# shellcheck disable=SC1091
. "$dir/cluster.env"
s1_pid=$(cat "$dir/pids/server-s1.pid" 2>/dev/null || true)
[ -n "$s1_pid" ] || fail "no pid file for s1" "$(ls "$dir" "$dir/pids" 2>&1)"
kill -STOP "$s1_pid"
cp -a "$dir/data/server-s1" "$tmp/s1-copy"
kill -CONT "$s1_pid"
copied_at=$(done_batches)
echo "copied s1's store at about $copied_at batches"

if wait_for 120 past $((copied_at + 120)); then ok; else
    fail "r1 did not move on after the copy" "$(kc job show r1 2>&1 | tail -n 12)"
fi
killed_at=$(done_batches)

# --- s1 killed, its store replaced by the older copy, started again --------------------
run cl kill --dir "$dir" server s1
expect_status 0 "SIGKILL server s1"
rm -rf "$dir/data/server-s1"
mv "$tmp/s1-copy" "$dir/data/server-s1"
run cl start --dir "$dir" server s1
expect_status 0 "start s1 again on the older copy of its store"
echo "s1 killed at about $killed_at batches and started again on its store of $copied_at"

holds() { grep -q "restored from the store while the job trains" "$dir/logs/server-s1.log"; }
if wait_for 60 holds; then ok; else
    fail "s1 does not say its restored ranges wait for a rewind" \
        "$(grep -h 'range' "$dir/logs/server-s1.log" | tail -n 5)"
fi
rewound() { grep -qh "rewound to the positions they hold" "$dir"/logs/coordinator-*.log; }
if wait_for 30 rewound; then ok; else
    fail "no coordinator says it rewound the shards" "$(tail -n 5 "$dir"/logs/coordinator-*.log)"
fi
grep -h "rewound from\|rewound to the positions" "$dir"/logs/coordinator-*.log
back=$(grep -h "shard [0-9]* rewound from" "$dir"/logs/coordinator-*.log | wc -l)
[ "$back" -ge 1 ] && ok || fail "no shard was moved back, though s1's copy is older than the job"
serving() { grep -q "serving their pushes again" "$dir/logs/server-s1.log"; }
if wait_for 30 serving; then ok; else
    fail "s1 does not serve its restored ranges again" "$(tail -n 5 "$dir/logs/server-s1.log")"
fi

done_then_check 24000 39
finish
