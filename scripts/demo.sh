#!/usr/bin/env bash
# demo.sh - Keel's main job: a local cluster with replication 2 trains an MLP
# on Fashion-MNIST and survives three faults: a server, the leading coordinator
# and a worker, each killed with SIGKILL while the job runs.
#
# Installs the Debian packages (scripts/install-deps), builds (Release, build/),
# starts etcd, 2 coordinators, 3 servers and 2 workers on loopback in a
# temporary directory (scripts/cluster.sh up --replication 2), submits
# examples/fashion-mnist-mlp.ini with replication = 2 and shows progress.  At a
# quarter of the job's examples it kills the server that is primary of the
# most key ranges and leaves it down; at three eighths the leading coordinator,
# started again 5 s later; at one half worker w1, started again 2 s later.  For
# each fault it measures, from the kill, how long until the server's ranges
# had other primaries (the assignment in etcd) or the other coordinator held
# the leader key, and until the job's progress moved past its value at the
# kill.  The summary names each fault with those times, the final test
# accuracy (the demo fails below 0.88, or --min-accuracy) and that the job
# finished.  Every process it started is stopped at the end, on failure and
# on Ctrl-C.  See docs/cluster.md.
set -u
set -o pipefail

top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
CL_PROG=demo.sh
# shellcheck source=scripts/lib/cluster-common.sh
. "$top/scripts/lib/cluster-common.sh"

usage() {
    cat <<'EOF'
usage: scripts/demo.sh [OPTIONS]
Build Keel, start a local cluster (etcd, 2 coordinators, 3 servers, 2
workers, replication 2) in a temporary directory, train the MLP of
examples/fashion-mnist-mlp.ini on Fashion-MNIST with replication = 2, and
kill with SIGKILL, at fixed fractions of the job's examples:
  1/4  the server that is primary of the most key ranges (left down)
  3/8  the leading coordinator (started again 5 s later)
  1/2  worker w1 (started again 2 s later)
Print a summary: each fault with the ms from the kill until the server's
ranges had other primaries / the other coordinator led, and until the job's
progress moved on; the worker's shard resumed; the final test accuracy,
time, examples/s and that the job finished.

  --epochs N       train N epochs instead of the example's 10
  --job FILE       submit FILE instead of examples/fashion-mnist-mlp.ini
  --shards N       import the dataset in N shards (default 4: 2 per worker)
  --no-build       skip installing packages and building: use build/bin as is
  --bin DIR        use the binaries in DIR (implies --no-build)
  --no-fault       kill nothing (same as --faults none)
  --faults LIST    the faults to inject, comma-separated, of server,
                   coordinator, worker (default all three); none for none
  --min-accuracy A fail when the final test accuracy is below A (default 0.88)
  --keep           keep the cluster directory (logs, data) at the end
  --dir DIR        put the cluster in DIR (new or empty) instead of a temporary one
  --timeout MIN    give the job MIN minutes to finish (default 30)
  -h, --help       show this help

Exit status: 0 the job finished with the accuracy asked for, 1 a failure
(the message names it: a stalled or failed job, accuracy too low, ...),
69 a part of Keel the demo needs is not there yet, 130 interrupted.
EOF
}

bin=$top/build/bin
epochs='' job_file=$top/examples/fashion-mnist-mlp.ini build=1 keep=0 dir='' limit_min=30
faults=server,coordinator,worker min_acc=0.88
shard_opt=()
while [ $# -gt 0 ]; do
    case $1 in
    --epochs)
        [[ ${2:-} =~ ^[1-9][0-9]{0,4}$ ]] || { cl_say "--epochs: expected 1-99999, got '${2:-}'"; exit 64; }
        epochs=$2 && shift
        ;;
    --job) job_file=${2:-} && shift ;;
    --shards)
        [[ ${2:-} =~ ^[1-9][0-9]{0,3}$ ]] || { cl_say "--shards: expected 1-9999, got '${2:-}'"; exit 64; }
        shard_opt=(--shards "$2") && shift
        ;;
    --no-build) build=0 ;;
    --bin) bin=${2:-} build=0 && shift ;;
    --no-fault) faults=none ;;
    --faults)
        [[ ${2:-} =~ ^(none|(server|coordinator|worker)(,(server|coordinator|worker))*)$ ]] ||
            { cl_say "--faults: expected none or a list of server,coordinator,worker; got '${2:-}'"; exit 64; }
        faults=$2 && shift
        ;;
    --min-accuracy)
        [[ ${2:-} =~ ^(0(\.[0-9]+)?|1(\.0*)?)$ ]] || { cl_say "--min-accuracy: expected 0-1, got '${2:-}'"; exit 64; }
        min_acc=$2 && shift
        ;;
    --keep) keep=1 ;;
    --dir) dir=${2:-} && shift ;;
    --timeout)
        [[ ${2:-} =~ ^[1-9][0-9]{0,3}$ ]] || { cl_say "--timeout: expected minutes, got '${2:-}'"; exit 64; }
        limit_min=$2 && shift
        ;;
    -h | --help) usage && exit 0 ;;
    *) cl_say "unknown argument '$1'; see --help" && exit 64 ;;
    esac
    shift
done
[ -f "$job_file" ] || { cl_say "no job file '$job_file'"; exit 64; }
want_fault() { [[ ,$faults, == *,$1,* ]]; }
[ -d "$bin" ] && bin=$(cd "$bin" && pwd -P)

cluster=$top/scripts/cluster.sh
demo_start=$SECONDS
made_dir=0
ours=0 # 1 once this demo's cluster.sh up may have started processes in $dir
cfg=''

step() { printf '\n==> [%s] %s\n' "$(elapsed $((SECONDS - demo_start)))" "$*"; }
info() { printf '    %s\n' "$*"; }
elapsed() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }

# ---- stopping everything, however the demo ends ------------------------------------

finished=0
watchers=() # PIDs of the background fault watchers (section 4)
# shellcheck disable=SC2317 # trap handlers
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    local w
    for w in "${watchers[@]}"; do kill "$w" 2>/dev/null; done
    # A failure keeps the files to look into; success, an interruption or a
    # missing piece (69) has nothing to show beyond what was printed.
    local remove=()
    if [ "$keep" = 0 ] && [ "$made_dir" = 1 ] &&
        { [ "$finished" = 1 ] || [ "$status" = 130 ] || [ "$status" = 69 ]; }; then
        remove=(--remove)
    fi
    if [ "$ours" = 1 ] && [ -f "$dir/cluster.env" ]; then
        printf '\n==> stopping the cluster\n'
        bash "$cluster" down --dir "$dir" --timeout 15 "${remove[@]}" 2>&1 | sed 's/^cluster.sh: /    /'
        if [ ${#remove[@]} = 0 ]; then
            info "the cluster's files (logs, configs, data) stay in $dir"
            info "remove them with: rm -rf $dir"
        fi
    elif [ "$made_dir" = 1 ]; then
        rm -rf -- "$dir"
    fi
    exit "$status"
}
# shellcheck disable=SC2317
interrupted() {
    printf '\ndemo.sh: interrupted\n' >&2
    exit 130
}
trap cleanup EXIT
trap interrupted INT TERM

fail() {
    printf '\ndemo.sh: %s\n' "$*" >&2
    exit 1
}
# missing PIECE...: a part of Keel the demo needs is not there yet.
missing() {
    printf '\ndemo.sh: the demo cannot run the job yet; missing:\n' >&2
    printf '  - %s\n' "$@" >&2
    exit 69
}

# ---- 1. dependencies and build ---------------------------------------------------------

if [ "$build" = 1 ]; then
    step "installing the Debian packages Keel needs (scripts/install-deps)"
    "$top/scripts/install-deps" || fail "scripts/install-deps failed (it needs root or sudo when a package is missing)"
    info "all present"
    step "building (Release, build/)"
    mkdir -p "$top/build"
    # KEEL_WERROR=OFF: a compiler's new warning must not stop a user's demo.
    if ! cmake -S "$top" -B "$top/build" -DCMAKE_BUILD_TYPE=Release -DKEEL_WERROR=OFF \
        >"$top/build/demo-build.log" 2>&1 ||
        ! cmake --build "$top/build" -j "$(nproc)" --target keel-coordinator keel-server \
            keel-worker keelctl >>"$top/build/demo-build.log" 2>&1; then
        tail -n 30 "$top/build/demo-build.log" >&2
        fail "the build failed (whole log: build/demo-build.log)"
    fi
    info "keel-coordinator, keel-server, keel-worker and keelctl in build/bin"
fi
for b in keel-coordinator keel-server keel-worker keelctl; do
    [ -x "$bin/$b" ] || fail "no $bin/$b (build it: run without --no-build or --bin)"
done

# What the demo needs from keelctl: job submit (and job show when it is there).
absent=()
"$bin/keelctl" job --help >/dev/null 2>&1 ||
    absent+=("keelctl job submit|show (keelctl has no 'job' command yet)")

# ---- 2. the cluster ----------------------------------------------------------------------

step "starting a local cluster: etcd, 2 coordinators, 3 servers, 2 workers, replication 2"
if [ -z "$dir" ]; then
    dir=$(mktemp -d "${TMPDIR:-/tmp}/keel-demo.XXXXXX") || fail "cannot make a temporary directory"
    made_dir=1
elif [ -e "$dir/cluster.env" ]; then
    dir_given=$dir dir=''
    fail "'$dir_given' already holds a cluster: give a new or empty directory"
fi
ours=1
bash "$cluster" up --dir "$dir" --bin "$bin" --coordinators 2 --servers 3 --workers 2 \
    --replication 2 --dataset fashion-mnist "${shard_opt[@]}" 2>&1 >/dev/null | sed 's/^cluster.sh: /    /' ||
    fail "the local cluster did not start (see the messages above; logs in $dir/logs)"
dir=$(cd "$dir" && pwd -P)
cfg=$dir/keelctl.ini
CL_DIR=$dir
# shellcheck disable=SC1091
. "$dir/cluster.env"
info "keelctl configuration: $cfg"

running_workers=0
for w in w1 w2; do cl_alive "worker-$w" && running_workers=$((running_workers + 1)); done
if [ "$running_workers" != 2 ]; then
    if [ "$(cat "$dir/pids/worker-w1.exit" 2>/dev/null)" = 69 ]; then
        absent+=("keel-worker (it exits 69: \"nothing to run yet\")")
    else
        fail "only $running_workers of 2 workers run (see $dir/logs/worker-*.log)"
    fi
fi
((${#absent[@]} == 0)) || missing "${absent[@]}"

# ---- 3. the job -------------------------------------------------------------------------------

step "submitting the job"
spec=$dir/job.ini
cp "$job_file" "$spec" || fail "cannot copy $job_file"
# The job's shards are the dataset's, as the cluster imported it; its replication
# is the cluster's; epochs as asked.
set_key() { # KEY VALUE: replace "KEY = ..." in [job], or add it after [job]
    if grep -q "^$1 *=" "$spec"; then
        sed -i "s/^$1 *=.*/$1 = $2/" "$spec"
    else
        sed -i "s/^\[job\]\$/[job]\n$1 = $2/" "$spec"
    fi
    grep -q "^$1 = $2\$" "$spec" || fail "cannot set $1 = $2 in $spec"
}
set_key shards "$KEEL_SHARDS"
set_key replication "$KEEL_REPLICATION"
[ -n "$epochs" ] && set_key epochs "$epochs"
ini() { sed -n "s/^$1 *= *//p" "$spec" | head -n 1; }
job=$(ini name) epochs=$(ini epochs) batch=$(ini batch_size)
[ -n "$job" ] || fail "$job_file has no [job] name"
epochs=${epochs:-1} batch=${batch:-64}
info "$(ini model), $epochs epochs, batch $batch, $(ini consistency), optimizer $(sed -n '/^\[optimizer\]/,/^\[/s/^type *= *//p' "$spec"), $KEEL_SHARDS shards, replication $KEEL_REPLICATION"
submit_out=$("$bin/keelctl" --config "$cfg" job submit "$spec" 2>&1) ||
    fail "keelctl job submit failed: $submit_out"
printf '%s\n' "${submit_out:-submitted $job}" | sed 's/^/    /'

# Records per shard of the training set, from a server's store.
records=$("$bin/keelctl" dataset info --store "$dir/data/server-s1" --name "$KEEL_DATASET" --json |
    python3 -c 'import json,sys; print(",".join(str(s["records"]) for s in json.load(sys.stdin)["shard_list"]))') ||
    fail "cannot read the shards of '$KEEL_DATASET' from server s1's store"

prefix=/keel/$KEEL_CLUSTER_NAME/jobs/$job/
declare -A P=()
# poll: read the job's progress into P (keelctl job show --json; see cl_job_progress).
poll() {
    local out line
    P=()
    out=$(cl_job_progress "$bin/keelctl" "$cfg" "$job" "$epochs" "$batch" "$records") || return 1
    while IFS= read -r line; do
        [[ $line == bad=* ]] && info "warning: unreadable value in etcd: ${line#bad=}" && continue
        P[${line%%=*}]=${line#*=}
    done <<<"$out"
}
# Job progress as "E.EE" epochs.
epoch_of() { python3 -c "print('%.2f' % ($1 * $epochs / max($2, 1)))"; }

step "waiting for the coordinator's leader to start the job"
deadline=$((SECONDS + 60))
while :; do
    poll || fail "cannot read the job's keys from etcd"
    case ${P[state]:-} in
    running | done) break ;;
    failed | stopped) fail "the job is ${P[state]:-}: ${P[reason]:-}" ;;
    esac
    if ((SECONDS >= deadline)); then
        if [ "${P[state]:-}" = pending ]; then
            missing "the coordinator's leader starting jobs (job '$job' is still pending after 60 s; see $dir/logs/coordinator-*.log)"
        fi
        fail "job '$job' has no state in etcd 60 s after submit (key ${prefix}state)"
    fi
    sleep 1
done
train_start=$SECONDS
info "job $job is ${P[state]:-}"

# ---- 4. training, with a server, the leading coordinator and a worker killed --------------

now_ms() { date +%s%3N; }
# examples_now: the job's examples done (cl_job_progress), or nothing.
examples_now() {
    cl_job_progress "$bin/keelctl" "$cfg" "$job" "$epochs" "$batch" "$records" 2>/dev/null |
        sed -n 's/^examples=//p'
}
# assignment_primaries: "VERSION ID:COUNT ID:COUNT ..." from the assignment in
# etcd: each server id and how many ranges it is primary of, most first.
assignment_primaries() {
    cl_etcdctl get --print-value-only "/keel/$KEEL_CLUSTER_NAME/assignment" 2>/dev/null |
        python3 -c '
import collections, json, sys
a = json.loads(sys.stdin.read())
c = collections.Counter(a["servers"][r[0]] for r in a["ranges"] if r)
order = sorted(c, key=lambda s: (-c[s], a["servers"].index(s)))
print(a.get("version", "?"), " ".join("%s:%d" % (s, c[s]) for s in order))' 2>/dev/null
}
# watch FILE T0 EX0 EVENT ARG: a background watcher.  It polls etcd every
# 0.2 s after a kill at T0 (ms) and writes KEY=VALUE lines to FILE, times in
# ms from T0, and gives up after 300 s.  EX0 is the job's examples done just
# before the kill.
#   event_ms     EVENT ARG first held (server_gone ID: no range has server ID
#                as primary; leader_is ID: coordinator ID holds the leader key)
#   moved_ms     the examples done first went past EX0 (batches the workers
#                finished before the kill count too)
#   resumed_ms   the examples done first went past their value when the
#                event was seen: training went on after the failover
# event_note has what the event check saw (server_gone: the assignment).
server_gone() {
    local a
    a=$(assignment_primaries)
    [ -n "$a" ] && [[ " ${a#* } " != *" $1:"* ]] || return 1
    note="assignment version ${a%% *}: ${a#* }"
}
leader_is() { note='' && [ "$(cl_leader)" = "$1" ]; }
watch() {
    local f=$1 t0=$2 ex0=$3 event=$4 arg=$5 now ex ev='' moved='' resumed='' ex_ev='' note=''
    while :; do
        now=$(now_ms)
        ex=$(examples_now)
        if [ -z "$moved" ] && [ -n "$ex" ] && ((ex > ex0)); then
            moved=$((now - t0))
            printf 'moved_ms=%s\n' "$moved" >>"$f"
        fi
        if [ -n "$ev" ] && [ -z "$resumed" ] && [ -n "$ex" ] && ((ex > ex_ev)); then
            resumed=$((now - t0))
            printf 'resumed_ms=%s\n' "$resumed" >>"$f"
        fi
        if [ -z "$ev" ] && [ -n "$ex" ] && "$event" "$arg"; then
            ev=$(($(now_ms) - t0)) ex_ev=$ex
            printf 'event_ms=%s\nevent_note=%s\n' "$ev" "$note" >>"$f"
        fi
        [ -n "$moved" ] && [ -n "$resumed" ] && break
        ((now - t0 > 300000)) && { echo "gave_up=1" >>"$f"; break; }
        sleep 0.2
    done
}
# fault_val FILE KEY: a watcher's value, or nothing.
fault_val() { sed -n "s/^$2=//p" "$1" 2>/dev/null | head -n 1; }
fdir=$dir/faults
mkdir -p "$fdir" || fail "cannot make $fdir"

plan=()
want_fault server && plan+=("at 1/4 the server primary of the most ranges (left down)")
want_fault coordinator && plan+=("at 3/8 the leading coordinator (restarted)")
want_fault worker && plan+=("at 1/2 worker w1 (restarted)")
if ((${#plan[@]})); then
    step "training (progress every 5 s; SIGKILL $(IFS=';'; echo "${plan[*]}" | sed 's/;/; /g'))"
else
    step "training (progress every 5 s; no faults)"
fi
printf '    %-8s %-10s %-11s %-10s %-9s %s\n' time epoch examples/s test-loss test-acc shards
last_ex=0 last_t=$SECONDS moved_t=$SECONDS killed='' kill_note='' resume_note='' kill_shard=''
srv_killed='' srv_note='' srv_id='' crd_killed='' crd_note='' crd_id=''
limit=$((limit_min * 60))
poll_failures=0
while :; do
    # etcd may be slow for a moment on a busy machine: three misses in a row fail.
    if ! poll; then
        poll_failures=$((poll_failures + 1))
        ((poll_failures < 3)) || fail "cannot read the job's keys from etcd (3 tries in a row)"
        sleep 5
        continue
    fi
    poll_failures=0
    now=$SECONDS
    ex=${P[examples]:-0}
    if ((ex > last_ex)); then moved_t=$now; fi
    rate=$(((ex - last_ex) / (now > last_t ? now - last_t : 1)))
    shards=''
    for ((n = 0; n < KEEL_SHARDS; n++)); do
        read -r owner pass b <<<"${P[shard.$n]:-- 0 0}"
        shards+="$n:$owner($pass,$b) "
    done
    acc=- loss=-
    if [ "${P[eval.pass]:--1}" -ge 0 ]; then acc=${P[eval.accuracy]} loss=${P[eval.loss]}; fi
    printf '    %-8s %-10s %-11s %-10s %-9s %s\n' "$(elapsed $((now - train_start)))" \
        "$(epoch_of "$ex" "${P[total]:-0}")/$epochs" "$rate" "$loss" "$acc" "$shards"
    last_ex=$ex last_t=$now

    # After the kill: who carries on with the shard w1 held, and from where.
    if [ -n "$kill_shard" ] && [ -z "$resume_note" ]; then
        read -r owner pass b <<<"${P[shard.$kill_shard]:-- 0 0}"
        if [ "$owner" != - ] && { [ "$pass" -gt "${kill_pos% *}" ] ||
            { [ "$pass" = "${kill_pos% *}" ] && [ "$b" -gt "${kill_pos#* }" ]; }; }; then
            resume_note="shard $kill_shard went on past the killed worker's position (pass ${kill_pos% *} batch ${kill_pos#* }): now at pass $pass batch $b, reported by $owner"
            info "$resume_note"
        fi
    fi

    case ${P[state]:-} in
    done) break ;;
    failed | stopped) fail "the job is ${P[state]:-}: ${P[reason]:-}" ;;
    esac

    # A quarter: SIGKILL the server that is primary of the most ranges; it stays down.
    if want_fault server && [ -z "$srv_killed" ] && ((ex * 4 >= ${P[total]:-0} && ${P[total]:-0} > 0)); then
        a=$(assignment_primaries)
        [ -n "$a" ] || fail "cannot read the assignment (/keel/$KEEL_CLUSTER_NAME/assignment) from etcd"
        top_srv=${a#* } top_srv=${top_srv%% *}
        srv_id=${top_srv%:*}
        ex0=$(examples_now) && [ -n "$ex0" ] || ex0=$ex
        srv_note="server $srv_id (primary of ${top_srv#*:} ranges, assignment version ${a%% *}: ${a#* }) killed with SIGKILL at epoch $(epoch_of "$ex0" "${P[total]:-0}") and left down"
        bash "$cluster" kill --dir "$dir" server "$srv_id" 2>&1 | sed 's/^cluster.sh: /    !! /'
        t0=$(now_ms)
        srv_killed=$SECONDS
        watch "$fdir/server" "$t0" "$ex0" server_gone "$srv_id" &
        watchers+=($!)
    fi

    # Three eighths: SIGKILL the leading coordinator, start it again 5 s later.
    if want_fault coordinator && [ -z "$crd_killed" ] && ((ex * 8 >= ${P[total]:-0} * 3 && ${P[total]:-0} > 0)); then
        crd_id=$(cl_leader)
        [ -n "$crd_id" ] || fail "no coordinator leads (/keel/$KEEL_CLUSTER_NAME/leader)"
        other=$(awk -v me="$crd_id" '$1 == "coordinator" && $2 != me {print $2; exit}' "$dir/nodes")
        ex0=$(examples_now) && [ -n "$ex0" ] || ex0=$ex
        crd_note="coordinator $crd_id (the leader) killed with SIGKILL at epoch $(epoch_of "$ex0" "${P[total]:-0}")"
        bash "$cluster" kill --dir "$dir" coordinator "$crd_id" 2>&1 | sed 's/^cluster.sh: /    !! /'
        t0=$(now_ms)
        crd_killed=$SECONDS
        watch "$fdir/coordinator" "$t0" "$ex0" leader_is "$other" &
        watchers+=($!)
        sleep 5
        bash "$cluster" start --dir "$dir" coordinator "$crd_id" 2>&1 | sed 's/^cluster.sh: /    !! /' ||
            fail "coordinator $crd_id did not start again (see $dir/logs/coordinator-$crd_id.log)"
        crd_note+="; started again $((SECONDS - crd_killed)) s later"
        crd_other=$other
    fi

    # Half way: SIGKILL w1, note its shard and position, start it again.
    if want_fault worker && [ -z "$killed" ] && ((ex * 2 >= ${P[total]:-0} && ${P[total]:-0} > 0)); then
        for ((n = 0; n < KEEL_SHARDS; n++)); do
            read -r owner pass b <<<"${P[shard.$n]:-- 0 0}"
            [ "$owner" = w1 ] && kill_shard=$n kill_pos="$pass $b"
        done
        bash "$cluster" kill --dir "$dir" worker w1 2>&1 | sed 's/^cluster.sh: /    !! /'
        killed=$SECONDS
        kill_note="worker w1 killed with SIGKILL at epoch $(epoch_of "$ex" "${P[total]:-0}")"
        [ -n "$kill_shard" ] && kill_note+=", holding shard $kill_shard at pass ${kill_pos% *} batch ${kill_pos#* }"
        sleep 2
        bash "$cluster" start --dir "$dir" worker w1 2>&1 | sed 's/^cluster.sh: /    !! /' ||
            fail "worker w1 did not start again (see $dir/logs/worker-w1.log)"
        kill_note+="; started again $((SECONDS - killed)) s later"
    fi
    if ((now - moved_t > 120)); then
        fail "no training progress for 120 s (shards: $shards); see $dir/logs/worker-*.log"
    fi
    if ((now - train_start > limit)); then
        fail "the job did not finish within $limit_min minutes (--timeout)"
    fi
    sleep 5
done
train_time=$((SECONDS - train_start))
finished=1

# ---- 5. summary ----------------------------------------------------------------------------

step "summary"
total=${P[total]:-0}
info "job $job: ${P[state]:-} ($epochs epochs of $(ini model) on ${total} training examples, $KEEL_SHARDS shards, 2 workers, 3 servers, replication $KEEL_REPLICATION)"
eval_pass=${P[eval.pass]:--1}
if [ "$eval_pass" -ge 0 ]; then
    reached=$(python3 -c "print('reached' if ${P[eval.accuracy]} >= $min_acc else 'not reached')")
    info "final test accuracy: ${P[eval.accuracy]} after epoch $((eval_pass + 1)) (test loss ${P[eval.loss]}, ${P[eval.examples]:-?} test images; target $min_acc: $reached)"
else
    info "final test accuracy: none reported (no key under ${prefix}eval/)"
fi
info "wall time: $(elapsed "$train_time") of training; $(elapsed $((SECONDS - demo_start))) for the whole demo"
info "examples/s: $((total / (train_time > 0 ? train_time : 1))) on average"
# The watchers have normally long finished; give a late one a moment.
for w in "${watchers[@]}"; do
    for ((i = 0; i < 50; i++)); do kill -0 "$w" 2>/dev/null || break; sleep 0.2; done
done
ms() { if [ -n "$1" ]; then printf "%'d ms" "$1"; else printf 'not seen within 300 s'; fi; }
nfaults=0
if [ -n "$srv_note" ]; then
    nfaults=$((nfaults + 1))
    f=$fdir/server
    info "fault $nfaults: $srv_note"
    info "       no range had $srv_id as primary after $(ms "$(fault_val "$f" event_ms)")$(
        [ -n "$(fault_val "$f" event_note)" ] && echo " ($(fault_val "$f" event_note))")"
    info "       training moved on past its progress at that point after $(ms "$(fault_val "$f" resumed_ms)") from the kill"
    info "       (past its progress at the kill after $(ms "$(fault_val "$f" moved_ms)"): batches finished before the kill, reported late)"
fi
if [ -n "$crd_note" ]; then
    nfaults=$((nfaults + 1))
    f=$fdir/coordinator
    info "fault $nfaults: $crd_note"
    info "       coordinator $crd_other held the leader key after $(ms "$(fault_val "$f" event_ms)")"
    info "       the job's progress moved past its value at the kill after $(ms "$(fault_val "$f" moved_ms)"), and past its value when $crd_other led after $(ms "$(fault_val "$f" resumed_ms)") from the kill"
fi
if [ -n "$kill_note" ]; then
    nfaults=$((nfaults + 1))
    info "fault $nfaults: $kill_note"
    info "       ${resume_note:-the shard w1 held was finished without a visible resume in the 5 s samples}"
fi
if [ "$nfaults" = 0 ]; then
    info "faults: none ($([ "$faults" = none ] && echo "--no-fault" || echo "the job ended before any fault's turn"))"
fi
info "the job finished: state '${P[state]:-}' in etcd"
# Each server checkpoints its ranges when the job is done (signed with the cluster key).
ckpt_notes=()
for log in "$dir"/logs/server-*.log; do
    s=${log##*/server-} s=${s%.log} line=''
    if [ "$s" = "$srv_id" ]; then
        ckpt_notes+=("$s down (killed)")
        continue
    fi
    for ((i = 0; i < 30; i++)); do
        line=$(grep -o "job $job: checkpoint [0-9]* at clock [0-9]* (the job is done)" "$log" | tail -n 1)
        [ -n "$line" ] && break
        sleep 0.5
    done
    if [ -z "$line" ]; then
        ckpt_notes+=("$s none")
        continue
    fi
    read -r _ _ _ id _ _ clock _ <<<"$line"
    if "$bin/keelctl" checkpoint verify "$id" --store "$dir/data/server-$s" \
        --key "$dir/certs/cluster.key" >/dev/null 2>&1; then
        ckpt_notes+=("$s #$id (clock $clock) verified")
    else
        ckpt_notes+=("$s #$id FAILED verification")
    fi
done
info "checkpoints at the end: $(IFS=','; echo "${ckpt_notes[*]}" | sed 's/,/, /g')"
if [ "$keep" = 1 ]; then
    info "  inspect them with: $bin/keelctl checkpoint list|verify|export --store $dir/data/server-$([ "$srv_id" = s1 ] && echo s2 || echo s1) --key $dir/certs/cluster.key"
fi
if "$bin/keelctl" job --help >/dev/null 2>&1; then
    "$bin/keelctl" --config "$cfg" job show "$job" 2>&1 | sed 's/^/    | /'
fi
[ "$eval_pass" -ge 0 ] || missing "test accuracy reports (keel-worker writes no ${prefix}eval/<pass>/<worker>)"
if ! python3 -c "import sys; sys.exit(0 if ${P[eval.accuracy]} >= $min_acc else 1)"; then
    finished=0 # keep the cluster's files to look into
    fail "the final test accuracy ${P[eval.accuracy]} is below $min_acc"
fi
exit 0
