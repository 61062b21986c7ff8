#!/usr/bin/env bash
# test_lost_disk_rewind.sh BINDIR SRCDIR - a server of a `replication = 1`
# job that says `lost_ranges = rewind` loses its disk: the ranges it led start
# again from their initializer, the leader rewinds every shard to the start,
# and the job finishes with every push applied exactly once by every range
# (the ranges that kept their state take the replayed pushes as duplicates).
#
# The same cluster and job as test_lost_disk.sh (2 servers, 2 workers,
# lease TTL 3 s, softmax, 4 shards) with `lost_ranges = rewind`,
# `durability = replicas` and 40 epochs.
# A tenth of the way in, server s1 is SIGKILLed, its data directory removed,
# the dataset imported into a new one, and s1 started again.  Checks: s1 says
# it starts its ranges from their initializer because the job asks it to; a
# coordinator rewinds every shard to (0, 0); the job finishes; with the
# cluster down, every range holding rows applied exactly 24000 pushes and
# records every shard at the end of pass 39.
set -u
bindir=$1
srcdir=$2
. "$srcdir/tests/lib/assert.sh"

. "$srcdir/tests/lib/cluster_job.sh"

durability=replicas
up_and_submit 2 40 1 "lost_ranges = rewind"
grep -q '^lost_ranges = rewind$' "$tmp/job.ini" || fail "could not set lost_ranges"
past_a_tenth() { local n; n=$(done_batches) && [ "${n:-0}" -ge 480 ]; }
if wait_for 120 past_a_tenth; then ok; else
    fail "r1 did not get a tenth of the way" "$(kc job show r1 2>&1 | tail -n 12)"
fi

# --- s1's disk lost ----------------------------------------------------------------------
lose_disk s1
t0=$(now_ms)
says() { grep -q "starting it from its initializer (lost_ranges = rewind)" "$dir/logs/server-s1.log"; }
if wait_for 60 says; then ok; else
    fail "s1 does not say it starts its ranges again as the job asks" \
        "$(grep -h 'range' "$dir/logs/server-s1.log" | tail -n 5)"
fi
rewound() { grep -qh "rewound to the positions they hold" "$dir"/logs/coordinator-*.log; }
if wait_for 30 rewound; then
    echo "shards rewound $(($(now_ms) - t0)) ms after s1 came back without its disk"
    ok
else
    fail "no coordinator says it rewound the shards" "$(tail -n 5 "$dir"/logs/coordinator-*.log)"
fi
grep -h "rewound" "$dir"/logs/coordinator-*.log
starts=$(grep -h "shard [0-9]* rewound from .* to (0, 0)" "$dir"/logs/coordinator-*.log | wc -l)
[ "$starts" -eq 4 ] && ok || fail "$starts of 4 shards rewound to the start"
done_then_check 24000 39
finish
