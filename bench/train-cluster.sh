#!/usr/bin/env bash
# train-cluster.sh - one timed training run of a job on a real local Keel
# cluster, for keel-bench-train (bench/bench_train.c), which runs it and
# compares it with the same training in one process.
#
#   bench/train-cluster.sh --bin DIR --job FILE --workers N [OPTIONS]
#
# Starts a cluster with scripts/cluster.sh in a temporary directory, submits
# the job, follows it until it is done (or the time limit), stops the
# cluster, and prints one JSON object on stdout:
#
#   {"workers": N, "servers": S, "epochs": E, "shards": H, "records": R, "finished": true,
#    "start_ms": T0, "end_ms": T1, "examples": X, "startup_s": U,
#    "store_start_bytes": B0, "store_end_bytes": B1,
#    "evals": [{"pass": P, "worker": "w1", "accuracy": A, "loss": L,
#               "time_ms": T}, ...]}
#
# T0 is when the coordinator's leader moved the job to running and T1 when
# it moved it to done (both Unix ms, from jobs/<job>/state): cluster start-up
# (U seconds, reported apart) and the wait for the leader are not in it.  X is
# the number of training examples applied by T1 (epochs x R when the job
# finished).  B0 and B1 are the size of the largest server's store file
# (data.mdb) before the job was submitted and once it ended: LMDB's file only
# grows, so B1 - B0 is the most the job's ranges (snapshots and update log)
# ever took at once.  "evals" is every test evaluation the workers wrote
# (jobs/<job>/eval/<pass>/<worker>; a worker rewrites its key after each
# shard it finishes, so the key is watched from the submission on and every
# version kept), in the order they were written.  Progress goes to stderr.
set -u
set -o pipefail

top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
CL_PROG=train-cluster.sh
# shellcheck source=scripts/lib/cluster-common.sh
. "$top/scripts/lib/cluster-common.sh"

usage() {
    cat <<'EOF'
usage: bench/train-cluster.sh --bin DIR --job FILE --workers N [OPTIONS]
Train job FILE on a fresh local cluster (scripts/cluster.sh: etcd, one
coordinator, S servers, N workers, Fashion-MNIST imported with the job's
shard count) and print the run's timings and test evaluations as one JSON
object on stdout.  Used by keel-bench-train; see bench/README.md.

  --bin DIR        the Keel binaries (keel-server, keel-worker, ...)
  --job FILE       the job spec (its [job] shards and replication are used)
  --workers N      workers, 1-8
  --servers S      servers, 1-8 (default 2)
  --epochs E       train E epochs instead of the job's
  --replication R  ask for R replicas of each range instead of the job's
  --set KEY=VALUE  set [job] KEY to VALUE in the submitted spec (repeatable),
                   e.g. --set compression=bf16 --set durability=disk
  --limit SECONDS  stop following the job after SECONDS of training
                   (default 900); the run is then reported unfinished
  --label TEXT     how progress lines name this run (default "keel, N worker(s)")
  -h, --help       show this help

Exit status: 0 (also for an unfinished run), 1 when the cluster or the job
failed (the cluster's files are then kept and named), 64 usage error.
EOF
}

bin='' job_file='' workers='' servers=2 epochs='' replication_opt='' limit=900 label=''
sets=()
while [ $# -gt 0 ]; do
    case $1 in
    --bin) bin=${2:-} && shift ;;
    --job) job_file=${2:-} && shift ;;
    --workers) workers=${2:-} && shift ;;
    --servers) servers=${2:-} && shift ;;
    --epochs) epochs=${2:-} && shift ;;
    --replication) replication_opt=${2:-} && shift ;;
    --set)
        [[ ${2:-} =~ ^[a-z_]+=[A-Za-z0-9_.:-]+$ ]] ||
            { cl_say "--set: expected KEY=VALUE, got '${2:-}'"; exit 64; }
        sets+=("$2") && shift
        ;;
    --limit) limit=${2:-} && shift ;;
    --label) label=${2:-} && shift ;;
    -h | --help) usage && exit 0 ;;
    *) cl_say "unknown argument '$1'; see --help" && exit 64 ;;
    esac
    shift
done
if [ -z "$bin" ] || [ ! -x "$bin/keel-server" ]; then
    cl_say "--bin: no keel-server in '$bin'"
    exit 64
fi
[ -f "$job_file" ] || { cl_say "--job: no file '$job_file'"; exit 64; }
[[ $workers =~ ^[1-8]$ ]] || { cl_say "--workers: expected 1-8, got '$workers'"; exit 64; }
[[ $servers =~ ^[1-8]$ ]] || { cl_say "--servers: expected 1-8, got '$servers'"; exit 64; }
[ -z "$epochs" ] || [[ $epochs =~ ^[1-9][0-9]{0,3}$ ]] ||
    { cl_say "--epochs: expected 1-9999, got '$epochs'"; exit 64; }
if [ -n "$replication_opt" ] && { ! [[ $replication_opt =~ ^[1-5]$ ]] || ((replication_opt > servers)); }; then
    cl_say "--replication: expected 1-$servers, got '$replication_opt'"
    exit 64
fi
[[ $limit =~ ^[1-9][0-9]{0,5}$ ]] || { cl_say "--limit: expected seconds, got '$limit'"; exit 64; }
bin=$(cd "$bin" && pwd -P)
[ -n "$label" ] || label="keel, $workers worker(s)"

say() { printf '%s: %s\n' "$label" "$*" >&2; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/keel-bench-train.XXXXXX") || { cl_say "cannot make a temporary directory"; exit 1; }
cdir=$tmp/cluster
up=0 watch_pid='' failed=1

# shellcheck disable=SC2317 # trap handler
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [ -n "$watch_pid" ] && kill -0 "$watch_pid" 2>/dev/null; then
        kill "$watch_pid" 2>/dev/null
        wait "$watch_pid" 2>/dev/null
    fi
    if [ "$up" = 1 ]; then
        bash "$top/scripts/cluster.sh" down --dir "$cdir" --timeout 10 >/dev/null 2>&1 ||
            cl_say "stopping the cluster in $cdir failed"
    fi
    if [ "$failed" = 1 ] && [ "$status" != 130 ]; then
        cl_say "the cluster's files (logs in $cdir/logs) stay in $tmp"
    else
        rm -rf -- "$tmp"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'cl_say interrupted; exit 130' INT TERM

fail() {
    cl_say "$*"
    exit 1
}

# The value of KEY in the job file ("name", "shards", ...), first match.
ini() { sed -n "s/^$1 *= *//p" "$job_file" | head -n 1 | tr -d '\r'; }
now_ms() { date +%s%3N; }

job=$(ini name) shards=$(ini shards) replication=$(ini replication) batch=$(ini batch_size)
[ -n "$job" ] || fail "$job_file has no [job] name"
shards=${shards:-1} replication=${replication:-1} batch=${batch:-64}
[ -z "$replication_opt" ] || replication=$replication_opt
[ -n "$epochs" ] || epochs=$(ini epochs)
epochs=${epochs:-1}

# ---- the cluster (not timed: the job's clock starts when it runs) ----------------------

say "starting a cluster: 1 coordinator, $servers server(s), $workers worker(s), $shards shards"
t_up=$SECONDS
up=1
bash "$top/scripts/cluster.sh" up --dir "$cdir" --bin "$bin" --coordinators 1 \
    --servers "$servers" --workers "$workers" --shards "$shards" --replication "$replication" \
    >/dev/null 2>"$tmp/up.log" || {
    cat "$tmp/up.log" >&2
    fail "the cluster did not start"
}
startup_s=$((SECONDS - t_up))
CL_DIR=$cdir
# shellcheck disable=SC1091
. "$cdir/cluster.env"
for ((i = 1; i <= workers; i++)); do
    cl_alive "worker-w$i" || fail "worker w$i is not running (see $cdir/logs/worker-w$i.log)"
done

# The largest server store (data.mdb: LMDB's file never shrinks, so at the end
# it is the high-water mark), before the job and once it ended.
store_bytes() {
    local f n max=0
    for f in "$cdir"/data/server-*/data.mdb; do
        n=$(stat -c %s "$f" 2>/dev/null) || continue
        ((n > max)) && max=$n
    done
    echo "$max"
}
store_start=$(store_bytes)

spec=$tmp/job.ini
cp "$job_file" "$spec" || fail "cannot copy $job_file"
# set_job KEY VALUE: KEY = VALUE in the spec's [job] section, replaced or added.
set_job() {
    sed -i "s/^$1 *=.*/$1 = $2/" "$spec"
    grep -q "^$1 = $2\$" "$spec" || sed -i "s/^\[job\]\$/[job]\n$1 = $2/" "$spec"
    grep -q "^$1 = $2\$" "$spec" || fail "cannot set $1 = $2 in $spec"
}
set_job epochs "$epochs"
set_job replication "$replication"
for kv in "${sets[@]}"; do
    set_job "${kv%%=*}" "${kv#*=}"
done

prefix=/keel/$KEEL_CLUSTER_NAME/jobs/$job

# Watch the evaluations from the revision before the submission on, so that no
# version of an eval key is missed however quickly it is rewritten.
rev=$(cl_etcdctl get / -w json | python3 -c 'import json,sys; print(json.load(sys.stdin)["header"]["revision"])') ||
    fail "cannot read etcd's revision"
ETCDCTL_API=3 "$CL_ETCDCTL_BIN" --endpoints "$KEEL_ETCD_ENDPOINT" --cacert "$cdir/certs/ca.crt" \
    --cert "$cdir/certs/admin-admin.crt" --key "$cdir/certs/admin-admin.key" --dial-timeout 2s \
    watch --rev "$((rev + 1))" --prefix "$prefix/eval/" >"$tmp/evals.txt" 2>"$tmp/watch.err" &
watch_pid=$!

"$bin/keelctl" --config "$cdir/keelctl.ini" job submit "$spec" >"$tmp/submit.log" 2>&1 || {
    cat "$tmp/submit.log" >&2
    fail "keelctl job submit failed"
}
say "submitted: $(ini model), $epochs epoch(s), batch $batch, $(ini consistency), replication $replication${sets[*]:+, }${sets[*]:-}"

# "STATE CHANGED_MS" of the job, or nothing when etcd does not answer.
job_state() {
    cl_etcdctl get --print-value-only "$prefix/state" 2>/dev/null |
        sed -n 's/.*"changed_ms":\([0-9]*\).*"state":"\([a-z]*\)".*/\2 \1/p' | head -n 1
}
evals_seen() { grep -c '^PUT$' "$tmp/evals.txt" 2>/dev/null || true; }

# ---- the job, timed from running to done ----------------------------------------------

start_ms='' end_ms='' finished=false state='' t_wait=$SECONDS
while :; do
    read -r state changed <<<"$(job_state)"
    case ${state:-} in
    running | done)
        start_ms=$changed
        break
        ;;
    failed | stopped) fail "job '$job' is $state (see $cdir/logs)" ;;
    esac
    ((SECONDS - t_wait < 60)) || fail "job '$job' is not running 60 s after submission"
    sleep 0.5
done
say "running; following it (at most $limit s)"
last_say=$SECONDS
while :; do
    read -r state changed <<<"$(job_state)"
    case ${state:-} in
    done)
        end_ms=$changed finished=true
        break
        ;;
    failed | stopped) fail "job '$job' is $state (see $cdir/logs)" ;;
    esac
    if (($(now_ms) - start_ms >= limit * 1000)); then
        end_ms=$(now_ms)
        say "not done after $limit s: stopping here"
        break
    fi
    if ((SECONDS - last_say >= 15)); then
        last=$(grep '"accuracy"' "$tmp/evals.txt" 2>/dev/null | tail -n 1 |
            sed -n 's/.*"accuracy":\([0-9.]*\).*"pass":\([0-9]*\).*"worker":"\([^"]*\)".*/test accuracy \1 (pass \2, \3)/p')
        say "$((($(now_ms) - start_ms) / 1000)) s: $(evals_seen) evaluation(s)${last:+, last: $last}"
        last_say=$SECONDS
    fi
    sleep 1
done

store_end=$(store_bytes)

# Each checkpoint cut during the job, from the servers' logs: how long pushes
# past its clock were held back, and the bytes of rows it copied.
grep -hoE "checkpoint [0-9]+ at clock [0-9]+ \(cut: pushes past it held back [0-9]+ ms, [0-9]+ refusals; ranges copied [0-9]+ ms after it began\): [0-9]+ range\(s\), [0-9]+ bytes" \
    "$cdir"/logs/server-*.log 2>/dev/null |
    sed -E 's/.*held back ([0-9]+) ms.* ([0-9]+) bytes$/\1 \2/' >"$tmp/cuts.txt"

# The examples applied so far, from the shard positions (all of them when done).
records=$("$bin/keelctl" dataset info --store "$cdir/data/server-s1" --name "$KEEL_DATASET" --json |
    python3 -c 'import json,sys; print(",".join(str(s["records"]) for s in json.load(sys.stdin)["shard_list"]))') ||
    fail "cannot read the shards of '$KEEL_DATASET' from server s1's store"
examples=$(cl_job_progress "$bin/keelctl" "$cdir/keelctl.ini" "$job" "$epochs" "$batch" "$records" |
    sed -n 's/^examples=//p') || fail "cannot read the job's progress from etcd"

# Every shard's every pass ends with an evaluation: give the watch a moment
# to deliver the last ones.
want=$((epochs * shards))
for ((i = 0; i < 50; i++)); do
    if [ "$finished" != true ] || (($(evals_seen) >= want)); then break; fi
    sleep 0.1
done
kill "$watch_pid" 2>/dev/null
wait "$watch_pid" 2>/dev/null
watch_pid=''
[ "$finished" = true ] && (($(evals_seen) < want)) &&
    say "warning: $(evals_seen) evaluation(s) seen, $want expected ($(cat "$tmp/watch.err"))"

python3 - "$tmp/evals.txt" "$workers" "$servers" "$epochs" "$shards" "$records" "$finished" \
    "$start_ms" "$end_ms" "${examples:-0}" "$startup_s" "$store_start" "$store_end" "$tmp/cuts.txt" \
    <<'EOF' || fail "cannot write the results"
import json, sys

(path, workers, servers, epochs, shards, records, finished, start, end, examples, startup,
 store_start, store_end, cuts_path) = sys.argv[1:]
cuts = [line.split() for line in open(cuts_path) if line.strip()]
lines = open(path, encoding="utf-8", errors="replace").read().split("\n")
evals = []
i = 0
while i + 2 < len(lines):
    if lines[i] == "PUT":
        try:
            v = json.loads(lines[i + 2])
            # A run stopped at its limit ends there: later evaluations are not part of it.
            if finished == "true" or int(v["time_ms"]) <= int(end):
                evals.append({k: v[k] for k in ("pass", "worker", "accuracy", "loss", "time_ms")})
        except (ValueError, KeyError, TypeError):
            pass
        i += 3
    else:
        i += 1
json.dump({"workers": int(workers), "servers": int(servers), "epochs": int(epochs),
           "shards": int(shards),
           "records": sum(int(r) for r in records.split(",")),
           "finished": finished == "true", "start_ms": int(start), "end_ms": int(end),
           "examples": int(examples), "startup_s": int(startup),
           "store_start_bytes": int(store_start), "store_end_bytes": int(store_end),
           "ckpt_pauses_ms": [int(c[0]) for c in cuts], "ckpt_bytes": [int(c[1]) for c in cuts],
           "evals": evals},
          sys.stdout)
sys.stdout.write("\n")
EOF
failed=0
outcome=stopped
[ "$finished" = true ] && outcome='done'
say "$outcome after $(((end_ms - start_ms) / 1000)) s; stopping the cluster"
