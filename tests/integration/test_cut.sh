#!/usr/bin/env bash
# test_cut.sh BINDIR SRCDIR - checkpoints cut at one clock, on a real cluster.
#
# Two servers, replication 2 (each server leads half the ranges and backs up
# the other half), two workers under SSP(2), so a worker may run up to two
# clocks ahead of the other: job r1 (softmax, batch 100, 4 shards of 150
# batches a pass, 5 passes) takes a checkpoint every 40 clocks.  Two workers
# train the 4 shards two at a time, a pass each per lease.  Once the job is
# done, every checkpoint in both stores is read back; in each, every
# range's position of every shard must be the shard's position before the
# checkpoint's clock (the batches of the clocks below it, nothing later and
# nothing missing: what "the slowest worker passed C" would not give under
# SSP), or a pass boundary (a shard between two leases, which does not
# move); at least one shard of each checkpoint is at its clock.  A range
# held by both servers has the same digest in both servers' checkpoints of
# a clock (the backup's copy is the primary's), every manifest names the
# server that took it, and every checkpoint verifies against the cluster key.
set -u
bindir=$1
srcdir=$2
. "$srcdir/tests/lib/assert.sh"
tmp=$(mktemp -d)
. "$srcdir/tests/lib/cluster_job.sh"

durability=replicas
up_cluster 2 2
job_ini r1 5 2 "checkpoint_interval = 40" "$tmp/job.ini"
sed -i 's/^consistency = .*/consistency = ssp:2/' "$tmp/job.ini"
grep -q '^consistency = ssp:2$' "$tmp/job.ini" || fail "could not set the job's consistency"
run kc job submit "$tmp/job.ini"
expect_status 0 "submit r1"

t0=$SECONDS
# s2 is SIGKILLed once it has taken its first checkpoint, and started again
# once the leader has taken it out of the assignment: it comes back holding
# nothing, the job well past the checkpoint it would take next, then gets
# its ranges (copies from s1) and must go on taking the job's checkpoints at
# their clocks.
first_cut() { grep -q 'checkpoint 1 at clock' "$dir/logs/server-s2.log"; }
if wait_for 120 first_cut; then ok; else fail "s2 took no checkpoint within 120 s"; fi
run cl kill --dir "$dir" server s2
expect_status 0 "SIGKILL s2"
s2_out() { [ "$(assignment_py 'all("s2" not in r for r in a["ranges"])')" = True ]; }
if wait_for 60 s2_out; then ok; else fail "the assignment still names s2 60 s after its SIGKILL"; fi
run cl start --dir "$dir" server s2
expect_status 0 "start s2 again"
restarted_ns=$(date +%s%N)
job_done() { [ "$(job_field state)" = done ]; }
if wait_for 300 job_done; then ok; else fail "r1 not done within 300 s" "$(kc job show r1 2>&1)"; fi
echo "r1 trained in $((SECONDS - t0)) s"
grep -h "checkpoint [0-9]* at clock" "$dir"/logs/server-s[12].log | sed 's/^.*job r1: //' | head -n 6
cl down --dir "$dir" --timeout 10 >/dev/null 2>&1

# Every checkpoint of both stores, as `keelctl checkpoint show --json` gives it.
for s in s1 s2; do
    run "$bindir/keelctl" checkpoint list --store "$dir/data/server-$s" --json
    expect_status 0 "list $s's checkpoints"
    ids=$(printf '%s' "$run_out" | python3 -c 'import json,sys; print(" ".join(str(c["id"]) for c in json.load(sys.stdin)))')
    for id in $ids; do
        run "$bindir/keelctl" checkpoint verify "$id" --store "$dir/data/server-$s" --key "$dir/certs/cluster.key"
        expect_status 0 "$s: checkpoint $id verifies"
        run "$bindir/keelctl" checkpoint show "$id" --store "$dir/data/server-$s" --json
        expect_status 0 "$s: show checkpoint $id"
        printf '%s\n' "$run_out" | tr -d '\n' >"$tmp/ckpt-$s-$id.json"
        echo >>"$tmp/ckpt-$s-$id.json"
    done
done

report=$(python3 - "$tmp" "$restarted_ns" <<'PYEOF'
import glob, json, os, sys

NB, PASSES, EVERY = 150, 5, 40
def seq_before(c):
    last = c - 1
    return (last // NB) << 32 | (last % NB + 1)

bad, cuts, ranges_checked = [], {}, 0
restarted_ns, after_restart = int(sys.argv[2]), []
for path in sorted(glob.glob(os.path.join(sys.argv[1], "ckpt-*.json"))):
    server = os.path.basename(path).split("-")[1]
    m = json.load(open(path))
    c = m["clock"]
    if m.get("server") != server:
        bad.append("%s checkpoint %d names server %r" % (server, m["id"], m.get("server")))
    if server == "s2" and m["created_ns"] > restarted_ns and c % EVERY == 0:
        after_restart.append(c)
    if c % EVERY != 0 or c >= NB * PASSES:
        # The job's last checkpoint, taken as it ended: every shard at the end.
        want = (PASSES - 1) << 32 | NB
    else:
        want = seq_before(c)
    at_clock = False
    for r in m["ranges"]:
        if r["rows"] == 0:
            continue  # a range of no rows is pushed nothing
        ranges_checked += 1
        for p in r["positions"]:
            at_clock = at_clock or p["seq"] == want
            if p["seq"] != want and (p["seq"] & 0xffffffff) not in (0, NB):
                bad.append("%s checkpoint %d (clock %d) range %d: position %d at %d:%d, want %d:%d"
                           % (server, m["id"], c, r["range"], p["id"], p["seq"] >> 32,
                              p["seq"] & 0xffffffff, want >> 32, want & 0xffffffff))
        if not r["positions"]:
            bad.append("%s checkpoint %d range %d has no positions" % (server, m["id"], r["range"]))
        cuts.setdefault((c, r["range"]), {})[server] = r["sha256"]
    if not at_clock:
        bad.append("%s checkpoint %d (clock %d): no shard is at its clock" % (server, m["id"], c))
twice = [(k, v) for k, v in cuts.items() if len(v) == 2]
for (c, rng), v in twice:
    if v["s1"] != v["s2"]:
        bad.append("clock %d range %d: s1 and s2 hold different rows (%s, %s)"
                   % (c, rng, v["s1"][:12], v["s2"][:12]))
clocks = sorted({c for c, _ in cuts})
print("clocks %s; %d range copies checked; %d held by both servers"
      % (clocks, ranges_checked, len(twice)))
for b in bad[:10]:
    print("BAD " + b)
if len(clocks) < 5:
    print("BAD only %d checkpoint clocks kept" % len(clocks))
if not twice:
    print("BAD no range is in both servers' checkpoints of a clock")
print("s2, started again, took checkpoints at clocks %s" % sorted(after_restart))
if len(after_restart) < 2:
    print("BAD s2 took %d checkpoint(s) at their clocks after it was started again"
          % len(after_restart))
PYEOF
) || report="$report
BAD the check itself failed (status $?)"
echo "$report"
if printf '%s\n' "$report" | grep -q '^BAD'; then
    fail "checkpoints are not cut at their clocks" "$(printf '%s\n' "$report" | grep '^BAD')"
else
    ok
fi
finish
