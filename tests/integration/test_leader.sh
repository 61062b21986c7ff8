#!/usr/bin/env bash
# test_leader.sh BINDIR SRCDIR - the coordinator leader's work and keelctl's
# job and status commands against a real etcd and a real keel-coordinator:
# jobs move pending -> running -> done as progress reports reach the end, a
# second job waits for the first, a killed worker's shard is re-leased to
# another worker at its recorded position (and a restarted worker takes its
# shard back under a new incarnation), the assignment is written when
# servers register and re-written with backups promoted when one's lease
# expires, keelctl status --json answers within a second and fails clearly
# with etcd down, keelctl job submit/list/show/stop round trip.
#
# Servers and workers are stood in for by keel-etcd-check member-join: a real
# registration under a real lease, killed with SIGKILL so the lease expires.
set -u
bindir=$1
srcdir=$2
. "$srcdir/tests/lib/assert.sh"
. "$srcdir/tests/lib/etcd.sh"
. "$srcdir/tests/lib/procs.sh"

check=$bindir/../tests/keel-etcd-check
coord=$bindir/keel-coordinator
ttl=2

etcd_start "$tmp/etcd" || exit 1
kc() { "$bindir/keelctl" -o cluster.name=t -o cluster.etcd="$ETCD_ENDPOINT" "$@"; }
get() { etcdctl_ get --print-value-only "/keel/t/$1"; }
# member ROLE ID [WAIT_MS]: register under a lease of $ttl s, held until
# killed; WAIT_MS: how long a previous registration of ID may linger.
member() {
    "$check" --endpoints "$ETCD_ENDPOINT" member-join t "$1" "$2" "127.0.0.1:7${2#[sw]}00" "$ttl" \
        "${3:-0}" 600 >"$tmp/$2.out" 2>&1 &
    pid[$2]=$!
    disown "$!" # killed on purpose: no job-control notice
    wait_for 15 grep -q '^joined' "$tmp/$2.out"
}
incarnation() { sed -n 's/^joined .* incarnation \([0-9]*\) .*/\1/p' "$tmp/$1.out"; }
job_state() { get "jobs/$1/state" | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])'; }
state_is() { [ "$(job_state "$1")" = "$2" ]; }
# shard JOB N: the shard's lease as "owner incarnation pass batch done".
shard() {
    get "jobs/$1/shards/$2" | python3 -c 'import json,sys
s = json.load(sys.stdin)
print(s["owner"] or "-", s.get("incarnation", "-"), s["pass"], s["batch"], str(s["done"]).lower())'
}
shard_is() { [ "$(shard "$1" "$2" 2>/dev/null)" = "$3" ]; }
shard_owner() { shard "$1" "$2" 2>/dev/null | cut -d' ' -f1; }
progress() { # JOB SHARD WORKER PASS BATCH, under the shard's current lease token
    local lease
    lease=$(get "jobs/$1/shards/$2" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("lease", 0))')
    etcdctl_ put "/keel/t/jobs/$1/progress/$2" \
        "{\"worker\":\"$3\",\"incarnation\":$(incarnation "$3"),\"lease\":${lease:-0},\"pass\":$4,\"batch\":$5}" >/dev/null
}
# assignment_ok SERVERS REPLICATION: the table lists exactly SERVERS (sorted,
# comma-separated) and every range has min(r, N) distinct replicas among them.
assignment_ok() {
    get assignment | python3 -c 'import json,sys
a = json.load(sys.stdin)
want = sys.argv[1].split(","); r = int(sys.argv[2])
assert a["servers"] == want and a["replication"] == r, (a["servers"], a["replication"])
assert len(a["ranges"]) == 256
for s in a["ranges"]:
    assert len(s) == min(r, len(want)) and len(set(s)) == len(s), s
' "$1" "$2" 2>/dev/null
}
start_coordinator() { # ID
    "$coord" -o node.id="$1" -o cluster.name=t -o cluster.etcd="$ETCD_ENDPOINT" \
        -o etcd.lease_ttl=${ttl}s -o coordinator.heartbeat=200ms -o etcd.retry_timeout=3s \
        -o node.listen="127.0.0.1:70${1#c}0" >>"$tmp/$1.log" 2>&1 &
    pid[$1]=$!
    disown "$!"
}

cat >"$tmp/j1.ini" <<'EOF'
[job]
name = j1
model = softmax:4-3
dataset = d1
epochs = 1
shards = 2
replication = 2
EOF
sed -e 's/^name = j1/name = j2/' "$tmp/j1.ini" >"$tmp/j2.ini"
sed -e 's/^epochs = 1/epochs = 1\nepoch = 3/' "$tmp/j1.ini" >"$tmp/typo.ini"
printf '[job]\nname = bad\nmodel = softmax:4-3\ndataset = d1\n[optimizer]\nlr = 0\n' >"$tmp/lr.ini"

# --- submit before any coordinator: the job waits, pending ----------------------
run kc job submit "$tmp/lr.ini"
expect_status 1 "a spec with lr = 0 is refused"
expect_err 'lr.ini:6: \[optimizer\] lr: ' "the refusal names the file, line and field"
run kc job submit "$tmp/typo.ini"
expect_status 1 "a spec with an unknown key is refused"
expect_err "unknown key 'epoch' in section \[job\]" "the refusal names the unknown key"
# --store checks the datasets in a store: shard counts must match.
printf '0,1,2,3,4\n1,5,6,7,8\n2,9,10,11,12\n0,1,1,1,1\n' >"$tmp/d1.csv"
run "$bindir/keelctl" dataset import -q --store "$tmp/store" --name d1 --format csv --shards 2 \
    "$tmp/d1.csv"
expect_status 0 "a dataset of 2 shards imported"
sed -e 's/^shards = 2/shards = 3/' -e 's/^name = j1/name = j1x/' "$tmp/j1.ini" >"$tmp/j1x.ini"
run kc job submit --store "$tmp/store" "$tmp/j1x.ini"
expect_status 1 "a spec whose shards differ from the dataset's"
expect_err "\[job\] shards: the job spec says 3, but dataset 'd1' in '.*' was imported with 2" \
    "the refusal names both shard counts"
sed -e 's/^dataset = d1/dataset = d9/' -e 's/^name = j1/name = j1y/' "$tmp/j1.ini" >"$tmp/j1y.ini"
run kc job submit --store "$tmp/store" "$tmp/j1y.ini"
expect_status 1 "a spec whose dataset is not in the store"
expect_err "\[job\] dataset: .*d9" "the refusal names the dataset"
run kc job list --json
expect_out '^\[\]$' "nothing was submitted by the refused specs"
run kc job submit --store "$tmp/store" "$tmp/j1.ini"
expect_status 0 "job j1 submitted"
expect_out "^submitted job 'j1': model softmax:4-3, dataset 'd1' \(2 shards\)" "submit says what"
expect_out '^digest sha256:[0-9a-f]{64}$' "submit prints the spec digest"
run kc job submit "$tmp/j1.ini"
expect_status 1 "a second submit of j1"
expect_err "job 'j1' already exists \(pending since " "a duplicate name is refused clearly"
run kc job list
expect_out '^j1 +pending +0/2 +0/2 ' "job list shows j1 pending"
run kc job list --json
expect_out '"state": "pending"' "job list --json"
run kc status --json
expect_out '"leader": null' "no leader before a coordinator runs"

# --- a coordinator leads; servers register; the job starts ----------------------
# Servers first: a job starts only on live servers; while it runs, the
# assignment changes only by failover.
member server s1 && member server s2 && member server s3
start_coordinator c1
if wait_for 10 state_is j1 running; then ok; else fail "j1 did not start" "$(cat "$tmp/c1.log")"; fi
# replication 2 for j1, three servers.
if wait_for 10 assignment_ok s1,s2,s3 2; then ok; else
    fail "no assignment of s1-s3 with replication 2" "$(get assignment | head -c 300)"
fi
run grep -E "assignment version [0-9]+ \(.*\): 3 servers" "$tmp/c1.log"
expect_status 0 "the leader logs each assignment version"

# --- a server's lease expires while j1 runs: only in-sync copies are promoted --------
# These servers are registrations without a process behind them: none ever
# reports holding a copy of a range (replicas/<id>), so a backup placed out
# of sync stays so (backups placed before j1 held any data start in sync).
# When s2's lease expires, a range s2 led with an in-sync backup is led by
# it in a new term; one without keeps s2 as its primary and waits for it
# (promoting a backup that may lack acknowledged updates would lose them);
# a range s2 backed drops it and gets another, out-of-sync backup.
get assignment >"$tmp/assign1.json"
kill -KILL "${pid[s2]}"
unset "pid[s2]"
s2_gone() { [ -z "$(get members/server/s2)" ]; }
if wait_for 10 s2_gone; then ok; else fail "s2's member key outlived its lease"; fi
failed_over() {
    get assignment | python3 -c 'import json,sys
before = json.load(open(sys.argv[1])); a = json.load(sys.stdin)
assert a["version"] > before["version"], "no new version"
ids = lambda t, r: [t["servers"][i] for i in t["ranges"][r]]
waiting = 0
for r in range(256):
    old, new = ids(before, r), ids(a, r)
    assert "s2" not in new[1:], (r, new)
    if old[0] == "s2" and before["insync"][r] == 1:
        # no in-sync backup: waits for s2, the same set, term and in-sync count
        assert new == old and a["terms"][r] == before["terms"][r] and a["insync"][r] == 1, r
        waiting += 1
    elif old[0] == "s2":
        # its first in-sync backup leads, in a new term
        assert new[0] == old[1] and a["terms"][r] == a["version"], (r, old, new)
    else:
        # s2 left its backups; the primary stays, no new backup is in sync
        assert new[0] == old[0] and len(new) == 2, (r, new)
        assert a["insync"][r] == (2 if "s2" not in old else 1), (r, old, new)
assert ("s2" in a["servers"]) == (waiting > 0), "s2 listed only for waiting ranges"
' "$tmp/assign1.json" 2>"$tmp/failover.err"
}
if wait_for 10 failed_over; then ok; else
    fail "the assignment did not follow s2's death as the failover rules say" \
        "$(tail -n 3 "$tmp/failover.err"; get assignment | head -c 300)"
fi
run grep -E "assignment version [0-9]+ \(failover\)" "$tmp/c1.log"
expect_status 0 "the leader logs the failover version"

# --- workers: leases, progress, a killed worker's shard re-leased ----------------
member worker w1 && member worker w2
if wait_for 10 shard_is j1 0 "w1 $(incarnation w1) 0 0 false"; then ok; else
    fail "shard 0 not leased to w1" "$(shard j1 0)"
fi
if wait_for 10 shard_is j1 1 "w2 $(incarnation w2) 0 0 false"; then ok; else
    fail "shard 1 not leased to w2" "$(shard j1 1)"
fi
member worker w3
progress j1 0 w1 0 5
if wait_for 10 shard_is j1 0 "w1 $(incarnation w1) 0 5 false"; then ok; else
    fail "w1's progress not recorded" "$(shard j1 0)"
fi
# A report from a worker that does not hold the shard changes nothing.
progress j1 0 w2 0 9
if wait_for 10 grep -q "progress of 'w2' .* refused" "$tmp/c1.log"; then ok; else
    fail "a non-holder's report was not refused" "$(tail -5 "$tmp/c1.log")"
fi
run shard j1 0
expect_out "^w1 $(incarnation w1) 0 5 false$" "a refused report leaves the shard as it was"
kill -KILL "${pid[w1]}"
unset "pid[w1]"
t0=$(now_ms)
if wait_for 15 shard_is j1 0 "w3 $(incarnation w3) 0 5 false"; then ok; else
    fail "w1's shard not re-leased to w3 at (0, 5)" "$(shard j1 0)"
fi
echo "shard 0 re-leased to w3 $(($(now_ms) - t0)) ms after w1's SIGKILL (lease TTL ${ttl} s)"
run grep -E "shard 0 released by 'w1' .* at \(0, 5\)" "$tmp/c1.log"
expect_status 0 "the leader logs the release with the position"

# A second job waits while j1 runs.
run kc job submit "$tmp/j2.ini"
expect_status 0 "job j2 submitted while j1 runs"
sleep 1
if state_is j2 pending; then ok; else fail "j2 started while j1 runs" "$(job_state j2)"; fi

# --- progress to the end: j1 is done ------------------------------------------
etcdctl_ put /keel/t/jobs/j1/eval/1/w2 '{"accuracy":0.8,"examples":100,"loss":0.6,"pass":1,"time_ms":1,"worker":"w2"}' >/dev/null
etcdctl_ put /keel/t/jobs/j1/eval/1/w3 '{"accuracy":0.9,"examples":100,"loss":0.4,"pass":1,"time_ms":2,"worker":"w3"}' >/dev/null
progress j1 0 w3 1 0
progress j1 1 w2 0 7
progress j1 1 w2 1 0
if wait_for 10 state_is j1 done; then ok; else fail "j1 not done" "$(get jobs/j1/state)"; fi
run shard j1 0
expect_out '^- - 1 0 true$' "shard 0 done, no owner"
run shard j1 1
expect_out '^- - 1 0 true$' "shard 1 done, no owner"
# Then j2 starts, and its shards go to the live workers.
if wait_for 10 state_is j2 running; then ok; else fail "j2 did not start after j1" "$(job_state j2)"; fi
if wait_for 10 eval '[ -n "$(shard_owner j2 0)" ] && [ -n "$(shard_owner j2 1)" ]'; then ok; else
    fail "j2's shards not leased" "$(shard j2 0; shard j2 1)"
fi

# --- keelctl job show / list / stop ----------------------------------------------
run kc job show j1
expect_status 0 "job show j1"
expect_out '^  state +done since ' "show: state with time"
expect_out '^  0 +- +- +1 +0 +yes$' "show: shard table"
expect_out '^  1 +2 +0\.8500 +0\.5000 ' "show: accuracy curve, mean over workers"
run kc job show --json j1
expect_out '"shards_done": 2' "show --json: progress"
expect_out '"accuracy_curve": \[' "show --json: accuracy curve"
expect_out '"model": "softmax:4-3"' "show --json: spec"
run kc job show nosuch
expect_status 1 "show of a missing job"
expect_err "no job 'nosuch'" "show names the missing job"
run kc job list
expect_out '^j1 +done +2/2 +2/2 +100% ' "list: j1 done"
expect_out '^j2 +running ' "list: j2 running"
run kc job stop --reason "enough for today" j2
expect_status 0 "stop j2"
expect_out "^stopped job 'j2' \(it was running\): enough for today$" "stop says what it did"
if state_is j2 stopped; then ok; else fail "j2 not stopped" "$(job_state j2)"; fi
if wait_for 10 eval '[ "$(shard_owner j2 0)" = - ] && [ "$(shard_owner j2 1)" = - ]'; then ok; else
    fail "the stopped job's shards are still leased" "$(shard j2 0; shard j2 1)"
fi
run kc job stop j2
expect_status 0 "stopping a stopped job"
expect_out "already stopped" "stop is idempotent"
run kc job stop j1
expect_status 1 "stopping a done job"
expect_err "cannot stop job 'j1': it is done" "a final state is not left"
run kc job show j2
expect_out 'stopped since .*: enough for today' "show: the stop reason"

# --- no job runs: the assignment catches up with s2's death ---------------------
if wait_for 10 assignment_ok s1,s3 1; then ok; else
    fail "the assignment did not drop s2 once no job ran" "$(get assignment | head -c 300)"
fi
run grep -E "assignment version .*left: s2;" "$tmp/c1.log"
expect_status 0 "the leader logs s2 leaving the table"

# --- keelctl status ----------------------------------------------------------------
t0=$(now_ms)
run kc status --json
elapsed=$(($(now_ms) - t0))
expect_status 0 "status --json"
if [ "$elapsed" -lt 1000 ]; then ok; else fail "status --json took $elapsed ms"; fi
echo "keelctl status --json answered in $elapsed ms"
printf '%s\n' "$run_out" >"$tmp/status.json"
run python3 -c 'import json,sys
s = json.load(open(sys.argv[1]))
assert s["leader"] == "c1", s["leader"]
assert s["epoch"] > 0
roles = sorted((m["role"], m["id"]) for m in s["members"])
assert roles == [("coordinator","c1"),("server","s1"),("server","s3"),("worker","w2"),("worker","w3")], roles
for m in s["members"]:
    assert m["address"] is not None and m["incarnation"] > 0
assert len(s["ranges"]) == 256
r = s["assignment"]["replication"]
for x in s["ranges"]:
    assert x["primary"] in ("s1", "s3") and len(x["backups"]) == min(r, 2) - 1, x
    assert x["primary"] not in x["backups"], x
    assert x["in_sync"] + x["syncing"] == x["backups"], x
    assert x["term"] >= 1 and x["lsn"] is None, x  # stand-in servers write no replica report
for x in s["servers"]:
    assert x["lag"] is None and x["syncing"] >= 0, x
assert sum(x["primaries"] for x in s["servers"]) == 256
jobs = {j["name"]: j["state"] for j in s["jobs"]}
assert jobs == {"j1": "done", "j2": "stopped"}, jobs
print("status ok")' "$tmp/status.json"
expect_status 0 "status --json checked"
expect_out '^status ok$' "status --json has leader, epoch, members, ranges and jobs"
run kc status
expect_out '^leader +c1, epoch [0-9]+, address 127\.0\.0\.1:7010' "status: leader and epoch"
expect_out '^  server +s1 +127\.0\.0\.1:7100 ' "status: members by role with address"
expect_out '^  s3 +[0-9]+ +[0-9]+ +[0-9]+ +(-|[0-9]+)$' \
    "status: primaries, backups, syncing backups and lag per server"
expect_out '^(ranges +256, consecutive ranges alike on one line|ranges +every range has only its primary \(no backup\))$' \
    "status: the ranges section"

# --- a standby takes over and carries on ------------------------------------------
start_coordinator c2
sleep 0.5
kill -KILL "${pid[c1]}"
unset "pid[c1]"
cat >"$tmp/j3.ini" <<'EOF'
[job]
name = j3
model = softmax:4-3
dataset = d1
epochs = 1
shards = 1
replication = 1
EOF
run kc job submit "$tmp/j3.ini"
if wait_for 15 state_is j3 running; then ok; else
    fail "the new leader did not start j3" "$(cat "$tmp/c2.log")"
fi
if wait_for 10 assignment_ok s1,s3 1; then ok; else
    fail "the new leader did not set replication 1" "$(get assignment | head -c 200)"
fi

# --- the same worker, restarted, takes its shard back under a new incarnation -----
holder=$(shard_owner j3 0)
if [ "$holder" = w2 ] || [ "$holder" = w3 ]; then ok; else fail "j3's shard not leased" "$holder"; fi
other=w2
[ "$holder" = w2 ] && other=w3
progress j3 0 "$holder" 0 3
if wait_for 10 shard_is j3 0 "$holder $(incarnation "$holder") 0 3 false"; then ok; else
    fail "progress on j3 not recorded" "$(shard j3 0)"
fi
old_inc=$(incarnation "$holder")
kill -KILL "${pid[$other]}" "${pid[$holder]}"
unset "pid[$other]" "pid[$holder]"
member worker "$holder" 10000 # waits for the old registration to expire
if [ "$(incarnation "$holder")" -gt "$old_inc" ]; then ok; else
    fail "no new incarnation" "$(cat "$tmp/$holder.out")"
fi
if wait_for 10 shard_is j3 0 "$holder $(incarnation "$holder") 0 3 false"; then ok; else
    fail "the restarted $holder did not get its shard back at (0, 3)" "$(shard j3 0)"
fi

# A clean stop (under the sanitizers this also checks the leader work for leaks).
kill -TERM "${pid[c2]}"
if wait_for 10 eval '! kill -0 "${pid[c2]}" 2>/dev/null'; then ok; else fail "c2 ignored SIGTERM"; fi
unset "pid[c2]"
run cat "$tmp/c2.log"
expect_out "leader work stops: shutting down" "the leader's work is told leadership ended"
expect_out "coordinator 'c2' stopped" "c2 stopped cleanly"
if grep -q 'Sanitizer' "$tmp/c2.log"; then fail "sanitizer report" "$(cat "$tmp/c2.log")"; else ok; fi

# --- etcd down: keelctl says so, quickly ------------------------------------------
etcd_stop
t0=$(now_ms)
run kc status --json
elapsed=$(($(now_ms) - t0))
expect_status 1 "status with etcd down"
expect_err '^keelctl status: etcd is unreachable at http://127\.0\.0\.1:[0-9]+: ' \
    "status says etcd is unreachable"
if [ "$elapsed" -lt 5000 ]; then ok; else fail "status took $elapsed ms to give up"; fi
echo "keelctl status gave up on a stopped etcd in $elapsed ms"
run kc job list
expect_status 1 "job list with etcd down"
expect_err 'etcd is unreachable' "job list says etcd is unreachable"

finish
