#!/usr/bin/env bash
# chaos.sh - random SIGKILLs against a local Keel cluster while a job trains,
# then checks that the job finished, its accuracy, and exactly-once updates
# with identical replicas.
#
#   cluster.sh up --dir DIR --replication 2 ...     # a cluster (scripts/cluster.sh)
#   keelctl --config DIR/keelctl.ini job submit JOB.ini
#   chaos.sh --dir DIR --job JOB.ini [--seed S] [--duration 600] [--every 20]
#
# Faults.  At random moments (exponential gaps, mean --every seconds) it
# SIGKILLs a random server, worker or coordinator (cluster.sh kill), and etcd
# exactly once per run, and starts each again after a random 1-8 s
# (cluster.sh start, which waits until the node is registered).  Never more
# than one server is down at a time: with replication 2 a second server lost
# at once can take every in-sync replica of some ranges, which then wait
# until one is started again -- allowed, but it only slows the run.  Nothing
# else is killed or started while etcd is down.  The whole sequence of
# (time, kind, node, delay) is drawn up front from python's
# random.Random(SEED) with the cluster's node list, so one seed injects the
# same faults in the same order (their moments shift when a restart takes
# longer than planned: a fault is never injected before the previous
# actions ended).  After --duration seconds no fault is injected; whatever is
# still down is started again, and the job is waited for (--timeout).
# "faults while job J was running: K of N" counts the kills before which the
# job's state read "running" (a job shorter than the window saw fewer).
#
# Checks, each printed as PASS or FAIL, then a verdict line:
#  - no node exited without being killed (a crash), every restart registered;
#  - the job's state is done;
#  - the final test accuracy (the median of the last 8 passes of `keelctl job
#    show NAME --json`'s accuracy_curve: lib/final_accuracy.py) is within
#    --tolerance (default 0.005) of --reference; without --reference it is
#    only printed;
#  - exactly once, from the stores: the key-range assignment as it was when
#    the job became done is read from etcd's history (lib/final-assignment.sh),
#    the cluster is taken down (DIR is kept), and lib/check_replicas.py
#    restores every range of every server from its store (snapshot +
#    update-log replay, as a restarting server does; keel-test-train dump).
#    Each range applies one push per (table, shard, batch) and records, per
#    shard, the position (pass, batch) of the last push it applied, so every
#    in-sync replica of every range holding rows must have an LSN of exactly
#    (tables) x (batches of every shard over every epoch) -- a push applied
#    twice or lost changes it -- record every shard at its last batch of the
#    last epoch, and have the same digest (rows and optimizer state) as the
#    range's other in-sync replicas; together they hold the model's rows once.
# Exit status 0 only when every check passed; 1 when one failed; 64 usage.
# The cluster is left down (start it again with cluster.sh start --dir DIR).
set -u
set -o pipefail

top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
CL_PROG=chaos.sh
# shellcheck source=scripts/lib/cluster-common.sh
. "$top/scripts/lib/cluster-common.sh"
cluster=$top/scripts/cluster.sh

usage() {
    cat <<'EOF'
usage: chaos.sh --dir DIR [--seed S] [--duration SECONDS] [--every SECONDS]
                [--job FILE] [--reference ACC] [--tolerance T] [--timeout SECONDS]
SIGKILL random nodes of the local cluster in DIR while a job trains, start
them again, then check the job.  Run it against a cluster started with
'cluster.sh up --dir DIR' (replication 2 or more, so that a server's death
loses nothing) with one job submitted and running.

Faults: a random server, worker or coordinator SIGKILLed at random moments
(mean gap --every), and etcd exactly once; each started again after a random
1-8 s.  Never more than one server down at a time (with replication 2 a
second one lost at once can leave ranges without an in-sync replica, which
then wait until a restart: allowed, but it only slows the run).  The faults
come from the seed: one seed, one sequence of (kind, node, delay).

Then, once --duration has passed: start anything still down, wait for the
job to end, and check: no node crashed on its own; the job is done; its final
test accuracy (the median of accuracy_curve's last 8 passes) is within --tolerance of --reference
(without --reference it is only printed; compare jobs whose rate decays,
[optimizer] lr_decay: at a fixed rate the accuracy wanders by about a point);
read from the stores, every in-sync replica of every range applied each push
exactly once and the replicas are identical.  The cluster is taken down for
that (DIR is kept).  Prints a log of every fault, how many came while the job
was running, and a verdict line.

  -d, --dir DIR          the cluster directory (required)
      --job FILE         the job's spec file as submitted (default: the one
                         job that is pending or running, its spec from etcd)
      --seed S           seed of the fault sequence (default: random, printed)
      --duration SECONDS inject faults for this long (default 600)
      --every SECONDS    mean gap between faults (default 20)
      --reference ACC    expected final test accuracy, e.g. 0.842
      --tolerance T      how far from it the final accuracy may be (default 0.005)
      --timeout SECONDS  wait this long for the job to end after the
                         faults (default 1800)
  -h, --help             show this help
Exit status: 0 every check passed, 1 a check failed, 64 usage error.
EOF
}

usage_error() {
    cl_say "$1"
    echo "Run 'chaos.sh --help' for usage." >&2
    exit 64
}
int_arg() { [[ ${2:-} =~ ^[0-9]+$ ]] || usage_error "$1: expected a whole number, got '${2:-}'"; }

dir='' seed='' duration=600 every=20 jobfile='' reference='' tolerance=0.005 timeout=1800
while [ $# -gt 0 ]; do
    case $1 in
    -d | --dir) dir=${2:-} && shift ;;
    --job) jobfile=${2:-} && shift ;;
    --seed) int_arg "$1" "${2:-}" && seed=$2 && shift ;;
    --duration) int_arg "$1" "${2:-}" && duration=$2 && shift ;;
    --every) int_arg "$1" "${2:-}" && every=$2 && shift ;;
    --timeout) int_arg "$1" "${2:-}" && timeout=$2 && shift ;;
    --reference)
        [[ ${2:-} =~ ^(0|1)?\.[0-9]+$|^[01]$ ]] || usage_error "--reference: an accuracy in [0, 1], got '${2:-}'"
        reference=$2 && shift
        ;;
    --tolerance)
        [[ ${2:-} =~ ^0?\.[0-9]+$ ]] || usage_error "--tolerance: a fraction like 0.005, got '${2:-}'"
        tolerance=$2 && shift
        ;;
    -h | --help) usage && exit 0 ;;
    *) usage_error "unknown argument '$1'" ;;
    esac
    shift
done
[ -n "$dir" ] || usage_error "--dir DIR is required"
[ "$every" -ge 1 ] || usage_error "--every: at least 1 second"
[ -n "$seed" ] || seed=$(((RANDOM << 15) | RANDOM))
cl_load "$dir"
bin=$KEEL_BIN_DIR
for b in keelctl keel-test-train; do
    [ -x "$bin/$b" ] || cl_die "no $b in $bin (build the project first)"
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
t_start=$(date +%s%3N)
now() { # seconds since the start, one decimal
    local ms=$(($(date +%s%3N) - t_start))
    printf '%d.%d' $((ms / 1000)) $(((ms % 1000) / 100))
}
say() { printf '[%7ss] %s\n' "$(now)" "$*"; }
kc() { "$bin/keelctl" --config "$CL_DIR/keelctl.ini" "$@"; }
cl() { bash "$cluster" "$@"; }

# ---- the job ------------------------------------------------------------------------
if [ -n "$jobfile" ]; then
    [ -r "$jobfile" ] || cl_die "cannot read the job file '$jobfile'"
    job=$(sed -n '/^\[job\]/,/^\[/s/^name *= *//p' "$jobfile" | head -n 1)
    [ -n "$job" ] || cl_die "no [job] name in '$jobfile'"
    cp "$jobfile" "$work/job.ini"
else
    job=$(kc job list --json 2>/dev/null | python3 -c 'import json,sys
j = [x for x in json.load(sys.stdin) if x.get("state") in ("pending", "running")]
print(j[0]["name"] if len(j) == 1 else "")' 2>/dev/null)
    [ -n "$job" ] || cl_die "not exactly one job is pending or running in the cluster: name it with --job FILE"
    # Its spec file, written back from the spec JSON etcd holds.
    kc job show "$job" --json | python3 -c 'import json,sys
s = json.load(sys.stdin)["spec"]
print("[job]")
for k, v in s.items():
    if not isinstance(v, dict) and k != "format":
        print("%s = %s" % (k, v))
for k, v in s.items():
    if isinstance(v, dict):
        print("\n[%s]" % k)
        for kk, vv in v.items():
            print("%s = %s" % (kk, vv))' >"$work/job.ini" 2>/dev/null ||
        cl_die "cannot read job $job's spec"
    "$bin/keel-test-train" spec "$work/job.ini" >/dev/null 2>&1 ||
        cl_die "cannot rebuild job $job's spec file from etcd: give it with --job FILE"
fi
job_json() { kc job show "$job" --json 2>/dev/null; }
job_state() { job_json | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])' 2>/dev/null; }
state=$(job_state)
case $state in
pending | running) ;;
'') cl_die "job '$job' is not in the cluster (is etcd up? was it submitted?)" ;;
*) cl_die "job '$job' is $state: submit a job and run chaos.sh while it trains" ;;
esac
replication=$(job_json | python3 -c 'import json,sys; print(json.load(sys.stdin)["spec"].get("replication", 1))')
[ "${replication:-1}" -ge 2 ] ||
    cl_say "warning: job $job has replication ${replication:-1}: a killed server's ranges wait for it"

# ---- the plan -----------------------------------------------------------------------
mapfile -t nodes < <(cl_nodes | awk '{print $1 "/" $2}')
for n in "${nodes[@]}" etcd; do
    [ "$n" = etcd ] && name=etcd || name=${n/\//-}
    cl_alive "$name" || cl_die "${n/\// } is not running: start the whole cluster first (cluster.sh start --dir $dir)"
done
# One line per fault: "T KIND ID DELAY" (T seconds from the start; etcd's ID is "-").
python3 - "$seed" "$duration" "$every" "${nodes[@]}" >"$work/plan" <<'PY' || cl_die "cannot draw the faults"
import random, sys
seed, duration, every = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
nodes = [n.split("/") for n in sys.argv[4:]]
rng = random.Random(seed)
kinds = ["server", "worker", "coordinator"]
etcd_at = rng.uniform(0.2, 0.8) * duration
down = {}          # "role/id" -> planned time it is up again
t, etcd_done, out = 0.0, False, []

def etcd(t):
    if down:       # nothing else down while etcd is
        t = max(t, max(down.values()) + 1.0)
        down.clear()
    d = round(rng.uniform(1, 8), 1)
    out.append((t, "etcd", "-", d))
    return t + d + 1.0

while True:
    t += rng.expovariate(1.0 / every)
    if t >= duration:
        break
    for k in [k for k, up in down.items() if up <= t]:
        del down[k]
    if not etcd_done and t >= etcd_at:
        t, etcd_done = etcd(t), True
        continue
    up = {k: [i for r, i in nodes if r == k and r + "/" + i not in down] for k in kinds}
    if any(k.startswith("server/") for k in down):
        up["server"] = []          # never two servers down at once
    kind = rng.choice(kinds)
    if not up[kind]:
        avail = [k for k in kinds if up[k]]
        if not avail:
            continue
        kind = rng.choice(avail)
    node = rng.choice(up[kind])
    d = round(rng.uniform(1, 8), 1)
    down[kind + "/" + node] = t + d
    out.append((t, kind, node, d))
if not etcd_done:
    etcd(max(etcd_at, t if t < duration else etcd_at))
for t, k, n, d in sorted(out):
    print("%.1f %s %s %.1f" % (t, k, n, d))
PY
# The actions in time order: "T kill|start KIND ID DELAY".
awk '{print $1, "kill", $2, $3, $4; printf "%.1f start %s %s %s\n", $1 + $4, $2, $3, $4}' "$work/plan" |
    sort -s -g -k1,1 >"$work/actions"
nfaults=$(grep -c . "$work/plan")
echo "chaos.sh: seed $seed, job $job, $duration s of faults (mean gap $every s): $nfaults faults planned"
while read -r t k n d; do
    printf '  plan: at %6ss SIGKILL %-11s %-3s down %ss\n' "$t" "$k" "${n/-/}" "$d"
done <"$work/plan"

# ---- the run ------------------------------------------------------------------------
failures=()
crashes=0 restarts_failed=0 while_running=0
declare -A killed_at=() is_down=()
pname() { if [ "$1" = etcd ]; then echo etcd; else echo "$1-$2"; fi; }
pretty() { if [ "$1" = etcd ]; then echo etcd; else echo "$1 $2"; fi; }

# watch: every process of the cluster that we did not kill runs; one that
# exited on its own (a crash) is logged with the end of its log, counted as a
# failure, and started again so that the run can go on.
watch() {
    local n name
    for n in "${nodes[@]}" etcd; do
        name=${n/\//-}
        [ -n "${is_down[$name]:-}" ] && continue
        cl_alive "$name" && continue
        # A worker exits once no job is left to run: not a crash when the job ended.
        if [ "${n%%/*}" = worker ] && [ "$(job_state)" = "done" ]; then continue; fi
        crashes=$((crashes + 1))
        say "UNEXPECTED: ${n/\// } is not running and was not killed by chaos.sh; the end of logs/$name.log:"
        tail -n 20 "$CL_DIR/logs/$name.log" | sed 's/^/    /'
        failures+=("${n/\// } exited on its own")
        if [ "$n" = etcd ]; then cl start --dir "$CL_DIR" etcd >>"$work/cl.log" 2>&1
        else cl start --dir "$CL_DIR" "${n%%/*}" "${n#*/}" >>"$work/cl.log" 2>&1; fi
    done
}

# wait_until T: sleep until T seconds after the start, watching the cluster.
wait_until() {
    local target_ms
    target_ms=$(python3 -c 'import sys; print(int(float(sys.argv[1]) * 1000))' "$1")
    while (($(date +%s%3N) - t_start < target_ms)); do
        sleep 0.5
        watch
    done
}

do_kill() { # KIND ID DELAY
    local name out
    name=$(pname "$1" "$2")
    if ! cl_alive "$name"; then
        say "cannot kill $(pretty "$1" "$2"): not running"
        return
    fi
    local -a target=("$1")
    [ "$1" = etcd ] || target+=("$2")
    local st
    st=$(job_state) # before the kill: etcd answers
    if out=$(cl kill --dir "$CL_DIR" "${target[@]}" 2>&1); then
        killed_at[$name]=$(date +%s%3N)
        is_down[$name]=1
        [ "$st" = running ] && while_running=$((while_running + 1))
        say "SIGKILL $(pretty "$1" "$2"); planned down ${3}s; job $job ${st:-unknown}"
    else
        say "kill $(pretty "$1" "$2") failed: $out"
        failures+=("kill of $(pretty "$1" "$2") failed")
    fi
}

do_start() { # KIND ID
    local name out took
    name=$(pname "$1" "$2")
    [ -n "${is_down[$name]:-}" ] || return 0
    if [ "$1" = etcd ]; then
        out=$(cl start --dir "$CL_DIR" etcd --timeout 60 2>&1)
    else
        out=$(cl start --dir "$CL_DIR" "$1" "$2" --timeout 60 2>&1)
    fi
    local rc=$?
    took=$((($(date +%s%3N) - ${killed_at[$name]}) / 100))
    took="$((took / 10)).$((took % 10))"
    if [ $rc = 0 ]; then
        unset "is_down[$name]"
        say "$(pretty "$1" "$2") started again and $([ "$1" = etcd ] && echo healthy || echo registered): down ${took}s"
        echo "$(pretty "$1" "$2") $took" >>"$work/downs"
    elif [ "$1" = worker ] && [ $rc = 69 ]; then
        unset "is_down[$name]"
        say "worker $2 started again: nothing to run (the job ended): down ${took}s"
        echo "$(pretty "$1" "$2") $took" >>"$work/downs"
    else
        restarts_failed=$((restarts_failed + 1))
        say "starting $(pretty "$1" "$2") again failed (status $rc):"
        printf '%s\n' "$out" | tail -n 20 | sed 's/^/    /'
        failures+=("$(pretty "$1" "$2") did not start again")
    fi
}

echo "chaos.sh: faults from now on; cluster logs in $CL_DIR/logs"
while read -r t what k n d; do
    wait_until "$t"
    case $what in
    kill) do_kill "$k" "$n" "$d" ;;
    start) do_start "$k" "$n" ;;
    esac
done <"$work/actions"
wait_until "$duration"
# Anything still down (a restart that failed) gets one more try.
for name in "${!is_down[@]}"; do
    if [ "$name" = etcd ]; then do_start etcd -; else do_start "${name%%-*}" "${name#*-}"; fi
done
say "fault injection over"
echo "chaos.sh: faults while job $job was running: $while_running of $nfaults"

# ---- the end of the job --------------------------------------------------------------
deadline=$((SECONDS + timeout))
state=$(job_state)
while [ "$state" != "done" ] && [ "$state" != failed ] && [ "$state" != stopped ] &&
    ((SECONDS < deadline)); do
    sleep 2
    watch
    state=$(job_state)
done
say "job $job: ${state:-unknown}"
job_json >"$work/job.json"

echo
echo "fault log:"
while read -r t k n d; do
    printf '  %6ss  %-11s %-3s planned down %4ss\n' "$t" "$k" "${n/-/}" "$d"
done <"$work/plan"
if [ -s "$work/downs" ]; then
    echo "measured downtime (SIGKILL to registered again):"
    sed 's/^/  /; s/ \([0-9.]*\)$/: \1 s/' "$work/downs"
fi
echo

declare -i npass=0 nfail=0
check() { # OK MESSAGE
    if [ "$1" = 0 ]; then echo "PASS: $2"; npass+=1; else echo "FAIL: $2"; nfail+=1; fi
}
check $((crashes + restarts_failed)) "no node crashed; every killed node started again ($nfaults faults${failures[*]:+; ${failures[*]}})"
[ "$state" = "done" ]
check $? "job $job is done (state ${state:-unknown})"

acc=$(python3 "$top/scripts/lib/final_accuracy.py" "$work/job.json" 2>/dev/null)
read -r acc_v acc_first acc_last <<<"${acc:-- - -}"
python3 -c 'import json,sys
c = sorted(json.load(open(sys.argv[1])).get("accuracy_curve") or [], key=lambda e: e["pass"])
print("test accuracy of the last passes:", " ".join("%d:%.4f" % (e["pass"], e["accuracy"]) for e in c[-8:]))' \
    "$work/job.json" 2>/dev/null
if [ -z "$acc" ]; then
    check 1 "final test accuracy: none reported"
elif [ -n "$reference" ]; then
    python3 -c 'import sys; sys.exit(abs(float(sys.argv[1]) - float(sys.argv[2])) > float(sys.argv[3]))' \
        "$acc_v" "$reference" "$tolerance"
    check $? "final test accuracy $acc_v (median of passes $acc_first-$acc_last) within $tolerance of the reference $reference"
else
    echo "INFO: final test accuracy $acc_v (median of passes $acc_first-$acc_last; no --reference to compare with)"
fi

# Exactly once, from the stores.
eo=1
if [ "$state" = "done" ] && bash "$top/scripts/lib/final-assignment.sh" "$CL_DIR" "$job" "$work/final.json"; then
    cl down --dir "$CL_DIR" --timeout 20 >>"$work/cl.log" 2>&1 || say "cluster.sh down failed (see below)"
    dataset=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["spec"]["dataset"])' "$work/job.json")
    first=$(cl_nodes | awk '$1 == "server" {print $2; exit}')
    read -r pushes seq_end rows < <(
        "$bin/keelctl" dataset info --store "$CL_DIR/data/server-$first" --name "$dataset" --json 2>/dev/null |
            python3 -c 'import json,sys
d = json.load(sys.stdin); s = json.load(open(sys.argv[1]))["spec"]
e, b = s["epochs"], s["batch_size"]
nb = [(x["records"] + b - 1) // b for x in d["shard_list"]]
dims = s["model"].split(":")[1].split("-")
print(sum(nb) * e, ",".join(str(((e - 1) << 32) | n) for n in nb), sum(int(x) for x in dims[1:]))' "$work/job.json")
    if [ -n "${pushes:-}" ]; then
        echo "exactly once: $pushes batches (every shard, every epoch), each applied once per table by every in-sync replica:"
        python3 "$top/scripts/lib/check_replicas.py" --helper "$bin/keel-test-train" --data "$CL_DIR/data" \
            --assignment "$work/final.json" --spec "$work/job.ini" --pushes "$pushes" \
            --seq-end "$seq_end" --rows "$rows" | sed 's/^/  /'
        eo=$?
    else
        echo "cannot read dataset $dataset's shards from server $first's store"
    fi
else
    echo "no final assignment to check (the job is not done, or etcd's history is unreadable)"
fi
check $eo "exactly once: every in-sync replica applied each push once, and the replicas are identical"

echo
if [ "$nfail" = 0 ]; then
    echo "VERDICT: PASS (seed $seed, $nfaults faults, job $job done, accuracy $acc_v, $npass checks passed)"
    exit 0
fi
echo "VERDICT: FAIL (seed $seed, $nfaults faults, $nfail of $((npass + nfail)) checks failed; cluster files kept in $CL_DIR)"
exit 1
