#!/usr/bin/env bash
# test_failover.sh BINDIR SRCDIR - replicated ranges through a dead primary
# and a stalled one.
#
# A local cluster (scripts/cluster.sh: etcd, 2 coordinators, 3 servers, 2
# workers, lease TTL 3 s, Fashion-MNIST in 4 shards) trains softmax
# regression (BSP, SGD, batch 100, 50 epochs) with `replication = 2`.
#  1. Once every range has an in-sync backup, the server that leads the
#     most ranges holding rows is SIGKILLed and never started again: its
#     backups are promoted, and the job's recorded progress moves on within
#     10 s.  The workers report the server as not answering, the leader finds
#     its port closed and revokes its lease at once (before the TTL).
#  2. Later another server is SIGSTOPped for 10 s (past the TTL: its lease
#     expires and its ranges are led by their backups, and training moves
#     on without it within those 10 s: a worker reading data from it gives
#     the read up after one lease TTL), then SIGCONTed: it
#     registers again and rejoins as a backup of every range, copying what it
#     lacks; once in sync it leads at least 100 of the 256 ranges again
#     (role swaps with the in-sync backups), and every range is in sync.
#  3. That server is SIGKILLed, its data directory removed (a lost disk) and
#     it is started again empty (the dataset imported anew): it copies every
#     range from its primary and is in sync again.
#  4. The job finishes above 0.75 test accuracy; no shard was rewound
#     (every range kept an in-sync replica throughout); read from the two
#     survivors' stores, every range holding rows applied exactly one push per batch
#     (50 epochs x 4 shards x 150 = 30000) and records every shard at the end
#     of the last pass, and both replicas of each range have the same rows
#     and optimizer state.  An update acknowledged by the stalled server
#     after its ranges moved, and not held by the new primary, would show as
#     a missing push there (no worker sends an acknowledged push again).
set -u
bindir=$1
srcdir=$2
. "$srcdir/tests/lib/assert.sh"

. "$srcdir/tests/lib/cluster_job.sh"

ttl_s=3
up_and_submit 3 50 2

if wait_for 60 all_in_sync; then ok; else
    fail "the ranges did not all get an in-sync backup" "$(cl etcdctl --dir "$dir" get --print-value-only /keel/t/assignment | head -c 600)"
fi
past_a_tenth() { local n; n=$(done_batches) && [ "${n:-0}" -ge 240 ]; }
if wait_for 120 past_a_tenth; then ok; else
    fail "r1 did not get a tenth of the way" "$(kc job show r1 2>&1 | tail -n 12)"
fi

# --- 1. the busiest primary SIGKILLed for good -------------------------------------------
# The softmax model's 10 rows: the ranges of keys (1 << 48) | row, as the workers route them.
victim=$(assignment_py 'max(a["servers"], key=lambda s: sum(a["servers"][r[0]] == s for r in a["ranges"]))')
[ -n "$victim" ] || fail "no primary to kill"
run cl kill --dir "$dir" server "$victim"
expect_status 0 "SIGKILL server $victim"
at=$(done_batches)
t0=$(now_ms)
moved() { local n; n=$(done_batches) && [ "${n:-0}" -gt "$((at + 20))" ]; }
if wait_for 30 moved; then
    took=$(($(now_ms) - t0))
    echo "server $victim SIGKILLed at $at of 30000 batches and left down; progress again after $took ms (lease TTL ${ttl_s} s)"
    [ "$took" -le 10000 ] && ok || fail "progress took $took ms after the SIGKILL, more than 10 s"
else
    fail "no progress after $victim's SIGKILL" "$(kc job show r1 2>&1 | tail -n 12)"
fi
promoted() { [ "$(assignment_py "'$victim' not in a['servers']")" = True ]; }
if wait_for 30 promoted; then
    echo "$victim left the assignment $(($(now_ms) - t0)) ms after its SIGKILL"
    ok
else
    fail "$victim is still in the assignment" "$(assignment_py 'a')"
fi
# The workers reported it, the leader found its port closed and revoked its lease at once.
revoked() { grep -q "server '$victim' refuses connections .*revoking its lease" "$dir"/logs/coordinator-*.log; }
if wait_for 10 revoked; then ok; else
    fail "the leader did not revoke the dead server's lease on the workers' report" \
        "$(grep -h "did not answer\|refuses" "$dir"/logs/*.log | tail -n 5)"
fi
survivors=$(for s in s1 s2 s3; do [ "$s" = "$victim" ] || printf '%s ' "$s"; done)
survivors=${survivors% }

# --- 2. another server stalled past its lease TTL ----------------------------------------
# Only once the survivors back each other up: a range whose backup is still
# syncing waits for its primary (a syncing backup is never promoted).
if wait_for 60 all_in_sync; then ok; else fail "the survivors did not get in sync" "$(assignment_py 'a')"; fi
stalled=${survivors%% *}
other=${survivors##* }
pid=$(cat "$dir/pids/server-$stalled.pid")
kill -STOP "$pid"
echo "server $stalled (pid $pid) SIGSTOPped for 10 s"
t_stop=$(now_ms)
# Training goes on without it within those 10 s: its ranges fail over once
# its lease expires (3 s), and a worker reading its data from it gives that
# read up after one lease TTL and asks another server.  Counted from 4 s
# after the SIGSTOP: by then the progress made before it has been reported
# (the workers report every second), and the stalled server's ranges have
# just failed over.
sleep 4
at=$(done_batches)
moved_alone() { local n; n=$(done_batches) && [ "${n:-0}" -gt "$((at + 20))" ]; }
if wait_for 6 moved_alone; then
    n=$(done_batches)
    echo "progress while $stalled was stopped: $at -> $n batches from 4 s to $(($(now_ms) - t_stop)) ms after the SIGSTOP"
    ok
else
    fail "no progress from 4 s to 10 s after $stalled was stopped" "$(kc job show r1 2>&1 | tail -n 12)"
fi
left=$((10000 - ($(now_ms) - t_stop)))
[ "$left" -gt 0 ] && sleep "$((left / 1000)).$(printf '%03d' $((left % 1000)))"
[ "${n:-0}" -lt 30000 ] || fail "the job was done before $stalled was woken up: make it longer"
# Past its TTL the stalled server's ranges are led by the other survivor.
leads_all() { [ "$(assignment_py "all(a['servers'][r[0]] == '$other' for r in a['ranges'])")" = True ]; }
if leads_all; then ok; else
    fail "$other does not lead every range while $stalled is stopped" "$(assignment_py 'a')"
fi
kill -CONT "$pid"
rejoined() { all_in_sync; }
if wait_for 60 rejoined; then
    echo "$stalled rejoined as an in-sync backup of every range"
    ok
else
    fail "$stalled did not rejoin in sync" "$(assignment_py 'a')"
fi
# Once in sync, it leads its share again: role swaps with the in-sync backups.
led_by() { assignment_py "sum(1 for r in a['ranges'] if r and a['servers'][r[0]] == '$1')"; }
shared() { local n; n=$(led_by "$stalled") && [ "${n:-0}" -ge 100 ] && all_in_sync; }
if wait_for 60 shared; then
    echo "$stalled leads $(led_by "$stalled") of 256 ranges again, $other $(led_by "$other"); all in sync"
    ok
else
    fail "$stalled does not lead its share of the ranges again" "$(assignment_py 'a')"
fi

# --- 3. a server's disk lost: it starts empty and copies every range ------------------
n=$(done_batches)
[ "${n:-0}" -lt 27000 ] || fail "the job is nearly done before the disk loss: make it longer"
v0=$(assignment_py 'a["version"]')
run cl kill --dir "$dir" server "$stalled"
expect_status 0 "SIGKILL server $stalled"
rm -rf "$dir/data/server-$stalled"
reimport "$stalled"
run cl start --dir "$dir" server "$stalled"
expect_status 0 "start $stalled again on an empty data directory"
t0=$(now_ms)
caught_up() { [ "$(assignment_py 'a["version"]')" -gt "$v0" ] && all_in_sync; }
if wait_for 60 caught_up; then
    echo "$stalled, its data directory removed at $n of 30000 batches, copied every range and was in sync again $(($(now_ms) - t0)) ms after its start"
    ok
else
    fail "$stalled did not catch up after losing its disk" "$(assignment_py 'a')"
fi
grep -q "stopping now" "$dir/logs/server-$other.log" && fail "$other stopped" || ok

# --- 4. the job finishes; the survivors hold every update once, identically -------------
state_done() { [ "$(job_field state)" = done ]; }
if wait_for 400 state_done; then ok; else
    fail "r1 did not finish" "$(kc job show r1 2>&1 | tail -n 15)"
fi
acc=$(kc job show r1 --json 2>/dev/null | python3 -c 'import json,sys
c = json.load(sys.stdin)["accuracy_curve"]
print("%.4f" % c[-1]["accuracy"] if c else "0")')
echo "test accuracy after 50 epochs through a dead and a stalled server: $acc"
if python3 -c "import sys; sys.exit(0 if float('${acc:-0}') > 0.75 else 1)"; then ok; else
    fail "test accuracy '$acc' is not above 0.75"
fi
# A dead, a stalled and an emptied server, each leaving an in-sync replica of every
# range: nothing restored from a store, so no shard was rewound (README: "rewinds nothing").
if grep -h "restored from a store\|rewound from" "$dir"/logs/coordinator-*.log; then
    fail "a shard was rewound, though every range kept an in-sync replica"
else ok; fi
run cl down --dir "$dir"
expect_status 0 "cluster down"
check_stores 30000 49 "$survivors" 20
finish
